"""The typed config of DIP (FocusDPO, seed 000). Paper thresholds are named fields with the paper's
defaults (the description cites where); `output_fields()` lists what enters a sample's key."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from runtime.config import ModelSpec, PipelineConfig


class DIPConfig(PipelineConfig):
    """FocusDPO (seed 000) section 4.1 and appendix B."""

    source: Literal["generate", "prompts", "photos"] = "generate"  # generate (FLUX from the catalog) | prompts (a .parquet/.jsonl file) | photos
    catalog: str = "configs/catalogs/dip_subjects.yaml"
    prompts_file: str | None = None
    photos_root: str = "../shared/assets/images/dreambench"
    photo_max_side: int = 512
    n_single: int = 5000  # sec. 4.1: 5,000 single-subject prompts
    n_multi: int = 5000  # and 5,000 multi-subject prompts
    generation_mode: Literal["diptych", "independent"] = "diptych"
    steps: int = 28
    guidance: float = 3.5
    image_size: int = 1024
    segmenter: Literal["grounded_sam2", "salient"] = "grounded_sam2"  # salient: the background-removal alpha, one subject
    inpainter: Literal["flux_fill", "opencv"] = "flux_fill"  # opencv: Telea
    qa: bool = Field(True, description="False: rubric / encoder gates recorded but not applied (qa=disabled)")
    rubric_positive_min: int = Field(9, description="app. B: positive pairs score >= 9 of 10")
    rubric_negative_max: int = Field(6, description="app. B: negative pairs score <= 6 of 10")
    copy_paste_cosine: float = Field(0.98, description="encoder cosine at or above: a copy-paste pair")
    encoder_cosine_min: float | None = Field(None, description="opt-in cheap pre-filter before the VLM rubric "
                                             "(e.g. 0.5): not in FocusDPO, whose gate is the rubric alone; None: off")
    box_threshold: float = 0.35  # Grounded-SAM-2 defaults
    text_threshold: float = 0.25
    mask_area_min: float = 0.02
    mask_area_max: float = 0.9
    mask_dilation_px: int = 16
    mask_feather_px: int = 8
    inpaint_steps: int = 50
    inpaint_guidance: float = 30.0
    vlm_max_new_tokens: int = 256
    # template: each subject's region caption is its subject phrase (which holds its class noun), and
    # the caption VLM is not run: a random-weight VLM (the tiny and photos profiles) writes bytes,
    # not captions, and a new user would read them in the manifest and the report
    captions: Literal["vlm", "template"] = Field("vlm", description="region captions: the VLM's, or the "
                                                 "subject phrases (caption_source in the manifest)")
    complexity_patch: int = Field(16, description="eq. 7-8 patch size: one latent-grid cell")
    text_to_image: ModelSpec = ModelSpec(model="black-forest-labs/FLUX.1-dev")
    inpainting: ModelSpec = ModelSpec(model="black-forest-labs/FLUX.1-Fill-dev")
    grounding: ModelSpec = ModelSpec(model="IDEA-Research/grounding-dino-base", dtype="float32")
    segmentation: ModelSpec = ModelSpec(model="facebook/sam2.1-hiera-large")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    image_encoder: ModelSpec = ModelSpec(model="facebook/dinov2-base")
    background_removal: ModelSpec = ModelSpec(model="u2netp", dtype="float32")

    def input_paths(self) -> dict:
        return {"photos": {"photos_root": self.photos_root}, "prompts": {"prompts_file": self.prompts_file},
                "generate": {"catalog": self.catalog}}[self.source]

    def output_fields(self) -> dict:
        fields = self.model_dump(include={
            "seed", "source", "generation_mode", "steps", "guidance", "image_size", "photo_max_side",
            "segmenter", "inpainter", "mask_dilation_px", "mask_feather_px", "inpaint_steps",
            "inpaint_guidance", "complexity_patch"})
        return fields | {"models": [m.model for m in (self.text_to_image, self.inpainting, self.grounding,
                                                      self.segmentation, self.vlm, self.image_encoder,
                                                      self.background_removal)]} | (
            {"captions": self.captions} if self.captions != "vlm" else {})  # the default leaves earlier keys alone
