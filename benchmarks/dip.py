"""DIP quadruplets per hour: the Ray Data pipeline against the same steps as a bare loop, in one run.

    python benchmarks/dip.py [--config configs/dip.tiny.yaml] [--set n_single=40 ...] [--json out.json]

Both sides run pipelines.dip.plan(cfg) on the same source rows: the pipeline through build() and
the writer (embedded Ray, the config's CPUs and actor pools), the bare loop in this process, one
step after another over batches of the step's batch size, each worker constructed once. The bare
time is the sum of the worker loops (model calls only, loads excluded) plus the CPU steps; the
pipeline's is its wall clock from start to committed shards, actor start-up and model loads
included. Ratio = pipeline quadruplets/hour over bare quadruplets/hour.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines import dip  # noqa: E402
from schemas.batch import batch_of, is_rejected, rows_of, run_rows  # noqa: E402
from schemas.config import load_config  # noqa: E402
from schemas.pipeline_configs import DIPConfig  # noqa: E402
from workers import tiny  # noqa: E402


def bare(cfg: DIPConfig) -> dict:
    rows = dip.source_rows(cfg)
    seconds, loads = defaultdict(float), {}
    for step in dip.plan(cfg):
        if step.fn is None:
            t0 = time.perf_counter()
            worker = step.cls(**{"model": step.spec.model, "dtype": step.spec.dtype, "stage": step.name, **step.kwargs})
            loads[step.name] = time.perf_counter() - t0
            fn, size = worker, step.spec.batch_size
        else:
            fn, size = (lambda b, s=step: run_rows(s.name, s.fn, b)), 8
        out = []
        for i in range(0, len(rows), size):
            t0 = time.perf_counter()
            out += rows_of(fn(batch_of(rows[i:i + size])))
            seconds[step.name] += time.perf_counter() - t0
        rows = out
    samples = sum(not is_rejected(r) for r in rows)
    return {"samples": samples, "seconds": sum(seconds.values()), "load_seconds": sum(loads.values()),
            "model_seconds": sum(t for s, t in seconds.items() if s in loads), "per_step": dict(seconds)}


def pipeline(cfg: DIPConfig) -> dict:
    from schemas.job import start_ray, write

    start_ray(cfg)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        ds, stages = dip.build(cfg, out)
        info = write(ds, out, dip.SCHEMA, cfg, stages)
        wall = time.perf_counter() - t0
    return {"samples": info["runs"][-1]["samples_written"], "seconds": wall}


def per_hour(samples: int, seconds: float) -> float:
    return 3600 * samples / seconds if seconds > 0 else float("nan")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs" / "dip.tiny.yaml"))
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json")
    args = p.parse_args(argv)
    cfg = load_config(DIPConfig, args.config, args.set)
    tiny.ensure_for(cfg)
    b = bare(cfg)
    pl = pipeline(cfg)
    result = {
        "config": args.config, "inputs": len(dip.source_rows(cfg)), "bare": b, "pipeline": pl,
        "bare_per_hour": per_hour(b["samples"], b["seconds"]),
        "pipeline_per_hour": per_hour(pl["samples"], pl["seconds"]),
    }
    result["ratio"] = result["pipeline_per_hour"] / result["bare_per_hour"]
    print(f"{result['inputs']} inputs; bare loop: {b['samples']} quadruplets in {b['seconds']:.1f} s "
          f"(models {b['model_seconds']:.1f} s, loads {b['load_seconds']:.1f} s not counted), "
          f"{result['bare_per_hour']:.0f}/hour")
    print(f"pipeline: {pl['samples']} quadruplets in {pl['seconds']:.1f} s (start-up and loads included), "
          f"{result['pipeline_per_hour']:.0f}/hour")
    print(f"ratio {result['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
