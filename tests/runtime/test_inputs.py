"""The input layer (runtime/inputs.py): every source kind a config field takes, read by Ray Data on
the session's Ray, through the pipelines' own source functions and load steps, with bad members as
rejects with reasons; keys stable; resume by binary search; a run that can read none of its inputs
stops with one line. (The same on S3: tests/schemas/test_s3.py and tests/e2e/test_cluster.py.)"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs.iapo import IAPOConfig
from configs.multiid import MultiIDConfig
from configs.uper import UPERConfig
from runtime.config import load_config
from runtime.inputs import IMAGE_EXTS, SourceError, kind_of, parent_of, read_images, resolve
from runtime.rows import Reject
from tests.conftest import ROOT, assets_or_skip, tiny_config
from workers.simulated import crawl_shards

SINGLES = ("biden", "obama", "rose_leslie")  # three identities, 13 photos: four shards of four


def outcome(fn, row: dict) -> str:
    try:
        fn(dict(row))
        return "ok"
    except Reject as e:
        return e.reason


@pytest.fixture(scope="module")
def crawl(tmp_path_factory):
    """The shared faces as every source kind, each with its bad members: a truncated jpg, a json
    without an image, a listed file that is not there, a truncated shard."""
    faces = assets_or_skip() / "images" / "faces"
    root = tmp_path_factory.mktemp("crawl")
    singles = [(d, p) for d in SINGLES for p in sorted((faces / "singles" / d).glob("*.jpg"))]
    groups = sorted((faces / "groups").glob("*.jpg"))
    (root / "singles").mkdir()
    for d, p in singles:
        (root / "singles" / d).mkdir(exist_ok=True)
        shutil.copy(p, root / "singles" / d / p.name)
    broken = groups[0].read_bytes()[:300]
    (root / "groups").mkdir()
    for p in groups:
        shutil.copy(p, root / "groups" / p.name)
    (root / "groups" / "broken.jpg").write_bytes(broken)
    lists = root / "lists"
    lists.mkdir()
    rel = [os.path.relpath(root / "singles" / d / p.name, lists) for d, p in singles]
    listed = {"path": rel + ["../singles/gone/nothing.jpg"], "identity": [d for d, _ in singles] + ["gone"]}
    pq.write_table(pa.table(listed), lists / "singles.parquet")
    (lists / "singles.jsonl").write_text("".join(json.dumps({"path": p, "identity": i}) + "\n"
                                                 for p, i in zip(listed["path"], listed["identity"])))
    (lists / "singles.csv").write_text("path,identity\n" + "".join(f"{p},{i}\n" for p, i in zip(*listed.values())))
    photos = [{"key": p.stem, "jpg": p.read_bytes(), "json": {"url": f"https://example.com/{p.name}"}} for p in groups]
    photos += [{"key": "broken", "jpg": broken, "json": {}}, {"key": "nojpg", "jpg": None, "json": {"status": "ok"}}]
    crawl_shards(photos, str(root / "shards"), per_shard=3)
    whole = (root / "shards" / "00001.tar").read_bytes()
    (root / "shards" / "00002.tar").write_bytes(whole[: len(whole) // 2])  # cut inside its first photo
    refs = [{"key": f"{d}-{p.stem}", "jpg": p.read_bytes(), "json": {"identity": d}} for d, p in singles]
    crawl_shards(refs, str(root / "single_shards"), per_shard=4)
    pq.write_table(pa.table({"key": [p.stem for p in groups] + ["broken", "empty"],
                             "jpg": [p.read_bytes() for p in groups] + [broken, None]}), root / "groups.parquet")
    pq.write_table(pa.table({"key": [f"{d}-{p.stem}" for d, p in singles], "identity": [d for d, _ in singles],
                             "jpg": [p.read_bytes() for d, p in singles]}), root / "singles.parquet")
    return root, singles, groups


def multiid_outcomes(source: str, bank: bool) -> list[dict]:
    """MultiID's own source and load step on `source` as the singles (bank) or the groups."""
    from functools import partial

    from pipelines import multiid
    from stages import multiid as mid

    field = "singles" if bank else "groups"
    cfg = load_config(MultiIDConfig, ROOT / "configs" / "multiid.tiny.yaml", [f"{field}={source}"])
    plan = multiid.plans(cfg)[0 if bank else 1]
    rows = multiid.source(cfg, plan).take_all()
    load = partial(mid.load, **multiid.load_args(cfg))
    return [dict(r, outcome=outcome(load, r)) for r in rows]


