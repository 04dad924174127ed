"""The CPU steps of the DIP pipeline (FocusDPO, seed 000 section 4.1 / appendix B) between its model
stages: rubric questions and gates, boxes and masks -> M_prior, region-caption queries, the
negative gate, M_d and the manifest fields. Each function takes and returns one row, raises
Reject on bad data and declares its columns (runtime.plan.step)."""
from __future__ import annotations

import math

import numpy as np

from runtime.plan import step
from runtime.rows import Reject
from stages.complexity import complexity_map
from stages.photos import IMAGE_REJECTS, MAX_INPUT_BYTES, load_image
from stages.masks import box_of, inpaint_opencv, mask_area, mask_gate, masked_crop, union
from stages.prompts import parse_region_caption, region_caption_prompt
from stages.rubric import is_negative, is_positive, parse_rubric, rubric_prompt


# M_prior and the per-subject masks, and what stages.masks rejects them for
PRIOR_COLUMNS = ("mask", "mask_*", "mask_area", "mask_areas", "boxes")
PRIOR_REJECTS = ("mask_count", "empty_mask", "mask_too_small", "mask_too_large", "mask_shape_mismatch", "bad_mask")


def categories(row: dict) -> list[str]:
    """Rubric category per subject: a multi-subject prompt may mix an animal and an object."""
    cats = row.get("categories")
    if cats is not None and len(cats) == len(row["subjects"]):
        return [str(c) for c in cats]
    return [str(row["category"])] * len(row["subjects"])


