"""The CPU steps of the MultiID pipeline (WithAnyone, seed 002, section 3 and appendix C) between its
model stages: inputs, face gates, the bank verdicts, retrieval against the bank's centers, filters,
caption prompts and parsing. Row functions raise Reject; `retrieve` works on a batch's live rows so
that every face of the batch is matched with one matrix product. Each declares its columns."""
from __future__ import annotations

import json

import numpy as np

from runtime.inputs import image_of
from runtime.plan import step
from runtime.rows import Reject
from stages.bench_split import split_of
from stages.photos import IMAGE_REJECTS, MAX_INPUT_BYTES, load_image
from stages.prompts import CAPTION_PREFIX, caption_prompt, parse_caption
from stages.retrieval import UNASSIGNED, assign, reached, similarities, top1

# --- inputs ------------------------------------------------------------------------------------

@step(reads=("path",), optional=("data", "read_error"), writes=("image", "source", "height", "width"),
      rejects=IMAGE_REJECTS)
def load(row: dict, max_side: int, max_pixels: int | None, min_side: int,
         max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    """Decompression bombs, corrupt files and tiny images are rejects (stages.photos.load_image)."""
    row = reload(row, max_side=max_side, max_pixels=max_pixels, min_side=min_side, max_bytes=max_bytes)
    row["source"] = str(row["input"])  # the manifest's way back to the original photo (a path, a shard member)
    row["height"], row["width"] = row["image"].shape[:2]
    return row


@step(reads=("path",), optional=("data", "read_error"), writes=("image",), rejects=IMAGE_REJECTS)
def reload(row: dict, max_side: int, max_pixels: int | None, min_side: int,
           max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    """The photo decoded again, after a gather: the gather's barrier holds only the light
    columns (embeddings, identities), never every decoded image of the dataset. Same decode as
    `load`, so the same pixels."""
    row["image"] = load_image(image_of(row), max_side=max_side, min_side=min_side, max_pixels=max_pixels,
                              max_bytes=max_bytes)
    return row


# --- faces ---------------------------------------------------------------------------------------

def _short_sides(boxes: np.ndarray) -> np.ndarray:
    return np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])


def _usable(row: dict, min_det_score: float, min_face_px: int) -> np.ndarray:
    boxes = np.asarray(row["face_boxes"], np.float32).reshape(-1, 4)
    return (np.asarray(row["det_scores"], np.float32) >= min_det_score) & (_short_sides(boxes) >= min_face_px)


def _check_embeddings(emb: np.ndarray) -> np.ndarray:
    if not np.isfinite(emb).all() or (np.linalg.norm(emb, axis=1) < 0.5).any():
        raise Reject("bad_embedding", "NaN or zero face embedding")
    return emb


@step(reads=("n_faces", "face_boxes", "det_scores", "embeddings"), writes=("embedding", "box", "det_score"),
      rejects=("no_face", "face_count", "bad_embedding"))
def one_face(row: dict, min_det_score: float, min_face_px: int) -> dict:
    """Single-person photo: exactly one face above the score and size floor (weaker detections do
    not count), else a reject that records how many were found."""
    usable = _usable(row, min_det_score, min_face_px) if int(row["n_faces"]) else np.zeros(0, bool)
    n = int(usable.sum())
    if n != 1:
        raise Reject("no_face" if n == 0 else "face_count", f"{n} faces ({int(row['n_faces'])} detected)")
    i = int(np.flatnonzero(usable)[0])
    row["embedding"] = _check_embeddings(np.asarray(row["embeddings"], np.float32)[i:i + 1])[0]
    row["box"] = [float(v) for v in np.asarray(row["face_boxes"], np.float32)[i]]
    row["det_score"] = float(row["det_scores"][i])
    return row


@step(reads=("n_faces", "face_boxes", "det_scores", "embeddings", "face_kps"),
      writes=("embeddings", "boxes", "keypoints", "det_scores", "n_faces", "identifiable"),
      rejects=("no_face", "face_count", "bad_embedding"))
