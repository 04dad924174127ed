"""Box-prompted segmentation: SAM 2.1 (the `sam2` package) turns each grounding box into a mask.

Used by DIP (FocusDPO sec. 4.1): Grounding DINO's subject box -> SAM2 mask -> M_prior, the region
FLUX Fill repaints for the loser. As in Grounded-SAM-2, one image embedding per image
(`set_image_batch`), all of an image's boxes in one prompt batch (`predict_batch`), single-mask
output, bf16 autocast on the GPU.

Where the model comes from (`model`):
- a directory holding one SAM2 config yaml and one checkpoint `*.pt` ({"model": state_dict}):
  what `builders.segmentation.build_tiny` writes, and what a local snapshot of
  facebook/sam2.1-hiera-* holds. The yaml is composed with Hydra from that directory, so it need
  not live inside the sam2 package;
- a directory holding only a checkpoint with one of the official file names
  (sam2.1_hiera_large.pt, ...): the package's own config for it;
- an official hub id ("facebook/sam2.1-hiera-large", ...): the package's config, and the
  checkpoint file from `checkpoint_dir` when given, else from the Hugging Face cache through
  hf_hub_download, as sam2's own build_sam2_hf does (HF_HUB_OFFLINE=1 keeps it to the cache).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from runtime.rows import Reject
from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of, torch_dtype


@contextlib.contextmanager
def hydra_config_dir(directory: Path):
    """Compose configs from `directory` instead of the sam2 package. Importing sam2 initialises
    Hydra's global state with the package's configs, and Hydra refuses to initialise twice; so the
    package's state is set aside for the build and put back afterwards."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    package_hydra = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(directory.resolve()), version_base="1.2"):
            yield
    finally:
        GlobalHydra.instance().hydra = package_hydra


def resolve(model: str, checkpoint_dir: str | None = None) -> tuple[str, str, Path | None]:
    """(config name, checkpoint path, config directory or None for the package's configs)."""
    from sam2.build_sam import HF_MODEL_ID_TO_FILENAMES

    path = Path(model)
    if path.is_dir():
        yamls, checkpoints = sorted(path.glob("*.yaml")), sorted(path.glob("*.pt"))
        if len(checkpoints) != 1:
            raise FileNotFoundError(f"{model}: expected one SAM2 checkpoint *.pt, found {len(checkpoints)}")
        if len(yamls) == 1:
            return yamls[0].name, str(checkpoints[0]), path
        by_file = {ckpt: config for config, ckpt in HF_MODEL_ID_TO_FILENAMES.values()}
        if not yamls and checkpoints[0].name in by_file:
            return by_file[checkpoints[0].name], str(checkpoints[0]), None
        raise FileNotFoundError(f"{model}: expected one SAM2 config *.yaml beside {checkpoints[0].name}")
    if model not in HF_MODEL_ID_TO_FILENAMES:
        raise ValueError(f"{model}: neither a directory nor one of {sorted(HF_MODEL_ID_TO_FILENAMES)}")
    config, filename = HF_MODEL_ID_TO_FILENAMES[model]
    if checkpoint_dir:
        return config, str(Path(checkpoint_dir) / filename), None
    from huggingface_hub import hf_hub_download

    return config, hf_hub_download(repo_id=model, filename=filename), None


def boxes_of(value, h: int, w: int) -> np.ndarray:
    """A row's boxes as float32 [n, 4] xyxy clipped to the image; NaN / wrong shape -> Reject."""
    if value is None:
        raise Reject("missing_boxes", "")
    try:
        boxes = np.asarray([np.asarray(b, np.float32).reshape(4) for b in value], np.float32).reshape(-1, 4)
    except (TypeError, ValueError) as e:
        raise Reject("bad_boxes", str(e)) from None
    if not np.isfinite(boxes).all():
        raise Reject("bad_boxes", "NaN or inf coordinates")
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
    return boxes


