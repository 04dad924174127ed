"""UPER's differentiable reward models (seed 001, sec. 3.1 and 3.3), as torch modules on images
[B, 3, H, W] in [0, 1], so ReFL's gradient reaches the generated image.

- `TextReward`: CLIP image-text cosine (R_text: CLIP ViT-L/14). The aesthetic reward R_aes is
  HPSv2, itself a CLIP scoring an image against its prompt: the same module with HPSv2's weights.
- `SubjectReward`: R_sub of sec. 3.1.3, the mean DINOv2 CLS cosine of spatially corresponding
  224 x 224 patches at stride 112, both images resized to one square first (stages/subject_reward.py
  is the same arithmetic in numpy for the data pipeline).

The preprocessing (resize, normalise) is the checkpoint's own processor config, done in torch.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _normalise(images: torch.Tensor, processor, size: int) -> torch.Tensor:
    x = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    mean = torch.tensor(processor.image_mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std, device=x.device).view(1, 3, 1, 1)
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


class SubjectReward(torch.nn.Module):
    def __init__(self, model: str, size: int = 448, patch: int = 224, stride: int = 112, device: str = "cpu"):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel

        self.processor = AutoImageProcessor.from_pretrained(model)
        self.model = AutoModel.from_pretrained(model).to(device).eval().requires_grad_(False)
        self.input = self.processor.crop_size["height"]
        self.size, self.patch, self.stride, self.device = size, patch, stride, device

    def patches(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, size, size] -> [B * K, 3, patch, patch], the grid row-major (sec. 3.1.3)."""
        x = F.interpolate(images, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        p = x.unfold(2, self.patch, self.stride).unfold(3, self.patch, self.stride)  # B, 3, ky, kx, P, P
        return p.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, self.patch, self.patch)

    def forward(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        b = images.shape[0]
        views = torch.cat([self.patches(images), self.patches(references.to(images))])
        x = _normalise(views, self.processor, self.input).to(self.device)
        cls = F.normalize(self.model(pixel_values=x).pooler_output, dim=-1)
        gen, ref = cls.chunk(2)
        return (gen * ref).sum(-1).view(b, -1).mean(1)  # eq. 1, then the mean over the N patches
