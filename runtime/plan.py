"""A pipeline's DAG as one Plan per output dataset: a declaration, checked before anything runs.

    steps = Plan("dip", cfg, SCHEMA, source=("key", "input", "prompt", ...))
    steps.cpu("positive_gate", partial(dip.positive_gate, min_score=9, qa=True))   # declared by @step
    steps.model("caption", "vlm", images=["crops"], prompt="caption_prompts", output="caption_raw")
    steps.check()          # before Ray starts: every read is written upstream, the schema is complete

A CPU step's columns come from its function's `@step(...)` declaration (plus any the pipeline adds
for a configured function, e.g. the manifest fields of `finalize`); a model step's come from its
worker's arguments (`Worker.columns`), its worker from the role registry (runtime/roles.py).
`check` also decides where each temporary column is dropped: right after the last step that reads
it, unless the dataset's schema stores it. Once checked a Plan does not change: what a run learns
(gathered values, barriers, the pools' split) lives in its Run (runtime/execute.py), and the
executors there run the steps (runtime/steps.py: one class per kind of step).

A pipeline with several outputs declares one plan per output and their order: `depends` names the
plans whose gathered values this one takes as `inputs`, `before` reads values from the output
folder before the plan runs, `after` writes what is not a shard once its dataset is committed
(MultiID's bank files, its split record). The driver runs every plan the same way.
"""
from __future__ import annotations

import dataclasses
import fnmatch
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable

from runtime.steps import CPU_BATCH_SIZE, Batch, Cpu, Gather, Model, Resume, Step
from schemas.contract import REJECT_COLUMNS, TIMING_PREFIX, DatasetSchema

ALWAYS = ("key", "input")  # every row has them; rejects keep them
__all__ = ["ALWAYS", "CPU_BATCH_SIZE", "Columns", "Hook", "Plan", "PlanError", "SchemaColumns", "columns_of",
           "order", "step"]


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


@dataclass(frozen=True)
class Hook:
    """A driver step around a plan: `before` hooks run fn(out) -> dict of `provides` before the
    source is read; `after` hooks run fn(out, **needs) once the plan's dataset is committed."""

    name: str
    fn: Callable
    needs: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()


