"""DIP stages without models: the complexity map M_d (seed 000, eq. 7-8), the subject catalog and its
prompts, DreamBench photo pairs and the image loader, and the mask helpers (M_prior, boxes, the
OpenCV loser)."""
from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.conftest import ROOT, assets_or_skip
from PIL import Image

from runtime.rows import Reject
from stages import catalog as C
from stages import masks as K
from stages import photos as P
from stages.complexity import complexity_map, entropy
from tests.helpers import png

CATALOG = ROOT / "configs" / "catalogs" / "dip_subjects.yaml"


def reason(fn, *args, **kwargs) -> str:
    with pytest.raises(Reject) as e:
        fn(*args, **kwargs)
    return e.value.reason


# --- M_d, seed 000 eq. 7-8 ---------------------------------------------------------------------

# a 4x4 patch with histogram {0: 8, 1: 4, 2: 2, 3: 2}: p = 1/2, 1/4, 1/8, 1/8
# H = 1/2*1 + 1/4*2 + 2 * 1/8*3 = 1.75 bits
PATCH_175 = np.array([0] * 8 + [1] * 4 + [2] * 2 + [3] * 2, np.uint8).reshape(4, 4)


def test_entropy_by_hand():
    assert entropy(PATCH_175, 256) == pytest.approx(1.75, abs=1e-12)
    assert entropy(np.full((4, 4), 9, np.uint8), 256) == 0.0
    assert entropy(np.array([0, 255] * 8, np.uint8), 256) == pytest.approx(1.0)
    assert entropy(np.repeat(np.arange(4, dtype=np.uint8), 4), 256) == pytest.approx(2.0)
    # 2 bins of 128 levels: 0..3 all fall in the first, 0 / 200 in different ones
    assert entropy(PATCH_175, 2) == 0.0
    assert entropy(np.array([0, 200] * 8, np.uint8), 2) == pytest.approx(1.0)


def test_complexity_flat_image_is_zero():
    m = complexity_map(np.full((64, 80, 3), 123, np.uint8))
    assert m.shape == (4, 5) and m.dtype == np.float16
    assert not m.any()


def test_complexity_checkerboard_patch_is_the_maximum():
    img = np.full((48, 48), 128, np.uint8)
    checker = (np.indices((16, 16)).sum(axis=0) % 2 * 255).astype(np.uint8)  # half 0, half 255
    img[16:32, 32:48] = checker
    m = complexity_map(np.stack([img] * 3, axis=-1))
    expected = np.zeros((3, 3), np.float16)
    expected[1, 2] = 1.0
    np.testing.assert_array_equal(m, expected)


def test_complexity_normalisation_by_hand():
    # four 4x4 cells with entropies 0, 1, 1.75, 2 bits -> eq. 8: 0, 0.5, 0.875, 1 (exact in float16)
    cells = [np.zeros((4, 4), np.uint8), np.array([0, 255] * 8, np.uint8).reshape(4, 4), PATCH_175,
             np.repeat(np.arange(4, dtype=np.uint8), 4).reshape(4, 4)]
    img = np.block([[cells[0], cells[1]], [cells[2], cells[3]]])
    m = complexity_map(img, patch=4)
    np.testing.assert_array_equal(m, np.array([[0, 0.5], [0.875, 1.0]], np.float16))


def test_complexity_luma_shape_and_crop():
    # ITU-R 601 luma: red 255 -> 76, green 255 -> 150; half red, half green = 1 bit
    img = np.zeros((37, 50, 3), np.uint8)  # 37x50 -> 2x3 cells, bottom 5 rows / right 2 cols dropped
    img[:16, :8, 0] = 255
    img[:16, 8:16, 1] = 255
    img[32:, :, :] = np.random.default_rng(0).integers(0, 256, (5, 50, 3))  # in the crop: ignored
    m = complexity_map(img)
    assert m.shape == (2, 3) and m.dtype == np.float16
    np.testing.assert_array_equal(m, np.array([[1, 0, 0], [0, 0, 0]], np.float16))
    # grey RGB equals its single channel
    g = np.random.default_rng(1).integers(0, 256, (32, 32), dtype=np.uint8)
    np.testing.assert_array_equal(complexity_map(g), complexity_map(np.stack([g] * 3, -1)))
    assert reason(complexity_map, np.zeros((8, 8, 3), np.uint8)) == "too_small"


