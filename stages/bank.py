"""The ArcFace reference bank of MultiID (WithAnyone, seed 002, section 3 and appendix C).

Per identity, DBSCAN (scikit-learn, cosine metric) clusters the embeddings of its single-person
photos; the largest cluster is the identity: its members are the references and its normalised
mean the center that group-photo faces are matched against. Photos outside the largest cluster
are "outlier" rejects (a mislabelled photo, a second person who was detected instead); an identity
with fewer than `min_references` references is dropped ("too_few_references"). An identity's id
is a hash of its name (its folder or label): anonymous, and stable when other identities are added
or removed, so a held-out or forgotten id keeps meaning the same person. The training data carries
no names (a name mapping is written only when the config asks).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Identity:
    identity_id: int
    name: str
    center: np.ndarray  # float32 [d], unit norm
    reference_keys: list[str]
    center_similarity: list[float]  # cosine of each reference to the center
    n_photos: int  # embeddings offered for this identity
    n_clusters: int  # DBSCAN clusters found (noise excluded)


@dataclass
class Bank:
    identities: list[Identity] = field(default_factory=list)
    rejects: list[tuple[str, str, str]] = field(default_factory=list)  # (key, reason, detail)

    @property
    def centers(self) -> np.ndarray:
        """float32 [n_identities, d], row i is self.identities[i]'s center (ids in `ids`)."""
        if not self.identities:
            return np.zeros((0, 512), np.float32)
        return np.stack([i.center for i in self.identities]).astype(np.float32)

    @property
    def ids(self) -> np.ndarray:
        """int32 [n_identities]: the identity id of each row of `centers`."""
        return np.asarray([i.identity_id for i in self.identities], np.int32)


def identity_id_of(name: str) -> int:
    """A non-negative int32 from the name's SHA-256 (-1 means unassigned everywhere)."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:4], "big") & 0x7FFFFFFF


def cluster_identity(embeddings: np.ndarray, eps: float, min_samples: int) -> tuple[np.ndarray, int]:
    """Boolean mask of the largest DBSCAN cluster (cosine distance) and the number of clusters.
    Ties go to the cluster with the earliest member, so the choice does not depend on label order."""
    from sklearn.cluster import DBSCAN  # imported where it runs: a pipeline's registry does not pay for it

    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="cosine").fit_predict(embeddings)
    clusters = [c for c in np.unique(labels) if c >= 0]
    if not clusters:
        return np.zeros(len(embeddings), bool), 0
    sizes = {c: (int((labels == c).sum()), -int(np.argmax(labels == c))) for c in clusters}
    best = max(clusters, key=lambda c: sizes[c])
    return labels == best, len(clusters)


def build_bank(keys: list[str], names: list[str], embeddings: np.ndarray, *, eps: float, min_samples: int,
               min_references: int) -> Bank:
    """keys[i] / names[i] / embeddings[i]: one single-person photo's face. Every key ends up either
    in an identity's references or in `rejects`."""
    embeddings = np.asarray(embeddings, np.float32)
    bank, by_name = Bank(), {}
    for i, name in enumerate(names):
        by_name.setdefault(name, []).append(i)
    for name in sorted(by_name):
        idx = np.asarray(by_name[name])
        if len(idx) < min_references:
            bank.rejects += [(keys[i], "too_few_references", f"{name}: {len(idx)} photos < {min_references}")
                             for i in idx]
            continue
        member, n_clusters = cluster_identity(embeddings[idx], eps, min_samples)
        kept = idx[member]
        bank.rejects += [(keys[i], "outlier", f"{name}: outside the largest of {n_clusters} clusters")
                         for i in idx[~member]]
        if len(kept) < min_references:
            bank.rejects += [(keys[i], "too_few_references", f"{name}: {len(kept)} references < {min_references}")
                             for i in kept]
            continue
        center = embeddings[kept].mean(axis=0)
        center /= max(float(np.linalg.norm(center)), 1e-12)
        bank.identities.append(Identity(
            identity_id=identity_id_of(name), name=name, center=center.astype(np.float32),
            reference_keys=[keys[i] for i in kept],
            center_similarity=[float(s) for s in embeddings[kept] @ center],
            n_photos=len(idx), n_clusters=n_clusters))
    ids = bank.ids
    if len(set(ids.tolist())) != len(ids):  # 1 in ~500 at 3,000 names: rename one, never merge two people
        clash = [i.name for i in bank.identities if (ids == i.identity_id).sum() > 1]
        raise ValueError(f"identity id collision between {clash}: rename one of them")
    return bank
