"""The UPER pipeline end to end on local Ray: real u2netp background removal (../shared/assets), an
answer-scripted VLM double for the two turns, the tiny DINOv2 for R_sub; the tiny profile as the
issue runs it; Subjects200K-style diptychs and DIP shards as inputs."""
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from schemas.contract import decode_member
from schemas.uper import SCHEMA
from stages.photos import load_image
from tests.conftest import assets_or_skip, tiny_config
from tests.dip_doubles import ScriptedVLM
from tests.helpers import noise, png, tar_members

ATTRIBUTES = "Key attributes:\n- red fabric\n- two straps\n- white logo"
RATING = {"mismatch": "red fabric: No\ntwo straps: Yes\nwhite logo: No\nThey are two different objects. Rating: 1",
          "mumble": "Hard to say, the pictures are small.",
          "lacking": "red fabric: Yes\ntwo straps: No\nwhite logo: Yes\nRating: 5",  # an attribute absent
          "default": "red fabric: Yes\ntwo straps: Yes\nwhite logo: Yes\nRating: 4"}


class UPERScriptedVLM(ScriptedVLM):
    """Turn (a) lists three attributes ("blankattr": nothing); turn (b) rates 4, "mismatch" 1,
    "lacking" 5 with an attribute answered No, "mumble" no rating at all."""

    def predict(self, inputs):
        out = []
        for x in inputs:
            answers = [self._answer(p) for p in x["prompts"]]
            out.append({self.output: answers[0] if len(answers) == 1 else answers})
        return out

    def _answer(self, prompt):
        if self.output == "attributes_raw":
            return "" if "blankattr" in prompt else ATTRIBUTES
        name = next((n for n in RATING if re.search(rf"\b{n}", prompt)), "default")
        return RATING[name]



def image_cell(path=None, data=None) -> dict:
    return {"bytes": data, "path": None if path is None else str(path)}


def config(tmp_path, **overrides) -> str:
    return str(tiny_config("uper", tmp_path, **overrides))


