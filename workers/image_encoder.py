"""The image encoder: DINOv2 or CLIP global and patch embeddings, pair cosine and image-text
similarity.

Used for the FocusDPO pre-filter and copy-paste check (cosine of reference and generated image),
UPER's subject reward (DINOv2 patch features, sec. 3.1.3) and CLIP image-text scores. The model
family is read from the checkpoint's config, so one worker serves facebook/dinov2-* and
openai/clip-vit-*.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.batch import Reject
from workers.base import Worker, image_of, is_list, text_of, torch_dtype

DINOV2 = ("dinov2", "dinov2_with_registers")


class ImageEncoder(Worker):
    """Input: `image` (and optionally a second image column `image_b`, a text column `text`).
    Output: `embedding` float32 [D], the L2-normalised global embedding (DINOv2: the CLS token
    after the final layer norm; CLIP: image_embeds, the projected pooled token); with
    `patches=True` also `patch_embeddings` float32 [N, D_vision], the patch tokens in raster
    order; with `image_b`, `cosine` float32 between the two global embeddings; with `text` (CLIP
    only), `text_similarity` float32, the cosine of image_embeds and text_embeds (CLIP's logit
    before its temperature).

    An image column may hold a list of views per row (UPER's R_sub: whole image, grid patches,
    crops); then `embedding` is [n, D] and `cosine` [n], view k of `image` against view k of
    `image_b`, all views of a batch embedded `views_per_forward` at a time. `embedding=None`
    leaves the embeddings out of the row. `fit="crop"` is the processor's own resize and centre
    crop; `fit="resize"` resizes the whole view to the model's input size, so no pixel of a patch
    is cut away."""

    role = "image_encoder"

    def __init__(self, model: str = "facebook/dinov2-giant", *, stage: str | None = None,
                 dtype: str = "bfloat16", device: str | None = None, image: str = "image",
                 image_b: str | None = None, text: str | None = None, patches: bool = False,
                 embedding: str = "embedding", patch_embeddings: str = "patch_embeddings",
                 cosine: str = "cosine", text_similarity: str = "text_similarity", fit: str = "crop",
                 views_per_forward: int = 256):
        super().__init__(model, stage=stage, dtype=dtype, device=device)
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

        self.kind = AutoConfig.from_pretrained(model).model_type
        if self.kind not in DINOV2 + ("clip",):
            raise ValueError(f"{model}: model type {self.kind!r} is neither DINOv2 nor CLIP")
        if text and self.kind != "clip":
            raise ValueError(f"{model}: image-text similarity needs a CLIP model, not {self.kind}")
        if fit not in ("crop", "resize"):
            raise ValueError(f"fit must be 'crop' or 'resize', not {fit!r}")
        self.image, self.image_b, self.text, self.patches = image, image_b, text, patches
        self.fit, self.views_per_forward = fit, views_per_forward
        self.out = {"embedding": embedding, "patches": patch_embeddings, "cosine": cosine,
                    "text_similarity": text_similarity}
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.tokenizer = AutoTokenizer.from_pretrained(model) if text else None
        self.model = AutoModel.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).to(self.device).eval()
        self._torch = torch

    def check(self, row: dict) -> dict:
        x = {"image": _views(row, self.image)}
        if self.image_b:
            x["image_b"] = _views(row, self.image_b)
            if isinstance(x["image"], list) != isinstance(x["image_b"], list) or (
                    isinstance(x["image"], list) and len(x["image"]) != len(x["image_b"])):
                raise Reject("bad_image", f"{self.image} and {self.image_b} do not have the same views")
        if self.text:
            x["text"] = text_of(row, self.text)
        return x

    def encode_images(self, images: list[np.ndarray]):
        """(L2-normalised global embeddings [B, D], patch tokens [B, N, D_vision])."""
        torch = self._torch
        kwargs = {}
        if self.fit == "resize":
            crop = self.processor.crop_size
            kwargs = {"do_center_crop": False, "size": {"height": crop["height"], "width": crop["width"]}}
        pixels = self.processor(images=images, return_tensors="pt", **kwargs)["pixel_values"]
        pixels = pixels.to(self.device, self.model.dtype)
        if self.kind == "clip":
            out = self.model.vision_model(pixel_values=pixels)
            glob = self.model.visual_projection(out.pooler_output)
            # the same final layer norm the pooled token gets before the projection
            patches = self.model.vision_model.post_layernorm(out.last_hidden_state[:, 1:])
        else:
            out = self.model(pixel_values=pixels)
            glob = out.pooler_output  # the CLS token after the final layer norm
            registers = getattr(self.model.config, "num_register_tokens", 0)
            patches = out.last_hidden_state[:, 1 + registers:]
        return torch.nn.functional.normalize(glob.float(), dim=-1), patches.float()

    def encode_texts(self, texts: list[str]):
        torch = self._torch
        tokens = self.tokenizer(texts, padding=True, truncation=True,
                                max_length=self.model.config.text_config.max_position_embeddings,
                                return_tensors="pt").to(self.device)
        out = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
        return torch.nn.functional.normalize(self.model.text_projection(out.pooler_output).float(), dim=-1)

    def predict(self, inputs: list[dict]) -> list[dict]:
        if isinstance(inputs[0]["image"], list):
            return self.predict_views(inputs)
        n = len(inputs)
        images = [x["image"] for x in inputs] + [x["image_b"] for x in inputs if self.image_b]
        with self._torch.inference_mode():
            glob, patches = self.encode_images(images)
            text = self.encode_texts([x["text"] for x in inputs]) if self.text else None
        glob_np = glob.cpu().numpy().astype(np.float32)
        out = [{self.out["embedding"]: glob_np[i]} if self.out["embedding"] else {} for i in range(n)]
        if self.patches:
            patches_np = patches[:n].cpu().numpy().astype(np.float32)
            for i in range(n):
                out[i][self.out["patches"]] = patches_np[i]
        if self.image_b:
            cos = (glob[:n] * glob[n:]).sum(-1).cpu().numpy().astype(np.float32)
            for i in range(n):
                out[i][self.out["cosine"]] = cos[i]
        if text is not None:
            sim = (glob[:n] * text).sum(-1).cpu().numpy().astype(np.float32)
            for i in range(n):
                out[i][self.out["text_similarity"]] = sim[i]
        return out

    def predict_views(self, inputs: list[dict]) -> list[dict]:
        """Rows of view lists: every view of the batch through the model in chunks, then split."""
        if any(not isinstance(x["image"], list) for x in inputs):
            raise ValueError("a batch mixes rows of single images and rows of views")
        images = [v for x in inputs for v in x["image"] + (x["image_b"] if self.image_b else [])]
        chunks = []
        with self._torch.inference_mode():
            for i in range(0, len(images), self.views_per_forward):
                chunks.append(self.encode_images(images[i:i + self.views_per_forward])[0].cpu().numpy())
        glob = np.concatenate(chunks).astype(np.float32)
        out, i = [], 0
        for x in inputs:
            n = len(x["image"])
            a = glob[i:i + n]
            row = {self.out["embedding"]: a} if self.out["embedding"] else {}
            if self.image_b:
                b = glob[i + n:i + 2 * n]
                row[self.out["cosine"]] = (a * b).sum(-1).astype(np.float32)
                i += n
            out.append(row)
            i += n
        return out


def _views(row: dict, column: str):
    """One image, or a list of them when the column holds views."""
    value = row.get(column)
    if is_list(value):
        if len(value) == 0:
            raise Reject("missing_image", f"{column}: no views")
        return [image_of({column: v}, column) for v in value]
    return image_of(row, column)


def local_clip_tokenizer():
    """CLIP's vocabulary starts with the 256 bytes, then the same with the end-of-word mark;
    without merges every word is spelled in bytes. Built here: no hub."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny(directory, seed: int = 0, kind: str = "dinov2") -> Path:
    """A 2-layer DINOv2 (hidden 32, 14 px patches, 56 px crops: 4x4 patches) with the BiT image
    processor DINOv2 ships with, or a 2-layer CLIP (vision 14 px patches at 56 px, text over a
    byte-level vocabulary) with CLIPProcessor and a CLIPTokenizer built from that vocabulary.
    Random weights, saved with save_pretrained."""
    import torch
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "dinov2":
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        # facebook/dinov2-*: resize the short side to 256, centre-crop 224; here 64 and 56
        BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                          image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(directory)
        config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                              image_size=56, patch_size=14)
        Dinov2Model(config).save_pretrained(directory)
    elif kind == "clip":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        tokenizer = local_clip_tokenizer()
        vocab = tokenizer.get_vocab()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
        config = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=56, patch_size=14),
            projection_dim=16)
        CLIPModel(config).save_pretrained(directory)
    else:
        raise ValueError(f"kind must be 'dinov2' or 'clip', not {kind!r}")
    return directory


