"""benchmarks/simulated.py: its zero-overhead schedule and its hand-written splits by hand, and one
small run end to end (the lines it prints, every input written). No time or ratio is asserted:
on 24 inputs the fill is most of the run."""
import json
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT


def test_ideal_schedule_by_hand():
    from benchmarks.simulated import ideal_schedule

    # A: 2 actors, batch 2, 1 s a batch; B: 1 actor, batch 4, 2 s a batch; 8 rows.
    # t=0 A takes two batches; t=1 A has done 4 rows: B starts on them, A takes the last two
    # batches; t=2 A done; t=3 B takes the other 4; t=5 the last row leaves.
    seconds = {"A": 1.0, "B": 2.0}
    s = ideal_schedule([("A", 2, 2, 1.0), ("B", 1, 4, 1.0)], 8, lambda step, rows, share: seconds[step])
    assert s == {"busy": {"A": [0.0, 0.0], "B": [1.0]}, "end": 5.0}
    # a partial batch once upstream is done: 6 rows; B starts on A's first 4 at t=1, the last 2
    # come at t=2 and wait for B, free at t=3, which takes them as a batch of 2 until t=5
    s = ideal_schedule([("A", 2, 2, 1.0), ("B", 1, 4, 1.0)], 6, lambda step, rows, share: seconds[step])
    assert s["end"] == 5.0 and s["busy"]["B"] == [1.0]
    # actors that load at different times: one A at -2, the other at 0, B at 3. A alone does
    # rows 1-2 by -1 and 3-4 by 0, when the second A starts (two busy at 0) on 5-6 and the first
    # on 7-8, both done at 1; B waits for its load, takes 4 rows at 3 and 4 more at 5, until 7
    s = ideal_schedule([("A", 2, 2, 1.0), ("B", 1, 4, 1.0)], 8, lambda step, rows, share: seconds[step],
                       ready={"A": [-2.0, 0.0], "B": [3.0]})
    assert s == {"busy": {"A": [-2.0, 0.0], "B": [3.0]}, "end": 7.0}


def test_hand_splits_are_the_fixed_configs_that_fit():
    from benchmarks.simulated import hand_splits, plans_for
    from runtime.costs import load_costs
    from runtime.pools import bound

    DEFAULT_COSTS = load_costs()
    _, (plan,), specs = plans_for("dip", ["pools=fixed"], 8, {})
    own = bound(plan, DEFAULT_COSTS, specs=specs[plan.name]).samples_per_hour
    splits = hand_splits(plan, 8, DEFAULT_COSTS)
    best = splits[0]
    assert [s["bound_per_hour"] for s in splits] == sorted((s["bound_per_hour"] for s in splits), reverse=True)
    # the gpu profile's own pools (4 FLUX, 2 Fill: 2 / 11.6 a second) are beaten
    assert own == pytest.approx(3600 * 2 / (50 / 28 * 6.5))
    # FLUX's diptych is 13 s, Fill 11.6 s, each VLM step 0.925 s a sample: 3 + 3 whole devices, the
    # three VLM pools half a device each and the light ones a slice of what is left; FLUX binds
    assert best["roles"]["text_to_image"] == (3, 1.0) and best["roles"]["inpainting"] == (3, 1.0)
    assert best["roles"]["vlm"] == (1, 0.5)
    assert best["bound_per_hour"] == pytest.approx(3600 * 3 / 13) and best["bound_per_hour"] > own


@pytest.mark.slow
def test_simulated_benchmark_runs_dip_and_writes_every_input(tmp_path):
    out = tmp_path / "report.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "simulated.py"), "--pipelines", "dip", "--n", "24",
           "--time-scale", "0.01", "--side", "256", "--cpus", "32", "--json", str(out),
           "--set", "ray.prewarm_workers=2"]  # the profile's 16 are for a node's cores, not for 24 inputs on 2
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert re.search(r"^dip simulated 8 GPUs: \d+ samples/h, bound \d+ samples/h, ratio \d+\.\d\d$", run.stdout, re.M)
    # a pool whose every actor never got a batch (24 inputs) reads inf
    assert re.search(r"^dip time to all pools busy: (-?\d+\.\d|inf) s$", run.stdout, re.M)
    (r,) = json.loads(out.read_text())["runs"]
    assert r["samples"] == {"dip": 24} and not r["rejects"]
    # the pools that ran are the auto split of 8 GPUs, and they fit
    assert sum(k * u for k, u in r["pools"].values()) <= 8
    assert r["bound_per_hour"] > 0 and r["measured_per_hour"] > 0
