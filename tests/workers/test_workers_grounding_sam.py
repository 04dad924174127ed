"""Grounding (Grounding DINO) and segmentation (SAM 2.1) workers on their tiny random-weight
builds, loaded through the real loaders (AutoProcessor / AutoModelForZeroShotObjectDetection,
build_sam2 + SAM2ImagePredictor)."""
import os

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from runtime.rows import batch_of  # noqa: E402
from tests.helpers import by_key  # noqa: E402
from builders import grounding, segmentation  # noqa: E402
from workers.grounding import Grounding, caption_of, phrases_of  # noqa: E402
from workers.segmentation import Segmentation, boxes_of, resolve  # noqa: E402

QUERIES = 20  # the tiny Grounding DINO's num_queries


def rng_image(seed, h, w):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def dir_size(d) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory):
    return grounding.build_tiny(tmp_path_factory.mktemp("grounding") / "model")


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    return segmentation.build_tiny(tmp_path_factory.mktemp("segmentation") / "model")


@pytest.fixture(scope="module")
def dino(dino_dir):
    # thresholds 0: every query is a box, so counts are exact with random weights
    return Grounding(str(dino_dir), image="win", box_threshold=0.0, text_threshold=0.0, stage="ground")


@pytest.fixture(scope="module")
def sam(sam_dir):
    return Segmentation(str(sam_dir), image="win", stage="segment")


def reasons(out):
    return {k: (r["reject_stage"], r["reject_reason"]) for k, r in out.items() if r.get("reject_reason")}


# grounding ---------------------------------------------------------------------------------------

def test_caption_format():
    assert caption_of(["Dog"])[0] == "dog."
    caption, spans = caption_of(["Dog", " red  Ball "])
    assert caption == "dog. red ball."
    assert [caption[a:b] for a, b in spans] == ["dog", "red ball"]
    assert caption_of(["St. Bernard"])[0] == "st bernard."  # "." is the model's phrase delimiter
    assert phrases_of("dog. red ball.") == ["dog", "red ball"]
    assert phrases_of(np.array(["cat", " ", ""], object)) == ["cat"]
    assert phrases_of(None) == [] and phrases_of([]) == []


def test_build_tiny_grounding(dino_dir):
    from transformers import AutoProcessor

    assert (dino_dir / "config.json").exists() and (dino_dir / "model.safetensors").exists()
    assert dir_size(dino_dir) < 50e6
    tok = AutoProcessor.from_pretrained(dino_dir).tokenizer
    ids = tok("Dog. cat.")["input_ids"]
    # the ids Grounding DINO hard-codes as delimiters: [CLS] 101, "." 1012, [SEP] 102
    assert ids == [101, tok.convert_tokens_to_ids("dog"), 1012, tok.convert_tokens_to_ids("cat"), 1012, 102]
    assert tok.pad_token_id == 0


def test_grounding_batch_and_rejects(dino):
    a, b = rng_image(0, 80, 120), rng_image(1, 60, 90)
    rows = [
        {"key": "a", "win": a, "phrases": ["Dog"]},
        {"key": "b", "win": b, "phrases": ["red ball", "cat", "hat"]},
        {"key": "gray", "win": a[..., 0], "phrases": ["dog"]},
        {"key": "rgba", "win": np.dstack([a, np.full(a.shape[:2], 255, np.uint8)]), "phrases": ["dog"]},
        {"key": "tiny", "win": np.zeros((1, 1, 3), np.uint8), "phrases": ["dog"]},
        {"key": "empty", "win": np.zeros((0, 0, 3), np.uint8), "phrases": ["dog"]},
        {"key": "nophrase", "win": a, "phrases": []},
        {"key": "blank", "win": a, "phrases": ["  ", ""]},
        {"key": "noimage", "phrases": ["dog"]},
    ]
    out = by_key(dino(batch_of(rows)))
    assert reasons(out) == {"tiny": ("ground", "bad_image"), "empty": ("ground", "bad_image"),
                            "nophrase": ("ground", "empty_prompt"), "blank": ("ground", "empty_prompt"),
                            "noimage": ("ground", "missing_image")}
    for key, (h, w) in {"a": (80, 120), "b": (60, 90), "gray": (80, 120), "rgba": (80, 120)}.items():
        r, phrases = out[key], next(x for x in rows if x["key"] == key)["phrases"]
        boxes, scores, labels = r["boxes"], r["box_scores"], r["box_labels"]
        assert boxes.shape == (QUERIES, 4) and boxes.dtype == np.float32
        assert scores.shape == (QUERIES,) and scores.dtype == np.float32
        assert ((scores > 0) & (scores <= 1)).all()
        assert (boxes[:, [0, 2]] <= w).all() and (boxes[:, [1, 3]] <= h).all() and (boxes >= 0).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert len(labels) == QUERIES and set(labels) <= set(phrases)  # the phrases as given
        assert len(r["phrase_boxes"]) == len(phrases)
        for p, pb in zip(phrases, r["phrase_boxes"]):
            mine = [k for k, label in enumerate(labels) if label == p]
            if mine:  # the phrase's best-scored box
                assert pb == pytest.approx(boxes[max(mine, key=lambda k: scores[k])].tolist())
            else:
                assert pb is None
        assert any(pb is not None for pb in r["phrase_boxes"])


