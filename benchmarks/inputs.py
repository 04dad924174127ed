"""MultiID's input layer (runtime/inputs.py) at --small and --large listed inputs, in one run: the
claim is that the driver never lists the inputs, so its memory and the wait for the first model
batch do not grow with the source, and that resume does not rebuild a hash set of every
committed key per batch.

    python benchmarks/inputs.py [--small 10000] [--large 1000000] [--kinds list,shards] [--json out.json]

Each measurement runs in a child process of its own (a Ray driver joined to one Ray started here),
through MultiID's own source (`pipelines/multiid.py: source`: read, keyed, forgotten identities
dropped) and its real `load` step (decoding a 64 px JPEG) to a model pool (one actor that passes
its --batch-size batches on, standing in for the face model). Sources: a Parquet list of N paths (one row
group per 10k), and N members in img2dataset shards of 1000. The child reports the time from
before `source()` to the first batch out of the model pool, then streams every row through and
reports its peak RSS (VmHWM: the driver). Ratios = large / small; 1.0 is flat.

Resume: a dataset folder with --large committed keys (manifests of keys) and the --small shards as
the source, half of whose keys are among the committed ones: seconds to the first new batch
through the plan's Resume step (the sorted key array in the object store, searched per block),
next to the same run against an empty folder.

Prints, per source kind:
  inputs driver peak RSS 1M / 10k (list): ratio <x>        (goal <= 1.2)
  inputs time to first model batch 1M / 10k (list): ratio <x>   (goal <= 1.5)
and `resume 1M keys: <s> s to first new batch (no committed keys: <s> s): ratio <x>` (goal <= 1.5).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [str(ROOT), *(p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent)]

from benchmarks.memory import peak_mb, rss_mb  # noqa: E402

MARK = "INPUTS-RESULT "
PER_SHARD = 1000
ROW_GROUP = 10_000


def tiny_jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def make_list(n: int, folder: Path, photo: Path) -> str:
    """A Parquet list of n rows, each the path of the same small JPEG (what is measured is the
    driver and the reading, not the disk)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"path": [str(photo)] * n}), folder / "groups.parquet", row_group_size=ROW_GROUP)
    return str(folder / "groups.parquet")


