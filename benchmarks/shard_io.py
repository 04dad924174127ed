"""Shard I/O against a bare baseline, in one run on the same bytes: the Ray Data ShardDatasink vs a
plain `tarfile` loop for writing, and `read_samples` vs a plain `tarfile` loop for reading.

    python benchmarks/shard_io.py [--samples 400] [--size 256] [--json results.json]

Rows are synthetic DIP samples whose members are encoded to bytes before anything is timed, so
neither side compresses an image (--unique distinct samples, repeated under new keys, so building
them stays quick). The bare writer writes exactly the members the datasink wrote
(read back from its shards), rolled into tars of the same target size. Ray is started, and a small
warm-up write done, before timing; only the write itself (datasink construction included, since
every pipeline pays it) is timed. Each measurement is the best of --repeats.
"""
from __future__ import annotations

import argparse
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
def datasink_write(ds, out: str, target_bytes: int) -> float:
    t0 = time.perf_counter()
    ds.write_datasink(ShardDatasink(out, SCHEMA, target_bytes=target_bytes))
    return time.perf_counter() - t0


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
    (checked between samples, as the datasink does)."""
    os.makedirs(out, exist_ok=True)
    paths, tar, key = [], None, None
    t0 = time.perf_counter()
    for name, data in members:
        sample_key = name.split(".", 1)[0]
        if tar is not None and sample_key != key and tar.fileobj.tell() >= target_bytes:
            tar.close()
            tar = None
        if tar is None:
            paths.append(os.path.join(out, f"bare-{len(paths):06d}.tar"))
            tar = tarfile.open(paths[-1], "w")
        key = sample_key
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, 0o444
        tar.addfile(info, io.BytesIO(data))
    if tar is not None:
        tar.close()
    return time.perf_counter() - t0, paths


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


def best(fn, repeats: int):
    runs = [fn() for _ in range(repeats)]
    return min(runs, key=lambda r: r[0] if isinstance(r, tuple) else r)


# -- main ----------------------------------------------------------------------------------------
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=400)
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--unique", type=int, default=64, help="distinct samples among --samples")
    p.add_argument("--target-mb", type=float, default=16.0, help="shard target size (MB)")
    p.add_argument("--rows-per-block", type=int, default=8,
                   help="rows per Ray block, as a map_batches(batch_size=...) upstream would make")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    target = int(args.target_mb * MB)

    t0 = time.perf_counter()
    rows = encoded_rows(args.samples, args.size, args.unique)
    print(f"built {len(rows)} encoded samples at {args.size}px in {time.perf_counter() - t0:.1f} s")

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    blocks = max(1, args.samples // args.rows_per_block)
    ds = ray.data.from_items(rows, override_num_blocks=blocks).materialize()  # rows already in the store
    tmp = tempfile.mkdtemp(prefix="sf-bench-io-")
    results = []
    try:
        # warm-up: one tiny write task per CPU (target 1 byte: a task per block), so every worker
        # process has imported the writer before the timed write
        warm = ray.data.from_items(rows[: 4 * args.num_cpus], override_num_blocks=2 * args.num_cpus)
        datasink_write(warm, f"{tmp}/warm/dip", 1)

        runs = [f"{tmp}/sink{i}/dip" for i in range(args.repeats)]
        sink_s = min(datasink_write(ds, out, target) for out in runs)
        written = shards_in(runs[0])
        sink_bytes = tar_bytes(written)
        members = members_of(written)
        bare_s, bare_paths = best(lambda: bare_write(members, f"{tmp}/bare{time.perf_counter_ns()}", target),
                                  args.repeats)
        bare_bytes = tar_bytes(bare_paths)
        results.append(row("write MB/s", bare_bytes / bare_s / MB, sink_bytes / sink_s / MB))

        raw_bare = best(lambda: bare_read(written, decode=False), args.repeats)
        raw_pipe = best(lambda: pipeline_read(runs[0], decode=False), args.repeats)
        results.append(row("read MB/s (bytes)", sink_bytes / raw_bare[0] / MB, sink_bytes / raw_pipe[0] / MB))
        dec_bare = best(lambda: bare_read(written, decode=True), args.repeats)
        dec_pipe = best(lambda: pipeline_read(runs[0], decode=True), args.repeats)
        results.append(row("read samples/s (decoded)", dec_bare[1] / dec_bare[0], dec_pipe[1] / dec_pipe[0]))
        counts = {"written_samples": len({m[0].split(".", 1)[0] for m in members}),
                  "read_samples": raw_pipe[1], "read_samples_decoded": dec_pipe[1],
                  "bare_read_samples": raw_bare[1]}
        if len({args.samples, *counts.values()}) != 1:
            raise SystemExit(f"sample counts differ: {counts} (expected {args.samples})")
        meta = {"samples": args.samples, "size": args.size, "target_bytes": target,
                "rows_per_block": args.rows_per_block, "ray_cpus": args.num_cpus, "repeats": args.repeats,
                "shards": len(written), "bare_shards": len(bare_paths), "tar_bytes": sink_bytes,
                "bare_tar_bytes": bare_bytes, "datasink_seconds": sink_s, "bare_write_seconds": bare_s}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        ray.shutdown()

    print(f"\n{meta['samples']} samples, {meta['size']}px, {meta['tar_bytes'] / MB:.1f} MB in "
          f"{meta['shards']} shards (bare: {meta['bare_shards']}), {meta['rows_per_block']} rows/block, "
          f"Ray on {meta['ray_cpus']} CPUs, best of {meta['repeats']}")
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
