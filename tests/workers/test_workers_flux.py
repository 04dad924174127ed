"""The FLUX workers (text-to-image with FluxPipeline, inpainting with FluxFillPipeline) on tiny
random-weight builds, loaded through the same from_pretrained path as FLUX.1-dev / FLUX.1-Fill-dev."""
import json
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from runtime.rows import Reject, batch_of, rows_of  # noqa: E402
from tests.helpers import by_key, noise  # noqa: E402
from schemas.contract import as_rgb  # noqa: E402
from builders import inpainting, text_to_image  # noqa: E402
from workers.inpainting import Inpainting, dilate, feather  # noqa: E402
from workers.text_to_image import TextToImage, generation_problem  # noqa: E402

STEPS = 2


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The test machine's cores are shared; several intra-op threads on toy-sized matmuls thrash
    # (a 2-step generation goes from 0.05 s to 2 s). Ray actors already get OMP_NUM_THREADS=1.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def reasons(out):
    return {k: r["reject_reason"] for k, r in out.items() if r.get("reject_reason")}


# ---------------------------------------------------------------------------------- text-to-image
@pytest.fixture(scope="module")
def t2i_dir(tmp_path_factory):
    return text_to_image.build_tiny(tmp_path_factory.mktemp("flux") / "tiny", seed=0)


@pytest.fixture(scope="module")
def diptych(t2i_dir):
    return TextToImage(str(t2i_dir), left="ref", right="win", height=64, width=64, steps=STEPS)


