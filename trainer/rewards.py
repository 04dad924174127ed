"""UPER's differentiable reward models (seed 001, sec. 3.1 and 3.3), as torch modules on images
[B, 3, H, W] in [0, 1], so ReFL's gradient reaches the generated image.

- `TextReward`: CLIP image-text cosine (R_text: CLIP ViT-L/14, transformers).
- `HPSReward`: R_aes, HPSv2 (an open_clip ViT-H-14 fine-tuned on human preference pairs): the
  cosine of the image's and the prompt's features, as HPSv2's own scorer computes it.
- `SubjectReward`: R_sub of sec. 3.1.3, the mean DINOv2 CLS cosine of spatially corresponding
  224 x 224 patches at stride 112, both images resized to one square first, with app. B.1's
  whole-image cosine when weighted and its penalty above the copy-paste similarity: the components
  are combined by `stages.subject_reward.combine`, the rule the data pipeline's R_sub uses.

The preprocessing (resize, normalise) is the checkpoint's own processor config, done in torch.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from runtime.roles import Builder, Role, register

# The reward models are roles without a pipeline worker: the registry builds their tiny models
# (configs/train.tiny.yaml's reward_models point at out/tiny-models/<role>).
register(Role("clip", None, Builder("builders.image_encoder", {"kind": "clip"}), None, None))  # R_text
register(Role("hps", None, Builder("builders.hps", full=False), None, None))  # R_aes, open_clip's format

# xswu/HPSv2's newest checkpoint: open_clip's ViT-H-14 state dict under "state_dict"
HPS_CHECKPOINT, HPS_ARCH = "HPS_v2.1_compressed.pt", "ViT-H-14"


def _normalise(images: torch.Tensor, processor, size: int) -> torch.Tensor:
    return _standardise(images, processor.image_mean, processor.image_std, size)


def _standardise(images: torch.Tensor, mean, std, size: int) -> torch.Tensor:
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class TextReward(torch.nn.Module):
    def __init__(self, model: str, device: str = "cpu"):
        super().__init__()
        from transformers import AutoProcessor, CLIPModel

        self.processor = AutoProcessor.from_pretrained(model)
        self.model = CLIPModel.from_pretrained(model).to(device).eval().requires_grad_(False)
        self.size = self.processor.image_processor.crop_size["height"]
        self.device = device

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = _normalise(images, self.processor.image_processor, self.size).to(self.device)
        m = self.model
        image = F.normalize(m.visual_projection(m.vision_model(pixel_values=x).pooler_output), dim=-1)
        tokens = self.processor.tokenizer(prompts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        text = F.normalize(m.text_projection(m.text_model(**tokens).pooler_output), dim=-1)
        return (image * text).sum(-1)


class HPSReward(torch.nn.Module):
    """`model`: a hub repo holding HPSv2's checkpoint (xswu/HPSv2: HPS_v2.1 on open_clip's
    ViT-H-14), a directory holding that file, or a directory in open_clip's local format
    (open_clip_config.json and the weights; the tiny profile's). Loaded by open_clip itself."""

    def __init__(self, model: str, device: str = "cpu"):
        super().__init__()
        import open_clip

        local = Path(model)
        if (local / "open_clip_config.json").is_file():
            name, checkpoint = f"local-dir:{local}", None
        elif (local / HPS_CHECKPOINT).is_file():
            name, checkpoint = HPS_ARCH, str(local / HPS_CHECKPOINT)
        else:
            from huggingface_hub import hf_hub_download

            name, checkpoint = HPS_ARCH, hf_hub_download(model, HPS_CHECKPOINT)
        self.model = open_clip.create_model(name, pretrained=checkpoint, device=device, require_pretrained=True)
        self.model.eval().requires_grad_(False)
        self.tokenizer = open_clip.get_tokenizer(name)
        pre = self.model.visual.preprocess_cfg
        self.mean, self.std, self.size = pre["mean"], pre["std"], self.model.visual.image_size[0]
        self.device = device

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = _standardise(images, self.mean, self.std, self.size).to(self.device)
        image = self.model.encode_image(x, normalize=True)
        text = self.model.encode_text(self.tokenizer(prompts).to(self.device), normalize=True)
        return (image * text).sum(-1)


class SubjectReward(torch.nn.Module):
    def __init__(self, model: str, size: int = 448, patch: int = 224, stride: int = 112, device: str = "cpu",
                 weights: dict[str, float] | None = None, copy_paste_similarity: float | None = 0.95,
                 copy_paste_penalty: float = 2.0):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel

        if weights and weights.get("crops"):
            raise ValueError("the training R_sub has no random crops (app. B.1): give crops no weight")
        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).to(device).eval().requires_grad_(False)
        self.input = self.processor.crop_size["height"]
        self.size, self.patch, self.stride, self.device = size, patch, stride, device
        self.rule = dict(weights=weights, copy_paste_similarity=copy_paste_similarity,
                         copy_paste_penalty=copy_paste_penalty)
        self.whole = bool((weights or {}).get("cls"))  # the whole images are encoded only when they count

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, size, size] -> [B * K, 3, patch, patch], the grid row-major (sec. 3.1.3)."""
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        p = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)  # B, 3, ky, kx, P, P
        return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, self.patch, self.patch)

    def cosines(self, images: torch.Tensor, references: torch.Tensor) -> dict[str, torch.Tensor]:
        """The components [B]: `patch` (eq. 1, the mean over the N grid patches) and `cls` (the
        whole images at the encoder's input size, app. B.1)."""
        b = images.shape[0]
        references = references.to(images)
        views = [torch.cat([self.patches(images), self.patches(references)])]
        if self.whole:
            views.append(torch.cat([images, references]))
        x = torch.cat([_normalise(v, self.processor, self.input) for v in views]).to(self.device)
        cls = F.normalize(self.model(pixel_values=x).pooler_output, dim=-1)
        n = len(views[0]) // 2
        out = {"patch": (cls[:n] * cls[n:2 * n]).sum(-1).view(b, -1).mean(1)}  # eq. 1, mean over the patches
        if self.whole:
            out["cls"] = (cls[2 * n:2 * n + b] * cls[2 * n + b:]).sum(-1)
        return out

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        from stages.subject_reward import combine

        s, penalty = combine(self.cosines(images, references), **self.rule)
        return s - penalty
