"""Run bookkeeping in dataset.json: one record per run (its stage table, counts, timings), the
package versions and the dataset's counts on disk. The shard writer calls `record_run` once its
tasks have returned; nothing here packs samples."""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from importlib import metadata

from schemas.contract import DatasetSchema, to_jsonable
from schemas.store import DatasetDir

PACKAGES = ("subjectforge", "ray", "pyarrow", "webdataset", "torch", "diffusers", "transformers",
            "sam2", "insightface", "onnxruntime", "rembg", "scikit-learn", "numpy", "pillow")


def record_run(out: DatasetDir, schema: DatasetSchema, run_id: str, started: float, removed: list,
               config: dict, stages: list[str], returns: list[dict]) -> dict:
    """Aggregate the write tasks' counts into this run's record and write dataset.json (also when
    nothing was new); a later pass of the same run (same run_id) is merged into its record."""
    wall = time.time() - started
    rejects = Counter()
    stage_rows, stage_seconds = Counter(), defaultdict(float)
    for r in returns:
        for s, reason, n in r["rejects"]:
            rejects[(s, reason)] += n
        stage_rows.update(r["stage_rows"])
        for s, t in r["stage_seconds"].items():
            stage_seconds[s] += t
    samples = sum(r["samples"] for r in returns)
    run = {
        "run_id": run_id,
        "passes": 1,
        "started": started,
        "wall_seconds": round(wall, 3),
        "samples_written": samples,
        "shards_written": sorted(s for r in returns for s in r["shards"]),
        "bytes_written": sum(r["bytes"] for r in returns),
        "samples_per_second": per_second(samples, wall),
        "stages": stage_table(stages, stage_rows, stage_seconds, rejects),
        "removed_uncommitted": removed,
    }
    previous = out.read_info() or {}
    runs = previous.get("runs") or []
    if runs and runs[-1].get("run_id") == run_id:  # a later pass of the same run
        runs = runs[:-1] + [merge_passes(runs[-1], run)]
    else:
        runs = runs + [run]
    info = {
        **previous,  # what others record here lives on: the bench split, takedowns (pipelines/multiid_forget.py)
        "dataset": schema.name,
        "schema_version": schema.version,
        "config": to_jsonable(config),
        "packages": package_versions(),
        "counts": dataset_counts(out),
        # every member file name a sample has had (a family's mask_0, mask_1, ...): the card's features
        "members": sorted(set(previous.get("members") or []).union(*(r["members"] for r in returns))),
        "runs": runs,
    }
    out.write_info(info)
    return info


def package_versions() -> dict:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return versions


def per_second(n: int, seconds: float) -> float | None:
    return round(n / seconds, 3) if seconds > 0 else None


def stage_table(order: list[str], rows: Counter, seconds: dict, rejects: Counter) -> list[dict]:
    """Per stage: rows in (timed there), out, rejected by reason, seconds, rows per second."""
    names = list(order) + sorted(({s for s in rows} | {s for s, _ in rejects}) - set(order))
    table = []
    for s in names:
        rejected = {reason: n for (st, reason), n in rejects.items() if st == s}
        n_in = rows.get(s, 0)
        t = seconds.get(s, 0.0)
        table.append({"stage": s, "rows_in": n_in, "rows_out": n_in - sum(rejected.values()),
                      "rejected": rejected, "seconds": round(t, 4),
                      "rows_per_second": per_second(n_in, t)})
    return table


def merge_passes(first: dict, later: dict) -> dict:
    """One run record from two passes of the same run: counts and stage work added up, the wall
    clock from the first pass's start to the later one's end."""
    rows, seconds, rejects = Counter(), defaultdict(float), Counter()
    order = []
    for s in first["stages"] + later["stages"]:
        if s["stage"] not in order:
            order.append(s["stage"])
        rows[s["stage"]] += s["rows_in"]
        seconds[s["stage"]] += s["seconds"]
        for reason, n in s["rejected"].items():
            rejects[(s["stage"], reason)] += n
    wall = round(later["started"] + later["wall_seconds"] - first["started"], 3)
    samples = first["samples_written"] + later["samples_written"]
    return dict(first, passes=first.get("passes", 1) + later.get("passes", 1), wall_seconds=wall,
                samples_written=samples, shards_written=sorted(first["shards_written"] + later["shards_written"]),
                bytes_written=first["bytes_written"] + later["bytes_written"],
                samples_per_second=per_second(samples, wall),
                stages=stage_table(order, rows, seconds, rejects),
                removed_uncommitted=first["removed_uncommitted"] + later["removed_uncommitted"])


def dataset_counts(out: DatasetDir) -> dict:
    """Counts of the whole dataset on disk (all runs), for dataset.json."""
    manifests = out.read_manifests(columns=["key"])
    rejects = out.read_rejects()
    by_reason = Counter(zip(rejects.column("stage").to_pylist(), rejects.column("reason").to_pylist()))
    return {
        "samples": 0 if manifests is None else manifests.num_rows,
        "shards": len(out.manifest_files()),
        "rejects": rejects.num_rows,
        "rejects_by_stage_reason": [{"stage": s, "reason": r, "count": n} for (s, r), n in sorted(by_reason.items())],
    }
