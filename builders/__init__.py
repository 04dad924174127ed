"""The `tiny` profile's models: every role's architecture with a small config and random weights,
saved in the library's own format so the worker loads it through the same loader as the real
model. Random weights cost the same compute as real ones at the same size, so the same roles at
production size (`--size full`, each module's build_full: FLUX.1, Grounding DINO base, SAM 2.1
large, Qwen2.5-VL-7B, DINOv2 base, CLIP ViT-L/14) measure GPU throughput without a model hub.

One module per role family (builders.text_to_image, builders.inpainting, builders.grounding,
builders.segmentation, builders.vlm, builders.image_encoder, builders.face_analysis,
builders.background_removal, builders.aesthetic, builders.hps), each with build_tiny(directory, seed=0, **kw)
and, where the library has a config to build it from, build_full. Builders may import from workers (a
constant both need stays in the worker module); workers never import builders.

    python -m builders out/tiny-models            # build every role that is missing
    python -m builders out/tiny-models --role vlm
    python -m builders out/full-models --size full --role grounding   # on a GPU machine
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import shutil
import uuid
from pathlib import Path

# role -> (builders module, builder keyword arguments); each has build_tiny(directory, seed=0, **kw)
BUILDERS: dict[str, tuple[str, dict]] = {
    "text_to_image": ("builders.text_to_image", {}),
    "inpainting": ("builders.inpainting", {}),
    "grounding": ("builders.grounding", {}),
    "segmentation": ("builders.segmentation", {}),
    "vlm": ("builders.vlm", {}),
    "image_encoder": ("builders.image_encoder", {"kind": "dinov2"}),
    "clip": ("builders.image_encoder", {"kind": "clip"}),
    "face_analysis": ("builders.face_analysis", {}),
    "background_removal": ("builders.background_removal", {}),
    "aesthetic": ("builders.aesthetic", {}),  # CLIP + LAION's head; text_detection needs none (the wheel's)
    "hps": ("builders.hps", {}),  # HPSv2's open_clip CLIP (the trainer's R_aes)
}
REWARD_ROLES = ("clip", "hps")  # the trainer's reward models (trainer.rewards), no pipeline worker
# The roles with a production-size builder (build_full). Face analysis and background removal
# are ONNX graphs with no library config to build them from.
FULL_ROLES = ("text_to_image", "inpainting", "grounding", "segmentation", "vlm", "image_encoder", "clip",
              "aesthetic")
SIZES = ("tiny", "full")
DONE = ".built"  # written last: a directory without it is a build that did not finish


@contextlib.contextmanager
def random_init(seed: int = 0, device: str | None = None, dtype: str = "bfloat16"):
    """Build a production-size model where it will run and in the precision it runs in: FLUX's
    12B parameters initialised in float32 on the CPU need ~48 GB and many minutes, on a GPU in
    bf16 seconds. Modules created inside get `device` (default: cuda when there is one) and
    `dtype`; save_pretrained keeps that dtype and the workers cast on load anyway."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    torch.set_default_dtype(getattr(torch, dtype))
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build(role: str, directory: str | Path, seed: int = 0, size: str = "tiny") -> Path:
    """Build one role into `directory` (replacing it), atomically: a half-built model is never
    mistaken for a finished one."""
    if size == "full" and role not in FULL_ROLES:
        raise ValueError(f"{role} has no production-size builder (only {', '.join(FULL_ROLES)})")
    module, kwargs = BUILDERS[role]
    directory = Path(directory)
    tmp = directory.with_name(f"_tmp-{uuid.uuid4().hex[:8]}-{directory.name}")
    try:
        getattr(importlib.import_module(module), f"build_{size}")(tmp, seed=seed, **kwargs)
        (tmp / DONE).write_text(marker(role, size))
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def marker(role: str, size: str) -> str:
    """What DONE holds: the role, and the size unless tiny (so older tiny caches stay valid)."""
    return role if size == "tiny" else f"{role} {size}"


def ensure(root: str | Path, roles=None, seed: int = 0, size: str = "tiny") -> dict[str, Path]:
    """The model of each role under root/<role> (tiny, or production-size with size="full"),
    built if missing or built at the other size (a tiny model never passes for a full one)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for role in roles or BUILDERS:
        d = root / role
        done = d / DONE
        out[role] = d if done.exists() and done.read_text() == marker(role, size) else build(role, d, seed, size)
    return out


def ensure_for(cfg) -> dict[str, Path]:
    """Build the tiny models a config points at: every model path `<root>/tiny-models/<role>` (the
    tiny profile's layout: a ModelSpec's model, a plain path field, a dict of paths) not built yet."""
    built = {}
    for _, value in cfg:
        values = [getattr(value, "model", None)] if hasattr(value, "model") else (
            list(value.values()) if isinstance(value, dict) else [value])
        for v in values:
            path = Path(v) if isinstance(v, str) else None
            if path is not None and path.parent.name == "tiny-models" and path.name in BUILDERS:
                built.update(ensure(path.parent, [path.name]))
    return built


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--role", action="append", choices=sorted(BUILDERS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=SIZES, default="tiny", help="full: production size (a GPU and tens of GB)")
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    roles = args.role or list(BUILDERS if args.size == "tiny" else FULL_ROLES)
    if args.rebuild:
        for r in roles:
            print(r, build(r, Path(args.root) / r, args.seed, args.size))
    else:
        for r, d in ensure(args.root, roles, args.seed, args.size).items():
            print(r, d)


if __name__ == "__main__":
    main()
