"""The VLM (Qwen2.5-VL) and image encoder (DINOv2 / CLIP) workers on tiny random-weight builds,
loaded through the same from_pretrained path as the real checkpoints."""
import io
import os

import numpy as np
import pytest
from PIL import Image

os.environ["HF_HUB_OFFLINE"] = "1"

from runtime.rows import batch_of  # noqa: E402
from tests.helpers import by_key, noise  # noqa: E402
from schemas.contract import as_rgb  # noqa: E402
from builders import image_encoder, vlm  # noqa: E402
from workers.image_encoder import ImageEncoder  # noqa: E402
from workers.vlm import VLM  # noqa: E402


def reasons(out):
    return {k: (r["reject_stage"], r["reject_reason"]) for k, r in out.items() if r.get("reject_reason")}


# ------------------------------------------------------------------------------------------ vlm
@pytest.fixture(scope="module")
def vlm_dir(tmp_path_factory):
    return vlm.build_tiny(tmp_path_factory.mktemp("vlm") / "tiny")


@pytest.fixture(scope="module")
def two_image_vlm(vlm_dir):
    return VLM(str(vlm_dir), stage="judge", images=["image", "image_b"], max_new_tokens=8)


def test_build_tiny_vlm_layout(vlm_dir):
    names = {p.name for p in vlm_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "processor_config.json",
            "tokenizer.json", "chat_template.jinja"} <= names
    assert sum(p.stat().st_size for p in vlm_dir.iterdir()) < 5e6


def test_vlm_two_images_per_row_and_bad_inputs(two_image_vlm):
    png = io.BytesIO()
    Image.fromarray(noise(40, 30, seed=9)).save(png, format="PNG")
    rows = [
        {"key": "ok", "image": noise(64, 80, seed=1), "image_b": noise(120, 40, seed=2), "prompt": "Same subject?"},
        {"key": "gray_rgba", "image": noise(33, 47, None, seed=3), "image_b": noise(50, 50, 4, seed=4),
         "prompt": "Describe both."},
        {"key": "bytes", "image": png.getvalue(), "image_b": noise(28, 28, seed=5), "prompt": "What is it?"},
        {"key": "tiny", "image": noise(64, 64), "image_b": np.zeros((1, 1, 3), np.uint8), "prompt": "x"},
        {"key": "empty", "image": np.zeros((0, 0, 3), np.uint8), "image_b": noise(64, 64), "prompt": "x"},
        {"key": "sliver", "image": noise(8, 2000), "image_b": noise(64, 64), "prompt": "x"},
        {"key": "corrupt", "image": b"\xff\xd8 not a jpeg", "image_b": noise(64, 64), "prompt": "x"},
        {"key": "noprompt", "image": noise(64, 64), "image_b": noise(64, 64), "prompt": "   "},
        {"key": "nocolumn", "image": noise(64, 64), "prompt": "x"},
    ]
    out = by_key(two_image_vlm(batch_of(rows)))
    for k in ("ok", "gray_rgba", "bytes"):
        assert isinstance(out[k]["answer"], str), k
        assert out[k]["reject_reason"] is None
        assert out[k]["time_judge"] > 0
    assert reasons(out) == {"tiny": ("judge", "bad_image"), "empty": ("judge", "bad_image"),
                            "sliver": ("judge", "bad_image"), "corrupt": ("judge", "bad_image"),
                            "noprompt": ("judge", "empty_prompt"), "nocolumn": ("judge", "missing_image")}
    assert out["nocolumn"]["reject_detail"] == "image_b"
    # max_new_tokens=8 byte tokens decode to at most 8 characters
    assert all(len(out[k]["answer"]) <= 8 for k in ("ok", "gray_rgba", "bytes"))


def test_vlm_batched_greedy_equals_row_by_row(vlm_dir):
    """Left padding and greedy decoding: a row's answer does not depend on its batch-mates (right
    padding changes the shorter row's answer) and a second run gives the same answers."""
    w = VLM(str(vlm_dir), max_new_tokens=8, device="cpu")  # exact: float32 on the CPU
    rows = [{"key": "a", "image": noise(64, 80, seed=1), "prompt": "Hi"},
            {"key": "b", "image": noise(200, 150, seed=2), "prompt": "Describe the main subject of this photo."},
            {"key": "c", "image": noise(30, 90, seed=3), "prompt": "Colour?"}]
    batched = [by_key(w(batch_of(rows)))[r["key"]]["answer"] for r in rows]
    alone = [by_key(w(batch_of([r])))[r["key"]]["answer"] for r in rows]
    again = [by_key(w(batch_of(rows)))[r["key"]]["answer"] for r in rows]
    assert all(isinstance(a, str) for a in batched)
    assert batched == alone == again


