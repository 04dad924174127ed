"""Identity takedown (pipelines/multiid_forget.py) on a MultiID output written by hand (no pipeline, no Ray):
the identity's references, every group photo any face of which reaches its center, its bank row
and rejects go; everything else stays byte for byte; a crash between shards is finished by a rerun."""
import hashlib
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines import multiid_forget as fg
from pipelines.multiid_forget import ForgetError, forget, read_tombstones
from schemas.contract import REJECT_SCHEMA, encode_member
from schemas.multiid import REFS_SCHEMA, SCHEMA
from schemas.runs import dataset_counts
from schemas.store import DatasetDir
from schemas.validation import validate
from tests.conftest import assets_or_skip

DIM = 512
ID_LISTS = ("top1_identity", "identity_at_040", "identity_at_050", "identity", "reached")
NAMES = {1001: "alice_liddell", 2002: "bob_marley", 3003: "carol_king"}
A, B, C = 1001, 2002, 3003
TINY_JPEG = encode_member(SCHEMA.member_for("image"), np.full((16, 16, 3), 128, np.uint8))


def key_of(*parts) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:32]


# --- a MultiID output, written the way the shard writer lays it out ---------------------------------

def assign(sim: np.ndarray, threshold: float) -> list[int]:
    """Column per face at `threshold`, each column at most once (greedy on the best pairs)."""
    out = [-1] * sim.shape[0]
    taken = set()
    for f, c in sorted(np.ndindex(*sim.shape), key=lambda fc: -sim[fc]):
        if sim[f, c] >= threshold and out[f] == -1 and c not in taken:
            out[f], taken = c, taken | {c}
    return out


def group_row(key: str, source: str, emb: np.ndarray, ids: list[int], centers: np.ndarray, held: set[int],
              with_reached: bool) -> dict:
    sim = emb @ centers.T
    order = np.argsort(-sim, axis=1)
    best = sim[np.arange(len(emb)), order[:, 0]]
    second = sim[np.arange(len(emb)), order[:, 1]]
    low, high = ([ids[c] if c >= 0 else -1 for c in assign(sim, t)] for t in (0.4, 0.5))
    reached = sorted(ids[c] for c in np.flatnonzero((sim >= 0.4).any(axis=0)))
    n = len(emb)
    row = {
        "key": key, "source": source, "width": 32, "height": 32, "n_faces": n,
        "boxes": [[0.0, 0.0, 8.0, 8.0]] * n, "keypoints": [[1.0] * 10] * n, "det_scores": [0.9] * n,
        "top1_identity": [ids[c] for c in order[:, 0]], "similarity": best.tolist(), "margin": (best - second).tolist(),
        "identity_at_040": low, "identity_at_050": high, "assign_threshold": 0.4, "identity": low,
        "n_assigned": sum(i >= 0 for i in low), "paired": any(i >= 0 for i in low), "min_side": 32,
        "aesthetic": 5.0, "collage": False, "text": False, "caption": "This image shows people.",
        "caption_prompt_index": 0, "caption_repaired": False,
        "split": "bench" if set(reached) & held else "train", "model_face_analysis": "pack", "model_vlm": "vlm",
    }
    if with_reached:
        row["reached"] = reached
    return row


def manifest_schema(schema, with_reached: bool) -> pa.Schema:
    s = schema.manifest_schema
    if schema is SCHEMA and with_reached and "reached" not in s.names:
        s = s.append(pa.field("reached", pa.list_(pa.int32())))
    if schema is SCHEMA and not with_reached and "reached" in s.names:
        s = s.remove(s.get_field_index("reached"))
    return s


def write_shard(d: DatasetDir, schema, index: int, samples: list[tuple[dict, dict]], with_reached: bool) -> None:
    """samples: (manifest row, {member file name: bytes}), through webdataset's TarWriter as the
    shard writer (schemas/writer.py) uses it."""
    import webdataset as wds

    name = f"{schema.name}-{index:06d}"
    rows = []
    with open(d.shard_path(name), "wb") as stream:
        tar = wds.TarWriter(stream, encoder=False, mtime=0)
        for row, members in samples:
            tar.write({"__key__": row["key"], **members})
            rows.append(dict(row, shard=name))
        tar.close()
    s = manifest_schema(schema, with_reached)
    pq.write_table(pa.Table.from_pylist([{f.name: r.get(f.name) for f in s} for r in rows], schema=s),
                   d.manifest_path(name))


