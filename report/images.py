"""Thumbnails for the QA report: every picture on a page is a data URI, so a page is one file that
opens without a network or the shards beside it."""
from __future__ import annotations

import base64
import io

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

THUMB = 256  # longest side of a thumbnail, pixels
GREY = (150, 150, 150)


def palette(i: int) -> tuple[int, int, int]:
    """A colour per identity / instance: tab20's ten saturated colours first, then its ten light
    ones; repeats after 20 (the legend names the id)."""
    i = int(i) % 20
    r, g, b, _ = colormaps["tab20"]((2 * i) % 20 + i // 10)
    return int(r * 255), int(g * 255), int(b * 255)


def hex_color(rgb: tuple[int, int, int]) -> str:
    return "#%02x%02x%02x" % tuple(rgb)


def data_uri(image: Image.Image, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    if fmt == "JPEG":
        image.convert("RGB").save(buf, "JPEG", quality=85)
    else:
        image.save(buf, fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


def thumbnail(image: np.ndarray | Image.Image, side: int = THUMB) -> Image.Image:
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    im = im.convert("RGB")
    scale = side / max(im.size)
    if scale < 1:
        im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.BILINEAR)
    return im


def with_boxes(image: np.ndarray, boxes, colors, labels=None, side: int = THUMB) -> Image.Image:
    """Thumbnail with xyxy boxes (in the image's own pixels) drawn in their colours."""
    im = thumbnail(image, side)
    scale = im.width / np.asarray(image).shape[1]
    draw = ImageDraw.Draw(im)
    width = max(2, im.width // 128)
    for i, (box, color) in enumerate(zip(boxes, colors)):
        x0, y0, x1, y1 = (float(v) * scale for v in box)
        draw.rectangle([x0, y0, x1, y1], outline=color, width=width)
        if labels:
            draw.text((x0 + width + 1, y0 + width), str(labels[i]), fill=color)
    return im


def mask_overlay(image: np.ndarray, mask: np.ndarray, color=(255, 40, 40), alpha: float = 0.5) -> np.ndarray:
    """The subject mask tinted over the image, full size: where the mask is on, alpha of `color`."""
    rgb = np.asarray(image, np.float32)
    on = np.asarray(mask, bool)[..., None]
    tinted = np.where(on, (1 - alpha) * rgb + alpha * np.asarray(color, np.float32), rgb)
    return tinted.round().astype(np.uint8)


def heatmap(values: np.ndarray, size: tuple[int, int], vmin: float = 0.0, vmax: float = 1.0,
            cmap: str = "magma") -> Image.Image:
    """A map on a coarse grid (M_d, IAPO weights) as a colour image of the thumbnail's size, cells
    kept square-edged (nearest) so the grid stays visible."""
    v = np.asarray(values, np.float32)
    span = vmax - vmin if vmax > vmin else 1.0
    rgba = colormaps[cmap](np.clip((v - vmin) / span, 0, 1))
    im = Image.fromarray((rgba[..., :3] * 255).round().astype(np.uint8))
    return im.resize(size, Image.NEAREST)
