"""Subject masks M_prior and what DIP does with them (seed 000, section 4.1): GroundingSAM2 gives
one mask per subject; their union is M_prior; the loser x_l is the winner x_w with "subject-relevant
pixels" modified "while preserving surrounding context", so everything outside the (dilated) mask
is copied back from x_w bit for bit.

Masks are HxW bool (anything non-zero counts as inside). Boxes are float32 xyxy in pixel-edge
coordinates: a mask whose only pixel is row r, column c has the box [c, r, c + 1, r + 1], the
convention of the grounding worker's boxes, so a box and the pixels it covers agree.

Bad data (an empty mask, shapes that do not match) raises runtime.rows.Reject with a reason.
"""
from __future__ import annotations

import math

import cv2
import numpy as np

from runtime.rows import Reject


def as_mask(mask) -> np.ndarray:
    """HxW bool from a bool / 0-1 / 0-255 array (an HxWx1 array is squeezed)."""
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise Reject("bad_mask", f"mask of shape {m.shape}, expected HxW")
    return m.astype(bool) if m.dtype != bool else m


def mask_area(mask) -> float:
    """Fraction of the image the mask covers, in [0, 1] (0.0 for a 0-pixel array)."""
    m = as_mask(mask)
    return float(m.sum()) / m.size if m.size else 0.0


def union(masks) -> np.ndarray:
    """M_prior: the union over subjects of the per-subject masks (a list of HxW or an [n, H, W])."""
    ms = _mask_list(masks)
    out = np.zeros(ms[0].shape, bool)
    for m in ms:
        out |= m
    return out


def box_of(mask) -> np.ndarray:
    """Tight float32 xyxy box of the mask's pixels (pixel edges: x1, y1 exclusive)."""
    m = as_mask(mask)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        raise Reject("empty_mask", "no pixel to box")
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], np.float32)


def disk(px: int) -> np.ndarray:
    """Euclidean disk structuring element of radius px: (2px+1)^2 uint8, 1 where dx^2 + dy^2 <= px^2.
    (cv2's MORPH_ELLIPSE of the same size is fatter at the diagonals; a true disk makes `dilate`
    mean "every pixel within px of the mask".)"""
    y, x = np.ogrid[-px : px + 1, -px : px + 1]
    return (x * x + y * y <= px * px).astype(np.uint8)


def dilate(mask, px: int) -> np.ndarray:
    """The mask grown by px pixels (disk structuring element). px = 0 returns a copy."""
    m = as_mask(mask)
    if px < 0:
        raise ValueError(f"dilation must be >= 0 px, got {px}")
    if px == 0:
        return m.copy()
    return cv2.dilate(m.astype(np.uint8), disk(int(px))).astype(bool)


def masked_crop(image: np.ndarray, mask, box, pad: int = 16, fill: int = 255) -> np.ndarray:
    """The region the VLM is asked to caption: the image cropped to `box` grown by `pad` px (clipped
    to the image), with every pixel outside `mask` set to `fill` so only the subject is seen.
    uint8, same channels as `image`."""
    img = np.asarray(image)
    m = as_mask(mask)
    if img.shape[:2] != m.shape:
        raise Reject("mask_shape_mismatch", f"image {img.shape[:2]} vs mask {m.shape}")
    b = np.asarray(box, np.float64).reshape(-1)
    if b.size != 4 or not np.isfinite(b).all():
        raise Reject("bad_box", f"box {b.tolist()}")
    h, w = m.shape
    x0, y0 = max(0, math.floor(b[0]) - pad), max(0, math.floor(b[1]) - pad)
    x1, y1 = min(w, math.ceil(b[2]) + pad), min(h, math.ceil(b[3]) + pad)
    if x1 <= x0 or y1 <= y0:
        raise Reject("empty_crop", f"box {b.tolist()} pad {pad} outside {w}x{h} image")
    crop = np.array(img[y0:y1, x0:x1], dtype=np.uint8, copy=True)
    crop[~m[y0:y1, x0:x1]] = fill
    return crop


def inpaint_opencv(image: np.ndarray, mask, dilation_px: int = 16, radius: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """A CPU loser for the tiny profile and tests: OpenCV Telea inpainting inside the mask dilated
    by `dilation_px` (so the seam of the subject is repainted too, as FLUX Fill would), and the
    input copied back exactly outside it (seed 000, section 4.1: "preserving surrounding
    context"). Returns (x_l, dilated mask)."""
    img = np.asarray(image)
    m = as_mask(mask)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise Reject("bad_image", f"expected uint8 HxWx3, got {img.dtype} {img.shape}")
    if img.shape[:2] != m.shape:
        raise Reject("mask_shape_mismatch", f"image {img.shape[:2]} vs mask {m.shape}")
    if not m.any():
        raise Reject("empty_mask", "nothing to inpaint")
    region = dilate(m, dilation_px)
    painted = cv2.inpaint(np.ascontiguousarray(img), region.astype(np.uint8) * 255, float(radius), cv2.INPAINT_TELEA)
    # cv2.inpaint leaves unmasked pixels alone today; the copy-back makes "outside is untouched" a
    # property of this function rather than of an OpenCV version.
    loser = np.where(region[..., None], painted, img).astype(np.uint8)
    return loser, region


def mask_gate(masks, area_min: float, area_max: float) -> None:
    """Reject a sample whose subject masks are unusable: any subject's mask empty ("empty_mask"),
    or M_prior covering less than area_min ("mask_too_small") or more than area_max
    ("mask_too_large") of the image. Thresholds are the pipeline config's."""
    ms = _mask_list(masks)
    for i, m in enumerate(ms):
        if not m.any():
            raise Reject("empty_mask", f"subject {i} of {len(ms)}")
    area = mask_area(union(ms))
    if area < area_min:
        raise Reject("mask_too_small", f"area {area:.4f} < {area_min}")
    if area > area_max:
        raise Reject("mask_too_large", f"area {area:.4f} > {area_max}")


def _mask_list(masks) -> list[np.ndarray]:
    if isinstance(masks, np.ndarray) and masks.ndim == 2:
        masks = [masks]
    ms = [as_mask(m) for m in (list(masks) if masks is not None else [])]
    if not ms:
        raise Reject("empty_mask", "no subject masks")
    if any(m.shape != ms[0].shape for m in ms):
        raise Reject("mask_shape_mismatch", f"masks of shapes {[m.shape for m in ms]}")
    return ms
