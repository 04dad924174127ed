"""The kinds of step a Plan is made of, each a small class with one meaning whatever runs it: how it
maps a batch is written once (`apply`, `gather`, the worker's own `__call__`), and how it binds to
each executor beside it (`on_ray`: a Ray Data stage; `on_local`: a loop in this process).

- Cpu: a row function, as Ray tasks (GPU actors never wait on JPEG work);
- Batch: a function of a batch's live rows (MultiID's one-matmul retrieval), as tasks;
- Model: a worker class on an actor pool of its ModelSpec's size;
- Gather: a barrier; a function on the driver over every live row's `reads` returns named values;
- Resume: drops the rows whose key the dataset already has.

`drop` and `last` are set by Plan.check: the columns removed after the step, and whether the step
keeps only what the schema stores. What a run learns is its Run's (runtime/execute.py).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, ClassVar

from runtime.rows import batch_of, each, rows_of, run_step
from schemas.contract import TIMING_PREFIX

CPU_BATCH_SIZE = 8


@dataclass(frozen=True)
class Step:
    name: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    rejects: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()  # values (gathered, or the plan's inputs) passed to the step
    provides: tuple[str, ...] = ()  # gather: the names of the values it returns
    drop: tuple[str, ...] = ()  # set by Plan.check
    last: bool = False  # set by Plan.check: keeps only the schema's columns

    kind: ClassVar[str] = "step"
    per_row: ClassVar[bool] = True  # does work per row: a stage of the run summary, can drop columns

    def describe(self, spec=None) -> str:
        raise NotImplementedError

    def on_ray(self, ds, run):
        raise NotImplementedError

    def on_local(self, rows: list[dict], run) -> list[dict]:
        raise NotImplementedError


def in_batches(rows: list[dict], size: int, fn: Callable) -> list[dict]:
    """fn over consecutive batches of `size` rows (as Ray Data would cut them), rows back."""
    return [r for i in range(0, len(rows), size) for r in rows_of(fn(batch_of(rows[i:i + size])))]


@dataclass(frozen=True)
class Cpu(Step):
    fn: Callable | None = None
    batch_size: int = CPU_BATCH_SIZE  # rows per task batch

    kind: ClassVar[str] = "cpu"

    def rows_function(self, fn: Callable) -> Callable[[list[dict]], list]:
        return each(fn)  # a row function: per row the new row or its Reject

    def apply(self, batch, needs: dict, keep):
        """The step on one batch: the row protocol of runtime.rows.run_step."""
        fn = partial(self.fn, **needs) if needs else self.fn
        return run_step(self.name, batch, self.rows_function(fn), self.writes, self.drop, keep)

    def on_ray(self, ds, run):
        refs, keep, apply = {n: run.ref(n) for n in self.needs}, run.keep_for(self), self.apply

        def task(batch):
            needs = {}
            if refs:
                import ray

                needs = {k: ray.get(v) for k, v in refs.items()}
            return apply(batch, needs, keep)

        task.__name__ = task.__qualname__ = self.name  # Ray Data names the operator, its bar and logs so
        return ds.map_batches(task, batch_size=self.batch_size, batch_format="pyarrow")

    def on_local(self, rows, run):
        needs, keep = {n: run.values[n] for n in self.needs}, run.keep_for(self)
        return in_batches(rows, self.batch_size, lambda b: self.apply(b, needs, keep))

    def describe(self, spec=None) -> str:
        return "cpu: row function, tasks"


@dataclass(frozen=True)
class Batch(Cpu):
    kind: ClassVar[str] = "batch"

    def rows_function(self, fn: Callable) -> Callable[[list[dict]], list]:
        return fn  # already a function of the batch's live rows

    def describe(self, spec=None) -> str:
        return "cpu: batch function, tasks"


@dataclass(frozen=True)
class Model(Step):
    role: str = ""
    cls: type | None = None
    spec: object = None  # the ModelSpec as configured; a run may size it otherwise (pools: auto)
    kwargs: dict = field(default_factory=dict)

    kind: ClassVar[str] = "model"

    def worker_args(self, spec, keep) -> dict:
        return {"model": spec.model, "dtype": spec.dtype, "retries": spec.retries, "stage": self.name,
                "drop": self.drop, "keep": keep, **self.kwargs}

    def pool_args(self, spec, keep=None) -> dict:
        """map_batches arguments of the step's actor pool for a ModelSpec."""
        import ray

        args = {
            "fn_constructor_kwargs": self.worker_args(spec, keep),
            "batch_size": spec.batch_size,
            "num_gpus": spec.num_gpus or None,
            "num_cpus": spec.num_cpus,
            # a fixed size, so that every GPU actor starts at once (Ray Data otherwise adds them one at a time)
            "compute": ray.data.ActorPoolStrategy(size=spec.concurrency),
            "zero_copy_batch": True,
        }
        if spec.resources:
            args["resources"] = dict(spec.resources)
        return args

    def on_ray(self, ds, run):
        spec = run.spec(self)
        # blocks of one batch: a pool of k actors then gets k bundles, where a block of a 16-row
        # VLM batch would keep one FLUX Fill actor busy for 4 batches and two idle
        ds = ds.repartition(target_num_rows_per_block=spec.batch_size)
        return ds.map_batches(self.cls, batch_format="pyarrow", **self.pool_args(spec, run.keep_for(self)))

    def on_local(self, rows, run):
        spec = run.spec(self)
        t0 = time.perf_counter()
        worker = self.cls(**self.worker_args(spec, run.keep_for(self)))
        run.loads[self.name] = time.perf_counter() - t0
        return in_batches(rows, spec.batch_size, worker)

    def describe(self, spec=None) -> str:
        spec = spec or self.spec
        gpus = f", {spec.num_gpus:g} GPU" if spec.num_gpus else ""
        gpus += "".join(f", {v:g} {k}" for k, v in spec.resources.items())
        return (f"model {self.role}: {self.cls.__name__} x{spec.concurrency} actor(s), {spec.num_cpus:g} CPU{gpus}, "
                f"batch {spec.batch_size}, {spec.model}")


