"""MultiID's memory against the number of group photos: the whole pipeline (both plans, every
stage, the shard writer) at N and at 10N group photos, each in a fresh process and Ray, with the
face analysis replaced by a stand-in. Peak memory is driver RSS + Ray object store in use + bytes
spilled, sampled every 0.2 s; flat memory means the ratio 10N / N stays near 1. Ray Data's streaming
budget is set (--budget-mb): without it blocks queue in front of the slow stages up to a share of
the whole object store, which a run of N = 30 photos never reaches and one of 300 does, so the
ratio would measure the queue, not what the pipeline holds.

    python benchmarks/multiid.py --scale [--groups 30] [--identities 8] [--side 1024] [--json out.json]

The stand-in (`FaceStandIn`) is a Worker with FaceAnalysis's columns: the generated photos carry
their faces' identities in flat 32 px blocks of the top row (JPEG keeps a flat block's level), and
it returns one 112 px face per coded identity with a random unit embedding at cosine ~0.7 to that
identity's center (or a stranger's random embedding). Photos are real size (--side, 4:3), smooth
gradients with noise, so decoding, OCR, the aesthetic model, captions and JPEG encoding do their
real work; only SCRFD / ArcFace are not run. Nothing asserts a time.
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
from PIL import Image  # noqa: E402

from workers.base import Worker, image_of  # noqa: E402
from workers.face_analysis import FaceAnalysis  # noqa: E402

BLOCK, LEVEL = 32, 16  # a code block's side and the grey step between code values (JPEG-safe)
FACE = 112
MB = 1 << 20


def coded_photo(codes: list[int], side: int, rng: np.random.Generator) -> Image.Image:
    """A side x 3/4 side photo: a smooth colour gradient with mild noise, the codes (0..15) in the
    top row's first blocks."""
    h, w = side * 3 // 4, side
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w, y / h, (x + y) / (w + h)], -1) * rng.uniform(80, 200, 3) + rng.uniform(0, 50, 3)
    img = np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    for i, c in enumerate(codes):
        img[:BLOCK, i * BLOCK:(i + 1) * BLOCK] = c * LEVEL + LEVEL // 2
    return Image.fromarray(img)


def read_codes(image: np.ndarray) -> list[int]:
    n = int(image[BLOCK // 2, BLOCK // 2].mean()) // LEVEL
    return [int(image[BLOCK // 2, (i + 1) * BLOCK + BLOCK // 2].mean()) // LEVEL for i in range(n)]


class FaceStandIn(Worker):
    """FaceAnalysis's columns without SCRFD / ArcFace: `model` is a .npy of identity centers."""

    role, inputs = FaceAnalysis.role, FaceAnalysis.inputs
    columns = classmethod(FaceAnalysis.columns.__func__)  # the same columns as the real worker

    def __init__(self, model: str, *, dtype: str = "float32", image: str = "image", prefix: str = "", **common):
        super().__init__(model, dtype=dtype, **common)
        self.centers = np.load(model)
        self.image, self.prefix = image, prefix

    def check(self, row: dict) -> dict:
        return {"rgb": image_of(row, self.image)}

    def predict(self, inputs: list[dict]) -> list[dict]:
        out = []
        for x in inputs:
            codes = read_codes(x["rgb"])
            rng = np.random.default_rng(int(x["rgb"][BLOCK:BLOCK + 8].sum()))  # per photo, repeatable
            n = len(codes)
            emb = rng.normal(size=(n, self.centers.shape[1])).astype(np.float32)
            for f, code in enumerate(codes):
                if code > 0:  # code c: identity c - 1 at cosine 0.7 (0: a stranger)
                    c = self.centers[code - 1]
                    u = emb[f] - (emb[f] @ c) * c
                    emb[f] = 0.7 * c + 0.714 * u / np.linalg.norm(u)
            emb /= np.linalg.norm(emb, axis=1, keepdims=True)
            x0 = 100 + np.arange(n) * (FACE + 20)
            boxes = np.stack([x0, np.full(n, 200), x0 + FACE, np.full(n, 200 + FACE)], 1).astype(np.float32)
            kps = np.stack([boxes[:, :2] + FACE * np.array(p, np.float32)
                            for p in ((.3, .4), (.7, .4), (.5, .6), (.35, .8), (.65, .8))], 1)
            p = self.prefix
            out.append({p + "face_boxes": boxes.reshape(n, 4), p + "face_kps": kps.reshape(n, 5, 2),
                        p + "det_scores": np.full(n, 0.9, np.float32), p + "embeddings": emb, p + "n_faces": n})
        return out


def make_inputs(root: Path, n_groups: int, identities: int, per_identity: int, side: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    centers = rng.normal(size=(identities, 512)).astype(np.float32)
    np.save(root / "centers.npy", centers / np.linalg.norm(centers, axis=1, keepdims=True))
    for i in range(identities):
        d = root / "singles" / f"person{i:02d}"
        d.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            coded_photo([1, i + 1], side, rng).save(d / f"{j}.jpg", quality=90)
    (root / "groups").mkdir(parents=True, exist_ok=True)
    for g in range(n_groups):
        k = int(rng.integers(1, 5))
        ids = rng.choice(identities + 1, size=k, replace=False)  # 0: a stranger
        coded_photo([k] + [int(c) for c in ids], side, rng).save(root / "groups" / f"g{g:05d}.jpg", quality=90)


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
    overrides = [f"singles={work / 'singles'}", f"groups={work / 'groups'}", f"face_analysis.model={work / 'centers.npy'}",
                 "holdout_count=2", "min_side_px=256", f"ray.data_object_store_bytes={budget_mb << 20}"]
    multiid.main(["--config", config, "--out", str(out)] + [a for o in overrides for a in ("--set", o)],
                 workers={"face_analysis": FaceStandIn})
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
