"""A pipeline's DAG as one Plan: Steps in order, each with the columns it reads and writes.

    steps = Plan("dip", cfg, WORKERS, SCHEMA, source=("key", "input", "prompt", ...))
    steps.cpu("positive_gate", partial(dip.positive_gate, min_score=9, qa=True))   # declared by @step
    steps.model("caption", "vlm", images=["crops"], prompt="caption_prompts", output="caption_raw")
    steps.check()          # before Ray starts: every read is written upstream, the schema is complete
    ds = steps.apply(source_dataset, out)

A CPU step's columns come from its function's `@step(...)` declaration (plus any the pipeline adds
for a configured function, e.g. the manifest fields of `finalize`); a model step's come from its
worker's arguments (`Worker.columns`). `check` also decides where each temporary column is
dropped: right after the last step that reads it, unless the dataset's schema stores it.
"""
from __future__ import annotations

import fnmatch
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Iterable

from runtime.pools import shortfall
from runtime.rows import each, rows_of, run_step
from schemas.contract import REJECT_COLUMNS, TIMING_PREFIX, DatasetSchema

ALWAYS = ("key", "input")  # every row has them; rejects keep them
CPU_BATCH_SIZE = 8


class PlanError(ValueError):
    """Miswired plan or config: one line naming the pipeline, the step and the column."""


@dataclass(frozen=True)
class Columns:
    reads: tuple[str, ...] = ()  # must exist when the step runs
    writes: tuple[str, ...] = ()  # the only new columns the step may add ("mask_*": a family)
    optional: tuple[str, ...] = ()  # read when present (kept alive until the step, never required)
    rejects: tuple[str, ...] = ()  # reasons it can reject with


def step(reads: Iterable[str] = (), writes: Iterable[str] = (), optional: Iterable[str] = (),
         rejects: Iterable[str] = ()):
    """Declare the columns of a stage function (stages/ use it on every row or batch function)."""

    def mark(fn):
        fn.columns = Columns(tuple(reads), tuple(writes), tuple(optional), tuple(rejects))
        return fn

    return mark


def columns_of(fn) -> Columns:
    while isinstance(fn, partial):
        fn = fn.func
    cols = getattr(fn, "columns", None)
    if cols is None:
        raise PlanError(f"{getattr(fn, '__qualname__', fn)} declares no columns (decorate it with runtime.plan.step)")
    return cols


@dataclass
class Step:
    """One stage of the DAG. kind: cpu (a row function, as tasks), batch (a function on the list of
    a batch's live rows, as tasks), model (a worker class on an actor pool), gather (a function on
    the driver over every live row's `reads`, returning named values for later steps: a barrier),
    resume (drops rows whose key is already committed)."""

    name: str
    kind: str
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    rejects: tuple[str, ...] = ()
    fn: Callable | None = None
    role: str | None = None
    cls: type | None = None
    spec: object = None
    kwargs: dict = field(default_factory=dict)
    needs: tuple[str, ...] = ()  # gathered values passed to fn as keyword arguments
    provides: tuple[str, ...] = ()  # gather: the names of the values it returns
    batch_size: int = CPU_BATCH_SIZE  # rows per CPU task batch
    drop: tuple[str, ...] = ()  # set by Plan.check
    last: bool = False  # set by Plan.check: keeps only the schema's columns


def _matches(column: str, names: Iterable[str]) -> bool:
    return any(column == n or ("*" in n and fnmatch.fnmatchcase(column, n)) or
               ("*" in column and fnmatch.fnmatchcase(n, column)) for n in names)


@dataclass(frozen=True)
class SchemaColumns:
    """The columns a row keeps at the end: the schema's members and manifest columns, key, input,
    the reject marks and the stage timings."""

    names: frozenset

    @classmethod
    def of(cls, schema: DatasetSchema) -> "SchemaColumns":
        return cls(frozenset([m.name for m in schema.members] + schema.manifest_schema.names + list(ALWAYS) +
                             list(REJECT_COLUMNS)))

    def __call__(self, column: str) -> bool:
        return column.startswith(TIMING_PREFIX) or _matches(column, self.names)


