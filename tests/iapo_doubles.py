"""Deterministic doubles of the IAPO model roles (planner / judge VLM, grounding), for tests of the
DAG's parsing, un-shuffling, drops and rejects.

Each is a Worker with the real worker's constructor arguments, columns and batch protocol. The
scripted world: 64 x 64 pairs in which each instance is a flat square whose brightness is its
quality. The planner's answer is scripted by the pair's caption (the real planner sees only the
images and the fixed Fig. II prompt); grounding boxes each category at a fixed place per image;
the judge looks at the two crops it is given and calls the brighter one better, so the answer
depends on which crop it was shown as A: rho comes out right only if the pipeline un-shuffles.
"""
from __future__ import annotations

import re

import numpy as np

from tests.dip_doubles import ScriptedVLM as DIPScriptedVLM
from tests.dip_doubles import plan_args, wired_like
from workers.base import Worker, image_of, is_list
from workers.grounding import Grounding

SIZE = 64
BRIGHT, DARK, BACKGROUND = 230, 30, 128
# (category, image index) -> box; the category is painted there, bright or dark
BOXES = {
    ("cat", 0): [0.0, 0.0, 32.0, 32.0], ("cat", 1): [0.0, 0.0, 32.0, 32.0],
    ("dog", 0): [32.0, 32.0, 64.0, 64.0], ("dog", 1): [32.0, 0.0, 64.0, 32.0],
    ("ghost", 0): [0.0, 32.0, 32.0, 64.0],  # found in image_0 only
    ("mumble", 0): [0.0, 32.0, 32.0, 64.0], ("mumble", 1): [0.0, 32.0, 32.0, 64.0],
    ("both", 0): [32.0, 0.0, 64.0, 32.0], ("both", 1): [32.0, 32.0, 64.0, 64.0],
    ("flat", 0): [10.0, 10.0, 10.0, 40.0], ("flat", 1): [10.0, 10.0, 30.0, 40.0],  # zero width in image_0
}
DEFAULT_BOX = [16.0, 16.0, 48.0, 48.0]  # any other category: the centre
# caption -> the planner's answer (realistic mess: chatter, bold, numbering, repeats, several per line)
PLANNER = {
    "a cat and a dog": "Sure! Here are the instances I matched:\n\n1. **Matched Instance: [Cat]**\n"
                       "2. Matched Instance: [dog]\n3. Matched Instance: [cat]\n\nLet me know if you need more.",
    "a cat and a dog, flipped": "Matched Instance: [cat]\nMatched Instance: [dog]",
    "a cat and a ghost": "Matched Instance: [cat]\n\nMatched Instance: [ghost]",
    "a cat and mumbling": "Matched Instance: [cat], [mumble]",
    "a dog and both": "- Matched Instance: [both]\n- Matched Instance: [dog]",
    "a flat cat": "### Matches\nMatched Instance: [flat]\nMatched Instance: \"cat\"",
    "too many": "Matched Instance: [dog]\nMatched Instance: [cat]\nMatched Instance: [ghost]\nMatched Instance: [mumble]",
    "only a ghost": "Matched Instance: [ghost]",
    "nothing in common": "I could not find any identical or similar object in these two images.",
    "only mumbling": "Matched Instance: [mumble]",
}
DEFAULT_PLAN = "Matched Instance: [cat]"
# categories whose judge answer is scripted text instead of a look at the crops
JUDGE_TEXT = {"mumble": "I cannot tell these two apart, they look about the same to me.",
              "both": "Image A is better. On reflection, Image B is better."}


def pair_images(quality: dict[str, tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Two images with each category's square painted at its box, quality[c] = (level in image_0,
    level in image_1)."""
    images = [np.full((SIZE, SIZE, 3), BACKGROUND, np.uint8) for _ in (0, 1)]
    for category, levels in quality.items():
        for i in (0, 1):
            box = BOXES.get((category, i))
            if box is not None:
                x0, y0, x1, y1 = map(int, box)
                images[i][y0:y1, x0:x1] = levels[i]
    return images[0], images[1]



class ScriptedVLM(DIPScriptedVLM):
    """Planner: PLANNER[caption] (a default when the caption is not scripted). Judge: the brighter
    crop is better, answered in the Fig. II format with some chatter around it. The constructor is
    the DIP double's (the real VLM's arguments)."""

    def check(self, row: dict) -> dict:
        many = is_list(row[self.prompt])
        prompts = [str(p) for p in row[self.prompt]] if many else [str(row[self.prompt])]
        columns = []
        for c in self.images:
            value = row[c]
            columns.append([image_of({"i": v}, "i") for v in value] if is_list(value) else
                           [image_of(row, c)] * len(prompts))
        return {"prompts": prompts, "images": list(zip(*columns)), "many": many, "caption": row.get("caption")}

    def predict(self, inputs: list[dict]) -> list[dict]:
        out = []
        for x in inputs:
            answers = [self._answer(p, ims, x["caption"]) for p, ims in zip(x["prompts"], x["images"])]
            out.append({self.output: answers if x["many"] else answers[0]})
        return out

    def _answer(self, prompt: str, images, caption) -> str:
        if "object detection system" in prompt:  # the planner
            return PLANNER.get(caption, DEFAULT_PLAN)
        instance = re.search(r"Matched Instance: \[(.*)\]", prompt).group(1)
        if instance in JUDGE_TEXT:
            return JUDGE_TEXT[instance]
        a, b = (float(np.asarray(im).mean()) for im in images)
        return f"After comparing both crops:\n**Quality Comparison Result:** Image {'A' if a > b else 'B'} is better"


class ScriptedGrounding(Worker):
    """BOXES[(phrase, image index)] for each phrase, None where the table has no box."""

    role, columns, rejects, arguments = wired_like(Grounding)

    def __init__(self, model: str, *, image="image", phrases="phrases", boxes="boxes", box_scores="box_scores",
                 box_labels="box_labels", phrase_boxes="phrase_boxes", **common):
        super().__init__(model, **plan_args(common))
        self.image, self.phrases = image, phrases
        self.index = int(image[-1])
        self.out = (boxes, box_scores, box_labels, phrase_boxes)

    def check(self, row: dict) -> dict:
        return {"image": image_of(row, self.image), "phrases": [str(p) for p in row[self.phrases]]}

    def predict(self, inputs: list[dict]) -> list[dict]:
        out = []
        for x in inputs:
            per_phrase = [BOXES.get((p.lower(), self.index), None if p.lower() in {"ghost"} else DEFAULT_BOX)
                          for p in x["phrases"]]
            found = [(b, p) for b, p in zip(per_phrase, x["phrases"]) if b is not None]
            boxes, scores, labels, phrase_boxes = self.out
            out.append({boxes: np.asarray([b for b, _ in found], np.float32).reshape(-1, 4),
                        scores: np.full(len(found), 0.9, np.float32), labels: [p for _, p in found],
                        phrase_boxes: per_phrase})
        return out


DOUBLES = {"vlm": ScriptedVLM, "grounding": ScriptedGrounding}
