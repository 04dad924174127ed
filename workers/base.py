"""What every model worker shares: device and dtype choice, batching over the live rows of a Ray
Data batch, bad input turned into reject rows, per-row timing, and the actor-pool arguments.

A worker is a step of a pipeline's Plan (runtime.plan):

    steps.model("ground", "grounding", image="win", phrases="class_nouns")

Subclasses declare which constructor arguments name the columns they read (`inputs`) and write
(`outputs`), the rejects they can produce, and implement only `check(row)` (input validation,
raising Reject) and `predict(rows) -> list[dict]` (one output dict per row, model work batched).
A class that holds a role's model also declares the role (`role`, `builder`, `cost`, `simulated`)
and registers itself with runtime.roles.register_worker: the plan finds it by the role's name.
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
                 device: str | None = None, drop: tuple = (), keep=None, retries: int = 3):
        self.model_id = model
        self.stage = stage or self.role
        self.device = pick_device(device)
        self.dtype_name = dtype
        self.drop, self.keep = tuple(drop), keep
        self.retries = retries  # attempts after the first on an infrastructure error

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

    def _predict_isolating(self, inputs: list[dict], attempt: int = 0) -> list:
        """Batched predict, with the three kinds of failure kept apart:
        - an infrastructure error (CUDA out of memory, a broken CUDA context, a timeout: the
          library's RuntimeError) is retried, an out-of-memory one on half the batch first; still
          failing after `retries`, each row is tried once alone and what fails is a retryable
          `model_error` reject (the next run tries it again);
        - a data error from the library (ValueError on an input it cannot take) isolates the row
          that causes it: a final `model_error` reject, the rest of the batch goes on;
        - anything else (TypeError, KeyError) is a bug: it fails the run."""
        if not inputs:
            return []
        try:
            out = self.predict(inputs)
            if len(out) != len(inputs):
                raise AssertionError(f"{type(self).__name__}.predict returned {len(out)} outputs for {len(inputs)} inputs")
            return out
        except INFRASTRUCTURE_ERRORS as e:
            release_memory()
            if out_of_memory(e) and len(inputs) > 1:
                half = len(inputs) // 2
                return self._predict_isolating(inputs[:half], attempt) + self._predict_isolating(inputs[half:], attempt)
            if attempt < self.retries:
                return self._predict_isolating(inputs, attempt + 1)
            if len(inputs) > 1:
                return [self._predict_isolating([x], self.retries)[0] for x in inputs]
            return [Reject("model_error", _last_error(), retryable=True)]
        except DATA_ERRORS:
            if len(inputs) == 1:
                return [Reject("model_error", _last_error())]
            return [self._predict_isolating([x], attempt)[0] for x in inputs]


# An infrastructure error is the machine's, not the row's: torch raises CUDA out-of-memory
# (torch.OutOfMemoryError) and a broken CUDA context as RuntimeError. Checked before DATA_ERRORS,
# which hold OSError (TimeoutError and ConnectionError are OSErrors).
INFRASTRUCTURE_ERRORS = (RuntimeError, TimeoutError, ConnectionError, MemoryError)


def out_of_memory(e: BaseException) -> bool:
    return isinstance(e, MemoryError) or "out of memory" in str(e).lower()


def release_memory() -> None:
    """Give cached CUDA memory back before a retry (a smaller batch needs it)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _last_error() -> str:
    import traceback

    return traceback.format_exc(limit=2)[-1500:]


