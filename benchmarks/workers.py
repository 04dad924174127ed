"""Each worker inside a Ray Data actor pool against a bare loop calling the same worker on the same
batches, in one run (tiny profile, random weights).

    python benchmarks/workers.py [--batches 12] [--batch-size 4] [--role vlm ...] [--json out.json]

Both sides get the same CPUs: the actor is given all of them (Ray sets its thread count from
num_cpus) and the bare loop runs in this process with torch's default threads. Both sides skip
their first batch (model load and warm-up), so the ratio is steady-state samples/s of the pool over
the bare loop; what is lost is Ray Data's scheduling, serialisation and object transfer. One line
per role ending in `ratio <pipeline/bare>`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from schemas.batch import batch_of  # noqa: E402
from stages.synthetic import random_image, random_mask  # noqa: E402

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"


def image(rng, size=64):
    return random_image(rng, size, size)


def roles(models: dict[str, Path]) -> dict:
    """role -> (worker class path, constructor kwargs, row maker)."""
    faces = ASSETS / "models" / "insightface_pack"
    u2netp = ASSETS / "models" / "u2netp" / "u2netp.onnx"
    return {
        "text_to_image": ("workers.text_to_image:TextToImage",
                          {"model": str(models["text_to_image"]), "height": 64, "width": 64, "steps": 2},
                          lambda rng, i: {"prompt": f"a red teapot {i} on a table", "seed": i}),
        "inpainting": ("workers.inpainting:Inpainting", {"model": str(models["inpainting"]), "steps": 2},
                       lambda rng, i: {"win": image(rng), "mask": random_mask(rng, 64, 64) | _center(64),
                                       "caption": "a blue ceramic teapot", "seed": i}),
        "grounding": ("workers.grounding:Grounding", {"model": str(models["grounding"])},
                      lambda rng, i: {"win": image(rng, 96), "phrases": ["teapot", "table"]}),
        "segmentation": ("workers.segmentation:Segmentation", {"model": str(models["segmentation"])},
                         lambda rng, i: {"win": image(rng, 96), "boxes": np.array([[8, 8, 60, 60]], np.float32)}),
        "vlm": ("workers.vlm:VLM", {"model": str(models["vlm"]), "max_new_tokens": 8},
                lambda rng, i: {"image": image(rng), "prompt": "Describe the object."}),
        "image_encoder": ("workers.image_encoder:ImageEncoder", {"model": str(models["image_encoder"])},
                          lambda rng, i: {"image": image(rng)}),
        "face_analysis": ("workers.face_analysis:FaceAnalysis",
                          {"model": str(faces if faces.is_dir() else models["face_analysis"]), "det_size": 320},
                          lambda rng, i: {"image": image(rng, 160)}),
        "background_removal": ("workers.background_removal:BackgroundRemoval",
                               {"model": str(u2netp if u2netp.exists() else models["background_removal"])},
                               lambda rng, i: {"ref": image(rng, 160)}),
    }


def _center(n):
    m = np.zeros((n, n), bool)
    m[n // 4: 3 * n // 4, n // 4: 3 * n // 4] = True
    return m


def load(path: str):
    module, name = path.split(":")
    return getattr(__import__(module, fromlist=[name]), name)


def bare(cls, kwargs, batches) -> float:
    worker = cls(**kwargs)
    worker(batches[0])  # warm-up, as the pool's first batch
    t0 = time.perf_counter()
    for b in batches[1:]:
        worker(b)
    return sum(b.num_rows for b in batches[1:]) / (time.perf_counter() - t0)


def pooled(cls, kwargs, batches, batch_size: int, num_cpus: int) -> float:
    import ray

    ds = ray.data.from_arrow(batches).map_batches(
        cls, fn_constructor_kwargs=kwargs, batch_size=batch_size, num_cpus=num_cpus, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=1))
    it = iter(ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    first = next(it)  # actor start, model load and the first batch
    t0 = time.perf_counter()
    n = sum(b.num_rows for b in it)
    assert first.num_rows + n == sum(b.num_rows for b in batches)
    return n / (time.perf_counter() - t0)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--role", action="append")
    p.add_argument("--models", default=None, help="tiny model root (default: a temp dir)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import ray

    from workers import tiny

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    num_cpus = os.cpu_count() or 1
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    root = Path(args.models or tempfile.mkdtemp(prefix="tiny-models-"))
    table = roles(tiny.ensure(root, [r for r in tiny.BUILDERS if r != "clip"]))
    results = []
    for role in args.role or table:
        path, kwargs, make = table[role]
        rng = np.random.default_rng(0)
        rows = [make(rng, i) for i in range(args.batches * args.batch_size)]
        batches = [batch_of(rows[i:i + args.batch_size]) for i in range(0, len(rows), args.batch_size)]
        cls = load(path)
        b = bare(cls, kwargs, batches)
        pl = pooled(cls, kwargs, batches, args.batch_size, num_cpus)
        results.append({"role": role, "bare_samples_per_s": round(b, 2), "pool_samples_per_s": round(pl, 2),
                        "ratio": round(pl / b, 3)})
        print(f"{role:<20} bare {b:8.2f}/s  pool {pl:8.2f}/s  ratio {pl / b:.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ray.shutdown()
    return results


if __name__ == "__main__":
    main()
