"""The typed config of the synthetic pipeline: random samples of any dataset schema."""
from __future__ import annotations

from typing import Literal

from runtime.config import PipelineConfig


class SyntheticConfig(PipelineConfig):
    dataset: Literal["dip", "multiid", "multiid_refs", "uper", "iapo"] = "dip"
    samples: int = 64
    image_size: int = 128
    batch_size: int = 8
    work_seconds: float = 0.0  # simulated model time per sample (fault and resume tests)
    poison_every: int = 0  # every Nth sample is bad data: rejected at generate / encode

    def output_fields(self) -> dict:
        return {"seed": self.seed, "dataset": self.dataset, "image_size": self.image_size}
