"""Running a checked Plan: one Run per plan and run, and two executors that bind the same steps.

    ds, run = on_ray(plan, source_ds, out)        # Ray Data stages; write ds with runtime.driver.write
    rows, run = local(plan, rows)                 # the same steps in this process (benchmarks' bare loop)
    run.gathered["bank"]                          # what the plan's gathers returned

The Plan is a declaration and never changes; a Run holds what one execution learns: the values
its gathers return (and the inputs it was given), the columns each barrier held, the pools'
effective ModelSpecs (`pools: auto` sizes them for the cluster), the seconds of each step (local).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from runtime.plan import Plan, PlanError, SchemaColumns
from runtime.steps import Gather, Model, Step


@dataclass
class Run:
    plan: Plan
    out: str | None = None  # the output root (OUT): resume reads what OUT/<dataset> holds
    values: dict = field(default_factory=dict)  # the plan's inputs, then every value its gathers return
    specs: dict = field(default_factory=dict)  # model step -> ModelSpec of this run (default: the config's)
    log: Callable = print
    gathered: dict = field(default_factory=dict)  # what the gather steps returned
    barriers: dict = field(default_factory=dict)  # gather -> the columns its materialized rows held
    seconds: dict = field(default_factory=dict)  # local: step -> seconds of work
    loads: dict = field(default_factory=dict)  # local: model step -> seconds to construct its worker
    refs: dict = field(default_factory=dict)  # value name -> Ray object ref (put once, shared by tasks)
    nothing_left: bool = False  # resume dropped every row: the steps after it do not run

    def __post_init__(self):
        self.plan.check()
        missing = set(self.plan.inputs) - set(self.values)
        if missing:
            raise PlanError(f"{self.plan.name}: a run needs the inputs {sorted(missing)}")
        self.keep = SchemaColumns.of(self.plan.schema)

    def spec(self, step: Model):
        return self.specs.get(step.name, step.spec)

    def keep_for(self, step: Step):
        return self.keep if step.last else None

    def ref(self, name: str):
        if name not in self.refs:
            import ray

            self.refs[name] = ray.put(self.values[name])
        return self.refs[name]

    def learn(self, values: dict) -> None:
        """A gather's values: for the steps after it, and for the plans that depend on this one."""
        self.values.update(values)
        self.gathered.update(values)
        for name in values:
            self.refs.pop(name, None)


class Executor:
    """Binds each step of a plan to data, in order. The steps' meaning is theirs (runtime/steps.py);
    an executor only says how a step kind becomes work: a Ray Data stage, or a loop here."""

    def execute(self, plan: Plan, data, run: Run):
        for s in plan.steps:
            if run.nothing_left:  # every input committed: the gathers see no rows, nothing else runs
                if isinstance(s, Gather):
                    s.gather([], run)
                continue
            data = self.bind(s, data, run)
        return data

    def bind(self, step: Step, data, run: Run):
        raise NotImplementedError


class RayData(Executor):
    """Ray Data stages: CPU steps as tasks, model steps on actor pools, gathers on the driver. The
    pools are sized first: `pools: auto` splits the cluster's GPUs (runtime/pools.py); pools that
    cannot fit are an error with auto, a warning otherwise (an autoscaler may add nodes)."""

    def execute(self, plan: Plan, ds, run: Run):
        import ray

        from runtime.pools import shortfall, size_pools

        cluster = ray.cluster_resources()
        auto = getattr(plan.cfg, "pools", "fixed") == "auto"
        if auto:
            run.specs = size_pools(plan, cluster.get("GPU", 0.0), run.log)
        short = shortfall(plan, cluster.get("CPU", 0.0), cluster.get("GPU", 0.0), run.specs)
        if short and auto:  # sized for this cluster: it would wait forever
            raise PlanError(f"{short}; pools: auto cannot fit them (raise ray CPUs or lower num_cpus)")
        if short:
            run.log(f"warning: {short}: the run waits until the cluster grows")
        for s in plan.model_steps:
            spec = run.spec(s)
            for res, amount in spec.resources.items():
                if cluster.get(res, 0.0) < amount * spec.concurrency - 1e-9:
                    run.log(f"warning: {plan.name}: {s.name} needs {amount * spec.concurrency:g} {res}, the "
                            f"cluster has {cluster.get(res, 0.0):g}: its actors wait until a node offers it")
        return super().execute(plan, ds, run)

    def bind(self, step: Step, ds, run: Run):
        return step.on_ray(ds, run)


class Local(Executor):
    """The same steps in this process, one after another over lists of rows (no Ray), each step's
    seconds of work (worker construction apart, in run.loads) recorded in run.seconds."""

    def bind(self, step: Step, rows: list[dict], run: Run):
        t0 = time.perf_counter()
        rows = step.on_local(rows, run)
        run.seconds[step.name] = run.seconds.get(step.name, 0.0) + time.perf_counter() - t0 - run.loads.get(step.name, 0.0)
        return rows


def on_ray(plan: Plan, ds, out: str | None, values: dict | None = None, log=print) -> tuple:
    """The plan on `ds` (its source) as Ray Data stages: (the dataset to write, its Run)."""
    run = Run(plan, out, dict(values or {}), log=log)
    return RayData().execute(plan, ds, run), run


def local(plan: Plan, rows: list[dict], values: dict | None = None, out: str | None = None) -> tuple:
    """The plan on a list of rows in this process (resume drops what `out` has committed, nothing
    when out is None): (rows, its Run)."""
    run = Run(plan, out, dict(values or {}), log=lambda *a: None)
    return Local().execute(plan, rows, run), run
