"""The shard writer under the faults a cluster produces: a write task that dies mid-tar and is
retried by Ray, duplicate input rows, a stage that fails on every row."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from runtime.rows import dataset_of
from schemas import load_manifest, load_rejects, validate
from schemas.registry import get_schema
from schemas import writer
from schemas.store import DatasetDir
from schemas.writer import ErrorBudgetExceeded, ShardDatasink
from tests.helpers import synthetic_rows

class DiesAfterFirstMember(ShardDatasink):
    """The real writer, except that the first attempt of the first write task exits (as under the
    OOM killer) right after writing its first sample into a tar; `marker` says it happened."""

    def __init__(self, *args, marker: Path, **kw):
        super().__init__(*args, **kw)
        self.marker = marker

    def write(self, blocks, ctx):
        marker = self.marker
        if not marker.exists():
            first = writer._ShardWriter.add

            def add_then_die(shard, sample, manifest_row):
                first(shard, sample, manifest_row)
                shard.stream.flush()  # the half tar on disk, as a process killed mid-write leaves it
                marker.write_text(str(ctx.task_idx))
                os._exit(1)

            writer._ShardWriter.add = add_then_die
        return super().write(blocks, ctx)


def test_a_write_task_that_dies_is_retried_with_exactly_its_samples(ray_local, tmp_path):
    marker = tmp_path / "died"
    rows = synthetic_rows("dip", 40)
    sink = DiesAfterFirstMember(str(tmp_path / "dip"), get_schema("dip"), target_samples=10, marker=marker)
    dataset_of(rows).write_datasink(sink)
    assert marker.exists()  # the first attempt died after its first member
    manifest = load_manifest(str(tmp_path / "dip"))
    assert sorted(manifest["key"]) == sorted(r["key"] for r in rows)  # all 40, once, no rerun
    assert len(load_rejects(str(tmp_path / "dip"))) == 0
    report = validate(str(tmp_path / "dip"))
    assert report.ok and report.samples == 40
    # the dead attempt's half tar was a hidden temporary no reader sees; once every task is done
    # the datasink removes it, and the run's record says so
    removed = sink.summary["runs"][-1]["removed_uncommitted"]
    assert len(removed) == 1 and "/shards/_tmp-" in removed[0] and removed[0].endswith(".tar")
    assert not [p for p in (tmp_path / "dip").rglob("_tmp-*")]
    assert DatasetDir.open(str(tmp_path / "dip")).remove_uncommitted() == []
    assert sink.summary["runs"][-1]["samples_written"] == 40


def test_duplicate_inputs_are_rejects_and_each_key_has_one_outcome(ray_local, tmp_path):
    rows = synthetic_rows("uper", 12)
    doubled = rows + rows[:3] + rows[:1]  # three keys twice, one three times; across write tasks too
    sink = ShardDatasink(str(tmp_path / "uper"), get_schema("uper"), target_samples=4)
    dataset_of(doubled).write_datasink(sink)
    manifest, rejects = load_manifest(str(tmp_path / "uper")), load_rejects(str(tmp_path / "uper"))
    assert sorted(manifest["key"]) == sorted(r["key"] for r in rows)
    assert list(rejects["reason"].unique()) == ["duplicate_input"] and len(rejects) == 4
    assert set(rejects["key"]) == {r["key"] for r in rows[:3]}
    assert validate(str(tmp_path / "uper")).ok


def test_a_stage_failing_on_every_row_stops_the_write(ray_local, tmp_path):
    rows = synthetic_rows("dip", 30, encode_images=False)
    for r in rows:
        r.update(reject_stage="segment", reject_reason="model_error", reject_detail="CUDA error: device lost",
                 reject_retryable=True, input=f"prompt {r['key'][:6]}", time_segment=0.1)
    sink = ShardDatasink(str(tmp_path / "dip"), get_schema("dip"))
    with pytest.raises(Exception) as e:
        dataset_of(rows).write_datasink(sink)
    assert "ErrorBudgetExceeded" in repr(e.value) or isinstance(e.value, ErrorBudgetExceeded)
    violation = ray_local.get(sink.registry.failed.remote())
    assert violation.startswith("stage segment: 30 of 30 rows failed") and "model_error" in violation
    assert "e.g. input 'prompt " in violation
    # what was decided is on disk: the retryable rejects, which the next run tries again
    files = list((tmp_path / "dip/rejects").glob("*.parquet"))
    assert files and all(pq.read_table(f).column("retryable").to_pylist() == [True] * 30 for f in files)
    assert DatasetDir.open(str(tmp_path / "dip")).committed_keys() == set()
