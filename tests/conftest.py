import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
sys.path.insert(0, str(ROOT))


def assets_or_skip() -> Path:
    """Real-asset tests: CI always has ../shared, so there a missing folder is a failure; a user's
    machine without it skips."""
    if ASSETS.is_dir():
        return ASSETS
    if os.environ.get("CI"):
        pytest.fail(f"{ASSETS} is missing in CI")
    pytest.skip(f"{ASSETS} not present on this machine")


@pytest.fixture(scope="session")
def ray_local():
    import ray

    if not ray.is_initialized():
        # workers import test modules as tests.<package>.<module> (classes defined in tests are pickled by reference)
        paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
        os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        # logical CPUs: a pipeline's DAG holds an actor per model pool for life (see configs/dip.tiny.yaml)
        ray.init(num_cpus=8, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def dip_photos(ray_local, tmp_path_factory):
    """`make demo` with ../shared: configs/dip.photos.yaml on DreamBench, run once per session
    (images at 256 px instead of 512 for the suite's time). Returns (info, out dir, config)."""
    import yaml

    from pipelines import dip

    assets = assets_or_skip()
    tmp = tmp_path_factory.mktemp("dip_photos")
    config = yaml.safe_load((ROOT / "configs" / "dip.photos.yaml").read_text())
    config["photos_root"] = str(assets / "images" / "dreambench")
    config["background_removal"]["model"] = str(assets / "models" / "u2netp" / "u2netp.onnx")
    for role in ("vlm", "image_encoder"):
        config[role]["model"] = str(ROOT / config[role]["model"])  # the repo's tiny-model cache
    config["photo_max_side"] = 256
    path = tmp / "dip.photos.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp / "out"
    info = dip.main(["--config", str(path), "--out", str(out)])
    return info, str(out), config


# --- the tiny profile of each pipeline, run once per session ------------------------------------
# The pipeline tests check these runs; the trainer tests train on their shards.

def tiny_config(name: str, tmp: Path, **overrides) -> Path:
    """configs/<name>.tiny.yaml with the repo's tiny-model cache and ../shared/assets as absolute
    paths (tests run from anywhere), plus overrides."""
    import yaml

    cfg = yaml.safe_load((ROOT / "configs" / f"{name}.tiny.yaml").read_text())
    for value in cfg.values():
        if isinstance(value, dict) and str(value.get("model", "")).startswith("out/tiny-models"):
            value["model"] = str(ROOT / value["model"])
    for key in ("photos_root", "singles", "groups"):
        if key in cfg:
            cfg[key] = str(assets_or_skip() / str(cfg[key]).removeprefix("../shared/assets/"))
    if "face_analysis" in cfg:
        cfg["face_analysis"]["model"] = str(assets_or_skip() / "models/insightface_pack")
    cfg.update(overrides)
    path = tmp / f"{name}.tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_tiny(name: str, tmp_path_factory, **overrides) -> tuple[dict, str, dict]:
    """`python pipelines/<name>.py --config configs/<name>.tiny.yaml --out OUT` in this process:
    (dataset.json info, OUT, the config as run)."""
    import importlib

    import yaml

    tmp = tmp_path_factory.mktemp(f"{name}_tiny")
    path = tiny_config(name, tmp, **overrides)
    info = importlib.import_module(f"pipelines.{name}").main(["--config", str(path), "--out", str(tmp / "out")])
    return info, str(tmp / "out"), yaml.safe_load(path.read_text())


@pytest.fixture(scope="session")
def dip_tiny(ray_local, tmp_path_factory):
    return run_tiny("dip", tmp_path_factory)


@pytest.fixture(scope="session")
def uper_tiny(ray_local, tmp_path_factory):
    return run_tiny("uper", tmp_path_factory)


@pytest.fixture(scope="session")
def iapo_tiny(ray_local, tmp_path_factory):
    return run_tiny("iapo", tmp_path_factory, max_pairs=6)


@pytest.fixture(scope="session")
def multiid_world(ray_local, tmp_path_factory):
    """The pipeline on the shared faces with bad inputs and a scripted VLM (tests/multiid_world.py):
    (dataset.json info, OUT, the singles' labels, the faces folder)."""
    from tests.multiid_world import build_world

    return build_world(tmp_path_factory)


@pytest.fixture(scope="session")
def multiid_tiny(ray_local, tmp_path_factory):
    return run_tiny("multiid", tmp_path_factory)
