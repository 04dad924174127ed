"""Inpainting with FLUX.1 Fill [dev] (diffusers FluxFillPipeline): the loser x_l of a DIP pair.

FocusDPO sec. 4.1: the subject region M_prior of the winner is re-generated from a caption of that
region, "which modifies subject-relevant pixels while preserving surrounding context". So:
- the mask is dilated first (a segmentation mask hugs the subject; its anti-aliased rim and the
  subject's shadow would otherwise survive and leak the original identity);
- the model inpaints inside the dilated mask;
- the result is blended back with a feather that lies entirely INSIDE the dilated mask, and every
  pixel outside it is the input pixel, bit for bit. A DPO pair whose context differs anywhere
  outside the mask would teach the model about that difference instead of about the subject.

Images whose sides are not multiples of 16 (FLUX's 8x VAE and 2x2 latent patches) are edge-padded
for the model and cropped back, so no pixel is ever resampled.
"""
from __future__ import annotations

import numpy as np

from runtime.rows import Reject
from runtime.costs import REFERENCE_PIXELS, Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of, text_of, torch_dtype
from workers.text_to_image import generation_problem, generators, groups_by_size, seed_of, to_uint8


def mask_of(row: dict, column: str, shape: tuple[int, int]) -> np.ndarray:
    """The row's mask as bool HxW of the image's size, or a Reject."""
    value = row.get(column)
    if value is None:
        raise Reject("missing_mask", column)
    mask = np.asarray(value)
    if mask.dtype == object or mask.ndim not in (2, 3):
        raise Reject("bad_mask", f"{column}: dtype {mask.dtype}, shape {mask.shape}")
    if mask.ndim == 3:
        mask = mask[..., 0]
    if mask.shape != tuple(shape):
        raise Reject("mask_size", f"{column} {mask.shape[0]}x{mask.shape[1]} vs image {shape[0]}x{shape[1]}")
    if mask.dtype != bool:
        # 0/255 PNG masks and 0/1 float masks alike
        mask = mask > (127 if mask.dtype == np.uint8 else 0.5)
    if not mask.any():
        raise Reject("empty_mask", column)
    return mask


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    """Grow a mask by `px` pixels with a disk, so the rim of the subject is inside it too."""
    if px <= 0:
        return mask.copy()
    import cv2

    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
    return cv2.dilate(mask.astype(np.uint8), disk).astype(bool)


def feather(mask: np.ndarray, px: int) -> np.ndarray:
    """Blend weight of the generated pixels: 0 outside the mask, rising to 1 over `px` pixels inside
    its edge. Feathering inward (not a blur across the edge) is what keeps the outside exact."""
    if px <= 0:
        return mask.astype(np.float32)
    import cv2

    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)  # distance to the outside
    return np.clip(inside / float(px), 0.0, 1.0).astype(np.float32) * mask


