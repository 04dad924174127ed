"""Typed pipeline configs: YAML file + `--set a.b=value` overrides -> a pydantic model.

Each pipeline declares its own `PipelineConfig` subclass (configs/<pipeline>.py); thresholds from the papers are named
fields whose defaults are the papers' values. Unknown keys are errors, so a typo in YAML or in
`--set` fails at start instead of silently running with a default.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class WriteConfig(Strict):
    target_shard_bytes: int = Field(1 << 30, description="a shard is closed once its tar reaches this size")
    target_shard_samples: int | None = Field(None, description="optional: also close a shard at this many samples")
    lease_timeout_s: float = Field(120.0, description="a dataset folder's lease without a heartbeat this long is free")
    force_lease: bool = Field(False, description="take a dataset folder's lease at once (--force): its holder is dead")


class RayConfig(Strict):
    address: str | None = Field(None, description="None: RAY_ADDRESS if set (ray job submit), else embedded")
    num_cpus: int | None = Field(None, description="embedded Ray only")
    prewarm_workers: int = Field(
        0, description="CPU worker processes started, the pipeline's stages imported, while the model pools "
                       "load: the first task of each CPU stage then does not wait seconds for a process")
    data_object_store_bytes: int | None = Field(
        None, description="Ray Data's streaming budget in the object store (blocks in flight between "
                          "stages); None: Ray Data's default, a share of the whole store")


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
    retries: int = Field(3, description="attempts after the first on an infrastructure error (CUDA OOM, a timeout)")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources each actor holds: {gpu_node: 1} places the pool "
                                          "on the nodes started with --resources='{\"gpu_node\": N}'")


class PipelineConfig(Strict):
    profile: str = "tiny"
    seed: int = 0
    max_input_bytes: int = Field(256 << 20, description="an input file larger than this is a reject, never read")
    license: str = Field("other", description="the dataset card's license (a Hugging Face license id); the models' "
                                             "own licenses bind what they make: FLUX.1 dev's is non-commercial")
    max_error_fraction: float = Field(0.05, description="a stage failing on more of its rows (after 20) stops the run")
    write: WriteConfig = WriteConfig()
    ray: RayConfig = RayConfig()
    pools: Literal["fixed", "auto"] = Field(
        "fixed", description="fixed: each role's concurrency and num_gpus as written; auto: the cluster's GPUs "
                             "split among the GPU steps by their cost (runtime/pools.py), printed at the start")
    cost_table: str | None = Field(None, description="pools: auto: a YAML of per-role costs over the defaults "
                                                     "(runtime/costs.py)")

    def output_fields(self) -> dict:
        """The config fields that change a sample's content; they enter its key. Subclasses
        extend; run-only settings (ray, write) never do, so resharding does not invalidate keys."""
        return {"seed": self.seed}

    def input_paths(self) -> dict[str, str | None]:
        """field -> path of each input this config reads (subclasses list theirs). Local ones
        must exist before Ray starts; None is a required input left unset."""
        return {}


class ConfigError(ValueError):
    """A user's mistake in a config file, a --set or an input path: one line, exit code 2."""


def missing_inputs(cfg: PipelineConfig) -> list[str]:
    """The inputs of `cfg` that are unset or are local paths that do not exist (URIs are the
    cluster's to read)."""
    return [f"{name}: not set" if path is None else f"{name}: {path}: no such file or directory"
            for name, path in cfg.input_paths().items()
            if path is None or ("://" not in str(path) and not Path(path).exists())]


def parse_override(text: str) -> tuple[list[str], object]:
    if "=" not in text:
        raise ConfigError(f"--set expects a.b=value, got {text!r}")
    path, value = text.split("=", 1)
    return path.strip().split("."), yaml.safe_load(value)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for text in overrides or []:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(cls: type[PipelineConfig], path: str | Path | None, overrides: list[str] | None = None):
    """The validated config; ConfigError with one line naming the field (and, for a mode, the
    choices) on a missing or unparsable file, a bad --set or an invalid value."""
    data = {}
    if path:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config {path}: no such file") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config {path}: not YAML: {str(e).splitlines()[0]}") from None
    try:
        return cls.model_validate(apply_overrides(data, overrides or []))
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        got = f", got {first['input']!r}" if first["type"] != "missing" else ""
        raise ConfigError(f"config {where}: {first['msg']}{got}{more}") from None
