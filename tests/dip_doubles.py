"""Deterministic doubles of the DIP model roles, for tests of the DAG's gates and rejects.

Each is a Worker with the real worker's constructor arguments, columns and batch protocol, so the
pipeline wires it exactly like the model it replaces; the subject's name in a prompt scripts what
it returns. The text-to-image double keeps the real worker's input checks and its NaN / black
output checks (only the FLUX call is replaced).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from stages.rubric import rubric_for
from workers.base import Worker, image_of
from workers.grounding import Grounding
from workers.image_encoder import ImageEncoder
from workers.segmentation import Segmentation
from workers.text_to_image import TextToImage
from workers.vlm import VLM

SIZE = 64
SQUARE = (16, 48)  # the subject: a coloured square, rows and columns 16..47

# subject -> (positive answer, negative answer); an int k means "k of 10 answered consistent"
# (the normalised wording: "Yes" is consistent), a str is the VLM's literal answer.
NV_EXEMPT = [q.number for q in rubric_for("object").questions if q.not_visible_is_consistent]  # 4, 5, 6, 8
NV_NOT_EXEMPT = [q.number for q in rubric_for("object").questions if not q.not_visible_is_consistent]


def answer(consistent: int, not_visible: tuple[int, ...] = ()) -> str:
    """Ten answer lines: questions in `not_visible` say "Not visible", then the first `consistent`
    of the others say Yes."""
    lines, yes = [], 0
    for n in range(1, 11):
        if n in not_visible:
            lines.append(f"{n}. Not visible")
        else:
            lines.append(f"{n}. {'Yes' if yes < consistent else 'No'}")
            yes += 1
    return "\n".join(lines)


RUBRIC_SCRIPT = {
    "teapot": (10, 3),
    "pos9": (9, 3),  # 9 of 10 consistent: kept
    "pos8": (8, 3),  # 8 of 10: rejected
    "neg6": (10, 6),  # negative at 6: kept
    "neg7": (10, 7),  # negative at 7: "negative too consistent"
    "shaded": (answer(8, tuple(NV_EXEMPT[:2])), 3),  # not visible where the paper says "Yes": 10
    "fogged": (answer(8, tuple(NV_NOT_EXEMPT[:2])), 3),  # not visible elsewhere: 8, rejected
    "mumble": ("I am not sure what these images show.", 3),  # unparsable
}


def wired_like(real: type[Worker]) -> tuple:
    """(role, columns, rejects, arguments) of `real`: as a double's class attributes they make it
    wire exactly like the real worker in a plan."""
    return real.role, real.columns, real.rejects, real.arguments


def plan_args(common: dict) -> dict:
    """What a double passes to Worker.__init__: the plan's stage, drop and keep; always the CPU."""
    return {k: common[k] for k in ("stage", "drop", "keep") if k in common} | {"device": "cpu"}


def script_for(prompt: str) -> str:
    """The scripted subject a prompt is about (rubric: "object (name)", captions: "subject, name,"),
    read from its first paragraph: a rubric's question 1 names the sample's other subjects."""
    head = prompt.split("\n\n")[0]
    for name in sorted(RUBRIC_SCRIPT, key=len, reverse=True):
        if re.search(rf"\b{name}\b", head):
            return name
    return "teapot"


class ScriptedVLM(Worker):
    role, columns, rejects, arguments = wired_like(VLM)

    def __init__(self, model: str, *, images=("image",), prompt="prompt", output="answer", **common):
        super().__init__(model, **plan_args(common))
        self.images = [images] if isinstance(images, str) else list(images)
        self.prompt, self.output = prompt, output

    def check(self, row: dict) -> dict:
        for column in self.images:
            value = row[column]
            for image in (value if isinstance(value, (list, tuple)) or getattr(value, "dtype", None) == object
                          else [value]):
                image_of({"i": image}, "i")
        prompts = row[self.prompt]
        return {"prompts": [str(p) for p in prompts] if not isinstance(prompts, str) else [prompts]}

    def predict(self, inputs: list[dict]) -> list[dict]:
        return [{self.output: [self._answer(p) for p in x["prompts"]]} for x in inputs]

    def _answer(self, prompt: str) -> str:
        name = script_for(prompt)
        if self.output == "caption_raw":
            return f"A small glazed {name} with a curved spout, deep blue with a thin gold rim."
        scripted = RUBRIC_SCRIPT[name][0 if self.output == "pos_raw" else 1]
        return answer(scripted) if isinstance(scripted, int) else scripted


def paint(prompt: str, width: int) -> np.ndarray:
    """float RGB in [0, 1], like FluxPipeline(output_type="np"): a diptych of the subject (a square
    whose colour comes from its name) on plain white (left) and on a striped scene (right)."""
    if "nanfail" in prompt:
        return np.full((SIZE, width, 3), np.nan, np.float32)
    if "blackout" in prompt:
        return np.zeros((SIZE, width, 3), np.float32)
    image = np.ones((SIZE, width, 3), np.float32)
    half = width // 2
    image[:, half:] = 0.35 + 0.3 * (np.arange(half) % 8 < 4)[None, :, None]  # the scene: stripes
    colour = (np.frombuffer(prompt.encode()[:3].ljust(3, b"x"), np.uint8) / 255.0).astype(np.float32)
    a, b = SQUARE
    for left in (0, half):
        image[a:b, left + a:left + b] = colour
    if "copycat" in prompt:
        image[:, half:] = image[:, :half]  # target == reference: a copy-paste pair
    if "stranger" in prompt:
        image[:, half:] = 1.0 - image[:, :half]  # a different picture altogether
    return image


