"""Collage detection for the MultiID filters (WithAnyone, seed 002, appendix C).

The paper, appendix C, "Filtering and labelling": "Images with low aesthetic scores or those
identified as collages rather than genuine group photos were excluded." It names no method (only
"other auxiliary tools"), so the method below is ours: deterministic numpy/OpenCV, ~30 ms a photo.

Where a collage's tiles meet there is a seam: a perfectly straight, axis-aligned line where the
image jumps along nearly its whole length, one pixel sharp. Natural straight edges (table fronts,
window bars, horizons) are mostly blurred over 2+ pixels by optics and demosaicing, or broken by
something in front. For vertical lines (horizontal ones: the same on the transposed image):

1. Working image: area-resized to at most `across` px (1024) across the lines, so seams stay one
   pixel sharp, and `along` px (256) along them (averaging along a line keeps it sharp, cuts noise).
2. Leading and trailing lines with a standard deviation under `flat` (8 of 255) are cut: letterbox
   bars, frames and the white border around a whole collage are not tiles.
3. At each boundary between adjacent lines the jump |I[k+1] - I[k]| (largest over RGB) is averaged
   in each of `segments` (16) stretches along the line and compared with the jumps one line to either
   side: r = log((jump + noise) / (mean of the neighbours' jumps + noise)). `noise` (8 levels) keeps
   JPEG 8x8 block edges (1-3 levels) in flat areas from looking like seams.
4. score = the `quantile` (0.25) of r over the stretches: the line must stand out on at least 3/4 of
   its length. Lines within `margin` (15%) of the border, of the cut photo or of the input, are
   ignored. score >= `threshold` (0.3: a jump ~1.35x its neighbours') is a seam; of adjacent
   boundaries over it, the best is kept.
5. Two seams at most `max_gutter` (5%) apart with a flat band between are a gutter [start, end]:
   gutters need no detector of their own, each gutter edge is a seam (tile against flat band).

Limits (measured on ../shared/assets, see tests/test_collage.py): tiles whose touching edges look
alike (grass against grass, white backdrop against a white gutter) show no seam. A natural edge that
is sharp and spans the whole width does score like a seam: a table front and a podium rim reach 0.54
and 0.46, and are not flagged only because they lie in the bottom 15%. Inputs under ~768 px make
natural edges sharp too (a photo of window bars: 0.32 at 512 px, 0.14 at 768 px); MultiID loads 1024.
"""
from __future__ import annotations

import cv2
import numpy as np


def _working(image: np.ndarray, axis: str, across: int, along: int) -> tuple[np.ndarray, float]:
    """float32 image whose columns are the candidate lines, and its scale across them."""
    h, w = image.shape[:2]
    if axis == "y":  # resize first, then transpose: the small copy is cheap
        small = cv2.resize(image, (min(w, along), min(h, across)), interpolation=cv2.INTER_AREA)
        return small.transpose(1, 0, 2).astype(np.float32), min(h, across) / h
    small = cv2.resize(image, (min(w, across), min(h, along)), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32), min(w, across) / w


def _busy(line_std: np.ndarray, flat: float) -> slice:
    """The lines from the first to the last that is not flat (flat borders cut)."""
    busy = np.flatnonzero(line_std >= flat)
    return slice(busy[0], busy[-1] + 1) if busy.size else slice(0, 0)


def detect_collage(image: np.ndarray, *, across: int = 1024, along: int = 256, segments: int = 16,
                   quantile: float = 0.25, noise: float = 8.0, threshold: float = 0.3,
                   margin: float = 0.15, flat: float = 8.0, max_gutter: float = 0.05,
                   min_side: int = 32) -> tuple[bool, dict]:
    """(is a collage, evidence) for a uint8 HxWx3 image; the method is in the module docstring.
    evidence, positions in the input's pixels: seams_x / seams_y (x of vertical, y of horizontal
    seams), gutters_x / gutters_y ([start, end]), score_x / score_y (the best line's score; None
    when the image, once its flat borders are cut, is smaller than min_side or has no inner line)."""
    image = np.ascontiguousarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected HxWx3, got shape {image.shape}")
    evidence = {"seams_x": [], "seams_y": [], "gutters_x": [], "gutters_y": [],
                "score_x": None, "score_y": None, "threshold": threshold}
    if min(image.shape[:2]) < min_side:
        return False, evidence
    for axis, side in (("x", image.shape[1]), ("y", image.shape[0])):
        work, scale = _working(image, axis, across, along)
        cols = _busy(work.std(0).max(-1), flat)
        work = work[_busy(work.std(1).max(-1), flat), cols]
        n = work.shape[1]
        if min(work.shape[:2]) < min_side:  # flat, or too little left to hold tiles
            continue
        jump = np.abs(np.diff(work, axis=1)).max(-1)  # [:, k]: between lines k and k+1
        jump = np.stack([part.mean(0) for part in np.array_split(jump, segments)])
        ratio = np.log((jump[:, 1:-1] + noise) / ((jump[:, :-2] + jump[:, 2:]) / 2 + noise))
        score = np.quantile(ratio, quantile, axis=0)
        edge = np.arange(2, n - 1)  # score[j] is the boundary just before line edge[j]
        at = (edge + cols.start) / scale  # the same boundary in the input's pixels
        inner = (edge >= margin * n) & (edge <= (1 - margin) * n)
        inner &= (at >= margin * side) & (at <= (1 - margin) * side)
        if not inner.any():
            continue
        score[~inner] = -np.inf
        evidence[f"score_{axis}"] = round(float(score.max()), 3)
        above = np.flatnonzero(score >= threshold)
        runs = np.split(above, np.flatnonzero(np.diff(above) > 1) + 1) if above.size else []
        seams = [run[np.argmax(score[run])] for run in runs]
        evidence[f"seams_{axis}"] = [round(float(at[j])) for j in seams]
        for a, b in zip(seams, seams[1:]):  # a flat band between two close seams: a gutter
            if edge[b] - edge[a] <= max_gutter * n and work[:, edge[a]:edge[b]].std(0).max(-1).min() < flat:
                evidence[f"gutters_{axis}"].append([round(float(at[a])), round(float(at[b]))])
    return bool(evidence["seams_x"] or evidence["seams_y"]), evidence
