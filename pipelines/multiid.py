"""MultiID: the ArcFace reference bank from single-person photos, group photos matched to it, and
the leakage-free MultiID-Bench split (WithAnyone, seed 002, section 3, appendix C).

    python pipelines/multiid.py --config configs/multiid.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/multiid.py --config configs/multiid.gpu.yaml --out s3://bucket/mid

Writes OUT/multiid_refs (the reference photos, one face each, with identity ids), OUT/multiid/bank
(bank.parquet, centers.npy: the negative pool the trainer draws from) and OUT/multiid (group
photos: paired ones, with at least one assigned identity, in their own shards; then unpaired).
"""
from __future__ import annotations

import io
import json
import sys
import uuid
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa
import ray

from schemas.batch import batch_of, cpu_stage, dataset_of, is_rejected, reject, rows_of
from schemas.job import dataset_uri, drop_committed, parse_args, start_ray, write
from schemas.multiid import REFS_SCHEMA, SCHEMA
from schemas.pipeline_configs import MultiIDConfig
from schemas.store import DatasetDir
from stages import multiid as mid
from stages.bank import build_bank
from stages.bench_split import held_out_identities, leakage_check, split_of
from stages.encode import encode_members
from stages.keys import sample_key
from stages.prompts import CAPTION_SYSTEM_PROMPT
from workers import tiny
from workers.base import model_stage
from workers.face_analysis import FaceAnalysis
from workers.vlm import VLM

def cpu(ds, name, fn, stages):
    stages.append(name)
    return cpu_stage(ds, name, fn)


def faces(ds, cfg, stages, workers):
    stages.append("faces")
    cls = (workers or {}).get("face_analysis", FaceAnalysis)
    return model_stage(ds, cls, cfg.face_analysis, "faces", image_column="image")


def source(cfg, rows):
    for r in rows:
        r["key"] = sample_key({"path": r.get("path"), "identity": r.get("identity")}, cfg.output_fields())
        r["input"] = r.get("path")
    return dataset_of(rows)


# --- phase 1: singles -> reference bank --------------------------------------------------------------

def bank_phase(cfg: MultiIDConfig, out: str, workers: dict | None = None) -> tuple[np.ndarray, dict]:
    """Faces of every single-person photo -> per-identity DBSCAN -> bank/ and the multiid_refs
    shards. Returns the centers and {identity_id: reference keys}."""
    stages: list[str] = []
    ds = source(cfg, mid.list_photos(cfg.singles, with_identity=True))
    ds = cpu(ds, "load", partial(mid.load, max_side=cfg.max_side, max_pixels=cfg.max_image_pixels,
                                 min_side=cfg.min_input_side), stages)
    ds = faces(ds, cfg, stages, workers)
    ds = cpu(ds, "one_face", partial(mid.one_face, min_det_score=cfg.min_det_score, min_face_px=cfg.min_face_px),
             stages).materialize()
    # the bank needs every embedding of an identity: gathered per identity, clustered on the driver
    # (512 floats per photo; 3,000 identities x 400 photos is 2.4 GB, see benchmarks/multiid.py)
    live = [r for b in ds.iter_batches(batch_format="pyarrow", batch_size=4096) for r in rows_of(b)
            if not is_rejected(r)]
    bank = build_bank([r["key"] for r in live], [str(r["identity"]) for r in live],
                      np.stack([r["embedding"] for r in live]) if live else np.zeros((0, 512), np.float32),
                      eps=cfg.dbscan_eps, min_samples=cfg.dbscan_min_samples, min_references=cfg.min_references)
    write_bank(cfg, out, bank)
    verdicts = {k: (reason, detail) for k, reason, detail in bank.rejects}
    members = {k: (i.identity_id, s) for i in bank.identities for k, s in zip(i.reference_keys, i.center_similarity)}

    def apply_bank(batch):
        rows = rows_of(batch)
        for j, r in enumerate(rows):
            if is_rejected(r):
                continue
            if r["key"] in verdicts:
                rows[j] = reject(r, "bank", *verdicts[r["key"]])
            else:
                r["identity_id"], r["center_similarity"] = members[r["key"]]
        return batch_of(rows)

    stages.append("bank")
    refs = ds.map_batches(apply_bank, batch_format="pyarrow")
    refs, _ = drop_committed(refs, out, REFS_SCHEMA.name)
    fields = {"model_face_analysis": cfg.face_analysis.model}
    refs = cpu(refs, "finalize", partial(mid.finalize, fields=fields), stages)
    refs = cpu(refs, "encode", partial(encode_members, schema=REFS_SCHEMA), stages)
    write(refs, out, REFS_SCHEMA, cfg, stages)
    return bank.centers, {i.identity_id: i.reference_keys for i in bank.identities}


def write_bank(cfg: MultiIDConfig, out: str, bank) -> None:
    """bank/bank.parquet (one row per identity) and bank/centers.npy (float32 [n, 512], row i =
    identity i): the negative pool of the ID contrastive loss (app. F.1) draws from it."""
    d = DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name)
    d.fs.create_dir(d.sub("bank"), recursive=True)
    table = pa.table({
        "identity_id": pa.array([i.identity_id for i in bank.identities], pa.int32()),
        "n_refs": pa.array([len(i.reference_keys) for i in bank.identities], pa.int32()),
        "center": pa.array([i.center.tolist() for i in bank.identities], pa.list_(pa.float32(), 512)),
        "reference_keys": pa.array([i.reference_keys for i in bank.identities], pa.list_(pa.string())),
        "n_photos": pa.array([i.n_photos for i in bank.identities], pa.int32()),
        "n_clusters": pa.array([i.n_clusters for i in bank.identities], pa.int32()),
        "center_similarity_min": pa.array([min(i.center_similarity) for i in bank.identities], pa.float32()),
        "center_similarity_mean": pa.array([float(np.mean(i.center_similarity)) for i in bank.identities], pa.float32()),
    })
    d.write_parquet_atomic(d.sub("bank", "bank.parquet"), table)
    buf = io.BytesIO()
    np.save(buf, bank.centers.astype(np.float32))
    d.write_bytes_atomic(d.sub("bank", "centers.npy"), buf.getvalue())
    if cfg.write_names:
        names = {i.identity_id: i.name for i in bank.identities}
        d.write_bytes_atomic(d.sub("bank", "names.json"), json.dumps(names, indent=1).encode())


