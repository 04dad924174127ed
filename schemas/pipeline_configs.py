"""The typed config of each dataset pipeline. Thresholds from the papers are named fields whose
defaults are the papers' values (the comment cites where); everything else is an engineering
choice with a sensible default. `output_fields()` lists what enters a sample's key: changing one of
those fields makes new samples, changing anything else (batch sizes, concurrency, shard size)
resumes the same ones."""
from __future__ import annotations

from pydantic import Field, field_validator

from schemas.config import PipelineConfig, Strict


class ModelSpec(Strict):
    """One worker role: a hub id or a local directory, and how its actor pool is sized."""

    model: str
    dtype: str = "bfloat16"
    batch_size: int = 4
    concurrency: int = 1  # actors; GPU pools start at full size
    num_gpus: float = 0.0
    # CPUs each actor holds for its lifetime. A GPU actor needs one for pre/post-processing; on a
    # CPU-only machine a DAG of many pools (DIP has 8) must hold less than the machine, or the
    # last pools never start and the run waits forever.
    num_cpus: float = 1.0


class DIPConfig(PipelineConfig):
    """FocusDPO (seed 000) section 4.1 and appendix B."""

    source: str = "generate"  # generate (FLUX from the catalog) | prompts (a .parquet/.jsonl file) | photos
    catalog: str = "configs/catalogs/dip_subjects.yaml"
    prompts_file: str | None = None
    photos_root: str = "../shared/assets/images/dreambench"
    photo_max_side: int = 512
    n_single: int = 5000  # sec. 4.1: 5,000 single-subject prompts
    n_multi: int = 5000  # and 5,000 multi-subject prompts
    generation_mode: str = "diptych"  # diptych | independent
    steps: int = 28
    guidance: float = 3.5
    image_size: int = 1024
    segmenter: str = "grounded_sam2"  # grounded_sam2 | salient (background removal alpha, single subject)
    inpainter: str = "flux_fill"  # flux_fill | opencv (Telea)
    qa: bool = Field(True, description="False: rubric / encoder gates recorded but not applied (qa=disabled)")
    rubric_positive_min: int = Field(9, description="app. B: positive pairs score >= 9 of 10")
    rubric_negative_max: int = Field(6, description="app. B: negative pairs score <= 6 of 10")
    copy_paste_cosine: float = Field(0.98, description="encoder cosine at or above: a copy-paste pair")
    encoder_cosine_min: float = Field(0.5, description="cheap pre-filter before the VLM rubric")
    box_threshold: float = 0.35  # Grounded-SAM-2 defaults
    text_threshold: float = 0.25
    mask_area_min: float = 0.02
    mask_area_max: float = 0.9
    mask_dilation_px: int = 16
    mask_feather_px: int = 8
    inpaint_steps: int = 50
    inpaint_guidance: float = 30.0
    vlm_max_new_tokens: int = 256
    complexity_patch: int = Field(16, description="eq. 7-8 patch size: one latent-grid cell")
    text_to_image: ModelSpec = ModelSpec(model="black-forest-labs/FLUX.1-dev")
    inpainting: ModelSpec = ModelSpec(model="black-forest-labs/FLUX.1-Fill-dev")
    grounding: ModelSpec = ModelSpec(model="IDEA-Research/grounding-dino-base", dtype="float32")
    segmentation: ModelSpec = ModelSpec(model="facebook/sam2.1-hiera-large")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    image_encoder: ModelSpec = ModelSpec(model="facebook/dinov2-base")
    background_removal: ModelSpec = ModelSpec(model="u2netp", dtype="float32")

    def output_fields(self) -> dict:
        fields = self.model_dump(include={
            "seed", "source", "generation_mode", "steps", "guidance", "image_size", "photo_max_side",
            "segmenter", "inpainter", "mask_dilation_px", "mask_feather_px", "inpaint_steps",
            "inpaint_guidance", "complexity_patch"})
        return fields | {"models": [m.model for m in (self.text_to_image, self.inpainting, self.grounding,
                                                      self.segmentation, self.vlm, self.image_encoder,
                                                      self.background_removal)]}


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
    caption_max_words: int = Field(77, description="app. I.1: at most 77 words")
    caption_repair: bool = Field(True, description="cut long captions / add 'This image shows' instead of rejecting")
    holdout_fraction: float = Field(0.1, description="MultiID-Bench: the least frequent identities held out")
    holdout_count: int | None = None  # overrides holdout_fraction
    write_names: bool = False  # bank/names.json: identity_id -> name (the paper keeps no names)
    caption_max_new_tokens: int = 128
    face_analysis: ModelSpec = ModelSpec(model="buffalo_l", dtype="float32")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")

    def output_fields(self) -> dict:
        return self.model_dump(include={"seed", "dbscan_eps", "dbscan_min_samples", "min_references", "max_side",
                                        "retrieval_threshold_low", "retrieval_threshold_high"}) | {
            "models": [self.face_analysis.model, self.vlm.model]}


