"""Simulated accelerators: a stand-in per model role that holds the real worker's place in a plan
and its actor pool's resources, loads nothing, sleeps what the cost table says a batch costs at
production size (runtime.costs), and returns outputs of the real shapes, dtypes and sizes, so the
data movement between stages and the object store are real.

    workers = simulated_workers(load_costs(), time_scale=0.01, events="out/events")
    dip.main(["--config", "configs/dip.gpu.yaml", "--out", out], workers=workers)

Each role's outputs are its worker class's `simulated(stand_in, row)` (declared beside the worker,
runtime/roles.py); this module holds the stand-in and what those outputs share (pixels, coded
faces, the VLM's answers).

The outputs are the ones that pass every gate of the pipelines' gpu configs (it is a simulator:
pass rate 1, so throughput can be compared with a bound where every row reaches every step): the
VLM answers each question by its form and the stage that asks it, boxes and masks sit inside the
area limits, cosines between the pre-filter and the copy-paste limits, faces cluster per identity.

Faces: `coded_photo` writes the identities of a photo's faces into its top row (flat grey cells
JPEG keeps), the simulated face analysis reads them back and gives each face an embedding at
cosine FACE_COSINE to its identity's center, a unit vector derived from the identity alone.

With `events` (a directory) each actor appends JSON lines to a file of its own: one "loaded"
event at the end of __init__ and one "batch" event per batch, wall-clock times (read_events).
"""
from __future__ import annotations

import inspect
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from runtime.rows import Reject
from workers.base import Worker


def sleep(seconds: float) -> None:
    """The one wait per batch (tests replace it to see what is asked)."""
    time.sleep(seconds)


def clock() -> float:
    """Wall-clock seconds (tests stop it to see the whole cost asked as sleep)."""
    return time.time()


def assigned_gpus() -> float:
    """This actor's GPU share as Ray assigned it; 1.0 outside Ray and on a role without GPUs."""
    import sys

    ray = sys.modules.get("ray")  # an actor has imported Ray; a plain process may not have
    if ray is None or not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return 1.0  # not an actor (a driver with Ray up: runtime.execute.local in a test)
    return float(ray.get_runtime_context().get_assigned_resources().get("GPU") or 1.0)


def wired_like(real: type[Worker]) -> tuple:
    """(role, columns, rejects, arguments) of `real`: as a stand-in's class attributes they make it
    wire exactly like the real worker in a plan."""
    return real.role, real.columns, real.rejects, real.arguments


def step_defaults(real: type[Worker]) -> dict:
    """Every keyword argument of `real` with its default (a subclass's over its bases')."""
    out = {}
    for klass in reversed(real.__mro__):
        init = klass.__dict__.get("__init__")
        if init is not None and klass is not object:
            out.update({k: p.default for k, p in inspect.signature(init).parameters.items()
                        if p.default is not p.empty})
    return out


class Simulated(Worker):
    """Base of the stand-ins `simulated` makes; the class attributes below are set there."""

    real: type[Worker] = Worker
    cost = None  # runtime.costs.Cost of the role
    outputs = None  # the real worker's simulated(stand_in, row) -> outputs
    time_scale = 1.0
    events: str | None = None

    def __init__(self, model: str, **kwargs):
        unknown = sorted(set(kwargs) - self.real.arguments())
        if unknown:
            raise TypeError(f"{self.real.__name__} takes no argument(s) {unknown}")
        common = {k: kwargs[k] for k in ("stage", "dtype", "drop", "keep", "retries") if k in kwargs}
        super().__init__(model, device=kwargs.get("device") or "cpu", **common)
        self.args = dict(step_defaults(self.real), **kwargs)  # steps, height, width, mode: the cost's scale
        self.gpus = assigned_gpus()
        self.rng = np.random.default_rng()
        if self.events:
            Path(self.events).mkdir(parents=True, exist_ok=True)
        self.log(event="loaded", t=clock(), stage=self.stage, role=self.role, actor=os.getpid(), gpus=self.gpus)

    def seconds(self, n: int) -> float:
        """What a batch of n rows sleeps: the cost table's time on this actor's GPU share, scaled."""
        return self.cost.batch_seconds(n, self.args, self.gpus) * self.time_scale

    def predict(self, inputs: list[dict]) -> list:
        start = clock()
        out = [self.output(row) for row in inputs]
        # the batch takes the cost's time in all: making the outputs is part of it, as the GPU
        # makes them within its time (a 1024 px FLUX image costs ~0.2 s of CPU here)
        sleep(max(0.0, self.seconds(len(inputs)) - (clock() - start)))
        self.log(event="batch", stage=self.stage, actor=os.getpid(), start=start, end=clock(), rows=len(inputs))
        return out

    def output(self, row: dict):
        try:
            return self.outputs(self, row)
        except Reject as e:  # bad input, as the real worker's check would reject it
            return e

    def log(self, **event) -> None:
        if self.events:
            with open(Path(self.events) / f"{self.stage}-{os.getpid()}.jsonl", "a") as f:
                f.write(json.dumps(event) + "\n")


