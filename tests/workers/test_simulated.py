"""The simulated accelerators (workers/simulated.py) on each dataset spec's simulated inputs, in
this process (no Ray cluster): each pipeline's gpu config takes every input to a sample, each role
gives the real worker's shapes, dtypes and sizes, and a batch asks for the cost table's sleep.

No pipeline rejects any of these inputs by design: they hold no tie (IAPO), no multi-subject DIP
sample (UPER's diptych source) and no stranger-only group photo (MultiID), so every gate passes."""
import io
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from runtime.config import load_config
from runtime.costs import Cost, load_costs
from runtime.execute import local
from runtime.registry import get_dataset
from runtime.rows import batch_of, rows_of
from stages.masks import mask_gate
from stages.prompts import (CAPTION_PREFIX, CAPTION_PROMPTS, attributes_prompt, judge_prompt, parse_attributes,
                            parse_caption, parse_judge, parse_planner, parse_rating, parse_region_caption,
                            planner_prompt, rating_prompt, region_caption_prompt)
from stages.rubric import parse_rubric, rubric_prompt
from workers import simulated as sim
from workers.aesthetic import Aesthetic
from workers.background_removal import BackgroundRemoval
from workers.face_analysis import FaceAnalysis
from workers.grounding import Grounding
from workers.image_encoder import ImageEncoder
from workers.inpainting import Inpainting
from workers.segmentation import Segmentation
from workers.text_detection import TextDetection
from workers.text_to_image import TextToImage
from workers.vlm import VLM

DEFAULT_COSTS = load_costs()


def worker(real, costs=DEFAULT_COSTS, time_scale=0.0, events=None, **kwargs):
    return sim.simulated(real, costs, time_scale, events)(model=kwargs.pop("model", "sim"), **kwargs)


def run(w, rows):
    out = rows_of(w(batch_of(rows)))
    assert not [r for r in out if r.get("reject_reason")]
    return out


def rgb(h, w, seed=0):
    return sim.photo(h, w, np.random.default_rng(seed))