def test_grounding_batched_equals_single(dino):
    """Captions of different lengths are padded in one forward; padding must not change a row."""
    rows = [{"key": "a", "win": rng_image(2, 64, 96), "phrases": ["Dog"]},
            {"key": "b", "win": rng_image(3, 64, 96), "phrases": ["red ball", "cat", "hat", "toy car"]}]
    together = by_key(dino(batch_of(rows)))
    for row in rows:
        alone = by_key(dino(batch_of([row])))[row["key"]]
        assert np.allclose(alone["boxes"], together[row["key"]]["boxes"], atol=1e-3)
        assert np.allclose(alone["box_scores"], together[row["key"]]["box_scores"], atol=1e-5)
        assert alone["box_labels"] == together[row["key"]]["box_labels"]


def test_grounding_thresholds(dino_dir, dino):
    row = {"key": "a", "win": rng_image(4, 80, 120), "phrases": ["dog", "ball"]}
    scores = by_key(dino(batch_of([row])))["a"]["box_scores"]
    cut = float(np.median(scores))
    half = by_key(Grounding(str(dino_dir), image="win", box_threshold=cut, text_threshold=0.0)(batch_of([row])))["a"]
    assert len(half["boxes"]) == int((scores > cut).sum()) and (half["box_scores"] > cut).all()
    # nothing above the threshold: empty arrays, not a reject (the pipeline decides)
    none = by_key(Grounding(str(dino_dir), image="win", box_threshold=1.0)(batch_of([row])))["a"]
    assert not none.get("reject_reason")
    assert none["boxes"].shape == (0, 4) and none["boxes"].dtype == np.float32
    assert none["box_scores"].shape == (0,) and none["box_labels"] == []
    assert none["phrase_boxes"] == [None, None]


def test_grounding_in_ray_data(ray_local, dino_dir):
    import ray

    rows = [{"key": "a", "win": rng_image(5, 64, 96), "phrases": ["dog"]},
            {"key": "b", "win": rng_image(6, 64, 96), "phrases": ["red ball", "cat"]},
            {"key": "c", "win": rng_image(7, 64, 96), "phrases": []}]
    ds = ray.data.from_items(rows).map_batches(
        Grounding, fn_constructor_kwargs={"model": str(dino_dir), "image": "win", "box_threshold": 0.0, "text_threshold": 0.0},
        batch_size=2, compute=ray.data.ActorPoolStrategy(size=1))
    got = {r["key"]: r for r in ds.take_all()}
    assert got["c"]["reject_reason"] == "empty_prompt" and got["c"]["reject_stage"] == "grounding"
    for k, phrases in (("a", ["dog"]), ("b", ["red ball", "cat"])):
        assert np.asarray(got[k]["boxes"]).shape == (QUERIES, 4)
        assert set(got[k]["box_labels"]) <= set(phrases) and len(got[k]["phrase_boxes"]) == len(phrases)


# segmentation ------------------------------------------------------------------------------------

def test_build_tiny_sam(sam_dir):
    names = sorted(p.name for p in sam_dir.iterdir())
    assert names == [segmentation.TINY_CHECKPOINT, segmentation.TINY_CONFIG]
    assert dir_size(sam_dir) < 50e6


def test_resolve_model():
    assert resolve("facebook/sam2.1-hiera-large", checkpoint_dir="/ckpt") == (
        "configs/sam2.1/sam2.1_hiera_l.yaml", "/ckpt/sam2.1_hiera_large.pt", None)
    with pytest.raises(ValueError):
        resolve("facebook/no-such-sam")