class Plan:
    """The Steps of one output dataset in DAG order. A model step's worker is its role's
    (runtime/roles.py); `workers` replaces a role's class (tests' doubles, simulated
    accelerators); a role's ModelSpec is the config field of the same name."""

    def __init__(self, name: str, cfg, schema: DatasetSchema, *, source: Iterable[str], inputs: Iterable[str] = (),
                 shard_by: str | None = None, depends: Iterable[str] = (), workers: dict | None = None):
        """source: the columns of the source rows; inputs: values the plan takes from the plans it
        `depends` on (their gathers) or from its `before` hooks, which steps take with `needs`;
        shard_by: a manifest column whose values the writer keeps in separate shards."""
        self.name, self.cfg, self.schema = name, cfg, schema
        self.workers = dict(workers or {})
        self.shard_by = shard_by
        self.source, self.inputs, self.depends = tuple(source), tuple(inputs), tuple(depends)
        self._steps: list[Step] = []
        self.before_hooks: list[Hook] = []
        self.after_hooks: list[Hook] = []
        self.checked = False

    @property
    def steps(self) -> tuple[Step, ...]:
        return tuple(self._steps)

    # building --------------------------------------------------------------------------------
    def _add(self, s: Step) -> None:
        if self.checked:
            raise PlanError(f"{self.name}: the plan is checked; step {s.name!r} comes too late")
        if any(x.name == s.name for x in self._steps):
            raise PlanError(f"{self.name}: two steps named {s.name!r}")
        self._steps.append(s)

    def cpu(self, name: str, fn: Callable[[dict], dict], *, reads=(), writes=(), optional=(), rejects=(),
            needs=(), batch_size: int = CPU_BATCH_SIZE) -> None:
        """A function of one row as CPU tasks. Its columns are its @step declaration plus the ones
        given here."""
        self._add(self._cpu(Cpu, name, fn, reads, writes, optional, rejects, needs, batch_size))

    def batch(self, name: str, fn: Callable[[list[dict]], list], *, reads=(), writes=(), optional=(), rejects=(),
              needs=(), batch_size: int = CPU_BATCH_SIZE) -> None:
        """A function of a batch's live rows (a list of dicts) as CPU tasks."""
        self._add(self._cpu(Batch, name, fn, reads, writes, optional, rejects, needs, batch_size))

    @staticmethod
    def _cpu(kind, name, fn, reads, writes, optional, rejects, needs, batch_size) -> Step:
        c = columns_of(fn)
        return kind(name, reads=c.reads + tuple(reads), writes=c.writes + tuple(writes),
                    optional=c.optional + tuple(optional), rejects=c.rejects + tuple(rejects), needs=tuple(needs),
                    fn=fn, batch_size=batch_size)

    def model(self, name: str, role: str, **kwargs) -> None:
        """A model worker of `role` on its actor pool; its columns come from its arguments."""
        from runtime.roles import RoleError, get_role

        cls = self.workers.get(role)
        if cls is None:
            try:
                cls = get_role(role).worker
            except RoleError as e:
                raise PlanError(f"{self.name}: step {name!r}: {e}") from None
            if cls is None:
                raise PlanError(f"{self.name}: step {name!r}: role {role!r} has no worker class")
        spec = getattr(self.cfg, role, None)
        if spec is None or not hasattr(spec, "concurrency"):
            raise PlanError(f"{self.name}: step {name!r}: the config ({type(self.cfg).__name__}) has no model "
                            f"spec field {role!r}")
        unknown = sorted(set(kwargs) - cls.arguments())
        if unknown:
            raise PlanError(f"{self.name}: step {name!r}: {cls.__name__} takes no argument(s) {unknown}")
        reads, writes = cls.columns(**kwargs)
        self._add(Model(name, reads=tuple(reads), writes=tuple(writes), rejects=tuple(cls.rejects), role=role,
                        cls=cls, spec=spec, kwargs=dict(kwargs)))

    def gather(self, name: str, fn: Callable[..., dict], *, reads: Iterable[str], provides: Iterable[str],
               needs: Iterable[str] = ()) -> None:
        """A barrier: every row up to here is computed, `fn(live rows with only `reads`, **needs)`
        runs on the driver and returns the values `provides` names; later steps (and the plans
        that depend on this one) take them with `needs`. Only the columns read travel to the
        driver, never the images."""
        self._add(Gather(name, reads=tuple(reads), fn=fn, provides=tuple(provides), needs=tuple(needs)))

    def resume(self, name: str = "resume") -> None:
        """Drop rows whose key this dataset already has as a sample or a reject."""
        self._add(Resume(name, reads=("key",)))

    def before(self, name: str, fn: Callable[[str], dict], *, provides: Iterable[str]) -> None:
        """fn(out) -> values read from the output folder before the plan runs."""
        if self.checked:
            raise PlanError(f"{self.name}: the plan is checked; hook {name!r} comes too late")
        self.before_hooks.append(Hook(name, fn, provides=tuple(provides)))

    def after(self, name: str, fn: Callable[..., None], *, needs: Iterable[str] = ()) -> None:
        """fn(out, **needs) once the plan's dataset is committed (files beside the shards)."""
        if self.checked:
            raise PlanError(f"{self.name}: the plan is checked; hook {name!r} comes too late")
        self.after_hooks.append(Hook(name, fn, needs=tuple(needs)))

    # checking --------------------------------------------------------------------------------
    def check(self) -> "Plan":
        """Every column a step reads is written upstream (or by the source), every value it needs
        is gathered upstream or is one of the plan's inputs, every model role declares a cost, a
        builder and a config field, and every member the schema requires exists at the end. Then
        each step learns what to drop after it, and the plan is frozen. Raises PlanError naming the
        step and the column. (That the plans it depends on provide its inputs: `order`.)"""
        if self.checked:
            return self
        from runtime.roles import ROLES

        mine = {n for h in self.before_hooks for n in h.provides}
        have, provided = list(ALWAYS) + list(self.source), set(self.inputs) | mine
        for s in self._steps:
            for c in s.reads:
                if not _matches(c, have):
                    raise PlanError(f"{self.name}: step {s.name!r} reads column {c!r}, which no step before it "
                                    f"writes and the source does not have")
            for n in s.needs:
                if n not in provided:
                    raise PlanError(f"{self.name}: step {s.name!r} needs {n!r}, which no gather step before it "
                                    f"provides and the plan's inputs do not have")
            if isinstance(s, Model) and s.role not in self.workers:
                problems = ROLES[s.role].problems() if s.role in ROLES else ["no declaration"]
                if problems:
                    raise PlanError(f"{self.name}: step {s.name!r}: model role {s.role!r} declares "
                                    f"{' and '.join(problems)} (runtime/roles.py)")
            have += s.writes
            provided |= set(s.provides)
        for h in self.after_hooks:
            missing = [n for n in h.needs if n not in provided]
            if missing:
                raise PlanError(f"{self.name}: after hook {h.name!r} needs {missing}, which no step provides")
        required = [m.name for m in self.schema.members if m.required and not m.family and m.name != "json"]
        for c in required:
            if not _matches(c, have):
                raise PlanError(f"{self.name}: the {self.schema.name} schema requires member {c!r}, which no step writes")
        self._steps = _with_drops(self._steps, self.source, SchemaColumns.of(self.schema))
        self.checked = True
        return self

    def provides(self) -> set[str]:
        """The values this plan's gathers and before hooks provide to the plans after it."""
        return {n for s in self._steps for n in s.provides} | {n for h in self.before_hooks for n in h.provides}

    def columns_at(self, name: str) -> set[str]:
        """The columns a row has when step `name` runs (after the drops of the steps before it):
        what a gather's barrier materializes."""
        self.check()
        have = set(ALWAYS) | set(self.source)
        for s in self._steps:
            if s.name == name:
                return have
            have = (have | set(s.writes)) - set(s.drop)
        raise PlanError(f"{self.name}: no step {name!r}")

    @property
    def stage_names(self) -> list[str]:
        """The stages of the run summary, in DAG order (gather and resume do no per-row work)."""
        return [s.name for s in self._steps if s.per_row]

    @property
    def model_steps(self) -> list[Model]:
        return [s for s in self._steps if isinstance(s, Model)]

    def unwritten_manifest_columns(self) -> list[str]:
        """Manifest columns no step and no source column provides: always null in this config."""
        have = list(ALWAYS) + list(self.source) + [c for s in self._steps for c in s.writes] + ["shard"]
        return [c for c in self.schema.manifest_schema.names if not _matches(c, have)]

    # showing ---------------------------------------------------------------------------------
    def describe(self, specs: dict | None = None) -> str:
        """The DAG as `subjectforge plan` prints it: per step its kind and resources, the columns
        it reads and writes, the rejects it can produce. `specs`: model step -> the ModelSpec a
        run would give it (pools: auto), else the config's."""
        self.check()
        lines = [f"{self.name} -> {self.schema.name}: {len(self._steps)} steps",
                 f"  source: {', '.join(self.source)}"]
        if self.depends:
            lines.append(f"  after: {', '.join(self.depends)}")
        if self.inputs:
            lines.append(f"  inputs: {', '.join(self.inputs)}")
        for h in self.before_hooks:
            lines.append(f"  before: {h.name} (from the output folder: {', '.join(h.provides)})")
        for i, s in enumerate(self._steps, 1):
            lines.append(f"  {i:>2}. {s.name:<18} {s.describe((specs or {}).get(s.name))}")
            for label, cols in (("reads", s.reads + tuple(f"{c}?" for c in s.optional)), ("writes", s.writes),
                                ("needs", s.needs), ("provides", s.provides), ("rejects", s.rejects),
                                ("drops", s.drop)):
                if cols:
                    lines.append(f"      {label:<8} {', '.join(cols)}")
        for h in self.after_hooks:
            lines.append(f"  after the write: {h.name}" + (f" (needs {', '.join(h.needs)})" if h.needs else ""))
        unwritten = self.unwritten_manifest_columns()
        if unwritten:
            lines.append(f"  manifest columns no step writes here (null): {', '.join(unwritten)}")
        return "\n".join(lines)


