"""MultiID's pure stages: the DBSCAN reference bank, group-photo retrieval and assignment, and the
benchmark split; on constructed embeddings and on the real faces of ../shared/assets."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from stages.bank import build_bank, cluster_identity, identity_id_of
from stages.bench_split import held_out_identities, leakage_check, split_of
from stages.retrieval import UNASSIGNED, assign, reached, similarities, top1
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
    assert [(i.identity_id, i.name, len(i.reference_keys)) for i in bank.identities] == [
        (identity_id_of("adam"), "adam", 3), (identity_id_of("zoe"), "zoe", 4)]
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


def test_assignment_is_the_papers_top1_and_a_contested_identity_goes_to_the_most_similar_face():
    # appendix C: each face takes its most similar center at or above the threshold. A total-
    # similarity optimum (linear_sum_assignment) would give face 0 identity 1 here (0.60 + 0.70 >
    # 0.80 + 0.10), although its best match is identity 0 at 0.80.
    ids, conflict = assign(np.array([[0.80, 0.60], [0.70, 0.10]], np.float32), 0.5)
    assert ids.tolist() == [0, UNASSIGNED] and conflict.tolist() == [False, True]
    # both faces are closest to identity 0: face 0 (0.80) keeps it, face 1 is not moved to its
    # second best (identity 1 at 0.55): unassigned, recorded as a conflict
    sim = np.array([[0.80, 0.30], [0.75, 0.55], [0.45, 0.10]], np.float32)
    ids, conflict = assign(sim, 0.5)
    assert ids.tolist() == [0, UNASSIGNED, UNASSIGNED] and conflict.tolist() == [False, True, False]
    ids, conflict = assign(sim, 0.4)  # face 2 now reaches 0.4 for identity 0 too: a second conflict
    assert ids.tolist() == [0, UNASSIGNED, UNASSIGNED] and conflict.tolist() == [False, True, True]
    assert assign(sim, 0.9)[0].tolist() == [UNASSIGNED] * 3
    assert assign(np.zeros((0, 3)), 0.5)[0].tolist() == [] and assign(np.zeros((2, 0)), 0.5)[0].tolist() == [-1, -1]


def test_reached_is_every_identity_any_face_reaches():
    sim = np.array([[0.80, 0.45, 0.10], [0.30, 0.20, 0.41]], np.float32)
    assert reached(sim, 0.4).tolist() == [0, 1, 2]  # identity 1 is nobody's top-1 but is reached
    assert reached(sim, 0.5).tolist() == [0]


def group_row(boxes, scores, embeddings):
    n = len(boxes)
    return {"n_faces": n, "face_boxes": np.asarray(boxes, np.float32).reshape(n, 4),
            "det_scores": np.asarray(scores, np.float32), "embeddings": np.asarray(embeddings, np.float32),
            "face_kps": np.zeros((n, 5, 2), np.float32)}


def test_every_detected_face_counts_toward_the_people_count():
    """The Solvay 1927 case: 29 people of whom one face is large enough to identify is a face_count
    reject, not a one-person photo; weak detections (under min_det_score) are not people."""
    from runtime.rows import Reject
    from stages.multiid import group_faces

    rng = np.random.default_rng(4)
    boxes = [[0, 0, 120, 140]] + [[10 * i, 200, 10 * i + 20, 224] for i in range(28)]  # 28 faces of 20 px
    row = group_row(boxes, [0.9] * 29, unit(rng.normal(size=(29, 512))))
    with pytest.raises(Reject) as e:
        group_faces(row, min_faces=1, max_faces=5, min_det_score=0.5, min_face_px=32)
    assert e.value.reason == "face_count" and e.value.detail.startswith("29 faces (28 too small")
    # 3 people, one too small: all three stay in the record, the small one flagged
    row = group_row(boxes[:3] + [[0, 0, 50, 50]], [0.9, 0.8, 0.7, 0.3], unit(rng.normal(size=(4, 512))))
    out = group_faces(row, min_faces=1, max_faces=5, min_det_score=0.5, min_face_px=32)
    assert out["n_faces"] == 3 and out["identifiable"] == [True, False, False] and len(out["embeddings"]) == 3


def test_retrieve_records_hashed_ids_conflicts_reached_and_skips_small_faces():
    from stages.multiid import retrieve

    rng = np.random.default_rng(5)
    centers = unit(rng.normal(size=(3, 512)))
    ids = np.array([identity_id_of(n) for n in ("ann", "bob", "cy")], np.int32)
    faces = np.stack([around(centers[0], 1, 0.3, rng)[0], around(centers[0], 1, 0.6, rng)[0],
                      around(centers[2], 1, 0.3, rng)[0]])
    row = {"embeddings": faces, "identifiable": [True, True, False]}
    (r,) = retrieve([row], centers, ids, thresholds=(0.4, 0.5), assign_threshold=0.5)
    sim = faces @ centers.T
    assert sim[0, 0] > sim[1, 0] >= 0.5 and sim[2, 2] > 0.5  # two faces claim ann; face 2 is cy but too small
    assert r["identity"] == [ids[0], -1, -1] and r["conflict"] == [False, True, False]
    assert r["top1_identity"][:2] == [ids[0], ids[0]] and r["top1_identity"][2] == -1 and r["similarity"][2] is None
    assert set(r["reached"]) == {int(ids[0]), int(ids[2])}  # the small face still counts for the split
    assert r["paired"] and r["n_assigned"] == 1


def test_identity_ids_are_hashes_of_the_names_not_positions():
    rng = np.random.default_rng(6)
    c = unit(rng.normal(size=(3, 64)))
    emb = np.concatenate([around(c[i], 3, 0.2, rng) for i in range(3)])
    names = ["ann"] * 3 + ["bob"] * 3 + ["cy"] * 3
    full = build_bank([f"k{i}" for i in range(9)], names, emb, eps=0.3, min_samples=2, min_references=2)
    without_ann = build_bank([f"k{i}" for i in range(3, 9)], names[3:], emb[3:], eps=0.3, min_samples=2,
                             min_references=2)
    by_name = {i.name: i.identity_id for i in full.identities}
    assert by_name == {i.name: i.identity_id for i in without_ann.identities} | {"ann": identity_id_of("ann")}
    assert full.ids.tolist() == [by_name[n] for n in ("ann", "bob", "cy")] and all(i >= 0 for i in full.ids)


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
    check = leakage_check(splits, {"reached": photos}, held)
    assert check["ok"] and check["overlap"] == {} and check["bench_identities"] == 10
    assert check["bench_photos"] == sum(any(i in held for i in p) for p in photos) > 0


def test_a_photo_with_one_held_out_identity_goes_to_bench():
    photos = [[0, 1], [0], [0], [1], [1], [2, 0], [0, 1]]
    held = held_out_identities(photos, count=1)
    assert held == {2}
    assert [split_of(p, held) for p in photos] == ["train"] * 5 + ["bench", "train"]
    assert not leakage_check(["train"] * 7, {"reached": photos}, held)["ok"]  # had it stayed in train: a leak


def test_leakage_check_looks_at_every_threshold():
    """A held-out person assigned only at 0.4 (the 0.5 assignment leaves the face unassigned) in a
    train photo is a leak: checking the 0.5 assignment alone would miss it."""
    held = {7}
    at_050, at_040 = [[1, -1], [2]], [[1, 7], [2]]
    assert leakage_check(["train", "train"], {"0.5": at_050}, held)["ok"]
    check = leakage_check(["train", "train"], {"0.5": at_050, "0.4": at_040}, held)
    assert not check["ok"] and check["overlap"] == {"0.4": [7]}
    assert leakage_check(["bench", "train"], {"0.5": at_050, "0.4": at_040}, held)["ok"]


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
            got = [bank.identities[i].name for i in assign(sim, threshold)[0] if i != UNASSIGNED]
            assert sorted(got) == sorted(meta["known"]), (path, threshold)
        for f in range(len(best)):
            print(f"{path} face {f}: top-1 {bank.identities[ident[f]].name} similarity {best[f]:.3f} "
                  f"margin {margin[f]:.3f}")