def jpeg(image, quality=95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


# --- every input to a sample, gpu configs as they are --------------------------------------------

def gpu_config(name, tmp_path, n, side):
    spec = get_dataset(name)
    return load_config(spec.config, spec.profiles["gpu"], spec.simulated.inputs(tmp_path, n, side))


def samples(plan, rows, values=None):
    out, _ = local(plan.check(), rows, values)
    assert [(r.get("reject_stage"), r.get("reject_reason")) for r in out if r.get("reject_reason")] == []
    return out


def test_dip_every_prompt_is_a_sample(tmp_path):
    from pipelines import dip

    cfg = gpu_config("dip", tmp_path, 6, 256)
    rows = dip.source_rows(cfg)
    out = samples(dip.plan(cfg, sim.simulated_workers(DEFAULT_COSTS, 0)), rows)
    assert sorted(r["key"] for r in out) == sorted(r["key"] for r in rows) and len(rows) == 6
    assert sorted(r["n_subjects"] for r in out)[-1] >= 2  # the multi-subject prompts too
    for r in out:
        assert all(Image.open(io.BytesIO(r[m])).size == (256, 256) for m in ("ref", "win", "lose"))
        assert min(r["pos_scores"]) >= 9 and max(r["neg_scores"]) <= 6


def test_uper_every_diptych_is_a_sample(tmp_path):
    from pipelines import uper

    cfg = gpu_config("uper", tmp_path, 5, 256)
    assert cfg.source == "diptych"
    rows = pq.read_table(cfg.pairs).to_pylist()  # what ray.data.read_parquet gives the plan
    out = samples(uper.plan(cfg, sim.simulated_workers(DEFAULT_COSTS, 0)), rows)
    assert len(out) == 5
    for r in out:
        assert r["rating"] == 5 and r["attributes_present"] == 1.0
        assert 0.5 < r["r_sub"] < 0.95 and r["r_sub_penalty"] == 0.0
        assert Image.open(io.BytesIO(r["target"])).size == (128, 128)  # a 256 px diptych's half


def test_iapo_every_pair_is_a_sample(tmp_path):
    from pipelines import iapo

    cfg = gpu_config("iapo", tmp_path, 5, 256)
    rows = pq.read_table(cfg.pairs).to_pylist()
    out = samples(iapo.plan(cfg, sim.simulated_workers(DEFAULT_COSTS, 0)), rows)
    assert len(out) == 5
    for r in out:
        assert r["n_instances"] == 2 and r["n_dropped"] == 0 and r["n_unjudged"] == 0


def multiid_rows(cfg, plan):
    """The rows multiid.source gives the plan (read by Ray Data: runtime/inputs.py)."""
    from pipelines import multiid

    return multiid.source(cfg, plan).take_all()


def test_multiid_bank_forms_and_every_group_photo_matches(tmp_path, ray_local):
    from pipelines import multiid

    cfg = gpu_config("multiid", tmp_path, 6, 384)  # 384 x 288: above min_side_px 256
    bank_plan, group_plan = multiid.plans(cfg, sim.simulated_workers(DEFAULT_COSTS, 0))
    singles = multiid_rows(cfg, bank_plan)
    refs, run = local(bank_plan.check(), singles)
    assert not [r for r in refs if r.get("reject_reason")]
    bank = run.gathered["bank"]
    assert len(refs) == len(singles) == 3 * 3 and len(bank.identities) == 3  # max(2, 6 // 2) identities
    groups = multiid_rows(cfg, group_plan)
    out = samples(group_plan, groups, {"centers": bank.centers, "identity_ids": bank.ids, "previous_held_out": None,
                                       "references": {i.identity_id: i.reference_keys for i in bank.identities}})
    assert len(out) == len(groups) == 6
    for r in out:  # every face assigned to its own identity at 0.5
        assert r["paired"] and r["n_assigned"] == r["n_faces"] and min(r["similarity"]) > 0.6
        assert r["caption"].startswith(CAPTION_PREFIX)


# --- each role's outputs: the real worker's shapes and dtypes -------------------------------------

def test_text_to_image_diptych_and_independent():
    rows = [{"prompt": "a red teapot", "seed": 1}, {"prompt": "a corgi", "seed": 2}]
    a, b = run(worker(TextToImage, left="ref", right="win"), rows)  # 1024 x 1024 by default
    for r in (a, b):
        assert r["ref"].shape == r["win"].shape == (1024, 1024, 3) and r["ref"].dtype == np.uint8
    # fresh pixels per row and per half, about a photo's JPEG size (a flat image is ~20 KB)
    assert not np.shares_memory(a["ref"], b["ref"]) and not np.array_equal(a["ref"], a["win"])
    assert len(jpeg(a["ref"])) > 150_000
    (c,) = run(worker(TextToImage, mode="independent", output="ref", height=512, width=768), rows[:1])
    assert c["ref"].shape == (512, 768, 3) and "win" not in c
    (d,) = run(worker(TextToImage, mode="independent", output="ref"), [dict(rows[0], height=256, width=384)])
    assert d["ref"].shape == (256, 384, 3)  # the row's own size


def test_inpainting_keeps_the_context_and_gives_the_dilated_mask():
    image = rgb(320, 480)
    mask = np.zeros((320, 480), bool)
    mask[100:200, 150:300] = True
    (r,) = run(worker(Inpainting, image="win", mask="mask", output="lose", mask_output="inpaint_mask",
                      dilation_px=16), [{"win": image, "mask": mask, "prompt": "a blue teapot", "seed": 3}])
    lose, grown = r["lose"], r["inpaint_mask"]
    assert lose.shape == (320, 480, 3) and lose.dtype == np.uint8 and grown.shape == (320, 480) and grown.dtype == bool
    assert grown[mask].all() and grown[84:216, 150:300].all() and grown[100:200, 134:316].all()  # 16 px around
    assert np.array_equal(lose[~grown], image[~grown]) and not np.array_equal(lose[mask], image[mask])


def test_grounding_box_per_phrase_and_segmentation_mask_per_box():
    image = rgb(600, 800)
    (g,) = run(worker(Grounding, image="win", phrases="class_nouns"),
               [{"win": image, "class_nouns": ["dog", "red ball"]}])
    assert g["boxes"].shape == (2, 4) and g["boxes"].dtype == np.float32
    assert g["box_scores"].shape == (2,) and list(g["box_labels"]) == ["dog", "red ball"]
    assert [len(b) for b in g["phrase_boxes"]] == [4, 4]
    assert (g["boxes"][:, 2] <= 800).all() and (g["boxes"][:, 3] <= 600).all()
    assert (g["boxes"][:, :2] < g["boxes"][:, 2:]).all()
    (one,) = run(worker(Grounding), [{"image": image, "phrases": "teapot."}])  # Grounding DINO's prompt form
    assert one["boxes"].shape == (1, 4)
    (s,) = run(worker(Segmentation, image="win"), [{"win": image, "boxes": g["boxes"]}])
    assert s["masks"].shape == (2, 600, 800) and s["masks"].dtype == bool and s["mask_scores"].shape == (2,)
    mask_gate(list(s["masks"]), 0.02, 0.9)  # DIP's area limits: no Reject
    for m, (x0, y0, x1, y1) in zip(s["masks"], g["boxes"].astype(int)):  # the ellipse inscribed in its box
        assert m.sum() == m[y0:y1, x0:x1].sum() == pytest.approx(np.pi / 4 * (x1 - x0) * (y1 - y0), rel=0.02)
    (none,) = run(worker(Segmentation), [{"image": image, "boxes": np.zeros((0, 4), np.float32)}])
    assert none["masks"].shape == (0, 600, 800)


def ask(stage, prompt, images=("image",)):
    (r,) = run(worker(VLM, stage=stage, images=list(images), output="answer"),
               [{"image": rgb(64, 64), "prompt": prompt}])
    return r["answer"]


def test_vlm_answers_pass_each_gate():
    prompts = [rubric_prompt("object", "teapot"), rubric_prompt("animal", "dog", others=["teapot"])]
    positive, negative = ask("positive_check", prompts), ask("negative_check", prompts)
    assert len(positive) == len(negative) == 2  # a list asks several questions: one answer each
    assert [parse_rubric(a, c).value.score for a, c in zip(positive, ("object", "animal"))] == [10, 10]  # >= 9
    assert [parse_rubric(a, c).value.score for a, c in zip(negative, ("object", "animal"))] == [5, 5]  # <= 6
    rating = parse_rating(ask("rating", rating_prompt("teapot", ["red glaze", "bamboo handle"])))
    assert rating.value.rating == 5 and rating.value.verdicts == [("red glaze", True), ("bamboo handle", True)]
    attributes = ask("attributes", attributes_prompt("teapot"))
    assert isinstance(attributes, str) and len(parse_attributes(attributes).value) == 4
    assert parse_planner(ask("planner", planner_prompt(), ("image_0", "image_1"))).value == ["person", "dog"]
    assert [parse_judge(a).value for a in ask("judge", [judge_prompt("person"), judge_prompt("dog")])] == ["A", "A"]
    caption = parse_caption(ask("caption_vlm", CAPTION_PROMPTS[2]), max_words=77).value
    assert caption.startswith(CAPTION_PREFIX)
    assert parse_region_caption(ask("caption", [region_caption_prompt("teapot")])[0]).ok


def test_image_encoder_widths_views_and_cosines():
    a, b = rgb(300, 300, 1), rgb(300, 300, 2)
    (pre,) = run(worker(ImageEncoder, model="facebook/dinov2-base", image="ref", image_b="win", cosine="encoder_cosine",
                        embedding=None), [{"ref": a, "win": b}])
    assert "embedding" not in pre and 0.5 < pre["encoder_cosine"] < 0.98  # DIP: pre-filter < cosine < copy-paste
    (one,) = run(worker(ImageEncoder, model="facebook/dinov2-base", patches=True), [{"image": a}])
    assert one["embedding"].shape == (768,) and one["embedding"].dtype == np.float32
    assert np.linalg.norm(one["embedding"]) == pytest.approx(1.0, abs=1e-5)
    assert one["patch_embeddings"].shape == (256, 768)  # 16 x 16 patches of 14 px at 224
    (views,) = run(worker(ImageEncoder, model="facebook/dinov2-base", image="rsub_ref", image_b="rsub_target",
                          cosine="rsub_cosines", fit="resize"), [{"rsub_ref": [a] * 10, "rsub_target": [b] * 10}])
    assert views["embedding"].shape == (10, 768) and views["rsub_cosines"].shape == (10,)
    (clip,) = run(worker(ImageEncoder, model="openai/clip-vit-large-patch14", patches=True, text="caption"),
                  [{"image": a, "caption": "a teapot"}])
    assert clip["embedding"].shape == (768,) and clip["patch_embeddings"].shape == (256, 1024)
    assert isinstance(float(clip["text_similarity"]), float)


def test_face_analysis_reads_the_coded_identities_through_jpeg():
    photo = sim.coded_photo([3, 0, 200], 192, 256, np.random.default_rng(0))  # the smallest cells: 8 px
    decoded = np.asarray(Image.open(io.BytesIO(jpeg(photo, quality=90))))
    assert sim.read_codes(decoded) == [3, 0, 200]
    (r,) = run(worker(FaceAnalysis, prefix="ref_"), [{"image": decoded}])
    assert r["ref_n_faces"] == 3
    assert r["ref_face_boxes"].shape == (3, 4) and r["ref_face_kps"].shape == (3, 5, 2)
    assert r["ref_det_scores"].shape == (3,) and r["ref_embeddings"].shape == (3, 512)
    assert r["ref_embeddings"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(r["ref_embeddings"], axis=1), 1.0, atol=1e-5)
    boxes, kps = r["ref_face_boxes"], r["ref_face_kps"]
    assert (boxes[:, 2] <= 256).all() and (boxes[:, 3] <= 192).all() and (boxes[:, 1] > 8).all()  # below the code row
    assert ((kps >= boxes[:, None, :2]) & (kps <= boxes[:, None, 2:])).all()
    cos = r["ref_embeddings"] @ np.stack([sim.identity_center(3), sim.identity_center(200)]).T
    assert cos[0, 0] == pytest.approx(0.8, abs=1e-4) and cos[2, 1] == pytest.approx(0.8, abs=1e-4)
    assert np.abs(cos[1]).max() < 0.3 and abs(cos[0, 1]) < 0.3  # the stranger, and another's center
    (empty,) = run(worker(FaceAnalysis), [{"image": sim.coded_photo([], 192, 256, np.random.default_rng(1))}])
    assert empty["n_faces"] == 0 and empty["embeddings"].shape == (0, 512) and empty["face_kps"].shape == (0, 5, 2)


def test_background_removal_aesthetic_text_detection():
    image = rgb(200, 300)
    (r,) = run(worker(BackgroundRemoval, image="ref", prefix="ref_", cutout=True), [{"ref": image}])
    alpha = r["ref_alpha"]
    assert alpha.shape == (200, 300) and alpha.dtype == np.uint8 and r["ref_on_white"].shape == (200, 300, 3)
    assert r["ref_cutout"].shape == (200, 300, 4) and 0.01 < r["ref_fg_fraction"] < 0.98  # UPER's limits
    assert (r["ref_on_white"][alpha == 0] == 255).all() and np.array_equal(r["ref_on_white"][alpha == 255],
                                                                           image[alpha == 255])
    (a,) = run(worker(Aesthetic), [{"image": image}])
    assert a["aesthetic"] >= 4.5  # multiid.gpu.yaml's min_aesthetic
    (t,) = run(worker(TextDetection), [{"image": image}])
    assert t["text_boxes"].shape == (0, 4, 2) and t["text_fraction"] == 0.0


# --- the sleep: the cost table's time per batch ---------------------------------------------------

@pytest.fixture
def sleeps(monkeypatch):
    asked = []
    monkeypatch.setattr(sim, "sleep", asked.append)
    monkeypatch.setattr(sim, "clock", lambda: 0.0)  # the outputs take no time: the whole cost is slept
    return asked


def share(monkeypatch, gpus):
    monkeypatch.setattr(sim, "assigned_gpus", lambda: gpus)


def test_a_batch_sleeps_the_cost_tables_time(sleeps, monkeypatch):
    share(monkeypatch, 0.5)
    image = rgb(32, 32)
    # VLM: per_batch 2.0 + 16 x 0.8 = 14.8 GPU-seconds, on half a device 29.6 s, at time scale 0.5
    run(worker(VLM, time_scale=0.5), [{"image": image, "prompt": "Describe it."}] * 16)
    assert sleeps == [pytest.approx(14.8)]
    share(monkeypatch, 0.25)  # face analysis: (0.005 + 32 x 0.02) / 0.25
    run(worker(FaceAnalysis, time_scale=1.0), [{"image": rgb(64, 64)}] * 32)
    assert sleeps[1] == pytest.approx(2.58)
    share(monkeypatch, 1.0)
    rows = [{"prompt": "a teapot", "seed": i} for i in range(4)]
    run(worker(TextToImage, time_scale=1.0, height=64, width=64), rows)
    # FLUX: 6.5 s an image at 1024 x 1024 and 28 steps; a 64 px diptych is 2 x 64^2 / 1024^2 of it
    assert sleeps[2] == pytest.approx(4 * 6.5 * 2 * 64 * 64 / 1024 ** 2)
    run(worker(TextToImage, time_scale=1.0, mode="independent", steps=14, height=512, width=512), rows[:2])
    assert sleeps[3] == pytest.approx(2 * 6.5 * 0.5 * 0.25)
    mask = np.ones((32, 32), bool)
    run(worker(Inpainting, time_scale=2.0, steps=50), [{"image": image, "mask": mask, "prompt": "p", "seed": 0}] * 3)
    assert sleeps[4] == pytest.approx(2.0 * 3 * 6.5 * 50 / 28)  # FLUX Fill: 50 of FLUX's steps
    run(worker(TextDetection, time_scale=1.0), [{"image": image}] * 4)  # a CPU role: the whole "device"
    assert sleeps[5] == pytest.approx(4 * 0.03)
    own = {"vlm": Cost(per_sample=1.0, per_batch=0.5)}  # the table given, not the defaults
    run(worker(VLM, costs=own, time_scale=1.0), [{"image": image, "prompt": "p"}] * 3)
    assert sleeps[6] == pytest.approx(3.5)
    assert len(sleeps) == 7  # one sleep per batch


def test_one_sleep_per_batch_of_the_plan(sleeps, tmp_path):
    from pipelines import iapo

    cfg = gpu_config("iapo", tmp_path, 20, 64)  # vlm and grounding batches of 16: 16 + 4 rows
    plan = iapo.plan(cfg, sim.simulated_workers(DEFAULT_COSTS, 0)).check()
    local(plan, pq.read_table(cfg.pairs).to_pylist())
    assert len(sleeps) == 4 * 2 and sleeps == [0.0] * 8  # planner, ground_0, ground_1, judge; time scale 0


def test_outside_ray_an_actor_has_the_whole_device():
    assert sim.assigned_gpus() == 1.0
    assert worker(VLM).gpus == 1.0


# --- events, wiring -------------------------------------------------------------------------------

def test_events_per_actor(tmp_path):
    events = tmp_path / "events"
    w = worker(VLM, events=str(events), stage="judge")
    run(w, [{"image": rgb(32, 32), "prompt": "p"}] * 3)
    run(w, [{"image": rgb(32, 32), "prompt": "p"}] * 2)
    (path,) = events.iterdir()
    assert path.name == f"judge-{os.getpid()}.jsonl"
    with path.open("a") as f:
        f.write('{"event": "batch", "st')  # a line still being written
    loaded, *batches = sim.read_events(events)
    assert loaded["event"] == "loaded" and loaded["stage"] == "judge" and loaded["role"] == "vlm"
    assert loaded["actor"] == os.getpid() and loaded["gpus"] == 1.0 and loaded["t"] > 0
    assert [(b["event"], b["stage"], b["rows"]) for b in batches] == [("batch", "judge", 3), ("batch", "judge", 2)]
    assert all(loaded["t"] <= b["start"] <= b["end"] for b in batches) and batches[0]["end"] <= batches[1]["start"]


@pytest.mark.parametrize("real", [TextToImage, Inpainting, Grounding, Segmentation, VLM, ImageEncoder, FaceAnalysis,
                                  BackgroundRemoval, Aesthetic, TextDetection])
def test_wired_like_the_real_worker(real):
    cls = sim.simulated(real, DEFAULT_COSTS)
    assert cls.role == real.role and cls.rejects == real.rejects and cls.arguments() == real.arguments()
    assert issubclass(cls, sim.Simulated) and not issubclass(cls, real)
    assert cls.columns(image="win", prefix="ref_", output="x") == real.columns(image="win", prefix="ref_", output="x")
    every = dict(sim.step_defaults(real), model="m", stage="s", retries=1, drop=("a",))  # every argument it takes
    assert set(every) == real.arguments()
    w = cls(**every)
    assert (w.stage, w.retries, w.drop, w.device) == ("s", 1, ("a",), "cpu")
    with pytest.raises(TypeError, match="no argument"):
        cls(model="m", not_an_argument=1)


def test_a_role_without_cost_or_outputs_is_an_error():
    with pytest.raises(ValueError, match="cost table has no role 'vlm'"):
        sim.simulated(VLM, {"grounding": DEFAULT_COSTS["grounding"]})

    class Other(VLM):
        role = "other"
        simulated = None  # a worker that declares no simulated outputs

    with pytest.raises(ValueError, match="Other \\(role 'other'\\) declares no simulated outputs"):
        sim.simulated(Other, DEFAULT_COSTS)
