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

from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of


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


def simulated_face_analysis(w, row: dict) -> dict:
    """A simulated accelerator's faces: the identities coded in the photo's top row
    (workers/simulated.coded_photo), each face's embedding at FACE_COSINE to its identity's center."""
    from workers.simulated import FACE_DIM, LANDMARKS, face_embedding, read_codes

    rgb = image_of(row, w.args["image"])
    h, width = rgb.shape[:2]
    codes = read_codes(rgb)
    n = len(codes)
    rng = np.random.default_rng(int(rgb[h // 2].sum()))  # per photo, repeatable
    side, step = max(width // 8, 36), width // 6  # faces side by side below the code row
    x0 = (width // 12 + np.arange(n) * step).astype(np.float32)
    y0 = np.full(n, h // 3, np.float32)
    boxes = np.stack([x0, y0, x0 + side, y0 + side], 1).reshape(n, 4)
    p = w.args["prefix"]
    return {p + "face_boxes": boxes, p + "face_kps": boxes[:, None, :2] + side * LANDMARKS[None],
            p + "det_scores": np.full(n, 0.9, np.float32),
            p + "embeddings": np.stack([face_embedding(c, rng) for c in codes]).astype(np.float32) if n
            else np.zeros((0, FACE_DIM), np.float32),
            p + "n_faces": n}


@register_worker
class FaceAnalysis(Worker):
    """Per image: `face_boxes` float32 [n, 4] (x1, y1, x2, y2 in pixels), `face_kps` float32
    [n, 5, 2] (eyes, nose, mouth corners), `det_scores` float32 [n], `embeddings` float32 [n, d]
    (unit-length ArcFace features, d = 512), `n_faces` int. Column names take `prefix`."""

    role = "face_analysis"
    builder = Builder("builders.face_analysis", full=False)
    # ONNX graphs: no library config to build a production-size one from
    cost = Cost(0.02, per_batch=0.005, source="insightface buffalo_l: SCRFD-10G ~10 ms + ArcFace R50 ~2 ms a face "
                                             "with onnxruntime-gpu (insightface model zoo)")
    simulated = staticmethod(simulated_face_analysis)

    inputs = ("image",)

    def __init__(self, model: str, *, dtype: str = "float32", image: str = "image", prefix: str = "",
                 det_size: int | tuple[int, int] = 640, det_thresh: float = 0.5, max_num: int = 0,
                 root: str = "~/.insightface", rec_batch_size: int = 64, **common):
        super().__init__(model, dtype=dtype, **common)
        from insightface.app import FaceAnalysis as InsightFaceAnalysis

        providers = onnx_providers(self.device)
        if providers[0] == "CPUExecutionProvider":
            self.device = "cpu"  # onnxruntime without CUDA runs on the CPU, whatever torch sees
        self.image, self.prefix = image, prefix
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
        rgb = image_of(row, self.image)
        return {"bgr": np.ascontiguousarray(rgb[..., ::-1])}  # insightface works in OpenCV's BGR

    @classmethod
    def columns(cls, image: str = "image", prefix: str = "", **kwargs):
        return [image], [prefix + c for c in ("face_boxes", "face_kps", "det_scores", "embeddings", "n_faces")]

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
