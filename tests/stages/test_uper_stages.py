"""The CPU steps of the UPER pipeline (stages/uper.py): inputs, the diptych split, the foreground
gate, the two VLM turns' gates, R_sub views and scores."""
import json

import numpy as np
import pytest

from runtime.rows import Reject
from stages import uper
from tests.conftest import assets_or_skip
from tests.helpers import noise, png



def subjects200k_composite(a, b, pad=8, border=(0, 255, 0)):
    """Subjects200K's layout: each 512 image inside a `pad` px border, side by side."""
    h, w = a.shape[:2]
    out = np.empty((h + 2 * pad, 2 * (w + 2 * pad), 3), np.uint8)
    out[:] = border
    out[pad:pad + h, pad:pad + w] = a
    out[pad:pad + h, w + 3 * pad:2 * w + 3 * pad] = b
    return out


def test_diptych_is_split_into_reference_and_target_without_the_border():
    a, b = noise(512, 512, seed=1), noise(512, 512, seed=2)
    composite = subjects200k_composite(a, b)
    assert composite.shape == (528, 1056, 3)
    row = uper.load_pair({"image_src": png(composite), "prompt": "a cat"}, max_side=512, diptych_padding=8)
    assert np.array_equal(row["ref"], a) and np.array_equal(row["target"], b)
    small = uper.load_pair({"image_src": png(composite), "prompt": "a cat"}, max_side=256, diptych_padding=8)
    assert small["ref"].shape == small["target"].shape == (256, 256, 3)
    with pytest.raises(Reject, match="too_small"):
        uper.load_pair({"image_src": png(noise(40, 60)), "prompt": "x"}, max_side=512, diptych_padding=8)


def test_pair_rows_of_each_source(tmp_path):
    (tmp_path / "r.png").write_bytes(png(noise(64, 64)))
    row, inputs = uper.pair_row({"ref": "r.png", "target": {"bytes": b"abc", "path": None}, "prompt": "p",
                                 "subject": "mug"}, "pairs", base=str(tmp_path))
    assert row["ref_src"] == str(tmp_path / "r.png") and row["target_src"] == b"abc"
    assert row["input"] == f"{tmp_path / 'r.png'} | <bytes>"
    assert inputs["ref"]["size"] == (tmp_path / "r.png").stat().st_size and "sha256" in inputs["target"]
    # Subjects200K: the image struct and the description of the right half
    desc = {"item": "Eames lounge chair", "description_0": "left", "description_1": "a chair by a window"}
    row, _ = uper.pair_row({"image": {"bytes": b"xyz", "path": "a.jpg"}, "description": desc}, "diptych")
    assert (row["image_src"], row["prompt"], row["subject"]) == (b"xyz", "a chair by a window", "Eames lounge chair")
    row, _ = uper.pair_row({"image": "a.jpg", "description": json.dumps(desc), "prompt": "mine"}, "diptych")
    assert (row["prompt"], row["subject"]) == ("mine", "Eames lounge chair")
    # DIP: reference and winner, one subject; two subjects are rejected before any work
    meta = {"prompt": "a dog and a cat", "subjects": ["dog", "cat"]}
    row, inputs = uper.pair_row({"__key__": "k1", "ref.jpg": b"r", "win.jpg": b"w", "json.json": json.dumps(meta)}, "dip")
    assert (row["ref_src"], row["target_src"], row["subject"], inputs) == (b"r", b"w", "dog and cat", {"dip": "k1"})
    with pytest.raises(Reject, match="multi_subject"):
        uper.single_subject(row)
    assert uper.single_subject({"subjects": 1}) == {"subjects": 1}


def test_photo_pairs_of_dreambench():
    root = assets_or_skip() / "images/dreambench"
    pairs = uper.photo_pairs(root, 2)
    assert len(pairs) == 60 and len({p["input"].split(":")[0] for p in pairs}) == 30  # 2 per folder
    assert len({p["subject"] for p in pairs}) == 15  # class nouns: dog, dog2 ... are all "dog"
    dog = [p for p in pairs if "/dog/" in p["ref_src"]]
    assert dog[0]["subject"] == "dog" and dog[0]["prompt"] == "a photo of a dog"
    assert all(p["ref_src"] != p["target_src"] for p in pairs)
    assert pairs[0]["ref_src"].rsplit("/", 2)[1] == pairs[0]["target_src"].rsplit("/", 2)[1]  # one subject