def simulated(real: type[Worker], costs: dict, time_scale: float = 1.0, events: str | None = None) -> type[Worker]:
    """A stand-in for `real`: wired like it, taking its constructor arguments, loading nothing."""
    if getattr(real, "simulated", None) is None:
        raise ValueError(f"{real.__name__} (role {real.role!r}) declares no simulated outputs")
    if real.role not in costs:
        raise ValueError(f"the cost table has no role {real.role!r}")
    role, columns, rejects, arguments = wired_like(real)
    return type(f"Simulated{real.__name__}", (Simulated,), {
        "role": role, "columns": columns, "rejects": rejects, "arguments": arguments, "real": real,
        "cost": costs[real.role], "outputs": staticmethod(real.simulated), "time_scale": float(time_scale),
        "events": None if events is None else str(events)})


def simulated_workers(costs: dict, time_scale: float = 1.0, events: str | None = None,
                      roles=None) -> dict[str, type]:
    """role -> stand-in of every registered worker role (or of `roles`): a plan's `workers`."""
    from runtime.roles import ROLES

    return {name: simulated(r.worker, costs, time_scale, events) for name, r in sorted(ROLES.items())
            if r.worker is not None and (roles is None or name in roles)}


def read_events(directory) -> list[dict]:
    """Every event of every actor in `directory`, in time order. A line still being written (no
    newline yet) is left for the next read."""
    events = []
    for path in sorted(Path(directory).glob("*.jsonl")):
        events += [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]
    return sorted(events, key=lambda e: e.get("t", e.get("start", 0.0)))


# --- pixels --------------------------------------------------------------------------------------

