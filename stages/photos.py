"""Real photos as DIP input: DreamBench same-subject pairs (reference x_r, winner x_w) and the one
image loader every stage that opens a file uses.

DreamBench (the DreamBooth dataset, ../shared/assets/images/dreambench): one folder of 4-6 photos
per subject and `prompts_and_classes.txt`, which lists each subject's class noun and 25 prompts for
objects and 25 for live subjects. The class list itself is not split into the two groups; the live
subjects of DreamBench are its cats and dogs, so a subject whose class is in LIVE_CLASSES gets the
live-subject prompts and the DIP category "animal"; every other subject is an "object".
"""
from __future__ import annotations

import io
import math
import os
import re
import stat

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from runtime.inputs import is_uri, join, list_subjects, open_bytes, read_text
from runtime.rows import Reject
from schemas.contract import as_rgb

LIVE_CLASSES = frozenset({"cat", "dog"})  # DreamBench's live subjects: cat, cat2, dog, dog2-dog8
# FLUX works on 16 px units (VAE /8, then 2x2 token packing) and M_d uses 16 px patches
SIDE_MULTIPLE = 16


# --- DreamBench --------------------------------------------------------------------------------

def read_prompts_and_classes(path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """`prompts_and_classes.txt` -> ({subject: class noun}, {"object": [...], "live": [...]}) with
    the prompt templates as format strings on (unique_token, class_token)."""
    text = read_text(str(path))
    classes = dict(re.findall(r"^([A-Za-z0-9_]+),([^\n,]+?)\s*$", text, re.M))
    classes.pop("subject_name", None)  # the CSV header
    prompts = {}
    for group, header in (("object", "Object Prompts"), ("live", "Live Subject Prompts")):
        start = text.find(header)
        if start < 0:
            raise ValueError(f"{path}: no '{header}' section")
        end = text.find("]", start)
        prompts[group] = re.findall(r"'([^']*\{1\}[^']*)'", text[start:end])
    return classes, prompts


def dreambench_prompt(template: str, class_noun: str) -> str:
    """A DreamBench template with the class noun filled in and no unique token ("a dog in the snow")."""
    return re.sub(r"\s+", " ", template.format("", class_noun)).strip()


def dreambench_pairs(root, pairs_per_subject: int = 1) -> list[dict]:
    """Same-subject photo pairs, `pairs_per_subject` per subject (at most n(n-1) for n photos):
    {"subject", "class_noun", "category", "ref_path", "win_path", "prompt"}.

    Deterministic: photos in name order, pairs in pair_order. The prompt cycles through its group's 25 prompts across
    subjects and pairs. A subject with fewer than two photos still gets a row, with win_path None,
    so the loader rejects it ("missing_file") instead of it disappearing silently."""
    classes, prompts = read_prompts_and_classes(join(str(root), "prompts_and_classes.txt"))
    pairs = []
    for s_idx, (name, photos) in enumerate(subject_folders(root)):
        class_noun = classes.get(name, name.replace("_", " "))
        live = class_noun in LIVE_CLASSES
        templates = prompts["live" if live else "object"]
        n = len(photos)
        for k, (i, j) in enumerate(pair_order(n, pairs_per_subject)):
            template = templates[(s_idx * pairs_per_subject + k) % len(templates)]
            pairs.append({
                "subject": name,
                "class_noun": class_noun,
                "category": "animal" if live else "object",
                "ref_path": photos[i] if n else None,
                "win_path": photos[j] if j is not None else None,
                "prompt": dreambench_prompt(template, class_noun),
            })
    return pairs


def pair_order(n: int, k: int) -> list[tuple[int, int | None]]:
    """The first k (reference, target) index pairs of n photos of one subject: (i, (i + d) % n) for
    d = 1, 2, ... and i = 0..n-1, neighbours first and each photo a reference once before any
    repeats; [(0, None)] when there are fewer than two photos (the row is kept, to be rejected)."""
    order = [(i, (i + d) % n) for d in range(1, n) for i in range(n)]
    return order[: max(1, k)] if order else [(0, None)]


def subject_folders(root) -> list[tuple[str, list[str]]]:
    """(folder name, its image paths in name order) for each sub-folder of root, in name order, on
    any filesystem (runtime/inputs.py: a subject's photos are paired, so its folder is listed whole;
    photo folders are curated sets, listed on the driver)."""
    return list_subjects(str(root))


# --- loading -----------------------------------------------------------------------------------

MAX_INPUT_BYTES = 256 << 20  # an input file larger than this is a reject (`max_input_bytes`)
# what load_image can reject with: the rejects of every step that loads images
IMAGE_REJECTS = ("missing_file", "unreadable_file", "file_too_large", "corrupt_image", "decompression_bomb",
                 "too_small")

def load_image(path_or_bytes, max_side: int = 1024, min_side: int = 16, max_pixels: int | None = None,
               side_multiple: int = SIDE_MULTIPLE, max_bytes: int | None = MAX_INPUT_BYTES) -> np.ndarray:
    """A file path or encoded bytes -> uint8 HxWx3 RGB, ready for FLUX and M_d.

    - EXIF orientation applied; alpha composited on white (schemas.contract.as_rgb); 16-bit and
      float images scaled to 8 bits over their range (never clipped); CMYK, grayscale and palette
      images converted; an animation is its first frame.
    - Long side scaled down to <= max_side (aspect kept, Lanczos); never scaled up.
    - Then each side is rounded down to a multiple of 16 (`side_multiple`) by a center crop of at
      most 15 px (the top / left get the smaller half), so FLUX and the 16 px complexity grid fit
      exactly; side_multiple=1 keeps every pixel.
    Rejects: "missing_file" (None, no such file), "unreadable_file" (permissions, a directory, not
    a regular file), "file_too_large" (more than max_bytes, checked before the file is read),
    "corrupt_image" (not an image, truncated), "decompression_bomb" (more than max_pixels pixels;
    default PIL's Image.MAX_IMAGE_PIXELS, read at call time; checked from the header before any
    pixel is decoded), "too_small" (a side < max(min_side, 16) before or after resizing/cropping).
    """
    cap = Image.MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    data = _read_bytes(path_or_bytes, max_bytes)
    try:
        with Image.open(io.BytesIO(data)) as img:
            w, h = img.size
            if cap is not None and w * h > cap:
                raise Reject("decompression_bomb", f"{w}x{h} = {w * h} pixels > cap {cap}")
            if min(w, h) < max(min_side, SIDE_MULTIPLE):
                raise Reject("too_small", f"{w}x{h}")
            scale = min(1.0, max_side / max(w, h))
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            img.draft("RGB", size)  # JPEG: decode at the smallest DCT scale still >= size
            img.load()
            img = _eight_bit(ImageOps.exif_transpose(img))
            img = img.convert("RGBA") if _has_alpha(img) else img.convert("RGB")
            if scale < 1.0:
                w2, h2 = img.size
                scale = min(1.0, max_side / max(w2, h2))
                img = img.resize((max(1, round(w2 * scale)), max(1, round(h2 * scale))), Image.LANCZOS)
            arr = np.asarray(img)
    except Reject:
        raise
    except Image.DecompressionBombError as e:  # PIL's own hard limit (2x its cap)
        raise Reject("decompression_bomb", str(e)) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        # truncated data and bad headers surface as OSError / SyntaxError from PIL's plugins
        raise Reject("corrupt_image", f"{type(e).__name__}: {e}") from None
    arr = as_rgb(arr, min_side=1)
    arr = _crop_to_multiple(arr, side_multiple)
    if min(arr.shape[:2]) < max(min_side, SIDE_MULTIPLE):
        raise Reject("too_small", f"{arr.shape[1]}x{arr.shape[0]} after resizing to max side {max_side}")
    return arr


def fit_image(arr: np.ndarray, max_side: int) -> np.ndarray:
    """An array image as load_image leaves a file: long side scaled down to <= max_side (Lanczos),
    sides cropped to multiples of 16."""
    h, w = arr.shape[:2]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        arr = np.asarray(Image.fromarray(arr).resize(size, Image.LANCZOS))
    return _crop_to_multiple(arr, SIDE_MULTIPLE)


def _read_bytes(path_or_bytes, max_bytes: int | None) -> bytes:
    """The file's (or the URI's) bytes; never more than max_bytes are read (a listed /dev/zero or a huge file is
    a reject, not an exhausted machine)."""
    if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
        if max_bytes is not None and len(path_or_bytes) > max_bytes:
            raise Reject("file_too_large", f"{len(path_or_bytes)} bytes > max_input_bytes {max_bytes}")
        return bytes(path_or_bytes)
    if path_or_bytes is None or (isinstance(path_or_bytes, float) and math.isnan(path_or_bytes)):
        raise Reject("missing_file", "no path")
    path = os.fspath(path_or_bytes)
    if is_uri(path):  # s3://, gs://, ...: through its filesystem (runtime/inputs.py)
        return open_bytes(path, max_bytes)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise Reject("unreadable_file", f"{path}: not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise Reject("file_too_large", f"{path}: {info.st_size} bytes > max_input_bytes {max_bytes}")
        with open(path, "rb") as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except FileNotFoundError:
        raise Reject("missing_file", path) from None
    except OSError as e:  # no permission
        raise Reject("unreadable_file", f"{path}: {type(e).__name__}: {e}") from None
    if max_bytes is not None and len(data) > max_bytes:  # it grew while being read
        raise Reject("file_too_large", f"{path}: more than max_input_bytes {max_bytes}")
    return data


def _eight_bit(img: Image.Image) -> Image.Image:
    """16-bit and 32-bit integer and float images as 8-bit grey over their range: PIL's
    convert("RGB") clips them instead (a 16-bit PNG comes out almost white)."""
    if img.mode not in ("I", "F") and not img.mode.startswith("I;16"):
        return img
    a = np.asarray(img, dtype=np.float64)
    if not np.isfinite(a).all():
        raise Reject("corrupt_image", f"{img.mode} image with NaN or inf pixels")
    if img.mode == "F" and a.min() >= 0.0 and a.max() <= 1.0:
        top = 1.0  # float images in [0, 1]
    elif img.mode.startswith("I;16") or a.max() <= 65535:
        top = 255.0 if img.mode in ("I", "F") and a.max() <= 255 else 65535.0
    else:
        top = a.max()
    return Image.fromarray(np.clip(a / top * 255.0, 0, 255).round().astype(np.uint8), "L")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)


def _crop_to_multiple(arr: np.ndarray, k: int) -> np.ndarray:
    h, w = arr.shape[:2]
    dh, dw = h % k, w % k
    return np.ascontiguousarray(arr[dh // 2 : h - (dh - dh // 2), dw // 2 : w - (dw - dw // 2)])
