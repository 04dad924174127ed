"""A random-weight HPSv2 (the trainer's R_aes), loadable by trainer.rewards.HPSReward: an open_clip
CLIP of a toy size in open_clip's own local-directory format (open_clip_config.json + weights),
the weights saved as HPSv2's checkpoint holds them (an open_clip state dict under "state_dict").
"""
from __future__ import annotations

import json
from pathlib import Path

# open_clip's CLIP config keys (as in its ViT-H-14.json), at a toy size; the text tower keeps
# CLIP's BPE vocabulary and context, so open_clip's own tokenizer serves it
TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
               "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
WEIGHTS = "open_clip_pytorch_model.bin"  # a name open_clip's local-dir loader looks for


def build_tiny(directory, seed: int = 0) -> Path:
    import open_clip
    import torch
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # HPSv2 preprocesses as OpenAI's CLIP does (its open_clip transform with the OpenAI mean / std)
    preprocess = {"mean": list(OPENAI_DATASET_MEAN), "std": list(OPENAI_DATASET_STD), "interpolation": "bicubic",
                  "resize_mode": "shortest"}
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG,
                                                                 "preprocess_cfg": preprocess}, indent=2))
    torch.manual_seed(seed)
    model = open_clip.create_model(f"local-dir:{directory}", load_weights=False)
    torch.save({"state_dict": model.state_dict()}, directory / WEIGHTS)
    return directory
