"""pipelines/multiid.py end to end on the real faces of ../shared/assets (SCRFD + ArcFace-style
embedder): the bank, the group photos, the split, bad inputs; captions from the random-weight VLM
(the issue's command) and from a scripted VLM double (to pin the caption rules)."""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, assets_or_skip
from tests.dip_doubles import plan_args, wired_like
from tests.helpers import tar_members
from workers.base import Worker
from workers.face_analysis import FaceAnalysis
from workers.vlm import VLM

LONG = "This image shows " + " ".join(["a"] * 90)
LONG_77 = " ".join(LONG.split()[:77])


class CaptionVLM(Worker):
    """Answers by the photo's size: chatter around a good caption, an 80-word caption, a caption
    without the opening, or nothing usable."""

    role, columns, rejects, arguments = wired_like(VLM)

    def __init__(self, model, *, images=("image",), prompt="prompt", output="answer", **common):
        super().__init__(model, **plan_args(common))
        self.image, self.prompt, self.output = images[0], prompt, output

    def check(self, row):
        return {"w": np.asarray(row[self.image]).shape[1], "prompt": row[self.prompt]}

    def predict(self, inputs):
        out = []
        for x in inputs:
            answer = {0: "Sure! Here is the caption:\nThis image shows two men in suits shaking hands.",
                      1: LONG, 2: "Two people smile at a party.", 3: "I'm sorry, I cannot help with that."}[x["w"] % 4]
            out.append({self.output: answer})
        return out


class NaNFaces(FaceAnalysis):
    """The real face model, with a NaN embedding for inputs whose path says so."""

    def check(self, row):
        return dict(super().check(row), nan="nan_embedding" in str(row.get("source")))  # the path, as load records it

    def predict(self, inputs):
        out = super().predict(inputs)
        for x, o in zip(inputs, out):
            if x["nan"]:
                o["embeddings"] = np.full_like(o["embeddings"], np.nan)
        return out


def config(assets: Path, tmp: Path, **overrides) -> Path:
    cfg = yaml.safe_load((ROOT / "configs" / "multiid.tiny.yaml").read_text())
    cfg["singles"] = str(assets / "images/faces/singles")
    cfg["groups"] = str(assets / "images/faces/groups")
    cfg["face_analysis"]["model"] = str(assets / "models/insightface_pack")
    cfg["vlm"]["model"] = str(ROOT / cfg["vlm"]["model"])
    cfg.update(overrides)
    path = tmp / "multiid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def world(ray_local, tmp_path_factory):
    """Singles listed in a CSV with bad inputs added; group photos captioned by CaptionVLM."""
    from pipelines import multiid

    assets = assets_or_skip()
    tmp = tmp_path_factory.mktemp("multiid")
    faces = assets / "images/faces"
    rows = list(csv.DictReader((faces / "labels.csv").open()))
    singles = [{"path": str(faces / r["path"]), "identity": r["identity"]} for r in rows]
    (tmp / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    Image.new("RGB", (8, 8)).save(tmp / "tiny.jpg")
    Image.new("L", (5000, 5000)).save(tmp / "bomb.png")  # 25 Mpx of zeros: a small file
    shutil.copy(faces / rows[0]["path"], tmp / "nan_embedding.jpg")
    object_photo = sorted((assets / "images/dreambench").glob("*/*.jpg"))[0]
    singles += [
        {"path": str(tmp / "corrupt.jpg"), "identity": "obama"},
        {"path": str(tmp / "tiny.jpg"), "identity": "obama"},
        {"path": str(tmp / "bomb.png"), "identity": "obama"},
        {"path": str(tmp / "nan_embedding.jpg"), "identity": "obama"},
        {"path": str(object_photo), "identity": "obama"},  # no face
        {"path": str(faces / "groups/two_people.jpg"), "identity": "obama"},  # two faces
        {"path": str(faces / "singles/obama/obama.jpg"), "identity": "lonely"},  # one photo only
    ]
    listing = tmp / "singles.csv"
    pd.DataFrame(singles).to_csv(listing, index=False)
    path = config(assets, tmp, singles=str(listing), max_image_pixels=20_000_000, write_names=True,
                  holdout_count=1)
    out = tmp / "out"
    info = multiid.main(["--config", str(path), "--out", str(out)],
                        workers={"vlm": CaptionVLM, "face_analysis": NaNFaces})
    return info, out, rows, faces


def test_bank_has_the_twelve_identities(world):
    _, out, rows, _ = world
    bank = pd.read_parquet(out / "multiid/bank/bank.parquet")
    names = {int(k): v for k, v in json.loads((out / "multiid/bank/names.json").read_text()).items()}
    assert sorted(names.values()) == sorted({r["identity"] for r in rows}) and len(bank) == 12
    centers = np.load(out / "multiid/bank/centers.npy")
    assert centers.shape == (12, 512) and centers.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1, rtol=1e-5)
    refs = pd.read_parquet(out / "multiid_refs/manifest")
    assert len(refs) == 45  # every single photo of the 12 is a reference of its own identity
    for r in refs.itertuples():  # .../singles/<identity>/<photo>
        assert names[r.identity_id] == r.source.split("/")[-2]
    assert sorted(bank.n_refs) == sorted(pd.Series([r["identity"] for r in rows]).value_counts())


