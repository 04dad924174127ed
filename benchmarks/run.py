"""Every benchmark in one run and one table: each measurement next to its bare baseline, measured
in the same run, and their ratio.

    python benchmarks/run.py [--only workers,shard_io,memory,multiid] [--pipelines dip,uper,iapo] [--json rows.json]
    python benchmarks/run.py --gpu      # on a CUDA machine: the worker rows at production size

The defaults are sized for a 2-core CPU machine (about 4 minutes); a benchmark's own flags are
passed through, after the defaults, with --<name>-args, e.g. --memory-args "--large 50000" or
--workers-args "--batches 24 --role vlm" (a lone flag with "=": --workers-args=--keep-models).
Each benchmark's own output goes to --log; the table goes to stdout. Rows (ratio = measured /
baseline):

  worker <role>        samples/s: the role's worker in a Ray Data actor pool / a bare loop calling
                       it on the same batches (benchmarks/workers.py); --gpu: production-size
                       random-weight models on cuda with the GPU configs' dtypes and batch sizes
  shard write          MB/s: ShardDatasink through Ray Data / a plain tarfile loop writing the same
                       members (benchmarks/shard_io.py)
  shard read           MB/s: read_samples without decoding / a plain tarfile loop
  shard read decoded   samples/s: read_samples / tarfile + PIL + numpy decoding the same members
  peak RSS ...         MB: peak at --large samples / at --small samples, streamed through the real
                       synthetic pipeline (write: the driver, and its whole process tree) and
                       read_samples (read) (benchmarks/memory.py); ~1.0 = flat memory
  multiid retrieval    GFLOP/s: similarities + top1 / a bare float32 matmul of the same shapes
                       (benchmarks/multiid.py)
  multiid bank         embeddings/s: build_bank / a bare loop of the same per-identity DBSCAN calls
  pipeline <name>      samples/hour: the whole Ray Data pipeline (tiny profile) / its plan() as a
                       bare loop (benchmarks/pipelines.py); only with --pipelines
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# The project on the path, this folder off it: Ray gives its worker processes the driver script's
# folder when it is on sys.path, and there benchmarks/workers.py and benchmarks/pipelines.py
# would shadow the workers and pipelines packages. PYTHONPATH: Ray's workers find the project
# from any current directory.
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != HERE)]
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))

from benchmarks import memory, multiid, pipelines, shard_io, workers  # noqa: E402

BENCHMARKS = ("workers", "shard_io", "memory", "multiid")
# About 4 minutes on 2 CPU cores. The workers use the repo's tiny-model cache (the tiny configs'
# out/tiny-models); MultiID runs 200k faces x 3000 centers instead of its 1M-face default, and
# leaves out its benchmark-local top1 alternatives, which are not in the table.
DEFAULTS = {
    "workers": ["--batches", "12", "--batch-size", "4", "--models", str(ROOT / "out" / "tiny-models")],
    "shard_io": [],  # 1024 px samples, 256 MB shards
    "memory": ["--small", "2000", "--large", "20000"],
    "multiid": ["--faces", "200000", "--centers", "3000", "--chunk", "16384", "--matmul-repeats", "3",
                "--identities", "200", "--per-identity", "100", "--block", "20", "--pooled-identities", "10",
                "--repeats", "2", "--no-variants"],
    "pipelines": [],
}
GPU_DEFAULTS = {"workers": ["--gpu", "--batches", "3"]}  # models: out/full-models, built per role


def row(benchmark: str, baseline: float, measured: float, unit: str) -> dict:
    return {"benchmark": benchmark, "baseline": float(baseline), "measured": float(measured), "unit": unit,
            "ratio": float(measured) / float(baseline)}


def worker_rows(argv: list[str]) -> list[dict]:
    return [row(f"worker {r['role']} ({r['device']}): pool / bare loop", r["bare_samples_per_s"],
                r["pool_samples_per_s"], "samples/s") for r in workers.main(argv)]


def shard_io_rows(argv: list[str]) -> list[dict]:
    names = {"write MB/s": ("shard write: ShardDatasink / tarfile", "MB/s"),
             "read MB/s (bytes)": ("shard read: read_samples / tarfile", "MB/s"),
             "read samples/s (decoded)": ("shard read decoded: read_samples / tarfile+PIL", "samples/s")}
    rows = []
    for r in shard_io.main(argv)["results"]:
        label, unit = names[r["name"]]
        rows.append(row(label, r["baseline"], r["pipeline"], unit))
    return rows


def memory_rows(argv: list[str]) -> list[dict]:
    return [row(f"peak RSS {r['name']}: {r['large_samples']} / {r['small_samples']} samples",
                r["small_peak_mb"], r["large_peak_mb"], "MB") for r in memory.main(argv)["results"]]


def multiid_rows(argv: list[str]) -> list[dict]:
    report, rows = multiid.main(argv), []
    if "retrieval" in report:
        r = report["retrieval"]
        rows.append(row("multiid retrieval: similarities+top1 / matmul", r["matmul_gflops"], r["effective_gflops"],
                        "GFLOP/s"))
    if "bank" in report:
        b = report["bank"]
        rows.append(row("multiid bank: build_bank / bare DBSCAN loop", b["embeddings"] / b["interleaved_bare_loop_seconds"],
                        b["embeddings"] / b["interleaved_build_bank_seconds"], "embeddings/s"))
    return rows


def pipeline_rows(names: list[str], argv: list[str]) -> list[dict]:
    import ray

    rows = []
    with contextlib.chdir(ROOT):  # the tiny configs' model and asset paths are relative to the repo
        for name in names:
            try:
                r = pipelines.main([name, *argv])
            finally:
                ray.shutdown()  # each pipeline starts Ray from its own config
            rows.append(row(f"pipeline {name}: Ray Data / bare loop", r["bare_per_hour"], r["pipeline_per_hour"],
                            "samples/hour"))
    return rows


@contextlib.contextmanager
def output_to(file):
    """Everything written to stdout and stderr inside, into `file`: at the descriptor level, since
    Ray's log handlers and the benchmarks' child processes write to fds 1 and 2 directly."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    os.dup2(file.fileno(), 1)
    os.dup2(file.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)


