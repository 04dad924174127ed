"""Rows and batches as Ray Data passes them, and the reject marking every stage uses.

A stage never raises on data: `run_rows` calls the stage's function per row, turns an exception
into a reject row, skips rows that an earlier stage rejected, and records `time_<stage>`.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from schemas.contract import REJECT_COLUMNS, TIMING_PREFIX


def rows_of(batch: dict) -> list[dict]:
    """numpy batch (column -> array) -> list of row dicts."""
    if not batch:
        return []
    n = len(next(iter(batch.values())))
    return [{k: v[i] for k, v in batch.items()} for i in range(n)]


def batch_of(rows: list[dict]) -> dict:
    """list of row dicts -> numpy batch; ragged or mixed columns become object arrays, so images
    of different sizes and None (a rejected row's members) travel together."""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    batch = {}
    for c in cols:
        values = [r.get(c) for r in rows]
        arr = np.empty(len(values), dtype=object)
        arr[:] = values
        batch[c] = arr
    return batch


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


def run_rows(stage: str, fn: Callable[[dict], dict], batch: dict) -> dict:
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
