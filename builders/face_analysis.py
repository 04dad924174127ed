"""A random-weight insightface model pack (SCRFD-shaped detector and ArcFace-shaped recogniser as
ONNX), loadable by workers.face_analysis.FaceAnalysis through insightface's own loader. Tiny only:
an ONNX graph has no library config to build a production-size one from.
"""
from __future__ import annotations

from pathlib import Path

DETECTOR_FILE = "det_tiny_scrfd.onnx"
RECOGNISER_FILE = "rec_tiny_arcface.onnx"
STRIDES = (8, 16, 32)
ANCHORS = 2  # SCRFD-2.5G's two square anchors per location


def build_tiny(directory, seed: int = 0) -> Path:
    """An insightface model pack with random weights: an SCRFD-shaped detector (three strides,
    two anchors, 9 outputs: scores, box distances, landmark offsets) and an ArcFace-shaped
    recogniser (112x112 aligned face -> 512), exported to ONNX so insightface's model zoo routes
    them by their signatures exactly as it routes a real pack."""
    import torch
    from torch import nn

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 2, 1), nn.ReLU())

    class TinySCRFD(nn.Module):
        def __init__(self, width=8):
            super().__init__()
            self.stem = nn.Sequential(block(3, width), block(width, width), block(width, width))  # stride 8
            self.down = nn.ModuleList([block(width, width), block(width, width)])  # 16, 32
            self.score = nn.ModuleList([nn.Conv2d(width, ANCHORS, 1) for _ in STRIDES])
            self.bbox = nn.ModuleList([nn.Conv2d(width, ANCHORS * 4, 1) for _ in STRIDES])
            self.kps = nn.ModuleList([nn.Conv2d(width, ANCHORS * 10, 1) for _ in STRIDES])
            # Random weights would fire everywhere or nowhere. The score logits are standardised
            # over the positions and shifted so that a few percent of the coarsest level's
            # anchors fire (none of the finer levels'): a photo gives a handful of faces, so the
            # recogniser runs.
            self.score_shift = (-20.0, -20.0, -1.5)
            with torch.no_grad():
                for conv in self.bbox:
                    conv.bias.fill_(1.5)  # box sides ~ 1.5 strides from the anchor centre

        def forward(self, x):
            feats = [self.stem(x)]
            for d in self.down:
                feats.append(d(feats[-1]))

            def flat(t, c):  # (1, A*c, H, W) -> (1, H*W*A, c), the anchor order SCRFD decodes
                return t.permute(0, 2, 3, 1).reshape(1, -1, c)

            scores = [flat(torch.sigmoid(_standardise(h(f)) + shift), 1)
                      for h, f, shift in zip(self.score, feats, self.score_shift)]
            boxes = [flat(nn.functional.softplus(h(f)), 4) for h, f in zip(self.bbox, feats)]
            kps = [flat(h(f), 10) for h, f in zip(self.kps, feats)]
            return (*scores, *boxes, *kps)

    class TinyArcFace(nn.Module):
        def __init__(self, width=16, dim=512):
            super().__init__()
            self.body = nn.Sequential(block(3, width), block(width, width), block(width, width),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(width, dim)

        def forward(self, x):
            return self.fc(self.body(x))

    names = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]
    _export(TinySCRFD().eval(), torch.zeros(1, 3, 640, 640), directory / DETECTOR_FILE, "input.1", names,
            {"input.1": {2: "height", 3: "width"}, **{n: {1: f"anchors_{n}"} for n in names}})
    _export(TinyArcFace().eval(), torch.zeros(1, 3, 112, 112), directory / RECOGNISER_FILE, "input.1", ["embedding"],
            {"input.1": {0: "batch"}, "embedding": {0: "batch"}})
    return directory


def _standardise(t):
    """Zero mean, unit variance over the positions of each channel."""
    mean = t.mean(dim=(2, 3), keepdim=True)
    return (t - mean) / (((t - mean) ** 2).mean(dim=(2, 3), keepdim=True).sqrt() + 1e-6)


def _export(module, example, path: Path, input_name: str, output_names: list[str], dynamic_axes: dict):
    import torch

    # The TorchScript exporter: the dynamo one needs onnxscript, which this project does not use.
    torch.onnx.export(module, (example,), str(path), input_names=[input_name], output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=17, dynamo=False)
