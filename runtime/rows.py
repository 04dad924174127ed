"""Rows and batches as Ray Data passes them, rejects, and the one row protocol every step runs under.

A step never raises on data: `run_step` hands the live rows of a batch to the step, turns a
Reject (or a data error: a value or file that cannot be read) into a reject row, skips rows an
earlier step rejected, checks that the step wrote only the columns it declared, drops the columns
nothing downstream reads, and records `time_<step>`. Any other exception is a bug, not data: it
propagates and fails the run with its traceback.
"""
from __future__ import annotations

import fnmatch
import time
import zlib
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa

from schemas.contract import REJECT_COLUMNS, TIMING_PREFIX

# What bad data raises: unreadable values (ValueError, json's decode errors), files that are
# missing or truncated (OSError, PIL's UnidentifiedImageError, EOFError, zlib.error). KeyError,
# TypeError, AttributeError, IndexError, ... are bugs and fail the run.
DATA_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, EOFError, zlib.error)
try:  # Pillow's decompression-bomb guard is an Exception of its own
    from PIL.Image import DecompressionBombError

    DATA_ERRORS += (DecompressionBombError,)
except ImportError:  # pragma: no cover - pillow is a dependency
    pass


class Reject(Exception):
    """Raised inside a stage function to reject the current row with a named reason. `retryable`:
    the failure was the infrastructure's, not the data's (the next run tries the row again)."""

    def __init__(self, reason: str, detail: str = "", retryable: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retryable = reason, detail, retryable


class UndeclaredColumn(Exception):
    """A step wrote a column it did not declare: a programming error, never a reject."""


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


def reject(row: dict, stage: str, reason: str, detail: str = "", retryable: bool = False) -> dict:
    """Mark a row rejected. Its payload is dropped (nothing downstream needs it); key, input and
    timings stay so the reject row says what and where."""
    keep = {k: v for k, v in row.items() if k in ("key", "input") or k.startswith(TIMING_PREFIX)}
    keep.update(zip(REJECT_COLUMNS, (stage, reason, str(detail), bool(retryable))))
    return keep


def as_reject(e: BaseException) -> Reject:
    """A Reject as it is; a data error as the reject `bad_data` naming its type."""
    return e if isinstance(e, Reject) else Reject("bad_data", f"{type(e).__name__}: {e}")


def each(fn: Callable[[dict], dict]) -> Callable[[list[dict]], list]:
    """A row function as a batch function: per row the new row, or the Reject its data raised."""

    def on_rows(rows: list[dict]) -> list:
        out = []
        for row in rows:
            try:
                out.append(fn(row))
            except (Reject, *DATA_ERRORS) as e:
                out.append(as_reject(e))
        return out

    return on_rows


def _allowed(column: str, writes: Iterable[str]) -> bool:
    return any(column == w or ("*" in w and fnmatch.fnmatchcase(column, w)) for w in writes)


def run_step(stage: str, batch, fn: Callable[[list[dict]], list], writes: tuple[str, ...] | None = None,
             drop: tuple[str, ...] = (), keep: Callable[[str], bool] | None = None) -> pa.Table:
    """The row protocol: `fn(live rows) -> one new row dict or Reject per row`.

    writes: the columns the step declared (patterns allowed, "mask_*"); a new column outside them
    is UndeclaredColumn. drop: columns to remove after the step (nothing downstream reads them).
    keep: if set, every other column is removed (the last step keeps only what the schema has)."""
    rows = rows_of(batch)
    live = [i for i, r in enumerate(rows) if not is_rejected(r)]
    t0 = time.perf_counter()
    outs = fn([rows[i] for i in live]) if live else []
    if len(outs) != len(live):
        raise RuntimeError(f"step {stage} returned {len(outs)} rows for {len(live)}")
    per_row = (time.perf_counter() - t0) / max(len(live), 1)
    for i, out in zip(live, outs):
        if isinstance(out, Reject):
            out = reject(rows[i], stage, out.reason, out.detail, out.retryable)
        elif writes is not None:
            new = [c for c in out if c not in rows[i] and not _allowed(c, writes)]
            if new:
                raise UndeclaredColumn(f"step {stage!r} wrote column(s) {new} it does not declare "
                                       f"(declared: {sorted(writes)})")
        out[TIMING_PREFIX + stage] = per_row
        rows[i] = out
    for row in rows:
        for c in drop:
            row.pop(c, None)
        if keep is not None:
            for c in [c for c in row if not keep(c)]:
                del row[c]
    return batch_of(rows)
