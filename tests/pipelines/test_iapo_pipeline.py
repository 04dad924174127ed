"""pipelines/iapo.py end to end: the scripted world (answer-scripted VLM and grounding doubles, QA
on) with every bad input; a DIP output as the pair source; the tiny profile (random-weight
Qwen2.5-VL and Grounding DINO) on DreamBench photo pairs."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tests.iapo_doubles import BRIGHT, DARK, DOUBLES, pair_images
from tests.helpers import jpeg, tar_members

SCRIPTED = {"model": "scripted", "dtype": "float32", "batch_size": 4, "num_cpus": 0.25}


def run_iapo(tmp_path, config: dict, workers=None, extra=()) -> tuple[dict, str]:
    from pipelines import iapo

    path = tmp_path / "iapo.yaml"
    path.write_text(yaml.safe_dump(config))
    out = str(tmp_path / "out")
    return iapo.main(["--config", str(path), "--out", out, *extra], workers=workers), out


# caption -> (label_0, label_1, kept categories, rho, dropped, drop reasons) or the reject reason
EXPECTED = {
    "a cat and a dog": (1, 0, ["Cat", "dog"], [0, 1], [], []),
    "a cat and a dog, flipped": (0, 1, ["cat", "dog"], [1, 0], [], []),
    "a cat and a ghost": (1, 0, ["cat"], [0], ["ghost"], ["not_in_image_1"]),
    "a cat and mumbling": (1, 0, ["cat"], [0], ["mumble"], ["unparsable_judge"]),
    "a dog and both": (1, 0, ["dog"], [1], ["both"], ["ambiguous_judge"]),
    "a flat cat": (1, 0, ["cat"], [0], ["flat"], ["empty_box"]),
    "too many": (1, 0, ["dog", "cat"], [1, 0], [], []),  # max_instances 2 of 4 planned
    "only a ghost": "no_grounded_instances",
    "nothing in common": "no_matched_instances",
    "only mumbling": "no_judged_instances",
    "a tie": "tie",
    "no label": "no_label",
    "a missing image": "missing_file",
    "a corrupt image": "corrupt_image",
}


@pytest.fixture(scope="module")
def scripted(ray_local, tmp_path_factory):
    """Pick-a-Pic v2 layout (bytes) in Parquet; cat is better in image_0, dog in image_1."""
    tmp = tmp_path_factory.mktemp("iapo_scripted")
    im0, im1 = (jpeg(im, quality=95) for im in pair_images({"cat": (BRIGHT, DARK), "dog": (DARK, BRIGHT)}))
    rows = []
    for caption, expected in EXPECTED.items():
        l0, l1 = expected[:2] if isinstance(expected, tuple) else (1, 0)
        rows.append({"caption": caption, "jpg_0": im0, "jpg_1": im1, "label_0": float(l0), "label_1": float(l1),
                     "ranking_id": len(rows)})
    by_caption = {r["caption"]: r for r in rows}
    by_caption["a tie"].update(label_0=0.5, label_1=0.5)
    by_caption["no label"].update(label_0=None, label_1=None)
    by_caption["a missing image"]["jpg_1"] = None
    by_caption["a corrupt image"]["jpg_0"] = b"\xff\xd8\xff garbage, not a jpeg"
    pq.write_table(pa.Table.from_pylist(rows), tmp / "pairs.parquet")
    config = {"profile": "tiny", "source": "pairs", "pairs": str(tmp / "pairs.parquet"), "qa": True,
              "max_instances": 2, "w_pos": 2.0, "w_neg": 0.0, "weight_grid": 8, "max_side": 64,
              "write": {"target_shard_samples": 3}, "vlm": SCRIPTED, "grounding": SCRIPTED}
    info, out = run_iapo(tmp, config, workers=DOUBLES)
    return info, out, tmp


def manifest_by_caption(out):
    from schemas import load_manifest

    m = load_manifest(f"{out}/iapo")
    return m.set_index("caption", drop=False)


def test_scripted_instances_rho_and_drops(scripted):
    from schemas import load_rejects, validate

    info, out, _ = scripted
    report = validate(f"{out}/iapo")
    assert report.ok, report.problems[:5]
    m, rejects = manifest_by_caption(out), load_rejects(f"{out}/iapo")
    assert len(m) + len(rejects) == len(EXPECTED)  # nothing vanished
    for caption, expected in EXPECTED.items():
        if isinstance(expected, str):
            continue
        l0, l1, categories, rho, dropped, reasons = expected
        row = m.loc[caption]
        assert list(row["categories"]) == categories, caption
        assert list(row["rho"]) == rho, caption
        assert list(row["dropped"]) == dropped and list(row["drop_reasons"]) == reasons, caption
        assert (row["label_0"], row["label_1"], row["winner"]) == (l0, l1, 0 if l0 > l1 else 1)
        assert (row["n_instances"], row["n_dropped"], row["n_disagree"]) == (len(rho), len(dropped), sum(rho))
        assert row["rho_mean"] == pytest.approx(np.mean(rho))
    assert m.loc["too many", "n_planned"] == 2 and m.loc["a cat and a ghost", "n_planned"] == 2
    assert set(m["qa"]) == {"enabled"} and not m["planner_fallback"].any() and (m["n_unjudged"] == 0).all()
    assert set(m["source"]) == {"pairs"}


def test_scripted_rejects_by_reason(scripted):
    from schemas import load_rejects

    info, out, _ = scripted
    rejects = load_rejects(f"{out}/iapo")
    got = dict(zip(rejects["input"], rejects["reason"]))
    assert got == {c: r for c, r in EXPECTED.items() if isinstance(r, str)}
    stages = {s["stage"]: s["rejected"] for s in info["runs"][-1]["stages"]}
    assert stages["label"] == {"tie": 1, "no_label": 1}
    assert stages["load"] == {"missing_file": 1, "corrupt_image": 1}
    assert stages["instances"] == {"no_matched_instances": 1}
    assert stages["boxes"] == {"no_grounded_instances": 1}
    assert stages["preferences"] == {"no_judged_instances": 1}


def test_scripted_orders_unshuffle_to_the_brighter_crop(scripted):
    """The judge double picks the brighter crop as it was shown; un-shuffled, cat (bright in
    image_0) is always preferred in image_0 and dog in image_1, whichever letter it got."""
    from stages.iapo import judge_order, preferred_image

    _, out, _ = scripted
    m = manifest_by_caption(out)
    orders = []
    for _, row in m.iterrows():
        for c, order, choice in zip(row["categories"], row["judge_orders"], row["judge_choices"]):
            assert order == judge_order(row["key"], c, 0)  # seed 0
            assert preferred_image(choice, order) == {"cat": 0, "dog": 1}[c.lower()], (row["caption"], c)
            orders.append(order)
    assert set(orders) == {"01", "10"}  # both presentations occurred


def test_scripted_members_weights_and_json(scripted):
    _, out, _ = scripted
    m = manifest_by_caption(out)
    samples = tar_members(Path(out) / "iapo")
    s = samples[m.loc["a cat and a dog", "key"]]
    w0, w1 = (np.load(io.BytesIO(s[f"weights_{i}.npy"])) for i in (0, 1))
    # by hand, eq. 1 with w_pos 2, w_neg 0 on the 8 px grid of 64 x 64: cat (rho 0) top-left in
    # both; dog (rho 1) bottom-right in image_0, top-right in image_1
    e0, e1 = np.ones((8, 8), np.float32), np.ones((8, 8), np.float32)
    e0[:4, :4], e0[4:, 4:] = 2, 0
    e1[:4, :4], e1[:4, 4:] = 2, 0
    assert np.array_equal(w0, e0) and np.array_equal(w1, e1)
    flipped = samples[m.loc["a cat and a dog, flipped", "key"]]
    assert np.load(io.BytesIO(flipped["weights_0.npy"])).sum() == 16 * 0 + 16 * 2 + 32  # cat rho 1, dog rho 0
    meta = json.loads(s["json.json"])
    assert [i["category"] for i in meta["instances"]] == ["Cat", "dog"]
    assert meta["instances"][1]["box_0"] == [32.0, 32.0, 64.0, 64.0] and meta["instances"][1]["box_1"] == [32.0, 0.0, 64.0, 32.0]
    assert meta["instances"][1]["rho"] == 1 and "Image" in meta["instances"][1]["judge_answer"]
    ghost = json.loads(samples[m.loc["a cat and a ghost", "key"]]["json.json"])
    assert ghost["dropped_instances"] == [{"category": "ghost", "reason": "not_in_image_1"}]


def test_scripted_rerun_does_no_work(scripted):
    from pipelines import iapo

    info, out, tmp = scripted
    again = iapo.main(["--config", str(tmp / "iapo.yaml"), "--out", out], workers=DOUBLES)
    assert again["runs"][-1]["samples_written"] == 0
    assert again["counts"]["samples"] == info["counts"]["samples"]
    assert again["counts"]["rejects"] == info["counts"]["rejects"]


def test_dip_output_as_source(ray_local, tmp_path):
    """source: dip reads a DIP dataset's shards: x_w preferred (label_0 = 1) over x_l."""
    from schemas import load_manifest, load_rejects, validate
    from tests.helpers import synthetic_rows, write_rows

    write_rows(synthetic_rows("dip", 3, size=64), str(tmp_path / "dip"), "dip")
    config = {"profile": "tiny", "source": "dip", "dip_dir": str(tmp_path / "dip"), "max_side": 64,
              "vlm": SCRIPTED, "grounding": SCRIPTED}
    info, out = run_iapo(tmp_path, config, workers=DOUBLES)
    m = load_manifest(f"{out}/iapo")
    assert len(m) == 3 and len(load_rejects(f"{out}/iapo")) == 0 and validate(f"{out}/iapo").ok
    assert set(m["source"]) == {"dip"} and (m["winner"] == 0).all() and (m["label_0"] == 1).all()
    assert all(i.startswith("dip ") for i in m["input"])
    assert all(list(c) == ["cat"] for c in m["categories"])  # the double's default plan


