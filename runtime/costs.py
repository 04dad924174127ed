"""What a model step costs at production size: the cost table that the simulated accelerators
(workers/simulated.py) sleep by, and that the bound and `pools: auto` (runtime/pools.py) divide
the cluster's GPUs by.

A role's Cost is GPU-seconds on one whole H100 per call (`per_batch`) plus per sample
(`per_sample`), at the role's reference size; a diffusion role's per-sample cost scales with the
step's sampler steps and output pixels (a DIP diptych is 2048x1024: twice the pixels of one
image). An actor holding a share u < 1 of a device gets u of its compute (time-slicing), so its
batch takes 1/u as long: a pool's capacity is its GPUs x batch / batch seconds, however it is cut
into actors. `min_gpus` is the smallest share one copy of the model fits in (its memory on an 80
GB device), which bounds how finely `pools: auto` may cut it.

The defaults are public figures or estimates from them, each cited in `source`; pass your own
table (`cost_table:` in a config, `--costs` to benchmarks/simulated.py) as YAML:

    vlm: {per_sample: 4.0}                # replaces that field, keeps the rest
    text_to_image: {per_sample: 3.0, source: "ours, torch.compile + fp8"}
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from pathlib import Path

import yaml

REFERENCE_PIXELS = 1024 * 1024


@dataclass(frozen=True)
class Cost:
    per_sample: float  # GPU-seconds per sample on one whole device, at the reference size
    per_batch: float = 0.0  # GPU-seconds per call whatever its size (processor, launch, padding)
    min_gpus: float = 0.0625  # the smallest device share one copy of the model fits in
    steps: int | None = None  # diffusion roles: the sampler steps per_sample is given for
    pixels: int | None = None  # diffusion roles: the output pixels per_sample is given for
    source: str = ""

    def scale(self, step: dict) -> float:
        """How much one sample of this step costs against the reference: its steps and pixels."""
        s = 1.0
        if self.steps and step.get("steps"):
            s *= step["steps"] / self.steps
        if self.pixels and step.get("height") and step.get("width"):
            s *= step["height"] * step["width"] * (2 if step.get("mode") == "diptych" else 1) / self.pixels
        return s

    def batch_seconds(self, n: int, step: dict | None = None, gpus: float = 1.0) -> float:
        """Seconds a call on n samples of `step` (its worker arguments) takes on a share `gpus`."""
        return (self.per_batch + self.per_sample * n * self.scale(step or {})) / gpus

    def per_sample_seconds(self, batch: int, step: dict | None = None) -> float:
        """GPU-seconds per sample at this batch size: what a pool's share of the cluster divides."""
        return self.batch_seconds(batch, step) / batch


FLUX_H100 = ("FLUX.1 dev in bf16 with diffusers, 1024x1024, 28 steps: about 6.5 s an image on one H100 "
             "(huggingface/flux-fast's baseline, before its ~2.5x from torch.compile + fp8); 33 GB of weights")
DEFAULT_COSTS: dict[str, Cost] = {
    # one copy per device: 33 GB of weights and a batch of 2048x1024 diptychs' activations
    "text_to_image": Cost(6.5, steps=28, pixels=REFERENCE_PIXELS, min_gpus=1.0, source=FLUX_H100),
    # FLUX.1 Fill is the same 12B transformer with the masked image as extra input channels; it
    # is run at the model card's 50 steps, so a 1024x1024 sample costs 50/28 of the above
    "inpainting": Cost(6.5, steps=28, pixels=REFERENCE_PIXELS, min_gpus=1.0,
                       source="FLUX.1 Fill dev: FLUX.1 dev's cost per step (same transformer), scaled by steps"),
    # Qwen2.5-VL-7B in bf16, HF generate, batch 16: two ~1 MP images are ~2.7k prefill tokens a
    # sample (one token per 28x28 px) at ~10k tokens/s, and a rubric's ~256 new tokens at ~30 ms a
    # batched decode step: ~0.3 + 0.5 s a sample, ~2 s per call; 16 GB of weights + the vision
    # tower's activations and the KV cache of a batch: two copies per device
    "vlm": Cost(0.8, per_batch=2.0, min_gpus=0.5,
                source="Qwen2.5-VL-7B bf16 on H100: ~10k prefill tokens/s, ~30 ms per batched decode step "
                       "(estimate from vLLM / HF generate reports)"),
    "grounding": Cost(0.06, per_batch=0.02, source="Grounding DINO base (Swin-B) at 800x1333: ~15 images/s on one "
                                                   "A100-class GPU (IDEA-Research model card, mmdet reports)"),
    "segmentation": Cost(0.04, per_batch=0.01, source="SAM 2.1 Hiera-L image encoder at 1024: ~30 frames/s on "
                                                      "A100 (SAM 2 paper, table of speeds), boxes as prompts"),
    "image_encoder": Cost(0.004, per_batch=0.01, source="DINOv2 ViT-B/14 at 224: ~250+ images/s a GPU "
                                                        "(facebookresearch/dinov2 reports)"),
    "face_analysis": Cost(0.02, per_batch=0.005, source="insightface buffalo_l: SCRFD-10G ~10 ms + ArcFace R50 "
                                                        "~2 ms a face with onnxruntime-gpu (insightface model zoo)"),
    "background_removal": Cost(0.05, per_batch=0.005, source="BRIA RMBG-1.4 (IS-Net) at 1024: ~20 images/s on "
                                                             "one GPU (model card, rembg reports)"),
    "aesthetic": Cost(0.005, per_batch=0.01, source="CLIP ViT-L/14 at 224 + an MLP head: ~200 images/s in fp16"),
    "text_detection": Cost(0.03, source="PP-OCRv4 mobile detection, onnxruntime on one CPU core: ~30 ms "
                                        "an image (RapidOCR reports); a CPU role in the GPU profiles"),
}


def load_costs(path: str | Path | None = None, base: dict[str, Cost] | None = None) -> dict[str, Cost]:
    """DEFAULT_COSTS (or `base`) with a YAML file's entries over them: per role, the fields given
    replace the default's; a role the defaults lack must give per_sample."""
    table = dict(DEFAULT_COSTS if base is None else base)
    if path is None:
        return table
    data = yaml.safe_load(Path(path).read_text()) or {}
    known = {f.name for f in fields(Cost)}
    for role, given in data.items():
        unknown = set(given) - known
        if unknown:
            raise ValueError(f"cost table {path}: {role}: unknown field(s) {sorted(unknown)} (known: {sorted(known)})")
        table[role] = replace(table[role], **given) if role in table else Cost(**given)
    return table


def slower(table: dict[str, Cost], role: str, factor: float) -> dict[str, Cost]:
    """The table with one role `factor` times as costly (the benchmark's 'VLM 5x slower')."""
    c = table[role]
    return dict(table, **{role: replace(c, per_sample=c.per_sample * factor, per_batch=c.per_batch * factor,
                                        source=f"{factor:g}x the default")})
