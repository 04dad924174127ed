"""The run summary: Ray Data's progress bars when a person watches, and the per-stage table printed
at the end, the same numbers as the one stored in dataset.json."""
from __future__ import annotations

import io
import json

import ray

from runtime.driver import print_summary, progress_bars
from schemas.store import DatasetDir
from schemas.runs import merge_passes


class Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def test_progress_bars_only_on_a_terminal():
    ctx = ray.data.DataContext.get_current()
    before = ctx.enable_progress_bars
    try:
        assert progress_bars(Stream(True)) is True and ctx.enable_progress_bars is True
        assert progress_bars(Stream(False)) is False and ctx.enable_progress_bars is False
    finally:
        ctx.enable_progress_bars = before


def test_printed_stage_table_is_the_stored_one(dip_tiny):
    info, out, _ = dip_tiny
    stored = DatasetDir.open(f"{out}/dip").read_info()
    assert stored["runs"][-1] == json.loads(json.dumps(info["runs"][-1]))
    printed = io.StringIO()
    print_summary(stored, f"{out}/dip", file=printed)
    lines = printed.getvalue().splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("stage"))
    assert lines[header].split() == ["stage", "in", "out", "rejected", "seconds", "rows/s", "reasons"]
    stages = stored["runs"][-1]["stages"]
    rows = lines[header + 1: header + 1 + len(stages)]
    assert len(rows) == len(stages) > 5
    for line, s in zip(rows, stages):
        name, n_in, n_out, n_rej, secs, rate = line.split()[:6]
        assert (name, int(n_in), int(n_out), int(n_rej)) == (s["stage"], s["rows_in"], s["rows_out"],
                                                            sum(s["rejected"].values()))
        assert float(secs) == round(s["seconds"], 2)
        assert rate == ("-" if s["rows_per_second"] is None else f"{s['rows_per_second']:.1f}")
        if s["rejected"]:
            assert json.loads(line.split(None, 6)[6]) == s["rejected"]
        assert s["rows_out"] == s["rows_in"] - sum(s["rejected"].values())
    # the model stages did work and were timed
    timed = {s["stage"] for s in stages if s["seconds"] > 0}
    assert {"generate", "segment", "inpaint"} <= timed
    run = stored["runs"][-1]
    assert f"{run['samples_written']} samples" in lines[1] and f"{run['wall_seconds']:.1f} s wall" in lines[1]
    assert lines[-1] == f"report:    subjectforge report {out}/dip"


def test_passes_of_one_run_merge_into_one_record():
    """MultiID writes paired, then unpaired photos: one record, its stage work added up."""
    def stage(name, n, secs, rejected):
        return {"stage": name, "rows_in": n, "rows_out": n - sum(rejected.values()), "rejected": rejected,
                "seconds": secs, "rows_per_second": n / secs}

    first = {"run_id": "r", "passes": 1, "started": 100.0, "wall_seconds": 2.0, "samples_written": 3,
             "shards_written": ["m-000000"], "bytes_written": 30, "samples_per_second": 1.5,
             "removed_uncommitted": ["m-000009.tar"],
             "stages": [stage("load", 3, 1.0, {}), stage("caption", 3, 0.5, {})]}
    later = {"run_id": "r", "passes": 1, "started": 103.0, "wall_seconds": 3.0, "samples_written": 2,
             "shards_written": ["m-000001"], "bytes_written": 20, "samples_per_second": 0.67,
             "removed_uncommitted": [],
             "stages": [stage("load", 5, 3.0, {"corrupt_image": 1}), stage("caption", 4, 0.5, {"refusal": 2}),
                        stage("split", 2, 0.25, {})]}
    run = merge_passes(first, later)
    assert run["passes"] == 2 and run["run_id"] == "r" and run["started"] == 100.0
    assert run["wall_seconds"] == 6.0 and run["samples_written"] == 5 and run["samples_per_second"] == round(5 / 6, 3)
    assert run["shards_written"] == ["m-000000", "m-000001"] and run["bytes_written"] == 50
    assert run["removed_uncommitted"] == ["m-000009.tar"]
    assert run["stages"] == [
        {"stage": "load", "rows_in": 8, "rows_out": 7, "rejected": {"corrupt_image": 1}, "seconds": 4.0,
         "rows_per_second": 2.0},
        {"stage": "caption", "rows_in": 7, "rows_out": 5, "rejected": {"refusal": 2}, "seconds": 1.0,
         "rows_per_second": 7.0},
        {"stage": "split", "rows_in": 2, "rows_out": 2, "rejected": {}, "seconds": 0.25, "rows_per_second": 8.0}]