def pad_to(array: np.ndarray, multiple: int) -> np.ndarray:
    h, w = array.shape[:2]
    pad = ((0, -h % multiple), (0, -w % multiple)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(array, pad, mode="edge")


def simulated_inpainting(w, row: dict) -> dict:
    """A simulated accelerator's loser: fresh pixels inside the dilated mask, the image outside."""
    from workers.simulated import photo

    a = w.args
    image = image_of(row, a["image"])
    mask = dilate(mask_of(row, a["mask"], image.shape[:2]), a["dilation_px"])
    new = photo(*image.shape[:2], w.rng)
    return {a["output"]: np.where(mask[..., None], new, image), a["mask_output"]: mask}


@register_worker
class Inpainting(Worker):
    """FLUX.1 Fill [dev] inpainting inside a dilated mask, context copied back exactly.

    in:  `image` (image), `mask` (bool HxW, same size), `prompt` (str), `seed` (int)
    out: `output` (uint8 HxWx3, same size as the input), `mask_output` (bool HxW: the dilated
         mask, the only pixels that may differ from the input)
    rejects: missing_image, bad_image, missing_mask, bad_mask, mask_size, empty_mask, empty_prompt,
         missing_seed, bad_seed, nan_image, black_image, model_error.
    """

    role = "inpainting"
    builder = Builder("builders.inpainting")
    # FLUX.1 Fill is the same 12B transformer with the masked image as extra input channels; it is
    # run at the model card's 50 steps, so a 1024x1024 sample costs 50/28 of FLUX.1 dev's
    cost = Cost(6.5, steps=28, pixels=REFERENCE_PIXELS, min_gpus=1.0,
                source="FLUX.1 Fill dev: FLUX.1 dev's cost per step (same transformer), scaled by steps")
    simulated = staticmethod(simulated_inpainting)
    inputs = ("image", "mask", "prompt", "seed")
    outputs = ("output", "mask_output")
    rejects = ("missing_mask", "bad_mask", "mask_size", "empty_mask", "empty_prompt", "missing_seed", "bad_seed",
               "nan_image", "black_image") + Worker.rejects

    def __init__(self, model: str, *, dtype: str = "bfloat16", image: str = "image", mask: str = "mask",
                 prompt: str = "prompt", seed: str = "seed", output: str = "inpainted",
                 mask_output: str = "inpaint_mask", dilation_px: int = 16, feather_px: int = 8,
                 steps: int = 50, guidance: float = 30.0, max_sequence_length: int = 512, **common):
        super().__init__(model, dtype=dtype, **common)
        from diffusers import FluxFillPipeline

        self.image, self.mask, self.prompt, self.seed = image, mask, prompt, seed
        self.output, self.mask_output = output, mask_output
        self.dilation_px, self.feather_px = dilation_px, feather_px
        # FluxFillPipeline's defaults and the FLUX.1-Fill-dev model card: 50 steps, guidance 30.
        self.steps, self.guidance, self.max_sequence_length = steps, guidance, max_sequence_length
        self.pipe = FluxFillPipeline.from_pretrained(model, dtype=torch_dtype(dtype, self.device)).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self.multiple = self.pipe.vae_scale_factor * 2

    def check(self, row: dict) -> dict:
        image = image_of(row, self.image, min_side=self.multiple)
        mask = mask_of(row, self.mask, image.shape[:2])
        prompt = text_of(row, self.prompt)
        seed = seed_of(row, self.seed)
        dilated = dilate(mask, self.dilation_px)
        padded = pad_to(image, self.multiple)
        return {"image": image, "mask": dilated, "prompt": prompt, "seed": seed,
                "padded": padded, "padded_mask": pad_to(dilated, self.multiple),
                "height": padded.shape[0], "width": padded.shape[1]}

    def predict(self, inputs: list[dict]) -> list[dict]:
        import torch
        from PIL import Image

        out: list = [None] * len(inputs)
        for (height, width), idx in groups_by_size(inputs).items():
            with torch.inference_mode():
                images = self.pipe(
                    prompt=[inputs[i]["prompt"] for i in idx],
                    image=[Image.fromarray(inputs[i]["padded"]) for i in idx],
                    mask_image=[Image.fromarray(inputs[i]["padded_mask"].astype(np.uint8) * 255) for i in idx],
                    height=height, width=width, num_inference_steps=self.steps,
                    guidance_scale=self.guidance, max_sequence_length=self.max_sequence_length,
                    generator=generators([inputs[i]["seed"] for i in idx]), output_type="np",
                ).images
            for i, generated in zip(idx, images):
                out[i] = self._composite(inputs[i], np.asarray(generated, dtype=np.float32))
        return out

    def _composite(self, x: dict, generated: np.ndarray):
        image, mask = x["image"], x["mask"]
        generated = generated[: image.shape[0], : image.shape[1]]
        problem = generation_problem(generated)
        if problem:
            return Reject(problem, "inpainted image")
        alpha = feather(mask, self.feather_px)[..., None]
        blended = to_uint8(alpha * generated + (1.0 - alpha) * (image.astype(np.float32) / 255.0))
        lose = np.where(mask[..., None], blended, image)  # outside the mask: the input, exactly
        return {self.output: np.ascontiguousarray(lose), self.mask_output: mask}
