"""The face embedder of WithAnyone's ID losses (seed 002 eq. 4-5) as a TorchScript file: aligned
112 x 112 faces in [-1, 1] -> 512-d embeddings, differentiable w.r.t. the faces.

    python -m trainer.face_encoder --onnx ../shared/assets/models/insightface_pack/rec_faceplugin_fr_feature_512.onnx --out face.pt
    python -m trainer.face_encoder --tiny --out out/tiny-models/face_encoder.pt

`--onnx` converts an ArcFace-style ONNX embedder (insightface's recognition models) with onnx2torch
and scripts it by tracing (the same outputs as onnxruntime, now with gradients; insightface's
exports have batch 1 baked in, so the trainer calls it one face at a time); `--tiny` saves a
random-weight network of the same interface for the tiny profile.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

SIZE = 112  # ArcFace's aligned face


def from_onnx(onnx_path, out) -> Path:
    from onnx2torch import convert

    model = convert(str(onnx_path)).eval()
    traced = torch.jit.trace(model, torch.zeros(1, 3, SIZE, SIZE))
    traced.save(str(out))
    return Path(out)


def build_tiny(out, seed: int = 0, dim: int = 512) -> Path:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2, 1), torch.nn.PReLU(8), torch.nn.Conv2d(8, 16, 3, 2, 1), torch.nn.PReLU(16),
        torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(16 * 16, dim)).eval()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    torch.jit.script(model).save(str(out))
    return Path(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--onnx")
    g.add_argument("--tiny", action="store_true")
    args = p.parse_args(argv)
    print(from_onnx(args.onnx, args.out) if args.onnx else build_tiny(args.out))


if __name__ == "__main__":
    main()
