"""End to end on a real two-node Ray cluster on this machine, shaped like a user's (tests/cluster.py,
the session's): outputs on S3 (SeaweedFS on 127.0.0.1, requests signed as an identity that may
touch one bucket), a head with token auth that runs the jobs' drivers and CPU stages, and a second
node joined with `ray start --address` that offers logical GPUs and a `gpu_node` resource, on which
every model pool is placed (`<role>.resources: {gpu_node: 1}`). Every pipeline's tiny profile is
submitted as the README says (`ray job submit --working-dir . -- python pipelines/<name>.py ...
--out s3://...`, one after another: conftest's tiny_runs, whose outputs the other tests read) and
checked with `subjectforge validate s3://...` and pandas on the S3 manifests; then the second node
is killed while DIP's pools run and started again; then a Ray Train run of two workers, one per
node, reads a dataset from S3. Every node is stopped when the module is done, also when something
fails."""
import json
import re
import time

import pandas as pd
import pytest
import yaml

from tests.cluster import (BUCKET, GPU_NODE, HEAD, JOB_LIMIT_S, README_PORTS, SENTINEL, assert_committed_only,
                           objects, run_job, state, stop_cluster, submit, validate_cli, wait)
from tests.conftest import ROOT
from tests.helpers import assert_every_key_once

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def on_cluster(cluster):
    """This process reads s3:// URIs (validate, load_manifest, pandas) with the jobs' identity; the
    cluster goes down when the module is done (the tiny outputs the later tests read are copied)."""
    mp = pytest.MonkeyPatch()
    for k, v in cluster.s3.env("pipeline").items():
        mp.setenv(k, v)
    try:
        yield cluster
    finally:
        mp.undo()
        stop_cluster(cluster)


