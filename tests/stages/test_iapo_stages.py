"""stages/iapo.py: the pair's label, the planner's instances, boxes and drops, the judge's seeded A/B
order and its un-shuffling to rho, and the weight maps of seed 003, eq. 1 (by hand, small grids)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from runtime.rows import Reject
from stages import iapo
from stages.prompts import JUDGE_PROMPT, PLANNER_PROMPT


def reject_reason(fn, *args, **kwargs) -> str:
    with pytest.raises(Reject) as e:
        fn(*args, **kwargs)
    return e.value.reason


# --- the pair ------------------------------------------------------------------------------------

@pytest.mark.parametrize("labels, winner", [((1, 0), 0), ((0, 1), 1), ((1.0, 0.0), 0), ((0.0, 1.0), 1)])
def test_global_label(labels, winner):
    row = iapo.global_label({"label_0": labels[0], "label_1": labels[1]})
    assert row["winner"] == winner


@pytest.mark.parametrize("labels, reason", [((0.5, 0.5), "tie"), ((1, 1), "tie"), ((None, 1), "no_label"),
                                            ((float("nan"), 0), "no_label"), (("x", 0), "no_label")])
def test_bad_labels_are_rejects(labels, reason):
    assert reject_reason(iapo.global_label, {"label_0": labels[0], "label_1": labels[1]}) == reason


def test_pair_key_is_content_and_config():
    fields = {"seed": 0}
    base = {"caption": "a cat", "jpg_0": b"\xff\xd8 one", "jpg_1": b"\xff\xd8 two", "label_0": 1, "label_1": 0,
            "ranking_id": 7, "model_0": "sdxl"}
    a = iapo.pair_row(dict(base), fields, "pairs")
    assert set(a) == {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "source", "key", "input"}  # extras gone
    assert a["key"] == iapo.pair_row(dict(base, ranking_id=8), fields, "pairs")["key"]  # not an input
    for change in ({"label_0": 0, "label_1": 1}, {"jpg_1": b"\xff\xd8 three"}, {"caption": "a dog"}):
        assert iapo.pair_row(dict(base, **change), fields, "pairs")["key"] != a["key"], change
    assert iapo.pair_row(dict(base), {"seed": 1}, "pairs")["key"] != a["key"]
    assert a["input"] == "a cat"
    paths = iapo.pair_row(dict(base, jpg_0="/no/such/0.jpg", jpg_1="/no/such/1.jpg"), fields, "pairs")
    assert paths["input"] == "/no/such/0.jpg | /no/such/1.jpg"


def test_missing_and_corrupt_images_are_rejects():
    assert reject_reason(iapo.load_pair, {"jpg_0": None, "jpg_1": None}, max_side=64) == "missing_file"
    assert reject_reason(iapo.load_pair, {"jpg_0": b"not an image", "jpg_1": None}, max_side=64) == "corrupt_image"
    assert reject_reason(iapo.load_pair, {"jpg_0": "/no/such/file.jpg", "jpg_1": None}, max_side=64) == "missing_file"


def test_dip_sample_as_pair():
    row = iapo.dip_pair({"__key__": "k1", "win.jpg": b"W", "lose.jpg": b"L",
                         "json.json": json.dumps({"key": "k1", "prompt": "a teapot on a table"}).encode()})
    assert (row["jpg_0"], row["jpg_1"], row["label_0"], row["label_1"]) == (b"W", b"L", 1.0, 0.0)
    assert row["caption"] == "a teapot on a table" and row["input"] == "dip k1"


# --- planner -------------------------------------------------------------------------------------

MESSY_PLAN = ("Sure! After analysing both images, here is what I found:\n\n"
              "```\nMatched Instance: [Eagle]\nMatched Instance: [eagle]\n```\n"
              "* **Matched Instance:** [Mountain peak]\n"
              "3) Matched Instance: [Instance Category 3]\n"
              "Matched Instance: [sun], [cloud]\nHope this helps!")


def test_matched_instances_from_a_messy_answer():
    row = iapo.matched_instances({"planner_answer": MESSY_PLAN}, max_instances=8, qa=True, fallback="object")
    assert row["categories"] == ["Eagle", "Mountain peak", "sun", "cloud"]  # deduplicated, template dropped
    assert row["n_planned"] == 4 and row["planner_fallback"] is False
    capped = iapo.matched_instances({"planner_answer": MESSY_PLAN}, max_instances=2, qa=True, fallback="object")
    assert capped["categories"] == ["Eagle", "Mountain peak"] and capped["n_planned"] == 2


@pytest.mark.parametrize("answer", ["There is nothing the two images share.", "", None,
                                    "Matched Instance: [Instance Category 1]\nMatched Instance: [none]"])
def test_no_matched_instance(answer):
    assert reject_reason(iapo.matched_instances, {"planner_answer": answer}, max_instances=8, qa=True,
                         fallback="object") == "no_matched_instances"
    row = iapo.matched_instances({"planner_answer": answer}, max_instances=8, qa=False, fallback="object")
    assert row["categories"] == ["object"] and row["planner_fallback"] is True and row["n_planned"] == 1


def test_planner_query_is_the_fig_ii_prompt():
    assert iapo.planner_query({})["planner_prompt"] == PLANNER_PROMPT


# --- grounding -----------------------------------------------------------------------------------

def test_instance_boxes_drop_and_record():
    box = [1.0, 2.0, 30.0, 40.0]
    row = {"categories": ["cat", "dog", "moon", "tree", "flat", "nan"],
           "phrase_boxes_0": [box, None, None, box, [5.0, 5.0, 5.0, 20.0], [float("nan"), 0.0, 1.0, 1.0]],
           "phrase_boxes_1": [np.asarray(box, np.float32), box, None, None, box, box]}
    out = iapo.instance_boxes(row)
    assert out["categories"] == ["cat"]
    assert out["boxes_0"] == [box] and out["boxes_1"] == [box]
    assert out["dropped"] == ["dog", "moon", "tree", "flat", "nan"]
    assert out["drop_reasons"] == ["not_in_image_0", "not_in_either", "not_in_image_1", "empty_box", "not_in_image_0"]


def test_no_instance_in_both_images_is_a_reject():
    row = {"categories": ["dog"], "phrase_boxes_0": [[0.0, 0.0, 9.0, 9.0]], "phrase_boxes_1": [None]}
    with pytest.raises(Reject) as e:
        iapo.instance_boxes(row)
    assert e.value.reason == "no_grounded_instances" and "dog: not_in_image_1" in e.value.detail


# --- judge: seeded order, crops, un-shuffling ----------------------------------------------------

def test_judge_order_is_seeded_and_fair():
    orders = [iapo.judge_order(f"key{k}", c, seed=0) for k in range(100) for c in ("cat", "dog", "man")]
    assert orders == [iapo.judge_order(f"key{k}", c, seed=0) for k in range(100) for c in ("cat", "dog", "man")]
    assert set(orders) == {"01", "10"}
    assert 120 <= orders.count("01") <= 180  # a fair coin over 300 instances
    other_seed = [iapo.judge_order(f"key{k}", c, seed=1) for k in range(100) for c in ("cat", "dog", "man")]
    assert other_seed != orders


# (judge's choice, order shown, global winner) -> (image preferred, rho), by hand
UNSHUFFLE = [
    ("A", "01", 0, 0, 0),  # image_0 shown as A, A better: image_0, the winner -> agrees
    ("B", "01", 0, 1, 1),
    ("A", "10", 0, 1, 1),  # image_1 shown as A
    ("B", "10", 0, 0, 0),
    ("A", "01", 1, 0, 1),
    ("B", "01", 1, 1, 0),
    ("A", "10", 1, 1, 0),
    ("B", "10", 1, 0, 1),
]


@pytest.mark.parametrize("choice, order, winner, preferred, rho", UNSHUFFLE)
def test_unshuffle_to_rho(choice, order, winner, preferred, rho):
    assert iapo.preferred_image(choice, order) == preferred
    assert iapo.rho(choice, order, winner) == rho


def test_crop_grows_small_boxes_inside_the_image():
    image = np.arange(64 * 48 * 3, dtype=np.uint32).reshape(64, 48, 3).astype(np.uint8)
    assert iapo.crop(image, [8.0, 4.0, 40.0, 60.0]).shape == (56, 32, 3)  # big enough: the box itself
    assert iapo.crop(image, [10.2, 10.7, 12.1, 11.3]).shape == (28, 28, 3)  # grown to one VLM token
    assert np.array_equal(iapo.crop(image, [0.0, 60.0, 2.0, 64.0]), image[36:64, 0:28])  # grown inwards at a corner
    assert iapo.crop(np.zeros((16, 16, 3), np.uint8), [1, 1, 2, 2]).shape == (16, 16, 3)  # the image is smaller


def test_judge_queries_show_the_crops_in_the_recorded_order():
    image_0, image_1 = np.zeros((64, 64, 3), np.uint8), np.full((64, 64, 3), 255, np.uint8)
    boxes = [[0.0, 0.0, 32.0, 32.0], [32.0, 32.0, 64.0, 64.0], [0.0, 32.0, 32.0, 64.0]] * 4
    row = {"key": "abc", "image_0": image_0, "image_1": image_1, "categories": [f"c{n}" for n in range(12)],
           "boxes_0": boxes, "boxes_1": boxes}
    out = iapo.judge_queries(row, seed=3)
    assert out["judge_orders"] == [iapo.judge_order("abc", f"c{n}", 3) for n in range(12)]
    assert set(out["judge_orders"]) == {"01", "10"}
    for order, a, b in zip(out["judge_orders"], out["crops_a"], out["crops_b"]):
        assert (a.mean(), b.mean()) == ((0.0, 255.0) if order == "01" else (255.0, 0.0))
        assert a.shape == b.shape == (32, 32, 3)
    assert out["judge_prompts"][5] == JUDGE_PROMPT + "\n\nMatched Instance: [c5]"


def judged(answers, orders, winner=0):
    n = len(answers)
    return {"categories": [f"c{i}" for i in range(n)], "boxes_0": [[0, 0, 1, 1]] * n, "boxes_1": [[0, 0, 2, 2]] * n,
            "judge_orders": orders, "judge_raw": answers, "winner": winner, "dropped": ["ghost"],
            "drop_reasons": ["not_in_image_1"]}


MESSY_JUDGE = ["**Quality Comparison Result:** Image B is better",  # B shown for image_1 ("01")
               "Sure.\n\nQuality Comparison Result: Image A is better\n\nLet me know if...",  # A = image_1 ("10")
               "I think image a is better.",  # A = image_0
               "- Result: B"]  # B = image_0 ("10")


def test_preferences_from_messy_answers():
    out = iapo.instance_preferences(judged(MESSY_JUDGE, ["01", "10", "01", "10"], winner=0), qa=True)
    assert out["judge_choices"] == ["B", "A", "A", "B"]
    assert out["rho"] == [1, 1, 0, 0]
    assert iapo.instance_preferences(judged(MESSY_JUDGE, ["01", "10", "01", "10"], winner=1), qa=True)["rho"] == [0, 0, 1, 1]
    assert out["dropped"] == ["ghost"] and out["judge_answers"] == MESSY_JUDGE


def test_unparsable_judge_is_a_drop_with_qa_and_rho_0_without():
    answers = ["Image A is better", "Both look fine to me.", "Image A is better than Image B. Image B is better."]
    on = iapo.instance_preferences(judged(answers, ["10", "01", "01"]), qa=True)
    assert on["categories"] == ["c0"] and on["rho"] == [1] and on["judge_orders"] == ["10"]
    assert on["dropped"] == ["ghost", "c1", "c2"]
    assert on["drop_reasons"] == ["not_in_image_1", "unparsable_judge", "ambiguous_judge"]
    off = iapo.instance_preferences(judged(answers, ["10", "01", "01"]), qa=False)
    assert off["categories"] == ["c0", "c1", "c2"] and off["rho"] == [1, 0, 0]
    assert off["judge_choices"] == ["A", None, None] and off["dropped"] == ["ghost"]
    with pytest.raises(Reject) as e:
        iapo.instance_preferences(judged(answers[1:], ["01", "01"]), qa=True)
    assert e.value.reason == "no_judged_instances"


# --- eq. 1 -----------------------------------------------------------------------------------------

def test_weight_map_one_instance_each_way():
    # 64 x 64 image, 4 x 4 grid: 16 px cells; the box covers cells (1..2, 1..2)
    agree = iapo.weight_map([[16, 16, 48, 48]], [0], (64, 64), (4, 4), w_pos=2.0, w_neg=0.0)
    assert agree.dtype == np.float32 and agree.tolist() == [[1, 1, 1, 1], [1, 2, 2, 1], [1, 2, 2, 1], [1, 1, 1, 1]]
    conflict = iapo.weight_map([[16, 16, 48, 48]], [1], (64, 64), (4, 4), w_pos=2.0, w_neg=0.0)
    assert conflict.tolist() == [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]


def test_weight_map_paper_defaults():
    # w_pos = 1, w_neg = 0 (Table IV's best): an agreeing instance looks like the background,
    # a conflicting one is silenced
    m = iapo.weight_map([[0, 0, 32, 32], [32, 32, 64, 64]], [0, 1], (64, 64), (4, 4))
    assert m.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]
    assert m.sum() == 12


def test_weight_map_overlap_conflict_wins():
    boxes, rhos = [[0, 0, 48, 48], [32, 32, 64, 64]], [0, 1]  # they share cell (2, 2)
    m = iapo.weight_map(boxes, rhos, (64, 64), (4, 4), w_pos=2.0, w_neg=0.5)
    assert m.tolist() == [[2, 2, 2, 1], [2, 2, 2, 1], [2, 2, 0.5, 0.5], [1, 1, 0.5, 0.5]]
    # not a min or a max: rho = 1 wins even with w_neg > w_pos
    m = iapo.weight_map(boxes, rhos, (64, 64), (4, 4), w_pos=1.0, w_neg=3.0)
    assert m[2, 2] == 3.0 and m[0, 0] == 1.0 and m[3, 3] == 3.0
    # two agreeing boxes overlapping: w_pos once, not added
    m = iapo.weight_map([[0, 0, 48, 48], [16, 16, 64, 64]], [0, 0], (64, 64), (4, 4), w_pos=2.0)
    assert m.tolist() == [[2, 2, 2, 1], [2, 2, 2, 2], [2, 2, 2, 2], [1, 2, 2, 2]]


def test_weight_map_any_grid():
    box = [[4, 8, 20, 13]]  # pixel edges: columns 4..19, rows 8..12
    pixels = iapo.weight_map(box, [1], (32, 32), (32, 32), w_neg=0.0)
    assert pixels.sum() == 32 * 32 - 16 * 5 and pixels[8:13, 4:20].max() == 0 and pixels[7, 4] == 1
    # 8 px cells: the box touches columns 0..2 (4..20 px) and row 1 (8..13 px)
    cells = iapo.weight_map(box, [1], (32, 32), (4, 4), w_neg=0.0)
    assert cells.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    # a box smaller than a cell still marks its cell; a non-square image keeps square cells
    assert iapo.weight_map([[17, 1, 18, 2]], [1], (32, 64), (2, 4), w_neg=0.0).tolist() == [[1, 0, 1, 1], [1, 1, 1, 1]]
    # nothing, or an empty box, leaves all ones
    assert iapo.weight_map([], [], (32, 32), (2, 2)).tolist() == [[1, 1], [1, 1]]
    assert iapo.weight_map([[5, 5, 5, 9]], [1], (32, 32), (2, 2)).tolist() == [[1, 1], [1, 1]]


def test_weight_maps_per_image_on_the_latent_grid():
    row = {"image_0": np.zeros((64, 32, 3), np.uint8), "image_1": np.zeros((32, 32, 3), np.uint8),
           "boxes_0": [[0, 0, 16, 16]], "boxes_1": [[16, 16, 32, 32]], "rho": [1]}
    out = iapo.weight_maps(row, w_pos=1.0, w_neg=0.0, cell=8)
    assert out["weights_0"].shape == (8, 4) and out["weights_1"].shape == (4, 4)
    assert out["weights_0"].sum() == 32 - 4 and out["weights_0"][:2, :2].max() == 0
    assert out["weights_1"].sum() == 16 - 4 and out["weights_1"][2:, 2:].max() == 0
    assert reject_reason(iapo.weight_maps, dict(row, image_1=np.zeros((24, 32, 3), np.uint8)),
                         w_pos=1.0, w_neg=0.0, cell=16) == "weight_grid"


# --- output ----------------------------------------------------------------------------------------

def test_finalize_counts_and_records():
    row = {"key": "k", "categories": ["cat", "dog", "sun"], "boxes_0": [np.array([0, 0, 8, 8], np.float32)] * 3,
           "boxes_1": [[1, 1, 9, 9]] * 3, "rho": np.array([0, 1, 1]), "judge_answers": ["a", "b", "c"],
           "judge_orders": ["01", "10", "01"], "judge_choices": ["A", "A", None], "dropped": ["moon"],
           "drop_reasons": ["not_in_either"], "crops_a": [1], "judge_raw": ["x"], "jpg_0": b"x"}
    out = iapo.finalize(row, {"w_pos": 1.0})
    assert (out["n_instances"], out["n_dropped"], out["n_agree"], out["n_disagree"], out["n_unjudged"]) == (3, 1, 1, 2, 1)
    assert out["rho_mean"] == pytest.approx(2 / 3) and out["w_pos"] == 1.0
    # scratch columns are the plan's to drop, right after their last reader
    from configs import IAPOConfig
    from pipelines.iapo import plan

    drops = {c for s in plan(IAPOConfig()).check().steps for c in s.drop}
    assert {"crops_a", "jpg_0", "judge_raw", "planner_prompt", "phrase_boxes_0"} <= drops
    meta = json.loads(out["json"])
    assert meta["instances"][1] == {"category": "dog", "box_0": [0.0, 0.0, 8.0, 8.0], "box_1": [1.0, 1.0, 9.0, 9.0],
                                    "rho": 1, "judge_answer": "b", "order": "10", "choice": "A"}
    assert meta["dropped_instances"] == [{"category": "moon", "reason": "not_in_either"}]


def test_photo_pairs_labels_by_a_seeded_rule():
    from tests.conftest import assets_or_skip

    root = assets_or_skip() / "images" / "dreambench"
    rows = iapo.photo_pairs(root, 1, seed=0)
    assert len(rows) == 30 and rows == iapo.photo_pairs(root, 1, seed=0)
    labels = [(r["label_0"], r["label_1"]) for r in rows]
    assert set(labels) == {(1.0, 0.0), (0.0, 1.0)}
    assert labels != [(r["label_0"], r["label_1"]) for r in iapo.photo_pairs(root, 1, seed=1)]
    assert all(r["jpg_0"] != r["jpg_1"] and r["caption"] for r in rows)


def test_weight_grid_must_divide_the_16_px_sides():
    from pydantic import ValidationError

    from configs import IAPOConfig

    assert IAPOConfig(weight_grid=16).weight_grid == 16
    with pytest.raises(ValidationError, match="must divide 16"):
        IAPOConfig(weight_grid=12)