def group_faces(row: dict, min_faces: int, max_faces: int, min_det_score: float, min_face_px: int) -> dict:
    """Group photo: every face above the detection score is a person, and min_faces..max_faces
    people it must show. Faces too small to identify (under min_face_px) still count and stay in
    the record, flagged not `identifiable` (retrieval gives them no identity): a 29-person photo
    is a face_count reject, not a one-person photo of its largest face."""
    people = np.asarray(row["det_scores"], np.float32).reshape(-1) >= min_det_score
    n = int(people.sum())
    boxes = np.asarray(row["face_boxes"], np.float32).reshape(-1, 4)[people]
    identifiable = _short_sides(boxes) >= min_face_px
    if not min_faces <= n <= max_faces:
        raise Reject("no_face" if n == 0 else "face_count",
                     f"{n} faces ({int((~identifiable).sum())} too small to identify), want {min_faces}-{max_faces}")
    row["embeddings"] = _check_embeddings(np.asarray(row["embeddings"], np.float32)[people])
    row["boxes"] = boxes.tolist()
    row["keypoints"] = np.asarray(row["face_kps"], np.float32)[people].reshape(n, 10).tolist()
    row["det_scores"] = np.asarray(row["det_scores"], np.float32)[people].tolist()
    row["n_faces"], row["identifiable"] = n, identifiable.tolist()
    return row


@step(reads=("embeddings", "identifiable"),
      writes=("top1_identity", "similarity", "margin", "identity_at_040", "identity_at_050", "identity",
              "assign_threshold", "conflict", "reached", "n_assigned", "paired"))
def retrieve(rows: list[dict], centers: np.ndarray, identity_ids: np.ndarray, thresholds: tuple[float, float],
             assign_threshold: float) -> list[dict]:
    """Every face of the batch against every center in one matrix product; per photo the top-1
    identity, similarity, margin and the assignment at both thresholds (ids: the bank's hashed
    identity ids). `identity` is the one at `assign_threshold` (recorded beside it, with the faces
    that lost a contested identity in `conflict`): the photo's identities for paired / unpaired,
    the report and the trainer. `reached`: every identity any face, identifiable or not, reaches
    at the low threshold: what the bench split and a takedown go by."""
    if not rows:
        return rows
    ids = np.asarray(identity_ids, np.int64)
    sim_all = similarities(np.concatenate([np.asarray(r["embeddings"], np.float32).reshape(-1, centers.shape[1])
                                           for r in rows]), centers)
    start = 0
    for r in rows:
        n = len(r["embeddings"])
        sim = sim_all[start:start + n]
        start += n
        usable = np.asarray(r["identifiable"], bool).reshape(-1)
        ident, best, margin = top1(sim)
        r["top1_identity"] = [int(ids[c]) if u else UNASSIGNED for c, u in zip(ident, usable)]
        r["similarity"] = [float(v) if u else None for v, u in zip(best, usable)]
        r["margin"] = [float(v) if u else None for v, u in zip(margin, usable)]
        masked = np.where(usable[:, None], sim, -np.inf)  # too small to identify: never assigned
        for t, column in zip(thresholds, ("identity_at_040", "identity_at_050")):
            cols, conflict = assign(masked, t)
            r[column] = [int(ids[c]) if c != UNASSIGNED else UNASSIGNED for c in cols]
            if t == assign_threshold:
                r["identity"], r["conflict"] = r[column], conflict.tolist()
        if "identity" not in r:
            raise ValueError(f"assign_threshold {assign_threshold} is neither of {thresholds}")
        r["assign_threshold"] = assign_threshold
        r["reached"] = sorted(int(ids[c]) for c in reached(sim, min(thresholds)))
        r["n_assigned"] = sum(i != UNASSIGNED for i in r["identity"])
        r["paired"] = r["n_assigned"] > 0
    return rows


@step(reads=("height", "width", "image"), writes=("min_side", "collage"), rejects=("low_resolution", "collage"))
def filters(row: dict, min_side: int, collage: bool) -> dict:
    """Recorded columns, each a gate: minimum resolution and (optional) collage detection."""
    row["min_side"] = int(min(row["height"], row["width"]))
    if row["min_side"] < min_side:
        raise Reject("low_resolution", f"short side {row['min_side']} < {min_side}")
    if collage:
        from stages.collage import detect_collage

        row["collage"], evidence = detect_collage(np.asarray(row["image"]))
        if row["collage"]:
            raise Reject("collage", json.dumps(evidence, default=str)[:500])
    return row


