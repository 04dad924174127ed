"""The CPU steps of the UPER SFT-pair pipeline (seed 001, sec. 3.2.1 and app. B.4) between its model
stages: inputs to (reference, target) images, the foreground gate after background removal, the two
VLM turns (attributes of the cleaned reference, then the 0-5 rating of the target), the views and
scores of R_sub (stages/subject_reward.py) and the manifest fields. Each function takes and returns
one row and raises Reject on bad data; runtime.rows.run_step applies it to a batch."""
from __future__ import annotations

import json
import math

import numpy as np

from runtime.inputs import exists, join, resolve
from runtime.plan import step
from runtime.rows import Reject
from stages.keys import file_id, sample_key
from stages.photos import (IMAGE_REJECTS, MAX_INPUT_BYTES, fit_image, load_image, pair_order, read_prompts_and_classes,
                           subject_folders)
from stages.prompts import attributes_prompt, parse_attributes, parse_rating, rating_prompt
from stages.subject_reward import corresponding_views, subject_reward


# --- inputs ------------------------------------------------------------------------------------

def photo_pairs(root, pairs_per_subject: int) -> list[dict]:
    """Two photos of one subject folder make a pair (stages.photos.pair_order). The subject is the
    folder's class noun from a DreamBench-style prompts_and_classes.txt when there is one, else the
    folder name. Photo folders carry no captions, so the prompt is the class phrase."""
    classes = {}
    listed = join(str(root), "prompts_and_classes.txt")
    if exists(listed):
        classes, _ = read_prompts_and_classes(listed)
    rows = []
    for name, photos in subject_folders(root):
        subject = classes.get(name, name.replace("_", " "))
        for i, j in pair_order(len(photos), pairs_per_subject):
            rows.append({"ref_src": photos[i] if photos else None,
                         "target_src": photos[j] if j is not None else None,
                         "subject": subject, "prompt": f"a photo of {_article(subject)} {subject}",
                         "input": f"{name}: {photos[i] if photos else '-'} | {photos[j] if j is not None else '-'}"})
    return rows


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def image_source(value):
    """A list cell -> what load_image takes: bytes, a path, or Hugging Face's image struct
    {"bytes", "path"} (Subjects200K, Pick-a-Pic as parquet)."""
    if isinstance(value, dict):
        return value.get("bytes") or value.get("path")
    return value


SOURCE_COLUMNS = {"pairs": {"ref": "ref_src", "target": "target_src"}, "diptych": {"image": "image_src"}}


def pair_row(raw: dict, source: str, base: str | None = None) -> tuple[dict, dict]:
    """One input row -> (the pipeline's row, what its key hashes). `source`: photos (rows of
    photo_pairs), pairs / diptych (a list's row; relative paths are relative to `base`, the
    list's folder), dip (a DIP sample from read_webdataset: its reference and winner)."""
    if source == "photos":
        return raw, {"ref": file_id(raw["ref_src"]), "target": file_id(raw["target_src"]), "prompt": raw["prompt"]}
    if source == "dip":
        meta = json.loads(raw.get("json.json") or b"{}")
        subjects = [str(s) for s in meta.get("subjects") or []]
        row = {"ref_src": raw.get("ref.jpg"), "target_src": raw.get("win.jpg"), "prompt": meta.get("prompt"),
               "subject": " and ".join(subjects), "subjects": len(subjects), "input": f"dip:{raw['__key__']}"}
        return row, {"dip": raw["__key__"]}
    columns = SOURCE_COLUMNS[source]
    row = {src: resolve(image_source(raw.get(c)), base) for c, src in columns.items()}
    row["prompt"], row["subject"] = diptych_text(raw) if source == "diptych" else (raw.get("prompt"), raw.get("subject"))
    row["input"] = " | ".join(v if isinstance(v, str) else "-" if v is None else "<bytes>"
                              for v in (row[src] for src in columns.values()))
    inputs = {c: file_id(row[src]) for c, src in columns.items()} | {"prompt": row["prompt"], "subject": row["subject"]}
    return row, inputs


# the input columns of each source (a pair list may carry more; they are not read)
INPUT_COLUMNS = {"photos": ("ref_src", "target_src", "subject", "prompt"), "pairs": ("ref", "target", "prompt", "subject"),
                 "diptych": ("image", "prompt", "subject", "description"),
                 "dip": ("json.json", "ref.jpg", "win.jpg", "__key__")}


