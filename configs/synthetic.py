"""The typed config of the synthetic pipeline: random samples of any dataset schema."""
from __future__ import annotations

from pydantic import field_validator

from runtime.config import PipelineConfig


class SyntheticConfig(PipelineConfig):
    dataset: str = "dip"  # any dataset folder kind a registered spec writes (runtime/registry.py)
    samples: int = 64
    image_size: int = 128
    batch_size: int = 8
    work_seconds: float = 0.0  # simulated model time per sample (fault and resume tests)
    poison_every: int = 0  # every Nth sample is bad data: rejected at generate / encode

    @field_validator("dataset")
    @classmethod
    def _registered(cls, name: str) -> str:
        from runtime.registry import outputs

        known = outputs()
        if name not in known:
            raise ValueError(f"unknown dataset {name!r}; known: {', '.join(sorted(known))}")
        return name

    def output_fields(self) -> dict:
        return {"seed": self.seed, "dataset": self.dataset, "image_size": self.image_size}