@pytest.mark.parametrize("kind", ["folder", "glob", "parquet", "jsonl", "csv", "shards", "parquet_bytes"])
def test_multiid_singles_from_every_source_kind(ray_local, crawl, kind):
    """The bank's singles with their identity from a folder name, a list column (paths relative to
    the list), a shard's json or a bytes parquet's column: every good photo decodes, the listed file
    that is missing is a reject, keys are unique and the same on a second read."""
    root, singles, _ = crawl
    source = {"folder": root / "singles", "glob": f"{root}/singles/*/*.jpg", "parquet": root / "lists/singles.parquet",
              "jsonl": root / "lists/singles.jsonl", "csv": root / "lists/singles.csv",
              "shards": f"{root}/single_shards/{{00000..00003}}.tar", "parquet_bytes": root / "singles.parquet"}[kind]
    rows = multiid_outcomes(str(source), bank=True)
    good = [r for r in rows if r["outcome"] == "ok"]
    # the photo: a file's name, or the member / row key "<identity>-<name>" of shards and parquet
    photo = lambda r: r["input"].rsplit("/", 1)[-1].rsplit("#", 1)[-1].removeprefix(f"{r['identity']}-")  # noqa: E731
    assert sorted((r["identity"], photo(r).removesuffix(".jpg")) for r in good) == sorted((d, p.stem) for d, p in singles)
    bad = {r["input"]: r["outcome"] for r in rows if r["outcome"] != "ok"}
    if kind in ("parquet", "jsonl", "csv"):
        assert bad == {str(root / "lists" / "../singles/gone/nothing.jpg"): "missing_file"}
        assert all(r["input"].startswith(str(root / "lists" / "..")) for r in rows)  # relative to the list
    else:
        assert bad == {}
    keys = [r["key"] for r in rows]
    assert len(set(keys)) == len(rows) and sorted(keys) == sorted(r["key"] for r in multiid_outcomes(str(source), True))


@pytest.mark.parametrize("kind", ["folder", "glob", "shards", "parquet_bytes"])
def test_multiid_groups_from_every_source_kind(ray_local, crawl, kind):
    """Group photos from a folder, a glob, img2dataset shards or a bytes parquet: the truncated jpg
    is corrupt_image, a sample without an image missing_file, the cut shard unreadable_file after
    the samples before the cut, every outcome keyed by what identifies the photo."""
    root, _, groups = crawl
    source = {"folder": root / "groups", "glob": f"{root}/groups/*.jpg", "shards": f"{root}/shards/*.tar",
              "parquet_bytes": root / "groups.parquet"}[kind]
    rows = multiid_outcomes(str(source), bank=False)
    got = {r["input"]: r["outcome"] for r in rows}
    assert len(got) == len(rows) and len({r["key"] for r in rows}) == len(rows)
    if kind in ("folder", "glob"):
        assert got == {**{str(root / "groups" / p.name): "ok" for p in groups},
                       str(root / "groups" / "broken.jpg"): "corrupt_image"}
    elif kind == "shards":
        shard = lambda i, key: f"{root}/shards/{i:05d}.tar#{key}"  # noqa: E731
        assert got == {shard(0, groups[0].stem): "ok", shard(0, groups[1].stem): "ok", shard(0, groups[2].stem): "ok",
                       shard(1, groups[3].stem): "ok", shard(1, "broken"): "corrupt_image",
                       shard(1, "nojpg"): "missing_file", shard(2, groups[3].stem): "unreadable_file"}
    else:
        assert got == {**{f"{root}/groups.parquet#{p.stem}": "ok" for p in groups},
                       f"{root}/groups.parquet#broken": "corrupt_image", f"{root}/groups.parquet#empty": "missing_file"}


def test_folder_keys_are_the_keys_of_earlier_runs(ray_local, monkeypatch):
    """Existing local datasets resume without rewriting: a folder's key is sample_key of the path as
    the config gives it (relative stays relative) and the identity, as before the input layer."""
    from pipelines import multiid
    from stages.keys import sample_key

    assets_or_skip()
    monkeypatch.chdir(ROOT)  # the tiny config's paths are relative to the checkout
    cfg = load_config(MultiIDConfig, ROOT / "configs" / "multiid.tiny.yaml")
    rows = multiid.source(cfg, multiid.plans(cfg)[0]).take_all()
    singles = Path(cfg.singles)
    before = {sample_key({"path": str(p), "identity": d.name}, cfg.output_fields())
              for d in singles.iterdir() if d.is_dir() for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS}
    assert {r["key"] for r in rows} == before and len(before) == 45
    assert all(r["input"].startswith("../shared/") and os.path.isabs(r["path"]) for r in rows)


def test_sources_that_cannot_be_read_at_all_are_one_line(ray_local, tmp_path):
    with pytest.raises(SourceError, match="no such"):
        read_images(str(tmp_path / "none" / "*.tar"))
    pq.write_table(pa.table({"file": ["a.jpg"]}), tmp_path / "list.parquet")
    with pytest.raises(SourceError, match="needs a `path` column"):
        read_images(str(tmp_path / "list.parquet"))
    pq.write_table(pa.table({"path": ["a.jpg"]}), tmp_path / "plain.parquet")
    with pytest.raises(SourceError, match="no `identity` column"):
        read_images(str(tmp_path / "plain.parquet"), with_identity=True)


