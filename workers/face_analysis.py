"""Face analysis: SCRFD face boxes and 5-point landmarks, and ArcFace identity embeddings, through
insightface's own model-pack loader (`FaceAnalysis`). MultiID (WithAnyone, seed 002, sec. 3) uses
the embeddings to build the reference bank and to match the faces of group photos to it.

No face is not a reject here: a row gets empty arrays and `n_faces` 0, and the pipeline decides
(the reference bank wants exactly one face, a group photo several).
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from workers.base import Worker, image_of

DETECTOR_FILE = "det_tiny_scrfd.onnx"
RECOGNISER_FILE = "rec_tiny_arcface.onnx"


def onnx_providers(device: str) -> list[str]:
    """CUDA when the worker is on a GPU and onnxruntime was built with it (onnxruntime-gpu),
    else the CPU."""
    import onnxruntime

    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        warnings.warn("onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu); running on the CPU")
    return ["CPUExecutionProvider"]


def model_pack_dir(model: str, root: str = "~/.insightface") -> Path:
    """A model-pack directory, or a pack name under `root`/models (insightface's layout). A pack
    that is not there is an error here: insightface would otherwise try to download it."""
    direct = Path(model).expanduser()
    if direct.is_dir():
        return direct.resolve()
    packed = Path(root).expanduser() / "models" / model
    if packed.is_dir():
        return packed.resolve()
    raise FileNotFoundError(f"insightface model pack {model!r} is neither a directory nor in {packed.parent}; "
                            "workers never download models")


class FaceAnalysis(Worker):
    """Per image: `face_boxes` float32 [n, 4] (x1, y1, x2, y2 in pixels), `face_kps` float32
    [n, 5, 2] (eyes, nose, mouth corners), `det_scores` float32 [n], `embeddings` float32 [n, d]
    (unit-length ArcFace features, d = 512), `n_faces` int. Column names take `prefix`."""

    role = "face_analysis"

    def __init__(self, model: str, *, stage: str | None = None, dtype: str = "float32",
                 device: str | None = None, image_column: str = "image", prefix: str = "",
                 det_size: int | tuple[int, int] = 640, det_thresh: float = 0.5, max_num: int = 0,
                 root: str = "~/.insightface", rec_batch_size: int = 64):
        super().__init__(model, stage=stage, dtype=dtype, device=device)
        from insightface.app import FaceAnalysis as InsightFaceAnalysis

        providers = onnx_providers(self.device)
        if providers[0] == "CPUExecutionProvider":
            self.device = "cpu"  # onnxruntime without CUDA runs on the CPU, whatever torch sees
        self.image_column, self.prefix = image_column, prefix
        self.max_num, self.rec_batch_size = max_num, rec_batch_size
        size = (det_size, det_size) if isinstance(det_size, int) else tuple(det_size)
        # The pack's absolute directory as its name: insightface 2.x opens it directly, and older
        # versions' os.path.join(root, "models", name) drops the root for an absolute name.
        self.app = InsightFaceAnalysis(name=str(model_pack_dir(model, root)), root=root,
                                       allowed_modules=["detection", "recognition"], providers=providers)
        self.app.prepare(ctx_id=0 if self.device.startswith("cuda") else -1, det_thresh=det_thresh, det_size=size)
        self.detector = self.app.det_model
        self.recogniser = self.app.models.get("recognition")
        if self.recogniser is None or not self.detector.use_kps:
            raise ValueError(f"{model}: a face-analysis pack needs a detector with landmarks and a recogniser")
        # Packs differ: buffalo_l's recogniser takes any batch, others are exported with batch 1.
        self.rec_batched = not isinstance(self.recogniser.input_shape[0], int)
        dim = self.recogniser.output_shape[-1]
        self.embedding_dim = dim if isinstance(dim, int) else 512  # a symbolic width: ArcFace's

    def check(self, row: dict) -> dict:
        rgb = image_of(row, self.image_column)
        return {"bgr": np.ascontiguousarray(rgb[..., ::-1])}  # insightface works in OpenCV's BGR

    def predict(self, inputs: list[dict]) -> list[dict]:
        from insightface.utils import face_align

        # SCRFD letterboxes one image at a time; recognition batches every face of the batch.
        detections, crops = [], []
        for x in inputs:
            boxes, kpss = self.detector.detect(x["bgr"], max_num=self.max_num)
            detections.append((boxes, kpss))
            crops += [face_align.norm_crop(x["bgr"], landmark=k, image_size=self.recogniser.input_size[0])
                      for k in kpss]
        features = self._embed(crops)
        out, start = [], 0
        for boxes, kpss in detections:
            n = len(boxes)
            feats = features[start:start + n]
            start += n
            # normed_embedding, as insightface's Face defines it: cosine similarity is a dot product
            norms = np.linalg.norm(feats, axis=1, keepdims=True)
            p = self.prefix
            out.append({
                p + "face_boxes": boxes[:, :4].astype(np.float32),
                p + "face_kps": kpss.reshape(n, 5, 2).astype(np.float32),
                p + "det_scores": boxes[:, 4].astype(np.float32),
                p + "embeddings": (feats / np.maximum(norms, 1e-12)).astype(np.float32),
                p + "n_faces": n,
            })
        return out

    def _embed(self, crops: list[np.ndarray]) -> np.ndarray:
        if not crops:
            return np.zeros((0, self.embedding_dim), np.float32)
        step = self.rec_batch_size if self.rec_batched else 1
        feats = [self.recogniser.get_feat(crops[i:i + step]) for i in range(0, len(crops), step)]
        return np.concatenate(feats).reshape(len(crops), -1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# tiny random-weight pack

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
