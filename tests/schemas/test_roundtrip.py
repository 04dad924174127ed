"""Rows with random arrays written through the datasink from a Ray Dataset read back equal."""
import numpy as np
import pyarrow.parquet as pq
import pytest

from schemas import load_manifest, read_samples, validate
from schemas.registry import get_schema, schemas
from tests.helpers import plain, synthetic_rows, write_rows

N = 10



@pytest.mark.parametrize("dataset", sorted(schemas()))
def test_round_trip(ray_local, tmp_path, dataset):
    schema = get_schema(dataset)
    rows = synthetic_rows(dataset, N)
    out = str(tmp_path / dataset)
    summary = write_rows(rows, out, dataset, target_samples=4, config={"note": "round trip"})
    assert summary["counts"]["samples"] == N and summary["schema_version"] == schema.version
    assert summary["config"] == {"note": "round trip"} and "pyarrow" in summary["packages"]

    manifest = load_manifest(out)
    assert sorted(manifest.key) == sorted(r["key"] for r in rows)
    assert manifest.groupby("shard").size().max() <= 4 and manifest.shard.nunique() >= 3
    assert list(manifest.columns[:2]) == ["key", "shard"]
    assert set(schema.manifest_schema.names) <= set(manifest.columns)

    raw = {s["key"]: s for s in read_samples(out, decode=False)}
    decoded = {s["key"]: s for s in read_samples(out, shuffle=5)}
    assert raw.keys() == decoded.keys() == {r["key"] for r in rows}
    by_key = manifest.set_index("key")
    for row in rows:
        k = row["key"]
        for name in schema.member_names(row):
            m = schema.member_for(name)
            if m.ext == "jpg":
                assert raw[k][name] == row[name], name  # bytes as written
            elif m.ext == "json":
                meta = decoded[k]["json"]
                assert meta["words"] == row["json"]["words"]  # the pipeline's own json
                for f in schema.fields:  # every manifest field: json == manifest == what was written
                    assert plain(meta[f.name]) == plain(by_key.loc[k, f.name]) == plain(row[f.name]), f.name
            else:
                got = decoded[k][name]
                want = np.asarray(row[name])
                if m.kind == "mask":
                    want = want.astype(bool)
                elif m.dtype:
                    want = want.astype(m.dtype)
                assert got.dtype == want.dtype and np.array_equal(got, want), name
    report = validate(out)
    assert report.ok, str(report)
    assert (report.samples, report.shards) == (N, manifest.shard.nunique())


def test_manifest_filter_restricts_keys_and_shards(ray_local, tmp_path):
    rows = synthetic_rows("dip", 12)
    out = str(tmp_path / "dip")
    write_rows(rows, out, "dip", target_samples=3)
    df = load_manifest(out)
    pick = df[df.shard == df.shard.iloc[0]].head(2)
    opened = []
    got = [s["key"] for s in read_samples(out, manifest=pick)]
    assert sorted(got) == sorted(pick.key)
    # a glob and an explicit list of shard paths read the same samples
    assert len(list(read_samples(f"{out}/shards/*.tar"))) == 12
    assert len(list(read_samples([f"{out}/shards/{s}.tar" for s in df.shard.unique()[:2]]))) == \
        int(df.shard.isin(df.shard.unique()[:2]).sum())
    del opened


def test_reader_splits_by_worker_and_resamples(ray_local, tmp_path):
    import torch

    rows = synthetic_rows("uper", 12)
    out = str(tmp_path / "uper")
    write_rows(rows, out, "uper", target_samples=2)  # 6 shards
    # spawned workers: the pipeline must pickle (macOS, CUDA in workers, forkserver), and this
    # process holds a Ray driver's gRPC threads and ONNX Runtime's pools, whose locks a forked
    # child would copy mid-use
    loader = torch.utils.data.DataLoader(read_samples(out), num_workers=2, batch_size=None,
                                         multiprocessing_context="spawn")
    keys = [s["key"] for s in loader]
    assert sorted(keys) == sorted(r["key"] for r in rows)  # each sample exactly once across workers
    endless = iter(read_samples(out, resampled=True, seed=1))
    assert len([next(endless)["key"] for _ in range(40)]) == 40  # resampling never runs dry

    # 3 ranks x 2 spawned workers: the rank is taken when the reader is built, as a spawned worker
    # has no process group; every epoch reads each key once over all of them, other shards per rank
    def epoch(n: int, shards: list[str], world: int = 3) -> dict[int, list[str]]:
        return {r: [s["key"] for s in torch.utils.data.DataLoader(
            read_samples(shards, epoch=n, seed=7, rank=r, world=world), num_workers=2, batch_size=None,
            multiprocessing_context="spawn")] for r in range(world)}

    shards = sorted(str(p) for p in (tmp_path / "uper" / "shards").glob("*.tar"))
    first, second = epoch(0, shards), epoch(1, shards)
    for e in (first, second):
        assert sorted(k for keys in e.values() for k in keys) == sorted(r["key"] for r in rows)
        assert all(len(keys) == 4 for keys in e.values())  # 2 shards of 2 per rank
    assert any(set(first[r]) != set(second[r]) for r in first)  # the shard order is the epoch's
    # fewer shards than ranks: split by key, every rank reads something, still each key once
    few = epoch(0, shards[:2], world=3)
    got = [k for keys in few.values() for k in keys]
    assert len(got) == len(set(got)) == 4 and set(got) == {k for r in range(2) for k in keys_of(shards[r])}
    assert sum(bool(keys) for keys in few.values()) >= 2


def keys_of(shard: str) -> list[str]:
    return [s["key"] for s in read_samples(shard, split_by_node=False)]


def test_bad_member_becomes_reject_and_job_completes(ray_local, tmp_path):
    rows = synthetic_rows("dip", 6)
    rows[1]["win"] = np.full((4, 4), np.nan)  # cannot be encoded as a JPEG
    rows[2] = {"key": rows[2]["key"], "input": "prompt 2", "reject_stage": "generate",
               "reject_reason": "black_image", "reject_detail": "max pixel 0"}
    del rows[3]["mask"]  # a required member missing
    out = str(tmp_path / "dip")
    summary = write_rows(rows, out, "dip")
    assert summary["counts"]["samples"] == 3 and summary["counts"]["rejects"] == 3
    rejects = pq.read_table(f"{out}/rejects").to_pandas().set_index("key")
    assert rejects.loc[rows[1]["key"], "reason"] == "encode_failed" and rejects.loc[rows[1]["key"], "stage"] == "write"
    assert rejects.loc[rows[2]["key"], "reason"] == "black_image" and rejects.loc[rows[2]["key"], "input"] == "prompt 2"
    assert "missing members ['mask']" in rejects.loc[rows[3]["key"], "detail"]
    assert validate(out).ok