def print_table(rows: list[dict], file=sys.stdout) -> None:
    width = max([len("benchmark"), *(len(r["benchmark"]) for r in rows)])
    print(f"{'benchmark':<{width}}  {'baseline':>12}  {'measured':>12}  {'unit':<13}{'ratio':>7}", file=file)
    for r in rows:
        print(f"{r['benchmark']:<{width}}  {r['baseline']:>12.4g}  {r['measured']:>12.4g}  {r['unit']:<13}"
              f"{r['ratio']:>7.2f}", file=file)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    p.add_argument("--pipelines", default="", help="also the whole-pipeline rows: comma-separated of dip,uper,iapo")
    p.add_argument("--gpu", action="store_true", help="the worker rows on a CUDA device at production size")
    for name in (*BENCHMARKS, "pipelines"):
        p.add_argument(f"--{name.replace('_', '-')}-args", default="", metavar="ARGS",
                       help=f"extra flags for benchmarks/{name}.py (defaults: {' '.join(DEFAULTS[name]) or 'none'})")
    p.add_argument("--json", help="also write the rows here (a JSON list)")
    p.add_argument("--log", help="the benchmarks' own output (default: a temporary file, named at the end)")
    p.add_argument("--verbose", action="store_true", help="the benchmarks' own output on stdout instead of --log")
    args = p.parse_args(argv)
    only = [n for n in args.only.split(",") if n]
    unknown = set(only) - set(BENCHMARKS)
    names = [n for n in args.pipelines.split(",") if n]
    if unknown or set(names) - set(pipelines.single_plan()):
        p.error(f"unknown: {sorted(unknown | (set(names) - set(pipelines.single_plan())))}")

    def flags(name: str) -> list[str]:
        base = GPU_DEFAULTS.get(name, DEFAULTS[name]) if args.gpu else DEFAULTS[name]
        return base + shlex.split(getattr(args, f"{name}_args"))

    steps = {"workers": worker_rows, "shard_io": shard_io_rows, "memory": memory_rows, "multiid": multiid_rows}
    log_path = Path(args.log or tempfile.mkstemp(prefix="sf-bench-", suffix=".log")[1]).resolve()
    rows, seconds = [], {}
    with open(log_path, "w") as log:
        for name in [n for n in BENCHMARKS if n in only] + (["pipelines"] if names else []):
            print(f"{name} ...", end=" " if not args.verbose else "\n", flush=True, file=sys.stderr)
            t0 = time.perf_counter()
            with contextlib.nullcontext() if args.verbose else output_to(log):
                print(f"\n=== {name}: {' '.join(flags(name))}", flush=True)
                new = pipeline_rows(names, flags(name)) if name == "pipelines" else steps[name](flags(name))
            seconds[name] = time.perf_counter() - t0
            print(f"{seconds[name]:.0f} s", flush=True, file=sys.stderr)
            bad = [r["benchmark"] for r in new if not (math.isfinite(r["ratio"]) and r["ratio"] > 0)]
            if bad:
                print(f"warning: no finite positive ratio for {bad}", file=sys.stderr)
            rows += new

    print_table(rows)
    print(f"\n{len(rows)} rows in {sum(seconds.values()):.0f} s "
          f"({', '.join(f'{k} {v:.0f} s' for k, v in seconds.items())}); the benchmarks' output: "
          f"{'above' if args.verbose else log_path}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return rows


if __name__ == "__main__":
    main()
    # Every row is printed and written. The in-process benchmarks leave Ray, ONNX Runtime and torch
    # threads behind, and their teardown at interpreter exit segfaulted once in CI (exit -11 after
    # the full table): skip the teardown rather than report a finished run as a crash.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
