"""Shard I/O against a bare baseline, in one run on the same bytes: the Ray Data ShardDatasink vs a
plain `tarfile` loop for writing, and `read_samples` vs a plain `tarfile` loop for reading.

    python benchmarks/shard_io.py [--samples 100] [--size 1024] [--scales 3,8] [--json results.json]

Rows are synthetic DIP samples whose members are encoded to bytes before anything is timed, so
neither side compresses an image (--unique distinct samples, repeated under new keys, so building
them stays quick), and they wait in the object store, as the step before the write leaves them.
The bare writer writes, in one process, exactly the members the datasink wrote for --samples
(read back from its shards; cycled under new keys to the timed writes' sample counts), rolled
into tars of the same target size, once after each timed datasink write of as many samples, so
that a slow spell of the machine hits both sides. Ray is started and a small
warm-up write done before timing; each measurement is the best of its runs.

The write row is what a pipeline pays per byte once it is writing, with the write tasks Ray runs
in parallel: the bytes of a write of 16 x --samples less those of one of 8 x --samples (--scales),
over the difference of their wall times, and the bare loop's rate the same way over its writes of
as many samples (the disk takes a burst of a few hundred MB faster than it keeps up GBs: a single
bare shard against the datasink's steady rate compared the two, 0.42). What a write pays once
cancels out; a pipeline pays it once per run, while its model steps load, not once per shard: Ray
Data's executor start and end, dataset.json, and Ray 2.60's first 1-2 s of an execution, in which
its resource manager sees a cluster of zero CPUs (the autoscaling coordinator's reservation has
not come back yet) and runs one task at a time. Both timed writes outlast that (8 x 100 samples
at 1024 px is 1.4 GB, about 2 s here), else the smaller one runs serially throughout and the
difference is not the steady rate. For the same reason each timed write starts with the sink's
registry actor up and a warm worker process per CPU, as a running pipeline has them
(construction itself is timed). The meta keeps the wall time
of a single write of --samples (`datasink_seconds`) and the fixed cost the line implies
(`fixed_seconds`); when the two writes are too small to tell apart (the test suite's tiny sizes),
the row is the single write's rate and `write_rate` says so.

Samples are the GPU profile's 1024 px. Two sizes keep Ray Data's own work per block and per
task to the share a pipeline pays per byte:
- blocks of --block-mb (8 MB): a pipeline's CPU step leaves blocks of 8 rows, and 8 DIP rows at
  1024 px are 8 MB or more. Ray Data's driver spends about a millisecond on each block it bundles
  into a write task, on the same CPUs as the tasks.
- shards of --target-mb (256 MB; the GPU profile's are 1 GB): Ray Data takes about 0.1 s of its
  own per write task, and 64 MB is about that much writing. On 2 cores 64 MB shards gave a ratio
  of 0.43-0.47, 256 MB 0.75.
Both sides put the same bytes on disk: the bare loop fsyncs each tar as the datasink does before
it commits one, else it would measure the page cache.
"""
from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run as a script from anywhere

import numpy as np  # noqa: E402
import ray  # noqa: E402
from PIL import Image  # noqa: E402

from schemas.dip import SCHEMA  # noqa: E402
from schemas.contract import encode_member  # noqa: E402
from schemas.reader import read_samples  # noqa: E402
from schemas.writer import ShardDatasink  # noqa: E402
from stages.synthetic import random_sample  # noqa: E402

MB = 1e6


def encoded_rows(n: int, size: int, unique: int, seed: int = 0) -> list[dict]:
    """n synthetic DIP rows with every member already bytes (the json member too); `unique`
    distinct samples, repeated under distinct keys."""
    distinct = []
    for i in range(min(n, unique)):
        row = random_sample(SCHEMA, "", np.random.default_rng([seed, i]), size)
        for name in SCHEMA.member_names(row):
            row[name] = encode_member(SCHEMA.member_for(name), row[name])
        distinct.append(row)
    return [dict(distinct[i % len(distinct)], key=f"s{i:08d}") for i in range(n)]


def tar_bytes(paths) -> int:
    return sum(os.path.getsize(p) for p in paths)


def shards_in(dataset_dir: str) -> list[str]:
    return sorted(str(p) for p in Path(dataset_dir, "shards").glob("*.tar"))


# -- writing -------------------------------------------------------------------------------------
def datasink_write(ds, out: str, target_bytes: int, cpus: int) -> tuple[float, int]:
    """Seconds of the write, the sink's construction included, and the samples it wrote. Before
    the clock runs on, what a running pipeline has by the time its first rows reach the writer:
    the sink's registry actor up (it starts while the model steps load) and a warm worker process
    per CPU (the actor's process was one of them)."""
    t0 = time.perf_counter()
    sink = ShardDatasink(out, SCHEMA, target_bytes=target_bytes)
    constructed = time.perf_counter() - t0
    ray.get(sink.registry.failed.remote())
    warm_workers(cpus)
    t0 = time.perf_counter()
    ds.write_datasink(sink)
    return constructed + time.perf_counter() - t0, sink.summary["runs"][-1]["samples_written"]


