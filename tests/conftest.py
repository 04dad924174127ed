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
        # workers import test modules (classes defined in tests are pickled by reference)
        paths = [str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]
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
