"""The report's summary charts, drawn with matplotlib (Figure directly, not pyplot: no global state,
no display) into PNG data URIs."""
from __future__ import annotations

import base64
import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

def png_uri(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def flat_values(column: pd.Series) -> np.ndarray:
    values = []
    for v in column.dropna():
        values.extend(np.ravel(v).tolist() if isinstance(v, (list, tuple, np.ndarray)) else [v])
    arr = np.asarray(values, dtype=np.float64) if values else np.zeros(0)
    return arr[np.isfinite(arr)]


def rejects_by_reason(rejects: pd.DataFrame) -> str | None:
    if rejects.empty:
        return None
    counts = rejects.groupby(["stage", "reason"]).size().sort_values()
    fig = Figure(figsize=(7, 0.6 + 0.3 * len(counts)), layout="constrained")
    ax = fig.add_subplot()
    labels = [f"{s}: {r}" for s, r in counts.index]
    ax.barh(labels, counts.values, color="#c0392b")
    for y, n in enumerate(counts.values):
        ax.text(n, y, f" {n}", va="center", fontsize=8)
    ax.set_xlabel("rejected samples")
    ax.set_title("rejects by stage and reason")
    return png_uri(fig)


def score_histograms(manifest: pd.DataFrame, charted) -> str | None:
    """Histograms of the manifest columns a dataset's spec charts (list columns flattened: one value
    per subject / face / instance)."""
    columns = [(c, flat_values(manifest[c])) for c in charted if c in manifest]
    columns = [(c, v) for c, v in columns if len(v)]
    if not columns:
        return None
    fig = Figure(figsize=(3 * len(columns), 2.6), layout="constrained")
    for i, (name, values) in enumerate(columns):
        ax = fig.add_subplot(1, len(columns), i + 1)
        ax.hist(values, bins=min(20, max(5, len(np.unique(values)))), color="#2e6fba")
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"score distributions ({len(manifest)} samples)", fontsize=10)
    return png_uri(fig)


def stage_throughput(stages: list[dict]) -> str | None:
    """Rows per second of work in each stage, with its seconds, from the latest run's stage table."""
    timed = [s for s in stages if s.get("rows_per_second")]
    if not timed:
        return None
    fig = Figure(figsize=(7, 0.6 + 0.3 * len(timed)), layout="constrained")
    ax = fig.add_subplot()
    names = [s["stage"] for s in timed][::-1]
    rates = [s["rows_per_second"] for s in timed][::-1]
    ax.barh(names, rates, color="#2a9d3a")
    for y, s in enumerate(timed[::-1]):
        ax.text(s["rows_per_second"], y, f" {s['rows_in']} rows, {s['seconds']:.1f} s", va="center", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("rows per second of stage work (log)")
    ax.set_title("per-stage throughput, latest run")
    return png_uri(fig)
