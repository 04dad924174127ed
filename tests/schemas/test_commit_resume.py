"""Atomic shard commit, per-sample resume, and a SIGKILL mid-run followed by a rerun."""
import hashlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines import synthetic
from schemas import load_manifest, load_rejects, read_samples, validate
from tests.conftest import ROOT
from tests.helpers import kill_group, synthetic_rows, wait_for, write_rows


def files_digest(out: Path) -> dict:
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in ("shards", "manifest", "rejects") for p in sorted((out / d).glob("*"))}


KILL_BETWEEN_TAR_AND_MANIFEST = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import pandas as pd, ray
    from schemas import store
    from schemas.registry import get_schema
    from schemas.writer import ShardDatasink
    from tests.helpers import synthetic_rows

    commit_manifest = store.DatasetDir.write_parquet_atomic
    def stall(self, final, table):
        if "/manifest/" in final:  # the tar is renamed into place; stop before its manifest
            open({signal!r}, "w").write(final)
            time.sleep(600)
        return commit_manifest(self, final, table)
    store.DatasetDir.write_parquet_atomic = stall

    ray.init(num_cpus=1, include_dashboard=False)
    sink = ShardDatasink({out!r}, get_schema("dip"), target_samples=4)
    class Ctx: task_idx = 0
    sink.write(iter([pd.DataFrame(synthetic_rows("dip", 6))]), Ctx())
""")


def test_kill_between_tar_and_manifest_leaves_nothing_visible(ray_local, tmp_path):
    out, flag = tmp_path / "dip", tmp_path / "stalled"
    script = tmp_path / "writer.py"
    script.write_text(KILL_BETWEEN_TAR_AND_MANIFEST.format(root=str(ROOT), signal=str(flag), out=str(out)))
    proc = subprocess.Popen([sys.executable, str(script)], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(flag.exists, 120, "the writer to stall between tar and manifest")
    finally:
        kill_group(proc)
    tars = list((out / "shards").glob("*.tar"))
    assert len(tars) == 1  # the tar made it to its final name ...
    assert load_manifest(str(out)).empty  # ... but without its manifest nobody sees it
    with pytest.raises(ValueError, match="no shards"):
        read_samples(str(out))
    report = validate(str(out))
    assert report.ok and report.samples == 0 and report.uncommitted == [str(tars[0])]

    rows = synthetic_rows("dip", 6)
    summary = write_rows(rows, str(out), "dip", target_samples=4)  # the rerun
    assert str(tars[0]) in summary["runs"][-1]["removed_uncommitted"]
    report = validate(str(out))
    assert report.ok and not report.uncommitted and report.samples == 6
    assert sorted(load_manifest(str(out)).key) == sorted(r["key"] for r in rows)


def run_synthetic(out: Path, *sets: str) -> dict:
    argv = ["--config", str(ROOT / "configs/synthetic.tiny.yaml"), "--out", str(out)]
    for s in sets:
        argv += ["--set", s]
    return synthetic.main(argv)


def test_rerun_does_no_model_work_and_changes_nothing(ray_local, tmp_path):
    sets = ("samples=30", "poison_every=7", "write.target_shard_samples=8")
    first = run_synthetic(tmp_path, *sets)
    run1 = {s["stage"]: s for s in first["runs"][-1]["stages"]}
    assert run1["generate"]["rows_in"] == 30
    assert run1["generate"]["rejected"] == {"poison": 5} and run1["encode"]["rejected"] == {"unencodable": 4}
    before = files_digest(tmp_path / "dip")

    second = run_synthetic(tmp_path, *sets)
    run2 = second["runs"][-1]
    assert run2["samples_written"] == 0 and run2["shards_written"] == []
    assert all(s["rows_in"] == 0 for s in run2["stages"])  # no row reached a model stage
    assert files_digest(tmp_path / "dip") == before
    assert second["counts"] == first["counts"] and len(second["runs"]) == 2
    assert first["counts"]["samples"] == 21 and first["counts"]["rejects"] == 9


def test_sigkill_mid_run_then_rerun_has_every_key_once(ray_local, tmp_path, session_env):
    n = 160
    cmd = [sys.executable, str(ROOT / "pipelines/synthetic.py"), "--config", str(ROOT / "configs/synthetic.tiny.yaml"),
           "--out", str(tmp_path), "--set", f"samples={n}", "--set", "work_seconds=0.1", "--set", "batch_size=4",
           "--set", "write.target_shard_samples=8", "--set", "poison_every=9", "--set", "ray.num_cpus=2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=session_env)  # its own job on this session's Ray
    manifests = tmp_path / "dip" / "manifest"
    try:
        wait_for(lambda: len(list(manifests.glob("dip-*.parquet"))) >= 2, 180, "two committed shards")
    finally:
        kill_group(proc)
    partial = load_manifest(str(tmp_path / "dip"))
    assert 0 < len(partial) < n and validate(str(tmp_path / "dip")).ok

    info = run_synthetic(tmp_path, f"samples={n}", "batch_size=4", "write.target_shard_samples=8", "poison_every=9")
    generated = {s["stage"]: s for s in info["runs"][-1]["stages"]}["generate"]["rows_in"]
    assert generated <= n - len(partial)  # committed samples were not made again
    df, rejects = load_manifest(str(tmp_path / "dip")), load_rejects(str(tmp_path / "dip"))
    assert df.key.is_unique and rejects.key.is_unique and not set(df.key) & set(rejects.key)
    assert len(df) + len(rejects) == n
    assert set(rejects.reason) == {"poison", "unencodable"}
    report = validate(str(tmp_path / "dip"))
    assert report.ok and report.samples == len(df) and not report.uncommitted
