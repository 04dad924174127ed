"""What every model worker shares: device and dtype choice, batching over the live rows of a Ray
Data batch, bad input turned into reject rows, per-row timing, and the actor-pool arguments.

A worker is a step of a pipeline's Plan (runtime.plan):

    steps.model("ground", "grounding", image="win", phrases="class_nouns")

Subclasses declare which constructor arguments name the columns they read (`inputs`) and write
(`outputs`), the rejects they can produce, and implement only `check(row)` (input validation,
raising Reject) and `predict(rows) -> list[dict]` (one output dict per row, model work batched).
Every column argument defaults to a name that says what it is (`image`, `prompt`), never to one
dataset's column: the pipeline wires its columns in its plan.
"""
from __future__ import annotations

import inspect

from runtime.rows import DATA_ERRORS, Reject, as_reject, run_step
from schemas.contract import as_rgb


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
    several stages, e.g. the VLM for the rubric and for captions); rejects and timings use it.
    `drop` / `keep` come from the plan: the columns to remove after this step."""

    role = "worker"
    inputs: tuple[str, ...] = ()  # constructor arguments whose values are columns read
    outputs: tuple[str, ...] = ()  # constructor arguments whose values are columns written
    rejects: tuple[str, ...] = ("missing_image", "bad_image", "model_error")

    def __init__(self, model: str, *, stage: str | None = None, dtype: str = "bfloat16",
                 device: str | None = None, drop: tuple = (), keep=None):
        self.model_id = model
        self.stage = stage or self.role
        self.device = pick_device(device)
        self.dtype_name = dtype
        self.drop, self.keep = tuple(drop), keep

    @classmethod
    def arguments(cls) -> set[str]:
        """Every keyword the worker takes: its own and, through **common, its bases'."""
        names = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None:
                names |= {k for k, p in inspect.signature(init).parameters.items()
                          if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and k != "self"}
        return names

    @classmethod
    def columns(cls, **kwargs) -> tuple[list[str], list[str]]:
        """(columns read, columns written) for these constructor arguments: each argument in
        `inputs` / `outputs` names a column (a list of columns, or None for none)."""
        defaults = {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()}

        def names(args):
            out = []
            for a in args:
                v = kwargs.get(a, defaults.get(a))
                out += [] if v is None or v is inspect.Parameter.empty else (list(v) if is_list(v) else [v])
            return [str(c) for c in out]

        return names(cls.inputs), names(cls.outputs)

    # subclasses --------------------------------------------------------------------------------
    def check(self, row: dict) -> dict:
        """Validate and prepare one row's inputs (raise Reject on bad input); returns the inputs."""
        return row

    def predict(self, inputs: list[dict]) -> list[dict]:
        """Model work on a list of prepared inputs; one dict of output columns per input."""
        raise NotImplementedError

    # the batch protocol (runtime.rows.run_step) ------------------------------------------------
    def __call__(self, batch):
        return run_step(self.stage, batch, self._on_rows, None, self.drop, self.keep)

    def _on_rows(self, rows: list[dict]) -> list:
        out: list = [None] * len(rows)
        live, inputs = [], []
        for i, row in enumerate(rows):
            try:
                inputs.append(self.check(row))
                live.append(i)
            except (Reject, *DATA_ERRORS) as e:
                out[i] = as_reject(e)
        for i, result in zip(live, self._predict_isolating(inputs)):
            out[i] = result if isinstance(result, Reject) else dict(rows[i], **result)
        return out

    def _predict_isolating(self, inputs: list[dict]) -> list:
        """Batched predict; if the batch raises, retry row by row so one poison sample becomes one
        reject instead of failing its whole batch. Only model and data errors are isolated: a
        TypeError or KeyError is a bug and fails the run."""
        if not inputs:
            return []
        try:
            out = self.predict(inputs)
            if len(out) != len(inputs):
                raise AssertionError(f"{type(self).__name__}.predict returned {len(out)} outputs for {len(inputs)} inputs")
            return out
        except (RuntimeError, *DATA_ERRORS):
            if len(inputs) == 1:
                import traceback

                return [Reject("model_error", traceback.format_exc(limit=2)[-1500:])]
            return [self._predict_isolating([x])[0] for x in inputs]