def test_vlm_prompt_layout_and_max_pixels(vlm_dir, two_image_vlm):
    cfg = two_image_vlm.model.config
    inputs = [{"images": [noise(280, 280), noise(56, 84)], "prompt": "Compare."},
              {"images": [noise(100, 100), noise(64, 64)], "prompt": "A much longer question about both."}]
    batch = two_image_vlm.model_inputs(inputs)
    ids = batch["input_ids"]
    # each row: its two images, in column order, each wrapped in vision start/end
    assert ((ids == cfg.vision_start_token_id).sum(1) == 2).all()
    assert ((ids == cfg.vision_end_token_id).sum(1) == 2).all()
    grid = batch["image_grid_thw"]
    assert grid.tolist()[:2] == [[1, 20, 20], [1, 4, 6]]  # 14 px patches of 280x280 and 56x84
    assert (ids == cfg.image_token_id).sum().item() == int(grid.prod(1).sum()) // 4  # 2x2 patch merge
    assert (ids[:, -1] != two_image_vlm.processor.tokenizer.pad_token_id).all()  # left padded
    text = two_image_vlm.processor.tokenizer.decode(ids[0], skip_special_tokens=False)
    assert "You are a helpful assistant." in text and text.endswith("Compare.<|im_end|>\n<|im_start|>assistant\n")
    bounded = VLM(str(vlm_dir), images=["image", "image_b"], max_pixels=28 * 28 * 4, system="Judge strictly.")
    batch = bounded.model_inputs(inputs)
    grid = batch["image_grid_thw"]
    assert (grid.prod(1) <= 16).all() and grid[0].tolist() == [1, 4, 4]
    text = bounded.processor.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=False)
    assert "<|im_start|>system\nJudge strictly.<|im_end|>" in text and "helpful assistant" not in text


def test_vlm_several_questions_per_row(vlm_dir):
    w = VLM(str(vlm_dir), images=["image", "crop"])
    ref, c1, c2 = noise(56, 56, seed=1), noise(42, 56, seed=2), noise(56, 28, seed=3)
    rows = [
        {"key": "many", "image": ref, "crop": [c1, c2], "prompt": ["Describe the dog.", "Describe the cat."]},
        {"key": "one", "image": ref, "crop": c1, "prompt": "Describe the dog."},
        {"key": "shared", "image": ref, "crop": c1, "prompt": ["Q one?", "Q two?"]},
        {"key": "mismatch", "image": ref, "crop": [c1], "prompt": ["a?", "b?"]},
        {"key": "blank", "image": ref, "crop": c1, "prompt": ["a?", " "]},
    ]
    out = by_key(w(batch_of(rows)))
    assert isinstance(out["many"]["answer"], list) and len(out["many"]["answer"]) == 2
    assert isinstance(out["one"]["answer"], str) and len(out["shared"]["answer"]) == 2
    # each question is answered as if asked alone: the first question of "many" is the "one" row
    assert out["many"]["answer"][0] == out["one"]["answer"]
    alone = by_key(w(batch_of([{"key": "c2", "image": ref, "crop": c2, "prompt": "Describe the cat."}])))
    assert out["many"]["answer"][1] == alone["c2"]["answer"]
    assert reasons(out) == {"mismatch": ("vlm", "bad_image"), "blank": ("vlm", "empty_prompt")}


def test_vlm_in_ray_data(vlm_dir, ray_local):
    rows = [{"key": f"r{i}", "image": noise(40 + 8 * i, 56, seed=i), "question": f"Question {i}?"} for i in range(3)]
    rows.append({"key": "bad", "image": noise(40, 56), "question": ""})
    ds = ray_local.data.from_items(rows).map_batches(
        VLM, fn_constructor_kwargs={"model": str(vlm_dir), "prompt": "question", "output": "caption",
                                    "max_new_tokens": 4, "stage": "caption"},
        batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1))
    out = {r["key"]: r for r in ds.take_all()}
    assert len(out) == 4
    assert all(isinstance(out[f"r{i}"]["caption"], str) and not out[f"r{i}"].get("reject_reason") for i in range(3))
    assert (out["bad"]["reject_stage"], out["bad"]["reject_reason"]) == ("caption", "empty_prompt")


