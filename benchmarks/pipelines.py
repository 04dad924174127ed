"""Samples per hour of a dataset pipeline (dip, uper, iapo): the Ray Data pipeline against the same
steps as a bare loop, in one run.

    python benchmarks/pipelines.py dip [--config configs/dip.tiny.yaml] [--set n_single=40 ...] [--json out.json]
    python benchmarks/pipelines.py uper

Both sides run pipelines.<name>.plan(cfg) on the same source rows: the pipeline through Plan.apply and
the writer (embedded Ray, the config's CPUs and actor pools), the bare loop in this process, one
step after another over batches of the step's batch size, each worker constructed once. The bare
time is the sum of the worker loops (model calls only, loads excluded) plus the CPU steps; the
pipeline's is its wall clock from start to committed shards, actor start-up and model loads
included. Ratio = pipeline samples/hour over bare samples/hour.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import importlib  # noqa: E402

from runtime.rows import is_rejected  # noqa: E402
from runtime.config import load_config  # noqa: E402
from runtime.driver import start_ray, write  # noqa: E402
from configs import PIPELINE_CONFIGS  # noqa: E402
from builders import ensure_for  # noqa: E402

PIPELINES = ("dip", "uper", "iapo")


def bare(plan, rows: list[dict]) -> dict:
    """The plan's steps in this process (Plan.run_local): model calls and CPU steps timed, loads not."""
    seconds, loads = {}, {}
    rows = plan.run_local(rows, seconds=seconds, loads=loads)
    samples = sum(not is_rejected(r) for r in rows)
    return {"samples": samples, "seconds": sum(seconds.values()), "load_seconds": sum(loads.values()),
            "model_seconds": sum(t for s, t in seconds.items() if s in loads), "per_step": dict(seconds)}


def pipeline(module, plan, cfg) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        info = write(plan.apply(module.source(cfg, plan), out, log=lambda *a: None), out, plan, cfg)
        wall = time.perf_counter() - t0
    return {"samples": info["runs"][-1]["samples_written"], "seconds": wall}


def per_hour(samples: int, seconds: float) -> float:
    return 3600 * samples / seconds if seconds > 0 else float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", choices=PIPELINES)
    p.add_argument("--config", help="default: configs/<pipeline>.tiny.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    config = args.config or str(Path(__file__).resolve().parents[1] / "configs" / f"{args.pipeline}.tiny.yaml")
    module = importlib.import_module(f"pipelines.{args.pipeline}")
    cfg = load_config(PIPELINE_CONFIGS[args.pipeline], config, args.set)
    ensure_for(cfg)
    start_ray(cfg)
    plan = module.plan(cfg).check()
    rows = module.source(cfg, plan).take_all()  # inputs read once, outside both timings
    b = bare(plan, rows)
    pl = pipeline(module, plan, cfg)
    result = {
        "name": args.pipeline, "config": config, "inputs": len(rows), "bare": b, "pipeline": pl,
        "bare_per_hour": per_hour(b["samples"], b["seconds"]),
        "pipeline_per_hour": per_hour(pl["samples"], pl["seconds"]),
    }
    result["ratio"] = result["pipeline_per_hour"] / result["bare_per_hour"]
    print(f"{args.pipeline}: {result['inputs']} inputs; bare loop: {b['samples']} samples in {b['seconds']:.1f} s "
          f"(models {b['model_seconds']:.1f} s, loads {b['load_seconds']:.1f} s not counted), "
          f"{result['bare_per_hour']:.0f}/hour")
    print(f"pipeline: {pl['samples']} samples in {pl['seconds']:.1f} s (start-up and loads included), "
          f"{result['pipeline_per_hour']:.0f}/hour")
    print(f"ratio {result['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
