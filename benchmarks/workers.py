"""Each worker inside a Ray Data actor pool against a bare loop calling the same worker on the same
batches, in one run (tiny profile, random weights).

    python benchmarks/workers.py [--batches 12] [--batch-size 4] [--role vlm ...] [--json out.json]
    python benchmarks/workers.py --gpu [--batches 3] [--models out/full-models] [--keep-models]

Both sides get the same CPUs: the actor is given all of them (Ray sets its thread count from
num_cpus) and the bare loop runs in this process with torch's default threads. Both sides skip
their first batch (model load and warm-up), so the ratio is steady-state samples/s of the pool over
the bare loop; what is lost is Ray Data's scheduling, serialisation and object transfer. The pool
is timed from the start of its second call, stamped inside the actor, to the last output received
here: Ray Data has the actor's next batch running before the first output reaches the driver, so
timing from that output would give the pool a head start (up to a batch; 20% at 12 batches). One
line per role ending in `ratio <pipeline/bare>`.

--gpu: the same on a CUDA device with production-size random-weight models (builders
--size full: FLUX.1 [dev] and Fill [dev], Grounding DINO base, SAM 2.1 large, Qwen2.5-VL-7B,
DINOv2 base), each role's dtype and batch size from configs/*.gpu.yaml and its inputs at the
production settings (DIPConfig's defaults: 1024 px, a 2048x1024 diptych in 28 steps, 50 Fill
steps, 256 VLM tokens). A role's model is built just before it runs and deleted after it (FLUX.1
is ~34 GB on disk) unless --keep-models. Face analysis and background removal have no
production-size builder (ONNX graphs): they run the real small models of ../shared/assets
(SCRFD-2.5G, u2netp), on the CPU unless onnxruntime-gpu is installed; text detection runs the
rapidocr wheel's PP-OCRv4 the same way.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

from runtime.rows import batch_of  # noqa: E402
from stages.synthetic import random_image, random_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT.parent / "shared" / "assets"
FACES, U2NETP = ASSETS / "models" / "insightface_pack", ASSETS / "models" / "u2netp" / "u2netp.onnx"
ASSET_ROLES = ("face_analysis", "background_removal")  # real small models from ../shared/assets


def image(rng, size=64):
    return random_image(rng, size, size)


def roles(models: dict[str, Path]) -> dict:
    """role -> (worker class path, constructor kwargs, row maker)."""
    faces, u2netp = FACES, U2NETP
    return {
        "text_to_image": ("workers.text_to_image:TextToImage",
                          {"model": str(models["text_to_image"]), "height": 64, "width": 64, "steps": 2,
                           "left": "ref", "right": "win"},
                          lambda rng, i: {"prompt": f"a red teapot {i} on a table", "seed": i}),
        "inpainting": ("workers.inpainting:Inpainting", {"model": str(models["inpainting"]), "steps": 2,
                                                         "image": "win", "prompt": "caption", "output": "lose"},
                       lambda rng, i: {"win": image(rng), "mask": random_mask(rng, 64, 64) | _center(64),
                                       "caption": "a blue ceramic teapot", "seed": i}),
        "grounding": ("workers.grounding:Grounding", {"model": str(models["grounding"]), "image": "win"},
                      lambda rng, i: {"win": image(rng, 96), "phrases": ["teapot", "table"]}),
        "segmentation": ("workers.segmentation:Segmentation", {"model": str(models["segmentation"]), "image": "win"},
                         lambda rng, i: {"win": image(rng, 96), "boxes": np.array([[8, 8, 60, 60]], np.float32)}),
        "vlm": ("workers.vlm:VLM", {"model": str(models["vlm"]), "max_new_tokens": 8},
                lambda rng, i: {"image": image(rng), "prompt": "Describe the object."}),
        "image_encoder": ("workers.image_encoder:ImageEncoder", {"model": str(models["image_encoder"])},
                          lambda rng, i: {"image": image(rng)}),
        "face_analysis": ("workers.face_analysis:FaceAnalysis",
                          {"model": str(faces if faces.is_dir() else models["face_analysis"]), "det_size": 320},
                          lambda rng, i: {"image": image(rng, 160)}),
        "background_removal": ("workers.background_removal:BackgroundRemoval",
                               {"model": str(u2netp if u2netp.exists() else models["background_removal"]), "image": "ref"},
                               lambda rng, i: {"ref": image(rng, 160)}),
        # the wheel's real PP-OCRv4 detector and recogniser: there is no tiny stand-in to build
        "text_detection": ("workers.text_detection:TextDetection", {"model": "PP-OCRv4"},
                           lambda rng, i: {"image": image(rng, 160)}),
        "aesthetic": ("workers.aesthetic:Aesthetic", {"model": str(models["aesthetic"])},
                      lambda rng, i: {"image": image(rng)}),
    }


def production_roles(models: dict[str, Path]) -> dict:
    """roles() at production settings: DIPConfig's defaults are the paper's and the GPU configs'
    (they set no generation sizes of their own), MultiID's detector at insightface's 640 px."""
    from configs import DIPConfig

    dip = DIPConfig()
    n = dip.image_size
    return {
        "text_to_image": ("workers.text_to_image:TextToImage",
                          {"model": str(models["text_to_image"]), "height": n, "width": n, "steps": dip.steps,
                           "guidance": dip.guidance, "left": "ref", "right": "win"},
                          lambda rng, i: {"prompt": f"two side by side images of the same red teapot {i}", "seed": i}),
        "inpainting": ("workers.inpainting:Inpainting",
                       {"model": str(models["inpainting"]), "steps": dip.inpaint_steps, "guidance": dip.inpaint_guidance,
                        "dilation_px": dip.mask_dilation_px, "feather_px": dip.mask_feather_px,
                        "image": "win", "prompt": "caption", "output": "lose"},
                       lambda rng, i: {"win": image(rng, n), "mask": random_mask(rng, n, n) | _center(n),
                                       "caption": "a blue ceramic teapot", "seed": i}),
        "grounding": ("workers.grounding:Grounding",
                      {"model": str(models["grounding"]), "box_threshold": dip.box_threshold,
                       "text_threshold": dip.text_threshold, "image": "win"},
                      lambda rng, i: {"win": image(rng, n), "phrases": ["teapot", "table"]}),
        "segmentation": ("workers.segmentation:Segmentation", {"model": str(models["segmentation"]), "image": "win"},
                         lambda rng, i: {"win": image(rng, n),
                                         "boxes": np.array([[n / 8, n / 8, 7 * n / 8, 7 * n / 8]], np.float32)}),
        # DIP's rubric check: the reference and the winner in one turn
        "vlm": ("workers.vlm:VLM", {"model": str(models["vlm"]), "images": ["ref", "win"],
                                    "max_new_tokens": dip.vlm_max_new_tokens},
                lambda rng, i: {"ref": image(rng, n), "win": image(rng, n),
                                "prompt": "Rate from 0 to 10 how consistent the subject is across the two images."}),
        # DIP's prefilter: cosine of the reference and the winner
        "image_encoder": ("workers.image_encoder:ImageEncoder",
                          {"model": str(models["image_encoder"]), "image": "ref", "image_b": "win"},
                          lambda rng, i: {"ref": image(rng, n), "win": image(rng, n)}),
        "face_analysis": ("workers.face_analysis:FaceAnalysis", {"model": str(FACES), "det_size": 640},
                          lambda rng, i: {"image": image(rng, n)}),
        "background_removal": ("workers.background_removal:BackgroundRemoval", {"model": str(U2NETP), "image": "ref"},
                               lambda rng, i: {"ref": image(rng, n)}),
        # MultiID's appendix C filters on the group photos (1024 px)
        "text_detection": ("workers.text_detection:TextDetection", {"model": "PP-OCRv4"},
                           lambda rng, i: {"image": image(rng, n)}),
        "aesthetic": ("workers.aesthetic:Aesthetic", {"model": str(models["aesthetic"])},
                      lambda rng, i: {"image": image(rng, n)}),
    }


def gpu_specs() -> dict:
    """role -> ModelSpec (dtype, batch size) of the first dataset (by name) whose gpu profile sets
    that role (a role a profile leaves out keeps a CPU-sized default there)."""
    import yaml

    from runtime.config import ModelSpec, load_config
    from runtime.registry import datasets

    specs = {}
    for spec in datasets().values():
        path = spec.profiles.get("gpu")
        if path is None:
            continue
        named = yaml.safe_load(Path(path).read_text())
        for role, value in load_config(spec.config, path):
            if isinstance(value, ModelSpec) and role in named:
                specs.setdefault(role, value)
    return specs


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


def release_gpu() -> None:
    """Give back what the bare loop's model held on the GPU before the actor loads its own copy
    (torch's caching allocator keeps freed blocks for this process otherwise)."""
    gc.collect()
    if "torch" in sys.modules:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()


STARTED = "_bench_call_started"


class Stamped:
    """The worker, adding to its output when the call began (time.time(): Ray runs on this
    machine, so actor and driver share the clock)."""

    def __init__(self, cls, kwargs):
        self.worker = cls(**kwargs)

    def __call__(self, batch):
        started = time.time()
        out = self.worker(batch)
        return out.append_column(STARTED, pa.array([started] * out.num_rows, pa.float64()))


def pooled(cls, kwargs, batches, batch_size: int, num_cpus: int, num_gpus: float | None = None) -> float:
    import ray

    ds = ray.data.from_arrow(batches).map_batches(
        Stamped, fn_constructor_args=(cls, kwargs), batch_size=batch_size, num_cpus=num_cpus, num_gpus=num_gpus,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=1))
    rows_per_call: dict[float, int] = {}
    for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        for started in b[STARTED].to_pylist():
            rows_per_call[started] = rows_per_call.get(started, 0) + 1
    end = time.time()
    assert sum(rows_per_call.values()) == sum(b.num_rows for b in batches)
    first, second = sorted(rows_per_call)[:2]  # the first call (actor start, model load) is the warm-up
    return (sum(rows_per_call.values()) - rows_per_call[first]) / (end - second)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", type=int, default=None, help="per role, the first one a warm-up (default 12; --gpu 3)")
    p.add_argument("--batch-size", type=int, default=None, help="default 4; --gpu: the role's from configs/*.gpu.yaml")
    p.add_argument("--role", action="append")
    p.add_argument("--models", default=None,
                   help="model root (default: a temp dir; --gpu: out/full-models, each role deleted after its run)")
    p.add_argument("--gpu", action="store_true", help="production-size random-weight models on a CUDA device")
    p.add_argument("--keep-models", action="store_true", help="--gpu: keep the built models under --models")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.batches is not None and args.batches < 2:
        p.error("--batches: at least 2 (the first is each side's warm-up)")

    import ray

    import workers  # noqa: F401  (declares every role)
    from runtime.roles import ROLES, buildable, ensure

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    num_cpus = os.cpu_count() or 1
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    batches_per_role = args.batches or (3 if args.gpu else 12)
    if args.gpu:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("--gpu needs a CUDA device")
        root = Path(args.models or ROOT / "out" / "full-models")
        table, specs = production_roles({r: root / r for r in buildable("full")}), gpu_specs()
    else:
        root = Path(args.models or tempfile.mkdtemp(prefix="tiny-models-"))
        table = roles(ensure(root, [r for r in buildable() if ROLES[r].worker is not None]))
    results = []
    for role in args.role or table:
        path, kwargs, make = table[role]
        batch_size, num_gpus = args.batch_size or 4, None
        if args.gpu:
            if role in buildable("full"):
                ensure(root, [role], size="full")  # one production model on disk at a time
                release_gpu()
            elif role in ASSET_ROLES and not ASSETS.is_dir():
                print(f"{role:<20} skipped: its real model is in {ASSETS}, which is missing", flush=True)
                continue
            spec = specs[role]
            kwargs = dict(kwargs, dtype=spec.dtype)
            batch_size, num_gpus = args.batch_size or spec.batch_size, 1
        rng = np.random.default_rng(0)
        rows = [make(rng, i) for i in range(batches_per_role * batch_size)]
        batches = [batch_of(rows[i:i + batch_size]) for i in range(0, len(rows), batch_size)]
        cls = load(path)
        b = bare(cls, kwargs, batches)
        release_gpu()
        pl = pooled(cls, kwargs, batches, batch_size, num_cpus, num_gpus)
        results.append({"role": role, "device": "cuda" if args.gpu else "cpu", "batch_size": batch_size,
                        "bare_samples_per_s": round(b, 2), "pool_samples_per_s": round(pl, 2),
                        "ratio": round(pl / b, 3)})
        print(f"{role:<20} bare {b:8.2f}/s  pool {pl:8.2f}/s  ratio {pl / b:.2f}", flush=True)
        if args.gpu and role in buildable("full") and not args.keep_models:
            shutil.rmtree(root / role, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    ray.shutdown()
    return results


if __name__ == "__main__":
    main()