# -------------------------------------------------------------------------------- image encoder
@pytest.fixture(scope="module")
def dinov2_dir(tmp_path_factory):
    return image_encoder.build_tiny(tmp_path_factory.mktemp("dinov2") / "tiny", kind="dinov2")


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return image_encoder.build_tiny(tmp_path_factory.mktemp("clip") / "tiny", kind="clip")


def encoder_rows():
    a = noise(64, 80, seed=1)
    return [
        {"key": "same", "image": a, "image_b": a.copy(), "caption": "a photo of a dog"},
        {"key": "diff", "image": noise(90, 60, seed=2), "image_b": noise(64, 64, seed=3), "caption": "a red cup"},
        {"key": "gray_rgba", "image": noise(30, 30, None, seed=4), "image_b": noise(30, 40, 4, seed=5),
         "caption": "Cat."},
        {"key": "tiny", "image": np.zeros((1, 1, 3), np.uint8), "image_b": a, "caption": "x"},
        {"key": "empty", "image": a, "image_b": np.zeros((0, 0, 3), np.uint8), "caption": "x"},
        {"key": "nocolumn", "image": a, "caption": "x"},
        {"key": "noprompt", "image": a, "image_b": a, "caption": " "},
    ]


def test_dinov2_embeddings_patches_and_pair_cosine(dinov2_dir):
    import torch
    from transformers import AutoModel

    # exact comparisons below are against float32 on the CPU
    w = ImageEncoder(str(dinov2_dir), stage="copy_paste", image_b="image_b", patches=True, device="cpu")
    assert w.kind == "dinov2"
    out = by_key(w(batch_of(encoder_rows())))
    assert reasons(out) == {"tiny": ("copy_paste", "bad_image"), "empty": ("copy_paste", "bad_image"),
                            "nocolumn": ("copy_paste", "missing_image")}  # no text column: no prompt needed
    side, patch = w.processor.crop_size["height"], w.model.config.patch_size
    for k in ("same", "diff", "gray_rgba", "noprompt"):
        e, p = out[k]["embedding"], out[k]["patch_embeddings"]
        assert e.dtype == np.float32 and e.shape == (32,)
        assert np.linalg.norm(e) == pytest.approx(1.0, abs=1e-5)
        assert p.dtype == np.float32 and p.shape == ((side // patch) ** 2, 32) == (16, 32)
    assert out["same"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out["noprompt"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out["diff"]["cosine"] < 0.9999
    # the global embedding is DINOv2's CLS token, as the model itself pools it; batch-independent
    model = AutoModel.from_pretrained(str(dinov2_dir)).eval()
    pixels = w.processor(images=[encoder_rows()[1]["image"]], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = model(pixel_values=pixels)
    cls = torch.nn.functional.normalize(ref.pooler_output, dim=-1)[0].numpy()
    np.testing.assert_allclose(out["diff"]["embedding"], cls, atol=1e-5)
    np.testing.assert_allclose(out["diff"]["patch_embeddings"], ref.last_hidden_state[0, 1:].numpy(), atol=1e-4)
    alone = by_key(w(batch_of(encoder_rows()[1:2])))["diff"]
    np.testing.assert_allclose(alone["embedding"], out["diff"]["embedding"], atol=1e-5)
    assert alone["cosine"] == pytest.approx(out["diff"]["cosine"], abs=1e-5)


def test_views_per_row_with_the_whole_view_resized(dinov2_dir):
    """UPER's R_sub: a list of views per row; view k of `image` against view k of `image_b`, each
    resized whole to the model's input (no centre crop), chunked through the model."""
    import torch
    from transformers import AutoModel

    views_a = [noise(224, 224, seed=i) for i in range(5)]
    views_b = [views_a[0].copy()] + [noise(224, 224, seed=10 + i) for i in range(4)]
    w = ImageEncoder(str(dinov2_dir), stage="subject_reward", image="a", image_b="b", cosine="cosines",
                     fit="resize", views_per_forward=3, device="cpu")
    rows = [{"key": "views", "a": views_a, "b": views_b}, {"key": "short", "a": views_a, "b": views_b[:2]},
            {"key": "none", "a": [], "b": []}]
    out = by_key(w(batch_of(rows)))
    assert reasons(out) == {"short": ("subject_reward", "bad_image"), "none": ("subject_reward", "missing_image")}
    cos, emb = out["views"]["cosines"], out["views"]["embedding"]
    assert cos.shape == (5,) and emb.shape == (5, 32) and cos[0] == pytest.approx(1.0, abs=1e-5)
    # each cosine is that of the two views' CLS tokens, the views resized to 56 x 56 uncropped
    model = AutoModel.from_pretrained(str(dinov2_dir)).eval()
    side = w.processor.crop_size["height"]
    pixels = w.processor(images=views_a + views_b, return_tensors="pt", do_center_crop=False,
                         size={"height": side, "width": side})["pixel_values"]
    assert pixels.shape[-2:] == (side, side)
    with torch.no_grad():
        cls = torch.nn.functional.normalize(model(pixel_values=pixels).pooler_output, dim=-1).numpy()
    np.testing.assert_allclose(cos, (cls[:5] * cls[5:]).sum(-1), atol=1e-5)
    cropped = ImageEncoder(str(dinov2_dir), image="a", image_b="b", device="cpu")  # centre crop: other pixels
    other = by_key(cropped(batch_of([{"key": "k", "a": views_a[1], "b": views_b[1]}])))["k"]["cosine"]
    assert other != pytest.approx(cos[1], abs=1e-6)
    with pytest.raises(ValueError, match="fit"):
        ImageEncoder(str(dinov2_dir), fit="pad")


def test_dinov2_rejects_text_similarity(dinov2_dir):
    with pytest.raises(ValueError, match="CLIP"):
        ImageEncoder(str(dinov2_dir), text="caption")


def test_clip_embeddings_and_text_similarity(clip_dir):
    import torch
    from transformers import AutoProcessor, CLIPModel

    w = ImageEncoder(str(clip_dir), image_b="image_b", text="caption", patches=True, device="cpu")
    assert w.kind == "clip"
    out = by_key(w(batch_of(encoder_rows())))
    assert reasons(out) == {"tiny": ("image_encoder", "bad_image"), "empty": ("image_encoder", "bad_image"),
                            "nocolumn": ("image_encoder", "missing_image"),
                            "noprompt": ("image_encoder", "empty_prompt")}
    for k in ("same", "diff", "gray_rgba"):
        assert out[k]["embedding"].shape == (16,)  # projection_dim
        assert np.linalg.norm(out[k]["embedding"]) == pytest.approx(1.0, abs=1e-5)
        assert out[k]["patch_embeddings"].shape == (16, 32)  # (56 / 14)^2 tokens of the vision width
        assert -1.0 <= out[k]["text_similarity"] <= 1.0
    assert out["same"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out["diff"]["cosine"] < 0.9999
    # CLIP's own forward: image_embeds and logits_per_image = exp(logit_scale) * cosine
    model, proc = CLIPModel.from_pretrained(str(clip_dir)).eval(), AutoProcessor.from_pretrained(str(clip_dir))
    rows = encoder_rows()[:3]
    batch = proc(text=[r["caption"] for r in rows], images=[as_rgb(r["image"]) for r in rows],
                 return_tensors="pt", padding=True)
    with torch.no_grad():
        ref = model(**batch)
    cosine = (ref.logits_per_image.diag() / model.logit_scale.exp()).detach().numpy()
    np.testing.assert_allclose([out[r["key"]]["text_similarity"] for r in rows], cosine, atol=1e-5)
    np.testing.assert_allclose(np.stack([out[r["key"]]["embedding"] for r in rows]), ref.image_embeds.numpy(), atol=1e-5)


def test_image_encoder_in_ray_data(dinov2_dir, ray_local):
    a = noise(48, 48, seed=1)
    rows = [{"key": "same", "ref": a, "gen": a.copy()}, {"key": "diff", "ref": a, "gen": noise(48, 64, seed=2)},
            {"key": "tiny", "ref": a, "gen": np.zeros((1, 1, 3), np.uint8)}]
    ds = ray_local.data.from_items(rows).map_batches(
        ImageEncoder, fn_constructor_kwargs={"model": str(dinov2_dir), "image": "ref", "image_b": "gen",
                                             "embedding": "ref_embedding", "cosine": "copy_paste_cosine"},
        batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1))
    out = {r["key"]: r for r in ds.take_all()}
    assert out["same"]["copy_paste_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out["diff"]["copy_paste_cosine"] < 0.9999
    assert np.asarray(out["diff"]["ref_embedding"]).shape == (32,)
    assert out["tiny"]["reject_reason"] == "bad_image"