@dataclass(frozen=True)
class Gather(Step):
    fn: Callable | None = None

    kind: ClassVar[str] = "gather"
    per_row: ClassVar[bool] = False

    def gather(self, rows: list[dict], run) -> None:
        """fn(live rows with only `reads`, **needs) on the driver; its values go to the run."""
        from runtime.plan import PlanError

        got = self.fn(rows, **{n: run.values[n] for n in self.needs})
        if set(got) != set(self.provides):
            raise PlanError(f"{run.plan.name}: gather {self.name!r} returned {sorted(got)}, not {sorted(self.provides)}")
        run.learn(got)

    def on_ray(self, ds, run):
        ds = ds.materialize()
        # what the barrier holds, for the log and tests: columns a later step writes again (a
        # decoded image) were dropped before it
        held = ds.schema()  # None when nothing is left (a rerun of a finished run)
        run.barriers[self.name] = [c for c in (held.names if held else []) if not c.startswith(TIMING_PREFIX)]
        run.log(f"{run.plan.name}: {self.name} holds {ds.count()} rows of {', '.join(run.barriers[self.name])}")
        self.gather(live_rows(ds, self.reads), run)
        return ds

    def on_local(self, rows, run):
        self.gather([{c: r[c] for c in self.reads if c in r} for r in rows if not r.get("reject_reason")], run)
        return rows

    def describe(self, spec=None) -> str:
        return "driver: gathers every live row (barrier)"


@dataclass(frozen=True)
class Resume(Step):
    kind: ClassVar[str] = "resume"
    per_row: ClassVar[bool] = False

    def committed(self, run):
        """The dataset's decided keys, sorted (schemas.store.sorted_keys)."""
        import numpy as np

        from schemas.store import DatasetDir, dataset_uri

        if run.out is None:
            return np.zeros(0, "S1")
        name = run.plan.schema.name
        return DatasetDir.open(dataset_uri(run.out, name), dataset=name).committed_key_array()

    def on_ray(self, ds, run):
        done = self.committed(run)
        run.log(f"{run.plan.name}: {len(done)} keys already committed")
        if not len(done):
            return ds
        ds = drop_keys(ds, done)
        # A rerun of a finished run: nothing is left, so no model pool is started (a production
        # model takes minutes to load on every GPU of the cluster). Finding that out reads the
        # source up to here once more, only on a rerun, and stops at the first row left.
        if ds.limit(1).count() == 0:
            import ray

            run.nothing_left = True
            run.log(f"{run.plan.name}: every input is committed, nothing to run")
            return ray.data.from_items([])
        return ds

    def on_local(self, rows, run):
        done = self.committed(run)
        return [r for r, new in zip(rows, is_new([r["key"] for r in rows], done)) if new] if len(done) else rows

    def describe(self, spec=None) -> str:
        return "resume: drops committed keys"


def live_rows(ds, columns) -> list[dict]:
    """Every live row of a (materialized) dataset, with only `columns`: what a gather sees."""
    columns = list(columns)
    out = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=4096):
        if "reject_reason" in b.column_names:
            b = b.filter(b["reject_reason"].is_null())
        out += rows_of(b.select([c for c in columns if c in b.column_names]))
    return out


def is_new(keys, done):
    """Per key: not among `done` (sorted, numpy bytes): a binary search, log n per key."""
    import numpy as np

    keys = np.asarray(keys, dtype="S") if len(keys) else np.zeros(0, "S1")
    if not len(done):
        return np.ones(len(keys), bool)
    at = np.minimum(np.searchsorted(done, keys), len(done) - 1)
    return done[at] != keys


def drop_keys(ds, done):
    """Resume: drop source rows whose key is already a sample or a reject, before any model work.
    `done` goes to the object store once; each block's keys are searched in it (zero-copy numpy)."""
    import pyarrow as pa
    import ray

    done_ref = ray.put(done)

    def keep_new(batch: pa.Table) -> pa.Table:
        return batch.filter(pa.array(is_new(batch["key"].to_pylist(), ray.get(done_ref))))

    return ds.map_batches(keep_new, batch_format="pyarrow", batch_size=None)