def photo(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A fresh uint8 HxWx3: a smooth colour gradient with mild noise. JPEG and PNG do about a
    photo's work on it (1024 px at quality 95: ~260 KB), which a flat image would not ask."""
    y = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    a, b, c = rng.uniform(30, 110, (3, 3)).astype(np.float32)
    image = (c + a * x + b * y).astype(np.int16)
    image += rng.integers(-6, 7, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    """A photo as JPEG bytes, as a crawl stores it (the simulated benchmarks' inputs)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def parquet_list(rows: list[dict], path) -> Path:
    """Rows as one Parquet file (a crawl's list of inputs, the simulated benchmarks' source)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def crawl_shards(samples, folder: str, per_shard: int, filesystem=None) -> list[str]:
    """Samples {"key", "jpg" (bytes or None), "json" (a dict, or None)} as img2dataset writes a crawl:
    `<folder>/00000.tar`, ... with `<key>.jpg` and `<key>.json` members (webdataset's TarWriter), on
    any filesystem. Returns the shards' paths."""
    import webdataset as wds

    from schemas.store import resolve_filesystem

    fs, root = resolve_filesystem(folder, filesystem)
    fs.create_dir(root, recursive=True)
    paths, writer, stream = [], None, None
    for i, sample in enumerate(samples):
        if i % per_shard == 0:
            if writer is not None:
                writer.close()
                stream.close()
            paths.append(f"{root}/{len(paths):05d}.tar")
            stream = fs.open_output_stream(paths[-1])
            writer = wds.TarWriter(stream, encoder=False)
        member = {"__key__": sample["key"]}
        if sample.get("jpg") is not None:
            member["jpg"] = sample["jpg"]
        if sample.get("json") is not None:
            member["json"] = json.dumps(sample["json"]).encode()
        writer.write(member)
    if writer is not None:
        writer.close()
        stream.close()
    return paths


def ellipse(box, height: int, width: int) -> np.ndarray:
    """bool HxW: the ellipse inscribed in an xyxy box, what a mask of a rounded subject looks like."""
    x0, y0, x1, y1 = (float(v) for v in box)
    rx, ry = max((x1 - x0) / 2, 0.5), max((y1 - y0) / 2, 0.5)
    mask = np.zeros((height, width), bool)
    r0, r1 = max(0, int(y0)), min(height, int(np.ceil(y1)))
    c0, c1 = max(0, int(x0)), min(width, int(np.ceil(x1)))
    y, x = np.ogrid[r0:r1, c0:c1]  # only the box's pixels can be inside
    mask[r0:r1, c0:c1] = ((x + 0.5 - (x0 + x1) / 2) / rx) ** 2 + ((y + 0.5 - (y0 + y1) / 2) / ry) ** 2 <= 1
    return mask


def strip_box(j: int, n: int, height: int, width: int) -> list[float]:
    """Subject j of n: a box in the j-th vertical strip. The ellipses of n strips cover ~38% of the
    image, inside DIP's mask area limits (0.02-0.9) whatever n."""
    return [width * (j + 0.1) / n, 0.2 * height, width * (j + 0.9) / n, 0.8 * height]


# --- faces: identities coded in the photo --------------------------------------------------------

CELLS = 32  # code cells across the top row: a cell is width // CELLS px (32 px at 1024)
LEVEL = 16  # grey step between digit values: JPEG keeps a flat cell's level well within LEVEL / 2
MAX_FACES = (CELLS - 1) // 2  # cell 0 holds the face count, then two base-16 digits per face
MAX_IDENTITY = 255  # 1..255 an identity, 0 a stranger
FACE_DIM = 512  # ArcFace
FACE_COSINE = 0.8  # a face to its identity's center: two faces of one identity ~0.64 apart, inside DBSCAN's eps 0.5
CENTER_SEED = 20240002


def coded_photo(identities: list[int], height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A photo whose top row holds its faces' identities (1..255; 0: a stranger)."""
    if len(identities) > MAX_FACES or any(not 0 <= i <= MAX_IDENTITY for i in identities):
        raise ValueError(f"at most {MAX_FACES} identities in 0..{MAX_IDENTITY}, got {identities}")
    image = photo(height, width, rng)
    cell = width // CELLS
    digits = [len(identities)] + [d for i in identities for d in divmod(int(i), 16)]
    for k, d in enumerate(digits):
        image[:cell, k * cell:(k + 1) * cell] = d * LEVEL + LEVEL // 2
    return image


def read_codes(image: np.ndarray) -> list[int]:
    """The identities coded_photo wrote (a photo it did not make reads as whatever its corner holds)."""
    cell = image.shape[1] // CELLS

    def digit(k: int) -> int:
        inner = image[cell // 4:3 * cell // 4, k * cell + cell // 4:k * cell + 3 * cell // 4]
        return min(int(inner.mean()) // LEVEL, 15)

    return [digit(1 + 2 * f) * 16 + digit(2 + 2 * f) for f in range(min(digit(0), MAX_FACES))]


def identity_center(identity: int) -> np.ndarray:
    """The unit ArcFace center of an identity, from the identity alone (no file needed)."""
    v = np.random.default_rng([CENTER_SEED, int(identity)]).standard_normal(FACE_DIM)
    return (v / np.linalg.norm(v)).astype(np.float32)


def face_embedding(identity: int, rng: np.random.Generator) -> np.ndarray:
    """A unit embedding at FACE_COSINE to the identity's center; a stranger's (0) is random."""
    u = rng.standard_normal(FACE_DIM).astype(np.float32)
    if identity == 0:
        return u / np.linalg.norm(u)
    c = identity_center(identity)
    u -= (u @ c) * c
    return FACE_COSINE * c + np.sqrt(1 - FACE_COSINE ** 2) * u / np.linalg.norm(u)


LANDMARKS = np.array([(.3, .4), (.7, .4), (.5, .6), (.35, .8), (.65, .8)], np.float32)  # eyes, nose, mouth


# --- the VLM: answers that pass the gate after each question -------------------------------------
# The question's form, by the templates of stages/rubric.py and stages/prompts.py.
RUBRIC = "Identity Consistency Evaluation Criteria"
RATING = "Rating: <0-5>"
ATTRIBUTES = "key visual attributes"
PLANNER = "Matched Instance: [Instance Category"
JUDGE = "Quality Comparison Result"
MULTIID_CAPTION = "This image shows"


def answer(stage: str, prompt: str) -> str:
    """A simulator's answer: the one the step's gate lets through. The rubric's two checks ask the
    same question, so the stage tells them apart: the positive check must score >= 9 of 10 (all
    Yes), the negative check (stage `negative_check`) <= 6 (five Yes)."""
    if RUBRIC in prompt:
        yes = 5 if "negative" in stage else 10
        return "\n".join(f"{n}. {'Yes' if n <= yes else 'No'}" for n in range(1, 11))
    if RATING in prompt:  # every attribute the prompt lists is present, the pair is the same object
        return "\n".join([f"{a}: Yes" for a in re.findall(r"^- (.+)$", prompt, re.M)] + ["Rating: 5"])
    if ATTRIBUTES in prompt:
        return "- glazed ceramic body\n- cobalt blue colour\n- curved spout\n- thin gold rim"
    if PLANNER in prompt:
        return "Matched Instance: [person]\nMatched Instance: [dog]"
    if JUDGE in prompt:
        return "Quality Comparison Result: Image A is better"
    if MULTIID_CAPTION in prompt:
        return ("This image shows two people standing side by side in a park, a man in a navy suit with a "
                "silver watch and a woman in a red dress with pearl earrings, both smiling at the camera.")
    return "A small glazed teapot with a curved spout, deep cobalt blue with a thin gold rim and a bamboo handle."
