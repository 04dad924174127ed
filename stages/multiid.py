"""The CPU steps of the MultiID pipeline (WithAnyone, seed 002, section 3 and appendix C) between its
model stages: inputs, face gates, the bank verdicts, retrieval against the bank's centers, filters,
caption prompts and parsing. Row functions raise Reject; `retrieve` works on a whole batch so that
every face of the batch is matched with one matrix product."""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

from schemas.batch import Reject, batch_of, is_rejected, rows_of
from schemas.contract import TIMING_PREFIX
from stages.photos import IMAGE_EXTS, load_image
from stages.prompts import CAPTION_PREFIX, caption_prompt, parse_caption
from stages.retrieval import UNASSIGNED, assign, similarities, top1

# columns the writer need not see
SCRATCH = ("path", "face_boxes", "face_kps", "caption_prompt", "caption_raw", "identity")


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


def load(row: dict, max_side: int, max_pixels: int | None, min_side: int) -> dict:
    """Decompression bombs, corrupt files and tiny images are rejects (stages.photos.load_image)."""
    row["image"] = load_image(row.get("path"), max_side=max_side, min_side=min_side, max_pixels=max_pixels)
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


def retrieve(batch, centers_ref, thresholds: tuple[float, float], assign_threshold: float):
    """Every face of the batch against every center in one matrix product; per photo the top-1
    identity, similarity, margin, and the one-to-one assignment at both thresholds."""
    import ray

    centers = ray.get(centers_ref) if isinstance(centers_ref, ray.ObjectRef) else centers_ref
    t0 = time.perf_counter()
    rows = rows_of(batch)
    live = [r for r in rows if not is_rejected(r)]
    if live:
        sim_all = similarities(np.concatenate([r["embeddings"] for r in live]), centers)
        start = 0
        for r in live:
            n = len(r["embeddings"])
            sim = sim_all[start:start + n]
            start += n
            ident, best, margin = top1(sim)
            r["top1_identity"], r["similarity"], r["margin"] = ident.tolist(), best.tolist(), margin.tolist()
            low, high = (assign(sim, t).tolist() for t in thresholds)
            r["identity_at_040"], r["identity_at_050"] = low, high
            r["assign_threshold"] = assign_threshold
            chosen = low if assign_threshold == thresholds[0] else high
            r["n_assigned"] = sum(i != UNASSIGNED for i in chosen)
            r["paired"] = r["n_assigned"] > 0
        for r in live:  # the batch's one matmul, shared out
            r[TIMING_PREFIX + "retrieve"] = (time.perf_counter() - t0) / len(live)
    return batch_of(rows)


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

def caption_query(row: dict, seed: int) -> dict:
    """App. I.1: one of the six prompts, chosen by a seeded hash of the key."""
    row["caption_prompt_index"], _, row["caption_prompt"] = caption_prompt(row["key"], seed)
    return row


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


def finalize(row: dict, fields: dict) -> dict:
    for k in SCRATCH:
        row.pop(k, None)
    row.update(fields)
    return row
