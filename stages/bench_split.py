"""The MultiID-Bench split (WithAnyone, seed 002, section 4 and appendix D): the least frequent
identities are held out, and every group photo that shows one of them goes to the benchmark, so no
held-out face is ever seen in training (no identity leakage)."""
from __future__ import annotations

from collections import Counter


def held_out_identities(photo_identities: list[list[int]], count: int | None = None,
                        fraction: float | None = None) -> set[int]:
    """The `count` (or `fraction` of all) identities that appear in the fewest group photos; ties go
    to the lower id so the split is deterministic."""
    freq = Counter(i for ids in photo_identities for i in set(ids) if i >= 0)
    ranked = sorted(freq, key=lambda i: (freq[i], i))
    if count is None:
        count = round(len(ranked) * (fraction or 0.0))
    return set(ranked[:count])


def split_of(reached: list[int], held_out: set[int]) -> str:
    """bench if any face of the photo reaches a held-out identity (at the low threshold, assigned
    or not), else train."""
    return "bench" if any(i in held_out for i in reached) else "train"


def leakage_check(splits: list[str], identities: dict[str, list[list[int]]], held_out: set[int]) -> dict:
    """The benchmark's identities (held out) against every identity a train photo shows, under each
    reading of "shows" (`identities`: e.g. the assignment at 0.4, at 0.5, every identity a face
    reaches): no held-out identity may appear in a train photo under any of them. (A bench photo
    may also show train identities; that is no leak.)"""
    overlap = {}
    for name, per_photo in identities.items():
        train = {i for s, ids in zip(splits, per_photo) if s == "train" for i in ids if i >= 0}
        overlap[name] = sorted(train & set(held_out))
    return {"bench_identities": len(held_out), "bench_photos": sum(s == "bench" for s in splits),
            "train_photos": sum(s == "train" for s in splits), "overlap": {k: v for k, v in overlap.items() if v},
            "checked": sorted(identities), "ok": not any(overlap.values())}
