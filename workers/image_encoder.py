"""The image encoder: DINOv2 or CLIP global and patch embeddings, pair cosine and image-text
similarity.

Used for the FocusDPO pre-filter and copy-paste check (cosine of reference and generated image),
UPER's subject reward (DINOv2 patch features, sec. 3.1.3) and CLIP image-text scores. The model
family is read from the checkpoint's config, so one worker serves facebook/dinov2-* and
openai/clip-vit-*.
"""
from __future__ import annotations

import numpy as np

from runtime.rows import Reject
from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of, is_list, text_of, torch_dtype

DINOV2 = ("dinov2", "dinov2_with_registers")


# model id fragment -> (embedding width, patch-token width, patch tokens at 224 px); an unknown
# model (a local path) is taken for DINOv2-base, the gpu configs' encoder
ENCODER_WIDTHS = {"dinov2-small": (384, 384, 256), "dinov2-base": (768, 768, 256), "dinov2-large": (1024, 1024, 256),
                  "dinov2-giant": (1536, 1536, 256), "clip-vit-base-patch32": (512, 768, 49),
                  "clip-vit-base-patch16": (512, 768, 196), "clip-vit-large-patch14": (768, 1024, 256)}
SIMULATED_COSINE = 0.9  # above any pre-filter (DIP's opt-in 0.5), below copy-paste (DIP 0.98, UPER's penalty 0.95)


def encoder_widths(model: str) -> tuple[int, int, int]:
    return next((v for k, v in ENCODER_WIDTHS.items() if k in model.lower()), ENCODER_WIDTHS["dinov2-base"])


def simulated_image_encoder(w, row: dict) -> dict:
    """A simulated accelerator's embeddings: random unit vectors of the model's widths, cosines at
    SIMULATED_COSINE."""
    a = w.args
    value = row.get(a["image"])
    views = (len(value),) if is_list(value) else ()  # a list of views: [n, D] and n cosines
    if not views:
        image_of(row, a["image"])
    dim, patch_dim, patches = encoder_widths(w.model_id)
    out = {}
    if a["embedding"]:
        v = w.rng.standard_normal(views + (dim,)).astype(np.float32)
        out[a["embedding"]] = v / np.linalg.norm(v, axis=-1, keepdims=True)
    if a["patches"] and not views:
        out[a["patch_embeddings"]] = w.rng.standard_normal((patches, patch_dim)).astype(np.float32)
    if a["image_b"]:
        out[a["cosine"]] = np.full(views, SIMULATED_COSINE, np.float32) if views else np.float32(SIMULATED_COSINE)
    if a["text"]:
        out[a["text_similarity"]] = np.float32(0.3)  # CLIP's image-text cosine of a matching caption
    return out


@register_worker
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
    builder = Builder("builders.image_encoder", {"kind": "dinov2"})
    cost = Cost(0.004, per_batch=0.01, source="DINOv2 ViT-B/14 at 224: ~250+ images/s a GPU "
                                             "(facebookresearch/dinov2 reports)")
    simulated = staticmethod(simulated_image_encoder)
    inputs = ("image", "image_b", "text")

    def __init__(self, model: str = "facebook/dinov2-giant", *, dtype: str = "bfloat16", image: str = "image",
                 image_b: str | None = None, text: str | None = None, patches: bool = False,
                 embedding: str | None = "embedding", patch_embeddings: str = "patch_embeddings",
                 cosine: str = "cosine", text_similarity: str = "text_similarity", fit: str = "crop",
                 views_per_forward: int = 256, **common):
        super().__init__(model, dtype=dtype, **common)
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

    @classmethod
    def columns(cls, image: str = "image", image_b: str | None = None, text: str | None = None,
                patches: bool = False, embedding: str | None = "embedding", patch_embeddings: str = "patch_embeddings",
                cosine: str = "cosine", text_similarity: str = "text_similarity", **kwargs):
        reads = [c for c in (image, image_b, text) if c]
        writes = [embedding] if embedding else []
        writes += ([patch_embeddings] if patches else []) + ([cosine] if image_b else []) + (
            [text_similarity] if text else [])
        return reads, writes

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
