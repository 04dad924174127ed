"""MultiID: the ArcFace reference bank from single-person photos, group photos matched to it, and
the leakage-free MultiID-Bench split (WithAnyone, seed 002, section 3, appendix C).

    python pipelines/multiid.py --config configs/multiid.tiny.yaml --out ./out
    ray job submit --working-dir . -- python pipelines/multiid.py --config configs/multiid.gpu.yaml --out s3://bucket/mid

Writes OUT/multiid_refs (the reference photos, one face each, with identity ids), OUT/multiid/bank
(bank.parquet, centers.npy: the negative pool the trainer draws from) and OUT/multiid (group
photos: paired ones, with at least one assigned identity, in shards of their own, and unpaired).

Memory stays flat in the number of photos: the two barriers (the bank's DBSCAN, the held-out
identities) hold only light columns (keys, embeddings, identity lists); a photo is decoded for its
faces and again, after the barrier, for its shard (`reload`), never held for the whole dataset.
Identities forgotten with `subjectforge forget` (bank/tombstones.parquet) never come back: their
single photos and the forgotten photos' keys are skipped before any model work.
"""
from __future__ import annotations

import io
import json
import sys
from functools import partial
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import pyarrow as pa

import workers as model_roles  # noqa: F401  (every model role declared: the plans look their roles up)
from configs.multiid import MultiIDConfig
from pipelines.multiid_forget import read_tombstones
from report import cards
from runtime.card import write_card
from runtime.driver import run
from runtime.plan import Plan
from runtime.inputs import IMAGE_COLUMNS, read_images
from runtime.registry import DatasetSpec, Example, Output, Paper, Simulated, profiles_of, register
from schemas.multiid import REFS_SCHEMA, SCHEMA
from schemas.store import DatasetDir, dataset_uri
from stages import multiid as mid
from stages.bank import build_bank, identity_id_of
from stages.bench_split import held_out_identities, leakage_check
from stages.encode import encode_members
from stages.keys import sample_key
from stages.prompts import CAPTION_SYSTEM_PROMPT
from stages.synthetic import random_sample
from trainer.data import multiid_example, multiid_references
from workers.simulated import MAX_IDENTITY, coded_photo, jpeg_bytes


def source(cfg: MultiIDConfig, plan: Plan, out: str | None = None):
    """The single-person photos (the bank plan) or the group photos from wherever they are
    (runtime/inputs.py), keyed by what identifies each (and its identity) in tasks, without what a
    takedown forgot (given `out`)."""
    bank = plan.schema is REFS_SCHEMA
    ds = read_images(cfg.singles if bank else cfg.groups, with_identity=bank)
    gone = read_tombstones(dataset_uri(out, SCHEMA.name)) if out is not None else None
    if gone is not None and (gone.keys or gone.identity_ids):
        print(f"{plan.name}: inputs of {len(gone.identity_ids)} forgotten identities are skipped (bank/tombstones.parquet)")
    return ds.map_batches(partial(keyed, fields=cfg.output_fields(), bank=bank,
                                  gone=(gone.keys, gone.identity_ids) if gone is not None else (set(), set())),
                          batch_format="pyarrow")


def keyed(batch: pa.Table, fields: dict, bank: bool, gone: tuple[set, set]) -> pa.Table:
    """Each photo's key: sample_key of what identifies it (`input`: its path as listed, or its shard
    member) and its identity; rows of forgotten keys or identities dropped."""
    inputs = batch["input"].to_pylist()
    identities = batch["identity"].to_pylist() if bank else [None] * len(inputs)
    keys = [sample_key({"path": i, "identity": d}, fields) for i, d in zip(inputs, identities)]
    keep = [k not in gone[0] and not (d is not None and identity_id_of(str(d)) in gone[1])
            for k, d in zip(keys, identities)]
    return batch.append_column("key", pa.array(keys, pa.string())).filter(pa.array(keep))