# --- phase 2: group photos ------------------------------------------------------------------------

def group_phase(cfg: MultiIDConfig, out: str, centers: np.ndarray, references: dict, workers=None) -> dict:
    vlm = (workers or {}).get("vlm", VLM)
    stages: list[str] = []
    ds = source(cfg, mid.list_photos(cfg.groups, with_identity=False))
    ds, done = drop_committed(ds, out, SCHEMA.name)
    ds = cpu(ds, "load", partial(mid.load, max_side=cfg.max_side, max_pixels=cfg.max_image_pixels,
                                 min_side=cfg.min_input_side), stages)
    ds = faces(ds, cfg, stages, workers)
    ds = cpu(ds, "group_faces", partial(mid.group_faces, min_faces=cfg.min_faces, max_faces=cfg.max_faces,
                                        min_det_score=cfg.min_det_score, min_face_px=cfg.min_face_px), stages)
    stages.append("retrieve")
    thresholds = (cfg.retrieval_threshold_low, cfg.retrieval_threshold_high)
    ds = ds.map_batches(partial(mid.retrieve, centers_ref=ray.put(centers.astype(np.float32)), thresholds=thresholds,
                                assign_threshold=cfg.assign_threshold), batch_size=256, batch_format="pyarrow")
    ds = cpu(ds, "filters", partial(mid.filters, min_side=cfg.min_side_px, collage=cfg.collage_filter), stages)
    ds = cpu(ds, "caption_query", partial(mid.caption_query, seed=cfg.seed), stages)
    stages.append("caption_vlm")
    ds = model_stage(ds, vlm, cfg.vlm, "caption_vlm", images=["image"], prompt="caption_prompt", output="caption_raw",
                     system=CAPTION_SYSTEM_PROMPT, max_new_tokens=cfg.caption_max_new_tokens)
    ds = cpu(ds, "caption", partial(mid.caption, max_words=cfg.caption_max_words, repair=cfg.caption_repair), stages)
    ds = ds.materialize()  # the split needs every photo's identities

    chosen = "identity_at_040" if cfg.assign_threshold == cfg.retrieval_threshold_low else "identity_at_050"
    photo_ids = [list(r[chosen]) for b in ds.iter_batches(batch_format="pyarrow") for r in rows_of(b)
                 if not is_rejected(r) and r.get("paired")]
    # fixed at the first run: a resumed run must not move an identity between train and bench
    previous = (DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name).read_info() or {}).get("bench_split")
    held = set(previous["held_out"]) if previous else held_out_identities(
        photo_ids, count=cfg.holdout_count, fraction=cfg.holdout_fraction)

    def finish(row):
        ids = list(row[chosen])
        row["split"] = split_of(ids, held)
        # a JSON string: Ray would turn a dict into a struct whose fields are every row's identities
        row["json"] = json.dumps({"reference_keys": {str(i): references.get(i, []) for i in ids if i >= 0}})
        return mid.finalize(row, {"model_face_analysis": cfg.face_analysis.model, "model_vlm": cfg.vlm.model})

    ds = cpu(ds, "split", finish, stages)
    ds = cpu(ds, "encode", partial(encode_members, schema=SCHEMA), stages)
    # paired photos in shards of their own, then unpaired ones and every reject: two passes of one
    # run, so dataset.json and the printed summary have one stage table that counts every photo
    def paired_sample(r) -> bool:
        return r.get("paired") is True and not r.get("reject_reason")

    run_id = uuid.uuid4().hex
    write(ds.filter(paired_sample), out, SCHEMA, cfg, stages, run_id=run_id, summary=False)
    info = write(ds.filter(lambda r: not paired_sample(r)), out, SCHEMA, cfg, stages, run_id=run_id)
    record_split(out, held, photo_ids, ds, chosen)
    return info


def record_split(out: str, held: set[int], photo_ids, ds, chosen: str) -> None:
    """dataset.json gets the held-out identities and the train / bench leakage check."""
    d = DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name)
    manifest = d.read_manifests(columns=["split", chosen])
    splits = manifest.column("split").to_pylist() if manifest is not None else []
    ids = [list(x or []) for x in manifest.column(chosen).to_pylist()] if manifest is not None else []
    info = d.read_info() or {}
    info["bench_split"] = dict(leakage_check(splits, ids, held), held_out=sorted(held))
    d.write_bytes_atomic(d.sub("dataset.json"), json.dumps(info, indent=2).encode())
    if not info["bench_split"]["ok"]:
        raise RuntimeError(f"identity leak between train and bench: {info['bench_split']['overlap']}")


def main(argv=None, workers: dict | None = None) -> dict:
    cfg, out = parse_args(__doc__.splitlines()[0], MultiIDConfig, argv)
    tiny.ensure_for(cfg)
    start_ray(cfg)
    centers, references = bank_phase(cfg, out, workers)
    return group_phase(cfg, out, centers, references, workers)


if __name__ == "__main__":
    main()