def test_resolve_checkpoint_only_dir(tmp_path):
    (tmp_path / "sam2.1_hiera_tiny.pt").write_bytes(b"")
    assert resolve(str(tmp_path)) == ("configs/sam2.1/sam2.1_hiera_t.yaml", str(tmp_path / "sam2.1_hiera_tiny.pt"), None)


def test_package_configs_still_compose_after_loading_from_a_directory(sam):
    from hydra import compose

    assert compose(config_name="configs/sam2.1/sam2.1_hiera_l.yaml").model.image_encoder.trunk.embed_dim == 144


def test_boxes_are_clipped():
    assert boxes_of([[-5, 2, 500, 30]], 40, 60).tolist() == [[0, 2, 60, 30]]
    assert boxes_of(np.zeros((0, 4), np.float32), 40, 60).shape == (0, 4)
    assert boxes_of([], 40, 60).shape == (0, 4)


def test_segmentation_batch_and_rejects(sam):
    a, b = rng_image(10, 80, 120), rng_image(11, 50, 40)
    rows = [
        {"key": "a", "win": a, "boxes": np.array([[0, 0, 50, 40], [10, 10, 100, 70], [1, 2, 3, 4]], np.float32)},
        {"key": "b", "win": b, "boxes": np.array([[0, 0, 20, 20]], np.float32)},
        {"key": "none", "win": b, "boxes": np.zeros((0, 4), np.float32)},
        {"key": "gray", "win": a[..., 1], "boxes": [[0, 0, 30, 30], [5, 5, 60, 60]]},
        {"key": "rgba", "win": np.dstack([b, np.full((50, 40), 128, np.uint8)]), "boxes": [[0, 0, 10, 10]]},
        {"key": "nan", "win": a, "boxes": [[0, 0, np.nan, 10]]},
        {"key": "shape", "win": a, "boxes": [[0, 0, 10]]},
        {"key": "noboxes", "win": a},
        {"key": "tiny", "win": np.zeros((1, 1, 3), np.uint8), "boxes": [[0, 0, 1, 1]]},
        {"key": "empty", "win": np.zeros((0, 0, 3), np.uint8), "boxes": [[0, 0, 1, 1]]},
        {"key": "noimage", "boxes": [[0, 0, 1, 1]]},
    ]
    out = by_key(sam(batch_of(rows)))
    assert reasons(out) == {k: ("segment", r) for k, r in {
        "nan": "bad_boxes", "shape": "bad_boxes", "noboxes": "missing_boxes", "tiny": "bad_image",
        "empty": "bad_image", "noimage": "missing_image"}.items()}
    for key, (n, h, w) in {"a": (3, 80, 120), "b": (1, 50, 40), "none": (0, 50, 40),
                           "gray": (2, 80, 120), "rgba": (1, 50, 40)}.items():
        masks, scores = out[key]["masks"], out[key]["mask_scores"]
        assert masks.shape == (n, h, w) and masks.dtype == bool, key  # one mask per box, image size
        assert scores.shape == (n,) and scores.dtype == np.float32
        assert ((scores >= 0) & (scores <= 1)).all()  # SAM2.1 predicts IoU through a sigmoid
    # batching: an image's masks do not depend on the other images in its batch
    alone = by_key(sam(batch_of([rows[1]])))["b"]
    assert (alone["masks"] == out["b"]["masks"]).mean() > 0.999
    assert np.allclose(alone["mask_scores"], out["b"]["mask_scores"], atol=1e-4)


def test_segmentation_in_ray_data(ray_local, sam_dir):
    import ray

    rows = [{"key": "a", "win": rng_image(12, 48, 64), "boxes": np.array([[0, 0, 30, 30], [10, 5, 60, 40]], np.float32)},
            {"key": "b", "win": rng_image(13, 48, 64), "boxes": np.zeros((0, 4), np.float32)}]
    ds = ray.data.from_items(rows).map_batches(
        Segmentation, fn_constructor_kwargs={"model": str(sam_dir), "image": "win", "dtype": "float32"},
        batch_size=2, compute=ray.data.ActorPoolStrategy(size=1))
    got = {r["key"]: r for r in ds.take_all()}
    assert np.asarray(got["a"]["masks"]).shape == (2, 48, 64) and np.asarray(got["a"]["masks"]).dtype == bool
    assert np.asarray(got["a"]["mask_scores"]).shape == (2,)
    assert np.asarray(got["b"]["masks"]).shape == (0, 48, 64)
    assert not got["a"].get("reject_reason") and not got["b"].get("reject_reason")
