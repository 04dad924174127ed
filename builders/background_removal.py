"""A random-weight u2netp stand-in (ONNX), loadable by workers.background_removal.BackgroundRemoval
through rembg's own u2netp session. Tiny only: an ONNX graph has no library config to build a
production-size one from.
"""
from __future__ import annotations

from pathlib import Path


def build_tiny(directory, seed: int = 0) -> Path:
    """A random-weight stand-in for u2netp with its ONNX signature: input "input.1" 1x3x320x320,
    seven 1x1x320x320 side outputs in [0, 1] (the fused map first, which rembg reads), saved as
    `u2netp.onnx` so the worker loads it by its directory through rembg's own u2netp session."""
    import torch
    from torch import nn

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    class TinyU2Netp(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.encode = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(),
                                        nn.Conv2d(width, width, 3, 2, 1), nn.ReLU())
            self.side = nn.Conv2d(width, 6, 3, 1, 1)  # six side outputs, as U^2-Net's stages
            self.fuse = nn.Conv2d(6, 1, 1)
            self.up = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)

        def forward(self, x):
            sides = self.up(self.side(self.encode(x)))
            fused = self.fuse(sides)
            return (torch.sigmoid(fused), *torch.sigmoid(sides).split(1, dim=1))

    path = directory / "u2netp.onnx"
    torch.onnx.export(TinyU2Netp().eval(), (torch.zeros(1, 3, 320, 320),), str(path), input_names=["input.1"],
                      output_names=[f"d{i}" for i in range(7)], opset_version=17, dynamo=False)
    return directory
