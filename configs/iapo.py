"""The typed config of IAPO (seed 003). Paper thresholds are named fields with the paper's
defaults (the description cites where); `output_fields()` lists what enters a sample's key."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from runtime.config import ModelSpec, PipelineConfig


class IAPOConfig(PipelineConfig):
    """IAPO supplementary (seed 003): Fig. II prompts, eq. 1 weights."""

    source: Literal["pairs", "photos", "dip"] = "pairs"  # pairs (Pick-a-Pic v2 layout Parquet) | photos (DreamBench pairs) | dip (a DIP output dir)
    pairs: str | None = None  # source pairs: Parquet file(s) with caption, jpg_0, jpg_1, label_0, label_1
    dip_dir: str | None = None  # source dip: OUT/dip of pipelines/dip.py (x_w preferred over x_l)
    photos_root: str = "../shared/assets/images/dreambench"
    pairs_per_subject: int = 1  # source photos
    max_pairs: int | None = None  # first N pairs only (smoke runs)
    max_side: int = 1024  # images scaled down to this long side
    qa: bool = Field(True, description="False: planner / judge answers recorded, unparsable ones fall back (qa=disabled)")
    fallback_instance: str = "object"  # qa off: the instance when the planner's answer is unparsable
    w_pos: float = Field(1.0, description="eq. 1: weight inside boxes whose instance agrees (rho=0)")
    w_neg: float = Field(0.0, description="eq. 1: weight inside boxes whose instance disagrees (rho=1)")
    max_instances: int = 8
    box_threshold: float = 0.35  # Grounded-SAM-2 defaults
    text_threshold: float = 0.25
    weight_grid: int = Field(8, description="pixels per weight-map cell: SD1.5 / SDXL latent grid (VAE /8); divides 16")
    write_weights: bool = True  # weights_0 / weights_1 members (the trainer can also rebuild them from the boxes)
    vlm_max_new_tokens: int = 128
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    grounding: ModelSpec = ModelSpec(model="IDEA-Research/grounding-dino-base", dtype="float32")

    def input_paths(self) -> dict:
        return {"pairs": {"pairs": self.pairs}, "photos": {"photos_root": self.photos_root},
                "dip": {"dip_dir": self.dip_dir}}[self.source]

    @field_validator("weight_grid")
    @classmethod
    def _divides_16(cls, v: int) -> int:
        if v < 1 or 16 % v:  # stages.photos.load_image makes every side a multiple of 16
            raise ValueError(f"weight_grid {v} must divide 16")
        return v

    def output_fields(self) -> dict:
        return self.model_dump(include={"seed", "max_instances", "w_pos", "w_neg", "weight_grid", "max_side", "qa",
                                        "fallback_instance", "box_threshold", "text_threshold",
                                        "vlm_max_new_tokens"}) | {
            "models": [self.vlm.model, self.grounding.model]}
