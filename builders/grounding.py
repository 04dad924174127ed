"""Random-weight Grounding DINO, loadable by workers.grounding.Grounding through AutoProcessor /
AutoModelForZeroShotObjectDetection: toy size (build_tiny) and the base model's size (build_full),
with a BERT WordPiece tokenizer built here (no hub).
"""
from __future__ import annotations

from pathlib import Path

# Grounding DINO's text branch is BERT-base-uncased and the model hard-codes these ids as the
# phrase delimiters (transformers' SPECIAL_TOKENS: [CLS], [SEP], "." and "?"); [PAD] is 0.
BERT_SPECIAL_IDS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103, ".": 1012, "?": 1029}

TINY_WORDS = ("a the dog cat person man woman child red blue green small big ball toy car hat shoe bag "
              "cup bowl chair table backpack teddy bear sunglasses vase can").split()


def local_tokenizer():
    """A BERT WordPiece tokenizer built here (no hub): BERT's ids for the tokens the model
    hard-codes, [unused] fillers, then TINY_WORDS."""
    from transformers import BertTokenizer

    by_id = {i: t for t, i in BERT_SPECIAL_IDS.items()}
    vocab = {by_id.get(i, f"[unused{i}]"): i for i in range(max(by_id) + 1)}
    for word in TINY_WORDS:
        vocab.setdefault(word, len(vocab))
    return BertTokenizer(vocab=vocab, do_lower_case=True)


def build_tiny(directory, seed: int = 0) -> Path:
    """Grounding DINO with a tiny config and random weights, saved with save_pretrained (model,
    image processor, BERT WordPiece tokenizer) so AutoProcessor / AutoModelForZeroShotObjectDetection
    load it like IDEA-Research/grounding-dino-base: a 4-stage Swin backbone (out stages 2-4 plus
    the extra conv level, as the real model), a 1-layer BERT, d_model 32, 20 queries. The
    vocabulary keeps BERT's ids for the tokens the model hard-codes."""
    import torch
    from transformers import (BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection,
                              GroundingDinoImageProcessor, GroundingDinoProcessor, SwinConfig)

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = local_tokenizer()
    vocab = tokenizer.get_vocab()
    config = GroundingDinoConfig(
        backbone_config=SwinConfig(embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=7,
                                   out_features=["stage2", "stage3", "stage4"]),
        text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64),
        d_model=32, encoder_layers=1, encoder_ffn_dim=64, encoder_attention_heads=2, encoder_n_points=2,
        # 2 decoder layers: the per-layer box / class heads are tied, which needs more than one
        decoder_layers=2, decoder_ffn_dim=64, decoder_attention_heads=2, decoder_n_points=2,
        num_queries=20)
    torch.manual_seed(seed)
    GroundingDinoForObjectDetection(config).eval().save_pretrained(directory)
    # small input size: the real processor resizes to shortest edge 800 / longest 1333
    image_processor = GroundingDinoImageProcessor(size={"shortest_edge": 64, "longest_edge": 96})
    GroundingDinoProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(directory)
    return directory


def full_config():
    """IDEA-Research/grounding-dino-base: transformers' GroundingDinoConfig defaults (d_model 256,
    6 encoder and 6 decoder layers, 900 queries, BERT-base-uncased text branch) with the Swin-B
    backbone that transformers' conversion script sets for "base": embed 128, depths 2-2-18-2,
    heads 4-8-16-32, window 12, pretrained at 384 px. ~233M parameters."""
    from transformers import GroundingDinoConfig, SwinConfig

    return GroundingDinoConfig(backbone_config=SwinConfig(
        embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384,
        out_features=["stage2", "stage3", "stage4"]))


def build_full(directory, seed: int = 0, device: str | None = None) -> Path:
    """Grounding DINO base with random weights, saved like build_tiny; the processor is the real
    one (shortest edge 800, longest 1333) and the tokenizer the local stand-in (ids fit BERT's
    30522-token embedding; the model pads text to the batch's longest caption either way)."""
    from transformers import GroundingDinoForObjectDetection, GroundingDinoImageProcessor, GroundingDinoProcessor

    from builders import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with random_init(seed, device, dtype="float32"):  # the worker runs it in float32 (workers.grounding)
        model = GroundingDinoForObjectDetection(full_config()).eval()
    model.save_pretrained(directory)
    GroundingDinoProcessor(image_processor=GroundingDinoImageProcessor(),
                           tokenizer=local_tokenizer()).save_pretrained(directory)
    return directory