class UPERConfig(PipelineConfig):
    """UPER (seed 001) section 3.2.1 / appendix B.4 (data) and 3.1.3 / B.1 (R_sub)."""

    source: str = "photos"  # photos (a folder per subject) | pairs (a list) | diptych (Subjects200K) | dip
    photos_root: str = "../shared/assets/images/dreambench"
    pairs_per_subject: int = 2
    # source pairs: a .parquet / .jsonl / .csv with ref, target (paths, bytes or {"bytes", "path"}),
    # prompt, subject; source diptych: the same with one `image` holding both halves (Subjects200K's
    # parquet works as it is)
    pairs: str | None = None
    dip_dir: str | None = None  # source dip: OUT/dip of pipelines/dip.py (reference and winner)
    diptych_padding: int = 8  # Subjects200K: each 512 px half sits in an 8 px border (1056 x 528)
    max_side: int = 512  # OminiControl's resolution
    keep_original_ref: bool = True  # also write the reference as it was (`ref`)
    qa: bool = Field(True, description="False: the VLM's attributes and rating are recorded, not applied (random weights)")
    fg_fraction_min: float = 0.01
    fg_fraction_max: float = 0.98
    max_attributes: int = 8
    rating_min: int = Field(4, description="app. B.4: keep a 0-5 consistency rating >= 4")
    vlm_max_new_tokens: int = 256
    r_sub_size: int = Field(448, description="both images resized to this square: the 224/112 grid tiles it 3 x 3")
    patch_size: int = Field(224, description="sec. 3.1.3: 224 x 224 patches")
    patch_stride: int = Field(112, description="sec. 3.1.3: stride 112")
    random_crops: int = 0  # app. B.1 variant: N random corresponding crops
    random_crop_size: int = 224  # app. B.1 uses 384 with a 384 px encoder: the encoder's input size
    r_sub_weights: dict[str, float] = Field(
        {"patch": 1.0, "cls": 0.0, "crops": 0.0}, description="sec. 3.1.3: R_sub is the patch mean; app. B.1 gives no weights")
    copy_paste_similarity: float | None = Field(0.95, description="app. B.1: penalty above this similarity (None: off)")
    copy_paste_penalty: float = 2.0  # slope of the penalty above the threshold (stages/subject_reward.py)
    background_removal: ModelSpec = ModelSpec(model="bria-rmbg", dtype="float32")
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    image_encoder: ModelSpec = ModelSpec(model="facebook/dinov2-base")

    def output_fields(self) -> dict:
        return self.model_dump(include={
            "seed", "source", "diptych_padding", "max_side", "max_attributes", "r_sub_size", "patch_size",
            "patch_stride", "random_crops", "random_crop_size", "r_sub_weights", "copy_paste_similarity",
            "copy_paste_penalty"}) | {
            "models": [self.background_removal.model, self.vlm.model, self.image_encoder.model]}


