"""Chaos: while a pipeline runs, a thread SIGKILLs a random Ray worker process of it (model actors,
CPU tasks, write tasks) every 3-6 seconds, KILLS times at most (each model actor killed reloads its
model: on 2 cores faster kills would only restart actors). The run must still finish with every input key exactly
once as a sample or a reject, a dataset that validates, and a rerun that adds nothing."""
from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading

import psutil
import pytest

from runtime.config import load_config
from schemas import validate
from tests.conftest import ROOT, tiny_config
from tests.helpers import assert_every_key_once

# the processes a chaos monkey may kill: Ray Data's workers. The run's own bookkeeping actor
# (ShardRegistry) lives and dies with the driver, as Ray's own daemons do.
TARGETS = ("ray::MapWorker", "ray::MapBatches", "ray::Write", "ray::Map(", "ray::Filter")
RUN_LIMIT_S = 420
KILLS = 8


class Monkey(threading.Thread):
    def __init__(self, root: psutil.Process, seed: int):
        super().__init__(daemon=True)
        self.root, self.rng, self.stop, self.killed = root, random.Random(seed), threading.Event(), []

    def targets(self) -> list[psutil.Process]:
        try:
            children = self.root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        out = []
        for p in children:
            try:
                if " ".join(p.cmdline()).startswith(TARGETS):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def run(self):
        while len(self.killed) < KILLS and not self.stop.wait(self.rng.uniform(3.0, 6.0)):
            victims = self.targets()
            if victims:
                victim = self.rng.choice(victims)
                try:
                    self.killed.append(" ".join(victim.cmdline())[:60])
                    victim.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass


def run_under_chaos(cmd: list[str], seed: int) -> list[str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    monkey = Monkey(psutil.Process(proc.pid), seed)
    monkey.start()
    try:
        log, _ = proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        monkey.stop.set()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, log[-4000:]
    return monkey.killed


def assert_complete(out: str, keys: set[str]):
    assert_every_key_once(out, keys)
    report = validate(out)
    assert report.ok, str(report)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chaos_synthetic_and_dip(seed, tmp_path):
    from configs import DIPConfig, SyntheticConfig
    from pipelines import dip
    from stages.keys import sample_key

    # synthetic: model-shaped CPU work, poison rows, shards of 5
    syn = ["--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(tmp_path / "syn"),
           "--set", "samples=60", "--set", "work_seconds=0.1", "--set", "poison_every=7", "--set", f"seed={seed}",
           "--set", "write.target_shard_samples=5"]
    killed = run_under_chaos([sys.executable, "pipelines/synthetic.py", *syn], seed)
    cfg = load_config(SyntheticConfig, ROOT / "configs/synthetic.tiny.yaml", [a for a in syn[5:] if "=" in a])
    synthetic_keys = {sample_key({"index": i}, cfg.output_fields()) for i in range(cfg.samples)}
    assert_complete(str(tmp_path / "syn/dip"), synthetic_keys)

    # DIP on the tiny models: 8 pools of actors, shards of 2
    config = tiny_config("dip", tmp_path, n_single=8, n_multi=4, seed=seed, write={"target_shard_samples": 2})
    args = ["--config", str(config), "--out", str(tmp_path / "dip")]
    killed += run_under_chaos([sys.executable, "pipelines/dip.py", *args], seed)
    keys = {r["key"] for r in dip.source_rows(load_config(DIPConfig, config))}
    assert_complete(str(tmp_path / "dip/dip"), keys)
    assert any("MapWorker" in k for k in killed) and len(killed) >= KILLS, killed

    # a rerun finds every key decided: no new sample, no new reject; it removes what a killed
    # attempt left under a hidden temporary name (a `_tmp-` manifest or tar), nothing else
    for script, argv, out, expected in (("synthetic", syn, "syn/dip", synthetic_keys), ("dip", args, "dip/dip", keys)):
        before = sorted(p.name for p in (tmp_path / out).rglob("*.parquet") if not p.name.startswith("_tmp-"))
        rerun = subprocess.run([sys.executable, f"pipelines/{script}.py", *argv], cwd=ROOT, capture_output=True,
                               text=True, timeout=RUN_LIMIT_S)
        assert rerun.returncode == 0 and "0 samples in 0 new shards" in rerun.stdout, rerun.stdout[-2000:]
        assert sorted(p.name for p in (tmp_path / out).rglob("*.parquet")) == before
        assert not list((tmp_path / out).rglob("_tmp-*"))
        assert_complete(str(tmp_path / out), expected)
