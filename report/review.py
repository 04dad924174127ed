"""DIP's human review list. FocusDPO keeps a pair when GPT-4o and human annotators agree (app.
B.3.1); this project's gate is the VLM alone, so the samples a person should check first are the
kept ones whose rubric scores sit next to the gates: a positive (x_r, x_w) scoring 8-9 for some
subject (the gate keeps >= 9) or a negative (x_r, x_l) scoring 6-7 (the gate keeps <= 6). Rejects
are not listed: a wrong reject loses a pair, a wrong keep trains on it.

`subjectforge report OUT/dip` writes them to review.csv beside the pages; `--review` shows only
them as cards."""
from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

BORDER_POSITIVE = (8, 9)  # around app. B.3.1's positive gate, >= 9
BORDER_NEGATIVE = (6, 7)  # around its negative gate, <= 6
COLUMNS = ("key", "shard", "borderline", "prompt", "subjects", "pos_scores", "neg_scores")


def _scores(v) -> list[int]:
    """A subject whose rubric answer did not parse (qa off) has no score: pandas reads it as NaN."""
    return [] if v is None else [int(x) for x in v if pd.notna(x)]


def why_borderline(pos_scores, neg_scores) -> str:
    """'' or what puts a sample on the list: "positive 9; negative 6"."""
    pos = [s for s in _scores(pos_scores) if BORDER_POSITIVE[0] <= s <= BORDER_POSITIVE[1]]
    neg = [s for s in _scores(neg_scores) if BORDER_NEGATIVE[0] <= s <= BORDER_NEGATIVE[1]]
    parts = ([f"positive {min(pos)}"] if pos else []) + ([f"negative {max(neg)}"] if neg else [])
    return "; ".join(parts)


def borderline(manifest: pd.DataFrame) -> pd.DataFrame:
    """The manifest rows on the review list, by key, with a `borderline` column saying why."""
    if manifest.empty or "pos_scores" not in manifest.columns:
        return manifest.iloc[:0].assign(borderline=pd.Series(dtype=str))
    why = [why_borderline(p, n) for p, n in zip(manifest["pos_scores"], manifest["neg_scores"])]
    return manifest.assign(borderline=why)[[bool(w) for w in why]].sort_values("key")


def _cell(v):
    if v is None or isinstance(v, str):
        return v or ""
    return ";".join(map(str, v)) if hasattr(v, "__len__") else v


def write_review(rows: pd.DataFrame, path: Path) -> Path:
    """rows (from `borderline`) as CSV, lists joined with ';' so a spreadsheet shows them in one cell."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows.to_dict("records"):
            w.writerow([_cell(r.get(c)) for c in COLUMNS])
    tmp.replace(path)
    return path