def full_model(kind: str = "dinov2"):
    """The production encoders with random weights. dinov2: facebook/dinov2-base, transformers'
    Dinov2Config defaults (ViT-B/14) except the checkpoint's 518 px position grid, 86.6M
    parameters. clip: openai/clip-vit-large-patch14 (ViT-L/14 at 224 px, 12-layer text tower,
    projection 768), 428M parameters."""
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        return Dinov2Model(Dinov2Config(image_size=518))
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        tokenizer = local_clip_tokenizer()
        return CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14),
            projection_dim=768))
    raise ValueError(f"kind must be 'dinov2' or 'clip', not {kind!r}")


def build_full(directory, seed: int = 0, kind: str = "dinov2", device: str | None = None) -> Path:
    """full_model(kind) saved like build_tiny, with the real checkpoints' processors (DINOv2:
    short side 256, centre crop 224; CLIP: 224 and 224) and the local CLIP tokenizer."""
    from transformers import BitImageProcessor, CLIPImageProcessor, CLIPProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from workers.tiny import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "dinov2":
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(directory)
    else:
        image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        CLIPProcessor(image_processor=image_processor, tokenizer=local_clip_tokenizer()).save_pretrained(directory)
    with random_init(seed, device, dtype="float32"):  # small: saved in float32, cast by the worker
        full_model(kind).save_pretrained(directory)
    return directory
