"""The Detail-Preserving Complexity Estimator M_d of FocusDPO (seed 000, section 4.2, eq. 7-8).

M_d weights the FocusDPO loss towards information-rich regions (fine texture, faces). The paper's
recipe: the Shannon entropy of each patch's grayscale intensity distribution (eq. 7), min-max
normalised over the image (eq. 8). What the paper leaves open, decided here:

- Grayscale: the paper says only "grayscale pixel intensity"; we use ITU-R BT.601 luma
  Y = 0.299 R + 0.587 G + 0.114 B (OpenCV's RGB2GRAY, rounded to uint8), the usual meaning.
- Patches: the paper writes "a patch centered at pixel p" without a size; we tile the image with
  non-overlapping `patch` x `patch` cells (16 by default: one cell per FLUX latent token after
  VAE /8 and 2x2 packing). The map has shape (H // patch, W // patch); the remainder rows and
  columns at the bottom and right are cropped (stages.photos.load_image already makes sides
  multiples of 16, so nothing is lost there).
- Entropy base: the paper does not name one; we use log base 2 (bits). The base only scales every
  C_p by the same constant, which eq. 8 divides out, so M_d does not depend on it.
- Histogram: `bins` equal-width bins over the 8-bit range [0, 256); 256 bins = one per level.
- A flat image (C_max == C_min) has no region more complex than another: M_d is all zeros (eq. 8
  would divide by zero).

Stored as float16 (schemas/dip.py, member "complexity"): values in [0, 1] need no more.
"""
from __future__ import annotations

import cv2
import numpy as np

from runtime.rows import Reject
from schemas.contract import as_rgb


def entropy(values, bins: int = 256) -> float:
    """Shannon entropy in bits of the histogram of 8-bit intensities `values` (any shape) over
    `bins` equal-width bins of [0, 256). seed 000, eq. 7: CalculateComplexity(patch_p)."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return 0.0
    counts = np.bincount(_bin_index(v, bins), minlength=bins).astype(np.float64)
    p = counts[counts > 0] / v.size
    return float(-(p * np.log2(p)).sum())


def grayscale(image: np.ndarray) -> np.ndarray:
    """Any image a row may carry -> uint8 HxW luma (ITU-R BT.601, OpenCV RGB2GRAY)."""
    arr = np.asarray(image)
    if arr.ndim == 2 and arr.dtype == np.uint8:
        return arr
    try:
        rgb = as_rgb(arr, min_side=1)
    except ValueError as e:
        raise Reject("corrupt_image", str(e)) from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def complexity_map(image: np.ndarray, patch: int = 16, bins: int = 256) -> np.ndarray:
    """M_d: float16 (H // patch, W // patch) in [0, 1]. seed 000, eq. 7 (per-patch entropy C_p)
    and eq. 8 (M_d = (C_p - C_min) / (C_max - C_min) over all patches of the image)."""
    if patch < 1 or bins < 1:
        raise ValueError(f"patch and bins must be >= 1, got patch={patch}, bins={bins}")
    gray = grayscale(image)
    gh, gw = gray.shape[0] // patch, gray.shape[1] // patch
    if gh == 0 or gw == 0:
        raise Reject("too_small", f"{gray.shape[0]}x{gray.shape[1]} image has no whole {patch}x{patch} patch")
    # (gh, patch, gw, patch) -> one row of patch*patch intensities per cell, row-major cells
    cells = gray[: gh * patch, : gw * patch].reshape(gh, patch, gw, patch).swapaxes(1, 2).reshape(gh * gw, -1)
    c = _entropies(cells, bins)  # seed 000, eq. 7
    return min_max(c).reshape(gh, gw).astype(np.float16)


def min_max(c: np.ndarray) -> np.ndarray:
    """seed 000, eq. 8: M_d = (C_p - C_min) / (C_max - C_min) over every region of the image; a
    flat map (0 / 0: no region more complex than another) is all 0. The trainer applies it again
    after pooling M_d to its token grid, where averaging cells moves the min and max off 0 and 1."""
    c = np.asarray(c, np.result_type(c, np.float32))  # float64 entropies stay float64
    c_min, c_max = c.min(), c.max()
    if c_max == c_min:
        return np.zeros_like(c)
    return (c - c_min) / (c_max - c_min)


def _bin_index(v: np.ndarray, bins: int) -> np.ndarray:
    v = np.clip(v.astype(np.int64), 0, 255)
    return v if bins == 256 else (v * bins) // 256


def _entropies(cells: np.ndarray, bins: int) -> np.ndarray:
    """Entropy in bits of each row of `cells` (n, k), all rows at once: one bincount over
    (row, bin) pairs instead of n histogram calls."""
    n, k = cells.shape
    idx = np.arange(n, dtype=np.int64)[:, None] * bins + _bin_index(cells, bins)
    counts = np.bincount(idx.reshape(-1), minlength=n * bins).reshape(n, bins).astype(np.float64)
    p = counts / k
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(counts > 0, p * np.log2(np.where(counts > 0, p, 1.0)), 0.0)
    return -terms.sum(axis=1)
