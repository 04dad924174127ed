"""The vision-language model: Qwen2.5-VL answering a text prompt about one or more images.

One worker class serves every VLM step (FocusDPO region captions and rubric, WithAnyone captions,
UPER attribute extraction and rating, IAPO planner and judge); `stage` names which. Each row is one
user turn: its images in the order of the `images` columns, then its prompt. Decoding is greedy so
that a re-run gives the same answer for the same inputs (sample keys and resume rely on that).
"""
from __future__ import annotations

import numpy as np

from runtime.rows import Reject
from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of, is_list, text_of, torch_dtype

MAX_ASPECT_RATIO = 200  # Qwen2-VL's smart_resize refuses anything longer and thinner than this


def simulated_vlm(w, row: dict) -> dict:
    """A simulated accelerator's answer to each question: the one its gate lets through."""
    from workers.simulated import answer

    prompt = row.get(w.args["prompt"])
    many = is_list(prompt)
    answers = [answer(w.stage, str(p)) for p in (prompt if many else [text_of(row, w.args["prompt"])])]
    return {w.args["output"]: answers if many else answers[0]}


@register_worker
class VLM(Worker):
    """Qwen2.5-VL, greedy. Input: the images in `images` (columns) and the text in `prompt`;
    output: `answer` (str). `max_pixels` bounds each image's resized area, hence its tokens
    (one token per 28x28 pixels)."""

    role = "vlm"
    builder = Builder("builders.vlm")
    # Qwen2.5-VL-7B in bf16, HF generate, batch 16: two ~1 MP images are ~2.7k prefill tokens a sample
    # (one token per 28x28 px) at ~10k tokens/s, and a rubric's ~256 new tokens at ~30 ms a batched
    # decode step: ~0.3 + 0.5 s a sample, ~2 s per call; 16 GB of weights + the vision tower's
    # activations and the KV cache of a batch: two copies per device
    cost = Cost(0.8, per_batch=2.0, min_gpus=0.5,
                source="Qwen2.5-VL-7B bf16 on H100: ~10k prefill tokens/s, ~30 ms per batched decode step "
                       "(estimate from vLLM / HF generate reports)")
    simulated = staticmethod(simulated_vlm)
    inputs = ("images", "prompt")
    outputs = ("output",)
    rejects = ("empty_prompt",) + Worker.rejects

    def __init__(self, model: str = "Qwen/Qwen2.5-VL-7B-Instruct", *, dtype: str = "bfloat16", images=("image",),
                 prompt: str = "prompt", output: str = "answer", max_new_tokens: int = 256,
                 max_pixels: int | None = None, system: str | None = None, **common):
        super().__init__(model, dtype=dtype, **common)
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
