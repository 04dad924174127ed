"""A two-node Ray cluster on this machine, shaped like a user's, shared by the session (conftest's
`cluster`): outputs on S3 (SeaweedFS on 127.0.0.1, requests signed as an identity that may touch
one bucket), a head with token auth that runs the jobs' drivers and CPU stages, and a second node
joined with `ray start --address` that offers logical GPUs and a `gpu_node` resource, on which every
model pool is placed (`<role>.resources: {gpu_node: 1}`). Jobs go in as the README says (`ray job
submit --working-dir . -- python pipelines/<name>.py ... --out s3://...`)."""
from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.fs as pafs
import yaml

from tests.conftest import ROOT, tiny_config
from tests.s3server import ALL_ACTIONS, SeaweedS3

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
GPU_NODE = ("--address=127.0.0.1:{gcs} --node-ip-address=127.0.0.1 --num-cpus=12 --num-gpus=2 "
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

    # The head's job and state APIs, called from this process as `ray job status` and `ray list`
    # call them: a CLI process per poll (every 2 s while jobs run) would cost a 2-core machine a
    # good part of a core, taken from the jobs it waits on.
    @functools.cached_property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {(self.tmp / '.ray' / 'auth_token').read_text().strip()}"}

    @functools.cached_property
    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=dict(self.headers))

    @functools.cached_property
    def state_api(self):
        from ray.util.state import StateApiClient

        return StateApiClient(self.address, headers=dict(self.headers, **{"Content-Type": "application/json"}))

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
        """What `ray list <kind> --detail --filter ...` lists, as dicts ("state=ALIVE" filters)."""
        from ray.util.state.common import ListApiOptions, StateResource

        options = ListApiOptions(limit=10000, detail=True,
                                 filters=[(k, "=", v) for k, v in (f.split("=", 1) for f in filters)])
        listed = self.state_api.list(StateResource(kind), options=options, raise_on_missing_output=False)
        return [dataclasses.asdict(x) if dataclasses.is_dataclass(x) else dict(x) for x in listed]

    def gpu_node_ids(self) -> set[str]:
        return {n["node_id"] for n in self.listed("nodes") if n.get("resources_total", {}).get("gpu_node")}

    def model_batches_done(self, job: str) -> int:
        """Batches the GPU node's actors finished for the submitted `job` (its actor tasks in Ray's
        state API; the tiny runs' tasks before it are there too)."""
        job_id = self.jobs.get_job_info(job).job_id  # the driver's job id, once it has started
        if job_id is None:
            return 0
        gpu = self.gpu_node_ids()
        tasks = self.listed("tasks", "type=ACTOR_TASK", "state=FINISHED", f"job_id={job_id}")
        return sum(t.get("node_id") in gpu for t in tasks)

    def start_gpu_node(self) -> None:
        self.gpu_node.start()
        self.wait_nodes(2)


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
    status = c.jobs.get_job_status(job)
    return status.value if status.is_terminal() else None


def wait(c: Cluster, job: str) -> tuple[str, str]:
    deadline = time.time() + JOB_LIMIT_S
    while time.time() < deadline:
        if (s := state(c, job)) is not None:
            return s, c.jobs.get_job_logs(job)
        time.sleep(2)
    c.jobs.stop_job(job)
    return "TIMEOUT", c.jobs.get_job_logs(job)


def run_job(c: Cluster, *command: str) -> tuple[str, str]:
    return wait(c, submit(c, *command))


def validate_cli(c: Cluster, uri: str) -> str:
    """`subjectforge validate URI` (its main, in this process: the store's keys are in its
    environment as on a user's machine)."""
    import contextlib
    import io

    from runtime.cli import main

    said = io.StringIO()
    with contextlib.redirect_stdout(said):
        code = main(["validate", uri])
    assert code == 0, said.getvalue()[-2000:]
    return said.getvalue()


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


def start_cluster() -> Cluster:
    """S3, the head and the GPU node, up; every node stopped again when something fails here.
    `stop_cluster` takes them down (the session's teardown, or the e2e module's when it is done)."""
    # a short directory: Ray's unix sockets live under --temp-dir, and their paths cap at 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    s3 = SeaweedS3(tmp / "s3", IDENTITIES)
    (tmp / "s3").mkdir()
    c = None
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
        return c
    except BaseException:
        stop_cluster(c, s3)
        raise


def stop_cluster(c: Cluster | None, s3: SeaweedS3 | None = None) -> None:
    if c is not None:
        c.gpu_node.stop()
        c.head.stop()
        s3 = c.s3
    if s3 is not None:
        s3.stop()
        shutil.rmtree(s3.workdir.parent, ignore_errors=True)


def run_each(c: Cluster, commands: dict[str, list[str]]) -> dict[str, tuple[str, str]]:
    """Submit each command and wait for it before the next: {name: (state, logs)}. One after another,
    as four jobs at once ran slower on 2 cores (212 s against 163 s: actors' imports and model loads
    fighting for the cores and the caches). A local file in out/ (SENTINEL) must not travel with the
    working dir."""
    SENTINEL.parent.mkdir(exist_ok=True)
    SENTINEL.write_text("a local output: .rayignore keeps it off the cluster")
    try:
        return {name: run_job(c, *command) for name, command in commands.items()}
    finally:
        SENTINEL.unlink()


def download(c: Cluster, prefix: str, to: Path) -> Path:
    """Everything under s3://<prefix> into the local folder `to`."""
    to.mkdir(parents=True, exist_ok=True)
    pafs.copy_files(prefix, str(to), source_filesystem=c.s3.filesystem("admin"),
                    destination_filesystem=pafs.LocalFileSystem())
    return to