class PaintedTextToImage(TextToImage):
    """FLUX's place in the DAG with painted images; the real checks on inputs and outputs run."""

    def __init__(self, model: str, *, mode="diptych", prompt="prompt", seed="seed", left="left", right="right",
                 output="image", height=SIZE, width=SIZE, **common):
        Worker.__init__(self, model, **plan_args(common))
        self.mode, self.prompt, self.seed = mode, prompt, seed
        self.left, self.right, self.output = left, right, output
        self.height, self.width, self.multiple = height, width, 16

    def predict(self, inputs: list[dict]) -> list[dict]:
        return [self._outputs(paint(x["prompt"], x["width"])) for x in inputs]


class PixelEncoder(Worker):
    """The image encoder's cosine on mean-centred pixels: identical images give 1, inverted ones -1."""

    role, columns, rejects, arguments = wired_like(ImageEncoder)

    def __init__(self, model: str, *, image="image", image_b=None, cosine="cosine", **common):
        super().__init__(model, **plan_args(common))
        self.image, self.image_b, self.cosine = image, image_b, cosine

    def check(self, row: dict) -> dict:
        return {"a": image_of(row, self.image), "b": image_of(row, self.image_b)}

    def predict(self, inputs: list[dict]) -> list[dict]:
        out = []
        for x in inputs:
            a, b = (v.astype(np.float64).ravel() for v in (x["a"], x["b"]))
            a, b = a - a.mean(), b - b.mean()
            out.append({self.cosine: float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))})
        return out


class ScriptedGrounding(Worker):
    """The square's box for every phrase; "ghost" is never found, "void" gets a zero-area box."""

    role, columns, rejects, arguments = wired_like(Grounding)

    def __init__(self, model: str, *, image="image", phrases="phrases", phrase_boxes="phrase_boxes", **common):
        super().__init__(model, **plan_args(common))
        self.image, self.phrases, self.phrase_boxes = image, phrases, phrase_boxes

    def check(self, row: dict) -> dict:
        return {"image": image_of(row, self.image), "phrases": [str(p) for p in row[self.phrases]]}

    def predict(self, inputs: list[dict]) -> list[dict]:
        a, b = SQUARE
        boxes = {"ghost": None, "void": [20.0, 20.0, 20.0, 20.0]}
        return [{self.phrase_boxes: [boxes.get(p, [float(a), float(a), float(b), float(b)]) for p in x["phrases"]],
                 "box_scores": [0.9] * len(x["phrases"]), "box_labels": list(x["phrases"])} for x in inputs]


class BoxSegmentation(Worker):
    """Each box filled: the mask SAM2 would give for a solid square."""

    role, columns, rejects, arguments = wired_like(Segmentation)

    def __init__(self, model: str, *, image="image", boxes="boxes", **common):
        super().__init__(model, **plan_args(common))
        self.image, self.boxes = image, boxes

    def check(self, row: dict) -> dict:
        return {"image": image_of(row, self.image), "boxes": np.asarray(row[self.boxes], np.float32).reshape(-1, 4)}

    def predict(self, inputs: list[dict]) -> list[dict]:
        out = []
        for x in inputs:
            masks = []
            for x0, y0, x1, y1 in x["boxes"].astype(int):
                m = np.zeros(x["image"].shape[:2], bool)
                m[y0:y1, x0:x1] = True
                masks.append(m)
            out.append({"masks": masks, "mask_scores": [1.0] * len(masks)})
        return out


PROMPTS = [  # (subjects, expected reject reason or None)
    (["teapot"], None),
    (["pos9"], None),
    (["pos8"], "positive_inconsistent"),
    (["neg6"], None),
    (["neg7"], "negative_too_consistent"),
    (["shaded"], None),
    (["fogged"], "positive_inconsistent"),
    (["mumble"], "unparsable_rubric"),
    (["nanfail"], "nan_image"),
    (["blackout"], "black_image"),
    (["ghost"], "no_box"),
    (["void"], "empty_mask"),
    (["copycat"], "copy_paste"),
    (["stranger"], "encoder_prefilter"),
    (["teapot", "pos9"], None),
    (["teapot", "pos8"], "positive_inconsistent"),
    (["teapot", "neg7"], "negative_too_consistent"),
]


SCRIPTED = {"model": "scripted", "dtype": "float32", "batch_size": 4, "num_cpus": 0.25}


def scripted_config(tmp: Path, copies: int = 1, **overrides) -> tuple[dict, list[dict]]:
    """The scripted world's DIP config (prompts file in `tmp`, QA on, the doubles' specs) and its
    input rows: PROMPTS, `copies` times (each copy its own prompts, so its own keys), plus a
    prompt without a class noun and one of an unknown category."""
    rows = []
    for c in range(copies):
        take = f", take {c}" if c else ""
        rows += [{"prompt": f"a photo of {' and '.join(s)} on a kitchen table{take}", "subjects": s,
                  "class_nouns": s, "category": "object"} for s, _ in PROMPTS]
    rows.append({"prompt": "a photo of something nobody named", "category": "object"})  # no class noun
    rows.append({"prompt": "a photo of a teapot", "class_nouns": ["teapot"], "category": "vehicle"})
    prompts = Path(tmp) / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = {"profile": "tiny", "source": "prompts", "prompts_file": str(prompts), "image_size": 64,
              "inpainter": "opencv", "mask_dilation_px": 4, "encoder_cosine_min": 0.3, "qa": True,
              "write": {"target_shard_samples": 2},
              **{role: dict(SCRIPTED) for role in ("text_to_image", "grounding", "segmentation", "vlm", "image_encoder")},
              **overrides}
    return config, rows


DOUBLES = {"text_to_image": PaintedTextToImage, "vlm": ScriptedVLM, "image_encoder": PixelEncoder,
           "grounding": ScriptedGrounding, "segmentation": BoxSegmentation}
