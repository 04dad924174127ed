"""Synthetic samples for any dataset schema: random members and manifest values that obey the
schema's rules. They exercise the writer, reader and validation without any model, and drive the
demo until a real pipeline replaces it."""
from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from runtime.plan import step
from runtime.rows import Reject
from schemas.contract import DatasetSchema

WORDS = ("red", "teapot", "dog", "sunlit", "studio", "velvet", "mountain", "portrait", "ceramic", "neon")


def random_image(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth gradient with noise: compresses like a photo rather than like pure noise."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 127 / max(h + w - 2, 1)], -1)
    base = base + rng.normal(0, 12, (h, w, 3)) + rng.integers(0, 64, 3)
    return np.clip(base, 0, 255).astype(np.uint8)


def random_mask(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), bool)
    y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
    mask[y0 : y0 + rng.integers(1, h // 2 + 1), x0 : x0 + rng.integers(1, w // 2 + 1)] = True
    return mask


def random_value(rng: np.random.Generator, t: pa.DataType):
    if pa.types.is_string(t):
        return " ".join(rng.choice(WORDS, rng.integers(1, 5)))
    if pa.types.is_boolean(t):
        return bool(rng.integers(0, 2))
    if pa.types.is_integer(t):
        return int(rng.integers(0, 100 if t.bit_width > 8 else 2))
    if pa.types.is_floating(t):
        return float(np.float32(rng.random()))
    if pa.types.is_list(t):
        return [random_value(rng, t.value_type) for _ in range(rng.integers(0, 4))]
    raise TypeError(f"no synthetic value for {t}")


def random_sample(schema: DatasetSchema, key: str, rng: np.random.Generator, size: int = 128,
                  patch: int = 16) -> dict:
    """Every member of the schema (indexed families get 1-3) and every manifest field."""
    row = {"key": key}
    images = {}
    for m in schema.members:
        if m.kind == "image":
            h, w = size, size + patch * int(rng.integers(0, 3))
            images[m.name] = row[m.name] = random_image(rng, h, w)
    first = next(iter(images.values())) if images else None
    for m in schema.members:
        names = [f"{m.name[:-1]}{i}" for i in range(rng.integers(1, 4))] if m.family else [m.name]
        for name in names:
            ref = images.get(m.size_of or m.grid_of, first)
            h, w = (ref.shape[:2] if ref is not None else (size, size))
            if m.kind == "mask":
                row[name] = random_mask(rng, h, w)
            elif m.kind == "alpha":
                row[name] = (random_mask(rng, h, w) * rng.integers(128, 256)).astype(np.uint8)
            elif m.kind == "array":
                shape = (h // patch, w // patch) if m.grid_of else ((int(rng.integers(1, 5)), 512) if m.ndim == 2 else (512,))
                row[name] = rng.random(shape).astype(m.dtype)
    for f in schema.fields:
        row[f.name] = random_value(rng, f.type)
    row["json"] = {"synthetic": True, "words": list(rng.choice(WORDS, 3))}
    return row


@step(reads=("index",), rejects=("poison",))  # writes the schema's columns (the plan declares them)
def generate(row: dict, schema: DatasetSchema, seed: int, image_size: int, poison_every: int = 0,
             work_seconds: float = 0.0, sample=random_sample) -> dict:
    """A random sample of `schema` for input `index` (`sample`: the dataset spec's maker, e.g.
    random_sample). Every `poison_every`-th input is bad data by construction: index % n == 1 is
    rejected here, index % n == 2 carries a NaN image that the encode step rejects."""
    i = int(row["index"])
    if poison_every and i % poison_every == 1:
        raise Reject("poison", f"sample {i} is bad input by construction")
    time.sleep(work_seconds)  # simulated model time (fault and resume tests)
    made = sample(schema, row["key"], np.random.default_rng([seed, i]), image_size)
    if poison_every and i % poison_every == 2:
        first_image = next(m.name for m in schema.members if m.kind == "image")
        made[first_image] = np.full((4, 4), np.nan)  # cannot be a JPEG: an encode reject
    return dict(made, input=row["input"])