def test_build_tiny_flux_layout(t2i_dir):
    index = json.loads((t2i_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxPipeline"
    assert index["tokenizer"] == ["transformers", "CLIPTokenizer"]
    assert index["tokenizer_2"][1].startswith("T5Tokenizer")
    for sub in ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        assert (t2i_dir / sub).is_dir(), sub
    transformer = json.loads((t2i_dir / "transformer" / "config.json").read_text())
    assert transformer["in_channels"] == 64 and transformer["guidance_embeds"] is True
    vae = json.loads((t2i_dir / "vae" / "config.json").read_text())
    assert vae["latent_channels"] == 16 and len(vae["block_out_channels"]) == 4  # 8x, as FLUX's VAE
    assert (vae["scaling_factor"], vae["shift_factor"]) == (0.3611, 0.1159)
    size = sum(p.stat().st_size for p in t2i_dir.rglob("*") if p.is_file())
    assert size < 5e6


def test_diptych_halves_sizes_and_rejects(diptych):
    rows = [
        {"key": "a", "prompt": "two side by side images of the same red toy", "seed": 1},
        {"key": "b", "prompt": "a dog on the beach, left and right", "seed": 2},
        {"key": "small", "prompt": "a cup", "seed": 3, "height": 32, "width": 48},
        {"key": "empty", "prompt": "  ", "seed": 4},
        {"key": "no_prompt", "seed": 5},
        {"key": "no_seed", "prompt": "a cat"},
        {"key": "odd_size", "prompt": "a cat", "seed": 6, "height": 40, "width": 64},
    ]
    out = by_key(diptych(batch_of(rows)))
    assert reasons(out) == {"empty": "empty_prompt", "no_prompt": "empty_prompt", "no_seed": "missing_seed",
                            "odd_size": "bad_size"}
    assert all(r["reject_stage"] == "text_to_image" for r in out.values() if r["reject_reason"])
    for key, shape in (("a", (64, 64, 3)), ("b", (64, 64, 3)), ("small", (32, 48, 3))):
        for col in ("ref", "win"):
            assert out[key][col].dtype == np.uint8 and out[key][col].shape == shape, (key, col)
        assert out[key]["time_text_to_image"] > 0
        assert "image" not in out[key] or out[key]["image"] is None
    # the random-weight model gives a real-valued, non-constant picture (not NaN cast to black)
    assert out["a"]["ref"].std() > 1 and out["a"]["win"].std() > 1
    assert not np.array_equal(out["a"]["ref"], out["a"]["win"])


def test_diptych_is_one_wide_image_split(t2i_dir, diptych):
    row = {"prompt": "two side by side images of a blue cup", "seed": 11}
    pair = rows_of(diptych(batch_of([row])))[0]
    wide = TextToImage(str(t2i_dir), mode="independent", output="canvas", height=64, width=128, steps=STEPS)
    canvas = rows_of(wide(batch_of([row])))[0]["canvas"]
    assert canvas.shape == (64, 128, 3)
    np.testing.assert_array_equal(np.concatenate([pair["ref"], pair["win"]], axis=1), canvas)


def test_same_seed_same_image_different_seed_different(diptych):
    prompt = "a photo of a white cat"
    batch = batch_of([{"key": "s7", "prompt": prompt, "seed": 7}, {"key": "s8", "prompt": prompt, "seed": 8}])
    first, again = by_key(diptych(batch)), by_key(diptych(batch))
    for col in ("ref", "win"):
        np.testing.assert_array_equal(first["s7"][col], again["s7"][col])
    # the noise depends on the row's seed only; in another batch the float sums run in another
    # order, which may move a pixel by one level after rounding, never more
    alone = by_key(diptych(batch_of([{"key": "s7", "prompt": prompt, "seed": 7}])))
    assert np.abs(first["s7"]["ref"].astype(int) - alone["s7"]["ref"].astype(int)).max() <= 1
    diff = np.abs(first["s7"]["ref"].astype(int) - first["s8"]["ref"].astype(int)).mean()
    assert diff > 5


def test_independent_mode_one_column(t2i_dir):
    worker = TextToImage(str(t2i_dir), mode="independent", height=48, width=32, steps=STEPS)
    # a numpy batch as Ray hands it; a row without its own size arrives with NaN in a float column
    out = by_key(worker({"key": np.array(["x", "y", "z", "w"]), "prompt": np.array(["a red cup", "", "a", "b"]),
                         "seed": np.array([1, 2, 3, np.nan]), "height": np.array([np.nan, 16, 32, 16]),
                         "width": np.array([np.nan, 16, 16, 16])}))
    assert out["x"]["image"].shape == (48, 32, 3) and out["x"]["image"].dtype == np.uint8
    assert out["z"]["image"].shape == (32, 16, 3)
    assert "ref" not in out["x"] and reasons(out) == {"y": "empty_prompt", "w": "missing_seed"}
    with pytest.raises(ValueError):
        TextToImage(str(t2i_dir), mode="triptych")


def test_nan_and_black_generations_are_rejected(diptych):
    good = np.random.default_rng(0).uniform(0.2, 0.8, (16, 32, 3)).astype(np.float32)
    assert generation_problem(good) is None
    assert generation_problem(np.full_like(good, np.nan)) == "nan_image"
    with_one_nan = good.copy()
    with_one_nan[3, 4, 1] = np.nan
    assert generation_problem(with_one_nan) == "nan_image"
    assert generation_problem(np.zeros_like(good)) == "black_image"
    # row level: a diptych with one black half is a reject naming that half
    half_black = good.copy()
    half_black[:, 16:] = 0
    rejected = diptych._outputs(half_black)
    assert isinstance(rejected, Reject) and rejected.reason == "black_image" and "win" in rejected.detail
    assert diptych._outputs(with_one_nan).reason == "nan_image"
    ok = diptych._outputs(good)
    assert ok["ref"].shape == ok["win"].shape == (16, 16, 3)


def test_text_to_image_in_ray_data(t2i_dir, ray_local):
    rows = [{"key": f"r{i}", "prompt": f"a red toy number {i}", "seed": i} for i in range(3)]
    rows.append({"key": "bad", "prompt": "", "seed": 9})
    ds = ray_local.data.from_items(rows).map_batches(
        TextToImage, fn_constructor_kwargs={"model": str(t2i_dir), "left": "ref", "right": "win", "height": 32, "width": 32, "steps": STEPS,
                                            "stage": "generate"},
        batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1))
    out = {r["key"]: r for r in ds.take_all()}
    assert len(out) == 4
    for i in range(3):
        assert not out[f"r{i}"].get("reject_reason")
        assert np.asarray(out[f"r{i}"]["ref"]).shape == (32, 32, 3)
        assert np.asarray(out[f"r{i}"]["win"]).dtype == np.uint8
    assert (out["bad"]["reject_stage"], out["bad"]["reject_reason"]) == ("generate", "empty_prompt")


# ------------------------------------------------------------------------------------- inpainting
@pytest.fixture(scope="module")
def fill_dir(tmp_path_factory):
    return inpainting.build_tiny(tmp_path_factory.mktemp("flux_fill") / "tiny", seed=0)


@pytest.fixture(scope="module")
def fill(fill_dir):
    return Inpainting(str(fill_dir), image="win", prompt="caption", output="lose", steps=STEPS)


def box_mask(h, w, top, left, bottom, right):
    m = np.zeros((h, w), bool)
    m[top:bottom, left:right] = True
    return m


def test_build_tiny_fill_layout(fill_dir):
    index = json.loads((fill_dir / "model_index.json").read_text())
    assert index["_class_name"] == "FluxFillPipeline"
    transformer = json.loads((fill_dir / "transformer" / "config.json").read_text())
    # noisy latents 64 + masked-image latents 64 + the 8x8 mask per latent cell packed 2x2 (256)
    assert (transformer["in_channels"], transformer["out_channels"]) == (384, 64)
    size = sum(p.stat().st_size for p in fill_dir.rglob("*") if p.is_file())
    assert size < 5e6


def test_inpainting_preserves_context_exactly_and_rejects(fill):
    win = noise(64, 80, seed=1)
    rgba = noise(64, 64, 4, seed=2)
    gray = noise(50, 72, None, seed=3)  # sides not multiples of 16: padded for the model, cropped back
    rows = [
        {"key": "ok", "win": win, "mask": box_mask(64, 80, 24, 30, 36, 44), "caption": "a green toy", "seed": 1},
        {"key": "rgba", "win": rgba, "mask": box_mask(64, 64, 10, 10, 20, 20).astype(np.uint8) * 255,
         "caption": "a cup", "seed": 2},
        {"key": "gray", "win": gray, "mask": box_mask(50, 72, 40, 60, 50, 72), "caption": "a dog", "seed": 3},
        {"key": "empty_mask", "win": win, "mask": np.zeros((64, 80), bool), "caption": "x", "seed": 4},
        {"key": "mask_size", "win": win, "mask": np.ones((64, 64), bool), "caption": "x", "seed": 5},
        {"key": "no_mask", "win": win, "caption": "x", "seed": 6},
        {"key": "no_caption", "win": win, "mask": box_mask(64, 80, 0, 0, 8, 8), "caption": "", "seed": 7},
        {"key": "one_px", "win": np.zeros((1, 1, 3), np.uint8), "mask": np.ones((1, 1), bool), "caption": "x",
         "seed": 8},
        {"key": "zero_px", "win": np.zeros((0, 0, 3), np.uint8), "mask": np.ones((0, 0), bool), "caption": "x",
         "seed": 9},
        {"key": "no_image", "mask": box_mask(64, 80, 0, 0, 8, 8), "caption": "x", "seed": 10},
    ]
    out = by_key(fill(batch_of(rows)))
    assert reasons(out) == {"empty_mask": "empty_mask", "mask_size": "mask_size", "no_mask": "missing_mask",
                            "no_caption": "empty_prompt", "one_px": "bad_image", "zero_px": "bad_image",
                            "no_image": "missing_image"}
    for key in ("ok", "rgba", "gray"):
        row, src = out[key], rows[[r["key"] for r in rows].index(key)]
        image = as_rgb(src["win"])
        mask = np.asarray(src["mask"]).astype(bool)
        lose, grown = row["lose"], row["inpaint_mask"]
        assert lose.dtype == np.uint8 and lose.shape == image.shape, key
        assert grown.dtype == bool and grown.shape == image.shape[:2], key
        np.testing.assert_array_equal(grown, dilate(mask, 16))
        assert grown[mask].all() and grown.sum() > mask.sum()
        # context: bit for bit outside the dilated mask
        assert np.abs(lose.astype(int) - image.astype(int))[~grown].max() == 0, key
        # subject region: re-generated
        assert np.abs(lose.astype(int) - image.astype(int))[mask].mean() > 5, key


def test_dilation_reaches_exactly_dilation_px(fill):
    image = noise(64, 64, seed=4)
    mask = np.zeros((64, 64), bool)
    mask[32, 32] = True
    row = rows_of(fill(batch_of([{"win": image, "mask": mask, "caption": "a red dot", "seed": 1}])))[0]
    grown = row["inpaint_mask"]
    assert grown[32, 16] and grown[32, 48] and grown[16, 32] and grown[48, 32]
    assert not grown[32, 15] and not grown[32, 49] and not grown[15, 32] and not grown[49, 32]
    assert not grown[32 - 12, 32 - 12]  # a disk, not a square
    assert np.array_equal(row["lose"][~grown], image[~grown])


def test_feather_stays_inside_the_mask():
    mask = box_mask(64, 64, 8, 8, 56, 56)
    alpha = feather(mask, 8)
    assert alpha.dtype == np.float32
    assert (alpha[~mask] == 0).all()
    assert alpha[32, 32] == 1.0 and alpha[8, 32] == pytest.approx(1 / 8)  # edge pixel: 1 px inside
    assert 0 < alpha[8 + 3, 32] < 1 and alpha[8 + 8, 32] == 1.0
    np.testing.assert_array_equal(feather(mask, 0), mask.astype(np.float32))


def test_inpainting_seeds(fill):
    image = noise(48, 48, seed=5)
    mask = box_mask(48, 48, 16, 16, 32, 32)

    def run(*seeds):
        rows = [{"key": str(i), "win": image, "mask": mask, "caption": "a toy", "seed": s}
                for i, s in enumerate(seeds)]
        return [r["lose"] for r in rows_of(fill(batch_of(rows)))]

    a, b = run(3, 4)
    (a_again,) = run(3)
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a.astype(int) - b.astype(int))[mask].mean() > 2