def _with_drops(steps: list[Step], source: tuple[str, ...], keep: SchemaColumns) -> list[Step]:
    """The steps with `drop` (the columns nothing after them reads) and `last` (the final step
    keeps only what the schema stores) set."""
    last_use: dict[str, int] = {c: 0 for c in source}
    dead: list[tuple[str, int, int]] = []  # (column, last use, the step that writes it anew)
    for i, s in enumerate(steps):
        for c in s.reads + s.optional:
            for known in [k for k in last_use if _matches(k, [c])] or [c]:
                last_use[known] = i
        for c in s.writes:
            if c in last_use and last_use[c] < i and c not in ALWAYS and "*" not in c:
                dead.append((c, last_use[c], i))  # written again, unread since: the old value is dead
            last_use[c] = i
    drops: list[tuple[str, ...]] = [() for _ in steps]

    def drop_after(c: str, i: int, before: int) -> None:
        target = next((j for j, s in enumerate(steps) if j >= i and s.per_row), None)
        if target is not None and target < before:
            drops[target] += (c,)

    for c, i in last_use.items():
        if not keep(c) and c not in ALWAYS:
            drop_after(c, i, len(steps))
    # A column a later step writes again is dropped in between even when the schema stores it:
    # MultiID's decoded image does not travel through a gather's barrier, it is decoded again after it.
    for c, i, rewrite in dead:
        drop_after(c, i, rewrite)
    last = len(steps) - 1 if steps and steps[-1].per_row else None
    return [dataclasses.replace(s, drop=drops[i], last=i == last) for i, s in enumerate(steps)]


def order(plans: list[Plan]) -> list[Plan]:
    """A pipeline's plans checked together, in an order where each comes after the plans it
    depends on: what each plan's inputs need must be provided by those plans' gathers or by its
    own before hooks."""
    by_name = {p.name: p for p in plans}
    done: list[Plan] = []
    provided: dict[str, set[str]] = {}
    pending = list(plans)
    while pending:
        ready = [p for p in pending if all(d in provided for d in p.depends)]
        if not ready:
            unknown = sorted({d for p in pending for d in p.depends if d not in by_name})
            raise PlanError(f"plans {[p.name for p in pending]} depend on "
                            + (f"unknown plan(s) {unknown}" if unknown else "each other (a cycle)"))
        for p in ready:
            given = set().union(*[provided[d] for d in p.depends]) | {n for h in p.before_hooks for n in h.provides}
            missing = [n for n in p.inputs if n not in given]
            if missing:
                raise PlanError(f"{p.name}: inputs {missing} are provided by no plan it depends on "
                                f"({', '.join(p.depends) or 'none'}) and no before hook")
            provided[p.name] = p.check().provides()
            done.append(p)
            pending.remove(p)
    return done