class Plan:
    """The Steps of one output dataset in DAG order. `workers` maps a model role to its worker
    class (the pipeline's classes, or a test's doubles); a role's ModelSpec is the config field of
    the same name."""

    def __init__(self, name: str, cfg, workers: dict, schema: DatasetSchema, source: Iterable[str],
                 inputs: Iterable[str] = (), shard_by: str | None = None):
        """source: the columns of the source rows; inputs: values the driver passes to `apply`
        (e.g. MultiID's bank centers for the group photos) that steps take with `needs`;
        shard_by: a manifest column whose values the writer keeps in separate shards."""
        self.name, self.cfg, self.workers, self.schema = name, cfg, workers, schema
        self.shard_by = shard_by
        self.source, self.inputs = tuple(source), tuple(inputs)
        self.steps: list[Step] = []
        self.gathered: dict = {}  # what the gather steps of the last apply returned
        self.barriers: dict = {}  # per gather of the last apply: the columns its materialized rows held
        self.checked = False
        self.configured: dict = {}  # model step -> its ModelSpec as the config gave it (before pools: auto)

    # building --------------------------------------------------------------------------------
    def _add(self, s: Step) -> None:
        if any(x.name == s.name for x in self.steps):
            raise PlanError(f"{self.name}: two steps named {s.name!r}")
        self.steps.append(s)
        self.checked = False

    def cpu(self, name: str, fn: Callable[[dict], dict], *, reads=(), writes=(), optional=(), rejects=(),
            needs=(), kind: str = "cpu", batch_size: int = CPU_BATCH_SIZE) -> None:
        """A function of one row (kind cpu) or of the batch's live rows (kind batch) as CPU tasks.
        Its columns are its @step declaration plus the ones given here."""
        c = columns_of(fn)
        self._add(Step(name, kind, reads=c.reads + tuple(reads), writes=c.writes + tuple(writes),
                       optional=c.optional + tuple(optional), rejects=c.rejects + tuple(rejects), fn=fn,
                       needs=tuple(needs), batch_size=batch_size))

    def batch(self, name: str, fn: Callable[[list[dict]], list], **kw) -> None:
        self.cpu(name, fn, kind="batch", **kw)

    def model(self, name: str, role: str, **kwargs) -> None:
        """A model worker of `role` on its actor pool; its columns come from its arguments."""
        if role not in self.workers:
            raise PlanError(f"{self.name}: step {name!r}: no worker for role {role!r} (known: {sorted(self.workers)})")
        cls, spec = self.workers[role], getattr(self.cfg, role, None)
        if spec is None:
            raise PlanError(f"{self.name}: step {name!r}: the config has no model spec {role!r}")
        unknown = sorted(set(kwargs) - cls.arguments())
        if unknown:
            raise PlanError(f"{self.name}: step {name!r}: {cls.__name__} takes no argument(s) {unknown}")
        reads, writes = cls.columns(**kwargs)
        self._add(Step(name, "model", reads=tuple(reads), writes=tuple(writes), rejects=tuple(cls.rejects),
                       role=role, cls=cls, spec=spec, kwargs=kwargs))

    def gather(self, name: str, fn: Callable[..., dict], *, reads: Iterable[str], provides: Iterable[str],
               needs: Iterable[str] = ()) -> None:
        """A barrier: every row up to here is computed, `fn(live rows with only `reads`, **needs)`
        runs on the driver and returns the values `provides` names; later steps take them with
        `needs`. Only the columns read travel to the driver, never the images."""
        self._add(Step(name, "gather", reads=tuple(reads), fn=fn, provides=tuple(provides), needs=tuple(needs)))

    def resume(self, name: str = "resume") -> None:
        """Drop rows whose key this dataset already has as a sample or a reject."""
        self._add(Step(name, "resume", reads=("key",)))

    # checking --------------------------------------------------------------------------------
    def check(self) -> "Plan":
        """Every column a step reads is written upstream (or by the source), every value it needs
        is gathered upstream, and every member the schema requires exists at the end. Then each
        step learns what to drop after it. Raises PlanError naming the step and the column."""
        have, provided = list(ALWAYS) + list(self.source), set(self.inputs)
        for s in self.steps:
            for c in s.reads:
                if not _matches(c, have):
                    raise PlanError(f"{self.name}: step {s.name!r} reads column {c!r}, which no step before it "
                                    f"writes and the source does not have")
            for n in s.needs:
                if n not in provided:
                    raise PlanError(f"{self.name}: step {s.name!r} needs {n!r}, which no gather step before it "
                                    f"provides and the plan's inputs do not have")
            have += s.writes
            provided |= set(s.provides)
        required = [m.name for m in self.schema.members if m.required and not m.family and m.name != "json"]
        for c in required:
            if not _matches(c, have):
                raise PlanError(f"{self.name}: the {self.schema.name} schema requires member {c!r}, which no step writes")
        keep = SchemaColumns.of(self.schema)
        last_use: dict[str, int] = {c: 0 for c in self.source}
        dead: list[tuple[str, int, int]] = []  # (column, last use, the step that writes it anew)
        for i, s in enumerate(self.steps):
            for c in s.reads + s.optional:
                for known in [k for k in last_use if _matches(k, [c])] or [c]:
                    last_use[known] = i
            for c in s.writes:
                if c in last_use and last_use[c] < i and c not in ALWAYS and "*" not in c:
                    dead.append((c, last_use[c], i))  # written again, unread since: the old value is dead
                last_use[c] = i
        for s in self.steps:
            s.drop, s.last = (), False

        def drop_after(c: str, i: int, before: int) -> None:
            target = next((j for j, s in enumerate(self.steps) if j >= i and s.kind not in ("gather", "resume")), None)
            if target is not None and target < before:
                self.steps[target].drop += (c,)

        for c, i in last_use.items():
            if not keep(c) and c not in ALWAYS:
                drop_after(c, i, len(self.steps))
        # A column a later step writes again is dropped in between even when the schema stores
        # it: MultiID's decoded image does not travel through a gather's barrier, it is decoded
        # again after it.
        for c, i, rewrite in dead:
            drop_after(c, i, rewrite)
        if self.steps and self.steps[-1].kind not in ("gather", "resume"):
            self.steps[-1].last = True  # the final step keeps only what the schema stores
        self.checked = True
        return self

    def columns_at(self, name: str) -> set[str]:
        """The columns a row has when step `name` runs (after the drops of the steps before it):
        what a gather's barrier materializes."""
        if not self.checked:
            self.check()
        have = set(ALWAYS) | set(self.source)
        for s in self.steps:
            if s.name == name:
                return have
            have = (have | set(s.writes)) - set(s.drop)
        raise PlanError(f"{self.name}: no step {name!r}")

    @property
    def stage_names(self) -> list[str]:
        """The stages of the run summary, in DAG order (gather and resume do no per-row work)."""
        return [s.name for s in self.steps if s.kind not in ("gather", "resume")]

    def unwritten_manifest_columns(self) -> list[str]:
        """Manifest columns no step and no source column provides: always null in this config."""
        have = list(ALWAYS) + list(self.source) + [c for s in self.steps for c in s.writes] + ["shard"]
        return [c for c in self.schema.manifest_schema.names if not _matches(c, have)]

    # running ---------------------------------------------------------------------------------
    def apply(self, ds, out: str, values: dict | None = None, log=print):
        """The steps as Ray Data stages: CPU steps as tasks (GPU actors never wait on them), model
        steps on fixed-size actor pools, gathers on the driver, resume before any model work.
        `values`: the plan's inputs."""
        import ray

        if not self.checked:
            self.check()
        values = dict(values or {})
        missing = set(self.inputs) - set(values)
        if missing:
            raise PlanError(f"{self.name}: apply needs the inputs {sorted(missing)}")
        cluster = ray.cluster_resources()
        auto = getattr(self.cfg, "pools", "fixed") == "auto"
        if auto:
            self.size_pools(cluster.get("GPU", 0.0), log)
        short = shortfall(self, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0))
        if short and auto:  # sized for this cluster: it would wait forever
            raise PlanError(f"{short}; pools: auto cannot fit them (raise ray CPUs or lower num_cpus)")
        if short:  # an autoscaler may add nodes; without one the run waits forever
            log(f"warning: {short}: the run waits until the cluster grows")
        for s in self.steps:
            for res, amount in (s.spec.resources.items() if s.kind == "model" else ()):
                if cluster.get(res, 0.0) < amount * s.spec.concurrency - 1e-9:
                    log(f"warning: {self.name}: {s.name} needs {amount * s.spec.concurrency:g} {res}, the cluster has "
                        f"{cluster.get(res, 0.0):g}: its actors wait until a node offers it")
        keep = SchemaColumns.of(self.schema)
        refs = {k: ray.put(v) for k, v in values.items()}
        self.gathered, self.barriers = {}, {}
        for s in self.steps:
            if s.kind == "resume":
                ds, done = drop_committed(ds, out, self.schema.name)
                log(f"{self.name}: {done} keys already committed")
            elif s.kind == "gather":
                ds = ds.materialize()
                # what the barrier holds, for the log and tests: columns a later step writes
                # again (a decoded image) were dropped before it
                held = ds.schema()  # None when nothing is left (a rerun of a finished run)
                self.barriers[s.name] = [c for c in (held.names if held else []) if not c.startswith(TIMING_PREFIX)]
                log(f"{self.name}: {s.name} holds {ds.count()} rows of {', '.join(self.barriers[s.name])}")
                got = s.fn(live_rows(ds, s.reads), **{n: values[n] for n in s.needs})
                if set(got) != set(s.provides):
                    raise PlanError(f"{self.name}: gather {s.name!r} returned {sorted(got)}, not {sorted(s.provides)}")
                values.update(got)
                self.gathered.update(got)
                refs.update({k: ray.put(v) for k, v in got.items()})
            elif s.kind == "model":
                # blocks of one batch: a pool of k actors then gets k bundles, where a block of a
                # 16-row VLM batch would keep one FLUX Fill actor busy for 4 batches and two idle
                ds = ds.repartition(target_num_rows_per_block=s.spec.batch_size)
                ds = ds.map_batches(s.cls, batch_format="pyarrow", **pool_args(
                    s.spec, stage=s.name, drop=s.drop, keep=keep if s.last else None, **s.kwargs))
            else:
                task = cpu_task(s, keep if s.last else None, {n: refs[n] for n in s.needs})
                ds = ds.map_batches(task, batch_size=s.batch_size, batch_format="pyarrow")
        return ds

    def size_pools(self, gpus: float, log=print) -> dict:
        """pools: auto: each GPU step's actors and GPU share from the cost table, for a cluster of
        `gpus` GPUs (runtime/pools.py); the split and its bound go to `log`."""
        from runtime.costs import load_costs
        from runtime.pools import apply_split, auto_split, describe_split

        costs = load_costs(getattr(self.cfg, "cost_table", None))
        unknown = sorted({s.role for s in self.steps if s.kind == "model" and s.role not in costs})
        if unknown:
            raise PlanError(f"{self.name}: pools: auto: the cost table has no role(s) {unknown}")
        split = auto_split(self, gpus, costs)
        self.configured = self.configured or {s.name: s.spec for s in self.steps if s.kind == "model"}
        apply_split(self, split, self.configured)
        log(describe_split(self, split, gpus, costs))
        return split

    def run_local(self, rows: list[dict], values: dict | None = None, seconds: dict | None = None,
                  loads: dict | None = None) -> list[dict]:
        """The same steps in this process, one after another over lists of rows (no Ray, nothing
        committed, so resume keeps every row): benchmarks/pipelines.py's bare loop. `seconds` and
        `loads` collect per-step work and model load time when given."""
        from runtime.rows import batch_of

        if not self.checked:
            self.check()
        values, keep = dict(values or {}), SchemaColumns.of(self.schema)
        seconds = {} if seconds is None else seconds
        loads = {} if loads is None else loads
        for s in self.steps:
            t0 = time.perf_counter()
            if s.kind == "gather":
                values.update(s.fn([{c: r[c] for c in s.reads if c in r} for r in rows if not r.get("reject_reason")],
                                   **{n: values[n] for n in s.needs}))
            if s.kind != "model":
                fn = None if s.kind in ("gather", "resume") else partial(
                    _run_local_cpu, s, {n: values[n] for n in s.needs}, keep if s.last else None)
                size = s.batch_size
            else:
                worker = s.cls(model=s.spec.model, dtype=s.spec.dtype, stage=s.name, drop=s.drop,
                               keep=keep if s.last else None, **s.kwargs)
                loads[s.name] = time.perf_counter() - t0
                t0, fn, size = time.perf_counter(), worker, s.spec.batch_size
            if fn is not None:
                rows = [r for i in range(0, len(rows), size) for r in rows_of(fn(batch_of(rows[i:i + size])))]
            seconds[s.name] = seconds.get(s.name, 0.0) + time.perf_counter() - t0
        return rows

    # showing ---------------------------------------------------------------------------------
    def describe(self) -> str:
        """The DAG as `subjectforge plan` prints it: per step its kind and resources, the columns
        it reads and writes, the rejects it can produce."""
        if not self.checked:
            self.check()
        lines = [f"{self.name} -> {self.schema.name}: {len(self.steps)} steps",
                 f"  source: {', '.join(self.source)}"]
        if self.inputs:
            lines.append(f"  inputs: {', '.join(self.inputs)}")
        for i, s in enumerate(self.steps, 1):
            lines.append(f"  {i:>2}. {s.name:<18} {kind_of(s)}")
            for label, cols in (("reads", s.reads + tuple(f"{c}?" for c in s.optional)), ("writes", s.writes),
                                ("needs", s.needs), ("provides", s.provides), ("rejects", s.rejects),
                                ("drops", s.drop)):
                if cols:
                    lines.append(f"      {label:<8} {', '.join(cols)}")
        unwritten = self.unwritten_manifest_columns()
        if unwritten:
            lines.append(f"  manifest columns no step writes here (null): {', '.join(unwritten)}")
        return "\n".join(lines)


