"""Random-weight SAM 2.1, loadable by workers.segmentation.Segmentation through build_sam2: a
shrunk hiera-t with its composed config yaml (build_tiny) and hiera-l under the official checkpoint
file name (build_full).
"""
from __future__ import annotations

from pathlib import Path

# sam2.1 hiera-t, shrunk: what build_tiny changes in the package's sam2.1_hiera_t.yaml. The
# image size stays 1024 (SAM2ImagePredictor hard-codes the 256/128/64 feature sizes it gives).
TINY_OVERRIDES = {"model": {
    "image_encoder": {
        # 5 blocks; block 3 global attention (a global block may not start a stage: q-pooling)
        "trunk": {"embed_dim": 8, "num_heads": 1, "stages": [1, 1, 2, 1], "global_att_blocks": [3]},
        "neck": {"d_model": 32, "backbone_channel_list": [64, 32, 16, 8],
                 "position_encoding": {"num_pos_feats": 32}}},
    "memory_attention": {"d_model": 32, "num_layers": 1, "layer": {
        "d_model": 32, "dim_feedforward": 64, "self_attention": {"embedding_dim": 32},
        "cross_attention": {"embedding_dim": 32, "kv_in_dim": 16}}},
    "memory_encoder": {"out_dim": 16, "in_dim": 32, "position_encoding": {"num_pos_feats": 16},
                       "mask_downsampler": {"embed_dim": 32}, "fuser": {"num_layers": 1, "layer": {"dim": 32}}},
}}
TINY_CONFIG, TINY_CHECKPOINT = "sam2.1_hiera_tiny_random.yaml", "sam2.1_hiera_tiny_random.pt"


def build_tiny(directory, seed: int = 0) -> Path:
    """SAM 2.1 hiera-t with reduced widths and depth (TINY_OVERRIDES) and random weights, saved
    as build_sam2 reads a real one: the composed config yaml and a {"model": state_dict}
    checkpoint side by side."""
    import os

    import sam2
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    base = OmegaConf.load(os.path.join(os.path.dirname(sam2.__file__), "configs/sam2.1/sam2.1_hiera_t.yaml"))
    config = OmegaConf.merge(base, OmegaConf.create(TINY_OVERRIDES))
    OmegaConf.save(config, directory / TINY_CONFIG)
    torch.manual_seed(seed)
    model = instantiate(config.model, _recursive_=True)
    torch.save({"model": model.state_dict()}, directory / TINY_CHECKPOINT)
    return directory


# SAM 2.1 hiera-l, the `facebook/sam2.1-hiera-large` of the GPU configs: the sam2 package's own
# config and checkpoint file name, so resolve() pairs them as it does for a downloaded checkpoint.
FULL_CONFIG, FULL_CHECKPOINT = "configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt"


def full_model():
    """SAM 2.1 hiera-l from the package's config, random weights (224.4M parameters)."""
    import os

    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    config = OmegaConf.load(os.path.join(os.path.dirname(sam2.__file__), FULL_CONFIG))
    return instantiate(config.model, _recursive_=True)


def build_full(directory, seed: int = 0, device: str | None = None) -> Path:
    """SAM 2.1 hiera-l with random weights, saved as the official checkpoint file name alone (no
    yaml): the worker loads it with the package's sam2.1_hiera_l.yaml through build_sam2. Float32
    weights, as the real checkpoint; the worker adds bf16 autocast."""
    import torch

    from builders import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with random_init(seed, device, dtype="float32"):
        model = full_model()
    torch.save({"model": model.state_dict()}, directory / FULL_CHECKPOINT)
    return directory
