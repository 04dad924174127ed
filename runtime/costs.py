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

Each worker class declares its role's Cost (`cost = Cost(...)`, runtime/roles.py): public figures or
estimates from them, each cited in `source`. Pass your own
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


def default_costs() -> dict[str, Cost]:
    """Each model role's own Cost, as its worker class declares it (runtime/roles.py)."""
    from runtime.roles import costs

    return costs()


def load_costs(path: str | Path | None = None, base: dict[str, Cost] | None = None) -> dict[str, Cost]:
    """The roles' costs (or `base`) with a YAML file's entries over them: per role, the fields given
    replace the default's; a role the defaults lack must give per_sample."""
    table = dict(default_costs() if base is None else base)
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
