"""One writer per dataset folder (runtime/lease.py): a live holder stops a second run at once,
a dead one is taken over."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from runtime.lease import LEASE, Lease, LeaseHeld
from schemas.store import DatasetDir
from tests.conftest import ROOT
from tests.helpers import kill_group, wait_for


def folder(tmp_path) -> DatasetDir:
    return DatasetDir.open(str(tmp_path / "dip"), dataset="dip")


def test_a_live_lease_stops_a_second_writer_and_a_stale_one_is_taken_over(tmp_path):
    first = Lease(folder(tmp_path), timeout_s=2.0).acquire()
    with pytest.raises(LeaseHeld, match=f"being written by run {first.run_id}"):
        Lease(folder(tmp_path), timeout_s=2.0).acquire()
    time.sleep(1.2)  # the holder's heartbeat (every timeout / 4) keeps it alive past its first write
    with pytest.raises(LeaseHeld):
        Lease(folder(tmp_path), timeout_s=2.0).acquire()
    forced = Lease(folder(tmp_path), timeout_s=2.0).acquire(force=True)
    time.sleep(0.8)  # the first run's heartbeat sees it was taken over and stops
    assert first.lost and first.lost["run_id"] == forced.run_id
    first.release()  # not ours any more: left in place
    assert json.loads((tmp_path / "dip" / LEASE).read_text())["run_id"] == forced.run_id
    forced.release()
    assert not (tmp_path / "dip" / LEASE).exists()


def test_a_killed_holder_on_this_host_is_taken_over_at_once(tmp_path):
    d = folder(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    d.fs.create_dir(d.path, recursive=True)
    (tmp_path / "dip" / LEASE).write_text(json.dumps({"run_id": "gone", "host": __import__("socket").gethostname(),
                                                      "pid": int(dead.stdout), "heartbeat": time.time()}))
    Lease(d, timeout_s=600).acquire().release()


@pytest.mark.slow
def test_a_second_concurrent_run_on_one_folder_exits_at_start_naming_the_holder(tmp_path, session_env):
    """Two runs on one folder, each a process of its own joined to this session's Ray."""
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "pipelines/synthetic.py"), "--config", str(ROOT / "configs/synthetic.tiny.yaml"),
           "--out", str(out), "--set", "samples=40", "--set", "work_seconds=0.5", "--set", "ray.num_cpus=2"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                             env=session_env)
    try:
        wait_for(lambda: (out / "dip" / LEASE).exists(), 120, "the first run's lease")
        holder = json.loads((out / "dip" / LEASE).read_text())
        t0 = time.time()
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120, env=session_env)
        assert second.returncode == 1 and time.time() - t0 < 60  # at start, before any Ray work
        assert f"being written by run {holder['run_id']}" in second.stderr and f"pid {holder['pid']}" in second.stderr
        assert first.wait(timeout=300) == 0
    finally:
        if first.poll() is None:
            kill_group(first)
    assert not (out / "dip" / LEASE).exists()
    from schemas import validate

    report = validate(str(out / "dip"))
    assert report.ok and report.samples == 40