def sample(schema, row: dict, emb: np.ndarray, extra: dict | None = None) -> tuple[dict, dict]:
    npy = "embedding" if schema is REFS_SCHEMA else "embeddings"
    meta = dict(row, **(extra or {}))
    return row, {"image.jpg": TINY_JPEG, f"{npy}.npy": encode_member(schema.member_for(npy), emb),
                 "json.json": encode_member(schema.member_for("json"), meta)}


def build_output(out: Path, identities: dict, refs: dict, photos: list[list[tuple[str, np.ndarray]]],
                 held: set[int], with_reached: bool = True) -> dict:
    """identities: id -> (name, center); refs: id -> [(embedding, source)] (a shard per 4 refs,
    identities interleaved); photos: shards of (name, face embeddings). Returns what was written."""
    groups = DatasetDir.open(str(out / "multiid"), dataset="multiid")
    refs_dir = DatasetDir.open(str(out / "multiid_refs"), dataset="multiid_refs")
    for d in (groups, refs_dir):
        d.makedirs()
    ids = sorted(identities)
    centers = np.stack([identities[i][1] for i in ids]).astype(np.float32)
    ref_rows, ref_keys = [], {i: [] for i in ids}
    for i in ids:
        for j, (emb, src) in enumerate(refs[i]):
            k = key_of("ref", i, j)
            ref_keys[i].append(k)
            ref_rows.append(({"key": k, "identity_id": i, "source": src, "box": [0.0, 0.0, 8.0, 8.0], "det_score": 0.9,
                              "center_similarity": float(emb @ identities[i][1]), "model_face_analysis": "pack"}, emb))
    order = sorted(range(len(ref_rows)), key=lambda n: (n % 4, n))  # every shard holds several identities
    per = max(1, -(-len(ref_rows) // 3))
    for s in range(0, len(order), per):
        write_shard(refs_dir, REFS_SCHEMA, s // per, [sample(REFS_SCHEMA, *ref_rows[n]) for n in order[s:s + per]],
                    with_reached)
    photo_keys = {}
    for s, shard in enumerate(photos):
        items = []
        for name, emb in shard:
            photo_keys[name] = k = key_of("photo", name)
            row = group_row(k, f"/photos/groups/{name}.jpg", emb, ids, centers, held, with_reached)
            refs_of = {str(i): ref_keys[i] for i in row["identity"] if i >= 0}
            items.append(sample(SCHEMA, row, emb, {"reference_keys": refs_of}))
        write_shard(groups, SCHEMA, s, items, with_reached)
    # rejects: a retryable one a later run superseded, an outlier single of each of two identities
    first, second = ids[0], ids[1]
    ref_rejects = [
        {"key": ref_keys[first][0], "stage": "faces", "reason": "model_error", "detail": "CUDA out of memory",
         "input": refs[first][0][1], "retryable": True},
        {"key": key_of("outlier", first), "stage": "bank", "reason": "outlier",
         "detail": f"{identities[first][0]}: outside the largest of 2 clusters",
         "input": str(Path(refs[first][0][1]).parent / "odd.jpg"), "retryable": False},
        {"key": key_of("outlier", second), "stage": "bank", "reason": "outlier",
         "detail": f"{identities[second][0]}: outside the largest of 2 clusters",
         "input": str(Path(refs[second][0][1]).parent / "odd.jpg"), "retryable": False},
    ]
    pq.write_table(pa.Table.from_pylist(ref_rejects, schema=REJECT_SCHEMA),
                   refs_dir.sub("rejects", "r-task00000.parquet"))
    first_photo = photos[0][0][0]
    group_rejects = [
        {"key": photo_keys[first_photo], "stage": "caption_vlm", "reason": "model_error", "detail": "timeout",
         "input": f"/photos/groups/{first_photo}.jpg", "retryable": True},
        {"key": key_of("lowres"), "stage": "filters", "reason": "low_resolution", "detail": "short side 100 < 256",
         "input": "/photos/groups/lowres.jpg", "retryable": False},
    ]
    pq.write_table(pa.Table.from_pylist(group_rejects, schema=REJECT_SCHEMA),
                   groups.sub("rejects", "g-task00000.parquet"))
    # the bank, as pipelines/multiid.py write_bank lays it out
    groups.fs.create_dir(groups.sub("bank"))
    pq.write_table(pa.table({
        "identity_id": pa.array(ids, pa.int32()),
        "n_refs": pa.array([len(ref_keys[i]) for i in ids], pa.int32()),
        "center": pa.array([identities[i][1].tolist() for i in ids], pa.list_(pa.float32(), DIM)),
        "reference_keys": pa.array([ref_keys[i] for i in ids], pa.list_(pa.string())),
        "n_photos": pa.array([len(ref_keys[i]) for i in ids], pa.int32()),
    }), groups.sub("bank", "bank.parquet"))
    np.save(groups.sub("bank", "centers.npy"), centers)
    Path(groups.sub("bank", "names.json")).write_text(json.dumps({str(i): identities[i][0] for i in ids}, indent=1))
    manifest = groups.read_manifests(columns=["split"])["split"].to_pylist()
    for d, schema in ((groups, SCHEMA), (refs_dir, REFS_SCHEMA)):
        info = {"dataset": schema.name, "schema_version": schema.version,
                "config": {"retrieval_threshold_low": 0.4, "singles": "/photos/singles", "groups": "/photos/groups"},
                "counts": dataset_counts(d), "runs": []}
        if schema is SCHEMA:
            info["bench_split"] = {"bench_identities": len(held), "bench_photos": manifest.count("bench"),
                                   "train_photos": manifest.count("train"), "overlap": {}, "ok": True,
                                   "held_out": sorted(held)}
        Path(d.sub("dataset.json")).write_text(json.dumps(info, indent=2))
    assert_valid(out, with_reached)
    return {"ref_keys": ref_keys, "photo_keys": photo_keys, "centers": dict(zip(ids, centers))}


# --- the synthetic output: three identities on orthonormal centers, exact cosines --------------------

def synthetic(out: Path, with_reached: bool = True) -> dict:
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((DIM, 3)))[0].T.astype(np.float64)  # 3 orthonormal rows
    center = dict(zip((A, B, C), basis))

    def face(**cos):
        """A unit vector at exactly these cosines to the centers (A=0.45, ...), the rest random."""
        v = rng.standard_normal(DIM)
        v -= basis.T @ (basis @ v)
        v /= np.linalg.norm(v)
        w = {A: cos.get("A", 0.0), B: cos.get("B", 0.0), C: cos.get("C", 0.0)}
        rest = 1.0 - sum(x * x for x in w.values())
        return (sum(w[i] * center[i] for i in w) + np.sqrt(rest) * v).astype(np.float32)

    refs = {i: [(face(**{n: 0.85}), f"/photos/singles/{NAMES[i]}/{j}.jpg") for j in range(4)]
            for i, n in ((A, "A"), (B, "B"), (C, "C"))}
    photos = [
        [("ab", np.stack([face(A=0.8), face(B=0.75)])),
         ("bc", np.stack([face(B=0.8), face(C=0.7)]))],
        [("a1", np.stack([face(A=0.8), face(B=0.05)])),
         ("a2", np.stack([face(A=0.7), face(A=0.6, B=0.3)]))],
        [("below", np.stack([face(A=0.39), face(B=0.2, C=0.1)])),  # top-1 A under the threshold: kept, scrubbed
         ("strangers", np.stack([face(B=0.05), face(C=0.05)]))],
        [("exact", np.stack([face(A=0.4), face(B=0.8)])),
         ("b", np.stack([face(B=0.9), face(C=0.05)])),
         # the second face's top-1 is C (0.6), so A is in no assignment: only `reached` names it
         ("nontop", np.stack([face(B=0.8), face(A=0.45, C=0.6)]))],
        [("c", np.stack([face(C=0.8), face(B=0.05)])),
         ("strangers2", np.stack([face(B=0.1), face(C=0.2)]))],
    ]
    written = build_output(out, {i: (NAMES[i], center[i].astype(np.float32)) for i in (A, B, C)}, refs, photos,
                           held={A, C}, with_reached=with_reached)
    written["gone_photos"] = {written["photo_keys"][n] for n in ("ab", "nontop", "a1", "a2", "exact")}
    return written


# --- reading back --------------------------------------------------------------------------------------

def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def tar_members(out: Path) -> dict[str, bytes]:
    found = {}
    for tar_path in sorted(out.glob("*/shards/*.tar")):
        with tarfile.open(tar_path) as tar:
            for m in tar.getmembers():
                found[f"{tar_path.parent.parent.name}/{m.name}"] = tar.extractfile(m).read()
    return found


def manifest_rows(out: Path, dataset: str) -> list[dict]:
    d = DatasetDir.open(str(out / dataset), dataset=dataset)
    table = d.read_manifests()
    return table.to_pylist() if table is not None else []


def assert_valid(out: Path, with_reached: bool = True) -> None:
    """validate passes; a manifest from before the `reached` column has just that to say."""
    for name in ("multiid", "multiid_refs"):
        report = validate(str(out / name))
        old = [p for p in report.problems if p.kind == "manifest_columns" and p.detail == "missing ['reached']"]
        assert report.ok or (not with_reached and len(old) == len(report.problems)), str(report)
        assert not report.uncommitted, str(report)


def assert_forgotten(out: Path, written: dict, iid: int) -> None:
    """No manifest row, tar member, bank row or center of the identity is left."""
    refs = manifest_rows(out, "multiid_refs")
    groups = manifest_rows(out, "multiid")
    assert refs and groups
    assert all(r["identity_id"] != iid for r in refs)
    assert all(iid not in (r.get(c) or []) for r in groups for c in ID_LISTS)
    gone = set(written["ref_keys"][iid]) | written.get("gone_photos", set())
    members = tar_members(out)
    assert not {name.split("/", 1)[1].split(".")[0] for name in members} & gone
    center = written["centers"][iid]
    for name, data in members.items():
        if name.endswith(".embeddings.npy"):
            assert (np.load(io.BytesIO(data)) @ center < 0.4).all(), name
    bank = pq.read_table(out / "multiid/bank/bank.parquet")
    assert iid not in bank["identity_id"].to_pylist()
    centers = np.load(out / "multiid/bank/centers.npy")
    np.testing.assert_array_equal(centers, np.asarray(bank["center"].to_pylist(), np.float32))
    assert not (np.abs(centers @ center - 1) < 1e-5).any()


# --- tests -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("with_reached", [True, False], ids=["reached", "no_reached"])
def test_forget_identity(tmp_path, monkeypatch, with_reached):
    out = tmp_path / "out"
    written = synthetic(out, with_reached)
    before_files, before_members = files(out), tar_members(out)
    assert any(NAMES[A].encode() in data for data in before_files.values())
    read = []
    real_read = fg._read_members
    monkeypatch.setattr(fg, "_read_members", lambda d, name, *a: read.append(name) or real_read(d, name, *a))

    summary = forget(str(out), [A])

    assert summary["identity_ids"] == [A]
    assert summary["removed"] == {"multiid_refs": 4, "multiid": 5}
    assert summary["rejects_removed"] == {"multiid_refs": 2, "multiid": 1}
    assert summary["shards_emptied"]["multiid"] == 1 and summary["scrubbed"] == 1
    assert_forgotten(out, written, A)
    assert_valid(out, with_reached)
    photos = {r["key"] for r in manifest_rows(out, "multiid")}
    assert written["photo_keys"]["nontop"] not in photos and written["photo_keys"]["exact"] not in photos
    assert photos == set(written["photo_keys"].values()) - written["gone_photos"]
    # `reached` rules shards out without reading their tars; without it every group tar is read
    group_reads = {n for n in read if n.startswith("multiid-")}
    assert group_reads == ({"multiid-000000", "multiid-000001", "multiid-000003"} if with_reached else
                           {f"multiid-{i:06d}" for i in range(5)})

    # everything else byte for byte: whole shards that held nothing of A, and each kept member
    after_files, after_members = files(out), tar_members(out)
    for f in ("multiid/shards/multiid-000004.tar", "multiid/manifest/multiid-000004.parquet"):
        assert after_files[f] == before_files[f]
    assert not any(f.startswith("multiid/shards/multiid-000001") or f.startswith("multiid/manifest/multiid-000001")
                   for f in after_files)  # the shard left empty is gone, manifest and tar
    below = written["photo_keys"]["below"]
    for name, data in after_members.items():
        if name != f"multiid/{below}.json.json":
            assert before_members[name] == data, name
    old, new = (json.loads(m[f"multiid/{below}.json.json"]) for m in (before_members, after_members))
    assert old["top1_identity"][0] == A and new["top1_identity"] == [-1] + old["top1_identity"][1:]
    assert {k: v for k, v in new.items() if k != "top1_identity"} == {k: v for k, v in old.items() if k != "top1_identity"}

    # no name, no embedding anywhere: the person's name is in no file under OUT
    assert not [f for f, data in after_files.items() if NAMES[A].encode() in data]
    assert NAMES[B].encode() in after_files["multiid/bank/names.json"]
    assert json.loads(after_files["multiid/bank/names.json"]) == {str(B): NAMES[B], str(C): NAMES[C]}
    assert not (out / "multiid/bank/forget-journal").exists()

    stones = pq.read_table(out / "multiid/bank/tombstones.parquet")
    assert stones.schema.equals(fg.TOMBSTONE_SCHEMA)
    (row,) = stones.to_pylist()
    assert row["identity_id"] == A and row["n_refs"] == 4 and row["n_photos"] == 5
    assert row["center_sha256"] == hashlib.sha256(written["centers"][A].astype("<f4").tobytes()).hexdigest()
    outlier = key_of("outlier", A)
    assert set(row["keys"]) == set(written["ref_keys"][A]) | written["gone_photos"] | {outlier}
    faces_reaching = 4 + 1 + 1 + 1 + 2 + 1  # the references, then ab, nontop, a1, a2 (both faces), exact
    assert len(row["embedding_sha256"]) == faces_reaching
    for t in (read_tombstones(str(out)), read_tombstones(str(out / "multiid"))):
        assert t.identity_ids == {A} and t.keys == set(row["keys"]) and len(t.embedding_hashes) == faces_reaching

    refs_rejects = pq.read_table(out / "multiid_refs/rejects/r-task00000.parquet")["key"].to_pylist()
    assert refs_rejects == [key_of("outlier", B)]
    assert pq.read_table(out / "multiid/rejects/g-task00000.parquet")["key"].to_pylist() == [key_of("lowres")]

    for name in ("multiid", "multiid_refs"):
        info = json.loads(after_files[f"{name}/dataset.json"])
        (record,) = info["takedowns"]
        assert record["identity_ids"] == [A] and record["removed"] == summary["removed"]
        assert info["counts"]["samples"] == validate(str(out / name)).samples
    split = json.loads(after_files["multiid/dataset.json"])["bench_split"]
    assert split["held_out"] == [C] and split["bench_identities"] == 1 and split["ok"]
    assert split["bench_photos"] + split["train_photos"] == len(photos)

    again = forget(str(out), [A])  # idempotent: nothing left, no file touched
    assert again["note"].startswith("already forgotten") and again["removed"] == {"multiid_refs": 0, "multiid": 0}
    assert files(out) == after_files


@pytest.mark.parametrize("with_reached", [True, False], ids=["reached", "no_reached"])
@pytest.mark.parametrize("crash_at", ["tar", "manifest"])
def test_crash_between_shards_then_rerun(tmp_path, monkeypatch, crash_at, with_reached):
    """The commit of the second group shard that loses photos raises (before its tar, or between
    its tar and its manifest): shards before it are new, it and those after it old (or its tar new);
    rerunning forget gives exactly what an uninterrupted takedown gives."""
    clean, out = tmp_path / "clean", tmp_path / "out"
    written = synthetic(clean, with_reached)
    shutil.copytree(clean, out)
    forget(str(clean), [A])

    real_commit = DatasetDir.commit
    commits = []

    def crashing_commit(self, tmp, final):
        if "/multiid/" + ("shards/" if crash_at == "tar" else "manifest/") in final:
            commits.append(final)
            if "multiid-000003" in final:  # shard 0 lost photos, 1 was emptied, 2 only scrubbed
                raise OSError("killed between two shards")
        return real_commit(self, tmp, final)

    monkeypatch.setattr(DatasetDir, "commit", crashing_commit)
    with pytest.raises(OSError, match="killed"):
        forget(str(out), [A])
    monkeypatch.setattr(DatasetDir, "commit", real_commit)

    assert len(commits) == 3
    assert read_tombstones(str(out)).identity_ids == {A}  # a run in between brings no one back
    journal = list((out / "multiid/bank/forget-journal").iterdir())
    assert journal and not [p for p in journal if NAMES[A].encode() in p.read_bytes()]
    new0 = (clean / "multiid/manifest/multiid-000000.parquet").read_bytes()
    shard0 = "multiid/shards/multiid-000000.tar"
    assert (out / shard0).read_bytes() == (clean / shard0).read_bytes()
    assert pq.read_table(out / "multiid/manifest/multiid-000000.parquet").equals(pq.read_table(io.BytesIO(new0)))
    old3 = (tmp_path / "out/multiid/manifest/multiid-000003.parquet").read_bytes()
    if crash_at == "tar":  # between shards: each shard old or new, the dataset valid as it stands
        assert_valid(out, with_reached)
    else:  # its tar is new, its manifest old: the journal has the keys the tar no longer holds
        assert validate(str(out / "multiid")).kinds() - {"manifest_columns"} == {"missing_sample"}
    assert written["photo_keys"]["nontop"] in pq.read_table(io.BytesIO(old3))["key"].to_pylist()

    summary = forget(str(out), [A])
    assert summary["removed"] == {"multiid_refs": 4, "multiid": 5}  # the first attempt's removals counted too
    assert_forgotten(out, written, A)
    assert_valid(out, with_reached)
    got, want = files(out), files(clean)
    assert sorted(got) == sorted(want)
    for f in want:
        if f.endswith(".tar") or f.endswith("names.json") or f.endswith("centers.npy"):
            assert got[f] == want[f], f
        elif f.endswith(".parquet") and "tombstones" not in f:
            assert pq.read_table(io.BytesIO(got[f])).equals(pq.read_table(io.BytesIO(want[f]))), f
    stone, clean_stone = (pq.read_table(io.BytesIO(x["multiid/bank/tombstones.parquet"])).to_pylist()[0]
                          for x in (got, want))
    for col in ("identity_id", "center_sha256", "embedding_sha256", "keys", "n_refs", "n_photos"):
        assert stone[col] == clean_stone[col], col


def test_forget_on_an_object_store_filesystem(tmp_path):
    """A filesystem that is not the local one takes the object-store path (no temporary names: the
    old tar is read into a local file before its name is overwritten): same result as on disk."""
    local, remote = tmp_path / "local", tmp_path / "remote"
    written = synthetic(local)
    shutil.copytree(local, remote)
    forget(str(local), [A])
    fs = pafs.SubTreeFileSystem(str(remote), pafs.LocalFileSystem())
    assert not DatasetDir.open("multiid", dataset="multiid", filesystem=fs).local

    summary = forget("", [A], filesystem=fs)

    assert summary["removed"] == {"multiid_refs": 4, "multiid": 5}
    assert_forgotten(remote, written, A)
    assert_valid(remote)
    assert read_tombstones("", filesystem=fs).identity_ids == {A}
    got, want = tar_members(remote), tar_members(local)
    assert got == want
    assert sorted(files(remote)) == sorted(files(local))


def test_unknown_identity_changes_nothing(tmp_path):
    out = tmp_path / "out"
    synthetic(out)
    before = files(out)
    with pytest.raises(ForgetError, match="4242"):
        forget(str(out), [A, 4242])
    assert files(out) == before


def test_cli_forget(tmp_path, capsys):
    from runtime.cli import main

    out = tmp_path / "out"
    written = synthetic(out)
    assert main(["forget", "multiid", "--out", str(out), "--identity", "4242"]) == 2
    assert "4242" in capsys.readouterr().err
    assert main(["forget", "multiid", "--out", str(out), "--photo", "x.jpg"]) == 2  # no --face-model
    assert main(["forget", "multiid", "--out", str(out), "--photo", str(tmp_path / "none.jpg"), "--face-model", "p"]) == 2
    assert "no such photo" in capsys.readouterr().err
    assert main(["forget", "multiid", "--out", str(tmp_path / "elsewhere"), "--identity", str(A)]) == 2
    assert main(["forget", "multiid", "--out", str(out), "--identity", str(A), "--identity", str(C)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["identity_ids"] == [A, C]
    assert main(["validate", str(out / "multiid")]) == 0 and main(["validate", str(out / "multiid_refs")]) == 0
    for iid in (A, C):
        written["gone_photos"] = set()
        assert_forgotten(out, written, iid)
    assert {r["identity_id"] for r in manifest_rows(out, "multiid_refs")} == {B}
    assert pq.read_table(out / "multiid/bank/bank.parquet")["identity_id"].to_pylist() == [B]
    assert not (out / "multiid/_lease.json").exists() and not (out / "multiid_refs/_lease.json").exists()


@pytest.mark.assets
def test_forget_by_photo_real_faces(tmp_path):
    """Real ArcFace embeddings (../shared/assets insightface pack): a photo of Obama that is not
    among his references forgets his identity, and with it both group photos he is in."""
    from workers.face_analysis import FaceAnalysis

    assets = assets_or_skip()
    faces = assets / "images" / "faces"
    pack = str(assets / "models" / "insightface_pack")
    worker = FaceAnalysis(pack, device="cpu")

    def embed(path: Path) -> np.ndarray:
        (r,) = worker.predict([worker.check({"image": path.read_bytes()})])
        return r["embeddings"]

    people = ("obama", "biden", "kit_harington")
    ids = {p: int.from_bytes(hashlib.sha256(p.encode()).digest()[:4], "big") & 0x7FFFFFFF for p in people}
    singles = {p: sorted((faces / "singles" / p).glob("*.jpg")) for p in people}
    request = singles["obama"].pop()  # the takedown photo: not one of the references
    refs = {}
    for p in people:
        embs = [e for e in (embed(path) for path in singles[p]) if len(e) == 1]
        refs[ids[p]] = [(e[0], f"/photos/singles/{p}/{i}.jpg") for i, e in enumerate(embs)]
    identities = {}
    for p in people:
        c = np.mean([e for e, _ in refs[ids[p]]], axis=0)
        identities[ids[p]] = (p, (c / np.linalg.norm(c)).astype(np.float32))
    group = {n: embed(faces / "groups" / f"{n}.jpg") for n in ("obama_and_biden", "two_people", "kit_with_rose", "t1")}
    photos = [[("obama_and_biden", group["obama_and_biden"]), ("kit_with_rose", group["kit_with_rose"])],
              [("two_people", group["two_people"]), ("t1", group["t1"])]]
    out = tmp_path / "out"
    written = build_output(out, identities, refs, photos, held={ids["kit_harington"]})

    summary = forget(str(out), photo=str(request), face_model=pack)

    assert summary["identity_ids"] == [ids["obama"]] and summary["photo_faces"] == 1
    assert summary["removed"] == {"multiid_refs": len(refs[ids["obama"]]), "multiid": 2}
    written["gone_photos"] = {written["photo_keys"][n] for n in ("obama_and_biden", "two_people")}
    assert_forgotten(out, written, ids["obama"])
    assert_valid(out)
    assert {r["key"] for r in manifest_rows(out, "multiid")} == {written["photo_keys"][n] for n in ("kit_with_rose", "t1")}
    assert {r["identity_id"] for r in manifest_rows(out, "multiid_refs")} == {ids["biden"], ids["kit_harington"]}
    assert not [f for f, data in files(out).items() if b"obama" in data]
    with pytest.raises(ForgetError, match="no face"):
        forget(str(out), photo=encode_member(SCHEMA.member_for("image"), np.full((64, 64, 3), 128, np.uint8)),
               face_model=pack)
