"""The aesthetic score predictor of MultiID's filtering (WithAnyone, seed 002, appendix C: "Images
with low aesthetic scores ... were excluded", citing discus0434's aesthetic-predictor-v2-5): a
vision-language image backbone's L2-normalised image embedding through a small MLP regressor.

Two published predictors have this shape, and both load here:
- LAION's improved aesthetic predictor (christophschuhmann/improved-aesthetic-predictor): the
  image embedding of openai/clip-vit-large-patch14 (CLIP's projected image_embeds, 768-d) into
  `MLP.layers`, whose state dict (`layers.0.weight` ... `layers.7.bias`) is the file
  sac+logos+ava1-l14-linearMSE.pth. Real config: model=<a local copy of
  openai/clip-vit-large-patch14>, head=<path of sac+logos+ava1-l14-linearMSE.pth>.
- aesthetic-predictor-v2-5 (discus0434, the paper's citation): the pooled output of
  google/siglip-so400m-patch14-384's vision tower (1152-d) into `scoring_head`
  (`scoring_head.0.weight` ... `scoring_head.8.bias`), the file aesthetic_predictor_v2_5.pth.
  Real config: model=<a local copy of google/siglip-so400m-patch14-384>,
  head=<path of aesthetic_predictor_v2_5.pth>.
Scores are on the scale each head was trained on (AVA-style 1-10).

The backbone loads with AutoModel and embeds with its get_image_features (CLIP: the projected
pooled token, LAION's `encode_image`; SigLIP: the vision tower's attention-pooled output, v2.5's
`pooler_output`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of, torch_dtype

HEAD_FILE = "aesthetic_head.pth"  # the head's default place: beside the backbone's checkpoint
# model type -> the width of get_image_features' embedding, from the checkpoint's config
EMBEDDING_WIDTH = {
    "clip": lambda config: config.projection_dim,
    "siglip": lambda config: config.vision_config.hidden_size,
}


def laion_mlp(dim: int):
    """LAION's `MLP.layers` (improved-aesthetic-predictor, simple_inference.py): five linear layers,
    no activation, dropout between the first four."""
    from torch import nn

    return nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                         nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))


def v2_5_head(dim: int):
    """aesthetic-predictor-v2-5's `scoring_head`: the same linear layers, a dropout also before the
    last one (so the last linear is module 8, not 7)."""
    from torch import nn

    return nn.Sequential(nn.Linear(dim, 1024), nn.Dropout(0.5), nn.Linear(1024, 128), nn.Dropout(0.5),
                         nn.Linear(128, 64), nn.Dropout(0.5), nn.Linear(64, 16), nn.Dropout(0.2), nn.Linear(16, 1))


# state-dict prefix -> layout; a bare nn.Sequential's state dict (no prefix) is told by its last layer
HEADS = {"layers.": laion_mlp, "scoring_head.": v2_5_head}


def load_head(state: dict):
    """The head of a state dict with LAION's keys (`layers.N.*`), v2.5's (`scoring_head.N.*`) or a
    bare Sequential's (`N.*`), loaded strictly: a file of another layout is an error."""
    prefix = next((p for p in HEADS if state and all(k.startswith(p) for k in state)), "")
    state = {k[len(prefix):]: v for k, v in state.items()}
    if "0.weight" not in state:
        raise ValueError(f"not an aesthetic head: keys {sorted(state)[:4]}...")
    make = HEADS.get(prefix) or (v2_5_head if "8.weight" in state else laion_mlp)
    head = make(state["0.weight"].shape[1])
    head.load_state_dict(state)
    return head


def simulated_aesthetic(w, row: dict) -> dict:
    """A simulated accelerator's score: 6 on LAION's 1-10 scale, above any floor."""
    image_of(row, w.args["image"])
    return {w.args["prefix"] + "aesthetic": np.float32(6.0)}


@register_worker
class Aesthetic(Worker):
    """Per image: `aesthetic` float32, the predicted aesthetic score (column name takes `prefix`).

    `model`: a CLIP or SigLIP checkpoint directory (or a model id in the local Hugging Face cache);
    `head`: the MLP's state dict (torch.save'd), by default `<model>/aesthetic_head.pth`. The
    backbone runs in `dtype` on GPUs; the normalised embedding and the head in float32."""

    role = "aesthetic"
    builder = Builder("builders.aesthetic")
    cost = Cost(0.005, per_batch=0.01, source="CLIP ViT-L/14 at 224 + an MLP head: ~200 images/s in fp16")
    simulated = staticmethod(simulated_aesthetic)
    inputs = ("image",)

    def __init__(self, model: str, *, head: str | None = None, dtype: str = "bfloat16", image: str = "image",
                 prefix: str = "", **common):
        super().__init__(model, dtype=dtype, **common)
        import torch
        from transformers import AutoConfig, AutoImageProcessor, AutoModel

        config = AutoConfig.from_pretrained(model)
        if config.model_type not in EMBEDDING_WIDTH:
            raise ValueError(f"{model}: model type {config.model_type!r} is neither CLIP nor SigLIP")
        if head is None:
            if not Path(model).is_dir():
                raise ValueError(f"{model} is not a local directory: give head=, the aesthetic head's .pth")
            head = str(Path(model) / HEAD_FILE)
        self.image, self.prefix = image, prefix
        self.head = load_head(torch.load(head, map_location="cpu", weights_only=True))
        dim, width = self.head[0].in_features, EMBEDDING_WIDTH[config.model_type](config)
        if dim != width:
            raise ValueError(f"{head}: the head takes {dim}-d embeddings, {model} gives {width}-d")
        self.head = self.head.to(self.device).eval()
        # the image processor alone: the tokenizer of the processor is never used
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).to(self.device).eval()
        self._torch = torch

    @classmethod
    def columns(cls, image: str = "image", prefix: str = "", **kwargs):
        return [image], [prefix + "aesthetic"]

    def check(self, row: dict) -> dict:
        return {"image": image_of(row, self.image)}

    def predict(self, inputs: list[dict]) -> list[dict]:
        torch = self._torch
        pixels = self.processor(images=[x["image"] for x in inputs], return_tensors="pt")["pixel_values"]
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels.to(self.device, self.model.dtype))
            # transformers 5 returns the model output with the embedding as its pooler_output, 4.x the tensor
            out = out if isinstance(out, torch.Tensor) else out.pooler_output
            # both predictors score the unit-length embedding
            embedding = torch.nn.functional.normalize(out.float(), dim=-1)
            scores = self.head(embedding)[:, 0].cpu().numpy().astype(np.float32)
        return [{self.prefix + "aesthetic": s} for s in scores]