def kind_of(s: Step) -> str:
    if s.kind == "model":
        spec = s.spec
        gpus = f", {spec.num_gpus:g} GPU" if spec.num_gpus else ""
        gpus += "".join(f", {v:g} {k}" for k, v in spec.resources.items())
        return (f"model {s.role}: {s.cls.__name__} x{spec.concurrency} actor(s), {spec.num_cpus:g} CPU{gpus}, "
                f"batch {spec.batch_size}, {spec.model}")
    return {"cpu": "cpu: row function, tasks", "batch": "cpu: batch function, tasks",
            "gather": "driver: gathers every live row (barrier)", "resume": "resume: drops committed keys"}[s.kind]


def _run_local_cpu(s: Step, needs: dict, keep, batch):
    fn = partial(s.fn, **needs) if needs else s.fn
    return run_step(s.name, batch, each(fn) if s.kind == "cpu" else fn, s.writes, s.drop, keep)


def cpu_task(s: Step, keep, needs: dict) -> Callable:
    """A CPU step as the function of its Ray tasks, named after the step (Ray Data names the
    operator, its progress bar and its logs after it). `needs`: object refs of gathered values."""
    name, kind, fn, writes, drop = s.name, s.kind, s.fn, s.writes, s.drop

    def task(batch):
        f = fn
        if needs:
            import ray

            f = partial(fn, **{k: ray.get(v) for k, v in needs.items()})
        return run_step(name, batch, each(f) if kind == "cpu" else f, writes, drop, keep)

    task.__name__ = task.__qualname__ = name
    return task