# --- catalog and prompts -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def catalog():
    return C.load_catalog(CATALOG)


def test_catalog_file(catalog):
    assert 36 <= len(catalog) <= 44
    cats = {c: [s for s in catalog if s.category == c] for c in C.CATEGORIES}
    assert all(len(v) >= 8 for v in cats.values())
    nouns = {s.class_noun for s in catalog}
    assert {"teapot", "dog", "cat", "woman", "anime girl"} <= nouns
    assert len({s.name for s in catalog}) == len(catalog)


def test_prompts_deterministic(catalog):
    a = C.make_prompts(catalog, 30, 30, seed=7)
    assert a == C.make_prompts(catalog, 30, 30, seed=7)
    b = C.make_prompts(catalog, 30, 30, seed=8)
    assert [p["prompt"] for p in a] != [p["prompt"] for p in b]
    # prompt i does not depend on how many are asked for
    assert C.make_prompts(catalog, 10, 0, seed=7) == a[:10]


def test_prompt_counts_and_subjects(catalog):
    ps = C.make_prompts(catalog, 120, 120, seed=0)
    single, multi = ps[:120], ps[120:]
    assert all(p["n_subjects"] == 1 and len(p["subjects"]) == 1 for p in single)
    assert {p["n_subjects"] for p in multi} == {2, 3}
    by_name = {s.name: s for s in catalog}
    for p in ps:
        assert len(p["subjects"]) == len(p["class_nouns"]) == len(p["categories"]) == p["n_subjects"]
        assert len(set(p["subjects"])) == p["n_subjects"]
        assert p["category"] == p["categories"][0] == by_name[p["subjects"][0]].category
        assert p["class_nouns"] == [by_name[n].class_noun for n in p["subjects"]]
        for text in (p["prompt"], p["ref_prompt"], p["diptych_prompt"]):
            for noun in p["class_nouns"]:
                assert noun in text
        assert p["diptych_prompt"].startswith("Two side-by-side images of the same ")
        assert "on the left," in p["diptych_prompt"] and "on the right," in p["diptych_prompt"]
        assert p["diptych_prompt"].endswith(p["prompt"][-20:])  # the right half: c's scene and lighting
        assert isinstance(p["seed"], int) and 0 <= p["seed"] < 2**31
    for p in multi:  # one grounding query per head noun; no photo people beside anime characters
        heads = [n.split()[-1] for n in p["class_nouns"]]
        assert len(set(heads)) == len(heads)
        assert not {"human-real", "human-anime"} <= set(p["categories"])
    assert len({p["seed"] for p in ps}) == len(ps)


def test_prompt_category_shares(catalog):
    single = C.make_prompts(catalog, 60, 0, seed=3)
    counts = {c: sum(p["category"] == c for p in single) for c in C.CATEGORIES}
    assert counts == {"object": 20, "animal": 20, "human-real": 10, "human-anime": 10}
    shares = {"animal": 1, "object": 1, "human-real": 1, "human-anime": 1}
    even = C.make_prompts(catalog, 0, 8, seed=3, per_category=shares)
    assert [p["category"] for p in even] == list(C.CATEGORIES) * 2
    only = C.make_prompts(catalog, 5, 0, seed=3, per_category={"animal": 1})
    assert {p["category"] for p in only} == {"animal"}
    with pytest.raises(ValueError):
        C.make_prompts(catalog, 1, 0, seed=3, per_category={"vehicle": 1})


def test_prompts_from_yaml_path_use_its_lists(catalog):
    lists = C.load_lists(CATALOG)
    ps = C.make_prompts(str(CATALOG), 40, 0, seed=1)
    assert ps == C.make_prompts(catalog, 40, 0, seed=1, **lists)
    for p in ps:
        assert any(s in p["prompt"] for s in lists["scenes"])
        assert any(b in p["ref_prompt"] for b in lists["backgrounds"])


