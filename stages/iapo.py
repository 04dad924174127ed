"""The CPU steps of the IAPO pipeline (seed 003 supplementary: Fig. II prompts, eq. 1) between its
model stages: the pair and its global label, the planner's matched instances, a box per instance
in each image, the judge's crops in a seeded A/B order, rho per instance, and the weight maps of
eq. 1. Each function takes and returns one row and raises Reject on bad data; runtime.rows.run_step
applies it to a batch.

Rejects (the pair is not written): tie, no_label, missing_file / corrupt_image / too_small /
decompression_bomb (stages.photos.load_image), no_matched_instances (planner, QA on),
no_grounded_instances, no_judged_instances, weight_grid (an image side not a multiple of the cell).
Drops (the pair is written, the instance is recorded in `dropped` / `drop_reasons`):
not_in_image_0, not_in_image_1, not_in_either, empty_box (grounding), and with QA on
unparsable_judge / ambiguous_judge (the judge's answer for that instance).
"""
from __future__ import annotations

import hashlib
import json
import math

import numpy as np

from runtime.inputs import resolve
from runtime.plan import step
from runtime.rows import Reject
from stages.keys import file_id, sample_key
from stages.photos import IMAGE_REJECTS, MAX_INPUT_BYTES, dreambench_pairs, load_image
from stages.prompts import judge_prompt, parse_judge, parse_planner, planner_prompt

PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0", "label_1")  # a Pick-a-Pic v2 pair
MIN_CROP = 28  # px: one Qwen2.5-VL token (28 x 28); smaller crops are grown around their centre
ORDERS = ("01", "10")  # "01": image_0 shown as Image A; "10": image_1 shown as Image A


# --- inputs --------------------------------------------------------------------------------------

@step(optional=PAIR_COLUMNS + ("input",), writes=PAIR_COLUMNS + ("source", "key", "input"))
def pair_row(row: dict, fields: dict, source: str, base: str | None = None) -> dict:
    """A Pick-a-Pic v2 row (caption, jpg_0, jpg_1 as bytes or paths, label_0, label_1) -> the pair
    the DAG carries, with its content key. Other columns are dropped. Never raises: a bad value is
    judged by the steps after it, which then have a key to reject."""
    pair = {k: row.get(k) for k in ("caption", "jpg_0", "jpg_1", "label_0", "label_1")}
    pair["jpg_0"], pair["jpg_1"] = resolve(pair["jpg_0"], base), resolve(pair["jpg_1"], base)  # relative to the list
    pair["source"] = source
    inputs = {k: file_id(v) if k.startswith("jpg") else v for k, v in pair.items() if k != "source"}
    pair["key"] = sample_key(inputs, fields)
    paths = [v for v in (pair["jpg_0"], pair["jpg_1"]) if isinstance(v, str)]
    pair["input"] = row.get("input") or (" | ".join(paths) if paths else str(pair["caption"])[:200])
    return pair


def photo_pairs(root, pairs_per_subject: int, seed: int) -> list[dict]:
    """DreamBench as preference pairs for the tiny run: two photos of one subject
    (stages.photos.dreambench_pairs), its DreamBench prompt as the caption, and the preferred photo
    drawn by a seeded rule: bit 0 of sha256(seed, both paths) says which one wins."""
    rows = []
    for p in dreambench_pairs(root, pairs_per_subject):
        a, b = p["ref_path"], p["win_path"]
        bit = hashlib.sha256(f"{seed}:{a}:{b}".encode()).digest()[0] & 1
        rows.append({"caption": p["prompt"], "jpg_0": a, "jpg_1": b,
                     "label_0": float(1 - bit), "label_1": float(bit)})
    return rows


@step(optional=("json.json", "json", "win.jpg", "lose.jpg", "__key__"), writes=PAIR_COLUMNS + ("input",))
def dip_pair(row: dict) -> dict:
    """A DIP sample (read_webdataset of its shards) as a pair: x_w preferred over x_l, the
    prompt c as the caption."""
    meta = row.get("json.json") or row.get("json")
    meta = json.loads(meta) if isinstance(meta, (bytes, str)) else (meta or {})
    return {"caption": meta.get("prompt"), "jpg_0": row.get("win.jpg"), "jpg_1": row.get("lose.jpg"),
            "label_0": 1.0, "label_1": 0.0, "input": f"dip {meta.get('key') or row.get('__key__')}"}


