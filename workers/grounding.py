"""Open-vocabulary grounding: Grounding DINO (transformers' implementation) boxes for a list of
phrases per image.

Used by DIP (FocusDPO sec. 4.1: the subject's box, which SAM2 turns into the mask M_prior) and
IAPO (a box per planned instance in each image). Thresholds are Grounded-SAM-2's defaults (box
0.35, text 0.25). The model always runs in float32: its multi-scale deformable attention gives
wrong boxes under bf16 autocast, so the `dtype` option is accepted for a uniform pool config and
ignored. groundingdino-py is not used (it does not run with transformers 5).
"""
from __future__ import annotations

import numpy as np

from runtime.rows import Reject
from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of


def phrases_of(value) -> list[str]:
    """A row's phrases as a list of non-empty strings. A single string is read as Grounding
    DINO's own prompt form ("dog. red ball.")."""
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(".")
    return [str(p).strip() for p in value if p is not None and str(p).strip(" .")]


def caption_of(phrases: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """Grounding DINO's caption for a list of phrases: lowercased, each ending with "."
    (["Dog", "red ball"] -> "dog. red ball."), and each phrase's character span in it. A "."
    inside a phrase would split it in two for the model (it is the delimiter), so it becomes a
    space."""
    caption, spans = "", []
    for p in phrases:
        text = " ".join(p.lower().replace(".", " ").split())
        start = len(caption) + (1 if caption else 0)
        caption = f"{caption} {text}." if caption else f"{text}."
        spans.append((start, start + len(text)))
    return caption, spans


def simulated_grounding(w, row: dict) -> dict:
    """A simulated accelerator's boxes: one per phrase, side by side (workers/simulated.strip_box)."""
    from workers.simulated import strip_box

    a = w.args
    h, width = image_of(row, a["image"]).shape[:2]
    phrases = phrases_of(row.get(a["phrases"]))
    if not phrases:
        raise Reject("empty_prompt", a["phrases"])
    boxes = np.asarray([strip_box(j, len(phrases), h, width) for j in range(len(phrases))], np.float32)
    return {a["boxes"]: boxes, a["box_scores"]: np.full(len(phrases), 0.8, np.float32),
            a["box_labels"]: list(phrases), a["phrase_boxes"]: boxes.tolist()}


@register_worker
class Grounding(Worker):
    """Input: an image column (`image`) and a phrases column (`phrases`: list of
    str). Output, per row: `boxes` float32 [n, 4] xyxy pixels (clipped to the image),
    `box_scores` float32 [n], `box_labels` list of n str (the phrase each box is grounded to, as
    given in the row), `phrase_boxes` a list aligned with the phrases: each phrase's best box
    ([4] floats) or None when no box reached the thresholds. No box is not a reject here (the
    pipeline decides); it gives empty arrays. Rejects: `empty_prompt` (no phrase),
    `missing_image` / `bad_image`."""

    role = "grounding"
    builder = Builder("builders.grounding")
    cost = Cost(0.06, per_batch=0.02, source="Grounding DINO base (Swin-B) at 800x1333: ~15 images/s on one "
                                            "A100-class GPU (IDEA-Research model card, mmdet reports)")
    simulated = staticmethod(simulated_grounding)
    inputs = ("image", "phrases")
    outputs = ("boxes", "box_scores", "box_labels", "phrase_boxes")
    rejects = ("empty_prompt",) + Worker.rejects

    def __init__(self, model: str = "IDEA-Research/grounding-dino-base", *, dtype: str = "float32",
                 box_threshold: float = 0.35, text_threshold: float = 0.25, image: str = "image",
                 phrases: str = "phrases", boxes: str = "boxes", box_scores: str = "box_scores",
                 box_labels: str = "box_labels", phrase_boxes: str = "phrase_boxes", **common):
        super().__init__(model, dtype=dtype, **common)
        import torch
        from transformers import AutoModelForZeroShotObjectDetection, AutoProcessor

        self.box_threshold, self.text_threshold = box_threshold, text_threshold
        self.image, self.phrases = image, phrases
        self.out = {"boxes": boxes, "box_scores": box_scores, "box_labels": box_labels,
                    "phrase_boxes": phrase_boxes}
        self.processor = AutoProcessor.from_pretrained(model)
        self.model = AutoModelForZeroShotObjectDetection.from_pretrained(model, dtype=torch.float32)
        self.model = self.model.to(self.device).eval()
        self._torch = torch

    def check(self, row: dict) -> dict:
        phrases = phrases_of(row.get(self.phrases))
        if not phrases:
            raise Reject("empty_prompt", self.phrases)
        return {"image": image_of(row, self.image), "phrases": phrases}

    def predict(self, inputs: list[dict]) -> list[dict]:
        torch = self._torch
        from PIL import Image

        captions, spans = zip(*(caption_of(x["phrases"]) for x in inputs))
        sizes = [x["image"].shape[:2] for x in inputs]
        max_len = self.model.config.max_text_len
        # one forward for the batch: images padded (pixel_mask), captions padded (attention_mask)
        batch = self.processor(images=[Image.fromarray(x["image"]) for x in inputs], text=list(captions),
                               padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        token_phrase = self._token_phrase(list(captions), list(spans), batch["input_ids"].shape[1], max_len)
        # float32 even inside an outer autocast region (see the module docstring)
        with torch.inference_mode(), torch.autocast(self.device.split(":")[0], enabled=False):
            outputs = self.model(**batch.to(self.device))
        results = self.processor.post_process_grounded_object_detection(
            outputs, batch["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=sizes)
        # the processor's own selection, computed the same way on the same device so that it
        # picks exactly the same queries: kept query k of image i is results[i]["boxes"][k]
        probs = torch.sigmoid(outputs.logits)  # [B, queries, max_text_len]
        keep = torch.max(probs, dim=-1)[0] > self.box_threshold
        return [self._ground(x["phrases"], res, probs[i][keep[i]].float().cpu(), token_phrase[i], sizes[i])
                for i, (x, res) in enumerate(zip(inputs, results))]

    def _token_phrase(self, captions, spans, length: int, max_len: int):
        """[B, length] long: the phrase index each caption token belongs to, -1 for [CLS], [SEP],
        the "." delimiters and padding (character offsets from the same tokenizer call)."""
        enc = self.processor.tokenizer(captions, padding=True, truncation=True, max_length=max_len,
                                       return_offsets_mapping=True)
        out = np.full((len(captions), length), -1, np.int64)
        for i, (offsets, caption_spans) in enumerate(zip(enc["offset_mapping"], spans)):
            for t, (s, e) in enumerate(offsets[:length]):
                if e > s:
                    out[i, t] = next((j for j, (a, b) in enumerate(caption_spans) if a <= s < b), -1)
        return self._torch.from_numpy(out)

    def _ground(self, phrases, result, probs, token_phrase, size) -> dict:
        """One image's boxes with the phrase each is grounded to. `probs` [kept queries,
        max_text_len] are the token probabilities of the boxes the processor kept; a box's phrase
        is the phrase holding its most probable token, and a box whose best phrase token stays
        under the text threshold is grounded to no phrase (it scored on a delimiter) and is
        dropped."""
        torch = self._torch
        boxes, scores = result["boxes"].float().cpu(), result["scores"].float().cpu()
        if len(boxes) != len(probs):
            raise RuntimeError("post-processing kept a different set of queries than expected")
        probs = probs[:, :token_phrase.shape[0]]
        per_phrase = torch.full((len(boxes), len(phrases)), -1.0)
        for j in range(len(phrases)):
            tokens = token_phrase == j
            if tokens.any():  # a phrase cut off by max_text_len has no tokens
                per_phrase[:, j] = probs[:, tokens].max(dim=-1).values
        best_prob, best = per_phrase.max(dim=-1)
        grounded = best_prob > self.text_threshold
        h, w = size
        boxes = boxes[grounded].numpy().astype(np.float32)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        scores = scores[grounded].numpy().astype(np.float32)
        labels = [phrases[j] for j in best[grounded].tolist()]
        phrase_boxes = []
        for p in phrases:
            mine = [k for k, label in enumerate(labels) if label == p]
            phrase_boxes.append(boxes[max(mine, key=lambda k: scores[k])].tolist() if mine else None)
        return {self.out["boxes"]: boxes.reshape(-1, 4), self.out["box_scores"]: scores,
                self.out["box_labels"]: labels, self.out["phrase_boxes"]: phrase_boxes}
