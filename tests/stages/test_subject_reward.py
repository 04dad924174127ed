"""R_sub arithmetic (seed 001, sec. 3.1.3 eq. 1 and app. B.1) with deterministic feature functions
in place of DINOv2: random weights would rank nothing, and the real encoder runs the same code."""
import numpy as np
import pytest

from stages.subject_reward import corresponding_views, patch_grid, r_sub, random_boxes, subject_reward

RED, GREEN = (100, 0, 0), (0, 100, 0)


def mean_rgb(views):
    """A feature per view: its mean colour."""
    return np.stack([v.reshape(-1, 3).mean(0) for v in views])


def image(columns):
    """3 x 3 image from three column colours."""
    return np.array([columns] * 3, np.uint8)


def test_448_gives_the_nine_patches_of_the_224_112_grid():
    boxes = patch_grid(448, 448, 224, 112)
    assert len(boxes) == 9
    assert boxes == [(x, y, x + 224, y + 224) for y in (0, 112, 224) for x in (0, 112, 224)]
    assert len(patch_grid(512, 512)) == 9  # the 64 px remainder is not a patch
    assert len(patch_grid(560, 448)) == 3 * 4  # 560 high: 4 rows
    with pytest.raises(ValueError):
        patch_grid(200, 448)


def test_views_are_cut_at_the_same_place_in_both_images():
    yy, xx = np.mgrid[0:448, 0:448]
    ref = np.stack([yy // 2, xx // 2, np.zeros_like(xx)], -1).astype(np.uint8)  # pixel value = position
    target = ref + 1
    a, b, n_patch = corresponding_views(ref, target, crops=4, rng=np.random.default_rng(1))
    assert n_patch == 9 and len(a) == len(b) == 1 + 9 + 4
    assert a[0].shape == (448, 448, 3) and all(v.shape == (224, 224, 3) for v in a[1:])
    for va, vb in zip(a, b):
        assert (vb.astype(int) - va == 1).all()  # view k of both images: the same box
    assert [(int(v[0, 0, 0]) * 2, int(v[0, 0, 1]) * 2) for v in a[1:10]] == [(y, x) for y in (0, 112, 224)
                                                                          for x in (0, 112, 224)]


def test_identical_images_give_one_everywhere_and_trigger_the_penalty():
    im = np.random.default_rng(0).integers(0, 256, (448, 448, 3), dtype=np.uint8)
    out = r_sub(im, im.copy(), mean_rgb, crops=3, rng=np.random.default_rng(0), copy_paste_similarity=0.95,
                copy_paste_penalty=2.0)
    assert out["r_sub_patch"] == pytest.approx(1) and out["r_sub_cls"] == pytest.approx(1)
    assert out["r_sub_crops"] == pytest.approx(1)
    assert out["r_sub_penalty"] == pytest.approx(2 * (1 - 0.95))
    assert out["r_sub"] == pytest.approx(0.9)
    assert r_sub(im, im, mean_rgb, copy_paste_similarity=None)["r_sub"] == pytest.approx(1)


def test_hand_computed_small_case():
    # 3 x 3 images, 2 x 2 patches at stride 1: four patches, columns 0-1 (left) and 1-2 (right).
    ref = image([RED, RED, GREEN])
    target = image([GREEN, RED, RED])
    out = r_sub(ref, target, mean_rgb, size=3, patch=2, stride=1, copy_paste_similarity=None)
    # left patches: ref (100, 0, 0) vs target (50, 50, 0): cos 1/sqrt(2); right: (50, 50, 0) vs
    # (100, 0, 0): 1/sqrt(2). Every corresponding pair is 0.7071; pairing all patches with all
    # would give (2 * 0.7071 + 2 * 1) / 4 = 0.8536.
    assert out["r_sub_patch"] == pytest.approx(1 / np.sqrt(2))
    # whole images: both means are (66.7, 33.3, 0): the global cosine is 1 where the patches see the
    # mirrored layout (sec. 3.1.3: "global metrics ... often miss" local differences)
    assert out["r_sub_cls"] == pytest.approx(1)
    assert out["r_sub_crops"] is None and out["r_sub_penalty"] == 0 and out["r_sub"] == out["r_sub_patch"]

    same = image([RED, RED, RED])
    both = r_sub(same, target, mean_rgb, size=3, patch=2, stride=1, weights={"patch": 1, "cls": 1},
                 copy_paste_similarity=0.8, copy_paste_penalty=2.0)
    patch = (2 / np.sqrt(2) + 2) / 4  # left patches 0.7071, right patches 1
    cls = 2 / np.sqrt(5)  # (100, 0, 0) . (66.7, 33.3, 0)
    s = (patch + cls) / 2
    assert both["r_sub_patch"] == pytest.approx(patch) and both["r_sub_cls"] == pytest.approx(cls)
    assert both["r_sub_penalty"] == pytest.approx(2 * (s - 0.8))
    assert both["r_sub"] == pytest.approx(s - 2 * (s - 0.8))


def test_subject_reward_weights_and_bad_cosines():
    cos = [0.5] + [0.9] * 9 + [0.7, 0.8]
    out = subject_reward(cos, 9, {"patch": 0.5, "cls": 0.25, "crops": 0.25}, None)
    assert out["r_sub"] == pytest.approx(0.5 * 0.9 + 0.25 * 0.5 + 0.25 * 0.75)
    # a weight on a component that is absent (no crops) is left out, the others renormalised
    out = subject_reward(cos[:10], 9, {"patch": 1, "cls": 1, "crops": 1}, None)
    assert out["r_sub"] == pytest.approx((0.9 + 0.5) / 2) and out["r_sub_crops"] is None
    with pytest.raises(ValueError):
        subject_reward([np.nan] * 10, 9)
    with pytest.raises(ValueError):
        subject_reward([1.0] * 5, 9)  # fewer cosines than views
    with pytest.raises(ValueError):
        subject_reward(cos, 9, {"crops": 0, "patch": 0})


def test_random_boxes_fit_and_follow_the_seed():
    boxes = random_boxes(448, 448, 224, 50, np.random.default_rng(3))
    assert all(0 <= x0 and x1 <= 448 and 0 <= y0 and y1 <= 448 and x1 - x0 == 224 == y1 - y0
               for x0, y0, x1, y1 in boxes)
    assert boxes == random_boxes(448, 448, 224, 50, np.random.default_rng(3))
    assert len({b[:2] for b in boxes}) > 40  # spread, not one place