def warm_workers(n: int) -> None:
    """n Ray worker processes at once (tasks that overlap), each with the writer imported."""
    def load_writer():
        importlib.import_module("schemas.writer")
        time.sleep(0.2)

    task = ray.remote(load_writer)
    ray.get([task.remote() for _ in range(n)])


def members_of(shards: list[str]) -> list[tuple[str, bytes]]:
    """(member name, bytes) of every member, in tar order: what the bare writer writes."""
    out = []
    for path in shards:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if info.isfile():
                    out.append((info.name, tar.extractfile(info).read()))
    return out


def bare_write(members: list[tuple[str, bytes]], out: str, target_bytes: int) -> tuple[float, list[str]]:
    """The same members with `tarfile`, a new tar once the current one reaches target_bytes
    (checked between samples, as the datasink does). Each finished tar is fsynced, as the datasink
    does before it commits a shard: without it the loop measures the page cache, not the disk,
    and a machine that crashed could lose what it had written."""
    os.makedirs(out, exist_ok=True)
    paths, tar, key = [], None, None

    def finish(tar):
        tar.close()
        tar.fileobj.flush()
        os.fsync(tar.fileobj.fileno())
        tar.fileobj.close()

    t0 = time.perf_counter()
    for name, data in members:
        sample_key = name.split(".", 1)[0]
        if tar is not None and sample_key != key and tar.fileobj.tell() >= target_bytes:
            finish(tar)
            tar = None
        if tar is None:
            paths.append(os.path.join(out, f"bare-{len(paths):06d}.tar"))
            tar = tarfile.open(fileobj=open(paths[-1], "wb"), mode="w")
        key = sample_key
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        finish(tar)
    return time.perf_counter() - t0, paths


def cycled(members: list[tuple[str, bytes]], n: int) -> list[tuple[str, bytes]]:
    """The members of n samples: those of `members`' samples over and over, each pass under new
    keys (the same bytes objects, so memory holds one copy)."""
    samples: dict[str, list] = {}
    for name, data in members:
        key, rest = name.split(".", 1)
        samples.setdefault(key, []).append((rest, data))
    order = list(samples)
    return [(f"b{i:08d}.{rest}", data) for i in range(n) for rest, data in samples[order[i % len(order)]]]