def simulated_segmentation(w, row: dict) -> dict:
    """A simulated accelerator's masks: the ellipse inscribed in each box."""
    from workers.simulated import ellipse

    a = w.args
    h, width = image_of(row, a["image"]).shape[:2]
    boxes = boxes_of(row.get(a["boxes"]), h, width)
    masks = np.stack([ellipse(b, h, width) for b in boxes]) if len(boxes) else np.zeros((0, h, width), bool)
    return {a["masks"]: masks, a["mask_scores"]: np.full(len(boxes), 0.95, np.float32)}


@register_worker
class Segmentation(Worker):
    """Input: an image column (`image`) and a boxes column (`boxes`, default
    "boxes": float32 [n, 4] xyxy pixels, e.g. Grounding's output). Output: `masks` bool
    [n, H, W] (one mask per box, the image's size), `mask_scores` float32 [n] (SAM2's predicted
    IoU of each mask). A row with zero boxes gets `masks` [0, H, W] and `mask_scores` [0].
    Rejects: `missing_image` / `bad_image`, `missing_boxes`, `bad_boxes` (not [n, 4], NaN)."""

    role = "segmentation"
    builder = Builder("builders.segmentation")
    cost = Cost(0.04, per_batch=0.01, source="SAM 2.1 Hiera-L image encoder at 1024: ~30 frames/s on A100 "
                                            "(SAM 2 paper, table of speeds), boxes as prompts")
    simulated = staticmethod(simulated_segmentation)
    inputs = ("image", "boxes")
    outputs = ("masks", "mask_scores")
    rejects = ("missing_boxes", "bad_boxes") + Worker.rejects

    def __init__(self, model: str = "facebook/sam2.1-hiera-large", *, dtype: str = "bfloat16",
                 checkpoint_dir: str | None = None, multimask_output: bool = False, image: str = "image",
                 boxes: str = "boxes", masks: str = "masks", mask_scores: str = "mask_scores", **common):
        super().__init__(model, dtype=dtype, **common)
        import torch
        from sam2.build_sam import build_sam2
        from sam2.sam2_image_predictor import SAM2ImagePredictor

        self.image, self.boxes, self.multimask_output = image, boxes, multimask_output
        self.out = {"masks": masks, "mask_scores": mask_scores}
        config, checkpoint, config_dir = resolve(model, checkpoint_dir)
        with hydra_config_dir(config_dir) if config_dir else contextlib.nullcontext():
            sam = build_sam2(config, checkpoint, device=self.device)
        self.predictor = SAM2ImagePredictor(sam)
        # weights stay float32; bf16 comes from autocast, as in SAM2's and Grounded-SAM-2's demos
        self.autocast_dtype = torch_dtype(dtype, self.device)
        self._torch = torch

    def check(self, row: dict) -> dict:
        image = image_of(row, self.image)
        return {"image": image, "boxes": boxes_of(row.get(self.boxes), *image.shape[:2])}

    def predict(self, inputs: list[dict]) -> list[dict]:
        torch = self._torch
        prompted = [x for x in inputs if len(x["boxes"])]  # predict_batch needs a box per image
        masks, scores = [], []
        if prompted:
            with torch.inference_mode(), torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype,
                                                         enabled=self.autocast_dtype != torch.float32):
                self.predictor.set_image_batch([x["image"] for x in prompted])
                masks, scores, _ = self.predictor.predict_batch(
                    box_batch=[x["boxes"] for x in prompted], multimask_output=self.multimask_output)
            self.predictor.reset_predictor()  # drop the batch's features before the next batch
        results, k = [], 0
        for x in inputs:
            h, w = x["image"].shape[:2]
            n = len(x["boxes"])
            if not n:
                results.append({self.out["masks"]: np.zeros((0, h, w), bool),
                                self.out["mask_scores"]: np.zeros(0, np.float32)})
                continue
            # predict_batch squeezes the box axis when there is one box: restore [n, C, H, W]
            m, s = masks[k].reshape(n, -1, h, w), scores[k].reshape(n, -1)
            best = s.argmax(axis=1)  # C = 1 unless multimask_output: keep the best-scored mask
            results.append({self.out["masks"]: m[np.arange(n), best] > 0,
                            self.out["mask_scores"]: s[np.arange(n), best].astype(np.float32)})
            k += 1
        return results