def test_load_rejects_what_is_missing(tmp_path):
    with pytest.raises(Reject, match="no_prompt"):
        uper.load_pair({"ref_src": "a", "target_src": "b", "prompt": " "}, 512, 8)
    with pytest.raises(Reject, match="missing_file"):
        uper.load_pair({"ref_src": str(tmp_path / "none.jpg"), "target_src": "b", "prompt": "p"}, 512, 8)
    (tmp_path / "bad.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(Reject, match="corrupt_image"):
        uper.load_pair({"ref_src": png(noise(64, 64)), "target_src": str(tmp_path / "bad.jpg"), "prompt": "p"}, 512, 8)


def test_foreground_gate():
    on_white = noise(32, 32)
    row = uper.foreground_gate({"ref_fg_fraction": 0.5, "ref_on_white": on_white}, 0.01, 0.98)
    assert row["ref_clean"] is on_white and row["fg_fraction"] == 0.5
    with pytest.raises(Reject, match="foreground_too_small"):
        uper.foreground_gate({"ref_fg_fraction": 0.005, "ref_on_white": on_white}, 0.01, 0.98)
    with pytest.raises(Reject, match="foreground_too_large"):
        uper.foreground_gate({"ref_fg_fraction": 0.99, "ref_on_white": on_white}, 0.01, 0.98)


ATTRIBUTES = "Here are the key attributes:\n1. Eames lounge chair\n2. black leather\n3. wood shell"
RATING = "Eames lounge chair: Yes\nblack leather: Yes\nRating: 4"


def test_two_turns_and_the_rating_gate():
    row = uper.attributes_query({"subject": "chair"}, max_attributes=2)
    assert "chair" in row["attributes_prompt"] and "at most 2 attributes" in row["attributes_prompt"]
    row = uper.rating_query(dict(row, attributes_raw=ATTRIBUTES), max_attributes=2, qa=True)
    assert row["attributes"] == ["Eames lounge chair", "black leather"]
    assert "Are the chairs in the two pictures below identical?" in row["rating_prompt"]
    assert "- black leather" in row["rating_prompt"] and "wood shell" not in row["rating_prompt"]
    kept = uper.rating_gate(dict(row, rating_raw=RATING), rating_min=4, qa=True)
    assert kept["rating"] == 4 and kept["verdicts"] == ["Eames lounge chair: yes", "black leather: yes"]
    assert kept["attributes_present"] == 1.0 and kept["rating_answer"] == RATING
    # sec. 3.2.1: a key attribute absent from the target discards the pair, whatever the rating
    absent = "Eames lounge chair: Yes\nblack leather: No\nRating: 5"
    with pytest.raises(Reject, match="inconsistent_pair: absent in the target: black leather \\(rating 5\\)"):
        uper.rating_gate(dict(row, rating_raw=absent), 4, qa=True)
    recorded = uper.rating_gate(dict(row, rating_raw=absent), 4, qa=False)
    assert recorded["attributes_present"] == 0.5 and recorded["verdicts"][1] == "black leather: no"
    with pytest.raises(Reject, match="inconsistent_pair"):
        uper.rating_gate(dict(row, rating_raw="They are definitely two different objects. Rating: 3"), 4, qa=True)
    with pytest.raises(Reject, match="unparsable_rating"):
        uper.rating_gate(dict(row, rating_raw="I cannot say."), 4, qa=True)
    with pytest.raises(Reject, match="unparsable_attributes"):
        uper.rating_query(dict(row, attributes_raw=""), 8, qa=True)
    # without QA nothing is dropped: unparsable answers are recorded as empty / null
    loose = uper.rating_query(dict(row, attributes_raw=""), 8, qa=False)
    assert loose["attributes"] == [] and "(none listed)" in loose["rating_prompt"]
    loose = uper.rating_gate(dict(loose, rating_raw="zzz"), 4, qa=False)
    assert loose["rating"] is None and loose["verdicts"] == [] and loose["attributes_present"] is None
    assert uper.rating_gate(dict(row, rating_raw="Rating: 1"), 4, qa=False)["rating"] == 1


def test_reward_views_and_scores_follow_the_key():
    ref, target = noise(96, 128, seed=3), noise(96, 128, seed=4)
    row = {"key": "0123456789abcdef" * 2, "ref_clean": ref, "target": target}
    a = uper.subject_reward_views(dict(row), size=448, patch=224, stride=112, crops=2, crop_size=224, seed=0)
    b = uper.subject_reward_views(dict(row), size=448, patch=224, stride=112, crops=2, crop_size=224, seed=0)
    assert a["rsub_n_patch"] == 9 and len(a["rsub_ref"]) == len(a["rsub_target"]) == 12
    assert all(np.array_equal(x, y) for x, y in zip(a["rsub_ref"], b["rsub_ref"]))  # same key: same crops
    other = uper.subject_reward_views(dict(row, key="f" * 32), 448, 224, 112, 2, 224, 0)
    assert not all(np.array_equal(x, y) for x, y in zip(a["rsub_ref"][10:], other["rsub_ref"][10:]))
    scored = uper.subject_reward_scores(dict(a, rsub_cosines=[0.5] + [0.96] * 9 + [0.9, 0.8]),
                                        {"patch": 1.0}, 0.95, 2.0)
    assert scored["r_sub_patch"] == pytest.approx(0.96) and scored["r_sub_penalty"] == pytest.approx(0.02)
    assert scored["r_sub"] == pytest.approx(0.94) and scored["r_sub_crops"] == pytest.approx(0.85)
    with pytest.raises(Reject, match="bad_subject_reward"):
        uper.subject_reward_scores(dict(a, rsub_cosines=[np.nan] * 12), {"patch": 1.0}, 0.95, 2.0)
