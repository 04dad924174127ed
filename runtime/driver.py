"""The driver of a run, the same for every pipeline: arguments and config, the plans checked before
Ray starts (and ordered by what each depends on), the leases of the output folders, the tiny
models built, Ray, then per plan: its `before` hooks, the plan on its source (runtime/execute.py),
the write, its `after` hooks, the dataset card, the run summary. What one plan gathers reaches the
plans that depend on it (MultiID: the bank's centers reach the group photos).

A pipeline module declares its DatasetSpec (runtime/registry.py); its main is `run(SPEC, argv)`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from functools import partial

from runtime.config import ConfigError, PipelineConfig, load_config, missing_inputs
from schemas.store import DatasetDir, dataset_uri


def parse_args(description: str, config_cls: type[PipelineConfig], argv=None, prog: str | None = None):
    p = argparse.ArgumentParser(description=description, prog=prog)
    p.add_argument("--config", required=True, help="YAML config (configs/<pipeline>.<profile>.yaml)")
    p.add_argument("--out", required=True, help="output root: local path or URI (s3://bucket/prefix)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=VALUE",
                   help="override a config field, repeatable")
    p.add_argument("--force", action="store_true",
                   help="take over the output folder's lease at once (its holder was killed)")
    args = p.parse_args(argv)
    try:
        cfg = load_config(config_cls, args.config, args.overrides + (["write.force_lease=true"] if args.force else []))
        missing = missing_inputs(cfg)
        if missing:
            raise ConfigError("input " + "; ".join(missing))
    except ConfigError as e:
        usage_error(p.prog, e)
    return cfg, args.out


def usage_error(prog: str, error: Exception):
    """A user's mistake (config, --set, input path): one line on stderr, exit code 2, before Ray
    starts; never a traceback."""
    print(f"{prog}: {error}", file=sys.stderr)
    raise SystemExit(2)


def start_ray(cfg: PipelineConfig, modules=()) -> None:
    """Join the cluster of `ray job submit` (RAY_ADDRESS) or cfg.ray.address; else start Ray
    in-process on this machine. `modules`: what the prewarmed workers import (the plans' stages)."""
    import ray

    if not ray.is_initialized():  # else a caller's Ray (tests, benchmarks): its settings stand
        address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address)
        else:
            ray.init(num_cpus=cfg.ray.num_cpus, include_dashboard=False)
        if cfg.ray.data_object_store_bytes:
            # blocks queue between a fast stage and a slow one up to this budget, whatever the dataset size
            options = ray.data.DataContext.get_current().execution_options
            options.resource_limits = options.resource_limits.copy(object_store_memory=cfg.ray.data_object_store_bytes)
        progress_bars()
    if cfg.ray.prewarm_workers:
        prewarm(cfg.ray.prewarm_workers, modules)


def stage_modules(plans) -> list[str]:
    """The modules of the plans' CPU step functions: what a CPU task imports first (a gather's
    function runs on the driver)."""
    from runtime.steps import Cpu

    out = []
    for plan in plans:
        for s in plan.steps:
            fn = s.fn if isinstance(s, Cpu) else None
            while isinstance(fn, partial):
                fn = fn.func
            name = getattr(fn, "__module__", None)
            if name and name != "__main__" and name not in out:
                out.append(name)
    return out


def prewarm(n: int, stages=()) -> None:
    """Start n worker processes with the project imported, without waiting for them: Ray Data
    starts a CPU stage's first tasks in idle workers, and a new process costs seconds (Python, Ray,
    pyarrow, the stages) on each hop of the DAG before every pool is busy. num_cpus=0: they never
    hold a CPU a model pool is waiting for; the sleep keeps them apart, one process each."""
    import ray

    modules = ["runtime.plan", "schemas.writer"] + [m for m in stages if m not in ("runtime.plan", "schemas.writer")]

    @ray.remote(num_cpus=0)
    def warm(names):
        import importlib
        import time

        for name in names:
            importlib.import_module(name)
        time.sleep(1.0)

    for _ in range(n):
        warm.remote(modules)


def progress_bars(stream=None) -> bool:
    """Ray Data's per-operator progress bars when a person watches (stderr is a terminal); off in
    logs and `ray job logs`, where they are thousands of redrawn lines."""
    import ray

    on = (stream or sys.stderr).isatty()
    ray.data.DataContext.get_current().enable_progress_bars = on
    return on


def write(ds, out: str, plan, cfg: PipelineConfig, run_id: str | None = None, summary: bool = True) -> dict:
    """Write `ds` as the plan's dataset; a run that writes in passes gives each the same run_id
    (one record in dataset.json) and prints the summary after the last (summary=False before)."""
    from schemas.writer import ShardDatasink

    import ray

    from schemas.shard_registry import UNREADABLE
    from schemas.writer import ErrorBudgetExceeded

    schema = plan.schema
    sink = ShardDatasink(dataset_uri(out, schema.name), schema, target_bytes=cfg.write.target_shard_bytes,
                         target_samples=cfg.write.target_shard_samples, config=cfg.model_dump(),
                         stages=plan.stage_names, run_id=run_id, max_error_fraction=cfg.max_error_fraction,
                         shard_by=plan.shard_by)
    try:
        ds.write_datasink(sink)
    except Exception as e:
        violation = ray.get(sink.registry.failed.remote())
        if violation:  # the write task that found it raised; say what and where, not Ray's traceback
            if UNREADABLE in violation:  # name the sources the config gave
                violation += "; inputs: " + ", ".join(f"{k} = {v}" for k, v in cfg.input_paths().items())
            raise ErrorBudgetExceeded(f"{schema.name}: {violation}") from e
        raise
    info = sink.summary or sink.write_info([])
    if summary:
        print_summary(info, dataset_uri(out, schema.name))
    return info