@step(optional=("__key__", "description", "image", "json.json", "prompt", "ref", "ref.jpg", "ref_src", "subject",
                "target", "target_src", "win.jpg"),
      writes=("ref_src", "target_src", "image_src", "prompt", "subject", "subjects", "input", "key"))
def read_pair(raw: dict, source: str, base: str | None, fields: dict) -> dict:
    """An input row in the pipeline's columns, with its content key. Nothing is rejected here (a
    reject needs its key first); load_pair rejects what is missing."""
    row, inputs = pair_row(raw, source, base)
    row["key"] = sample_key(inputs, fields)
    return row


@step(optional=("subjects", "subject"), rejects=("multi_subject",))
def single_subject(row: dict) -> dict:
    """A DIP sample of several subjects is no UPER pair: one subject on white is the condition."""
    if (row.get("subjects") or 1) > 1:
        raise Reject("multi_subject", f"{row['subjects']} subjects: {row.get('subject')}")
    return row


def diptych_text(row: dict) -> tuple[str | None, str | None]:
    """(prompt, subject) of a Subjects200K row: `description` holds `item` and `description_1`,
    the caption of the right half (the target); a `prompt` / `subject` column wins."""
    desc = row.get("description")
    if isinstance(desc, str):
        try:
            desc = json.loads(desc)
        except ValueError:
            desc = None
    desc = desc if isinstance(desc, dict) else {}
    return row.get("prompt") or desc.get("description_1"), row.get("subject") or desc.get("item")


@step(optional=("prompt", "image_src", "ref_src", "target_src"), writes=("ref", "target"),
      rejects=("no_prompt",) + IMAGE_REJECTS)
