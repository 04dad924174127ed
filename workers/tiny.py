"""The `tiny` profile's models: every role's architecture with a small config and random weights,
saved in the library's own format so the worker loads it through the same loader as the real
model. Random weights cost the same compute as real ones at the same size.

    python -m workers.tiny out/tiny-models            # build every role that is missing
    python -m workers.tiny out/tiny-models --role vlm
"""
from __future__ import annotations

import argparse
import importlib
import shutil
import uuid
from pathlib import Path

# role -> (module, builder keyword arguments); each module has build_tiny(directory, seed=0, **kw)
BUILDERS: dict[str, tuple[str, dict]] = {
    "text_to_image": ("workers.text_to_image", {}),
    "inpainting": ("workers.inpainting", {}),
    "grounding": ("workers.grounding", {}),
    "segmentation": ("workers.segmentation", {}),
    "vlm": ("workers.vlm", {}),
    "image_encoder": ("workers.image_encoder", {"kind": "dinov2"}),
    "clip": ("workers.image_encoder", {"kind": "clip"}),
    "face_analysis": ("workers.face_analysis", {}),
    "background_removal": ("workers.background_removal", {}),
}
DONE = ".built"  # written last: a directory without it is a build that did not finish


def build(role: str, directory: str | Path, seed: int = 0) -> Path:
    """Build one role into `directory` (replacing it), atomically: a half-built model is never
    mistaken for a finished one."""
    module, kwargs = BUILDERS[role]
    directory = Path(directory)
    tmp = directory.with_name(f"_tmp-{uuid.uuid4().hex[:8]}-{directory.name}")
    try:
        importlib.import_module(module).build_tiny(tmp, seed=seed, **kwargs)
        (tmp / DONE).write_text(role)
        if directory.exists():
            shutil.rmtree(directory)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def ensure(root: str | Path, roles=None, seed: int = 0) -> dict[str, Path]:
    """The tiny model of each role under root/<role>, built if missing."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for role in roles or BUILDERS:
        d = root / role
        out[role] = d if (d / DONE).exists() else build(role, d, seed)
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
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    roles = args.role or list(BUILDERS)
    if args.rebuild:
        for r in roles:
            print(r, build(r, Path(args.root) / r, args.seed))
    else:
        for r, d in ensure(args.root, roles, args.seed).items():
            print(r, d)


if __name__ == "__main__":
    main()
