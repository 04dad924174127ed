"""Random-weight Qwen2.5-VL, loadable by workers.vlm.VLM: toy size (build_tiny) and Qwen2.5-VL-7B's
size (build_full), with the real Qwen2-VL image processor and a byte-level tokenizer built here.
"""
from __future__ import annotations

from pathlib import Path

# Qwen2.5-VL-7B-Instruct's chat_template.json: a default system turn, then each image as
# <|vision_start|><|image_pad|><|vision_end|>, which the processor expands to one pad per merged patch.
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2's special tokens in their real order (ids 151643...151656 in the real vocabulary).
SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def local_processor():
    """(processor, special token ids): the real Qwen2-VL image processor (14 px patches, 2x2
    merge) with a byte-level Qwen2 tokenizer built here (no hub) holding the 256 bytes and Qwen2's
    special tokens, and the real chat template."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2_5_VLProcessor, Qwen2Tokenizer, Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    # no merges: every byte is a token, so any text round-trips and any generated id decodes
    vocab = {c: i for i, c in enumerate(sorted(ByteLevel.alphabet()))}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               model_max_length=32768)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS})
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=CHAT_TEMPLATE)
    return processor, ids


def token_ids(ids: dict) -> dict:
    """The config's token ids for the local tokenizer's special tokens."""
    return dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])


def save_model(config, ids: dict, directory: Path) -> None:
    """The model with random weights and greedy generation that stops at <|im_end|> or padding."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    model = Qwen2_5_VLForConditionalGeneration(config)
    model.generation_config = GenerationConfig(bos_token_id=pad, eos_token_id=[eos, pad], pad_token_id=pad)
    model.save_pretrained(directory)


def build_tiny(directory, seed: int = 0) -> Path:
    """Qwen2.5-VL with a 2-layer vision tower and a 2-layer language model (hidden 32), random
    weights, saved with save_pretrained; its processor is local_processor()."""
    import torch
    from transformers import Qwen2_5_VLConfig

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor, ids = local_processor()
    processor.save_pretrained(directory)
    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                         # M-RoPE splits head_dim / 2 = 8 frequencies over (time, height, width)
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [2, 3, 3]},
                         bos_token_id=pad, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                           fullatt_block_indexes=[1], window_size=112, patch_size=14, spatial_merge_size=2,
                           temporal_patch_size=2),
        **token_ids(ids))
    torch.manual_seed(seed)
    save_model(config, ids, directory)
    return directory


def full_config(ids: dict):
    """Qwen/Qwen2.5-VL-7B-Instruct's config.json: a 28-layer language model (hidden 3584, 28 heads,
    4 KV heads, vocabulary 152064, untied head) and a 32-block vision tower (hidden 1280, window
    attention but blocks 7, 15, 23, 31), with the local tokenizer's special-token ids. 8.29B
    parameters."""
    from transformers import Qwen2_5_VLConfig

    eos, pad = ids["<|im_end|>"], ids["<|endoftext|>"]
    return Qwen2_5_VLConfig(
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                         num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                         tie_word_embeddings=False, bos_token_id=pad, eos_token_id=eos, pad_token_id=pad),
        vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=3584,
                           fullatt_block_indexes=[7, 15, 23, 31], window_size=112, patch_size=14,
                           spatial_merge_size=2, temporal_patch_size=2, hidden_act="silu"),
        tie_word_embeddings=False, **token_ids(ids))


def build_full(directory, seed: int = 0, device: str | None = None) -> Path:
    """Qwen2.5-VL-7B with random weights (~17 GB in bf16), built on `device` (see
    builders.random_init), processor as build_tiny's."""
    from builders import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor, ids = local_processor()
    processor.save_pretrained(directory)
    with random_init(seed, device):
        save_model(full_config(ids), ids, directory)
    return directory