class IAPOConfig(PipelineConfig):
    """IAPO supplementary (seed 003): Fig. II prompts, eq. 1 weights."""

    source: str = "pairs"  # pairs (Pick-a-Pic v2 layout Parquet) | photos (DreamBench pairs) | dip (a DIP output dir)
    pairs: str | None = None  # source pairs: Parquet file(s) with caption, jpg_0, jpg_1, label_0, label_1
    dip_dir: str | None = None  # source dip: OUT/dip of pipelines/dip.py (x_w preferred over x_l)
    photos_root: str = "../shared/assets/images/dreambench"
    pairs_per_subject: int = 1  # source photos
    max_pairs: int | None = None  # first N pairs only (smoke runs)
    max_side: int = 1024  # images scaled down to this long side
    qa: bool = Field(True, description="False: planner / judge answers recorded, unparsable ones fall back (qa=disabled)")
    fallback_instance: str = "object"  # qa off: the instance when the planner's answer is unparsable
    w_pos: float = Field(1.0, description="eq. 1: weight inside boxes whose instance agrees (rho=0)")
    w_neg: float = Field(0.0, description="eq. 1: weight inside boxes whose instance disagrees (rho=1)")
    max_instances: int = 8
    box_threshold: float = 0.35  # Grounded-SAM-2 defaults
    text_threshold: float = 0.25
    weight_grid: int = Field(8, description="pixels per weight-map cell: SD1.5 / SDXL latent grid (VAE /8); divides 16")
    write_weights: bool = True  # weights_0 / weights_1 members (the trainer can also rebuild them from the boxes)
    vlm_max_new_tokens: int = 128
    vlm: ModelSpec = ModelSpec(model="Qwen/Qwen2.5-VL-7B-Instruct")
    grounding: ModelSpec = ModelSpec(model="IDEA-Research/grounding-dino-base", dtype="float32")

    @field_validator("weight_grid")
    @classmethod
    def _divides_16(cls, v: int) -> int:
        if v < 1 or 16 % v:  # stages.photos.load_image makes every side a multiple of 16
            raise ValueError(f"weight_grid {v} must divide 16")
        return v

    def output_fields(self) -> dict:
        return self.model_dump(include={"seed", "max_instances", "w_pos", "w_neg", "weight_grid", "max_side", "qa",
                                        "fallback_instance", "box_threshold", "text_threshold",
                                        "vlm_max_new_tokens"}) | {
            "models": [self.vlm.model, self.grounding.model]}


class TrainConfig(PipelineConfig):
    """The slim trainer (trainer/, pipelines/train.py): a FLUX transformer with LoRA, conditioned on
    the reference's tokens, trained with one paper's objective on one dataset's shards."""

    model: str = "black-forest-labs/FLUX.1-dev"  # a FluxPipeline id or directory
    data: str = "out/dip"  # OUT/<dataset>: dip | iapo | uper | multiid
    manifest_query: str | None = None  # pandas query on the manifest, e.g. "category == 'human'"
    objective: str = "focus_dpo"  # sft | dpo | focus_dpo | iapo | id | refl
    resolution: int = 512  # square crops, a multiple of 16
    batch_size: int = 4
    steps: int = 1000
    overfit: bool = False  # train on the first batch only (a check that the data and loss train)
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lora_rank: int = 32  # FocusDPO 32, UPER 4
    # Diffusion-DPO beta (absorbs T * omega(lambda_t)); the Diffusion-DPO code writes -0.5 * beta, so
    # its SD1.5 beta 5000 is 2500 here, and IAPO's best 2000 (supp. E.2) is 1000
    beta_dpo: float = Field(2500.0, description="Diffusion-DPO beta in trainer.objectives.dpo's convention")
    focus_tau: float = Field(0.1, description="seed 000 eq. 9: focus threshold tau")
    focus_gamma: float = Field(0.3, description="seed 000 eq. 9: tradeoff gamma")
    lambda_id: float = Field(0.1, description="seed 002 eq. 6")
    lambda_cl: float = Field(0.1, description="seed 002 eq. 6")
    id_temperature: float = 0.07  # seed 002 eq. 5 tau
    id_negatives: int = Field(4096, description="seed 002: negatives from the bank, the sample's identities excluded")
    face_encoder: str | None = None  # a TorchScript face embedder (112 x 112 aligned faces -> 512-d)
    reward_weights: dict[str, float] = {"text": 0.2, "aesthetic": 0.2, "subject": 0.4}  # UPER sec. 3.3
    # refl: differentiable reward models (CLIP ViT-L/14, HPSv2's CLIP, DINOv2), ids or directories
    reward_models: dict[str, str] = {"text": "openai/clip-vit-large-patch14", "aesthetic": "xswu/HPSv2",
                                     "subject": "facebook/dinov2-base"}
    subject_grad_clip: float = Field(0.2, description="UPER sec. 3.3: tau of grad_I R_sub")
    refl_max_t: float = 0.25  # ReFL (ImageReward): late, low-noise steps, where x_hat is a picture
    guidance: float = 1.0  # FLUX [dev]'s distilled guidance input during training
    log_every: int = 1
    checkpoint_every: int = 0  # 0: only at the end
    workers: int = 1  # > 1: Ray Train TorchTrainer, one worker per GPU
    use_gpu: bool = False

    @field_validator("resolution")
    @classmethod
    def _tokens(cls, v: int) -> int:
        if v < 16 or v % 16:
            raise ValueError(f"resolution {v} must be a multiple of 16 (one FLUX token)")
        return v


PIPELINE_CONFIGS = {"dip": DIPConfig, "multiid": MultiIDConfig, "uper": UPERConfig, "iapo": IAPOConfig,
                    "train": TrainConfig}
