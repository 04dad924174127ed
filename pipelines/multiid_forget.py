"""Identity takedown for MultiID (WithAnyone, seed 002), a dataset tool beside its pipeline:
`forget` removes a person from a built output folder (`subjectforge forget multiid`), and
`read_tombstones` tells a later run (pipelines/multiid.py) what must never come back.

What goes, for each forgotten identity:
- every `multiid_refs` sample of it (its manifest `identity_id`, or a key the bank lists among its
  references);
- every `multiid` group photo in which ANY face reaches the identity's center at cosine >=
  `threshold` (0.4, the paper's low threshold), decided on the photo's stored `embeddings.npy`
  against the center in bank/bank.parquet, not on the assignment: a face that lost the one-to-one
  assignment, or whose top-1 is someone else, still shows the person;
- its rows of bank.parquet and centers.npy (kept aligned), its names.json entry, its place in
  dataset.json's bench_split, the reject rows of every removed key, and the reject rows of the
  identity's other single photos (inputs in a folder that held only its references);
- where a kept photo still names its id (a face whose top-1 it was, under the threshold), the id
  becomes -1 (unassigned) in the manifest row and the json member.

What stays is a tombstone per identity (bank/tombstones.parquet, TOMBSTONE_SCHEMA): no names and
no embeddings, only the id, SHA-256 digests of the center and of the removed face embeddings, and
the removed keys (content hashes already), so a rerun can skip them without knowing who they were.

Crash safety: each shard is rewritten by itself (tar and manifest under temporary names, then the
tar committed, then the manifest: the store's commit rule), so a crash between two shards leaves
each shard old or new. What a shard's rewrite removes is journalled (bank/forget-journal/) before
the commit, and the bank goes last, so rerunning `forget` finishes the job: it removes what the
journal and the centers still point at, and the tombstone gets every key of the first attempt.
The caller holds the lease of both dataset folders (the CLI does, runtime/lease.py): temporary
files and tars without a manifest are removed first, as a pipeline run does.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import posixpath
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from runtime.card import write_card
from runtime.registry import get_output
from schemas.contract import to_jsonable
from schemas.multiid import REFS_SCHEMA, SCHEMA
from schemas.runs import dataset_counts
from schemas.store import DatasetDir, dataset_uri, read_json
from schemas.tars import KEEP, rewrite

GROUPS, REFS = SCHEMA.name, REFS_SCHEMA.name
DEFAULT_THRESHOLD = 0.4  # section 3's retrieval threshold: a face this close may be the person
SIMILARITY_SLACK = 1e-6  # a face exactly at the threshold is not lost to float32 rounding
UNASSIGNED = -1
# manifest / json fields that hold identity ids, one per face (or per reached identity)
ID_LISTS = ("top1_identity", "identity_at_040", "identity_at_050", "identity", "reached")
# of those, what the pipeline decided at its low threshold: a takedown at that threshold or below
# removes a photo they name even if the current center says a hair under it
MATCHED_LISTS = ("identity_at_040", "identity_at_050", "identity", "reached")

TOMBSTONE_SCHEMA = pa.schema([
    pa.field("identity_id", pa.int32(), nullable=False),
    pa.field("center_sha256", pa.string()),  # of the center's float32 little-endian bytes
    pa.field("embedding_sha256", pa.list_(pa.string())),  # of each removed face embedding's float32 bytes
    pa.field("keys", pa.list_(pa.string())),  # every removed sample / reject key, both datasets
    pa.field("n_refs", pa.int32()),  # multiid_refs samples removed
    pa.field("n_photos", pa.int32()),  # multiid group photos removed
    pa.field("takedown_id", pa.string()),
    pa.field("time", pa.timestamp("us", tz="UTC")),
])

# one file per rewritten shard or reject file; deleted once the takedown is complete
JOURNAL_SCHEMA = pa.schema([
    pa.field("dataset", pa.string()),
    pa.field("identity_id", pa.int32()),
    pa.field("key", pa.string()),
    pa.field("kind", pa.string()),  # sample | reject
    pa.field("embedding_sha256", pa.list_(pa.string())),
    pa.field("source_dir_sha256", pa.string()),  # refs: of the photo's folder (its rejects' folder too)
])


class ForgetError(ValueError):
    """A takedown that cannot be done as asked (an unknown id, a photo without a face)."""


@dataclass
class Tombstones:
    """What forgotten identities left behind: a run skips these ids (of single photos) and keys."""

    identity_ids: set[int] = field(default_factory=set)
    keys: set[str] = field(default_factory=set)
    embedding_hashes: set[str] = field(default_factory=set)
    center_hashes: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.identity_ids or self.keys)


def embedding_sha256(vector) -> str:
    """SHA-256 hex of one embedding (or center) as float32 little-endian bytes."""
    return hashlib.sha256(np.ascontiguousarray(np.asarray(vector, "<f4")).tobytes()).hexdigest()


# --- tombstones ------------------------------------------------------------------------------------

def _groups_dir(out: str, filesystem: pafs.FileSystem | None = None) -> DatasetDir:
    """OUT/multiid from OUT, or OUT/multiid itself (the pipeline passes either)."""
    d = DatasetDir.open(out, dataset=GROUPS, filesystem=filesystem)
    info = d.read_info() or {}
    if info.get("dataset") == GROUPS or d.fs.get_file_info(d.sub("bank")).type == pafs.FileType.Directory:
        return d
    return DatasetDir.open(dataset_uri(out, GROUPS), dataset=GROUPS, filesystem=filesystem)


def read_tombstones(out: str, filesystem: pafs.FileSystem | None = None) -> Tombstones:
    """Every forgotten identity of OUT (or OUT/multiid): bank/tombstones.parquet, plus a takedown
    that a crash interrupted (its journal), so a run in between does not bring anyone back."""
    d = _groups_dir(out, filesystem)
    stones = Tombstones()
    table = _read_parquet(d, d.sub("bank", "tombstones.parquet"))
    if table is not None:
        for r in table.to_pylist():
            stones.identity_ids.add(int(r["identity_id"]))
            stones.keys.update(r["keys"] or [])
            stones.embedding_hashes.update(r["embedding_sha256"] or [])
            if r["center_sha256"]:
                stones.center_hashes.add(r["center_sha256"])
    plan, journal = _read_journal(d)
    if plan:
        stones.identity_ids.update(int(i) for i in plan["identity_ids"])
        stones.center_hashes.update(plan.get("center_sha256", {}).values())
    for r in journal:
        stones.keys.add(r["key"])
        stones.embedding_hashes.update(r["embedding_sha256"] or [])
    return stones


# --- the takedown ----------------------------------------------------------------------------------

def forget(out: str, identity_ids=None, photo=None, face_model: str | None = None,
           threshold: float = DEFAULT_THRESHOLD, *, filesystem: pafs.FileSystem | None = None) -> dict:
    """Forget identities of the MultiID output at OUT (the pipeline's --out folder): by id, and /
    or every bank identity whose center a face of `photo` (a path or encoded bytes) reaches at
    `threshold`, its faces found with the insightface pack `face_model`. Returns what was done.

    Idempotent: forgetting an identity again changes nothing; after a crash, calling it again
    (with any ids) finishes the interrupted takedown first."""
    if not 0.0 < threshold <= 1.0:
        raise ForgetError(f"threshold {threshold} is not a cosine in (0, 1]")
    groups = DatasetDir.open(dataset_uri(out, GROUPS), dataset=GROUPS, filesystem=filesystem)
    refs = DatasetDir.open(dataset_uri(out, REFS), dataset=REFS, filesystem=filesystem)
    bank, _ = _read_bank(groups)
    bank_ids = [int(i) for i in bank["identity_id"].to_pylist()] if bank is not None else []
    requested = {int(i) for i in (identity_ids or [])}
    summary: dict = {"by": ["identity"] if requested else [], "threshold": float(threshold)}
    if photo is not None:
        if face_model is None:
            raise ForgetError("forget by photo needs face_model (an insightface pack directory)")
        found, n_faces = identities_in_photo(photo, face_model, bank, threshold)
        requested |= found
        summary["by"].append("photo")
        summary.update(photo_faces=n_faces, photo_identities=sorted(found))
    elif not requested:
        raise ForgetError("nothing to forget: give identity ids or a photo")

    stones = read_tombstones(groups.path, groups.fs)  # with an interrupted takedown's ids
    plan, _ = _read_journal(groups)
    pending = {int(i) for i in plan["identity_ids"]} if plan else set()
    unknown = requested - set(bank_ids) - stones.identity_ids
    if unknown:
        raise ForgetError(f"identity ids neither in {groups.sub('bank', 'bank.parquet')} nor forgotten before: "
                          f"{sorted(unknown)}")
    ids = requested | pending
    if not ids:
        summary.update(identity_ids=[], removed={REFS: 0, GROUPS: 0},
                       note=f"no bank identity reaches a face of the photo at {threshold:g}: nothing removed")
        return summary
    if plan and float(plan["threshold"]) < threshold:  # finish the interrupted takedown as it was asked
        threshold = summary["threshold"] = float(plan["threshold"])

    # what the bank still holds of each identity: its center (photos are matched to it), its references
    active: dict[int, np.ndarray] = {}
    keys: dict[str, set[int]] = {}
    if bank is not None:
        for iid, center, refs_of in zip(bank_ids, bank["center"].to_pylist(), bank["reference_keys"].to_pylist()):
            if iid in ids:
                active[iid] = np.asarray(center, np.float32)
                for k in refs_of or []:
                    keys.setdefault(k, set()).add(iid)
    if plan is None:
        plan = {"takedown_id": uuid.uuid4().hex, "time": time.time(), "by": summary["by"]}
    digests = dict(plan.get("center_sha256", {}), **{str(i): embedding_sha256(c) for i, c in active.items()})
    plan.update(identity_ids=sorted(ids), threshold=threshold, center_sha256=digests)
    _write_plan(groups, plan)
    # keys an earlier takedown (tombstone) or the interrupted attempt (journal) removed go wherever they are
    _, journal = _read_journal(groups)
    for iid, k in [(r["identity_id"], r["key"]) for r in journal] + _tombstone_keys(groups, ids):
        keys.setdefault(k, set()).update({iid} if iid in ids else set())
    for d in (refs, groups):
        d.remove_uncommitted()  # an interrupted attempt's temporary files and emptied shards' tars

    target = _Target(ids=ids, centers=active, keys=keys, threshold=threshold, low_threshold=_low_threshold(groups))
    stats = {"shards_rewritten": {REFS: 0, GROUPS: 0}, "shards_emptied": {REFS: 0, GROUPS: 0}, "scrubbed": 0}
    for d in (refs, groups):
        for name in d.committed_shards():
            _forget_in_shard(d, name, target, stats, groups)
    for d in (refs, groups):
        _forget_rejects(d, target, _read_journal(groups)[1], groups)

    _, journal = _read_journal(groups)
    removed, rejects = _counts(journal, "sample"), _counts(journal, "reject")
    bank_rows = sum(i in ids for i in bank_ids)
    summary.update(takedown_id=plan["takedown_id"], identity_ids=sorted(ids), removed=removed,
                   rejects_removed=rejects, bank_rows_removed=bank_rows, **stats)
    if not (journal or bank_rows or stats["scrubbed"]) and not pending:
        _delete_journal(groups)  # forgotten before, nothing of it left: no new record
        summary["note"] = "already forgotten: nothing left to remove"
        return summary

    record = {"takedown_id": plan["takedown_id"], "time": plan["time"], "identity_ids": sorted(ids), "by": plan["by"],
              "threshold": threshold, "removed": removed, "rejects_removed": rejects, "bank_rows_removed": bank_rows,
              "scrubbed": stats["scrubbed"]}
    _write_tombstones(groups, ids, plan, journal)
    _forget_names(groups, ids)
    for d in (refs, groups):
        _record_takedown(d, record, ids)
    _forget_in_bank(groups, ids)  # last: until here a rerun still has the centers to match photos to
    _delete_journal(groups)
    return summary


def identities_in_photo(photo, face_model: str, bank: pa.Table | None, threshold: float) -> tuple[set[int], int]:
    """Bank identities whose center some face of `photo` reaches at `threshold`, and the number of
    faces found. No face at all is an error: the request cannot be matched to anyone."""
    embeddings = photo_embeddings(photo, face_model)
    if len(embeddings) == 0:
        raise ForgetError(f"no face found in {photo if isinstance(photo, str) else 'the photo'}")
    if bank is None or bank.num_rows == 0:
        return set(), len(embeddings)
    centers = np.asarray(bank["center"].to_pylist(), np.float32)
    reached = (embeddings @ centers.T >= threshold - SIMILARITY_SLACK).any(axis=0)
    return {int(i) for i, r in zip(bank["identity_id"].to_pylist(), reached) if r}, len(embeddings)


def photo_embeddings(photo, face_model: str) -> np.ndarray:
    """Unit ArcFace embeddings [n, 512] of every face in the photo (EXIF orientation applied), with
    the pipeline's own face-analysis worker on the CPU."""
    from PIL import Image, ImageOps

    from workers.face_analysis import FaceAnalysis  # the model side: imported only for a photo

    if not isinstance(photo, (bytes, bytearray)) and not Path(photo).is_file():
        raise ForgetError(f"{photo}: no such photo")
    data = bytes(photo) if isinstance(photo, (bytes, bytearray)) else Path(photo).read_bytes()
    try:
        with Image.open(io.BytesIO(data)) as img:
            rgb = np.asarray(ImageOps.exif_transpose(img).convert("RGB"))
    except OSError as e:  # PIL's UnidentifiedImageError is one
        raise ForgetError(f"{photo if isinstance(photo, str) else 'the photo'} is not an image: {e}") from None
    worker = FaceAnalysis(face_model, device="cpu")
    (faces,) = worker.predict([worker.check({"image": rgb})])
    return np.asarray(faces["embeddings"], np.float32).reshape(-1, worker.embedding_dim)


# --- shards ----------------------------------------------------------------------------------------

@dataclass
class _Target:
    ids: set[int]
    centers: dict[int, np.ndarray]  # the identities still in the bank: photos are matched to these
    keys: dict[str, set[int]]  # removed wherever they are, with the identities they showed
    threshold: float
    low_threshold: float  # what the manifest's identity_at_040 / reached were computed at

    @property
    def decided_lists_count(self) -> bool:
        """The pipeline's own matches at its low threshold also decide (a takedown errs towards removal)."""
        return self.threshold <= self.low_threshold + SIMILARITY_SLACK


def _forget_in_shard(d: DatasetDir, name: str, target: _Target, stats: dict, groups: DatasetDir) -> None:
    """One shard: decide what goes (from the manifest, and for group photos from the tar's
    embeddings unless `reached` rules the shard out), journal it, rewrite the shard."""
    mpath = d.manifest_path(name)
    manifest = pq.read_table(mpath, filesystem=d.fs)
    rows = manifest.to_pylist()
    refs = d.dataset == REFS
    doomed: dict[str, set[int]] = {}  # key -> the forgotten identities it shows
    digests: dict[str, set[str]] = {}  # key -> digests of its faces that reach one
    for r in rows:
        k = r["key"]
        if refs:
            hit = {int(r["identity_id"])} & target.ids if r.get("identity_id") is not None else set()
        else:
            hit = {i for c in MATCHED_LISTS for i in (r.get(c) or []) if i in target.ids} \
                if target.decided_lists_count else set()
        if hit or k in target.keys:
            doomed[k] = hit | target.keys.get(k, set())
    if refs and doomed:  # a reference is one face: its embedding is the identity's
        for k, emb in _read_members(d, name, "embedding.npy", set(doomed)).items():
            digests[k] = {embedding_sha256(emb.reshape(-1))}
    elif not refs and target.centers and _must_scan(rows, target):
        for k, emb in _read_members(d, name, "embeddings.npy", {r["key"] for r in rows}).items():
            ids, faces = _reaching(emb, target)
            if ids or k in doomed:
                doomed[k] = doomed.get(k, set()) | ids
                digests[k] = set(faces)
    scrub = set() if refs else {r["key"] for r in rows if r["key"] not in doomed and _names_any(r, target.ids)}
    if not doomed and not scrub:
        return
    if doomed:
        source = {r["key"]: r.get("source") for r in rows} if refs else {}
        _journal(groups, f"{d.dataset}--{name}", [
            {"dataset": d.dataset, "identity_id": iid, "key": k, "kind": "sample",
             "embedding_sha256": sorted(digests.get(k, ())),
             "source_dir_sha256": _folder_digest(source[k]) if source.get(k) else None}
            for k in sorted(doomed) for iid in (sorted(doomed[k]) or [UNASSIGNED])])
    kept = [_scrub(dict(r), target.ids) if r["key"] in scrub else r for r in rows if r["key"] not in doomed]
    if not kept:  # nothing left: the manifest goes first (the shard stops existing), then the tar
        d.fs.delete_file(mpath)
        if d.fs.get_file_info(d.shard_path(name)).type == pafs.FileType.File:
            d.fs.delete_file(d.shard_path(name))
        stats["shards_emptied"][d.dataset] += 1
        return
    _rewrite_shard(d, name, pa.Table.from_pylist(kept, schema=manifest.schema), set(doomed), scrub, target.ids)
    stats["shards_rewritten"][d.dataset] += 1
    stats["scrubbed"] += len(scrub)


def _must_scan(rows: list[dict], target: _Target) -> bool:
    """Whether a group shard's tar must be read: always, unless every row has `reached` (every
    identity a face reaches at the low threshold) and none reaches a forgotten identity."""
    if target.threshold < target.low_threshold - SIMILARITY_SLACK:
        return True  # reached was computed at a higher threshold than asked: it rules nothing out
    if not rows or "reached" not in rows[0]:
        return True
    return any(r.get("reached") is None or any(i in target.centers for i in r["reached"]) for r in rows)


def _reaching(embeddings: np.ndarray, target: _Target) -> tuple[set[int], list[str]]:
    """Forgotten identities that some face reaches at the threshold, and the digests of those faces."""
    emb = np.asarray(embeddings, np.float32)
    if emb.ndim != 2 or len(emb) == 0:
        return set(), []
    ids = list(target.centers)
    sim = emb @ np.stack([target.centers[i] for i in ids]).T  # [faces, identities] cosines
    hit = sim >= target.threshold - SIMILARITY_SLACK
    faces = [embedding_sha256(emb[f]) for f in np.flatnonzero(hit.any(axis=1))]
    return {ids[j] for j in np.flatnonzero(hit.any(axis=0))}, faces


def _names_any(row: dict, ids: set[int]) -> bool:
    return any(i in ids for c in ID_LISTS for i in (row.get(c) or []))


def _scrub(meta: dict, ids: set[int]) -> dict:
    """A kept photo's fields without the forgotten ids: UNASSIGNED in their place (n_assigned and
    paired follow `identity`), their reference keys gone from the json member."""
    for c in ID_LISTS:
        if meta.get(c) is not None:
            meta[c] = [UNASSIGNED if i in ids else i for i in meta[c]]
    if meta.get("identity") is not None and "n_assigned" in meta:
        meta["n_assigned"] = sum(i != UNASSIGNED for i in meta["identity"])
        if "paired" in meta:
            meta["paired"] = meta["n_assigned"] > 0
    if isinstance(meta.get("reference_keys"), dict):
        meta["reference_keys"] = {k: v for k, v in meta["reference_keys"].items() if int(k) not in ids}
    return meta


def _read_members(d: DatasetDir, name: str, suffix: str, keys: set[str]) -> dict[str, np.ndarray]:
    """The `<key>.<suffix>` npy members of these keys in the shard's tar."""
    out = {}
    with d.fs.open_input_file(d.shard_path(name)) as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for m in tar:
            key, _, rest = m.name.partition(".")
            if m.isfile() and rest == suffix and key in keys:
                out[key] = np.load(io.BytesIO(tar.extractfile(m).read()), allow_pickle=False)
    return out


def _rewrite_shard(d: DatasetDir, name: str, manifest: pa.Table, drop: set[str], scrub: set[str],
                   ids: set[int]) -> None:
    """The shard without `drop`'s members: every kept member's tar record copied byte for byte
    (schemas/tars.rewrite, the writer's layout); the json member of a `scrub` key re-encoded without
    the ids. Then the store's order: tar, then manifest."""
    tar_path, mpath = d.shard_path(name), d.manifest_path(name)
    tar_tmp = d.tmp_path(tar_path)

    def edit(member, read):
        key, _, rest = member.name.partition(".")
        if key in drop:
            return None
        if key in scrub and rest == "json.json":
            return json.dumps(to_jsonable(_scrub(json.loads(read()), ids)), allow_nan=False).encode()
        return KEEP

    with contextlib.ExitStack() as stack:
        if d.local:
            src = stack.enter_context(d.fs.open_input_file(tar_path))
        else:  # an object store's "temporary" name is the final one: the old tar is read before it is replaced
            src = stack.enter_context(tempfile.TemporaryFile())
            with d.fs.open_input_stream(tar_path) as remote:
                shutil.copyfileobj(remote, src, 1 << 20)
            src.seek(0)
        with d.fs.open_output_stream(tar_tmp) as dst:
            rewrite(src, dst, edit)
    manifest_tmp = d.tmp_path(mpath)
    pq.write_table(manifest, manifest_tmp, filesystem=d.fs)
    d.commit(tar_tmp, tar_path)  # tar first: the manifest, renamed last, is the commit
    d.commit(manifest_tmp, mpath)


# --- rejects ---------------------------------------------------------------------------------------

def _forget_rejects(d: DatasetDir, target: _Target, journal: list[dict], groups: DatasetDir) -> None:
    """Reject rows of removed keys, and of the identity's other single photos: for refs, inputs in
    a folder that held references of forgotten identities and of no one else."""
    owner = {k: min(ids) for k, ids in target.keys.items() if ids}
    owner.update({r["key"]: r["identity_id"] for r in journal if r["identity_id"] != UNASSIGNED})
    keys = set(target.keys) | {r["key"] for r in journal}
    folders: dict[str, int] = {}
    if d.dataset == REFS:
        candidates = {r["source_dir_sha256"]: r["identity_id"] for r in journal
                      if r["dataset"] == REFS and r["kind"] == "sample" and r["source_dir_sha256"]}
        kept = d.read_manifests(columns=["source"])
        taken = {_folder_digest(s) for s in kept["source"].to_pylist()} if kept is not None else set()
        folders = {f: i for f, i in candidates.items() if f not in taken}
    for path in d.reject_files():
        table = pq.read_table(path, filesystem=d.fs)
        rows = table.to_pylist()
        gone = []
        for r in rows:
            folder = _folder_digest(r.get("input"))
            if r["key"] in keys:
                gone.append((r, owner.get(r["key"], UNASSIGNED)))
            elif folders and folder in folders:
                gone.append((r, folders[folder]))
        if not gone:
            continue
        entries = [{"dataset": d.dataset, "identity_id": iid, "key": r["key"], "kind": "reject",
                    "embedding_sha256": [], "source_dir_sha256": None} for r, iid in gone]
        _journal(groups, f"{d.dataset}--rejects--{posixpath.basename(path)[: -len('.parquet')]}", entries)
        drop = {id(r) for r, _ in gone}
        left = [r for r in rows if id(r) not in drop]
        if left:
            d.write_parquet_atomic(path, pa.Table.from_pylist(left, schema=table.schema))
        else:
            d.fs.delete_file(path)


def _folder_digest(path) -> str | None:
    """A photo's folder, hashed: a single's folder is its identity's name, which no file keeps."""
    folder = posixpath.dirname(str(path or "").replace("\\", "/"))
    return hashlib.sha256(folder.encode()).hexdigest() if folder else None


# --- bank, names, tombstones, dataset.json ---------------------------------------------------------

def _read_parquet(d: DatasetDir, path: str) -> pa.Table | None:
    if d.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    return pq.read_table(path, filesystem=d.fs)


def _read_bank(groups: DatasetDir) -> tuple[pa.Table | None, np.ndarray | None]:
    bank = _read_parquet(groups, groups.sub("bank", "bank.parquet"))
    centers = None
    path = groups.sub("bank", "centers.npy")
    if groups.fs.get_file_info(path).type == pafs.FileType.File:
        with groups.fs.open_input_stream(path) as f:
            centers = np.load(io.BytesIO(f.read()), allow_pickle=False)
    return bank, centers


def _forget_in_bank(groups: DatasetDir, ids: set[int]) -> None:
    """bank.parquet without the identities, then centers.npy from it: row i stays bank row i. A
    centers.npy that a crash left one step behind is rebuilt from bank.parquet (authoritative)."""
    bank, centers = _read_bank(groups)
    if bank is None:
        return
    before = bank.num_rows
    keep = pc.invert(pc.is_in(bank["identity_id"], value_set=pa.array(sorted(ids), pa.int32())))
    if pc.all(keep).as_py() is False:
        bank = bank.filter(keep)
        groups.write_parquet_atomic(groups.sub("bank", "bank.parquet"), bank)
    if centers is not None and len(centers) == before and before != bank.num_rows:
        centers = centers[np.asarray(keep.to_pylist(), bool)]
    elif centers is not None and len(centers) != bank.num_rows:
        dim = centers.shape[1] if centers.ndim == 2 else 512
        centers = np.asarray(bank["center"].to_pylist(), np.float32).reshape(-1, dim)
    else:
        return
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(centers, np.float32))
    groups.write_bytes_atomic(groups.sub("bank", "centers.npy"), buf.getvalue())