# -- reading -------------------------------------------------------------------------------------
def pipeline_read(dataset_dir: str, decode: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = sum(1 for _ in read_samples(dataset_dir, decode=decode))
    return time.perf_counter() - t0, n


def bare_decode(name: str, data: bytes):
    ext = name.rsplit(".", 1)[-1]
    if ext == "json":
        return json.loads(data)
    if ext == "npy":
        return np.load(io.BytesIO(data), allow_pickle=False)
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB" if ext == "jpg" else "L"))


def bare_read(shards: list[str], decode: bool) -> tuple[float, int]:
    """Every member of every tar with `tarfile`, streamed as webdataset reads them; samples
    counted as distinct keys."""
    t0 = time.perf_counter()
    keys = set()
    for path in shards:
        with tarfile.open(path, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                data = tar.extractfile(info).read()
                if decode:
                    bare_decode(info.name, data)
                keys.add(info.name.split(".", 1)[0])
    return time.perf_counter() - t0, len(keys)


def best_of_both(bare, pipeline, repeats: int) -> tuple[tuple, tuple]:
    """The best (seconds, samples) of each side, their runs alternated so that a slow spell of
    the machine hits both."""
    runs = [(bare(), pipeline()) for _ in range(repeats)]
    return min(r[0] for r in runs), min(r[1] for r in runs)


# -- main ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100, help="samples of the write that is read back")
    p.add_argument("--scales", default="8,16", help="the write row: writes of these multiples of --samples")
    p.add_argument("--size", type=int, default=1024, help="image side in pixels (the GPU profile's)")
    p.add_argument("--unique", type=int, default=16, help="distinct samples among --samples")
    p.add_argument("--target-mb", type=float, default=256.0, help="shard target size (MB; the GPU profile's: 1000)")
    p.add_argument("--block-mb", type=float, default=8.0, help="bytes per Ray block (at least one row)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    target = int(args.target_mb * MB)
    small, large = sorted(int(x) * args.samples for x in args.scales.split(","))

    t0 = time.perf_counter()
    rows = encoded_rows(max(large, args.samples), args.size, args.unique)
    print(f"built {len(rows)} encoded samples at {args.size}px in {time.perf_counter() - t0:.1f} s")
    row_bytes = sum(len(v) for r in rows[:args.unique] for v in r.values() if isinstance(v, bytes)) / min(
        args.unique, len(rows))
    rows_per_block = max(1, round(args.block_mb * MB / row_bytes))

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False

    def in_store(n: int):  # the first n rows in the object store, as the step before the write leaves them
        return ray.data.from_items(rows[:n], override_num_blocks=max(1, -(-n // rows_per_block))).materialize()

    tmp = tempfile.mkdtemp(prefix="sf-bench-io-")
    results = []
    try:
        # warm-up: one tiny write task per block (target 1 byte), so worker processes have
        # imported and run the writer before anything is timed
        datasink_write(ray.data.from_items(rows[: 4 * args.num_cpus], override_num_blocks=2 * args.num_cpus),
                       f"{tmp}/warm/dip", 1, args.num_cpus)

        out = f"{tmp}/sink/dip"  # --samples: what the bare writer and both readers get
        written = {}
        sink_s, written["read"] = datasink_write(in_store(args.samples), out, target, args.num_cpus)
        shards = shards_in(out)
        sink_bytes = tar_bytes(shards)
        members = members_of(shards)

        bare = {}  # samples -> the best (seconds, tar bytes, tars) of the bare writes of that many

        def bare_once(n):
            path = f"{tmp}/bare-{n}"
            secs, paths = bare_write(cycled(members, n), path, target)
            bare[n] = min(bare.get(n, (float("inf"),)), (secs, tar_bytes(paths), len(paths)))
            shutil.rmtree(path)

        seconds = {}
        datasets = {n: in_store(n) for n in (small, large)}
        for i in range(args.repeats):
            for n, ds in datasets.items():
                path = f"{tmp}/sink{n}-{i}/dip"
                secs, written[n, i] = datasink_write(ds, path, target, args.num_cpus)
                seconds[n] = min(seconds.get(n, (float("inf"),)), (secs, tar_bytes(shards_in(path))))
                shutil.rmtree(path)
                bare_once(n)  # between the datasink's writes: a slow spell of the machine hits both sides
        del datasets
        (small_s, small_bytes), (large_s, large_bytes) = seconds[small], seconds[large]
        (bare_small_s, bare_small_bytes, _), (bare_large_s, bare_large_bytes, bare_shards) = bare[small], bare[large]
        if large > small and large_s > small_s and bare_large_s > bare_small_s:
            write_rate = "steady"
            sink_rate = (large_bytes - small_bytes) / (large_s - small_s)
            bare_rate = (bare_large_bytes - bare_small_bytes) / (bare_large_s - bare_small_s)
        else:
            write_rate, sink_rate, bare_rate = "single write", large_bytes / large_s, bare_large_bytes / bare_large_s
        results.append(row("write MB/s", bare_rate / MB, sink_rate / MB))

        raw_bare, raw_pipe = best_of_both(lambda: bare_read(shards, decode=False),
                                          lambda: pipeline_read(out, decode=False), args.repeats)
        results.append(row("read MB/s (bytes)", sink_bytes / raw_bare[0] / MB, sink_bytes / raw_pipe[0] / MB))
        dec_bare, dec_pipe = best_of_both(lambda: bare_read(shards, decode=True),
                                          lambda: pipeline_read(out, decode=True), args.repeats)
        results.append(row("read samples/s (decoded)", dec_bare[1] / dec_bare[0], dec_pipe[1] / dec_pipe[0]))
        counts = {"written_samples": len({m[0].split(".", 1)[0] for m in members}),
                  "read_samples": raw_pipe[1], "read_samples_decoded": dec_pipe[1],
                  "bare_read_samples": raw_bare[1]}
        if len({args.samples, *counts.values(), written.pop("read")}) != 1 or any(
                got != n for (n, _), got in written.items()):
            raise SystemExit(f"sample counts differ: {counts}, datasink {written} (expected {args.samples}, "
                             f"{small}, {large})")
        meta = {"samples": args.samples, "size": args.size, "target_bytes": target,
                "rows_per_block": rows_per_block, "ray_cpus": args.num_cpus, "repeats": args.repeats,
                "shards": len(shards), "bare_shards": bare_shards, "tar_bytes": sink_bytes,
                "bare_tar_bytes": bare_large_bytes, "datasink_seconds": sink_s,
                "write_rate": write_rate, "fixed_seconds": sink_s - sink_bytes / sink_rate,
                "timed_writes": {str(n): {"seconds": s, "tar_bytes": b, "bare_seconds": bare[n][0],
                                          "bare_tar_bytes": bare[n][1]}
                                 for n, (s, b) in ((small, seconds[small]), (large, seconds[large]))}}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()

    print(f"\n{meta['samples']} samples, {meta['size']}px, {meta['tar_bytes'] / MB:.1f} MB in "
          f"{meta['shards']} shards (bare: {meta['bare_shards']}), {meta['rows_per_block']} rows/block, "
          f"Ray on {meta['ray_cpus']} CPUs, best of {meta['repeats']}")
    print(f"datasink: {small} samples in {small_s:.2f} s, {large} in {large_s:.2f} s ({write_rate} rate); "
          f"{meta['samples']} in {sink_s:.2f} s, of which {meta['fixed_seconds']:.2f} s once per write")
    print(f"{'name':<28}{'baseline':>12}{'pipeline':>12}{'ratio':>8}")
    for r in results:
        print(f"{r['name']:<28}{r['baseline']:>12.1f}{r['pipeline']:>12.1f}{r['ratio']:>8.2f}")
    report = {"meta": meta, "results": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


def row(name: str, baseline: float, pipeline: float) -> dict:
    return {"name": name, "baseline": baseline, "pipeline": pipeline, "ratio": pipeline / baseline}


if __name__ == "__main__":
    main()
