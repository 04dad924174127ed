"""Text-to-image with FLUX.1 [dev] (diffusers FluxPipeline): the reference x_r and the winner x_w of
a DIP pair (FocusDPO sec. 4.1: "synthesizing reference and target pairs with the FLUX generator,
conditioned on identical subject prompts but with varied auxiliary attributes").

Two modes:
- `diptych` (default): one wide image of height H and width 2W shows the subject twice, side by
  side, and is split into the reference (left half) and the target (right half). This is the
  Subjects200K recipe: FLUX keeps a subject far more consistent inside one image than across two
  generations, so the pair starts out as a positive. The prompt column holds the diptych prompt.
- `independent`: one image per prompt, written to a single column.

Each row carries its own seed (a list of torch.Generator, one per sample), so a sample's initial
noise is the same whichever batch it lands in (the batched float math may still move a pixel by one
level); rows of different sizes in one batch are generated in groups by size.
"""
from __future__ import annotations

import numpy as np

from runtime.rows import Reject
from runtime.costs import FLUX_H100, REFERENCE_PIXELS, Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, text_of, torch_dtype

MODES = ("diptych", "independent")
# An image whose brightest channel value is below this is "all black": what fp16 overflow in the VAE
# or a NaN cast to uint8 produces, never a picture.
BLACK_MAX = 2.0 / 255.0


def generation_problem(image: np.ndarray) -> str | None:
    """Why a generated float image (HxWx3, [0, 1]) is unusable, or None. The check runs on the float
    output because a NaN turns into an ordinary-looking 0 once cast to uint8."""
    if not np.isfinite(image).all():
        return "nan_image"
    if image.size == 0 or float(image.max()) < BLACK_MAX:
        return "black_image"
    return None


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8))


def given(value):
    """None for an absent value: Ray hands a missing int in a numeric column over as NaN."""
    if value is None or (isinstance(value, (float, np.floating)) and np.isnan(value)):
        return None
    return value


def seed_of(row: dict, column: str) -> int:
    seed = given(row.get(column))
    if seed is None or isinstance(seed, (bool, np.bool_)):
        raise Reject("missing_seed", column)
    try:
        if float(seed) != int(seed):
            raise ValueError
        return int(seed)
    except (TypeError, ValueError, OverflowError):
        raise Reject("bad_seed", f"{column}: {seed!r}") from None


def size_of(row: dict, height: int, width: int, multiple: int) -> tuple[int, int]:
    """The row's own `height` / `width` where it has them, else the worker's. FLUX packs 2x2 latent
    patches of an 8x VAE, so a side must be a multiple of 16; other sizes would be silently resized
    by the pipeline and no longer match what the manifest says."""
    h = height if given(row.get("height")) is None else row["height"]
    w = width if given(row.get("width")) is None else row["width"]
    try:
        h, w = int(h), int(w)
    except (TypeError, ValueError):
        raise Reject("bad_size", f"{h!r}x{w!r}") from None
    if h < multiple or w < multiple or h % multiple or w % multiple:
        raise Reject("bad_size", f"{h}x{w} is not a positive multiple of {multiple}")
    return h, w


def generators(seeds: list[int]):
    """One CPU generator per sample: the initial noise then depends on the seed alone, not on the
    batch it shares or on the device (diffusers draws CPU noise and moves it)."""
    import torch

    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def groups_by_size(inputs: list[dict]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for i, x in enumerate(inputs):
        groups.setdefault((x["height"], x["width"]), []).append(i)
    return groups


def simulated_text_to_image(w, row: dict) -> dict:
    """A simulated accelerator's images (workers/simulated.py): fresh photos of the asked size."""
    from workers.simulated import photo

    a = w.args
    h, width = size_of(row, a["height"], a["width"], 16)
    if a["mode"] == "diptych":  # the two halves of a 2W-wide canvas
        return {a["left"]: photo(h, width, w.rng), a["right"]: photo(h, width, w.rng)}
    return {a["output"]: photo(h, width, w.rng)}


@register_worker
class TextToImage(Worker):
    """FLUX.1 [dev] text-to-image.

    in:  `prompt` (str), `seed` (int), optional `height` / `width` (int, multiples of 16)
    out: diptych mode: `left`, `right` (uint8 HxWx3, the two halves: FocusDPO's reference and
         target); independent mode: `output` (uint8 HxWx3).
    rejects: empty_prompt, missing_seed, bad_seed, bad_size, nan_image, black_image, model_error.
    """

    role = "text_to_image"
    builder = Builder("builders.text_to_image")
    # one copy per device: 33 GB of weights and a batch of 2048x1024 diptychs' activations
    cost = Cost(6.5, steps=28, pixels=REFERENCE_PIXELS, min_gpus=1.0, source=FLUX_H100)
    simulated = staticmethod(simulated_text_to_image)
    inputs = ("prompt", "seed")
    rejects = ("empty_prompt", "missing_seed", "bad_seed", "bad_size", "nan_image", "black_image", "model_error")

    def __init__(self, model: str, *, dtype: str = "bfloat16", mode: str = "diptych", prompt: str = "prompt",
                 seed: str = "seed", left: str = "left", right: str = "right", output: str = "image",
                 height: int = 1024, width: int = 1024, steps: int = 28, guidance: float = 3.5,
                 max_sequence_length: int = 512, **common):
        super().__init__(model, dtype=dtype, **common)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        from diffusers import FluxPipeline

        self.mode = mode
        self.prompt, self.seed = prompt, seed
        self.left, self.right, self.output = left, right, output
        self.height, self.width = height, width
        self.steps, self.guidance, self.max_sequence_length = steps, guidance, max_sequence_length
        self.pipe = FluxPipeline.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.multiple = self.pipe.vae_scale_factor * 2

    @classmethod
    def columns(cls, mode: str = "diptych", prompt: str = "prompt", seed: str = "seed", left: str = "left",
                right: str = "right", output: str = "image", **kwargs):
        return [prompt, seed], [left, right] if mode == "diptych" else [output]

    def check(self, row: dict) -> dict:
        prompt, seed = text_of(row, self.prompt), seed_of(row, self.seed)
        height, width = size_of(row, self.height, self.width, self.multiple)
        if self.mode == "diptych":
            width *= 2  # reference and target side by side in one canvas
        return {"prompt": prompt, "seed": seed, "height": height, "width": width}

    def predict(self, inputs: list[dict]) -> list[dict]:
        import torch

        out: list = [None] * len(inputs)
        for (height, width), idx in groups_by_size(inputs).items():
            with torch.inference_mode():
                images = self.pipe(
                    prompt=[inputs[i]["prompt"] for i in idx],
                    height=height, width=width, num_inference_steps=self.steps,
                    guidance_scale=self.guidance, max_sequence_length=self.max_sequence_length,
                    generator=generators([inputs[i]["seed"] for i in idx]), output_type="np",
                ).images
            for i, image in zip(idx, images):
                out[i] = self._outputs(np.asarray(image, dtype=np.float32))
        return out

    def _outputs(self, image: np.ndarray):
        if self.mode == "independent":
            problem = generation_problem(image)
            return Reject(problem, "generated image") if problem else {self.output: to_uint8(image)}
        half = image.shape[1] // 2
        ref, win = image[:, :half], image[:, half:]
        for name, part in (("ref", ref), ("win", win)):
            problem = generation_problem(part)
            if problem:
                return Reject(problem, f"{name} half of the diptych")
        return {self.left: to_uint8(ref), self.right: to_uint8(win)}
