"""End to end on a real Ray cluster: a head on 127.0.0.1 with token auth, each pipeline submitted
as the README says (`ray job submit --working-dir . -- python pipelines/<name>.py ...`), every
output validated, the head stopped also when something fails."""
import json
import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT, assets_or_skip

BIN = Path(sys.executable).parent
# a file in the local output folder that must not travel with the working dir
SENTINEL = ROOT / "out" / "local-output-not-for-upload.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    """`ray start --head --block` in its own process group (stopping it kills only this cluster,
    not the test session's own Ray), token auth with a token generated into a private HOME."""
    # a short directory: Ray's unix sockets live under --temp-dir, and their paths cap at 107 bytes
    tmp = Path(tempfile.mkdtemp(prefix="sf-", dir="/tmp"))
    # the venv's python first on PATH: the job's `python` is the cluster's, as on a real image
    env = dict(os.environ, HOME=str(tmp), RAY_AUTH_MODE="token", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    assert (tmp / ".ray" / "auth_token").is_file()
    dashboard = free_port()
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
         "--num-cpus=8", f"--temp-dir={tmp / 'ray'}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 120
        while subprocess.run([str(BIN / "ray"), "job", "list", "--address", address], env=env,
                             capture_output=True).returncode != 0:
            assert proc.poll() is None and time.time() < deadline, "the head did not come up"
            time.sleep(2)
        yield address, env, tmp
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # `ray start --block` takes its processes down with it
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)


def submit(address: str, env: dict, *command: str) -> str:
    """`ray job submit --working-dir .` from the project root; waits for a terminal state."""
    for _ in range(30):  # the head's job agent starts a little after its dashboard answers
        out = subprocess.run([str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", ".",
                              "--no-wait", "--", *command], cwd=ROOT, env=env, capture_output=True, text=True)
        if "No available agent" not in out.stderr:
            break
        time.sleep(2)
    if out.returncode != 0:  # what the head's agents said, for the failure message
        logs = sorted(Path(env["HOME"]).glob("ray/session_*/logs/dashboard_agent.log"))
        agent = logs[-1].read_text()[-3000:] if logs else "no agent log"
        raise AssertionError(out.stderr[-2000:] + "\n--- dashboard_agent.log ---\n" + agent)
    job = next(w for line in out.stdout.splitlines() for w in line.replace("'", " ").split() if w.startswith("raysubmit_"))
    deadline = time.time() + 900
    while time.time() < deadline:
        status = subprocess.run([str(BIN / "ray"), "job", "status", "--address", address, job], env=env,
                                capture_output=True, text=True)
        # the CLI says "Job 'raysubmit_...' succeeded" (or failed / was stopped) on stderr
        done = re.search(rf"Job '{job}' (?:was )?(succeeded|failed|stopped)", status.stdout + status.stderr)
        if done:
            logs = subprocess.run([str(BIN / "ray"), "job", "logs", "--address", address, job], env=env,
                                  capture_output=True, text=True).stdout
            return done.group(1).upper(), logs
        time.sleep(3)
    return "TIMEOUT", ""


@pytest.mark.slow
def test_every_pipeline_through_ray_job_submit(head):
    from schemas import validate

    address, env, tmp = head
    assets = assets_or_skip()
    # inputs on a cluster are paths every node can read: absolute, or URIs
    jobs = {
        "dip": ["--set", "n_single=6", "--set", "n_multi=2"],
        "uper": ["--set", f"photos_root={assets / 'images/dreambench'}", "--set", "pairs_per_subject=1"],
        "iapo": ["--set", f"photos_root={assets / 'images/dreambench'}", "--set", "max_pairs=4"],
        "multiid": ["--set", f"singles={assets / 'images/faces/singles'}", "--set",
                    f"groups={assets / 'images/faces/groups'}", "--set",
                    f"face_analysis.model={assets / 'models/insightface_pack'}"],
    }
    SENTINEL.parent.mkdir(exist_ok=True)
    SENTINEL.write_text("a local output: .rayignore keeps it off the cluster")
    for name, extra in jobs.items():
        out = tmp / f"out-{name}"
        state, logs = submit(address, env, "python", f"pipelines/{name}.py", "--config", f"configs/{name}.tiny.yaml",
                             "--out", str(out), *extra)
        print(f"{name}: {state}")
        assert state == "SUCCEEDED", f"{name}: {state}\n{logs[-3000:]}"
        datasets = ["multiid", "multiid_refs"] if name == "multiid" else [name]
        for d in datasets:
            report = validate(str(out / d))
            assert report.ok and report.samples > 0, (d, report.problems[:3])
        info = json.loads((out / name / "dataset.json").read_text())
        assert info["runs"][-1]["stages"], name
    # the upload carried the project, not the git history, virtualenv, outputs or caches (.rayignore)
    packages = [p for p in (tmp / "ray").glob("session_*/runtime_resources/working_dir_files/*") if p.is_dir()]
    assert packages
    for pkg in packages:
        assert (pkg / "pipelines" / "dip.py").is_file() and (pkg / "configs" / "dip.tiny.yaml").is_file()
        for left_out in (".git", ".venv", ".pytest_cache", "subjectforge.egg-info"):
            assert not (pkg / left_out).exists(), left_out
        # the jobs write their own out/ (the tiny models) in their copy; the local out/ stays here
        assert not (pkg / SENTINEL.relative_to(ROOT)).exists()
        uploaded = [p for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts and p.parts[len(pkg.parts)] != "out"]
        assert sum(p.stat().st_size for p in uploaded) < 20e6
    SENTINEL.unlink()