@step(optional=("label_0", "label_1"), writes=("label_0", "label_1", "winner"), rejects=("no_label", "tie"))
def global_label(row: dict) -> dict:
    """Pick-a-Pic v2: label_0 / label_1 are 1 / 0 or 0 / 1; 0.5 / 0.5 is a tie, which says
    nothing about either image: a reject."""
    try:
        l0, l1 = float(row["label_0"]), float(row["label_1"])
    except (TypeError, ValueError, KeyError):
        raise Reject("no_label", f"label_0={row.get('label_0')!r} label_1={row.get('label_1')!r}") from None
    if not (math.isfinite(l0) and math.isfinite(l1)):
        raise Reject("no_label", f"label_0={l0} label_1={l1}")
    if l0 == l1:
        raise Reject("tie", f"label_0={l0} label_1={l1}")
    row["label_0"], row["label_1"] = l0, l1
    row["winner"] = 0 if l0 > l1 else 1
    return row


@step(reads=("jpg_0", "jpg_1"), writes=("image_0", "image_1"), rejects=IMAGE_REJECTS)
def load_pair(row: dict, max_side: int, max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    row["image_0"] = load_image(row["jpg_0"], max_side, max_bytes=max_bytes)
    row["image_1"] = load_image(row["jpg_1"], max_side, max_bytes=max_bytes)
    return row


# --- planner ---------------------------------------------------------------------------------------

@step(writes=("planner_prompt",))
def planner_query(row: dict) -> dict:
    row["planner_prompt"] = planner_prompt()
    return row


@step(optional=("planner_answer",), writes=("categories", "planner_fallback", "n_planned"),
      rejects=("no_matched_instances",))
def matched_instances(row: dict, max_instances: int, qa: bool, fallback: str) -> dict:
    """Every "Matched Instance: [X]" of the planner's answer, deduplicated, at most max_instances.
    QA on: none is a reject (no_matched_instances). QA off: the instance falls back to `fallback`
    so the rest of the DAG still runs, and `planner_fallback` records it."""
    parsed = parse_planner(row.get("planner_answer"), max_instances)
    if not parsed.ok and qa:
        parsed.unwrap()
    row["categories"] = parsed.value if parsed.ok else [fallback]
    row["planner_fallback"] = not parsed.ok
    row["n_planned"] = len(row["categories"])
    return row


# --- grounding -------------------------------------------------------------------------------------

def _box(value) -> list[float] | None:
    if value is None:
        return None
    box = [float(v) for v in np.asarray(value, np.float64).reshape(-1)]
    return box if len(box) == 4 and all(map(math.isfinite, box)) else None


@step(reads=("categories", "phrase_boxes_0", "phrase_boxes_1"),
      writes=("dropped", "drop_reasons", "categories", "boxes_0", "boxes_1"), rejects=("no_grounded_instances",))
def instance_boxes(row: dict) -> dict:
    """The best box of each category in each image (the grounding worker's `phrase_boxes`). An
    instance needs a box of positive area in both images; otherwise it is dropped and recorded
    (not_in_image_0, not_in_image_1, not_in_either, empty_box). No instance left: a reject."""
    kept, boxes_0, boxes_1, dropped = [], [], [], []
    for category, b0, b1 in zip(row["categories"], row["phrase_boxes_0"], row["phrase_boxes_1"]):
        b0, b1 = _box(b0), _box(b1)
        if b0 is None or b1 is None:
            reason = "not_in_either" if b0 is None and b1 is None else f"not_in_image_{0 if b0 is None else 1}"
        elif min(b0[2] - b0[0], b0[3] - b0[1], b1[2] - b1[0], b1[3] - b1[1]) <= 0:
            reason = "empty_box"
        else:
            kept.append(category)
            boxes_0.append(b0)
            boxes_1.append(b1)
            continue
        dropped.append((category, reason))
    row["dropped"] = [c for c, _ in dropped]
    row["drop_reasons"] = [r for _, r in dropped]
    if not kept:
        raise Reject("no_grounded_instances", "; ".join(f"{c}: {r}" for c, r in dropped))
    row["categories"], row["boxes_0"], row["boxes_1"] = kept, boxes_0, boxes_1
    return row


# --- judge -----------------------------------------------------------------------------------------

def judge_order(key: str, instance: str, seed: int) -> str:
    """Which image's crop the judge sees as Image A for one instance of a pair: a fair coin from
    sha256(seed, key, instance), so position bias cancels over the dataset, a re-run shows the same
    order, and an instance's order does not depend on which others were dropped."""
    return ORDERS[hashlib.sha256(f"{seed}:{key}:{instance}".encode()).digest()[0] & 1]


def crop(image: np.ndarray, box, min_side: int = MIN_CROP) -> np.ndarray:
    """The box's pixels (pixel-edge xyxy, as the grounding worker gives), grown around its centre
    to at least min_side per side (within the image) so the VLM gets at least one token."""
    h, w = image.shape[:2]
    x0, x1 = _span(box[0], box[2], w, min_side)
    y0, y1 = _span(box[1], box[3], h, min_side)
    return np.ascontiguousarray(image[y0:y1, x0:x1])


def _span(lo: float, hi: float, size: int, min_side: int) -> tuple[int, int]:
    lo, hi = max(0, math.floor(lo)), min(size, math.ceil(hi))
    need = min(min_side, size)
    if hi - lo < need:
        lo = min(max(0, (lo + hi - need) // 2), size - need)
        hi = lo + need
    return lo, hi


@step(reads=("key", "image_0", "image_1", "boxes_0", "boxes_1", "categories"),
      writes=("judge_orders", "crops_a", "crops_b", "judge_prompts"))
def judge_queries(row: dict, seed: int) -> dict:
    """Per instance: the two crops in the seeded order (crops_a is what the judge calls Image A)
    and the Fig. II judge prompt naming the instance."""
    images = (np.asarray(row["image_0"]), np.asarray(row["image_1"]))
    boxes = (row["boxes_0"], row["boxes_1"])
    row["judge_orders"] = [judge_order(row["key"], c, seed) for c in row["categories"]]
    crops = [[crop(images[int(o[k])], boxes[int(o[k])][n]) for n, o in enumerate(row["judge_orders"])]
             for k in (0, 1)]
    row["crops_a"], row["crops_b"] = crops
    row["judge_prompts"] = [judge_prompt(c) for c in row["categories"]]
    return row


def preferred_image(choice: str, order: str) -> int:
    """Un-shuffle: the judge's "A" / "B" -> the image (0 / 1) whose crop it was shown as that letter."""
    return int(order["AB".index(choice)])


def rho(choice: str, order: str, winner: int) -> int:
    """rho_n = 0 when the instance is preferred in the globally preferred image x^w, 1 otherwise
    (seed 003, app. E.1)."""
    return int(preferred_image(choice, order) != winner)


@step(reads=("judge_raw", "categories", "boxes_0", "boxes_1", "judge_orders", "winner", "dropped",
             "drop_reasons"),
      writes=("judge_answers", "judge_choices", "rho"), rejects=("no_judged_instances",))
def instance_preferences(row: dict, qa: bool) -> dict:
    """rho per instance from the judge's answers. QA on: an unparsable or ambiguous answer drops
    its instance (recorded with the parser's code); none left is a reject. QA off: the instance is
    kept with rho 0 (the global label stands) and judge_choices records None."""
    answers = [str(a) for a in row["judge_raw"]]
    keep = {k: [] for k in ("categories", "boxes_0", "boxes_1", "judge_orders", "judge_answers",
                            "judge_choices", "rho")}
    for n, answer in enumerate(answers):
        parsed = parse_judge(answer)
        if not parsed.ok and qa:
            row["dropped"] = list(row["dropped"]) + [row["categories"][n]]
            row["drop_reasons"] = list(row["drop_reasons"]) + [parsed.code]
            continue
        for k in ("categories", "boxes_0", "boxes_1", "judge_orders"):
            keep[k].append(row[k][n])
        keep["judge_answers"].append(answer)
        keep["judge_choices"].append(parsed.value)
        keep["rho"].append(rho(parsed.value, row["judge_orders"][n], row["winner"]) if parsed.ok else 0)
    if not keep["rho"]:
        raise Reject("no_judged_instances", "; ".join(f"{c}: {r}" for c, r in zip(row["dropped"], row["drop_reasons"])))
    row.update(keep)
    return row


# --- eq. 1 ---------------------------------------------------------------------------------------

def weight_map(boxes, rhos, image_hw: tuple[int, int], grid_hw: tuple[int, int], w_pos: float = 1.0,
               w_neg: float = 0.0) -> np.ndarray:
    """M*(i, j) of seed 003, eq. 1 on a grid_hw grid over an image_hw image: w_pos in the boxes of
    instances with rho_n = 0, w_neg in those with rho_n = 1, 1 elsewhere.

    A cell is inside a box when they overlap with positive area (a box smaller than a cell still
    marks its cell; on a pixel grid this is the box's pixels exactly). Overlap rule: a cell inside
    any rho = 1 box gets w_neg, whatever rho = 0 boxes also cover it: the paper suppresses the
    conflicting instance's gradients entirely (w_neg = 0), and an agreeing instance in front of it
    must not switch that back on."""
    (h, w), (rows, cols) = image_hw, grid_hw
    ch, cw = h / rows, w / cols
    inside = {0: np.zeros((rows, cols), bool), 1: np.zeros((rows, cols), bool)}
    for (x0, y0, x1, y1), r in zip(boxes, rhos):
        c0, c1 = max(0, math.floor(x0 / cw)), min(cols, math.ceil(x1 / cw))
        r0, r1 = max(0, math.floor(y0 / ch)), min(rows, math.ceil(y1 / ch))
        if c1 > c0 and r1 > r0 and x1 > x0 and y1 > y0:
            inside[int(r)][r0:r1, c0:c1] = True
    out = np.ones((rows, cols), np.float32)
    out[inside[0]] = w_pos
    out[inside[1]] = w_neg  # rho = 1 wins an overlap
    return out


@step(reads=("image_0", "image_1", "boxes_0", "boxes_1", "rho"), writes=("weights_0", "weights_1"),
      rejects=("weight_grid",))
def weight_maps(row: dict, w_pos: float, w_neg: float, cell: int) -> dict:
    """weights_0 / weights_1: eq. 1 on each image's latent grid (cell px per weight), each from
    that image's boxes and the instances' shared rho."""
    for i in (0, 1):
        h, w = np.asarray(row[f"image_{i}"]).shape[:2]
        if h % cell or w % cell:
            raise Reject("weight_grid", f"image_{i} {h}x{w} is not a multiple of {cell} px")
        row[f"weights_{i}"] = weight_map(row[f"boxes_{i}"], row["rho"], (h, w), (h // cell, w // cell), w_pos, w_neg)
    return row


# --- output ----------------------------------------------------------------------------------------

@step(reads=("rho", "dropped", "drop_reasons", "judge_choices", "boxes_0", "boxes_1", "categories",
             "judge_answers", "judge_orders"),
      writes=("n_instances", "n_dropped", "n_agree", "n_disagree", "rho_mean", "n_unjudged", "json"))  # + run fields
def finalize(row: dict, fields: dict) -> dict:
    """Counts and rho statistics for the manifest, the per-instance records for the json member,
    run-level fields."""
    rhos = [int(r) for r in row["rho"]]
    row["rho"] = rhos
    row["n_instances"], row["n_dropped"] = len(rhos), len(row["dropped"])
    row["n_agree"], row["n_disagree"] = rhos.count(0), rhos.count(1)
    row["rho_mean"] = float(np.mean(rhos))
    row["n_unjudged"] = sum(c is None for c in row["judge_choices"])
    row["boxes_0"] = [[float(v) for v in b] for b in row["boxes_0"]]
    row["boxes_1"] = [[float(v) for v in b] for b in row["boxes_1"]]
    instances = [{"category": c, "box_0": b0, "box_1": b1, "rho": r, "judge_answer": a, "order": o, "choice": ch}
                 for c, b0, b1, r, a, o, ch in zip(row["categories"], row["boxes_0"], row["boxes_1"], rhos,
                                                   row["judge_answers"], row["judge_orders"], row["judge_choices"])]
    dropped = [{"category": c, "reason": r} for c, r in zip(row["dropped"], row["drop_reasons"])]
    row["json"] = json.dumps({"instances": instances, "dropped_instances": dropped})  # a str: Ray keeps its keys
    row.update(fields)
    return row