def load_args(cfg: MultiIDConfig) -> dict:
    return dict(max_side=cfg.max_side, max_pixels=cfg.max_image_pixels, min_side=cfg.min_input_side,
                max_bytes=cfg.max_input_bytes)


def faces(steps: Plan, cfg: MultiIDConfig) -> None:
    steps.cpu("load", partial(mid.load, **load_args(cfg)))
    steps.model("faces", "face_analysis", image="image")


# --- phase 1: singles -> reference bank --------------------------------------------------------------

def bank_plan(cfg: MultiIDConfig, workers: dict | None = None) -> Plan:
    """Faces of every single-person photo -> per-identity DBSCAN (on the driver: the embeddings of
    an identity together) -> each photo's verdict -> the multiid_refs shards."""
    steps = Plan("multiid bank", cfg, REFS_SCHEMA, source=IMAGE_COLUMNS + ("identity",), workers=workers)
    faces(steps, cfg)
    steps.cpu("one_face", partial(mid.one_face, min_det_score=cfg.min_det_score, min_face_px=cfg.min_face_px))
    steps.gather("cluster", partial(cluster, cfg=cfg), reads=("key", "identity", "embedding"),
                 provides=("bank", "verdicts", "members", "centers", "identity_ids", "references"))
    steps.cpu("bank", mid.bank_verdict, needs=("verdicts", "members"))
    steps.resume()  # after the bank: the bank is built from every photo, committed or not
    steps.cpu("reload", partial(mid.reload, **load_args(cfg)))
    fields = {"model_face_analysis": cfg.face_analysis.model}
    steps.cpu("finalize", partial(mid.finalize, fields=fields), writes=tuple(fields))
    steps.cpu("encode", partial(encode_members, schema=REFS_SCHEMA))
    steps.after("bank_files", partial(write_bank, cfg), needs=("bank",))
    return steps


def cluster(rows: list[dict], cfg: MultiIDConfig) -> dict:
    """The bank from every live single's embedding (512 floats a photo; 3,000 identities x 400
    photos is 2.4 GB on the driver, see benchmarks/multiid.py); verdicts and members per key, and
    what the group photos' plan matches against (centers, their ids, each identity's references)."""
    bank = build_bank([r["key"] for r in rows], [str(r["identity"]) for r in rows],
                      np.stack([r["embedding"] for r in rows]) if rows else np.zeros((0, 512), np.float32),
                      eps=cfg.dbscan_eps, min_samples=cfg.dbscan_min_samples, min_references=cfg.min_references)
    return {"bank": bank, "verdicts": {k: (reason, detail) for k, reason, detail in bank.rejects},
            "members": {k: (i.identity_id, s) for i in bank.identities
                        for k, s in zip(i.reference_keys, i.center_similarity)},
            "centers": bank.centers.astype(np.float32), "identity_ids": bank.ids,
            "references": {i.identity_id: i.reference_keys for i in bank.identities}}


def write_bank(cfg: MultiIDConfig, out: str, bank) -> None:
    """bank/bank.parquet (one row per identity) and bank/centers.npy (float32 [n, 512], row i =
    identity i): the negative pool of the ID contrastive loss (app. F.1) draws from it."""
    d = DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name)
    d.fs.create_dir(d.sub("bank"), recursive=True)
    # row i of centers.npy is row i of bank.parquet: ids are hashes, not positions
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