def test_every_pipeline_on_two_nodes_to_s3(cluster, tiny_runs, ray_local):
    """Every dataset's tiny profile, submitted as the README says (conftest's tiny_runs):
    each job succeeded, each dataset validates on S3 and reads with pandas, every input key once,
    only committed objects in the bucket, every model actor on the GPU node, the working dir
    unpacked on both nodes without what .rayignore leaves out."""
    from schemas import load_manifest

    jobs = {name: config for name, (_, _, config, _) in tiny_runs.items()}
    manifests = {}
    for name, (state_, logs, _, _) in tiny_runs.items():
        assert state_ == "SUCCEEDED", f"{name}: {state_}\n{logs[-3000:]}"
        for d in (["multiid", "multiid_refs"] if name == "multiid" else [name]):
            uri = f"s3://{BUCKET}/{name}/{d}"
            said = validate_cli(cluster, uri)
            manifest = pd.read_parquet(f"{uri}/manifest")  # what a user does in a notebook
            assert len(manifest) > 0 and manifest["key"].is_unique
            assert int(re.search(r": (\d+) samples in", said).group(1)) == len(manifest), said
            assert manifest.sort_values("key")["key"].tolist() == load_manifest(uri).sort_values("key")["key"].tolist()
            assert_committed_only(cluster, f"{BUCKET}/{name}/{d}")
            manifests[d] = manifest
        info = json.loads(cluster.s3.filesystem("admin").open_input_stream(
            f"{BUCKET}/{name}/{name}/dataset.json").read())
        assert info["runs"][-1]["stages"], name
    # DIP wrote every input key once, and its pools ran on the GPU node: each actor's node id is in
    # the head's Ray state, and the GPU node is the only one offering gpu_node
    from configs import DIPConfig
    from pipelines import dip
    from runtime.config import load_config

    keys = {r["key"] for r in dip.source_rows(load_config(DIPConfig, jobs["dip"]))}
    assert_every_key_once(f"s3://{BUCKET}/dip/dip", keys)
    # MultiID: every single-person photo once in the bank's dataset, every group photo once in its own
    from configs import MultiIDConfig
    from pipelines import multiid

    cfg = load_config(MultiIDConfig, jobs["multiid"])
    for plan in multiid.plans(cfg):
        assert_every_key_once(f"s3://{BUCKET}/multiid/{plan.schema.name}",
                              {r["key"] for r in multiid.source(cfg, plan).take_all()})
    assert manifests["dip"]["shard"].nunique() >= 3
    workers = [a for a in cluster.listed("actors") if a.get("class_name", "").startswith("MapWorker")]
    assert workers and {a["node_id"] for a in workers} <= cluster.gpu_node_ids(), {a["node_id"] for a in workers}
    # the upload carried the project, not the git history, virtualenv, outputs or caches (.rayignore)
    packages = [p for p in cluster.tmp.glob("*/session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert {p.parts[len(cluster.tmp.parts)] for p in packages} == {"head", "gpu"}  # unpacked on each node
    for pkg in packages:
        assert (pkg / "pipelines" / "dip.py").is_file() and (pkg / "configs" / "dip.tiny.yaml").is_file()
        for left_out in (".git", ".venv", ".pytest_cache", "subjectforge.egg-info"):
            assert not (pkg / left_out).exists(), left_out
        assert not (pkg / SENTINEL.relative_to(ROOT)).exists()
        uploaded = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.parts[len(pkg.parts)] != "out"]
        assert sum(p.stat().st_size for p in uploaded) < 20e6


def test_multiid_reads_its_photos_where_they_are_in_s3(multiid_from_s3, tiny_runs):
    """MultiID with its singles as a Parquet list of s3:// URIs and its group photos as img2dataset
    shards in the bucket (conftest's multiid_from_s3; no local copy left): the same identities,
    references, assignments and paired / unpaired split as the tiny run of the same photos from a
    local folder. Keys differ by design (a key hashes what identifies its input: a path, or a shard
    URI and member key), so the manifests are compared by the photo each key stands for."""
    state, logs, _, s3_out = multiid_from_s3
    assert state == "SUCCEEDED", logs[-3000:]
    local_out = tiny_runs["multiid"][3]

    def photo(source: str) -> str:  # ".../singles/biden/biden.jpg" -> "biden/biden"; "...tar#t1" -> "t1"
        if "#" in source:
            return source.rsplit("#", 1)[-1]
        return "/".join(source.split("/")[-2:]).rsplit(".", 1)[0].removeprefix("groups/")

    def outcomes(out, dataset: str, columns: list[str]) -> dict:
        m = pd.read_parquet(out / dataset / "manifest")
        got = {photo(s): tuple(str(getattr(x, "tolist", lambda: x)()) for x in v)  # arrays as lists
               for s, *v in m[["source", *columns]].itertuples(index=False)}
        r = pd.read_parquet(out / dataset / "rejects") if list((out / dataset).glob("rejects/*.parquet")) else None
        return got | ({photo(i): (why,) for i, why in r[["input", "reason"]].itertuples(index=False)} if r is not None else {})

    s3_refs, local_refs = (outcomes(o, "multiid_refs", ["identity_id"]) for o in (s3_out, local_out))
    assert s3_refs == local_refs and len(local_refs) == 45
    columns = ["paired", "identity", "n_faces", "split"]
    s3_groups, local_groups = (outcomes(o, "multiid", columns) for o in (s3_out, local_out))
    assert s3_groups == local_groups and len(local_groups) == 4
    assert {v[0] for v in local_groups.values() if len(v) > 1} == {"True", "False"}  # both sides of the split
    s3_info, local_info = (json.loads((o / "multiid" / "dataset.json").read_text()) for o in (s3_out, local_out))
    assert s3_info["bench_split"]["held_out"] == local_info["bench_split"]["held_out"]
    sources = pd.read_parquet(s3_out / "multiid" / "manifest")["source"]
    assert sources.str.fullmatch(rf"s3://{BUCKET}/crawl/groups/0000[01]\.tar#\w+").all(), sources.tolist()


def test_gpu_node_lost_mid_run(cluster, tmp_path, ray_local):
    """The GPU node dies (SIGKILL to all its processes) while DIP's model actors run on it, once they
    have finished their first batches, and comes back 3 s later as a new node. Ray restarts the actors
    there and retries their batches; if the job fails anyway, the same command again completes it. Either
    way: every input key once, nothing uncommitted in the bucket, the dataset validates. DIP runs in the
    scripted world (tests/e2e/dip_scripted.py: the doubles' actors, paced like models, every gate's
    rejects among the samples): what is lost and restarted is Ray's, not a model's."""
    from configs import DIPConfig
    from pipelines import dip
    from runtime.config import load_config
    from tests.dip_doubles import scripted_config

    cfg, _ = scripted_config(tmp_path, copies=2, seed=3, write={"target_shard_samples": 1})
    for role in ("text_to_image", "grounding", "segmentation", "vlm", "image_encoder"):
        cfg[role]["resources"] = {"gpu_node": 1}  # every pool on the GPU node
    config = tmp_path / "dip.yaml"
    config.write_text(yaml.safe_dump(cfg))
    command = ["python", "tests/e2e/dip_scripted.py", "--config", str(config), "--out", f"s3://{BUCKET}/lost"]
    keys = {r["key"] for r in dip.source(load_config(DIPConfig, config)).take_all()}
    job = submit(cluster, *command)
    manifests = f"{BUCKET}/lost/dip/manifest"
    deadline = time.time() + JOB_LIMIT_S
    # the shards commit in a burst near the end (every block passes 5 pools first): the node is
    # lost once its pools have finished a few batches, by Ray's own task records
    while (batches := cluster.model_batches_done(job)) < 4:
        assert state(cluster, job) is None, f"the job ended before the node could be lost: {state(cluster, job)}"
        assert time.time() < deadline
        time.sleep(0.5)
    committed_before = len(objects(cluster, manifests))
    killed = cluster.gpu_node.kill()
    assert state(cluster, job) is None, "the job must still be running when its node is lost"
    time.sleep(3)
    cluster.start_gpu_node()
    outcome, logs = wait(cluster, job)
    print(f"node lost after {batches} model batches and {committed_before} of {len(keys)} shards, {killed} processes killed: the job {outcome}")
    if outcome != "SUCCEEDED":  # what the README tells a user to do: the same command again
        outcome, rerun = run_job(cluster, *command)
        assert outcome == "SUCCEEDED", rerun[-3000:]
        assert re.search(r"\d+ keys already committed", rerun), rerun[-2000:]
    assert_every_key_once(f"s3://{BUCKET}/lost/dip", keys)
    assert_committed_only(cluster, f"{BUCKET}/lost/dip")
    validate_cli(cluster, f"s3://{BUCKET}/lost/dip")


def test_ray_train_reads_each_key_once_on_two_nodes(cluster, tiny_runs):
    """Two Ray Train workers, one per node (STRICT_SPREAD), each reading one epoch of DIP's shards
    on S3 through schemas.read_samples and a DataLoader of two processes: the union of the keys
    read is the manifest, no key twice, and both ranks read some."""
    from schemas import load_manifest

    uri = f"s3://{BUCKET}/dip/dip"
    outcome, logs = run_job(cluster, "python", "tests/e2e/read_epoch.py", uri, f"s3://{BUCKET}/epoch.json")
    assert outcome == "SUCCEEDED", logs[-3000:]
    ranks = json.loads(cluster.s3.filesystem("admin").open_input_stream(f"{BUCKET}/epoch.json").read())
    assert sorted(r["rank"] for r in ranks) == [0, 1] and len({r["node"] for r in ranks}) == 2
    read = [k for r in ranks for k in r["keys"]]
    assert all(r["keys"] for r in ranks)
    assert len(read) == len(set(read)) and set(read) == set(load_manifest(uri)["key"])


def test_readme_shows_the_commands_this_module_runs():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("### Two nodes and S3"):]
    section = " ".join(section[:section.index("\n## ")].replace("\\\n", " ").split())
    for args in (HEAD, GPU_NODE):
        assert f"ray start --block {args.format(**README_PORTS)}" in section, args
    for piece in ("ray get-auth-token --generate", "export RAY_AUTH_MODE=token", "weed server -s3",
                  f"--out s3://{BUCKET}/dip", f"subjectforge validate s3://{BUCKET}/dip/dip",
                  f"pandas.read_parquet('s3://{BUCKET}/dip/dip/manifest')", "resources: {gpu_node: 1}"):
        assert piece in section, piece
