"""The typed config of the slim trainer (pipelines/train.py). Paper thresholds are named fields with the paper's
defaults (the description cites where); `output_fields()` lists what enters a sample's key."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from runtime.config import PipelineConfig

# Each objective's training settings from its paper. A run takes the section of its `objective`
# for every field its config file or --set leaves unset (those win); a config's own `objectives:`
# section replaces these per field. beta_dpo is in trainer.objectives.dpo's convention, which is
# half the Diffusion-DPO code's beta (it writes -0.5 * beta): IAPO's best 2000 is 1000 here.
OBJECTIVE_DEFAULTS: dict[str, dict] = {
    # seed 000 (FocusDPO) sec. 5.1: rank-32 LoRA, 2000 steps on 8 GPUs, AdamW lr 1e-8, batch 1 per GPU
    "focus_dpo": {"lora_rank": 32, "steps": 2000, "learning_rate": 1e-8, "batch_size": 1},
    # seed 003 (IAPO) supp. E.2, Table V: beta = 2000 is best on PickScore and HPS
    "iapo": {"beta_dpo": 1000.0},
    # seed 001 (UPER) Alg. 1 and sec. 4: LoRA rank 4, AdamW lr 1e-4; SFT 5k iterations, RL 2k
    "sft": {"lora_rank": 4, "learning_rate": 1e-4, "steps": 5000},
    "refl": {"lora_rank": 4, "learning_rate": 1e-4, "steps": 2000},
    # seed 002 (WithAnyone) app. E: batch 4 per GPU, AdamW lr 1e-4, weight decay 0.01
    "id": {"batch_size": 4, "learning_rate": 1e-4, "weight_decay": 0.01},
}


class TrainConfig(PipelineConfig):
    """The slim trainer (trainer/, pipelines/train.py): a FLUX transformer with LoRA, conditioned on
    the reference's tokens, trained with one paper's objective on one dataset's shards."""

    model: str = "black-forest-labs/FLUX.1-dev"  # a FluxPipeline id or directory
    data: str = "out/dip"  # OUT/<dataset>: dip | iapo | uper | multiid
    manifest_query: str | None = None  # pandas query on the manifest, e.g. "category == 'human'"
    # rows of this split only, on datasets whose manifest has a split column (MultiID: train / bench,
    # so MultiID-Bench stays unseen); None: every row. Combined with manifest_query.
    split: str | None = "train"
    reference_cache: int = Field(512, ge=1, description="MultiID: decoded reference images kept in memory (LRU)")
    objective: Literal["sft", "dpo", "focus_dpo", "iapo", "id", "refl"] = "focus_dpo"
    resolution: int = 512  # square crops, a multiple of 16
    batch_size: int = 4
    steps: int = 1000
    overfit: bool = False  # train on the first batch only (a check that the data and loss train)
    # the fields below up to lora_rank: defaults of an objective without a paper section (dpo);
    # the others take OBJECTIVE_DEFAULTS
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    lora_rank: int = 32
    # Diffusion-DPO beta (absorbs T * omega(lambda_t)); the Diffusion-DPO code writes -0.5 * beta, so
    # its SD1.5 beta 5000 is 2500 here, and IAPO's best 2000 (supp. E.2) is 1000
    beta_dpo: float = Field(2500.0, description="Diffusion-DPO beta in trainer.objectives.dpo's convention: "
                                                "half the Diffusion-DPO code's (IAPO's 2000 is 1000 here)")
    objectives: dict[str, dict] = Field(default_factory=dict, description="per objective, field -> value: "
                                        "replaces OBJECTIVE_DEFAULTS per field")
    focus_tau: float = Field(0.1, description="seed 000 eq. 9: focus threshold tau")
    focus_gamma: float = Field(0.3, description="seed 000 eq. 9: tradeoff gamma")
    lambda_id: float = Field(0.1, description="seed 002 eq. 6")
    lambda_cl: float = Field(0.1, description="seed 002 eq. 6")
    id_temperature: float = 0.07  # seed 002 eq. 5 tau
    id_negatives: int = Field(4096, description="seed 002: negatives from the bank, the sample's identities excluded")
    face_encoder: str | None = None  # a TorchScript face embedder (112 x 112 aligned faces -> 512-d)
    reward_weights: dict[str, float] = {"text": 0.2, "aesthetic": 0.2, "subject": 0.4}  # UPER sec. 3.3
    # refl: differentiable reward models (CLIP ViT-L/14, HPSv2's CLIP, DINOv2), ids or directories
    # text: a transformers CLIP; aesthetic: HPSv2, an open_clip ViT-H-14 checkpoint (trainer.rewards.HPSReward)
    reward_models: dict[str, str] = {"text": "openai/clip-vit-large-patch14", "aesthetic": "xswu/HPSv2",
                                     "subject": "facebook/dinov2-base"}
    subject_grad_clip: float = Field(0.2, description="UPER sec. 3.3: tau of grad_I R_sub")
    reward_window: int = Field(256, ge=0, description="refl: z-scores over every rank's rewards and the last "
                                                      "this many earlier ones (trainer.objectives.RewardStats)")
    # R_sub as the UPER data pipeline computes it (configs/uper.py, stages/subject_reward.combine)
    r_sub_weights: dict[str, float] = Field({"patch": 1.0, "cls": 0.0}, description="sec. 3.1.3: the patch mean")
    copy_paste_similarity: float | None = Field(0.95, description="UPER app. B.1: penalty above it (None: off)")
    copy_paste_penalty: float = 2.0  # the penalty's slope above the threshold
    # refl's rollout (seed 001 Alg. 1 line 14, ReFL): FLUX's sampler from noise with the current LoRA,
    # no grad, for a number of steps drawn from refl_stop (inclusive, 0-based, of refl_steps), then
    # one step with grad to x_hat_0. ImageReward's ReFL stops in the last quarter (steps 30-39 of
    # 40), where x_hat_0 is already a picture the reward models can judge; so does 21-27 of 28
    refl_steps: int = Field(28, ge=1, description="refl: sampling steps of the rollout (FLUX.1 [dev]'s 28)")
    refl_stop: tuple[int, int] = Field((21, 27), description="refl: the grad step's index, drawn uniformly in this range")
    refl_guidance: float = 3.5  # refl: FLUX [dev]'s distilled guidance when it samples (its pipeline's default)
    guidance: float = 1.0  # FLUX [dev]'s distilled guidance input during training
    log_every: int = 1
    checkpoint_every: int = 0  # 0: only at the end
    workers: int = 1  # > 1: Ray Train TorchTrainer, one worker per GPU
    use_gpu: bool = False

    @model_validator(mode="before")
    @classmethod
    def _objective_defaults(cls, data):
        """Fill what the config leaves unset from its objective's section (OBJECTIVE_DEFAULTS, then
        the config's own `objectives:`), before validation, so the values are checked as any other."""
        if not isinstance(data, dict):
            return data
        objective = data.get("objective", cls.model_fields["objective"].default)
        own = (data.get("objectives") or {}).get(objective) or {}
        unknown = sorted(set(own) - set(cls.model_fields))
        if unknown:
            raise ValueError(f"objectives.{objective}: unknown fields {unknown}")
        section = {**OBJECTIVE_DEFAULTS.get(objective, {}), **own}
        return {**section, **data}

    def input_paths(self) -> dict:
        return {"data": self.data}

    @model_validator(mode="after")
    def _refl_stop(self):
        lo, hi = self.refl_stop
        if not 0 <= lo <= hi < self.refl_steps:
            raise ValueError(f"refl_stop {list(self.refl_stop)} must satisfy 0 <= lo <= hi < refl_steps ({self.refl_steps})")
        return self

    @field_validator("resolution")
    @classmethod
    def _tokens(cls, v: int) -> int:
        if v < 16 or v % 16:
            raise ValueError(f"resolution {v} must be a multiple of 16 (one FLUX token)")
        return v