def test_catalog_rejects_bad_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("subjects:\n  - {name: x, category: vehicle, class_noun: car}\n")
    with pytest.raises(ValueError):
        C.load_catalog(bad)


def test_read_prompts_round_trip(catalog, tmp_path):
    ps = C.make_prompts(catalog, 5, 5, seed=11)
    jl = tmp_path / "p.jsonl"
    jl.write_text("".join(json.dumps(p) + "\n" for p in ps))
    assert C.read_prompts(jl) == ps
    pqf = tmp_path / "p.parquet"
    pq.write_table(pa.Table.from_pylist(ps), pqf)
    assert C.read_prompts(pqf) == ps


def test_read_prompts_fills_and_keeps_incomplete_rows(tmp_path):
    jl = tmp_path / "p.jsonl"
    rows = [{"prompt": "a dog on a beach", "class_nouns": ["dog"], "category": "animal"},
            {"class_nouns": "cat"}, {"prompt": "x"}]
    jl.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    a, b, c = C.read_prompts(jl)
    assert a["subjects"] == ["dog"] and a["n_subjects"] == 1 and a["categories"] == ["animal"]
    assert a["prompt"] == "a dog on a beach" and "dog" in a["ref_prompt"]
    assert a["diptych_prompt"] == ("Two side-by-side images of the same dog: on the left, the dog on a plain white "
                                   "background, studio light; on the right, a dog on a beach")
    assert isinstance(a["seed"], int) and a["seed"] == C.read_prompts(jl)[0]["seed"]
    assert b["prompt"] is None and b["class_nouns"] == ["cat"] and b["category"] is None
    assert c["class_nouns"] is None and c["prompt"] == "x"
    assert set(C.PROMPT_FIELDS) <= set(a) and set(C.PROMPT_FIELDS) <= set(c)


# --- DreamBench pairs and the loader -----------------------------------------------------------

@pytest.fixture(scope="module")
def dreambench():
    return assets_or_skip() / "images" / "dreambench"


def test_dreambench_pairs(dreambench):
    pairs = P.dreambench_pairs(dreambench)
    assert len(pairs) == 30
    by = {p["subject"]: p for p in pairs}
    assert by["bear_plushie"]["class_noun"] == "stuffed animal"
    assert by["pink_sunglasses"]["class_noun"] == "glasses"
    assert by["dog5"]["class_noun"] == "dog" and by["cat2"]["class_noun"] == "cat"
    animals = sorted(p["subject"] for p in pairs if p["category"] == "animal")
    assert animals == ["cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"]
    assert {p["category"] for p in pairs} == {"animal", "object"}
    classes, prompts = P.read_prompts_and_classes(dreambench / "prompts_and_classes.txt")
    assert len(classes) == 30 and len(prompts["object"]) == 25 and len(prompts["live"]) == 25
    for p in pairs:
        assert p["class_noun"] == classes[p["subject"]]
        assert p["ref_path"] != p["win_path"]
        assert Path(p["ref_path"]).parent.name == Path(p["win_path"]).parent.name == p["subject"]
        assert Path(p["ref_path"]).is_file() and Path(p["win_path"]).is_file()
        assert p["class_noun"] in p["prompt"] and "{" not in p["prompt"] and "  " not in p["prompt"]
    # prompts cycle over subjects in name order, templates filled without the unique token
    assert by["backpack"]["prompt"] == "a backpack in the jungle"  # subject 0: object prompt 0
    assert by["dog"]["prompt"] == "a dog wearing a red hat"  # subject 10: live-subject prompt 10
    assert P.dreambench_pairs(dreambench) == pairs
    three = P.dreambench_pairs(dreambench, pairs_per_subject=3)
    assert len(three) == 90
    for s in by:
        mine = [(p["ref_path"], p["win_path"]) for p in three if p["subject"] == s]
        assert len(set(mine)) == 3 and all(r != w for r, w in mine)


