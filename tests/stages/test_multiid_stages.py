"""MultiID's pure stages: the DBSCAN reference bank, group-photo retrieval and assignment, and the
benchmark split; on constructed embeddings and on the real faces of ../shared/assets."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from stages.bank import build_bank, cluster_identity
from stages.bench_split import held_out_identities, leakage_check, split_of
from stages.retrieval import UNASSIGNED, assign, similarities, top1
from tests.conftest import assets_or_skip


def unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def around(center, n, spread, rng):
    """n unit vectors at about `spread` cosine distance from `center`."""
    return unit(center + spread * rng.normal(size=(n, len(center))) / np.sqrt(len(center)))


# ------------------------------------------------------------------------------------------------
# bank


def test_largest_cluster_is_the_identity_and_the_rest_are_outliers():
    rng = np.random.default_rng(0)
    a, b = unit(rng.normal(size=64)), unit(rng.normal(size=64))
    emb = np.concatenate([around(a, 5, 0.3, rng), around(b, 2, 0.3, rng), unit(rng.normal(size=(1, 64)))])
    member, n_clusters = cluster_identity(emb, eps=0.3, min_samples=2)
    assert n_clusters == 2 and member.tolist() == [True] * 5 + [False] * 3


def test_bank_ids_centers_rejects():
    rng = np.random.default_rng(1)
    centers = unit(rng.normal(size=(3, 64)))
    emb = np.concatenate([around(centers[0], 4, 0.2, rng), around(centers[1], 3, 0.2, rng),
                          unit(rng.normal(size=(1, 64))),  # a stranger among zoe's photos
                          around(centers[2], 1, 0.2, rng)])  # a single photo: too few
    names = ["zoe"] * 4 + ["adam"] * 3 + ["zoe"] + ["solo"]
    keys = [f"k{i}" for i in range(len(names))]
    bank = build_bank(keys, names, emb, eps=0.3, min_samples=2, min_references=2)
    assert [(i.identity_id, i.name, len(i.reference_keys)) for i in bank.identities] == [(0, "adam", 3), (1, "zoe", 4)]
    assert sorted(bank.rejects) == [("k7", "outlier", "zoe: outside the largest of 1 clusters"),
                                    ("k8", "too_few_references", "solo: 1 photos < 2")]
    zoe = bank.identities[1]
    expected = emb[:4].mean(0) / np.linalg.norm(emb[:4].mean(0))
    np.testing.assert_allclose(zoe.center, expected, rtol=1e-5)
    assert bank.centers.shape == (2, 64) and bank.centers.dtype == np.float32
    np.testing.assert_allclose(zoe.center_similarity, emb[:4] @ expected, rtol=1e-5)
    assert min(zoe.center_similarity) > 0.7


# ------------------------------------------------------------------------------------------------
# retrieval


def test_top1_and_margin():
    sim = np.array([[0.2, 0.7, 0.5], [0.1, 0.05, 0.3]], np.float32)
    ident, best, margin = top1(sim)
    assert ident.tolist() == [1, 2]
    np.testing.assert_allclose(best, [0.7, 0.3])
    np.testing.assert_allclose(margin, [0.2, 0.2], atol=1e-6)
    assert sim.tolist() == np.array([[0.2, 0.7, 0.5], [0.1, 0.05, 0.3]], np.float32).tolist()  # restored
    ident, best, margin = top1(np.array([[0.4], [0.6]], np.float32))  # a one-identity bank
    assert ident.tolist() == [0, 0] and margin.tolist() == best.tolist()


def test_assignment_is_one_to_one_and_thresholded():
    # both faces are closest to identity 0; face 1 also clears 0.5 for identity 1
    sim = np.array([[0.80, 0.30], [0.75, 0.55], [0.45, 0.10]], np.float32)
    assert assign(sim, 0.5).tolist() == [0, 1, UNASSIGNED]
    assert assign(sim, 0.4).tolist() == [0, 1, UNASSIGNED]  # face 2 loses identity 0 to face 0
    assert assign(sim, 0.9).tolist() == [UNASSIGNED] * 3
    # the optimum, not greedy: greedy would give face 0 identity 0 (0.9) and leave face 1 without one
    sim = np.array([[0.90, 0.85], [0.88, 0.10]], np.float32)
    assert assign(sim, 0.5).tolist() == [1, 0]
    assert assign(np.zeros((0, 3)), 0.5).tolist() == [] and assign(np.zeros((2, 0)), 0.5).tolist() == [-1, -1]


def test_similarities_are_one_matrix_product():
    rng = np.random.default_rng(2)
    faces, centers = unit(rng.normal(size=(4, 512))), unit(rng.normal(size=(7, 512)))
    np.testing.assert_allclose(similarities(faces, centers),
                               [[float(f @ c) for c in centers] for f in faces], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# benchmark split


def test_long_tail_split_has_no_leak():
    rng = np.random.default_rng(3)
    n_ids = 50
    freq = np.maximum(1, (200 / np.arange(1, n_ids + 1) ** 1.2).astype(int))  # a long tail
    photos = []
    for _ in range(400):
        k = rng.integers(1, 4)
        photos.append(list(rng.choice(n_ids, size=k, replace=False, p=freq / freq.sum())))
    held = held_out_identities(photos, fraction=0.2)
    assert len(held) == 10
    counts = {i: sum(i in p for p in photos) for i in range(n_ids)}
    assert max(counts[i] for i in held) <= min(c for i, c in counts.items() if i not in held and c > 0)
    splits = [split_of(p, held) for p in photos]
    check = leakage_check(splits, photos, held)
    assert check["ok"] and check["overlap"] == [] and check["bench_identities"] == 10
    assert check["bench_photos"] == sum(any(i in held for i in p) for p in photos) > 0


def test_a_photo_with_one_held_out_identity_goes_to_bench():
    photos = [[0, 1], [0], [0], [1], [1], [2, 0], [0, 1]]
    held = held_out_identities(photos, count=1)
    assert held == {2}
    assert [split_of(p, held) for p in photos] == ["train"] * 5 + ["bench", "train"]
    assert not leakage_check(["train"] * 7, photos, held)["ok"]  # had it stayed in train: a leak


# ------------------------------------------------------------------------------------------------
# real faces (../shared/assets/images/faces)


@pytest.fixture(scope="module")
def real_bank():
    from runtime.rows import batch_of, rows_of
    from workers.face_analysis import FaceAnalysis

    assets = assets_or_skip()
    faces = assets / "images/faces"
    worker = FaceAnalysis(str(assets / "models/insightface_pack"))
    labels = list(csv.DictReader((faces / "labels.csv").open()))
    out = rows_of(worker(batch_of([{"image": (faces / r["path"]).read_bytes()} for r in labels])))
    assert [r["n_faces"] for r in out] == [1] * len(labels)
    emb = np.stack([r["embeddings"][0] for r in out])
    names = [r["identity"] for r in labels]
    bank = build_bank([r["path"] for r in labels], names, emb, eps=0.5, min_samples=2, min_references=2)
    return bank, emb, names, labels, worker, faces


def test_real_bank_has_the_twelve_identities_pure(real_bank):
    bank, emb, names, labels, _, _ = real_bank
    assert sorted(i.name for i in bank.identities) == sorted(set(names)) and len(bank.identities) == 12
    assert bank.rejects == []  # every photo is in its identity's cluster: no identity split
    # purity: every photo's nearest center is its own identity's
    nearest = np.argmax(emb @ bank.centers.T, axis=1)
    purity = np.mean([bank.identities[j].name == n for j, n in zip(nearest, names)])
    print(f"bank purity {purity:.3f}; center similarity min "
          f"{min(min(i.center_similarity) for i in bank.identities):.3f}")
    assert purity == 1.0


def test_real_group_photos_assign_known_faces_only(real_bank):
    from runtime.rows import batch_of, rows_of

    bank, _, _, _, worker, faces = real_bank
    groups = json.loads((faces / "groups.json").read_text())
    for path, meta in groups.items():
        row = rows_of(worker(batch_of([{"image": (faces / path).read_bytes()}])))[0]
        assert row["n_faces"] == meta["faces"], path
        sim = similarities(row["embeddings"], bank.centers)
        ident, best, margin = top1(sim)
        for threshold in (0.4, 0.5):
            got = [bank.identities[i].name for i in assign(sim, threshold) if i != UNASSIGNED]
            assert sorted(got) == sorted(meta["known"]), (path, threshold)
        for f in range(len(best)):
            print(f"{path} face {f}: top-1 {bank.identities[ident[f]].name} similarity {best[f]:.3f} "
                  f"margin {margin[f]:.3f}")
