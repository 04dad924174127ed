"""Typed pipeline configs: YAML file + `--set a.b=value` overrides -> a pydantic model.

Each pipeline declares its own `PipelineConfig` subclass (configs/<pipeline>.py); thresholds from the papers are named
fields whose defaults are the papers' values. Unknown keys are errors, so a typo in YAML or in
`--set` fails at start instead of silently running with a default.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class WriteConfig(Strict):
    target_shard_bytes: int = Field(1 << 30, description="a shard is closed once its tar reaches this size")
    target_shard_samples: int | None = Field(None, description="optional: also close a shard at this many samples")


class RayConfig(Strict):
    address: str | None = Field(None, description="None: RAY_ADDRESS if set (ray job submit), else embedded")
    num_cpus: int | None = Field(None, description="embedded Ray only")


class ModelSpec(Strict):
    """One worker role: a hub id or a local directory, and how its actor pool is sized."""

    model: str
    dtype: str = "bfloat16"
    batch_size: int = 4
    concurrency: int = 1  # actors; GPU pools start at full size
    num_gpus: float = 0.0
    # CPUs each actor holds for its lifetime. A GPU actor needs one for pre/post-processing; on a
    # CPU-only machine a DAG of many pools (DIP has 8) must hold less than the machine, or the
    # last pools never start and the run waits forever.
    num_cpus: float = 1.0


class PipelineConfig(Strict):
    profile: str = "tiny"
    seed: int = 0
    write: WriteConfig = WriteConfig()
    ray: RayConfig = RayConfig()

    def output_fields(self) -> dict:
        """The config fields that change a sample's content; they enter its key. Subclasses
        extend; run-only settings (ray, write) never do, so resharding does not invalidate keys."""
        return {"seed": self.seed}


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ValueError(f"--set expects a.b=value, got {text!r}")
    path, value = text.split("=", 1)
    return path.strip().split("."), yaml.safe_load(value)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"--set {text}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(cls: type[PipelineConfig], path: str | Path | None, overrides: list[str] | None = None):
    data = {}
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    return cls.model_validate(apply_overrides(data, overrides or []))
