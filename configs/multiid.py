"""The typed config of MultiID (WithAnyone, seed 002). Paper thresholds are named fields with the paper's
defaults (the description cites where); `output_fields()` lists what enters a sample's key."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.config import ModelSpec, PipelineConfig


class MultiIDConfig(PipelineConfig):
    """WithAnyone (seed 002) section 3 and appendix C."""

    retrieval_threshold_low: float = Field(0.4, description="sec. 3: cosine to a bank center")
    retrieval_threshold_high: float = Field(0.5, description="app. C: cosine to a bank center")
    assign_threshold: float = Field(0.5, description="which of the two decides paired / unpaired")
    dbscan_eps: float = Field(0.5, description="cosine distance; same person is 0.2-0.4 apart")
    dbscan_min_samples: int = 2
    min_references: int = 2
    min_faces: int = 1
    max_faces: int = 5
    min_det_score: float = 0.5
    min_face_px: int = 32
    min_side_px: int = 256
    singles: str = "../shared/assets/images/faces/singles"  # a folder per identity, or a list with path, identity
    groups: str = "../shared/assets/images/faces/groups"  # a folder of group photos, or a list with path
    max_side: int = 1024  # images are scaled down to this long side
    min_input_side: int = 32  # smaller inputs are rejects ("too_small")
    max_image_pixels: int = 89_478_485  # decompression bombs (PIL's default cap)
    collage_filter: bool = True
    # 0.3: the shared press photos reach 0.22 with real backdrop text, burnt-in posters / memes /
    # tiled watermarks 0.41-0.59 (tests/workers/test_workers_text_aesthetic.py)
    max_text_fraction: float | None = Field(0.3, description="app. C: OCR text / watermark area; None: record only")
    min_aesthetic: float | None = Field(None, description="app. C: aesthetic floor (the paper gives no value); None: record only")
    caption_max_words: int = Field(77, description="app. I.1: at most 77 words")
    caption_repair: bool = Field(True, description="cut long captions / add 'This image shows' instead of rejecting")
    holdout_fraction: float = Field(0.1, description="MultiID-Bench: the least frequent identities held out")
    holdout_count: int | None = None  # overrides holdout_fraction
    write_names: bool = False  # bank/names.json: identity_id -> name (the paper keeps no names)
    caption_max_new_tokens: int = 128
    # template: "This image shows N people." from the face count, and no caption VLM: a random-weight
    # VLM (the tiny profile) writes bytes, not captions (caption_source in the manifest)
    captions: Literal["vlm", "template"] = Field("vlm", description="captions: the VLM's (app. I.1), or a "
                                                 "template from the face count")
    face_analysis: ModelSpec = ModelSpec(model="buffalo_l", dtype="float32")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    text_detection: ModelSpec = ModelSpec(model="PP-OCRv4", dtype="float32")  # the det model in the rapidocr wheel
    aesthetic: ModelSpec = ModelSpec(model="openai/clip-vit-large-patch14", dtype="float16")

    def input_paths(self) -> dict:
        return {"singles": self.singles, "groups": self.groups}

    def output_fields(self) -> dict:
        return self.model_dump(include={"seed", "dbscan_eps", "dbscan_min_samples", "min_references", "max_side",
                                        "retrieval_threshold_low", "retrieval_threshold_high"}) | {
            "models": [self.face_analysis.model, self.vlm.model]} | (  # not the filters': a new floor re-decides, keys stay
            {"captions": self.captions} if self.captions != "vlm" else {})  # the default leaves earlier keys alone
