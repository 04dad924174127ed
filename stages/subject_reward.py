"""UPER's subject-consistency reward R_sub (seed 001, sec. 3.1.3, with the appendix B.1 variant).

Sec. 3.1.3: both images are cut into a grid of N overlapping 224 x 224 patches with stride 112; each
spatially corresponding pair (p_k^gen, p_k^ref) is embedded by DINOv2 and
    phi_k = sim(f(p_k^gen), f(p_k^ref))                                      (eq. 1)
    R_sub = 1/N sum_k phi_k.
App. B.1 adds three components: the global CLS cosine with both images resized to the encoder's
native resolution, the mean cosine of N random corresponding crops, and a penalty when the
similarity is too high (copy-paste). It says the final R_sub is "a weighted combination" and gives
neither the weights nor the penalty's form; ours are in `subject_reward`.

"Spatially corresponding" needs one grid for both images: both are resized to `size` x `size`
first (448 by default, the size the 224 / 112 grid tiles exactly with 3 x 3 patches). The views
of an image are, in order: the whole image, the grid patches (row-major), the random crops (the
same boxes in both images). The encoder sees each view resized to its input size, uncropped.

Numpy only: the pipeline embeds the views with the image_encoder worker; `r_sub` takes any
feature function, so tests drive it with a deterministic one and the trainer can reuse the layout.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image

COMPONENTS = ("patch", "cls", "crops")


def patch_grid(height: int, width: int, patch: int = 224, stride: int = 112) -> list[tuple[int, int, int, int]]:
    """Boxes (x0, y0, x1, y1) of the sec. 3.1.3 grid, row-major: every stride from the top-left
    corner at which a whole patch fits (448 x 448 -> 3 x 3 = 9; a remainder under a stride at the
    right / bottom is not covered)."""
    if min(height, width) < patch:
        raise ValueError(f"{width}x{height} is smaller than one {patch} px patch")
    ys = range(0, height - patch + 1, stride)
    xs = range(0, width - patch + 1, stride)
    return [(x, y, x + patch, y + patch) for y in ys for x in xs]


def random_boxes(height: int, width: int, size: int, n: int, rng: np.random.Generator) -> list[tuple[int, int, int, int]]:
    """App. B.1: n random crop boxes of size x size, uniform over the positions that fit."""
    size = min(size, height, width)
    ys = rng.integers(0, height - size + 1, n)
    xs = rng.integers(0, width - size + 1, n)
    return [(int(x), int(y), int(x) + size, int(y) + size) for x, y in zip(xs, ys)]


def resized(image: np.ndarray, size: int) -> np.ndarray:
    if image.shape[:2] == (size, size):
        return image
    return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def corresponding_views(ref: np.ndarray, target: np.ndarray, *, size: int = 448, patch: int = 224,
                        stride: int = 112, crops: int = 0, crop_size: int = 224,
                        rng: np.random.Generator | None = None) -> tuple[list, list, int]:
    """(views of ref, views of target, number of grid patches): [whole image, grid patches, random
    crops], the k-th view of one image at the same place as the k-th of the other."""
    a, b = resized(ref, size), resized(target, size)
    boxes = patch_grid(size, size, patch, stride)
    n_patch = len(boxes)
    if crops:
        boxes = boxes + random_boxes(size, size, crop_size, crops, rng or np.random.default_rng(0))
    views_a = [a] + [np.ascontiguousarray(a[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
    views_b = [b] + [np.ascontiguousarray(b[y0:y1, x0:x1]) for x0, y0, x1, y1 in boxes]
    return views_a, views_b, n_patch


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine of each row of a with the same row of b."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)


def subject_reward(cosines, n_patch: int, weights: dict[str, float] | None = None,
                   copy_paste_similarity: float | None = 0.95, copy_paste_penalty: float = 2.0) -> dict:
    """The components and R_sub from the cosines of the views of corresponding_views.

    - r_sub_cls: cosine of the whole images (app. B.1 global similarity).
    - r_sub_patch: mean cosine over the grid patches (sec. 3.1.3: R_sub itself).
    - r_sub_crops: mean cosine over the random crops (app. B.1), None without crops.
    - similarity s: the weighted mean of the components present (default weights: patch only, so
      s is the sec. 3.1.3 R_sub).
    - r_sub_penalty = copy_paste_penalty * max(0, s - copy_paste_similarity) (app. B.1 names a
      threshold but no form; with the default slope 2 the reward falls above the threshold as
      fast as it rose below it, so it peaks at the threshold, not at a copy). None: no penalty.
    - r_sub = s - r_sub_penalty.
    """
    cos = np.asarray(cosines, np.float64).ravel()
    if cos.size < 1 + n_patch or n_patch < 1 or not np.isfinite(cos).all():
        raise ValueError(f"expected 1 + {n_patch}+ finite cosines, got {cos.tolist()}")
    parts = {"cls": float(cos[0]), "patch": float(cos[1:1 + n_patch].mean()),
             "crops": float(cos[1 + n_patch:].mean()) if cos.size > 1 + n_patch else None}
    s, penalty = combine(parts, weights, copy_paste_similarity, copy_paste_penalty)
    return {"r_sub": s - penalty, "r_sub_patch": parts["patch"], "r_sub_cls": parts["cls"],
            "r_sub_crops": parts["crops"], "r_sub_penalty": penalty}


DEFAULT_WEIGHTS = {"patch": 1.0, "cls": 0.0, "crops": 0.0}  # sec. 3.1.3: R_sub is the patch mean


def combine(parts: dict, weights: dict[str, float] | None = None, copy_paste_similarity: float | None = 0.95,
            copy_paste_penalty: float = 2.0):
    """(similarity s, penalty) from the components present (None: absent): the one R_sub rule of
    the data pipeline (floats) and of the trainer's ReFL reward ([B] tensors, differentiable).
    R_sub = s - penalty."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    used = {c: float(weights.get(c, 0.0)) for c in COMPONENTS if parts.get(c) is not None and weights.get(c, 0.0)}
    if not used:
        raise ValueError(f"no component with a weight: weights {weights}, components {sorted(parts)}")
    s = sum(w * parts[c] for c, w in used.items()) / sum(used.values())
    if copy_paste_similarity is None:
        return s, 0.0 * s
    excess = s - copy_paste_similarity
    return s, copy_paste_penalty * (excess.clamp(min=0) if hasattr(excess, "clamp") else max(0.0, excess))


def r_sub(ref: np.ndarray, target: np.ndarray, features: Callable[[list[np.ndarray]], np.ndarray], *,
          size: int = 448, patch: int = 224, stride: int = 112, crops: int = 0, crop_size: int = 224,
          rng: np.random.Generator | None = None, **reward) -> dict:
    """R_sub of (reference, target) with `features(list of HxWx3 uint8) -> [n, D]` (DINOv2's CLS
    per view in the pipeline). `reward`: subject_reward's weights and penalty options."""
    views_a, views_b, n_patch = corresponding_views(ref, target, size=size, patch=patch, stride=stride,
                                                    crops=crops, crop_size=crop_size, rng=rng)
    f = np.asarray(features(views_a + views_b))
    n = len(views_a)
    return subject_reward(row_cosines(f[:n], f[n:]), n_patch, **reward)