def pool_args(spec, **kwargs) -> dict:
    """map_batches arguments for a worker from its ModelSpec. The pool has a fixed size so that
    every GPU actor starts at once (Ray Data otherwise adds GPU actors one at a time)."""
    import ray

    args = {
        "fn_constructor_kwargs": {"model": spec.model, "dtype": spec.dtype, "retries": spec.retries, **kwargs},
        "batch_size": spec.batch_size,
        "num_gpus": spec.num_gpus or None,
        "num_cpus": spec.num_cpus,
        "compute": ray.data.ActorPoolStrategy(size=spec.concurrency),
        "zero_copy_batch": True,
    }
    if spec.resources:
        args["resources"] = dict(spec.resources)
    return args


def live_rows(ds, columns: Iterable[str]) -> list[dict]:
    """Every live row of a (materialized) dataset, with only `columns`: what a gather sees."""
    columns = list(columns)
    out = []
    for b in ds.iter_batches(batch_format="pyarrow", batch_size=4096):
        if "reject_reason" in b.column_names:
            b = b.filter(b["reject_reason"].is_null())
        out += rows_of(b.select([c for c in columns if c in b.column_names]))
    return out


def drop_committed(ds, out: str, dataset: str):
    """Resume: drop source rows whose key is already a sample or a reject, before any model work."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import ray

    from schemas.store import DatasetDir

    done = DatasetDir.open(out.rstrip("/") + "/" + dataset, dataset=dataset).committed_keys()
    if not done:
        return ds, 0
    done_ref = ray.put(pa.array(sorted(done), pa.string()))

    def keep_new(batch: pa.Table) -> pa.Table:
        return batch.filter(pc.invert(pc.is_in(batch["key"], value_set=ray.get(done_ref))))

    return ds.map_batches(keep_new, batch_format="pyarrow"), len(done)
