"""Chaos: while a pipeline runs, a thread SIGKILLs a random Ray worker process of it (model actors,
CPU tasks, write tasks) every 1-3 seconds, KILLS times at least over a seed's two runs. The run must
still finish with every input key exactly once as a sample or a reject, a dataset that validates,
and a rerun that adds nothing.

The pipelines run as their own jobs on this session's Ray (`session_env`: the driver is a
subprocess that joins it), so the monkey kills that job's workers and nothing of the test process.
DIP runs in the scripted world (tests/dip_doubles.py: every model role a double with the real
worker's wiring and batch protocol, every gate's rejects and bad inputs among the prompts): what is
under test is Ray's restarts and retries and the writer's exactly-once commits, not the models, and
a double's actor restarts in a second where a model's takes ten on 2 cores. Its VLM is paced like a
model (tests/e2e/dip_scripted.py, half a second a batch), so the run lasts some seconds however fast
the machine (unpaced, a fast one finished a seed's runs after five kills)."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading

import psutil
import pytest
import yaml

from runtime.config import load_config
from schemas import validate
from tests.conftest import ROOT
from tests.dip_doubles import DOUBLES, scripted_config
from tests.helpers import assert_every_key_once

# the processes a chaos monkey may kill: Ray Data's workers. The run's own bookkeeping actor
# (ShardRegistry) lives and dies with the driver, as Ray's own daemons do.
TARGETS = ("ray::MapWorker", "ray::MapBatches", "ray::Write", "ray::Map(", "ray::Filter")
RUN_LIMIT_S = 420
KILLS = 6
# `python pipelines/dip.py` with the doubles in place of the models, the VLM's paced
DIP_SCRIPTED = "tests/e2e/dip_scripted.py"


class Monkey(threading.Thread):
    """Kills a random Ray Data worker among this process's descendants (the session's Ray) every
    1-3 s; the test process is the only other job there, and it is idle meanwhile."""

    def __init__(self, seed: int):
        super().__init__(daemon=True)
        self.root, self.rng, self.stop, self.killed = psutil.Process(os.getpid()), random.Random(seed), threading.Event(), []

    def targets(self) -> list[psutil.Process]:
        out = []
        for p in self.root.children(recursive=True):
            try:
                if " ".join(p.cmdline()).startswith(TARGETS):
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return out

    def run(self):
        while not self.stop.wait(self.rng.uniform(1.0, 3.0)):
            victims = self.targets()
            if victims:
                victim = self.rng.choice(victims)
                try:
                    self.killed.append(" ".join(victim.cmdline())[:60])
                    victim.send_signal(signal.SIGKILL)
                except psutil.NoSuchProcess:
                    pass


def run_under_chaos(cmd: list[str], seed: int, env: dict) -> list[str]:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    monkey = Monkey(seed)
    monkey.start()
    try:
        log, _ = proc.communicate(timeout=RUN_LIMIT_S)
    finally:
        monkey.stop.set()
        monkey.join()
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
def test_chaos_synthetic_and_dip(seed, tmp_path, session_env):
    from configs import DIPConfig, SyntheticConfig
    from pipelines import dip, synthetic
    from stages.keys import sample_key

    # synthetic: model-shaped CPU work, poison rows, shards of 5
    syn = ["--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(tmp_path / "syn"),
           "--set", "samples=60", "--set", "work_seconds=0.1", "--set", "poison_every=7", "--set", f"seed={seed}",
           "--set", "write.target_shard_samples=5"]
    killed = run_under_chaos([sys.executable, "pipelines/synthetic.py", *syn], seed, session_env)
    cfg = load_config(SyntheticConfig, ROOT / "configs/synthetic.tiny.yaml", [a for a in syn[5:] if "=" in a])
    synthetic_keys = {sample_key({"index": i}, cfg.output_fields()) for i in range(cfg.samples)}
    assert_complete(str(tmp_path / "syn/dip"), synthetic_keys)

    # DIP, 5 pools of doubles and an OpenCV loser; samples and every gate's rejects; shards of 2
    config, rows = scripted_config(tmp_path, copies=2, seed=seed)
    (tmp_path / "dip.yaml").write_text(yaml.safe_dump(config))
    args = ["--config", str(tmp_path / "dip.yaml"), "--out", str(tmp_path / "dip")]
    killed += run_under_chaos([sys.executable, DIP_SCRIPTED, *args], seed, session_env)
    keys = {r["key"] for r in dip.source(load_config(DIPConfig, tmp_path / "dip.yaml")).take_all()}
    assert len(keys) == len(rows)
    assert_complete(str(tmp_path / "dip/dip"), keys)
    print(f"seed {seed}: {len(killed)} workers killed")
    assert any("MapWorker" in k for k in killed) and len(killed) >= KILLS, killed

    # a rerun finds every key decided: no new sample, no new reject; it removes what a killed
    # attempt left under a hidden temporary name (a `_tmp-` manifest or tar), nothing else
    for main, argv, out, expected in ((synthetic.main, syn, "syn/dip", synthetic_keys),
                                      (lambda a: dip.main(a, workers=DOUBLES), args, "dip/dip", keys)):
        before = sorted(p.name for p in (tmp_path / out).rglob("*.parquet") if not p.name.startswith("_tmp-"))
        info = main(argv)
        assert info["runs"][-1]["samples_written"] == 0 and info["runs"][-1]["shards_written"] == []
        assert sorted(p.name for p in (tmp_path / out).rglob("*.parquet")) == before
        assert not list((tmp_path / out).rglob("_tmp-*"))
        assert_complete(str(tmp_path / out), expected)
