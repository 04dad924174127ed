"""Peak memory when streaming --large samples against --small samples, in one run: the claim is
that memory stays flat because the driver never holds the dataset.

    python benchmarks/memory.py [--small 2000] [--large 20000] [--dataset multiid] [--image-size 64] [--json out.json]

Write: pipelines/synthetic.py (the real DAG: source -> generate -> encode -> ShardDatasink through
Ray Data, embedded Ray) writes N small synthetic samples. Read: schemas.read_samples decodes every
sample of that dataset back, one at a time, as a trainer would. Each (size, write / read) runs in a
subprocess of its own so that peaks do not mix. For each: the child's own peak RSS (VmHWM: for
the write that is the Ray driver) and, sampled every --interval s with psutil from here, the peak
of the RSS summed over the child's whole process tree (the write's Ray raylet, GCS and worker
processes; shared object-store pages count once per process that touched them, so this sum is an
upper bound). Ratio = peak(large) / peak(small): ~1.0 is flat, large / small (10) would be
memory growing with the dataset. The import baseline (torch, Ray) dominates a small run; the
child also reports its RSS before streaming, so the growth itself is printed too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

MB = 2 ** 20
MARK = "MEMORY-RESULT "  # the child's last stdout line: MARK + json


def rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MB


def peak_mb() -> float:
    """This process's peak RSS. Linux's VmHWM, not ru_maxrss: a child inherits its parent's
    ru_maxrss through fork and exec, so under a large parent (benchmarks/run.py holds torch and
    Ray) every child would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024 / MB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


# -- the children ----------------------------------------------------------------------------------
def child_write(samples: int, out: str, dataset: str, image_size: int, batch_size: int) -> dict:
    from pipelines import synthetic

    before = rss_mb()
    info = synthetic.main(["--config", str(ROOT / "configs" / "synthetic.tiny.yaml"), "--out", out,
                           "--set", f"samples={samples}", "--set", f"dataset={dataset}",
                           "--set", f"image_size={image_size}", "--set", f"batch_size={batch_size}"])
    return {"samples": info["runs"][-1]["samples_written"], "rss_before_mb": before, "peak_mb": peak_mb()}


def child_read(out: str, dataset: str) -> dict:
    from schemas.reader import read_samples

    before = rss_mb()
    n = 0
    for _ in read_samples(os.path.join(out, dataset)):  # decoded, then dropped: nothing is kept
        n += 1
    return {"samples": n, "rss_before_mb": before, "peak_mb": peak_mb()}


# -- the parent ------------------------------------------------------------------------------------
def tree_rss_mb(proc) -> tuple[float, int]:
    """(RSS summed over `proc` and its descendants, how many processes that is)."""
    import psutil

    total, n = 0, 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.Error:  # a worker that exited between listing and reading
            pass
    return total / MB, n


def measure(args: list[str], interval: float) -> dict:
    """Run `memory.py --child ...` and sample its process tree until it exits; its result dict
    with the sampled tree peak added."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), *args]
    # files, not pipes: nobody reads a pipe while the child runs, and a full one would block it
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as log:
        child = subprocess.Popen(cmd, stdout=out, stderr=log, text=True, cwd=ROOT)
        proc, tree_peak = psutil.Process(child.pid), (0.0, 0)
        t0 = time.perf_counter()
        while child.poll() is None:
            try:
                tree_peak = max(tree_peak, tree_rss_mb(proc))
            except psutil.NoSuchProcess:
                break
            time.sleep(interval)
        seconds = time.perf_counter() - t0
        out.seek(0)
        stdout = out.read()
        lines = [line for line in stdout.splitlines() if line.startswith(MARK)]
        if child.returncode != 0 or not lines:
            log.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed ({child.returncode}):\n{stdout[-2000:]}\n{log.read()[-4000:]}")
    return dict(json.loads(lines[-1][len(MARK):]), tree_peak_mb=tree_peak[0], tree_processes=tree_peak[1],
                seconds=seconds)


def row(name: str, small: dict, large: dict, key: str, sizes: tuple[int, int]) -> dict:
    r = {"name": name, "small_samples": sizes[0], "large_samples": sizes[1],
         "small_peak_mb": small[key], "large_peak_mb": large[key], "ratio": large[key] / small[key]}
    if key == "peak_mb":  # the child's own start is a baseline for its own peak, not for its tree's
        r.update(small_growth_mb=small[key] - small["rss_before_mb"], large_growth_mb=large[key] - large["rss_before_mb"])
    return r


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=2000)
    p.add_argument("--large", type=int, default=20000)
    p.add_argument("--dataset", default="multiid", help="the synthetic schema (multiid: the quickest to generate)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--interval", type=float, default=0.2, help="seconds between process-tree samples")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--child", choices=["write", "read"], help=argparse.SUPPRESS)
    p.add_argument("--samples", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child == "write":
        print(MARK + json.dumps(child_write(args.samples, args.out, args.dataset, args.image_size, args.batch_size)))
        return {}
    if args.child == "read":
        print(MARK + json.dumps(child_read(args.out, args.dataset)))
        return {}

    tmp = tempfile.mkdtemp(prefix="sf-bench-memory-")
    runs = {}
    try:
        for n in (args.small, args.large):
            out = os.path.join(tmp, str(n))
            common = ["--dataset", args.dataset, "--out", out, "--samples", str(n)]
            write = measure(["--child", "write", "--image-size", str(args.image_size),
                             "--batch-size", str(args.batch_size), *common], args.interval)
            read = measure(["--child", "read", *common], args.interval)
            if write["samples"] != n or read["samples"] != n:
                raise SystemExit(f"expected {n} samples, wrote {write['samples']}, read {read['samples']}")
            runs[n] = {"write": write, "read": read}
            print(f"{n} samples: write {write['seconds']:.0f} s, driver peak {write['peak_mb']:.0f} MB, "
                  f"process tree peak {write['tree_peak_mb']:.0f} MB ({write['tree_processes']} processes); read {read['seconds']:.0f} s, "
                  f"peak {read['peak_mb']:.0f} MB", flush=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    sizes = (args.small, args.large)
    s, lg = runs[args.small], runs[args.large]
    results = [row("write, driver", s["write"], lg["write"], "peak_mb", sizes),
               row("write, process tree", s["write"], lg["write"], "tree_peak_mb", sizes),
               row("read", s["read"], lg["read"], "peak_mb", sizes)]
    print(f"\npeak RSS, {args.large} vs {args.small} {args.dataset} samples at {args.image_size} px")
    print(f"{'name':<22}{'small MB':>10}{'large MB':>10}{'ratio':>8}   peak over the child's RSS at start (small / large)")
    for r in results:
        growth = f"{r['small_growth_mb']:.0f} / {r['large_growth_mb']:.0f} MB" if "small_growth_mb" in r else ""
        print(f"{r['name']:<22}{r['small_peak_mb']:>10.0f}{r['large_peak_mb']:>10.0f}{r['ratio']:>8.2f}   {growth}")
    report = {"meta": {k: v for k, v in vars(args).items() if k not in ("json", "child", "samples", "out")},
              "runs": {str(k): v for k, v in runs.items()}, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