@step(reads=("ref_path", "win_path"), writes=("ref", "win"), rejects=IMAGE_REJECTS)
def load_photos(row: dict, max_side: int, max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    """`source: photos`: the reference and winner photos of a pair."""
    row["ref"] = load_image(row["ref_path"], max_side, max_bytes=max_bytes)
    row["win"] = load_image(row["win_path"], max_side, max_bytes=max_bytes)
    return row


@step(optional=("subjects", "class_nouns", "categories", "category"), rejects=("no_class_noun", "unknown_category"))
def check_subjects(row: dict) -> dict:
    """Before any model work: every subject needs a class noun (the grounding query) and a category
    with a Fig. 13 rubric, or the sample could never be judged."""
    if not row.get("subjects") or row.get("class_nouns") is None or len(row["class_nouns"]) != len(row["subjects"]):
        raise Reject("no_class_noun", f"subjects {row.get('subjects')} vs class nouns {row.get('class_nouns')}")
    try:
        for c, s in zip(categories(row), row["subjects"]):
            rubric_prompt(c, s)
    except ValueError as e:
        raise Reject("unknown_category", str(e)) from None
    return row


@step(reads=("subjects",), optional=("categories", "category"), writes=("rubric_prompts",))
def rubric_questions(row: dict) -> dict:
    """One rubric prompt per subject (Fig. 13): multi-subject pairs must pass for every subject;
    each prompt's counting question sets the sample's other subjects aside."""
    subjects = list(row["subjects"])
    row["rubric_prompts"] = [rubric_prompt(c, s, others=subjects[:i] + subjects[i + 1:])
                             for i, (c, s) in enumerate(zip(categories(row), subjects))]
    return row


def _rubric(row: dict, raw_column: str, qa: bool) -> tuple[list, list]:
    scores, answers = [], []
    for raw, cat in zip(row[raw_column], categories(row)):
        parsed = parse_rubric(raw, cat)
        if not parsed.ok:
            if qa:
                raise Reject(parsed.code, parsed.reason)
            scores.append(None)
            answers.append([])
        else:
            scores.append(parsed.value.score)
            answers.append(list(parsed.value.answers))
    return scores, answers


@step(reads=("encoder_cosine",), rejects=("nan_score", "copy_paste", "encoder_prefilter"))
def encoder_gate(row: dict, cosine_min: float | None, copy_paste: float, qa: bool) -> dict:
    """Before the VLM rubric: near-copies of the reference that teach nothing (always, with QA),
    and, opt-in (cosine_min; the paper has no such filter), obvious failures."""
    cos = float(row["encoder_cosine"])
    if not math.isfinite(cos):  # NaN passes every comparison: a broken encoder would pass the gate
        raise Reject("nan_score", f"encoder cosine {cos}")
    if qa and cos >= copy_paste:
        raise Reject("copy_paste", f"encoder cosine {cos:.4f} >= {copy_paste}")
    if qa and cosine_min is not None and cos < cosine_min:
        raise Reject("encoder_prefilter", f"encoder cosine {cos:.4f} < {cosine_min}")
    return row


@step(reads=("pos_raw", "subjects"), optional=("categories", "category"), writes=("pos_scores", "pos_answers"),
      rejects=("positive_inconsistent", "unparsable_rubric", "unknown_category"))
def positive_gate(row: dict, min_score: int, qa: bool) -> dict:
    """(x_r, x_w) keep only if every subject scores >= min_score of 10 (app. B: >= 9)."""
    row["pos_scores"], row["pos_answers"] = _rubric(row, "pos_raw", qa)
    if qa and not all(is_positive(s, min_score) for s in row["pos_scores"]):
        raise Reject("positive_inconsistent", f"rubric scores {row['pos_scores']} < {min_score}")
    return row


@step(reads=("neg_raw", "subjects"), optional=("categories", "category"), writes=("neg_scores", "neg_answers"),
      rejects=("negative_too_consistent", "unparsable_rubric", "unknown_category"))
def negative_gate(row: dict, max_score: int, qa: bool) -> dict:
    """(x_r, x_l) must score <= max_score of 10 for every subject (app. B: <= 6)."""
    row["neg_scores"], row["neg_answers"] = _rubric(row, "neg_raw", qa)
    if qa and not all(is_negative(s, max_score) for s in row["neg_scores"]):
        raise Reject("negative_too_consistent", f"rubric scores {row['neg_scores']} > {max_score}")
    return row


@step(reads=("phrase_boxes", "class_nouns"), writes=("boxes",), rejects=("no_box",))
def grounding_boxes(row: dict) -> dict:
    """Best box of each subject's class noun on x_w; a subject without a box is a reject."""
    boxes = list(row["phrase_boxes"])
    missing = [n for n, b in zip(row["class_nouns"], boxes) if b is None]
    if missing:
        raise Reject("no_box", f"no box for {missing}")
    row["boxes"] = np.asarray([np.asarray(b, np.float32) for b in boxes], np.float32)
    return row


@step(reads=("masks", "subjects", "boxes"), writes=PRIOR_COLUMNS, rejects=PRIOR_REJECTS)
def prior_from_masks(row: dict, area_min: float, area_max: float) -> dict:
    """M_prior: one mask per subject (SAM2 from its box) and their union."""
    masks = [np.asarray(m, bool) for m in row["masks"]]
    return _set_prior(row, masks, area_min, area_max)


@step(reads=("alpha", "subjects"), writes=PRIOR_COLUMNS, rejects=("salient_needs_single_subject",) + PRIOR_REJECTS)
def prior_from_alpha(row: dict, area_min: float, area_max: float) -> dict:
    """`segmenter: salient`: the background-removal alpha of x_w as M_prior (single subject only:
    a salient mask cannot tell two subjects apart)."""
    if len(row["subjects"]) != 1:
        raise Reject("salient_needs_single_subject", f"{len(row['subjects'])} subjects")
    mask = np.asarray(row["alpha"]) > 127
    row["boxes"] = box_of(mask)[None]
    return _set_prior(row, [mask], area_min, area_max)


def _set_prior(row: dict, masks: list[np.ndarray], area_min: float, area_max: float) -> dict:
    if len(masks) != len(row["subjects"]):
        raise Reject("mask_count", f"{len(masks)} masks for {len(row['subjects'])} subjects")
    mask_gate(masks, area_min, area_max)
    row["mask"] = union(masks)
    for i, m in enumerate(masks):
        row[f"mask_{i}"] = m
    row["mask_area"] = mask_area(row["mask"])
    row["mask_areas"] = [mask_area(m) for m in masks]
    row["boxes"] = [list(map(float, b)) for b in np.asarray(row["boxes"], np.float32)]
    return row


@step(reads=("win", "boxes", "subjects", "mask_*"), writes=("crops", "caption_prompts"),
      rejects=("mask_shape_mismatch", "bad_box", "empty_crop"))
def caption_queries(row: dict) -> dict:
    """A masked crop of each subject region for the VLM to describe in fine detail."""
    win = np.asarray(row["win"])
    row["crops"] = [masked_crop(win, row[f"mask_{i}"], np.asarray(b, np.float32)) for i, b in enumerate(row["boxes"])]
    row["caption_prompts"] = [region_caption_prompt(s) for s in row["subjects"]]
    return row


@step(reads=("caption_raw", "subjects"), writes=("captions", "inpaint_prompt"),
      rejects=("refusal", "empty_caption", "caption_too_long"))
def region_captions(row: dict, qa: bool) -> dict:
    """Parse the region captions; they become the inpainting prompt. Without QA an unparsable
    caption falls back to the subject's name, so the loser is still made."""
    captions = []
    for raw, subject in zip(row["caption_raw"], row["subjects"]):
        parsed = parse_region_caption(raw)
        if not parsed.ok and qa:
            raise Reject(parsed.code, parsed.reason)
        captions.append(parsed.value if parsed.ok else str(subject))
    row["captions"] = captions
    row["inpaint_prompt"] = "; ".join(captions)
    return row


@step(reads=("subjects",), writes=("captions", "inpaint_prompt"))
def template_captions(row: dict) -> dict:
    """`captions: template`: each subject's phrase (its class noun and attributes) as its caption."""
    row["captions"] = [str(s) for s in row["subjects"]]
    row["inpaint_prompt"] = "; ".join(row["captions"])
    return row


@step(reads=("win", "mask"), writes=("lose", "inpaint_mask"), rejects=("bad_image", "mask_shape_mismatch", "empty_mask"))
def opencv_loser(row: dict, dilation_px: int) -> dict:
    """`inpainter: opencv`: Telea inpainting inside the dilated M_prior, context copied back exactly."""
    row["lose"], row["inpaint_mask"] = inpaint_opencv(np.asarray(row["win"]), np.asarray(row["mask"], bool), dilation_px)
    return row


@step(reads=("win",), writes=("complexity",), rejects=("corrupt_image", "too_small"))
def complexity(row: dict, patch: int) -> dict:
    """M_d of x_w (seed 000, eq. 7-8)."""
    row["complexity"] = complexity_map(np.asarray(row["win"]), patch)
    return row


@step(reads=("subjects",), writes=("n_subjects",))
def finalize(row: dict, fields: dict) -> dict:
    """Run-level manifest fields (models, thresholds, modes; the plan declares them)."""
    row.update(fields)
    row["n_subjects"] = len(row["subjects"])
    return row