def test_load_real_photo(dreambench):
    path = dreambench / "dog" / "00.jpg"
    img = P.load_image(path, max_side=300)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert max(img.shape[:2]) <= 300 and img.shape[0] % 16 == 0 and img.shape[1] % 16 == 0
    assert img.shape[:2] == (288, 288)  # 512 -> 300 -> cropped to a multiple of 16
    full = P.load_image(path.read_bytes())
    assert full.shape == (512, 512, 3)



def test_load_image_resize_and_center_crop():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (37, 100, 3), dtype=np.uint8)
    out = P.load_image(png(arr))
    # 37 -> 32 (2 rows off the top, 3 off the bottom), 100 -> 96 (2 and 2)
    np.testing.assert_array_equal(out, arr[2:34, 2:98])
    wide = P.load_image(png(np.zeros((500, 1000, 3), np.uint8)), max_side=512)
    assert wide.shape == (256, 512, 3)
    odd = P.load_image(png(np.zeros((400, 1000, 3), np.uint8)), max_side=1000)
    assert odd.shape == (400, 992, 3)  # max_side not a multiple of 16: still <= it
    rgba = np.zeros((32, 32, 4), np.uint8)  # fully transparent -> white
    assert (P.load_image(png(rgba)) == 255).all()


def test_load_image_rejects(tmp_path, monkeypatch):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not a jpeg" * 10)
    assert reason(P.load_image, bad) == "corrupt_image"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((256, 256, 3), np.uint8)).save(buf, format="JPEG")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert reason(P.load_image, truncated) == "corrupt_image"
    assert reason(P.load_image, png(np.zeros((1, 1, 3), np.uint8))) == "too_small"
    assert reason(P.load_image, png(np.zeros((12, 64, 3), np.uint8))) == "too_small"
    assert reason(P.load_image, png(np.zeros((20, 4000, 3), np.uint8)), max_side=512) == "too_small"  # 20 -> 2 px
    assert reason(P.load_image, png(np.zeros((40, 40, 3), np.uint8)), min_side=64) == "too_small"
    bomb = png(np.zeros((200, 200, 3), np.uint8))
    assert reason(P.load_image, bomb, max_pixels=10_000) == "decompression_bomb"
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # the default cap is PIL's, read per call
    assert reason(P.load_image, bomb) == "decompression_bomb"
    monkeypatch.undo()
    assert P.load_image(bomb).shape == (192, 192, 3)
    assert reason(P.load_image, tmp_path / "nope.jpg") == "missing_file"
    assert reason(P.load_image, None) == "missing_file"
    assert reason(P.load_image, tmp_path) == "unreadable_file"


# --- masks -------------------------------------------------------------------------------------

def rect(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), bool)
    m[y0:y1, x0:x1] = True
    return m


def test_area_union_box():
    a, b = rect(10, 10, 0, 5, 0, 5), rect(10, 10, 3, 8, 3, 8)
    assert K.mask_area(a) == 0.25
    assert K.mask_area(a.astype(np.uint8) * 255) == 0.25
    u = K.union([a, b])
    assert u.dtype == bool and u.shape == (10, 10) and u.sum() == 25 + 25 - 4
    np.testing.assert_array_equal(K.union(np.stack([a, b])), u)
    one = np.zeros((10, 10), bool)
    one[2, 3] = True
    np.testing.assert_array_equal(K.box_of(one), np.array([3, 2, 4, 3], np.float32))
    box = K.box_of(rect(20, 30, 2, 6, 1, 8))
    assert box.dtype == np.float32 and box.tolist() == [1, 2, 8, 6]
    assert reason(K.box_of, np.zeros((5, 5), bool)) == "empty_mask"
    assert reason(K.union, []) == "empty_mask"
    assert reason(K.union, [a, np.zeros((4, 4), bool)]) == "mask_shape_mismatch"


