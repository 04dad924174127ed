"""Samples per hour of a dataset pipeline (dip, uper, iapo): the Ray Data pipeline against the same
steps as a bare loop, in one run.

    python benchmarks/pipelines.py dip [--config configs/dip.tiny.yaml] [--set n_single=40 ...] [--json out.json]
    python benchmarks/pipelines.py uper

Both sides run the dataset's plan (its spec's) on the same source rows: the pipeline through Ray Data and
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

from runtime.config import load_config  # noqa: E402
from runtime.driver import start_ray, write  # noqa: E402
from runtime.execute import local, on_ray  # noqa: E402
from runtime.registry import datasets, get_dataset  # noqa: E402
from runtime.roles import ensure_for  # noqa: E402
from runtime.rows import is_rejected  # noqa: E402


def single_plan() -> list[str]:
    """The datasets of one plan (MultiID's group photos need its bank first: benchmarks/multiid.py)."""
    return [n for n, s in datasets().items() if len(s.outputs) == 1]


def bare(plan, rows: list[dict]) -> dict:
    """The plan's steps in this process (runtime.execute.local): model calls and CPU steps timed, loads not."""
    rows, run = local(plan, rows)
    samples = sum(not is_rejected(r) for r in rows)
    return {"samples": samples, "seconds": sum(run.seconds.values()), "load_seconds": sum(run.loads.values()),
            "model_seconds": sum(t for s, t in run.seconds.items() if s in run.loads), "per_step": dict(run.seconds)}


def pipeline(spec, plan, cfg) -> dict:
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        ds, _ = on_ray(plan, spec.source(cfg, plan, out), out, log=lambda *a: None)
        info = write(ds, out, plan, cfg)
        wall = time.perf_counter() - t0
    return {"samples": info["runs"][-1]["samples_written"], "seconds": wall}


def per_hour(samples: int, seconds: float) -> float:
    return 3600 * samples / seconds if seconds > 0 else float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("pipeline", choices=single_plan())
    p.add_argument("--config", help="default: the dataset's tiny profile")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    spec = get_dataset(args.pipeline)
    config = args.config or spec.profiles["tiny"]
    cfg = load_config(spec.config, config, args.set)
    ensure_for(cfg)
    start_ray(cfg)
    (plan,) = [p.check() for p in spec.plans(cfg, None)]
    rows = spec.source(cfg, plan, None).take_all()  # inputs read once, outside both timings
    b = bare(plan, rows)
    pl = pipeline(spec, plan, cfg)
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
