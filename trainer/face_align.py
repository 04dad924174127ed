"""GT-aligned ArcFace crops for WithAnyone's ID loss (seed 002, sec. 5.1 eq. 4 and app. E.1 eq. 14).

Eq. 14: L_id = 1 - cos(f(g(T), G), f(g(T), T)): the generated image G is aligned with the landmarks
g(T) detected on the ground truth T, never with landmarks detected on G, because G is a one-step
prediction from a noisy latent whose landmarks are unreliable. So the transform comes from data
(the 5 GT landmarks, no gradient) and only the warp of G has to be differentiable.

The transform is insightface's: the least-squares similarity (Umeyama) from the 5 landmarks to its
`arcface_dst` template scaled to `size` / 112, exactly what `estimate_norm` computes. We call
skimage's `SimilarityTransform.from_estimate` on that template ourselves because `estimate_norm`
uses `SimilarityTransform.estimate`, deprecated in scikit-image 0.26 (FutureWarning on every call);
tests check that the matrices agree.

Pixel convention: insightface landmarks and `cv2.warpAffine` put the centre of pixel (row i, col j)
at (x, y) = (j, i). grid_sample with align_corners=False puts pixel j's centre at the normalised
coordinate (2j + 1) / W - 1, so an output pixel centre (x, y) samples the input at
M^-1 (x, y, 1) converted with u = (2 x_src + 1) / W - 1. With zero padding outside the image this
reproduces insightface's `norm_crop` (cv2.warpAffine, borderValue 0) up to cv2's 1/32 px
fixed-point interpolation weights.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

ARCFACE_SIZE = 112


def arcface_template(size: int = ARCFACE_SIZE) -> np.ndarray:
    """insightface's 5-point ArcFace template [5, 2] (eyes, nose, mouth corners) for a size x size crop."""
    from insightface.utils.face_align import arcface_dst

    if size % ARCFACE_SIZE:
        raise ValueError(f"ArcFace crops are multiples of {ARCFACE_SIZE} px, got {size}")
    return np.asarray(arcface_dst, np.float64) * (size / ARCFACE_SIZE)


def arcface_matrix(landmarks, size: int = ARCFACE_SIZE) -> np.ndarray:
    """The 2 x 3 similarity taking image pixel coordinates to crop pixel coordinates (estimate_norm's M)
    for one face's 5 landmarks [5, 2] (x, y)."""
    from skimage.transform import SimilarityTransform

    lmk = np.asarray(landmarks, np.float64)
    if lmk.shape != (5, 2) or not np.isfinite(lmk).all():
        raise ValueError(f"expected 5 finite (x, y) landmarks, got {lmk.tolist()}")
    dst = arcface_template(size)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(lmk, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(lmk, dst)
    if not ok or not np.isfinite(tform.params).all() or abs(np.linalg.det(tform.params[:2, :2])) < 1e-12:
        raise ValueError(f"degenerate landmarks, no similarity to the ArcFace template: {lmk.tolist()}")
    return tform.params[:2, :]


def arcface_align(images: torch.Tensor, landmarks, size: int = ARCFACE_SIZE) -> torch.Tensor:
    """Crop [B, 3, size, size] of images [B, 3, H, W] aligned by the GT landmarks [B, 5, 2] given in
    the pixel coordinates of `images` (scale them with the image: a resize by s maps x to
    (x + 0.5) * s - 0.5). Differentiable w.r.t. images (bilinear grid_sample); the landmarks are data.
    Values are passed through as they come: the ArcFace input normalisation is the caller's."""
    if images.dim() != 4:
        raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
    b, _, h, w = images.shape
    lmk = landmarks.detach().cpu().numpy() if torch.is_tensor(landmarks) else np.asarray(landmarks)
    if lmk.shape != (b, 5, 2):
        raise ValueError(f"landmarks must be [{b}, 5, 2], got {lmk.shape}")
    # crop pixel -> image pixel: the inverse of each similarity, in float64 before the cast
    inv = []
    for m in (arcface_matrix(l, size) for l in lmk):
        full = np.vstack([m, [0.0, 0.0, 1.0]])
        inv.append(np.linalg.inv(full)[:2])
    inv = torch.as_tensor(np.stack(inv), dtype=torch.float64, device=images.device)  # [B, 2, 3]
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64, device=images.device),
                            torch.arange(size, dtype=torch.float64, device=images.device), indexing="ij")
    pix = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(-1, 3)  # output pixel centres
    src = torch.einsum("bij,nj->bni", inv, pix)  # [B, size*size, 2] image pixel coordinates
    scale = torch.tensor([w, h], dtype=torch.float64, device=images.device)
    grid = ((2 * src + 1) / scale - 1).reshape(b, size, size, 2)  # align_corners=False convention
    return F.grid_sample(images, grid.to(images.dtype), mode="bilinear", padding_mode="zeros",
                         align_corners=False)