def _forget_names(groups: DatasetDir, ids: set[int]) -> None:
    path = groups.sub("bank", "names.json")
    names = read_json(groups.fs, path)
    if not names:
        return
    left = {k: v for k, v in names.items() if int(k) not in ids}
    if len(left) != len(names):
        groups.write_bytes_atomic(path, json.dumps(left, indent=1).encode())


def _tombstone_keys(groups: DatasetDir, ids: set[int]) -> list[tuple[int, str]]:
    table = _read_parquet(groups, groups.sub("bank", "tombstones.parquet"))
    if table is None:
        return []
    return [(int(r["identity_id"]), k) for r in table.to_pylist() if int(r["identity_id"]) in ids
            for k in r["keys"] or []]


def _write_tombstones(groups: DatasetDir, ids: set[int], plan: dict, journal: list[dict]) -> None:
    """One row per identity, merged with its row from an earlier takedown (or attempt) of it."""
    path = groups.sub("bank", "tombstones.parquet")
    old = _read_parquet(groups, path)
    rows = {int(r["identity_id"]): r for r in (old.to_pylist() if old is not None else [])}
    for iid in sorted(ids):
        mine = [r for r in journal if r["identity_id"] == iid]
        prev = rows.get(iid) or {}
        count = _counts(mine, "sample")
        if prev.get("takedown_id") == plan["takedown_id"]:  # an earlier attempt of this takedown: same journal
            n_refs, n_photos = max(prev["n_refs"] or 0, count[REFS]), max(prev["n_photos"] or 0, count[GROUPS])
        else:
            n_refs, n_photos = (prev.get("n_refs") or 0) + count[REFS], (prev.get("n_photos") or 0) + count[GROUPS]
        rows[iid] = {
            "identity_id": iid,
            "center_sha256": prev.get("center_sha256") or plan["center_sha256"].get(str(iid)),
            "embedding_sha256": sorted(set(prev.get("embedding_sha256") or []) |
                                       {h for r in mine for h in r["embedding_sha256"] or []}),
            "keys": sorted(set(prev.get("keys") or []) | {r["key"] for r in mine}),
            "n_refs": n_refs, "n_photos": n_photos,
            "takedown_id": prev.get("takedown_id") or plan["takedown_id"],
            "time": prev.get("time") or _utc(plan["time"]),
        }
    groups.fs.create_dir(groups.sub("bank"), recursive=True)
    groups.write_parquet_atomic(path, pa.Table.from_pylist([rows[i] for i in sorted(rows)], schema=TOMBSTONE_SCHEMA))