def load_pair(row: dict, max_side: int, diptych_padding: int, max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    """ref and target as uint8 RGB, each at most max_side (sides multiples of 16). A diptych
    (Subjects200K: two 512 px images side by side, each inside an 8 px border, 1056 x 528) is split
    at half its width and each half loses `diptych_padding` px on every side: left = reference,
    right = target."""
    if not (row.get("prompt") or "").strip():
        raise Reject("no_prompt", "the pair has no prompt")
    if "image_src" in row:
        image = load_image(image_source(row.get("image_src")), max_side=1 << 30, side_multiple=1, max_bytes=max_bytes)
        h, w = image.shape[:2]
        half, p = w // 2, diptych_padding
        if half - 2 * p < 16 or h - 2 * p < 16:
            raise Reject("too_small", f"diptych {w}x{h} with padding {p}")
        row["ref"] = fit_image(image[p:h - p, p:half - p], max_side)
        row["target"] = fit_image(image[p:h - p, half + p:w - p], max_side)
    else:
        row["ref"] = load_image(image_source(row.get("ref_src")), max_side, max_bytes=max_bytes)
        row["target"] = load_image(image_source(row.get("target_src")), max_side, max_bytes=max_bytes)
    return row


# --- sec. 3.2.1 step 1: background removal ------------------------------------------------------

@step(reads=("ref_fg_fraction", "ref_on_white"), writes=("ref_clean", "fg_fraction"),
      rejects=("nan_score", "foreground_too_small", "foreground_too_large"))
def foreground_gate(row: dict, fg_min: float, fg_max: float) -> dict:
    """The reference on pure white (the background_removal worker's composite) becomes ref_clean
    and its alpha ref_alpha; a reference where almost nothing (< fg_min) or almost everything
    (> fg_max) is foreground has no subject to isolate."""
    fg = float(row["ref_fg_fraction"])
    if not math.isfinite(fg):  # NaN passes every comparison
        raise Reject("nan_score", f"foreground fraction {fg}")
    if fg < fg_min:
        raise Reject("foreground_too_small", f"foreground {fg:.4f} < {fg_min}")
    if fg > fg_max:
        raise Reject("foreground_too_large", f"foreground {fg:.4f} > {fg_max}")
    row["ref_clean"], row["fg_fraction"] = row["ref_on_white"], fg
    return row


# --- sec. 3.2.1 step 2 / app. B.4: the VLM filter, two turns --------------------------------------

@step(optional=("subject",), writes=("attributes_prompt",))
def attributes_query(row: dict, max_attributes: int) -> dict:
    row["attributes_prompt"] = attributes_prompt(row.get("subject") or "object", max_attributes)
    return row


@step(reads=("attributes_raw",), optional=("subject",), writes=("attributes", "rating_prompt"),
      rejects=("unparsable_attributes",))
def rating_query(row: dict, max_attributes: int, qa: bool) -> dict:
    """Turn (a)'s answer -> the attribute list; turn (b) asks about each of them in the target.
    Without QA an unparsable answer leaves the list empty and the rating turn still runs."""
    parsed = parse_attributes(row["attributes_raw"], max_attributes)
    if not parsed.ok and qa:
        parsed.unwrap()
    row["attributes"] = parsed.value or []
    row["rating_prompt"] = rating_prompt(row.get("subject") or "object", row["attributes"])
    return row


@step(reads=("rating_raw", "attributes_raw"),
      writes=("rating", "verdicts", "attributes_present", "attributes_answer", "rating_answer"),
      rejects=("unparsable_rating", "inconsistent_pair"))
def rating_gate(row: dict, rating_min: int, qa: bool) -> dict:
    """Sec. 3.2.1: the VLM verifies that the reference's key attributes are present in the target,
    and "any pair that fails this cross-modal consistency check is discarded": one attribute
    answered No rejects the pair. The 0-5 rating of Fig. 8 must also reach rating_min (4: this
    project's floor; the paper gives none). Without QA the verdicts and the rating are recorded
    (None when unparsable) and nothing is dropped."""
    parsed = parse_rating(row["rating_raw"])
    if not parsed.ok and qa:
        parsed.unwrap()
    row["rating"], pairs = (parsed.value.rating, parsed.value.verdicts) if parsed.ok else (None, [])
    row["verdicts"] = [f"{a}: {'yes' if present else 'no'}" for a, present in pairs]
    row["attributes_present"] = float(np.mean([present for _, present in pairs])) if pairs else None
    row["attributes_answer"], row["rating_answer"] = row["attributes_raw"], row["rating_raw"]
    absent = [a for a, present in pairs if not present]
    if qa and absent:
        raise Reject("inconsistent_pair", f"absent in the target: {', '.join(absent)} (rating {row['rating']})")
    if qa and row["rating"] < rating_min:
        raise Reject("inconsistent_pair", f"rating {row['rating']} < {rating_min}")
    return row


# --- sec. 3.1.3 / app. B.1: R_sub -----------------------------------------------------------------

@step(reads=("key", "ref_clean", "target"), writes=("rsub_ref", "rsub_target", "rsub_n_patch"))
def subject_reward_views(row: dict, size: int, patch: int, stride: int, crops: int, crop_size: int,
                         seed: int) -> dict:
    """The corresponding views of ref_clean (what the model is conditioned on) and target, for the
    image encoder; random crops are seeded by the sample key, so a rerun scores the same crops."""
    rng = np.random.default_rng([seed, int(row["key"][:15], 16)])
    row["rsub_ref"], row["rsub_target"], row["rsub_n_patch"] = corresponding_views(
        np.asarray(row["ref_clean"]), np.asarray(row["target"]), size=size, patch=patch, stride=stride,
        crops=crops, crop_size=crop_size, rng=rng)
    return row


@step(reads=("rsub_cosines", "rsub_n_patch"),
      writes=("r_sub", "r_sub_patch", "r_sub_cls", "r_sub_crops", "r_sub_penalty"), rejects=("bad_subject_reward",))
def subject_reward_scores(row: dict, weights: dict, copy_paste_similarity: float | None,
                          copy_paste_penalty: float) -> dict:
    try:
        row.update(subject_reward(row["rsub_cosines"], int(row["rsub_n_patch"]), weights,
                                  copy_paste_similarity, copy_paste_penalty))
    except ValueError as e:  # NaN features from a broken encoder
        raise Reject("bad_subject_reward", str(e)) from None
    return row


@step()  # writes the run-level manifest fields the pipeline passes (its plan declares them)
def finalize(row: dict, fields: dict, keep_ref: bool) -> dict:
    if not keep_ref:
        row.pop("ref", None)
    row.update(fields)
    return row
