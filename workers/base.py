"""What every model worker shares: device and dtype choice, batching over the live rows of a Ray
Data batch, bad input turned into reject rows, per-row timing, and the actor-pool arguments.

A worker is used as

    ds.map_batches(Grounding, **pool_args(Grounding, spec, stage="ground"))

and subclasses implement only `check(row)` (input validation, raising Reject) and
`predict(rows) -> list[dict]` (one output dict per row, model work batched).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from schemas.batch import Reject, batch_of, cpu_stage, is_rejected, reject, rows_of
from schemas.contract import TIMING_PREFIX, as_rgb


def pick_device(device: str | None = None) -> str:
    if device:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def torch_dtype(name: str, device: str):
    """bf16 / fp16 only where they are fast: on the CPU every model runs in float32."""
    import torch

    if device == "cpu":
        return torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]


def image_of(row: dict, column: str, min_side: int = 8):
    """The row's image in `column` as uint8 HxWx3, or a Reject naming the column."""
    if row.get(column) is None:
        raise Reject("missing_image", column)
    try:
        return as_rgb(row[column], min_side)
    except Exception as e:  # noqa: BLE001 - corrupt bytes raise PIL's own errors
        raise Reject("bad_image", f"{column}: {e}") from None


def is_list(value) -> bool:
    """A cell holding several values (a list per row: one image or prompt per question or view);
    Ray hands a list column back as a numpy object array."""
    import numpy as np

    return isinstance(value, (list, tuple)) or (isinstance(value, np.ndarray) and value.dtype == object)


def text_of(row: dict, column: str) -> str:
    text = row.get(column)
    if text is None or not str(text).strip():
        raise Reject("empty_prompt", column)
    return str(text)


class Worker:
    """Base of the model workers. `stage` names the step in the DAG (one worker class may serve
    several stages, e.g. the VLM for the rubric and for captions); rejects and timings use it."""

    role = "worker"

    def __init__(self, model: str, *, stage: str | None = None, dtype: str = "bfloat16",
                 device: str | None = None):
        self.model_id = model
        self.stage = stage or self.role
        self.device = pick_device(device)
        self.dtype_name = dtype

    # subclasses --------------------------------------------------------------------------------
    def check(self, row: dict) -> dict:
        """Validate and prepare one row's inputs (raise Reject on bad input); returns the inputs."""
        return row

    def predict(self, inputs: list[dict]) -> list[dict]:
        """Model work on a list of prepared inputs; one dict of output columns per input."""
        raise NotImplementedError

    # the batch protocol ------------------------------------------------------------------------
    def __call__(self, batch):
        rows = rows_of(batch)
        live, inputs = [], []
        for i, row in enumerate(rows):
            if is_rejected(row):
                continue
            try:
                inputs.append(self.check(row))
                live.append(i)
            except Reject as r:
                rows[i] = reject(row, self.stage, r.reason, r.detail)
        t0 = time.perf_counter()
        outputs = self._predict_isolating(inputs)
        per_row = (time.perf_counter() - t0) / max(len(live), 1)
        for i, out in zip(live, outputs):
            if isinstance(out, Reject):
                rows[i] = reject(rows[i], self.stage, out.reason, out.detail)
            else:
                rows[i].update(out)
            rows[i][TIMING_PREFIX + self.stage] = per_row
        return batch_of(rows)

    def _predict_isolating(self, inputs: list[dict]) -> list:
        """Batched predict; if the batch raises, retry row by row so one poison sample becomes one
        reject instead of failing its whole batch."""
        if not inputs:
            return []
        try:
            out = self.predict(inputs)
            if len(out) != len(inputs):
                raise RuntimeError(f"{type(self).__name__}.predict returned {len(out)} outputs for {len(inputs)} inputs")
            return out
        except Exception:  # noqa: BLE001
            if len(inputs) == 1:
                import traceback

                return [Reject("model_error", traceback.format_exc(limit=2)[-1500:])]
            return [self._predict_isolating([x])[0] for x in inputs]


def pool_args(worker_cls: type[Worker], spec, **kwargs) -> dict:
    """map_batches arguments for a worker from its ModelSpec. The pool has a fixed size so that
    every GPU actor starts at once (Ray Data otherwise adds GPU actors one at a time)."""
    import ray

    return {
        "fn_constructor_kwargs": {"model": spec.model, "dtype": spec.dtype, **kwargs},
        "batch_size": spec.batch_size,
        "num_gpus": spec.num_gpus or None,
        "num_cpus": spec.num_cpus,
        "compute": ray.data.ActorPoolStrategy(size=spec.concurrency),
        "zero_copy_batch": True,
    }


def model_stage(ds, worker_cls: type[Worker], spec, stage: str, **kwargs):
    """A worker as a Ray Data stage on its fixed-size actor pool (pool_args)."""
    return ds.map_batches(worker_cls, batch_format="pyarrow", **pool_args(worker_cls, spec, stage=stage, **kwargs))


@dataclass
class Step:
    """One stage of a pipeline's DAG: a CPU function on a row (`fn`), or a model worker class, its
    ModelSpec and constructor kwargs (`cls`, `spec`, `kwargs`)."""

    name: str
    fn: Callable[[dict], dict] | None = None
    cls: type | None = None
    spec: object = None
    kwargs: dict = field(default_factory=dict)


class Plan(list):
    """A pipeline's Steps in DAG order, appended by `cpu(name, fn)` and `model(name, role, **kwargs)`:
    a role's worker class comes from `workers` (the pipeline's classes, or a test's doubles) and
    its ModelSpec from the config field of the same name."""

    def __init__(self, cfg, workers: dict):
        super().__init__()
        self.cfg, self.workers = cfg, workers

    def cpu(self, name: str, fn: Callable[[dict], dict]) -> None:
        self.append(Step(name, fn=fn))

    def model(self, name: str, role: str, **kwargs) -> None:
        self.append(Step(name, cls=self.workers[role], spec=getattr(self.cfg, role), kwargs=kwargs))


def apply_steps(ds, steps: list[Step]):
    """The steps as Ray Data stages, in order: CPU steps as tasks, model steps on actor pools."""
    for s in steps:
        ds = cpu_stage(ds, s.name, s.fn) if s.fn is not None else model_stage(ds, s.cls, s.spec, s.name, **s.kwargs)
    return ds