def _counts(journal: list[dict], kind: str) -> dict[str, int]:
    """Distinct keys of this kind removed, per dataset."""
    return {ds: len({r["key"] for r in journal if r["dataset"] == ds and r["kind"] == kind}) for ds in (REFS, GROUPS)}


def _utc(seconds: float):
    import datetime

    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)


def _record_takedown(d: DatasetDir, record: dict, ids: set[int]) -> None:
    """dataset.json: counts of what is on disk now, the takedown (a rerun replaces its own record),
    and for the group photos the bench split without the identities."""
    info = d.read_info()
    if info is None and d.fs.get_file_info(d.path).type != pafs.FileType.Directory:
        return  # no such dataset here (a bank without refs): nothing to record
    info = info or {"dataset": d.dataset}
    info["counts"] = dataset_counts(d)
    takedowns = [t for t in info.get("takedowns") or [] if t.get("takedown_id") != record["takedown_id"]]
    info["takedowns"] = takedowns + [record]
    split = info.get("bench_split")
    if d.dataset == GROUPS and isinstance(split, dict):
        info["bench_split"] = _bench_split_without(d, split, ids)
    d.write_info(info)
    write_card(d, get_output(d.dataset), info)


def _bench_split_without(d: DatasetDir, split: dict, ids: set[int]) -> dict:
    """The held-out identities without the forgotten ones, and the photo counts of what is left
    (forgetting removes photos and ids only, so an overlap can only shrink)."""
    split = dict(split)
    split["held_out"] = [i for i in split.get("held_out") or [] if i not in ids]
    if "bench_identities" in split:
        split["bench_identities"] = len(split["held_out"])
    overlap = split.get("overlap")
    if isinstance(overlap, dict):
        overlap = {k: [i for i in v if i not in ids] for k, v in overlap.items()}
        split["overlap"] = {k: v for k, v in overlap.items() if v}
        split["ok"] = not split["overlap"]
    elif isinstance(overlap, list):
        split["overlap"] = [i for i in overlap if i not in ids]
        split["ok"] = not split["overlap"]
    manifest = d.read_manifests(columns=["split"]) if d.manifest_files() else None
    splits = manifest["split"].to_pylist() if manifest is not None else []
    for name in ("bench", "train"):
        if f"{name}_photos" in split:
            split[f"{name}_photos"] = sum(s == name for s in splits)
    return split