def make_shards(n: int, folder: Path, jpeg: bytes) -> str:
    """n members in shards of PER_SHARD: one shard written with webdataset's TarWriter, the others
    hard links to it (the members' URIs differ by shard name)."""
    from workers.simulated import crawl_shards

    folder.mkdir(parents=True, exist_ok=True)
    first = crawl_shards([{"key": f"{i:06d}", "jpg": jpeg} for i in range(min(n, PER_SHARD))],
                         str(folder / "src"), per_shard=PER_SHARD)[0]
    for s in range(-(-n // PER_SHARD)):
        os.link(first, folder / f"{s:05d}.tar")
    shutil.rmtree(folder / "src")
    return f"{folder}/*.tar"


def committed(out: Path, n: int, source: str) -> None:
    """OUT/multiid with n committed keys: half of the source's own keys, the rest made up."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipelines import multiid

    cfg, plan = config(source)
    own = [r["key"] for r in multiid.source(cfg, plan).select_columns(["key"]).take_all()][::2]
    keys = own + [f"{i:032x}" for i in range(max(0, n - len(own)))]
    manifest = out / "multiid" / "manifest"
    manifest.mkdir(parents=True, exist_ok=True)
    step = 100_000
    for i in range(0, len(keys), step):
        pq.write_table(pa.table({"key": keys[i:i + step]}), manifest / f"multiid-{i // step:06d}.parquet")


def config(source: str):
    from configs.multiid import MultiIDConfig
    from pipelines import multiid
    from runtime.config import load_config

    cfg = load_config(MultiIDConfig, ROOT / "configs" / "multiid.tiny.yaml", [f"groups={source}"])
    return cfg, multiid.plans(cfg)[1]


class ModelPool:
    """The first model step's place: an actor pool of one that passes its batches on."""

    def __call__(self, batch):
        return batch


# -- the child -------------------------------------------------------------------------------------
def child(source: str, out: str | None, rows: bool, batch: int) -> dict:
    """Time to the first batch out of the model pool, then every row streamed; peak RSS."""
    from functools import partial

    import ray

    from pipelines import multiid
    from runtime.execute import Run
    from runtime.rows import each, run_step
    from runtime.steps import Resume
    from stages import multiid as mid

    ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg, plan = config(source)
    before = rss_mb()
    t0 = time.perf_counter()
    ds = multiid.source(cfg, plan)
    if out is not None:
        ds = Resume("resume").on_ray(ds, Run(plan, out, dict.fromkeys(plan.inputs), log=lambda *a: None))
    load = each(partial(mid.load, **multiid.load_args(cfg)))
    ds = ds.map_batches(lambda b: run_step("load", b, load, drop=("image", "data")), batch_size=64,
                        batch_format="pyarrow")
    # as a Model step binds (runtime/steps.py): blocks of one batch, then the pool (not fused into it)
    ds = ds.repartition(target_num_rows_per_block=batch).map_batches(
        ModelPool, compute=ray.data.ActorPoolStrategy(size=1), batch_size=batch, batch_format="pyarrow")
    batches = iter(ds.iter_batches(batch_format="pyarrow", batch_size=None))
    first = next(batches)
    first_s = time.perf_counter() - t0
    n = first.num_rows + (sum(b.num_rows for b in batches) if rows else 0)
    return {"first_batch_s": first_s, "rows": n, "seconds": time.perf_counter() - t0, "peak_mb": peak_mb(),
            "before_mb": before}


def measure(args: list[str], env: dict, batch: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--batch-size", str(batch), "--child", *args], env=env,
                         capture_output=True, text=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith(MARK)), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len(MARK):])


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n >= 1_000_000 and n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=10_000)
    p.add_argument("--large", type=int, default=1_000_000)
    p.add_argument("--kinds", default="list,shards")
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--batch-size", type=int, default=256, help="the model pool's batch")
    p.add_argument("--json")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        source, out, rows = args.child[0], args.child[1] if args.child[1] != "-" else None, args.child[2] == "all"
        print(MARK + json.dumps(child(source, out, rows, args.batch_size)), flush=True)
        return {}

    import ray

    tmp = Path(tempfile.mkdtemp(prefix="sf-inputs-"))
    report = {"small": args.small, "large": args.large, "kinds": {}}
    try:
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
        env = dict(os.environ, RAY_ADDRESS=ray.get_runtime_context().gcs_address,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        photo = tmp / "photos" / "photo.jpg"
        photo.parent.mkdir()
        photo.write_bytes(tiny_jpeg())
        sources = {}
        for kind in [k for k in args.kinds.split(",") if k]:
            for n in (args.small, args.large):
                where = tmp / f"{kind}-{n}"
                sources[(kind, n)] = make_list(n, where, photo) if kind == "list" else make_shards(n, where, photo.read_bytes())
        for kind in [k for k in args.kinds.split(",") if k]:
            small, large = (measure([sources[(kind, n)], "-", "all"], env, args.batch_size) for n in (args.small, args.large))
            assert small["rows"] == args.small and large["rows"] == args.large, (small, large)
            report["kinds"][kind] = {"small": small, "large": large,
                                     "rss_ratio": large["peak_mb"] / small["peak_mb"],
                                     "first_batch_ratio": large["first_batch_s"] / small["first_batch_s"]}
        if not args.no_resume:
            # shards: their members' keys differ (a list's rows here all name the same photo)
            source = sources.get(("shards", args.small)) or make_shards(args.small, tmp / "resume", photo.read_bytes())
            (tmp / "empty").mkdir()
            committed(tmp / "done", args.large, source)
            fresh, resumed = (measure([source, str(tmp / d), "first"], env, args.batch_size) for d in ("empty", "done"))
            report["resume"] = {"fresh": fresh, "resumed": resumed,
                                "ratio": resumed["first_batch_s"] / fresh["first_batch_s"]}
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)

    big, small = label(args.large), label(args.small)
    for kind, r in report["kinds"].items():
        print(f"inputs driver peak RSS {big} / {small} ({kind}): ratio {r['rss_ratio']:.2f}  "
              f"({r['large']['peak_mb']:.0f} MB / {r['small']['peak_mb']:.0f} MB; before the source "
              f"{r['large']['before_mb']:.0f} / {r['small']['before_mb']:.0f} MB)")
        print(f"inputs time to first model batch {big} / {small} ({kind}): ratio {r['first_batch_ratio']:.2f}  "
              f"({r['large']['first_batch_s']:.2f} s / {r['small']['first_batch_s']:.2f} s; all rows "
              f"{r['large']['seconds']:.0f} s / {r['small']['seconds']:.0f} s)")
    if "resume" in report:
        r = report["resume"]
        print(f"resume {big} keys: {r['resumed']['first_batch_s']:.2f} s to first new batch "
              f"(no committed keys: {r['fresh']['first_batch_s']:.2f} s): ratio {r['ratio']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
