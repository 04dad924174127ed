"""The CPU steps of the MultiID pipeline (WithAnyone, seed 002, section 3 and appendix C) between its
model stages: inputs, face gates, the bank verdicts, retrieval against the bank's centers, filters,
caption prompts and parsing. Row functions raise Reject; `retrieve` works on a batch's live rows so
that every face of the batch is matched with one matrix product. Each declares its columns."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from runtime.plan import step
from runtime.rows import Reject
from stages.bench_split import split_of
from stages.photos import IMAGE_EXTS, IMAGE_REJECTS, MAX_INPUT_BYTES, load_image
from stages.prompts import CAPTION_PREFIX, caption_prompt, parse_caption
from stages.retrieval import UNASSIGNED, assign, similarities, top1

# --- inputs ------------------------------------------------------------------------------------

def list_photos(source: str, with_identity: bool) -> list[dict]:
    """A folder (singles: one sub-folder per identity; groups: the images) or a .parquet / .jsonl /
    .csv list with `path` (and `identity`). Relative paths in a list are relative to the list."""
    src = Path(source)
    if src.is_dir():
        if with_identity:
            return [{"path": str(p), "identity": d.name} for d in sorted(x for x in src.iterdir() if x.is_dir())
                    for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
        return [{"path": str(p)} for p in sorted(src.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    if src.suffix == ".parquet":
        import pyarrow.parquet as pq

        rows = pq.read_table(src).to_pylist()
    elif src.suffix == ".csv":
        rows = list(csv.DictReader(src.open(encoding="utf-8")))
    elif src.suffix in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in src.open(encoding="utf-8") if line.strip()]
    else:
        raise ValueError(f"{source}: expected a folder, .parquet, .csv or .jsonl")
    for r in rows:
        if r.get("path") and "://" not in r["path"] and not Path(r["path"]).is_absolute():
            r["path"] = str(src.parent / r["path"])
    return rows


@step(reads=("path",), writes=("image", "source", "height", "width"), rejects=IMAGE_REJECTS)
def load(row: dict, max_side: int, max_pixels: int | None, min_side: int,
         max_bytes: int | None = MAX_INPUT_BYTES) -> dict:
    """Decompression bombs, corrupt files and tiny images are rejects (stages.photos.load_image)."""
    row["image"] = load_image(row.get("path"), max_side=max_side, min_side=min_side, max_pixels=max_pixels,
                              max_bytes=max_bytes)
    row["source"] = str(row["path"])  # the manifest's way back to the original photo
    row["height"], row["width"] = row["image"].shape[:2]
    return row


# --- faces ---------------------------------------------------------------------------------------

def _usable(row: dict, min_det_score: float, min_face_px: int) -> np.ndarray:
    boxes = np.asarray(row["face_boxes"], np.float32).reshape(-1, 4)
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    return (np.asarray(row["det_scores"], np.float32) >= min_det_score) & (sides >= min_face_px)


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
      writes=("embeddings", "boxes", "keypoints", "det_scores", "n_faces"), rejects=("no_face", "face_count", "bad_embedding"))
def group_faces(row: dict, min_faces: int, max_faces: int, min_det_score: float, min_face_px: int) -> dict:
    """Group photo: keep faces above the score and size floor; min_faces..max_faces of them."""
    keep = _usable(row, min_det_score, min_face_px) if int(row["n_faces"]) else np.zeros(0, bool)
    n = int(keep.sum())
    if not min_faces <= n <= max_faces:
        raise Reject("no_face" if n == 0 else "face_count", f"{n} faces, want {min_faces}-{max_faces}")
    row["embeddings"] = _check_embeddings(np.asarray(row["embeddings"], np.float32)[keep])
    row["boxes"] = np.asarray(row["face_boxes"], np.float32)[keep].tolist()
    row["keypoints"] = np.asarray(row["face_kps"], np.float32)[keep].reshape(n, 10).tolist()
    row["det_scores"] = np.asarray(row["det_scores"], np.float32)[keep].tolist()
    row["n_faces"] = n
    return row


@step(reads=("embeddings",), writes=("top1_identity", "similarity", "margin", "identity_at_040", "identity_at_050",
                                   "identity", "assign_threshold", "n_assigned", "paired"))
def retrieve(rows: list[dict], centers: np.ndarray, thresholds: tuple[float, float],
             assign_threshold: float) -> list[dict]:
    """Every face of the batch against every center in one matrix product; per photo the top-1
    identity, similarity, margin, and the assignment at both thresholds. `identity` is the one
    at `assign_threshold` (recorded beside it): the identities of the photo for everything
    downstream (paired, the bench split, the report, the trainer)."""
    if not rows:
        return rows
    sim_all = similarities(np.concatenate([r["embeddings"] for r in rows]), centers)
    start = 0
    for r in rows:
        n = len(r["embeddings"])
        sim = sim_all[start:start + n]
        start += n
        ident, best, margin = top1(sim)
        r["top1_identity"], r["similarity"], r["margin"] = ident.tolist(), best.tolist(), margin.tolist()
        low, high = (assign(sim, t).tolist() for t in thresholds)
        r["identity_at_040"], r["identity_at_050"] = low, high
        r["assign_threshold"] = assign_threshold
        r["identity"] = low if assign_threshold == thresholds[0] else high
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


@step(reads=("key",), writes=("identity_id", "center_similarity"), rejects=("outlier", "too_few_references"))
def bank_verdict(row: dict, verdicts: dict, members: dict) -> dict:
    """The reference bank's verdict on a single-person photo: its identity id and similarity to
    the identity's center, or the bank's reject (outlier, too_few_references)."""
    if row["key"] in verdicts:
        raise Reject(*verdicts[row["key"]])
    row["identity_id"], row["center_similarity"] = members[row["key"]]
    return row


@step(reads=("identity",), writes=("split", "json"))
def bench_split(row: dict, held: set, references: dict) -> dict:
    """MultiID-Bench: a photo showing a held-out identity is bench, else train; the json member
    lists the bank's reference keys of each identity in the photo."""
    ids = [int(i) for i in row["identity"]]
    row["split"] = split_of(ids, held)
    # a JSON string: Ray would turn a dict into a struct whose fields are every row's identities
    row["json"] = json.dumps({"reference_keys": {str(i): references.get(i, []) for i in ids if i >= 0}})
    return row


@step()
def finalize(row: dict, fields: dict) -> dict:
    """Run-level manifest fields (model ids; the plan declares them)."""
    row.update(fields)
    return row