def test_bad_singles_are_rejects_with_reasons(world):
    from schemas import load_rejects, validate

    _, out, _, _ = world
    assert validate(str(out / "multiid_refs")).ok
    rej = load_rejects(str(out / "multiid_refs"))
    reason = {Path(p).name: r for p, r in zip(rej["input"], rej["reason"])}
    assert reason["corrupt.jpg"] == "corrupt_image" and reason["tiny.jpg"] == "too_small"
    assert reason["bomb.png"] == "decompression_bomb" and reason["nan_embedding.jpg"] == "bad_embedding"
    assert reason["two_people.jpg"] == "face_count" and reason["obama.jpg"] == "too_few_references"
    assert sum(r == "no_face" for r in rej["reason"]) == 1
    assert len(rej) == 7


def test_group_photos_identities_captions_split(world):
    from schemas import load_manifest, load_rejects, validate

    info, out, _, faces = world
    assert validate(str(out / "multiid")).ok
    names = {int(k): v for k, v in json.loads((out / "multiid/bank/names.json").read_text()).items()}
    m = load_manifest(str(out / "multiid"))
    rej = load_rejects(str(out / "multiid"))
    groups = json.loads((faces / "groups.json").read_text())
    seen = {}
    for r in m.itertuples():
        photo = "groups/" + r.source.split("/")[-1]
        seen[photo] = r
        assert list(r.identity) == list(r.identity_at_050) and r.assign_threshold == pytest.approx(0.5)
        for column in ("identity_at_040", "identity_at_050"):
            assert sorted(names[i] for i in getattr(r, column) if i >= 0) == sorted(groups[photo]["known"])
        assert r.n_faces == groups[photo]["faces"] and r.paired == bool(groups[photo]["known"])
        assert len(r.similarity) == len(r.margin) == r.n_faces
    assert {p.split("/")[-1] for p in seen} | {Path(p).name for p in rej["input"]} == {Path(p).name for p in groups}
    # captions: chatter removed, 77 words at most, "This image shows" added, a refusal rejected
    for r in m.itertuples():
        assert r.caption in (LONG_77, "This image shows two men in suits shaking hands.",
                             "This image shows two people smile at a party.")
        assert r.caption_repaired == (r.caption != "This image shows two men in suits shaking hands.")
    reasons = {Path(p).name: r for p, r in zip(rej["input"], rej["reason"])}
    assert reasons.pop("two_people.jpg") == "collage"  # it is two portraits side by side
    assert set(reasons.values()) <= {"refusal"}
    # the split: held-out identities only in bench photos, recorded in dataset.json
    split = json.loads((out / "multiid/dataset.json").read_text())["bench_split"]
    assert split["ok"] and split["overlap"] == [] and len(split["held_out"]) == 1
    held = set(split["held_out"])
    for r in m.itertuples():
        assert r.split == ("bench" if held & set(r.identity) else "train")
    # the two write passes (paired, then the rest) are one run in dataset.json, counting every photo
    assert len(info["runs"]) == 1 and info["runs"][0]["passes"] == 2
    stages = {st["stage"]: st for st in info["runs"][0]["stages"]}
    assert stages["load"]["rows_in"] == len(groups)
    assert sum(sum(st["rejected"].values()) for st in stages.values()) == len(rej)
    assert info["runs"][0]["samples_written"] == len(m) and sorted(info["runs"][0]["shards_written"]) == sorted(set(m.shard))
    # paired photos sit in shards of their own
    paired_shards = set(m[m.paired].shard)
    assert paired_shards.isdisjoint(set(m[~m.paired].shard))
    # per identity, the keys of its references
    refs = pd.read_parquet(out / "multiid_refs/manifest")
    r = m[m.paired].iloc[0]
    meta = json.loads(tar_members(out / "multiid")[r.key]["json.json"])
    for ident, keys in meta["reference_keys"].items():
        assert set(keys) == set(refs[refs.identity_id == int(ident)].key)


def test_rerun_does_no_work(world, ray_local):
    from pipelines import multiid

    info, out, _, _ = world
    again = multiid.main(["--config", str(out.parent / "multiid.yaml"), "--out", str(out)],
                         workers={"vlm": CaptionVLM, "face_analysis": NaNFaces})
    assert again["runs"][-1]["samples_written"] == 0 and again["runs"][-1]["passes"] == 2
    assert len(again["runs"]) == 2  # a new run, its own record
    assert again["counts"]["samples"] == info["counts"]["samples"]


def test_tiny_profile_command(multiid_tiny):
    """The issue's command with the random-weight VLM: unparsable captions are rejects, the rest
    repaired; both datasets validate."""
    from schemas import load_manifest, load_rejects, validate

    out = Path(multiid_tiny[1])
    for name in ("multiid", "multiid_refs"):
        report = validate(str(out / name))
        assert report.ok, report.problems[:3]
    m, rej = load_manifest(str(out / "multiid")), load_rejects(str(out / "multiid"))
    assert len(m) + len(rej) == 4
    reasons = {Path(p).name: r for p, r in zip(rej["input"], rej["reason"])}
    assert reasons.pop("two_people.jpg") == "collage"
    assert set(reasons.values()) <= {"empty_caption", "refusal"}  # cut and prefixed when possible
    assert all(c.startswith("This image shows") for c in m.caption)
    assert len(load_manifest(str(out / "multiid_refs"))) == 45
