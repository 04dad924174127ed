"""The vision-language model: Qwen2.5-VL answering a text prompt about one or more images.

One worker class serves every VLM step (FocusDPO region captions and rubric, WithAnyone captions,
UPER attribute extraction and rating, IAPO planner and judge); `stage` names which. Each row is one
user turn: its images in the order of the `images` columns, then its prompt. Decoding is greedy so
that a re-run gives the same answer for the same inputs (sample keys and resume rely on that).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from schemas.batch import Reject
from workers.base import Worker, image_of, is_list, text_of, torch_dtype

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

MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses anything longer and thinner than this


class VLM(Worker):
    """Qwen2.5-VL, greedy. Input: the images in `images` (columns) and the text in `prompt`;
    output: `answer` (str). `max_pixels` bounds each image's resized area, hence its tokens
    (one token per 28x28 pixels)."""

    role = "vlm"

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-7B-Instruct", *, stage: str | None = None,
                 dtype: str = "bfloat16", device: str | None = None, images=("image",),
                 prompt: str = "prompt", output: str = "answer", max_new_tokens: int = 256,
                 max_pixels: int | None = None, system: str | None = None):
        super().__init__(model, stage=stage, dtype=dtype, device=device)
        import torch
        from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

        self.images = [images] if isinstance(images, str) else list(images)
        self.prompt, self.output = prompt, output
        self.max_new_tokens, self.system = max_new_tokens, system
        self.processor = AutoProcessor.from_pretrained(model)
        # decoder-only generation continues from the last position: pad on the left
        self.processor.tokenizer.padding_side = "left"
        self.image_size = None
        if max_pixels:
            # smart_resize needs min_pixels <= max_pixels
            shortest = min(self.processor.image_processor.size["shortest_edge"], max_pixels)
            self.image_size = {"shortest_edge": shortest, "longest_edge": max_pixels}
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            model, dtype=torch_dtype(dtype, self.device)).to(self.device).eval()
        self._torch = torch

    def check(self, row: dict) -> dict:
        """One row asks one question, or several (a list in the prompt column: one per subject);
        an image column may then hold a list with one image per question (per-subject crops)."""
        many = is_list(row.get(self.prompt))
        prompts = [str(p) for p in row[self.prompt]] if many else [text_of(row, self.prompt)]
        if many and (not prompts or not all(p.strip() for p in prompts)):
            raise Reject("empty_prompt", self.prompt)
        per_column = []
        for c in self.images:
            value = row.get(c)
            if is_list(value):
                if len(value) != len(prompts):
                    raise Reject("bad_image", f"{c}: {len(value)} images for {len(prompts)} questions")
                per_column.append([_checked_image({c: v}, c) for v in value])
            else:
                per_column.append([_checked_image(row, c)] * len(prompts))
        queries = [{"images": [col[q] for col in per_column], "prompt": p} for q, p in enumerate(prompts)]
        return {"queries": queries, "many": many}

    def messages(self, n_images: int, prompt: str) -> list[dict]:
        turn = [{"type": "image"}] * n_images + [{"type": "text", "text": prompt}]
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + [{"role": "user", "content": turn}]

    def model_inputs(self, inputs: list[dict]):
        """The processor's batch: chat-templated prompts, left-padded, and every row's images."""
        from PIL import Image

        texts = [self.processor.apply_chat_template(self.messages(len(x["images"]), x["prompt"]),
                                                    tokenize=False, add_generation_prompt=True)
                 for x in inputs]
        images = [Image.fromarray(im) for x in inputs for im in x["images"]]
        kwargs = {"size": self.image_size} if self.image_size else {}
        batch = self.processor(text=texts, images=images, padding=True, return_tensors="pt", **kwargs)
        batch = batch.to(self.device)
        batch["pixel_values"] = batch["pixel_values"].to(self.model.dtype)
        return batch

    def predict(self, inputs: list[dict]) -> list[dict]:
        queries = [q for x in inputs for q in x["queries"]]  # every question of the batch in one generate
        batch = self.model_inputs(queries)
        with self._torch.inference_mode():
            out = self.model.generate(**batch, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.processor.tokenizer.pad_token_id)
        answers = iter(a.strip() for a in self.processor.batch_decode(
            out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True))
        results = []
        for x in inputs:
            mine = [next(answers) for _ in x["queries"]]
            results.append({self.output: mine if x["many"] else mine[0]})
        return results


def _checked_image(row: dict, column: str) -> np.ndarray:
    image = image_of(row, column)
    h, w = image.shape[:2]
    if max(h, w) / min(h, w) > MAX_ASPECT_RATIO:
        raise Reject("bad_image", f"{column}: aspect ratio {h}x{w}")
    return image


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
    workers.tiny.random_init), processor as build_tiny's."""
    from workers.tiny import random_init

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    processor, ids = local_processor()
    processor.save_pretrained(directory)
    with random_init(seed, device):
        save_model(full_config(ids), ids, directory)
    return directory
