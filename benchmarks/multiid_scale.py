"""MultiID's memory against the number of group photos: the whole pipeline (both plans, every
stage, the shard writer) at N and at 10N group photos, each in a fresh process and Ray, with the
face analysis replaced by a stand-in. Peak memory is driver RSS + Ray object store in use + bytes
spilled, sampled every 0.2 s; flat memory means the ratio 10N / N stays near 1. Ray Data's streaming
budget is set (--budget-mb): without it blocks queue in front of the slow stages up to a share of
the whole object store, which a run of N = 30 photos never reaches and one of 300 does, so the
ratio would measure the queue, not what the pipeline holds.

    python benchmarks/multiid.py --scale [--groups 30] [--identities 8] [--side 1024] [--json out.json]

The stand-in is the simulated face analysis (workers/simulated.py, at time scale 0): the generated
photos (pipelines/multiid.py: simulated_photos) carry their faces' identities in flat cells of the top row (JPEG
keeps a flat cell's level), and it returns one face per coded identity with a unit embedding at
cosine 0.8 to that identity's center (or a stranger's random embedding). Photos are real size
(--side, 4:3), smooth gradients with noise, so decoding, OCR, the aesthetic model, captions and
JPEG encoding do their real work; only SCRFD / ArcFace are not run. Nothing asserts a time.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from pipelines.multiid import simulated_photos  # noqa: E402
from runtime.costs import load_costs  # noqa: E402
from workers.face_analysis import FaceAnalysis  # noqa: E402
from workers.simulated import simulated  # noqa: E402

MB = 1 << 20


def make_inputs(root: Path, n_groups: int, identities: int, per_identity: int, side: int, seed: int) -> None:
    """root/singles (a folder per identity) and root/groups, strangers among the group faces."""
    simulated_photos(root, n_groups, identities, per_identity, side, np.random.default_rng(seed), strangers=True)


class Sampler(threading.Thread):
    """Peak of driver RSS + object store in use + spilled bytes while the pipeline runs."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"total": 0}
        self.stop = threading.Event()

    def run(self):
        import psutil
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        me = psutil.Process()
        while not self.stop.wait(0.2):
            rss = me.memory_info().rss
            store = spilled = 0
            if ray.is_initialized():
                try:
                    s = get_memory_info_reply(get_state_from_address(ray.get_runtime_context().gcs_address)).store_stats
                    store, spilled = s.object_store_bytes_used, s.spilled_bytes_total
                except Exception:  # noqa: BLE001  (the GCS is not up yet, or already down)
                    pass
            total = rss + store + spilled
            if total > self.peak["total"]:
                self.peak = {"total": total, "driver_rss": rss, "object_store": store, "spilled": spilled}


def one_run(work: Path, config: str, out: Path, budget_mb: int) -> dict:
    """In this process: the pipeline on work/{singles,groups} with the stand-in, sampled."""
    from pipelines import multiid

    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    overrides = [f"singles={work / 'singles'}", f"groups={work / 'groups'}", "holdout_count=2", "min_side_px=256",
                 f"ray.data_object_store_bytes={budget_mb << 20}"]
    multiid.main(["--config", config, "--out", str(out)] + [a for o in overrides for a in ("--set", o)],
                 workers={"face_analysis": simulated(FaceAnalysis, load_costs(), time_scale=0)})
    seconds = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    info = json.loads((out / "multiid" / "dataset.json").read_text())
    return {"peak_mb": sampler.peak["total"] / MB, **{k: v / MB for k, v in sampler.peak.items() if k != "total"},
            "seconds": seconds, "samples": info.get("samples"), "rejects": info.get("rejects"),
            "bench_split_ok": info["bench_split"]["ok"]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=30, help="N: the small run's group photos (the large run: 10N)")
    p.add_argument("--factor", type=int, default=10)
    p.add_argument("--identities", type=int, default=8)
    p.add_argument("--per-identity", type=int, default=3)
    p.add_argument("--side", type=int, default=1024)
    p.add_argument("--config", default=str(ROOT / "configs/multiid.tiny.yaml"))
    p.add_argument("--budget-mb", type=int, default=256,
                   help="Ray Data's streaming budget (ray.data_object_store_bytes): blocks in flight between "
                        "stages fill it on a large run whatever the pipeline does; what grows beyond it is held data")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one run in this process, JSON on stdout
    args = p.parse_args(argv)
    if args.one:
        work = Path(args.one)
        print("RESULT " + json.dumps(one_run(work, args.config, work / "out", args.budget_mb)))
        return {}
    results = {}
    with tempfile.TemporaryDirectory(prefix="multiid-scale-") as tmp:
        for n in (args.groups, args.groups * args.factor):
            work = Path(tmp) / f"n{n}"
            make_inputs(work, n, args.identities, args.per_identity, args.side, args.seed)
            run = subprocess.run([sys.executable, __file__, "--one", str(work), "--config", args.config,
                                  "--budget-mb", str(args.budget_mb)],
                                 capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in run.stdout.splitlines() if x.startswith("RESULT ")), None)
            if run.returncode or line is None:
                raise RuntimeError(f"the run with {n} group photos failed:\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
            results[n] = json.loads(line[len("RESULT "):])
            r = results[n]
            print(f"  {n} group photos: peak {r['peak_mb']:.0f} MB (driver {r['driver_rss']:.0f}, object store "
                  f"{r['object_store']:.0f}, spilled {r['spilled']:.0f}) in {r['seconds']:.0f} s")
    small, large = results[args.groups], results[args.groups * args.factor]
    ratio = large["peak_mb"] / small["peak_mb"]
    print(f"multiid peak memory {args.factor}N / N: {large['peak_mb']:.0f} MB / {small['peak_mb']:.0f} MB ratio {ratio:.2f}")
    report = {"n": args.groups, "factor": args.factor, "side": args.side, "runs": {str(k): v for k, v in results.items()},
              "ratio": ratio}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
