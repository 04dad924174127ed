"""Faces of a group photo matched to the reference bank (WithAnyone, seed 002, section 3 and
appendix C): one matrix product against every center, then per face the top-1 center above the
threshold.

Section 3 assigns at cosine 0.4, appendix C at 0.5; both assignments are recorded and the config
picks the one that decides paired / unpaired. Functions here work on columns of the similarity
matrix; the caller maps a column to its identity id (the bank's `ids`).
"""
from __future__ import annotations

import numpy as np

UNASSIGNED = -1


def similarities(faces: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[n_faces, n_identities] cosines; both sides are unit-norm ArcFace embeddings."""
    return np.asarray(faces, np.float32) @ np.asarray(centers, np.float32).T


def top1(sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per face: the best identity, its similarity and the margin to the second best (the margin is
    the similarity itself with a one-identity bank). Two argmax passes, not a sort: on 1M faces x
    3,000 centers a full argsort took 83% of retrieval time (benchmarks/multiid.py). The best entry
    is masked in place for the second pass and restored, so `sim` is unchanged on return."""
    n, k = sim.shape
    if k == 0:
        return np.full(n, UNASSIGNED), np.zeros(n, np.float32), np.zeros(n, np.float32)
    rows = np.arange(n)
    ident = sim.argmax(axis=1)
    best = sim[rows, ident].copy()
    if k == 1:
        return ident, best.astype(np.float32), best.astype(np.float32)
    sim[rows, ident] = -np.inf
    second = sim.max(axis=1)
    sim[rows, ident] = best
    return ident, best.astype(np.float32), (best - second).astype(np.float32)


def assign(sim: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Appendix C: each face takes the center with the highest similarity, provided it reaches
    `threshold`. An identity appears at most once in a photo: when faces claim the same one, the
    most similar face keeps it and the others stay unassigned (not moved to their second best,
    which the paper's rule never gives them). Returns (column of `sim` per face or UNASSIGNED,
    conflict per face: lost its top-1 to another face)."""
    n, k = sim.shape
    out = np.full(n, UNASSIGNED, np.int64)
    conflict = np.zeros(n, bool)
    if n == 0 or k == 0:
        return out, conflict
    best = sim.argmax(axis=1)
    score = sim[np.arange(n), best]
    for f in np.argsort(-score, kind="stable"):  # most similar first: it keeps a contested identity
        if score[f] < threshold:
            break
        if best[f] in out:
            conflict[f] = True
        else:
            out[f] = best[f]
    return out, conflict


def reached(sim: np.ndarray, threshold: float) -> np.ndarray:
    """The columns of `sim` that some face reaches at `threshold` or above, top-1 or not: who
    might be in the photo, which is what a leakage-free split and a takedown must go by."""
    return np.flatnonzero((sim >= threshold).any(axis=0)) if sim.size else np.zeros(0, np.int64)
