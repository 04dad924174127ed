"""Rows and batches as Ray Data passes them, and the reject marking every stage uses.

A stage never raises on data: `run_rows` calls the stage's function per row, turns an exception
into a reject row, skips rows that an earlier stage rejected, and records `time_<stage>`.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import pyarrow as pa

from schemas.contract import REJECT_COLUMNS, TIMING_PREFIX


def rows_of(batch) -> list[dict]:
    """A batch as Ray Data hands it (column -> numpy array, or a pyarrow Table) -> row dicts."""
    if isinstance(batch, pa.Table):
        return batch.to_pylist()
    if not batch:
        return []
    n = len(next(iter(batch.values())))
    return [{k: _null_if_nan(v[i]) for k, v in batch.items()} for i in range(n)]


def _null_if_nan(value):
    """Arrow's nulls come back from numpy as NaN when Ray concatenated a block whose column was all
    null with one that had values; a scalar NaN is a missing value here (arrays travel whole)."""
    if isinstance(value, (float, np.floating)) and value != value:
        return None
    return value


def batch_of(rows: list[dict]) -> pa.Table:
    """Row dicts -> a pyarrow Table whose column types depend only on the kind of value, never on
    the values in this batch. Ray Data concatenates the batches of a task into one block and fails
    when one batch carried `ref` as a tensor and another (a reject's None, a bad image) as objects;
    so images, arrays, lists and dicts always travel as Ray's pickled-object column."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return pa.table({c: _column([r.get(c) for r in rows]) for c in cols})


# A source built on the driver is cut into blocks: Ray Data hands an actor pool one task per input
# block, so a single block of the whole input would keep every actor of the first model pool but
# one idle, and nothing would reach the shards (be committed) before that one task ends.
MIN_BLOCK_ROWS = 4
MAX_BLOCKS = 1000


def dataset_of(rows: list[dict]):
    """Row dicts built on the driver -> a Ray Dataset with batch_of's column types, in blocks of
    at least MIN_BLOCK_ROWS rows and at most MAX_BLOCKS blocks; no rows is an empty Dataset
    (batch_of([]) is a table without columns, which Ray cannot read)."""
    import ray

    if not rows:
        return ray.data.from_items([])
    table = batch_of(rows)
    step = max(MIN_BLOCK_ROWS, -(-len(rows) // MAX_BLOCKS))
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, len(rows), step)])


def _column(values: list) -> pa.Array:
    present = [v for v in values if v is not None]
    if not present:
        return pa.nulls(len(values))
    if all(isinstance(v, str) for v in present):
        return pa.array(values, pa.string())
    if all(isinstance(v, (bytes, bytearray)) for v in present):
        return pa.array(values, pa.large_binary())
    if all(isinstance(v, (bool, np.bool_)) for v in present):
        return pa.array(values, pa.bool_())
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return pa.array([None if v is None else int(v) for v in values], pa.int64())
    if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)) for v in present):
        return pa.array([None if v is None else float(v) for v in values], pa.float64())
    from ray.data.extensions import ArrowPythonObjectArray

    return ArrowPythonObjectArray.from_objects(values)


def is_rejected(row: dict) -> bool:
    return bool(row.get("reject_reason"))


def reject(row: dict, stage: str, reason: str, detail: str = "") -> dict:
    """Mark a row rejected. Its payload is dropped (nothing downstream needs it); key, input and
    timings stay so the reject row says what and where."""
    keep = {k: v for k, v in row.items() if k in ("key", "input") or k.startswith(TIMING_PREFIX)}
    keep.update(zip(REJECT_COLUMNS, (stage, reason, str(detail))))
    return keep


class Reject(Exception):
    """Raised inside a stage function to reject the current row with a named reason."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


def run_rows(stage: str, fn: Callable[[dict], dict], batch) -> pa.Table:
    """Apply `fn(row) -> row` to each live row of a batch, as stage `stage`."""
    out = []
    for row in rows_of(batch):
        if is_rejected(row):
            out.append(row)
            continue
        t0 = time.perf_counter()
        try:
            row = fn(row)
        except Reject as r:
            row = reject(row, stage, r.reason, r.detail)
        except Exception as e:  # noqa: BLE001 - data errors of any kind become rejects
            row = reject(row, stage, "error", f"{type(e).__name__}: {e}")
        row[TIMING_PREFIX + stage] = time.perf_counter() - t0
        out.append(row)
    return batch_of(out)


def cpu_stage(ds, stage: str, fn: Callable[[dict], dict], batch_size: int = 8):
    """`fn` as a Ray Data CPU stage: a task per batch, so GPU actors never wait on this work."""
    from functools import partial

    return ds.map_batches(partial(run_rows, stage, fn), batch_size=batch_size, batch_format="pyarrow")