def group_plan(cfg: MultiIDConfig, workers: dict | None = None) -> Plan:
    """Group photos -> faces (every face counts as a person) -> one matmul against the bank's
    centers per batch -> appendix C's filters (resolution, collage, OCR text, aesthetic) ->
    caption -> the held-out identities (chosen once, from the light columns) -> the split ->
    decoded again -> shards (paired photos in shards of their own)."""
    steps = Plan("multiid", cfg, SCHEMA, source=IMAGE_COLUMNS, shard_by="paired", depends=("multiid bank",),
                 inputs=("centers", "identity_ids", "references", "previous_held_out"), workers=workers)
    steps.before("previous_split", previous_split, provides=("previous_held_out",))
    steps.resume()
    faces(steps, cfg)
    steps.cpu("group_faces", partial(mid.group_faces, min_faces=cfg.min_faces, max_faces=cfg.max_faces,
                                     min_det_score=cfg.min_det_score, min_face_px=cfg.min_face_px))
    steps.batch("retrieve", partial(mid.retrieve, thresholds=(cfg.retrieval_threshold_low, cfg.retrieval_threshold_high),
                                    assign_threshold=cfg.assign_threshold), needs=("centers", "identity_ids"))
    # (CPU_BATCH_SIZE rows a product: the rows still carry their decoded photo, so a batch of 256
    # held 600 MB in one task; 8 photos' faces against 3,000 centers is still one BLAS call)
    steps.cpu("filters", partial(mid.filters, min_side=cfg.min_side_px, collage=cfg.collage_filter))
    steps.model("text", "text_detection", image="image")
    steps.model("aesthetic", "aesthetic", image="image")
    steps.cpu("appearance", partial(mid.appearance, max_text_fraction=cfg.max_text_fraction,
                                    min_aesthetic=cfg.min_aesthetic))
    if cfg.captions == "template":
        steps.cpu("caption", mid.template_caption)
    else:
        steps.cpu("caption_query", partial(mid.caption_query, seed=cfg.seed))
        steps.model("caption_vlm", "vlm", images=["image"], prompt="caption_prompt", output="caption_raw",
                    system=CAPTION_SYSTEM_PROMPT, max_new_tokens=cfg.caption_max_new_tokens)
        steps.cpu("caption", partial(mid.caption, max_words=cfg.caption_max_words, repair=cfg.caption_repair))
    steps.gather("holdout", partial(holdout, cfg=cfg), reads=("identity", "paired"), needs=("previous_held_out",),
                 provides=("held",))
    steps.cpu("split", mid.bench_split, needs=("held", "references"))
    steps.cpu("reload", partial(mid.reload, **load_args(cfg)))
    fields = {"model_face_analysis": cfg.face_analysis.model, "model_vlm": cfg.vlm.model, "caption_source": cfg.captions,
              "model_text_detection": cfg.text_detection.model, "model_aesthetic": cfg.aesthetic.model}
    steps.cpu("finalize", partial(mid.finalize, fields=fields), writes=tuple(fields))
    steps.cpu("encode", partial(encode_members, schema=SCHEMA))
    steps.after("split_record", record_split, needs=("held",))
    return steps


def previous_split(out: str) -> dict:
    """The held-out identities of an earlier run (dataset.json), which a resumed run keeps."""
    info = DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name).read_info() or {}
    split = info.get("bench_split")
    return {"previous_held_out": split["held_out"] if split else None}


def holdout(rows: list[dict], cfg: MultiIDConfig, previous_held_out: list | None) -> dict:
    """The held-out identities: fixed at the first run (a resumed run must not move an identity
    between train and bench), else the least frequent among the paired photos' identities."""
    if previous_held_out is not None:
        return {"held": set(previous_held_out)}
    photo_ids = [list(r["identity"]) for r in rows if r.get("paired")]
    return {"held": held_out_identities(photo_ids, count=cfg.holdout_count, fraction=cfg.holdout_fraction)}


def plans(cfg: MultiIDConfig, workers: dict | None = None) -> list[Plan]:
    return [bank_plan(cfg, workers), group_plan(cfg, workers)]