@pytest.fixture(scope="module")
def scripted(ray_local, tmp_path_factory):
    """18 U^2-Net test photos and 6 DreamBench pairs that pass, a photo paired with itself, and one
    input of each kind that must become a reject."""
    from pipelines import uper
    from stages.uper import photo_pairs

    assets = assets_or_skip()
    tmp = tmp_path_factory.mktemp("uper_scripted")
    u2net = sorted((assets / "images/u2net_test/test_images").iterdir())
    pairs = photo_pairs(assets / "images/dreambench", 1)[:6]
    some_photo = pairs[0]["ref_src"]
    rows = [dict(ref=image_cell(p), target=image_cell(some_photo), prompt=f"the {p.stem}", subject="object")
            for p in u2net]
    rows += [dict(ref=image_cell(p["ref_src"]), target=image_cell(p["target_src"]), prompt=p["prompt"],
                  subject=p["subject"]) for p in pairs]
    rows += [
        dict(ref=image_cell(some_photo), target=image_cell(some_photo), prompt="same photo", subject="backpack"),
        dict(ref=image_cell(data=png(np.full((256, 256, 3), 255, np.uint8))), target=image_cell(some_photo),
             prompt="blank", subject="object"),
        dict(ref=image_cell(data=png(noise(256, 256))), target=image_cell(some_photo), prompt="full frame",
             subject="object"),
        dict(ref=image_cell(data=b"not an image"), target=image_cell(some_photo), prompt="corrupt", subject="object"),
        dict(ref=image_cell(some_photo), target=image_cell(tmp / "gone.jpg"), prompt="missing", subject="object"),
        dict(ref=image_cell(some_photo), target=image_cell(some_photo), prompt=None, subject="object"),
        dict(ref=image_cell(some_photo), target=image_cell(pairs[1]["ref_src"]), prompt="m", subject="mismatch"),
        dict(ref=image_cell(some_photo), target=image_cell(pairs[1]["ref_src"]), prompt="m", subject="mumble"),
        dict(ref=image_cell(some_photo), target=image_cell(pairs[1]["ref_src"]), prompt="l", subject="lacking"),
        dict(ref=image_cell(some_photo), target=image_cell(pairs[1]["ref_src"]), prompt="b", subject="blankattr"),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
    cfg = config(tmp, source="pairs", pairs=str(tmp / "pairs.parquet"), qa=True,
                 background_removal={"model": str(assets / "models/u2netp/u2netp.onnx"), "dtype": "float32",
                                     "batch_size": 4, "num_cpus": 0.5})
    out = str(tmp / "out")
    info = uper.main(["--config", cfg, "--out", out], workers={"vlm": UPERScriptedVLM})
    return info, out, cfg, u2net


def test_scripted_rejects_and_counts(scripted):
    from schemas import load_manifest, load_rejects, validate

    info, out, _, _ = scripted
    assert validate(f"{out}/uper").ok
    manifest, rejects = load_manifest(f"{out}/uper"), load_rejects(f"{out}/uper")
    assert len(manifest) == 18 + 6 + 1
    got = sorted(zip(rejects["stage"], rejects["reason"]))
    assert got == sorted([("load", "corrupt_image"), ("load", "missing_file"), ("load", "no_prompt"),
                          ("foreground", "foreground_too_small"), ("foreground", "foreground_too_large"),
                          ("rating_query", "unparsable_attributes"), ("rating_gate", "inconsistent_pair"),
                          ("rating_gate", "inconsistent_pair"), ("rating_gate", "unparsable_rating")])
    details = sorted(rejects.loc[rejects["reason"] == "inconsistent_pair", "detail"])
    assert details == ["absent in the target: red fabric, white logo (rating 1)",
                       "absent in the target: two straps (rating 5)"]
    assert rejects["input"].notna().all()
    assert info["counts"] == {**info["counts"], "samples": 25, "rejects": 9}


def test_background_removal_stage_reproduces_the_reference_masks(scripted):
    """The alpha the pipeline writes (not only the worker's) against the U^2-Net authors' u2netp
    masks, loaded through the same resize and crop as the photo."""
    from schemas import load_manifest

    _, out, _, u2net = scripted
    members = tar_members(f"{out}/uper")
    manifest = load_manifest(f"{out}/uper").set_index("prompt")
    ious = []
    for p in u2net:
        key = manifest.loc[f"the {p.stem}", "key"]
        alpha = decode_member(SCHEMA.member_for("ref_alpha"), members[key]["ref_alpha.png"])
        reference = load_image(p.parents[1] / "u2netp_results" / f"{p.stem}.png", max_side=512)[..., 0] > 127
        assert alpha.shape == reference.shape
        mask = alpha > 127
        ious.append((mask & reference).sum() / max((mask | reference).sum(), 1))
    print(f"pipeline u2netp mean IoU over {len(ious)} images: {np.mean(ious):.4f} (min {np.min(ious):.4f})")
    assert len(ious) == 18 and np.mean(ious) >= 0.95


def test_background_is_exactly_white(scripted):
    from schemas import load_manifest

    _, out, _, _ = scripted
    inputs = load_manifest(f"{out}/uper").set_index("key")["input"]
    for key, m in tar_members(f"{out}/uper").items():
        clean = decode_member(SCHEMA.member_for("ref_clean"), m["ref_clean.png"])
        alpha = decode_member(SCHEMA.member_for("ref_alpha"), m["ref_alpha.png"])
        photo = load_image(inputs[key].split(" | ")[0], max_side=512)  # the reference as the pipeline loaded it
        assert clean.shape == photo.shape and alpha.shape == clean.shape[:2]
        assert (alpha == 0).sum() > 1000 and (clean[alpha == 0] == 255).all(), key
        # elsewhere the photo composited on white through alpha: opaque pixels are the photo's own
        a = alpha[..., None] / 255.0
        assert np.abs(clean - (photo * a + 255 * (1 - a))).max() <= 0.5 + 1e-6, key
        assert np.array_equal(clean[alpha == 255], photo[alpha == 255]) and (alpha > 127).sum() > 1000


def test_scripted_fields(scripted):
    from schemas import load_manifest

    _, out, _, _ = scripted
    m = load_manifest(f"{out}/uper")
    assert (m["qa"] == "enabled").all() and (m["rating"] == 4).all() and (m["rating_threshold"] == 4).all()
    assert all(list(a) == ["red fabric", "two straps", "white logo"] for a in m["attributes"])
    assert all(list(v) == ["red fabric: yes", "two straps: yes", "white logo: yes"] for v in m["verdicts"])
    assert np.allclose(m["attributes_present"], 1.0)
    assert m["fg_fraction"].between(0.01, 0.98).all() and (m["source"] == "pairs").all()
    for c in ("r_sub", "r_sub_patch", "r_sub_cls"):
        assert m[c].between(-1, 1).all()
    assert m["r_sub_crops"].isna().all()  # random_crops 0: sec. 3.1.3 only
    # sec. 3.1.3 weights (patch only) and the app. B.1 penalty above 0.95 with slope 2
    np.testing.assert_allclose(m["r_sub_penalty"], 2 * np.clip(m["r_sub_patch"] - 0.95, 0, None), atol=1e-6)
    np.testing.assert_allclose(m["r_sub"] + m["r_sub_penalty"], m["r_sub_patch"], atol=1e-6)
    assert (m["r_sub_penalty"] > 0).any()  # random-weight DINOv2 finds most pairs alike


def test_scripted_rerun_does_no_work(scripted):
    from pipelines import uper

    info, out, cfg, _ = scripted
    again = uper.main(["--config", cfg, "--out", out], workers={"vlm": UPERScriptedVLM})
    assert again["runs"][-1]["samples_written"] == 0
    assert again["counts"]["samples"] == 25 and again["counts"]["rejects"] == 9


def test_tiny_profile_run(uper_tiny):
    """The issue's command, on the CPU with random weights: every DreamBench folder gives a pair."""
    from schemas import load_manifest, load_rejects, validate

    _, out, _ = uper_tiny
    manifest, rejects = load_manifest(f"{out}/uper"), load_rejects(f"{out}/uper")
    assert validate(f"{out}/uper").ok
    assert len(manifest) + len(rejects) == 30 and len(manifest) >= 25
    assert (manifest["qa"] == "disabled").all() and manifest["r_sub"].notna().all()


def test_diptychs_in_the_subjects200k_layout(ray_local, tmp_path):
    from pipelines import uper
    from schemas import load_manifest, load_rejects, validate
    from stages.uper import photo_pairs
    from tests.stages.test_uper_stages import subjects200k_composite

    pairs = photo_pairs(assets_or_skip() / "images/dreambench", 1)[:2]
    halves = [(load_image(p["ref_src"], 512), load_image(p["target_src"], 512)) for p in pairs]
    halves = [(a[:448, :448], b[:448, :448]) for a, b in halves]  # equal squares, as Subjects200K's
    rows = [{"image": {"bytes": png(subjects200k_composite(a, b)), "path": None},
             "description": {"item": p["subject"], "description_0": "left", "description_1": f"{p['subject']} {i}"}}
            for i, (p, (a, b)) in enumerate(zip(pairs, halves))]
    rows.append({"image": {"bytes": b"broken", "path": None},
                 "description": {"item": "x", "description_0": "l", "description_1": "r"}})
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "subjects200k.parquet")
    out = str(tmp_path / "out")
    uper.main(["--config", config(tmp_path, source="diptych", pairs=str(tmp_path / "subjects200k.parquet"),
                                  qa=True), "--out", out], workers={"vlm": UPERScriptedVLM})
    assert validate(f"{out}/uper").ok
    m, rejects = load_manifest(f"{out}/uper").set_index("prompt"), load_rejects(f"{out}/uper")
    assert list(rejects["reason"]) == ["corrupt_image"]
    members = tar_members(f"{out}/uper")
    for i, (p, (_, b)) in enumerate(zip(pairs, halves)):
        row = m.loc[f"{p['subject']} {i}"]
        assert row["subject"] == p["subject"]
        target = decode_member(SCHEMA.member_for("target"), members[row["key"]]["target.jpg"])
        assert target.shape == b.shape and np.abs(target.astype(int) - b).mean() < 3  # the right half, no border


def test_dip_positive_pairs_as_input(dip_photos, tmp_path):
    from pipelines import uper
    from schemas import load_manifest, load_rejects, validate

    _, dip_out, _ = dip_photos
    dip_manifest = load_manifest(f"{dip_out}/dip")
    out = str(tmp_path / "out")
    uper.main(["--config", config(tmp_path, source="dip", dip_dir=f"{dip_out}/dip", qa=True), "--out", out],
              workers={"vlm": UPERScriptedVLM})
    assert validate(f"{out}/uper").ok
    m, rejects = load_manifest(f"{out}/uper"), load_rejects(f"{out}/uper")
    assert len(m) + len(rejects) == len(dip_manifest) and len(m) >= len(dip_manifest) - 2
    assert set(m["input"].str.removeprefix("dip:")) <= set(dip_manifest["key"])
    by_key = dip_manifest.set_index("key")
    assert all(by_key.loc[k.removeprefix("dip:"), "prompt"] == p for k, p in zip(m["input"], m["prompt"]))