# ------------------------------------------------------------------------------------------------
# the tiny profile: random-weight models on DreamBench photo pairs, QA off


def test_tiny_profile_run(iapo_tiny):
    """The issue's command on the CPU (6 pairs): every pair is written and validates; the random
    VLM's answers are unparsable, so the planner falls back and every instance keeps rho 0."""
    from schemas import load_manifest, load_rejects, validate

    info, out, _ = iapo_tiny
    manifest, rejects = load_manifest(f"{out}/iapo"), load_rejects(f"{out}/iapo")
    report = validate(f"{out}/iapo")
    assert report.ok, report.problems[:5]
    assert len(manifest) + len(rejects) == 6 and len(manifest) >= 5
    assert set(manifest["qa"]) == {"disabled"} and info["config"]["qa"] is False
    assert manifest["planner_fallback"].all() and all(list(c) == ["object"] for c in manifest["categories"])
    assert (manifest["n_instances"] == 1).all() and (manifest["rho_mean"] == 0).all()
    assert set(manifest["source"]) == {"photos"} and set(manifest["winner"]) <= {0, 1}
    for key, s in list(tar_members(Path(out) / "iapo").items())[:3]:
        w = np.load(io.BytesIO(s["weights_0.npy"]))
        assert w.dtype == np.float32 and set(np.unique(w)) <= {0.0, 1.0}  # w_pos 1 in boxes, 1 elsewhere