def test_inpainting_in_ray_data(fill_dir, ray_local):
    rows = [{"key": f"r{i}", "image": noise(32, 48, seed=i), "subject": box_mask(32, 48, 8, 8, 24, 24),
             "text": f"a blue toy {i}", "seed": i} for i in range(3)]
    rows.append({"key": "bad", "image": noise(32, 48), "subject": np.zeros((32, 48), bool), "text": "x", "seed": 0})
    ds = ray_local.data.from_items(rows).map_batches(
        Inpainting, fn_constructor_kwargs={"model": str(fill_dir), "steps": STEPS, "image": "image",
                                           "mask": "subject", "prompt": "text", "output": "lose", "dilation_px": 4},
        batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1))
    out = {r["key"]: r for r in ds.take_all()}
    assert len(out) == 4
    for i in range(3):
        row = out[f"r{i}"]
        assert not row.get("reject_reason")
        lose, grown = np.asarray(row["lose"]), np.asarray(row["inpaint_mask"])
        assert lose.shape == (32, 48, 3) and grown.dtype == bool and grown.sum() > 16 * 16
        assert np.array_equal(lose[~grown], rows[i]["image"][~grown])
    assert (out["bad"]["reject_stage"], out["bad"]["reject_reason"]) == ("inpainting", "empty_mask")
