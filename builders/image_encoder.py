"""Random-weight DINOv2 and CLIP, loadable by workers.image_encoder.ImageEncoder: toy size
(build_tiny) and dinov2-base / clip-vit-large-patch14 size (build_full), `kind` choosing which.
"""
from __future__ import annotations

from pathlib import Path


def local_clip_tokenizer():
    """CLIP's vocabulary starts with the 256 bytes, then the same with the end-of-word mark;
    without merges every word is spelled in bytes. Built here: no hub."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    alphabet = sorted(ByteLevel.alphabet())
    vocab = {t: i for i, t in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def build_tiny(directory, seed: int = 0, kind: str = "dinov2") -> Path:
    """A 2-layer DINOv2 (hidden 32, 14 px patches, 56 px crops: 4x4 patches) with the BiT image
    processor DINOv2 ships with, or a 2-layer CLIP (vision 14 px patches at 56 px, text over a
    byte-level vocabulary) with CLIPProcessor and a CLIPTokenizer built from that vocabulary.
    Random weights, saved with save_pretrained."""
    import torch
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    if kind == "dinov2":
        from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

        # facebook/dinov2-*: resize the short side to 256, centre-crop 224; here 64 and 56
        BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56},
                          image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(directory)
        config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_ratio=2,
                              image_size=56, patch_size=14)
        Dinov2Model(config).save_pretrained(directory)
    elif kind == "clip":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

        tokenizer = local_clip_tokenizer()
        vocab = tokenizer.get_vocab()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 56}, crop_size={"height": 56, "width": 56})
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
        config = CLIPConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=56, patch_size=14),
            projection_dim=16)
        CLIPModel(config).save_pretrained(directory)
    else:
        raise ValueError(f"kind must be 'dinov2' or 'clip', not {kind!r}")
    return directory


def full_model(kind: str = "dinov2"):
    """The production encoders with random weights. dinov2: facebook/dinov2-base, transformers'
    Dinov2Config defaults (ViT-B/14) except the checkpoint's 518 px position grid, 86.6M
    parameters. clip: openai/clip-vit-large-patch14 (ViT-L/14 at 224 px, 12-layer text tower,
    projection 768), 428M parameters."""
    if kind == "dinov2":
        from transformers import Dinov2Config, Dinov2Model

        return Dinov2Model(Dinov2Config(image_size=518))
    if kind == "clip":
        from transformers import CLIPConfig, CLIPModel

        tokenizer = local_clip_tokenizer()
        return CLIPModel(CLIPConfig(
            text_config=dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                             num_attention_heads=12, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14),
            projection_dim=768))
    raise ValueError(f"kind must be 'dinov2' or 'clip', not {kind!r}")


def build_full(directory, seed: int = 0, kind: str = "dinov2", device: str | None = None) -> Path:
    """full_model(kind) saved like build_tiny, with the real checkpoints' processors (DINOv2:
    short side 256, centre crop 224; CLIP: 224 and 224) and the local CLIP tokenizer."""
    from transformers import BitImageProcessor, CLIPImageProcessor, CLIPProcessor
    from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    from builders import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "dinov2":
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD).save_pretrained(directory)
    else:
        image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        CLIPProcessor(image_processor=image_processor, tokenizer=local_clip_tokenizer()).save_pretrained(directory)
    with random_init(seed, device, dtype="float32"):  # small: saved in float32, cast by the worker
        full_model(kind).save_pretrained(directory)
    return directory
