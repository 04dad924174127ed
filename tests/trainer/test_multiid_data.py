"""The trainer's MultiID input on hand-written datasets (no pipeline run): reference photos read on
demand through a bounded cache, the train split only, the negative pool without the held-out
identities."""
import io
import json
import os
from collections import Counter

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import torch

from schemas.contract import decode_member, encode_member
from schemas.multiid import REFS_SCHEMA, SCHEMA
from schemas.store import DatasetDir
from schemas.writer import _ShardWriter
from tests.conftest import tiny_config

SIZE = 64


def image(seed: int, side: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


def write_shard(out, schema, name: str, samples: list[tuple[str, dict, dict]]) -> DatasetDir:
    """OUT/<dataset>/shards/<name>.tar + manifest/<name>.parquet through the writer's shard path;
    samples: (key, member values by name, manifest fields; the json member is the fields plus
    members['json'])."""
    d = DatasetDir.open(str(out / schema.name), dataset=schema.name)
    d.makedirs()
    w = _ShardWriter(d, name)
    for key, members, fields in samples:
        meta = dict(fields, **members.pop("json", {}))
        encoded = {f"{n}.{schema.member_for(n).ext}": encode_member(schema.member_for(n), v) for n, v in members.items()}
        w.add({"__key__": key, **encoded, "json.json": json.dumps(meta).encode()}, dict(fields, key=key))
    w.commit(schema.manifest_schema)
    return d


def write_refs(out, shards: dict[str, list[str]]) -> dict[str, np.ndarray]:
    """multiid_refs shards of 256 px noise photos (~200 KB each as JPEG); returns the image each key decodes to."""
    written = {}
    for s, (name, keys) in enumerate(shards.items()):
        samples = []
        for j, key in enumerate(keys):
            img = image(100 * s + j, 256)
            samples.append((key, {"image": img, "embedding": np.zeros(512, np.float32)}, {"identity_id": 10 + j}))
            written[key] = decode_member(REFS_SCHEMA.member_for("image"), encode_member(REFS_SCHEMA.member_for("image"), img))
        write_shard(out, REFS_SCHEMA, name, samples)
    return written


class CountingHandler(pafs.FSSpecHandler):
    """A pyarrow filesystem over fsspec (as an object store is reached) that counts bytes read per file."""

    def __init__(self):
        super().__init__(fsspec.filesystem("file"))
        self.read = Counter()

    def open_input_file(self, path):
        handler, f = self, self.fs.open(path, mode="rb")

        class Counted(io.RawIOBase):
            def readable(self):
                return True

            def seekable(self):
                return True

            def seek(self, pos, whence=0):
                return f.seek(pos, whence)

            def tell(self):
                return f.tell()

            def readinto(self, b):
                data = f.read(len(b))
                handler.read[os.path.basename(path)] += len(data)
                b[: len(data)] = data
                return len(data)

            def close(self):
                f.close()
                super().close()

        return pa.PythonFile(Counted(), mode="r")


def test_references_read_on_demand_through_a_bounded_cache(tmp_path):
    from trainer.data import References

    keys = {"multiid_refs-000000": ["a0", "a1", "a2"], "multiid_refs-000001": ["b0", "b1"]}
    written = write_refs(tmp_path, keys)
    tar_bytes = (tmp_path / "multiid_refs/shards/multiid_refs-000000.tar").stat().st_size
    handler = CountingHandler()
    refs = References(str(tmp_path / "multiid_refs"), cache_size=2, filesystem=pafs.PyFileSystem(handler))
    assert len(refs) == 5 and refs.decodes == 0 and refs.indexed == set()
    assert not [f for f in handler.read if f.endswith(".tar")]  # the manifest only

    np.testing.assert_array_equal(refs.get("a1"), written["a1"])
    # one shard indexed from its headers, one member read: far less than the tar
    assert refs.indexed == {0} and refs.decodes == 1
    assert handler.read["multiid_refs-000000.tar"] < tar_bytes / 2, (handler.read, tar_bytes)
    assert "multiid_refs-000001.tar" not in handler.read
    refs.get("a1")
    assert refs.decodes == 1  # cached
    np.testing.assert_array_equal(refs.get("b0"), written["b0"])
    np.testing.assert_array_equal(refs.get("a2"), written["a2"])
    assert refs.indexed == {0, 1} and refs.decodes == 3
    refs.get("a1")  # evicted by b0 and a2 (cache of 2): read again
    assert refs.decodes == 4 and refs.get.cache_info().currsize == 2
    assert refs.get("nope") is None and refs.decodes == 4


def multiid_sample(i: int, ref_key: str, split: str) -> tuple[str, dict, dict]:
    kps = [[20 + 2 * i, 24, 40, 24, 30, 32, 22, 42, 38, 42]]
    fields = {"caption": f"photo {i}", "keypoints": kps, "identity": [7], "n_faces": 1, "split": split}
    emb = np.eye(512, dtype=np.float32)[i:i + 1]
    return f"g{i}", {"image": image(i), "embeddings": emb, "json": {"reference_keys": {"7": [ref_key]}}}, fields


@pytest.fixture
def multiid_dir(tmp_path):
    """OUT/multiid with three train photos (one whose reference is missing) and one bench photo, a
    bank of identities 7, 8 and 9 (held out), OUT/multiid_refs with the one reference."""
    write_refs(tmp_path, {"multiid_refs-000000": ["r7"]})
    d = write_shard(tmp_path, SCHEMA, "multiid-000000", [
        multiid_sample(0, "r7", "train"), multiid_sample(1, "r7", "bench"), multiid_sample(2, "gone", "train"),
        multiid_sample(3, "r7", "train")])
    write_bank(d, [7, 8, 9], held_out=[9])
    return tmp_path / "multiid"


def write_bank(d: DatasetDir, ids: list[int], held_out: list[int]) -> np.ndarray:
    """bank/bank.parquet, bank/centers.npy (row i: one-hot at i, times i + 1) and dataset.json's held-out ids."""
    d.fs.create_dir(d.sub("bank"), recursive=True)
    pq.write_table(pa.table({"identity_id": pa.array(ids, pa.int32())}), d.sub("bank", "bank.parquet"))
    centers = np.eye(len(ids), 512, dtype=np.float32) * np.arange(1, len(ids) + 1, dtype=np.float32)[:, None]
    np.save(d.sub("bank", "centers.npy"), centers)
    d.write_bytes_atomic(d.sub("dataset.json"), json.dumps({"bench_split": {"held_out": held_out}}).encode())
    return centers


def test_examples_read_the_train_split_and_skip_a_missing_reference(multiid_dir):
    from trainer.data import examples

    skipped, selected = Counter(), {}
    got = list(examples(str(multiid_dir), SIZE, objective="id", epochs=1, skipped=skipped, selected=selected))
    assert sorted(e["prompt"] for e in got) == ["photo 0", "photo 3"]
    assert skipped == Counter({"no_reference": 1})
    assert selected == {"split": "train", "manifest_rows": 3}
    assert got[0]["ref"].shape == (SIZE, SIZE, 3) and got[0]["identities"] == [7]
    everything = list(examples(str(multiid_dir), SIZE, objective="id", split=None, epochs=1, selected=selected))
    assert sorted(e["prompt"] for e in everything) == ["photo 0", "photo 1", "photo 3"]
    assert selected == {"split": None, "manifest_rows": 4}


def test_id_objective_records_the_split_it_read(multiid_dir, tmp_path):
    """objective id end to end on the hand-written dataset: negatives from the bank by id, and
    summary.json says which rows were read."""
    from pipelines import train
    from trainer.face_encoder import build_tiny

    path = tiny_config("train", tmp_path, data=str(multiid_dir), objective="id", steps=2, batch_size=1,
                       face_encoder=str(build_tiny(tmp_path / "face.pt")))
    summary = train.main(["--config", str(path), "--out", str(tmp_path / "run")])
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk["split"] == summary["split"] == "train" and on_disk["manifest_rows"] == 3
    assert np.isfinite(summary["fixed_batch_loss_last"])


def test_negative_pool_maps_ids_through_the_bank_and_leaves_out_held_out_identities(tmp_path):
    from configs import TrainConfig
    from trainer.data import negative_pool
    from trainer.loop import Losses

    ids = [90317, 441122, 12, 5555, 2024]  # hashes: no id is a row number
    d = DatasetDir.open(str(tmp_path / "multiid"), dataset="multiid")
    centers = write_bank(d, ids, held_out=[5555, 12])

    pool_ids, pool_centers = negative_pool(str(tmp_path / "multiid"))
    assert pool_ids.tolist() == [90317, 441122, 2024]
    np.testing.assert_array_equal(pool_centers, centers[[0, 1, 4]])  # row i stays identity i's

    losses = Losses(None, TrainConfig(id_negatives=10), bank=(pool_ids, pool_centers))
    drawn = losses._negatives([2024], torch.Generator().manual_seed(0)).numpy()
    row_of = {tuple(c): i for i, c in zip(ids, centers)}
    assert sorted(row_of[tuple(c)] for c in drawn) == [90317, 441122]


def test_split_is_ignored_where_the_manifest_has_no_split_column(tmp_path):
    from trainer.data import select

    write_refs(tmp_path, {"multiid_refs-000000": ["r0", "r1"]})
    manifest, info = select(str(tmp_path / "multiid_refs"))
    assert info == {"split": None, "manifest_rows": 2} and sorted(manifest["key"]) == ["r0", "r1"]
