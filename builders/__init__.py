"""The `tiny` profile's models: every role's architecture with a small config and random weights,
saved in the library's own format so the worker loads it through the same loader as the real
model. Random weights cost the same compute as real ones at the same size, so the same roles at
production size (`--size full`, each module's build_full: FLUX.1, Grounding DINO base, SAM 2.1
large, Qwen2.5-VL-7B, DINOv2 base, CLIP ViT-L/14) measure GPU throughput without a model hub.

One module per role family, each with build_tiny(directory, seed=0, **kw) and, where the library
has a config to build it from, build_full. A role names its builder module (`Builder("builders.vlm")`
on its worker class, runtime/roles.py: the registry also builds, `ensure` / `ensure_for`, and
imports a builder module only then). Builders may import from workers (a constant both need stays
in the worker module); workers never import builders.

    python -m builders out/tiny-models            # build every role that is missing
    python -m builders out/tiny-models --role vlm
    python -m builders out/full-models --size full --role grounding   # on a GPU machine
"""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path


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


def main(argv=None) -> None:
    from runtime.registry import pipelines
    from runtime.roles import SIZES, build, buildable, ensure

    pipelines()  # every dataset module imported: every role they use is declared
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root")
    p.add_argument("--role", action="append", choices=buildable())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=SIZES, default="tiny", help="full: production size (a GPU and tens of GB)")
    p.add_argument("--rebuild", action="store_true")
    args = p.parse_args(argv)
    roles = args.role or buildable(args.size)
    if args.rebuild:
        for r in roles:
            print(r, build(r, Path(args.root) / r, args.seed, args.size))
    else:
        for r, d in ensure(args.root, roles, args.seed, args.size).items():
            print(r, d)


if __name__ == "__main__":
    main()