def run(spec, argv=None, workers: dict | None = None) -> dict:
    """The main of a pipeline script: config from the command line, the plans built, checked and
    ordered (a miswired column stops here, before Ray or any model), the leases, the tiny models,
    Ray, then each plan in turn. Returns the last plan's dataset.json info."""
    from runtime.plan import order
    from runtime.roles import ensure_for

    cfg, out = parse_args(spec.description, spec.config, argv)
    plans = order(spec.plans(cfg, workers))
    with leased(out, [p.schema.name for p in plans], cfg):
        ensure_for(cfg)
        start_ray(cfg, stage_modules(plans))
        with stop_on_failed_stage():
            return run_plans(spec, cfg, out, plans)


def run_plans(spec, cfg: PipelineConfig, out: str, plans: list, log=print) -> dict:
    """Each plan in order: before hooks, the plan on its source, the write, after hooks, the card."""
    from runtime.card import write_card
    from runtime.execute import on_ray
    from runtime.plan import PlanError
    from runtime.registry import get_output

    values, info = {}, {}
    for plan in plans:
        for hook in plan.before_hooks:
            got = hook.fn(out)
            if set(got) != set(hook.provides):
                raise PlanError(f"{plan.name}: before hook {hook.name!r} returned {sorted(got)}, not {sorted(hook.provides)}")
            values.update(got)
        ds, r = on_ray(plan, spec.source(cfg, plan, out), out, values={n: values[n] for n in plan.inputs}, log=log)
        info = write(ds, out, plan, cfg)
        values.update(r.gathered)
        for hook in plan.after_hooks:
            hook.fn(out, **{n: values[n] for n in hook.needs})
        d = DatasetDir.open(dataset_uri(out, plan.schema.name), dataset=plan.schema.name)
        info = d.read_info() or info
        write_card(d, get_output(plan.schema.name), info)
    return info


@contextlib.contextmanager
def leased(out: str, datasets: list[str], cfg: PipelineConfig):
    """Hold the lease of each dataset folder for the whole run (runtime/lease.py); a folder that
    another live run writes stops this one at once, exit code 1, one line naming the holder."""
    from runtime.lease import Lease, LeaseHeld

    held = []
    try:
        for name in datasets:
            lease = Lease(DatasetDir.open(dataset_uri(out, name), dataset=name), timeout_s=cfg.write.lease_timeout_s)
            held.append(lease.acquire(force=cfg.write.force_lease))
    except LeaseHeld as e:
        for lease in held:
            lease.release()
        print(f"run not started: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        yield held
    finally:
        for lease in held:
            lease.release()
        lost = [lease for lease in held if lease.lost]
        if lost:  # someone took over with --force while this run wrote: say so, loudly
            raise RuntimeError(f"{lost[0].out.path}: the lease was taken over by run {lost[0].lost.get('run_id')} "
                               f"during this run; the two runs' outputs are mixed")


@contextlib.contextmanager
def stop_on_failed_stage():
    """A stage over its error budget ends the run: one line naming the stage, the reason and an
    example input, and exit code 1."""
    from schemas.writer import ErrorBudgetExceeded

    try:
        yield
    except ErrorBudgetExceeded as e:
        print(f"run stopped: {e}", file=sys.stderr)
        raise SystemExit(1) from None


def print_summary(info: dict, where: str, file=None) -> None:
    """The latest run's per-stage table, as stored in dataset.json. `seconds` is the stage's work
    summed over its tasks and actors (not wall clock: stages overlap when streaming), and rows/s is
    rows in over those seconds, i.e. one worker's rate."""
    run = info["runs"][-1]
    rate = f", {run['samples_per_second']:.2f} samples/s" if run.get("samples_per_second") else ""
    print(f"\n{info['dataset']}: {run['samples_written']} samples in {len(run['shards_written'])} new shards "
          f"({run['wall_seconds']:.1f} s wall{rate}); dataset now {info['counts']['samples']} samples, "
          f"{info['counts']['shards']} shards, {info['counts']['rejects']} rejects", file=file)
    print(f"{'stage':<20}{'in':>8}{'out':>8}{'rejected':>10}{'seconds':>10}{'rows/s':>10}  reasons", file=file)
    for s in run["stages"]:
        rps = "-" if s["rows_per_second"] is None else f"{s['rows_per_second']:.1f}"
        print(f"{s['stage']:<20}{s['rows_in']:>8}{s['rows_out']:>8}{sum(s['rejected'].values()):>10}"
              f"{s['seconds']:>10.2f}{rps:>10}  {json.dumps(s['rejected']) if s['rejected'] else ''}", file=file)
    print(f"shards:    {where}/shards\nmanifests: {where}/manifest\nrejects:   {where}/rejects\n"
          f"info:      {where}/dataset.json\nreport:    subjectforge report {where}", file=file)
