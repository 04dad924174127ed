"""Identity metrics of MultiID-Bench (seed 002, WithAnyone, section 4 and appendix D), on face
embeddings r (reference), t (target / ground truth) and g (generated), as numpy arrays.

Eq. 1:  Sim(a, b) = a^T b / (||a|| ||b||),  Sim_GT = Sim(g, t),  Sim_Ref = Sim(g, r).
Eq. 2:  theta_ab = arccos(Sim(a, b)),
        M_CP(g | t, r) = (theta_gt - theta_gr) / max(theta_tr, eps)  in [-1, 1],
        "where eps is a small constant for numerical stability" (the paper gives no value; ours is
        EPS = 1e-6 rad). 1 = g coincides with r (copy-paste), -1 = g coincides with t.
Eq. 8:  M_Bld(x^g, x^t) = 1/(N^2 - N) * sum_i sum_{j != i} cos(g_i, t_j), "the average of the
        off-diagonal elements" of the generated-vs-GT similarity matrix; lower is better.
ID similarity (appendix F.1): "Single face embedding model may induce biased evaluation on ID
        similarity, thus we average three de-facto face recognition models' cosine similarity to
        compute the overall ID similarity metric, namely ArcFace, FaceNet, and AdaFace."

Face matching is our choice: the paper speaks of "matched ArcFace embeddings" and of a similarity
matrix whose diagonal is identity fidelity, but does not say how generated faces are matched to GT
faces, so match_faces uses the optimal one-to-one assignment (scipy's linear_sum_assignment,
maximising the summed cosine).

All functions take unnormalised embeddings and broadcast over leading axes ([..., d]); a zero
vector has no direction and gives nan.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy.optimize import linear_sum_assignment

EPS = 1e-6  # radians; the paper only says "a small constant"


def sim(a, b) -> np.ndarray | float:
    """Eq. 1: Sim(a, b) = a^T b / (||a|| ||b||) over the last axis, broadcasting the others."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.sum(a * b, axis=-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return out[()] if out.ndim == 0 else out  # a float for two 1-D vectors


def sim_gt(g, t):
    """Eq. 1: Sim_GT = g^T t / (||g|| ||t||), the benchmark's primary identity metric."""
    return sim(g, t)


def sim_ref(g, r):
    """Eq. 1: Sim_Ref = g^T r / (||g|| ||r||); high values alone reward copy-paste."""
    return sim(g, r)


def angle(a, b):
    """theta_ab = arccos(Sim(a, b)), the geodesic distance on the unit sphere. The cosine is
    clipped to [-1, 1] because rounding can push it just past 1 for (near-)parallel vectors."""
    return np.arccos(np.clip(sim(a, b), -1.0, 1.0))


def copy_paste(g, t, r, eps: float = EPS):
    """Eq. 2: M_CP(g | t, r) = (theta_gt - theta_gr) / max(theta_tr, eps).

    The triangle inequality on the sphere gives |theta_gt - theta_gr| <= theta_tr, so the value
    stays in [-1, 1] (up to rounding) even when eps replaces a tiny theta_tr; t == r gives 0."""
    return (angle(g, t) - angle(g, r)) / np.maximum(angle(t, r), eps)


def match_faces(g_faces, t_faces) -> tuple[np.ndarray, np.ndarray]:
    """Our choice (the paper does not say): the one-to-one matching of generated faces [Ng, d] to
    GT faces [Nt, d] that maximises the summed cosine. Returns index arrays (gi, ti): generated
    face gi[k] is matched to GT face ti[k]; min(Ng, Nt) pairs, gi ascending, so g_faces[gi] and
    t_faces[ti] are in matched order. Unmatched faces (Ng != Nt) are left out."""
    cos = sim(np.asarray(g_faces)[:, None, :], np.asarray(t_faces)[None, :, :])
    gi, ti = linear_sum_assignment(np.nan_to_num(cos, nan=-1.0), maximize=True)
    return gi, ti


def blending(g_faces, t_faces) -> float:
    """Eq. 8: M_Bld = 1/(N^2 - N) * sum_{i != j} cos(g_i, t_j), with g_faces and t_faces [N, d]
    in matched order (row i of each is the same identity, see match_faces).

    N == 1 has no off-diagonal element (0/0), so it returns nan; callers averaging over a
    benchmark should skip those cases (np.nanmean) rather than count them as zero blending."""
    g, t = np.asarray(g_faces), np.asarray(t_faces)
    if g.ndim != 2 or g.shape != t.shape:
        raise ValueError(f"blending needs matched [N, d] faces, got {g.shape} and {t.shape}")
    n = g.shape[0]
    if n < 2:
        return float("nan")
    cos = sim(g[:, None, :], t[None, :, :])  # cos[i, j] = cos(g_i, t_j)
    return float((cos.sum() - np.trace(cos)) / (n * n - n))


def id_similarity(per_model: Mapping[str, tuple]) -> float:
    """Overall ID similarity (appendix F.1): the mean over face recognition models (the paper uses
    ArcFace, FaceNet, AdaFace) of each model's Sim_GT. per_model maps a model name to its (g, t)
    embeddings, [d] or matched [N, d]; several faces are averaged within a model first, then the
    models are averaged with equal weight, as the paper averages "models' cosine similarity"."""
    if not per_model:
        raise ValueError("id_similarity needs at least one face model")
    return float(np.mean([np.mean(sim_gt(g, t)) for g, t in per_model.values()]))