@step(reads=("text_fraction",), optional=("aesthetic",), writes=("text",), rejects=("text", "low_aesthetic"))
def appearance(row: dict, max_text_fraction: float | None, min_aesthetic: float | None) -> dict:
    """Appendix C's other gates: watermarks, logos and captions burnt into the photo (OCR text
    covering more than `max_text_fraction` of it: the paper crops them out "when possible,
    otherwise the images were discarded"; we discard), and a low aesthetic score."""
    fraction = float(row["text_fraction"])
    row["text"] = max_text_fraction is not None and fraction > max_text_fraction
    if row["text"]:
        raise Reject("text", f"text covers {fraction:.1%} of the image > {max_text_fraction:.1%}")
    score = row.get("aesthetic")
    if min_aesthetic is not None and (score is None or not float(score) >= min_aesthetic):
        raise Reject("low_aesthetic", f"aesthetic score {score} < {min_aesthetic}")
    return row


# --- captions --------------------------------------------------------------------------------------

@step(reads=("key",), writes=("caption_prompt_index", "caption_prompt"))
def caption_query(row: dict, seed: int) -> dict:
    """App. I.1: one of the six prompts, chosen by a seeded hash of the key."""
    row["caption_prompt_index"], _, row["caption_prompt"] = caption_prompt(row["key"], seed)
    return row


@step(optional=("caption_raw",), writes=("caption", "caption_repaired"),
      rejects=("refusal", "empty_caption", "caption_too_long", "caption_no_prefix"))
def caption(row: dict, max_words: int, repair: bool) -> dict:
    """At most `max_words` words, opening "This image shows": repaired (cut / prefixed) or rejected."""
    parsed = parse_caption(row.get("caption_raw"), start_at=CAPTION_PREFIX)
    if not parsed.ok:
        raise Reject(parsed.code, parsed.reason)
    text, repaired = parsed.value, False
    if not text.lower().startswith(CAPTION_PREFIX.lower()):
        if not repair:
            raise Reject("caption_no_prefix", text[:80])
        text, repaired = f"{CAPTION_PREFIX} {text[:1].lower()}{text[1:]}", True
    words = text.split()
    if len(words) > max_words:
        if not repair:
            raise Reject("caption_too_long", f"{len(words)} words > {max_words}")
        text, repaired = " ".join(words[:max_words]), True
    row["caption"], row["caption_repaired"] = text, repaired
    return row


@step(reads=("n_faces",), writes=("caption", "caption_repaired"))
def template_caption(row: dict) -> dict:
    """`captions: template`: app. I.1's opening and the number of people, every face counted."""
    n = int(row["n_faces"])
    row["caption"] = f"{CAPTION_PREFIX} {'one person' if n == 1 else f'{n} people'}."
    row["caption_repaired"] = False
    return row


@step(reads=("key",), writes=("identity_id", "center_similarity"), rejects=("outlier", "too_few_references"))
def bank_verdict(row: dict, verdicts: dict, members: dict) -> dict:
    """The reference bank's verdict on a single-person photo: its identity id and similarity to
    the identity's center, or the bank's reject (outlier, too_few_references)."""
    if row["key"] in verdicts:
        raise Reject(*verdicts[row["key"]])
    row["identity_id"], row["center_similarity"] = members[row["key"]]
    return row


@step(reads=("identity", "reached"), writes=("split", "json"))
def bench_split(row: dict, held: set, references: dict) -> dict:
    """MultiID-Bench: a photo in which any face reaches a held-out identity at the low threshold
    (assigned or not, paired photo or not) is bench, else train; the json member lists the bank's
    reference keys of each identity assigned in the photo."""
    ids = [int(i) for i in row["identity"]]
    row["split"] = split_of([int(i) for i in row["reached"]], held)
    # a JSON string: Ray would turn a dict into a struct whose fields are every row's identities
    row["json"] = json.dumps({"reference_keys": {str(i): references.get(i, []) for i in ids if i >= 0}})
    return row


@step()
def finalize(row: dict, fields: dict) -> dict:
    """Run-level manifest fields (model ids; the plan declares them)."""
    row.update(fields)
    return row