def _low_threshold(groups: DatasetDir) -> float:
    config = (groups.read_info() or {}).get("config") or {}
    return float(config.get("retrieval_threshold_low", DEFAULT_THRESHOLD))


# --- the journal of a takedown in progress ---------------------------------------------------------

def _journal_dir(groups: DatasetDir) -> str:
    return groups.sub("bank", "forget-journal")


def _read_journal(groups: DatasetDir) -> tuple[dict | None, list[dict]]:
    directory = _journal_dir(groups)
    plan = read_json(groups.fs, posixpath.join(directory, "plan.json"))
    entries = []
    infos = groups.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    for i in sorted(infos, key=lambda i: i.path):
        if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith("_"):
            entries += pq.read_table(i.path, filesystem=groups.fs).to_pylist()
    return plan, entries


def _write_plan(groups: DatasetDir, plan: dict) -> None:
    groups.fs.create_dir(_journal_dir(groups), recursive=True)
    groups.write_bytes_atomic(posixpath.join(_journal_dir(groups), "plan.json"), json.dumps(plan, indent=1).encode())


def _journal(groups: DatasetDir, name: str, entries: list[dict]) -> None:
    """What one shard's (or reject file's) rewrite removes, merged with an earlier attempt's, on
    disk before the rewrite commits."""
    path = posixpath.join(_journal_dir(groups), name + ".parquet")
    old = _read_parquet(groups, path)
    unique: dict[tuple, dict] = {}
    for r in (old.to_pylist() if old is not None else []) + entries:
        seen = unique.setdefault((r["dataset"], r["identity_id"], r["key"], r["kind"]), dict(r))
        # a rerun finds a half-committed shard's removed rows without their members: keep what was known
        seen["embedding_sha256"] = sorted(set(seen["embedding_sha256"] or []) | set(r["embedding_sha256"] or []))
        seen["source_dir_sha256"] = seen["source_dir_sha256"] or r["source_dir_sha256"]
    groups.write_parquet_atomic(path, pa.Table.from_pylist(list(unique.values()), schema=JOURNAL_SCHEMA))


def _delete_journal(groups: DatasetDir) -> None:
    directory = _journal_dir(groups)
    if groups.fs.get_file_info(directory).type != pafs.FileType.Directory:
        return
    infos = groups.fs.get_file_info(pafs.FileSelector(directory))
    for i in sorted(infos, key=lambda i: i.base_name == "plan.json"):  # the plan last
        groups.fs.delete_file(i.path)
    groups.fs.delete_dir(directory)