def test_what_a_source_string_is_and_where_relative_paths_go():
    assert [kind_of(s) for s in ("s3://crawl/groups/{00000..00999}.tar", "gs://b/list.parquet", "data/x.csv",
                                 "s3://b/photos/*.jpg", "s3://b/photos", "photos/")] == \
        ["shards", "table", "table", "glob", "folder", "folder"]
    assert resolve("a/b.jpg", parent_of("s3://bucket/lists/x.parquet")) == "s3://bucket/lists/a/b.jpg"
    assert resolve("../b.jpg", "s3://bucket/lists") == "s3://bucket/b.jpg"
    assert resolve("a.jpg", "lists") == "lists/a.jpg" and resolve("/abs/a.jpg", "lists") == "/abs/a.jpg"
    assert resolve("s3://o/a.jpg", "lists") == "s3://o/a.jpg" and resolve(b"bytes", "lists") == b"bytes"


def test_uper_and_iapo_lists_resolve_relative_paths_against_the_list(ray_local, crawl, tmp_path):
    """UPER's and IAPO's pair lists (CSV, JSONL) through the pipelines' own source and read steps:
    relative paths resolve against the list's folder, a missing one is a load reject."""
    from functools import partial

    from pipelines import iapo as iapo_pipeline
    from pipelines import uper as uper_pipeline
    from stages import iapo, uper

    root, singles, _ = crawl
    a, b = (os.path.relpath(root / "singles" / d / p.name, tmp_path) for d, p in singles[:2])
    (tmp_path / "pairs.csv").write_text(f"ref,target,prompt,subject\n{a},{b},a man,man\n{a},gone.jpg,a man,man\n")
    cfg = load_config(UPERConfig, ROOT / "configs" / "uper.tiny.yaml", ["source=pairs", f"pairs={tmp_path}/pairs.csv"])
    raw = uper_pipeline.source(cfg).take_all()
    read = partial(uper.read_pair, source="pairs", base=parent_of(cfg.pairs), fields=cfg.output_fields())
    rows = [read(dict(r)) for r in raw]
    assert rows[0]["ref_src"] == str(tmp_path / a)
    load = partial(uper.load_pair, max_side=256, diptych_padding=0)
    assert [outcome(load, r) for r in rows] == ["ok", "missing_file"]

    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (
        {"caption": "a man", "jpg_0": a, "jpg_1": b, "label_0": 1.0, "label_1": 0.0},
        {"caption": "a man", "jpg_0": "gone.jpg", "jpg_1": b, "label_0": 0.0, "label_1": 1.0})))
    cfg = load_config(IAPOConfig, ROOT / "configs" / "iapo.tiny.yaml", ["source=pairs", f"pairs={tmp_path}/pairs.jsonl"])
    read = partial(iapo.pair_row, fields=cfg.output_fields(), source="pairs", base=parent_of(cfg.pairs))
    rows = [read(dict(r)) for r in iapo_pipeline.source(cfg).take_all()]
    assert rows[0]["jpg_0"] == str(tmp_path / a) and len({r["key"] for r in rows}) == 2
    assert [outcome(partial(iapo.load_pair, max_side=256), r) for r in rows] == ["ok", "missing_file"]


def test_resume_finds_committed_keys_by_binary_search():
    from runtime.steps import is_new
    from schemas.store import sorted_keys

    done = sorted_keys(pa.array([f"{i:032x}" for i in range(0, 2000, 2)] + ["0" * 32]))
    assert done.dtype == np.dtype("S32") and len(done) == 1000  # unique, sorted
    keys = [f"{i:032x}" for i in range(10)] + ["f" * 32, "short"]
    assert is_new(keys, done).tolist() == [i % 2 == 1 for i in range(10)] + [True, True]
    assert is_new(keys, sorted_keys(pa.array([], pa.string()))).tolist() == [True] * 12


def test_a_run_that_reads_none_of_its_inputs_stops_with_one_line(ray_local, tmp_path, capsys):
    """Every single listed where nothing is (as every s3:// path was before this layer): not an
    empty dataset and exit 0, but exit 1 and one line naming an input."""
    from pipelines import multiid

    pq.write_table(pa.table({"path": [f"s3-was-here/{i}.jpg" for i in range(5)], "identity": ["a"] * 5}),
                   tmp_path / "singles.parquet")
    config = tiny_config("multiid", tmp_path)
    with pytest.raises(SystemExit) as e:
        multiid.main(["--config", str(config), "--out", str(tmp_path / "out"),
                      "--set", f"singles={tmp_path}/singles.parquet"])
    err = capsys.readouterr().err
    assert e.value.code == 1
    line = next(x for x in err.splitlines() if x.startswith("run stopped"))
    assert "stage load: no input could be read (5 of 5: missing_file 5)" in line and "s3-was-here/" in line
    assert f"; inputs: singles = {tmp_path}/singles.parquet, groups = " in line  # the source named
