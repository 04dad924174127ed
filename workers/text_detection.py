"""Text detection: how much of an image is text, for the watermark / logo filter of MultiID
(WithAnyone, seed 002, appendix C: "OCR tools detected watermarks and logos, which were cropped out
when possible; otherwise, the images were discarded"). The pipeline rejects an image whose
`text_fraction` is above its configured fraction.

The model is RapidOCR's PP-OCRv4 text detector (DB, `ch_PP-OCRv4_det_infer.onnx`, which ships in
the rapidocr-onnxruntime wheel: real weights, no download), run through the library's own
`RapidOCR` engine, which scales the image to the detector's sizes and maps the boxes back to the
image's pixels.

A detected box counts as text only when PP-OCRv4's recogniser (also in the wheel) reads it with a
confidence of at least `text_score` (RapidOCR's own filter, 0.5 by default): the detector alone
fires on faces (a portrait's face is a 0.1-0.16 "text" box at its default box threshold, measured
on ../shared/assets/images/faces), and faces are what MultiID's photos are made of.
`text_score=None` counts every detected box (the detector alone).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from runtime.costs import Cost
from runtime.roles import NOTHING_TO_BUILD, register_worker
from workers.base import Worker, image_of
from workers.face_analysis import onnx_providers

# the model names that mean the det model bundled in the wheel
BUNDLED = ("rapidocr", "PP-OCRv4")


def text_fraction(boxes: np.ndarray, height: int, width: int) -> float:
    """Area of the union of the quadrilaterals / image area: the polygons rasterised into one mask,
    so overlapping boxes are counted once. One fillPoly per box: given several polygons at once,
    fillPoly fills by the even-odd rule and an overlap of two boxes would come out as a hole."""
    if len(boxes) == 0:
        return 0.0
    import cv2

    mask = np.zeros((height, width), np.uint8)
    for box in np.round(boxes).astype(np.int32):
        cv2.fillPoly(mask, [box], 1)
    return float(mask.mean())


def simulated_text_detection(w, row: dict) -> dict:
    """A simulated accelerator's detection: no text."""
    image_of(row, w.args["image"])
    p = w.args["prefix"]
    return {p + "text_boxes": np.zeros((0, 4, 2), np.float32), p + "text_fraction": np.float32(0.0)}


@register_worker
class TextDetection(Worker):
    """Per image: `text_boxes` float32 [n, 4, 2] (quadrilaterals, clockwise from the top left, in
    pixels) and `text_fraction` float32, the area of the union of the boxes over the image's area.
    Column names take `prefix`. No text is not a reject: [0, 4, 2] boxes and fraction 0.

    `model`: "PP-OCRv4" (or "rapidocr"), the wheel's detector, or the path of another PP-OCR det
    .onnx. `box_thresh`, `unclip_ratio`: the DB post-processing's (RapidOCR's defaults).
    `text_score`: the recognition confidence a box needs to count, None for the detector alone."""

    role = "text_detection"
    builder = NOTHING_TO_BUILD
    # PP-OCRv4's weights ship in the rapidocr-onnxruntime wheel
    cost = Cost(0.03, source="PP-OCRv4 mobile detection, onnxruntime on one CPU core: ~30 ms an image (RapidOCR "
                           "reports); a CPU role in the GPU profiles")
    simulated = staticmethod(simulated_text_detection)
    inputs = ("image",)

    def __init__(self, model: str = "PP-OCRv4", *, dtype: str = "float32", image: str = "image", prefix: str = "",
                 box_thresh: float = 0.5, unclip_ratio: float = 1.6, text_score: float | None = 0.5, **common):
        super().__init__(model, dtype=dtype, **common)
        from rapidocr_onnxruntime import RapidOCR

        options = {}
        if model not in BUNDLED:
            path = Path(model).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"text detector {model!r} is neither one of {BUNDLED} (the wheel's "
                                        "PP-OCRv4 det model) nor an .onnx file; workers never download models")
            options["det_model_path"] = str(path.resolve())
        cuda = onnx_providers(self.device)[0] == "CUDAExecutionProvider"
        if not cuda:
            self.device = "cpu"  # onnxruntime without CUDA runs on the CPU, whatever torch sees
        self.image, self.prefix, self.text_score = image, prefix, text_score
        self.engine = RapidOCR(det_box_thresh=box_thresh, det_unclip_ratio=unclip_ratio, det_use_cuda=cuda,
                               rec_use_cuda=cuda, text_score=0.5 if text_score is None else text_score,
                               use_cls=False, **options)

    @classmethod
    def columns(cls, image: str = "image", prefix: str = "", **kwargs):
        return [image], [prefix + "text_boxes", prefix + "text_fraction"]

    def check(self, row: dict) -> dict:
        rgb = image_of(row, self.image)
        return {"bgr": np.ascontiguousarray(rgb[..., ::-1])}  # PaddleOCR's models read OpenCV's BGR

    def predict(self, inputs: list[dict]) -> list[dict]:
        # RapidOCR sizes each image for the detector on its own: one image at a time
        return [self._detect(x["bgr"]) for x in inputs]

    def _detect(self, bgr: np.ndarray) -> dict:
        from rapidocr_onnxruntime.utils.infer_engine import ONNXRuntimeError

        recognise = self.text_score is not None
        try:
            result, _ = self.engine(bgr, use_det=True, use_cls=False, use_rec=recognise)
        except ONNXRuntimeError as e:  # onnxruntime's own failure (CUDA memory, a broken session)
            raise RuntimeError(str(e)[-1500:]) from e
        # detector alone: a list of boxes; with recognition: [box, text, score] with score >= text_score
        boxes = [r[0] if recognise else r for r in result or []]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4, 2)
        h, w = bgr.shape[:2]
        return {self.prefix + "text_boxes": boxes,
                self.prefix + "text_fraction": np.float32(text_fraction(boxes, h, w))}
