"""The MultiID world that tests share (the pipeline's tests, the trainer's): the real faces of
../shared/assets with bad inputs added, a crowd and a photo under a burnt-in caption among the
group photos, captions from a scripted VLM (CaptionVLM), NaN embeddings where a path says so.
tests/conftest.py's session fixture `multiid_world` runs it once."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from PIL import Image

from tests.conftest import ROOT, assets_or_skip
from tests.dip_doubles import plan_args, wired_like
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
    for role in ("vlm", "aesthetic"):  # the tiny models under the project's out/
        cfg[role]["model"] = str(ROOT / cfg[role]["model"])
    cfg.update(overrides)
    path = tmp / "multiid.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def crowd(faces: Path, rows: list[dict], path: Path) -> Path:
    """A Solvay-1927-like photo: 28 people in small portraits beside one larger one. SCRFD finds
    24 of them above min_det_score, 4 large enough to identify."""
    canvas = Image.new("RGB", (1024, 768), (90, 80, 70))
    photos = [faces / r["path"] for r in rows]
    big = Image.open(photos[0]).convert("RGB")
    big.thumbnail((300, 300))
    canvas.paste(big, (0, 0))
    for i, p in enumerate(photos[1:29]):
        im = Image.open(p).convert("RGB")
        im.thumbnail((80, 80))
        canvas.paste(im, (320 + (i % 7) * 100, 180 + (i // 7) * 130))
    canvas.save(path, quality=92)
    return path


def build_world(tmp_path_factory):
    """Singles listed in a CSV with bad inputs added; group photos (the shared four, a crowd, a
    photo under a burnt-in caption) listed in a CSV, captioned by CaptionVLM."""
    from tests.workers.test_workers_text_aesthetic import caption
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
    meme, _ = caption(faces / "groups/obama_and_biden.jpg", ["BREAKING", "NEWS"])
    Image.fromarray(meme).save(tmp / "meme.jpg", quality=92)
    groups = [{"path": str(p)} for p in sorted((faces / "groups").glob("*.jpg"))] + [
        {"path": str(crowd(faces, rows, tmp / "crowd.jpg"))}, {"path": str(tmp / "meme.jpg")}]
    group_listing = tmp / "groups.csv"
    pd.DataFrame(groups).to_csv(group_listing, index=False)
    path = config(assets, tmp, singles=str(listing), groups=str(group_listing), max_image_pixels=20_000_000,
                  write_names=True, holdout_count=1, captions="vlm")  # the VLM's, scripted: the caption rules
    out = tmp / "out"
    info = multiid.main(["--config", str(path), "--out", str(out)],
                        workers={"vlm": CaptionVLM, "face_analysis": NaNFaces})
    return info, out, rows, faces
