"""Faces of a group photo matched to the reference bank (WithAnyone, seed 002, section 3 and
appendix C): one matrix product against every center, then an optimal one-to-one assignment.

Section 3 assigns at cosine 0.4, appendix C at 0.5; both assignments are recorded and the config
picks the one that decides paired / unpaired. An identity appears at most once in a photo, so the
assignment is scipy's linear_sum_assignment on the similarity matrix (maximising total similarity),
not an independent top-1 per face: two faces close to one center cannot both get it.
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

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


def assign(sim: np.ndarray, threshold: float) -> np.ndarray:
    """Identity per face (UNASSIGNED below `threshold`), each identity at most once per photo.
    Pairs under the threshold are excluded before the assignment, so a weak pair never takes an
    identity that a face above the threshold could have had."""
    n, k = sim.shape
    out = np.full(n, UNASSIGNED, np.int64)
    if n == 0 or k == 0:
        return out
    eligible = sim >= threshold
    cols = np.flatnonzero(eligible.any(axis=0))  # only identities some face reaches
    if len(cols) == 0:
        return out
    # maximise the similarity of eligible pairs; ineligible ones cost more than any eligible gain
    weights = np.where(eligible[:, cols], sim[:, cols], -(n + 1.0) * 2)
    rows, picked = linear_sum_assignment(weights, maximize=True)
    for r, c in zip(rows, picked):
        if eligible[r, cols[c]]:
            out[r] = cols[c]
    return out