def test_dilate_is_a_disk():
    m = np.zeros((21, 21), bool)
    m[10, 10] = True
    d = K.dilate(m, 3)
    assert d.dtype == bool and d.sum() == 29  # lattice points with dx^2 + dy^2 <= 9
    assert d[10, 13] and d[12, 12] and not d[11, 13] and not d[13, 13]
    assert K.disk(2).sum() == 13
    np.testing.assert_array_equal(K.dilate(m, 0), m)
    assert K.dilate(rect(8, 8, 2, 4, 2, 4), 1).sum() == 4 + 4 * 2  # 2x2 square + one px each side


def test_masked_crop():
    img = np.random.default_rng(0).integers(0, 255, (20, 30, 3), dtype=np.uint8)
    m = rect(20, 30, 5, 9, 10, 16)
    m[5, 10] = False
    crop = K.masked_crop(img, m, K.box_of(m), pad=2)
    assert crop.shape == (4 + 4, 6 + 4, 3) and crop.dtype == np.uint8
    inside = m[3:11, 8:18]
    np.testing.assert_array_equal(crop[inside], img[3:11, 8:18][inside])
    assert (crop[~inside] == 255).all() and (~inside).sum() == 8 * 10 - 23
    corner = K.masked_crop(img, rect(20, 30, 0, 2, 0, 2), [0, 0, 2, 2], pad=16, fill=0)
    assert corner.shape == (18, 18, 3) and (corner[2:, 2:] == 0).all()
    assert reason(K.masked_crop, img, m, [40, 40, 50, 50], pad=0) == "empty_crop"
    assert reason(K.masked_crop, img, np.ones((5, 5), bool), [0, 0, 2, 2]) == "mask_shape_mismatch"


def test_inpaint_opencv_copies_outside_back_exactly():
    img = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # textured
    m = rect(64, 64, 24, 36, 20, 40)
    loser, region = K.inpaint_opencv(img, m, dilation_px=4, radius=3)
    assert loser.dtype == np.uint8 and loser.shape == img.shape
    np.testing.assert_array_equal(region, K.dilate(m, 4))
    assert np.abs(loser[~region].astype(int) - img[~region].astype(int)).max() == 0
    changed = (loser[region] != img[region]).any(axis=-1)
    assert changed.mean() > 0.9
    assert reason(K.inpaint_opencv, img, np.zeros((64, 64), bool)) == "empty_mask"
    assert reason(K.inpaint_opencv, img, np.ones((8, 8), bool)) == "mask_shape_mismatch"


def test_mask_gate():
    big, small = rect(10, 10, 0, 9, 0, 9), rect(10, 10, 0, 1, 0, 1)
    assert K.mask_gate([rect(10, 10, 0, 5, 0, 5), small], 0.05, 0.8) is None
    assert reason(K.mask_gate, [small, np.zeros((10, 10), bool)], 0.0, 1.0) == "empty_mask"
    assert reason(K.mask_gate, [small], 0.05, 0.8) == "mask_too_small"
    assert reason(K.mask_gate, [big], 0.05, 0.8) == "mask_too_large"
    assert reason(K.mask_gate, np.zeros((0, 10, 10), bool), 0.0, 1.0) == "empty_mask"
    assert math.isclose(K.mask_area(K.union([big, small])), 0.81)


def test_encoder_prefilter_is_opt_in_and_copy_paste_is_always_on():
    from functools import partial

    from configs import DIPConfig
    from stages import dip

    cfg = DIPConfig()
    assert cfg.encoder_cosine_min is None and cfg.copy_paste_cosine == 0.98
    gate = partial(dip.encoder_gate, cosine_min=cfg.encoder_cosine_min, copy_paste=cfg.copy_paste_cosine, qa=True)
    assert gate({"encoder_cosine": 0.2})["encoder_cosine"] == 0.2  # the rubric decides, as in FocusDPO
    with pytest.raises(Reject, match="copy_paste"):
        gate({"encoder_cosine": 0.99})
    with pytest.raises(Reject, match="encoder_prefilter: encoder cosine 0.2000 < 0.5"):
        dip.encoder_gate({"encoder_cosine": 0.2}, cosine_min=0.5, copy_paste=0.98, qa=True)
