"""A random-weight aesthetic predictor, loadable by workers.aesthetic.Aesthetic: builders.image_encoder's
CLIP (toy size, or clip-vit-large-patch14 size) with LAION's MLP head beside it, in
`aesthetic_head.pth` under LAION's key names (`layers.N.*`).
"""
from __future__ import annotations

from pathlib import Path

from builders import image_encoder


TINY_SCORE = 5.0  # the random head's output bias: scores near the middle of the 1-10 scale


def save_head(directory: Path, dim: int, seed: int = 0) -> Path:
    """LAION's head (workers.aesthetic.laion_mlp) with random weights, saved as LAION's MLP saves
    it: the state dict of a module whose `layers` is the Sequential. The last bias is TINY_SCORE,
    so random-weight scores look like real ones (about 5.05, a few thousandths apart)."""
    import torch

    from workers.aesthetic import HEAD_FILE, laion_mlp

    torch.manual_seed(seed)
    mlp = torch.nn.Module()
    mlp.layers = laion_mlp(dim)
    with torch.no_grad():
        mlp.layers[-1].bias.fill_(TINY_SCORE)
    path = Path(directory) / HEAD_FILE
    torch.save(mlp.state_dict(), path)
    return path


def build_tiny(directory, seed: int = 0) -> Path:
    """The tiny CLIP of builders.image_encoder (16-d projected image embeddings) and a head for it."""
    directory = image_encoder.build_tiny(directory, seed=seed, kind="clip")
    save_head(directory, 16, seed)
    return directory


def build_full(directory, seed: int = 0, device: str | None = None) -> Path:
    """CLIP ViT-L/14 at openai/clip-vit-large-patch14's size (768-d image embeddings) and LAION's
    head for it: the layout of sac+logos+ava1-l14-linearMSE.pth."""
    directory = image_encoder.build_full(directory, seed=seed, kind="clip", device=device)
    save_head(directory, 768, seed)
    return directory
