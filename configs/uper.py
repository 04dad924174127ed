"""The typed config of UPER (seed 001). Paper thresholds are named fields with the paper's
defaults (the description cites where); `output_fields()` lists what enters a sample's key."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.config import ModelSpec, PipelineConfig


class UPERConfig(PipelineConfig):
    """UPER (seed 001) section 3.2.1 / appendix B.4 (data) and 3.1.3 / B.1 (R_sub)."""

    source: Literal["photos", "pairs", "diptych", "dip"] = "photos"  # photos (a folder per subject) | pairs (a list) | diptych (Subjects200K) | dip
    photos_root: str = "../shared/assets/images/dreambench"
    pairs_per_subject: int = 2
    # source pairs: a .parquet / .jsonl / .csv with ref, target (paths, bytes or {"bytes", "path"}),
    # prompt, subject; source diptych: the same with one `image` holding both halves (Subjects200K's
    # parquet works as it is)
    pairs: str | None = None
    dip_dir: str | None = None  # source dip: OUT/dip of pipelines/dip.py (reference and winner)
    diptych_padding: int = 8  # Subjects200K: each 512 px half sits in an 8 px border (1056 x 528)
    max_side: int = 512  # OminiControl's resolution
    keep_original_ref: bool = True  # also write the reference as it was (`ref`)
    qa: bool = Field(True, description="False: the VLM's attributes and rating are recorded, not applied (random weights)")
    fg_fraction_min: float = 0.01
    fg_fraction_max: float = 0.98
    max_attributes: int = 8
    rating_min: int = Field(4, description="keep a 0-5 consistency rating (Fig. 8) >= 4: this project's floor, "
                                           "the paper gives none; any key attribute answered No rejects the pair")
    vlm_max_new_tokens: int = 256
    r_sub_size: int = Field(448, description="both images resized to this square: the 224/112 grid tiles it 3 x 3")
    patch_size: int = Field(224, description="sec. 3.1.3: 224 x 224 patches")
    patch_stride: int = Field(112, description="sec. 3.1.3: stride 112")
    random_crops: int = 0  # app. B.1 variant: N random corresponding crops
    random_crop_size: int = 224  # app. B.1 uses 384 with a 384 px encoder: the encoder's input size
    r_sub_weights: dict[str, float] = Field(
        {"patch": 1.0, "cls": 0.0, "crops": 0.0}, description="sec. 3.1.3: R_sub is the patch mean; app. B.1 gives no weights")
    copy_paste_similarity: float | None = Field(0.95, description="app. B.1: penalty above this similarity (None: off)")
    copy_paste_penalty: float = 2.0  # slope of the penalty above the threshold (stages/subject_reward.py)
    background_removal: ModelSpec = ModelSpec(model="bria-rmbg", dtype="float32")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    image_encoder: ModelSpec = ModelSpec(model="facebook/dinov2-base")

    def input_paths(self) -> dict:
        return {"photos": {"photos_root": self.photos_root}, "pairs": {"pairs": self.pairs},
                "diptych": {"pairs": self.pairs}, "dip": {"dip_dir": self.dip_dir}}[self.source]

    def output_fields(self) -> dict:
        return self.model_dump(include={
            "seed", "source", "diptych_padding", "max_side", "max_attributes", "r_sub_size", "patch_size",
            "patch_stride", "random_crops", "random_crop_size", "r_sub_weights", "copy_paste_similarity",
            "copy_paste_penalty"}) | {
            "models": [self.background_removal.model, self.vlm.model, self.image_encoder.model]}
