"""The shard writer's fast paths against what they replace: the tar bytes webdataset's TarWriter
writes, Ray's numpy rows; and a write task run twice with the same index
writes the same shards."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pyarrow as pa
import pytest
import webdataset as wds
from ray.data.block import BlockAccessor

from schemas.contract import encode_member
from schemas.registry import get_schema
from schemas.store import DatasetDir
from schemas.writer import ShardDatasink, _rows, _ShardWriter, _views
from tests.conftest import ROOT
from tests.helpers import plain, synthetic_rows


class Ctx:
    def __init__(self, task_idx: int):
        self.task_idx = task_idx


def samples(n: int = 5) -> list[dict]:
    """webdataset samples of encoded DIP members."""
    schema, out = get_schema("dip"), []
    for row in synthetic_rows("dip", n):
        members = {f"{m}.{schema.member_for(m).ext}": encode_member(schema.member_for(m), row[m])
                   for m in schema.member_names(row)}
        out.append({"__key__": row["key"], **members})
    return out


def blocks(rows: list[dict]) -> list:
    """The Arrow blocks Ray Data hands a write task for these rows."""
    import ray

    return [ray.get(ref) for ref in ray.data.from_items(rows, override_num_blocks=1).to_arrow_refs()]


def test_tar_bytes_are_webdatasets(tmp_path):
    """Byte for byte what webdataset.TarWriter(encoder=False, mtime=0) writes, from bytes and from
    memoryviews into a block alike."""
    items = samples()
    expected = io.BytesIO()
    with wds.TarWriter(expected, encoder=False, mtime=0) as tar:
        for s in items:
            tar.write(s)
    out = DatasetDir.open(str(tmp_path / "dip"), dataset="dip")
    out.makedirs()
    for name, view in (("dip-000000", False), ("dip-000001", True)):
        w = _ShardWriter(out, name)
        for s in items:
            w.add({k: memoryview(v) if view and k != "__key__" else v for k, v in s.items()}, {"key": s["__key__"]})
        w.commit(get_schema("dip").manifest_schema)
        assert (tmp_path / "dip" / "shards" / f"{name}.tar").read_bytes() == expected.getvalue(), name
        assert w.nbytes == sum(512 + -(-len(v) // 512) * 512 for s in items for k, v in s.items() if k != "__key__")


def test_arrow_rows_read_member_bytes_in_place_and_encode_as_numpy_rows(tmp_path, ray_local):
    """Rows from an Arrow block: encoded members as views into the block; arrays (masks not yet
    encoded) and the other columns as Ray's numpy conversion gives them, so each row encodes to
    the same sample and manifest row as before."""
    schema = get_schema("dip")
    rows = synthetic_rows("dip", 4)
    rows[1]["mask_2"] = None  # a member a row lacks stays None
    (block,) = blocks(rows)
    assert pa.types.is_binary(block.schema.field("ref").type)
    got = _rows(block, schema)
    assert isinstance(got[0]["ref"], memoryview)  # a view into the block, not a copy
    assert got[1]["mask_2"] is None and isinstance(got[0]["mask"], np.ndarray)
    sink = ShardDatasink(str(tmp_path / "dip"), schema)
    numpy_rows = [{k: v[i] for k, v in BlockAccessor.for_block(block).to_batch_format("numpy").items()}
                  for i in range(block.num_rows)]
    for a, b in zip(got, numpy_rows):
        (sample_a, manifest_a), (sample_b, manifest_b) = sink._encode(a), sink._encode(b)
        assert {k: bytes(v) if isinstance(v, memoryview) else v for k, v in sample_a.items()} == sample_b
        assert {k: plain(v) for k, v in manifest_a.items()} == {k: plain(v) for k, v in manifest_b.items()}


@pytest.mark.parametrize("kind", [pa.binary(), pa.large_binary()])
def test_views_of_a_sliced_column_with_nulls_are_its_values(kind):
    """A block Ray sliced out of a larger one starts at an offset into its buffers; a null is None."""
    values = [b"a", None, b"", b"bcd" * 100, b"e", None, b"fg"]
    column = pa.chunked_array([pa.array(values[:4], kind).slice(1), pa.array(values[4:], kind).slice(1, 2)])
    got = _views(column)
    assert all(isinstance(v, memoryview) for v in got if v is not None)
    assert [None if v is None else bytes(v) for v in got] == values[1:4] + values[5:7]


def test_a_json_member_given_as_bytes_in_a_block_is_merged(tmp_path, ray_local):
    """A block's bytes `json` column (a memoryview to the writer) joins the manifest fields in the
    json member, as a dict would."""
    rows = synthetic_rows("dip", 3)
    for r in rows:
        r["json"] = b'{"words": ["a", "b"]}'
    sink = ShardDatasink(str(tmp_path / "dip"), get_schema("dip"), target_samples=10)
    stats = sink.write(blocks(rows), Ctx(0))
    assert stats["samples"] == 3 and not stats["rejects"]
    with tarfile.open(tmp_path / "dip" / "shards" / f"{stats['shards'][0]}.tar") as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json.json")]
    assert len(metas) == 3 and all(m["words"] == ["a", "b"] and m["prompt"] for m in metas)


def digest(path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for d in ("shards", "manifest") for p in
            sorted((path / d).glob("*"))}


def test_a_task_run_again_writes_the_same_shards_and_another_task_has_duplicates(tmp_path, ray_local):
    task_blocks = blocks(synthetic_rows("dip", 7))
    sink = ShardDatasink(str(tmp_path / "dip"), get_schema("dip"), target_samples=3)
    first = sink.write(task_blocks, Ctx(2))
    once = digest(tmp_path / "dip")
    again = sink.write(task_blocks, Ctx(2))  # Ray's retry of a task whose process died: same blocks, same index
    assert first["shards"] == again["shards"] and len(first["shards"]) == 3
    assert digest(tmp_path / "dip") == once
    other = sink.write(task_blocks, Ctx(5))  # the same keys in another task: each a duplicate_input
    assert other["samples"] == 0 and other["rejects"] == [["source", "duplicate_input", 7]]


def test_the_writer_and_its_registry_import_light():
    """A write task's process does not import webdataset (which imports torch), and the registry
    actor's process not even Ray Data or pyarrow."""
    code = ("import sys; import schemas.shard_registry; a = {m for m in ('ray.data', 'pyarrow') if m in sys.modules}; "
            "import schemas.writer; b = {m for m in ('webdataset', 'torch') if m in sys.modules}; print(a, b)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["set()", "set()"]