def record_split(out: str, held: set[int]) -> None:
    """dataset.json gets the held-out identities and the leakage check over every committed
    photo, at both thresholds and over every identity a face reaches."""
    d = DatasetDir.open(dataset_uri(out, SCHEMA.name), dataset=SCHEMA.name)
    columns = ["split", "identity_at_040", "identity_at_050", "reached"]
    manifest = d.read_manifests(columns=columns)
    lists = {c: [list(x or []) for x in manifest.column(c).to_pylist()] if manifest is not None else []
             for c in columns[1:]}
    splits = manifest.column("split").to_pylist() if manifest is not None else []
    info = d.read_info() or {}
    info["bench_split"] = dict(leakage_check(splits, lists, held), held_out=sorted(held))
    d.write_info(info)
    write_card(d, SPEC.output(SCHEMA.name), info)
    if not info["bench_split"]["ok"]:
        raise RuntimeError(f"identity leak between train and bench: {info['bench_split']['overlap']}")


def simulated_inputs(root, n: int, side: int = 1024, seed: int = 0) -> list[str]:
    """n group photos (1-4 faces of known identities each) in `groups/` and, in `singles/`, 3 photos
    of each of max(2, min(255, n // 2)) identities (a folder per identity), side x 3/4 side coded
    photos (workers/simulated.coded_photo), JPEG quality 90."""
    root = Path(root) / "multiid"
    simulated_photos(root, n, identities=max(2, min(MAX_IDENTITY, n // 2)), per_identity=3, side=side,
                     rng=np.random.default_rng(seed))
    return [f"singles={root / 'singles'}", f"groups={root / 'groups'}"]


def simulated_photos(root: Path, n_groups: int, identities: int, per_identity: int, side: int,
                     rng: np.random.Generator, strangers: bool = False) -> None:
    """root/singles/personNNN/J.jpg (identity NNN + 1 coded) and root/groups/gNNNNN.jpg (1-4
    distinct identities; with `strangers`, code 0, a face no bank center matches, among them)."""
    height = side * 3 // 4
    for i in range(identities):
        folder = root / "singles" / f"person{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            (folder / f"{j}.jpg").write_bytes(jpeg_bytes(coded_photo([i + 1], height, side, rng), quality=90))
    (root / "groups").mkdir(parents=True, exist_ok=True)
    codes = np.arange(0 if strangers else 1, identities + 1)
    for g in range(n_groups):
        k = int(rng.integers(1, min(4, len(codes)) + 1))
        faces = [int(c) for c in rng.choice(codes, size=k, replace=False)]
        (root / "groups" / f"g{g:05d}.jpg").write_bytes(jpeg_bytes(coded_photo(faces, height, side, rng), quality=90))


SPEC = register(DatasetSpec(
    name="multiid", description=__doc__.splitlines()[0], paper=Paper("WithAnyone (MultiID-2M)", "002"),
    config=MultiIDConfig, profiles=profiles_of(__file__, "multiid"), plans=plans, source=source,
    outputs=(
        Output(schema=REFS_SCHEMA, title="MultiID reference bank (WithAnyone)",
               sections="section 3: the ArcFace reference bank", card=cards.generic,
               charts=("center_similarity", "det_score"), examples={}, synthetic=random_sample,
               report_context=None, review=None),
        Output(schema=SCHEMA, title="MultiID group photos and identities (WithAnyone)",
               sections="section 3 and appendix C; bench split: section 4, appendix D", card=cards.multiid,
               charts=("similarity", "margin", "n_faces", "n_assigned", "aesthetic"),
               examples={"sft": Example(multiid_example, context=multiid_references),
                         "id": Example(multiid_example, context=multiid_references)},
               synthetic=random_sample, report_context=cards.multiid_references, review=None)),
    simulated=Simulated(inputs=simulated_inputs, n=300, time_scale=2.0)))


def main(argv=None, workers: dict | None = None) -> dict:
    """Both plans, checked before Ray starts: the bank and the refs shards, then the group photos
    (paired photos in shards of their own) and the split's leakage check."""
    return run(SPEC, argv, workers)


if __name__ == "__main__":
    main()
