"""What a sample is on disk: its members in a shard and the columns of its manifest row.

Each dataset module (dip, multiid, uper, iapo) declares one `DatasetSchema`. Everything that
reads or writes samples (writer, reader, validate) goes through `encode_member` /
`decode_member` here, so the rules for a member live in exactly one place.
"""
from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

# Columns every manifest has, before the dataset's own.
BASE_FIELDS = [pa.field("key", pa.string(), nullable=False), pa.field("shard", pa.string(), nullable=False)]
# Per-stage seconds per sample: pipelines add `time_<stage>` float columns; they are allowed on top
# of the declared schema so a pipeline can grow a stage without a schema bump.
TIMING_PREFIX = "time_"
REJECT_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
        pa.field("input", pa.string()),  # what the user would look for: a path, URI or prompt
        # an infrastructure failure that outlasted its retries (CUDA OOM, a dead actor): not a
        # verdict on the data; the key is not done, and the next run tries it again
        pa.field("retryable", pa.bool_()),
    ]
)
# Row columns that mark a reject instead of a sample (set by `runtime.rows.reject`).
REJECT_COLUMNS = ("reject_stage", "reject_reason", "reject_detail", "reject_retryable")

EXTS = ("jpg", "png", "npy", "json")


@dataclass(frozen=True)
class Member:
    """One file of a sample: `<key>.<name>.<ext>` in the tar.

    name: a fixed name ("ref") or an indexed family ("mask_*" matches mask_0, mask_1, ...).
    kind: image (HxWx3 uint8), mask (HxW bool, stored 0/255), alpha (HxW uint8), array (npy), json.
    size_of: for masks / alphas, the image member whose HxW they must equal.
    grid_of: for maps, the image member whose HxW must be an integer multiple of the map's.
    """

    name: str
    ext: str
    kind: str
    required: bool = True
    dtype: str | None = None
    ndim: int | None = None
    size_of: str | None = None
    grid_of: str | None = None

    def matches(self, name: str) -> bool:
        if self.name.endswith("*"):
            return re.fullmatch(re.escape(self.name[:-1]) + r"\d+", name) is not None
        return name == self.name

    @property
    def family(self) -> bool:
        return self.name.endswith("*")


@dataclass(frozen=True)
class DatasetSchema:
    name: str
    version: int
    members: tuple[Member, ...]
    fields: tuple[pa.Field, ...]  # the dataset's own manifest columns
    doc: str = ""
    tasks: tuple[str, ...] = ("text-to-image",)  # the dataset card's task_categories (Hugging Face's)

    @property
    def manifest_schema(self) -> pa.Schema:
        return pa.schema(BASE_FIELDS + list(self.fields))

    def member_for(self, name: str) -> Member | None:
        for m in self.members:
            if m.matches(name):
                return m
        return None

    def member_names(self, row: dict) -> list[str]:
        """Members present in a row: fixed names, plus each family's members that are set."""
        names = []
        for m in self.members:
            if m.family:
                prefix = m.name[:-1]
                names += sorted(
                    (k for k in row if k.startswith(prefix) and m.matches(k) and row[k] is not None),
                    key=lambda k: int(k[len(prefix):]),
                )
            elif row.get(m.name) is not None:
                names.append(m.name)
        return names

    def missing_required(self, names) -> list[str]:
        return [m.name for m in self.members if m.required and not m.family and m.name not in names]


# ---------------------------------------------------------------------------------------------
# encoding and decoding of member bytes

JPEG_QUALITY = 95


def to_jsonable(value):
    """numpy scalars / arrays and nested containers -> plain Python for json and Arrow."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None  # json has no NaN; a missing score is null
    return value


def encode_member(member: Member, value) -> bytes:
    """Value from a row -> member bytes. Bytes pass through untouched (already encoded upstream,
    so the writer never re-compresses a JPEG); arrays are encoded by the member's kind."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if member.ext == "json":
        if isinstance(value, str):
            json.loads(value)  # must be valid json
            return value.encode()
        return json.dumps(to_jsonable(value), allow_nan=False).encode()
    arr = np.asarray(value)
    if member.ext == "npy":
        if member.dtype:
            arr = arr.astype(member.dtype, copy=False)
        if member.ndim is not None and arr.ndim != member.ndim:
            raise ValueError(f"{member.name}: expected {member.ndim}-d array, got shape {arr.shape}")
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
        return buf.getvalue()
    if member.kind == "mask":
        if arr.ndim != 2:
            raise ValueError(f"{member.name}: mask must be HxW, got shape {arr.shape}")
        img = Image.fromarray(np.where(arr.astype(bool), 255, 0).astype(np.uint8), mode="L")
    elif member.kind == "alpha":
        if arr.ndim != 2 or arr.dtype != np.uint8:
            raise ValueError(f"{member.name}: alpha must be HxW uint8, got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr, mode="L")
    else:
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or min(arr.shape[:2]) < 1:
            raise ValueError(f"{member.name}: image must be HxWx3 uint8, got {arr.dtype} {arr.shape}")
        img = Image.fromarray(arr, mode="RGB")
    buf = io.BytesIO()
    if member.ext == "jpg":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()


def decode_member(member: Member, data: bytes):
    """Member bytes -> typed value: image uint8 HxWx3, mask bool HxW, alpha uint8 HxW, npy array,
    json dict. Raises on bytes that do not decode (validate turns that into a problem)."""
    if member.ext == "json":
        return json.loads(data)
    if member.ext == "npy":
        arr = np.load(io.BytesIO(data), allow_pickle=False)
        if member.dtype and arr.dtype != np.dtype(member.dtype):
            raise ValueError(f"{member.name}: dtype {arr.dtype}, expected {member.dtype}")
        if member.ndim is not None and arr.ndim != member.ndim:
            raise ValueError(f"{member.name}: {arr.ndim}-d, expected {member.ndim}-d")
        return arr
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if member.kind == "mask":
            return np.asarray(img.convert("L")) > 127
        if member.kind == "alpha":
            return np.asarray(img.convert("L"))
        return np.asarray(img.convert("RGB"))


MIN_IMAGE_SIDE = 8  # smaller than this is no picture of anything: a reject, not a model input


def as_rgb(value, min_side: int = MIN_IMAGE_SIDE) -> np.ndarray:
    """Any image a row may carry (encoded bytes, HxW gray, HxWx3, HxWx4 RGBA, float in [0, 1] or
    [0, 255]) -> contiguous uint8 HxWx3. RGBA is composited on white, as a cutout is meant to be
    seen. Raises ValueError with the reason for what is not an image."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        with Image.open(io.BytesIO(bytes(value))) as img:
            img.load()
            value = np.asarray(img.convert("RGBA") if img.mode in ("RGBA", "LA", "P") else img.convert("RGB"))
    arr = np.asarray(value)
    if arr.dtype == object or arr.ndim not in (2, 3):
        raise ValueError(f"not an image: dtype {arr.dtype}, shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise ValueError(f"not an image: {arr.shape[2]} channels")
    if min(arr.shape[:2]) < min_side:
        raise ValueError(f"image too small: {arr.shape[0]}x{arr.shape[1]}")
    if arr.dtype != np.uint8:
        f = arr.astype(np.float64)
        if not np.isfinite(f).all():
            raise ValueError("image has NaN or inf pixels")
        arr = np.clip(f * 255.0 if f.max() <= 1.0 else f, 0, 255).round().astype(np.uint8)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif arr.shape[2] == 4:
        alpha = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3] * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(arr)
