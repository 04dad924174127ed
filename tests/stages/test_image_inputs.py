"""stages.photos.load_image on the images users really have: 16-bit and float, CMYK, grayscale,
palette, EXIF-rotated, animated, truncated, too large, not a file."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from runtime.rows import Reject
from stages.photos import load_image

H, W = 48, 64


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def ramp16() -> np.ndarray:
    """A horizontal ramp over the whole 16-bit range: 0 at the left, 65535 at the right."""
    return np.tile(np.linspace(0, 65535, W), (H, 1)).round().astype(np.uint16)


def test_16_bit_png_is_scaled_not_clipped():
    out = load_image(encoded(Image.fromarray(ramp16()), "PNG"), side_multiple=1)
    assert out.dtype == np.uint8 and out.shape == (H, W, 3)
    grey = out[..., 0].astype(int)
    # PIL's convert("RGB") would make every pixel above 255 white: 99 % of this ramp
    assert (grey == 255).mean() < 0.05 and grey[:, 0].max() == 0 and grey[:, -1].min() == 255
    assert np.all(np.diff(grey[0]) >= 0) and 120 <= grey[0, W // 2] <= 135  # the middle is mid-grey


@pytest.mark.parametrize("scale, top", [(1.0, 1.0), (255.0, 255.0)])
def test_float_tiff_is_scaled_over_its_range(scale, top):
    a = (np.tile(np.linspace(0, 1, W), (H, 1)) * scale).astype(np.float32)
    out = load_image(encoded(Image.fromarray(a, "F"), "TIFF"), side_multiple=1)
    assert out[0, 0, 0] == 0 and out[0, -1, 0] == 255 and 120 <= out[0, W // 2, 0] <= 135


def test_cmyk_grayscale_and_palette_become_rgb():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, : W // 2] = (200, 30, 30)
    rgb[:, W // 2:] = (30, 30, 200)
    cmyk = load_image(encoded(Image.fromarray(rgb).convert("CMYK"), "JPEG", quality=95), side_multiple=1)
    assert abs(int(cmyk[H // 2, 4, 0]) - 200) < 12 and abs(int(cmyk[H // 2, -4, 2]) - 200) < 12
    grey = load_image(encoded(Image.fromarray(rgb).convert("L"), "PNG"), side_multiple=1)
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    assert (load_image(encoded(pal, "PNG"), side_multiple=1)[H // 2, 4] == (200, 30, 30)).all()
    # the red half transparent: composited on white
    assert (load_image(encoded(pal, "PNG", transparency=pal.getpixel((0, 0))), side_multiple=1)[H // 2, 4] == 255).all()


def test_exif_rotation_is_applied():
    img = Image.fromarray(np.zeros((H, W, 3), np.uint8))
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    out = load_image(encoded(img, "JPEG", exif=exif), side_multiple=1)
    assert out.shape[:2] == (W, H)


def test_an_animation_is_its_first_frame():
    frames = [Image.fromarray(np.full((H, W, 3), v, np.uint8)) for v in (10, 240)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100)
    assert load_image(buf.getvalue(), side_multiple=1).mean() < 40


def test_truncated_oversize_and_non_files_are_rejects(tmp_path):
    data = encoded(Image.fromarray(np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(Reject) as e:
        load_image(data[: len(data) // 2])
    assert e.value.reason == "corrupt_image"
    big = tmp_path / "big.png"
    big.write_bytes(data + b"\0" * 2000)
    with pytest.raises(Reject) as e:
        load_image(str(big), max_bytes=1000)
    assert e.value.reason == "file_too_large"
    with pytest.raises(Reject) as e:
        load_image(data, max_bytes=100)
    assert e.value.reason == "file_too_large"
    for path in ("/dev/zero", str(tmp_path)):  # read whole, /dev/zero would never end
        with pytest.raises(Reject) as e:
            load_image(path)
        assert e.value.reason == "unreadable_file" and "not a regular file" in e.value.detail


def test_nan_scores_are_rejects_in_every_gate():
    """A NaN passes every comparison, so each gate on a score rejects it by name."""
    from stages import dip, uper

    with pytest.raises(Reject) as e:
        dip.encoder_gate({"encoder_cosine": float("nan")}, cosine_min=0.5, copy_paste=0.98, qa=True)
    assert e.value.reason == "nan_score"
    with pytest.raises(Reject) as e:
        uper.foreground_gate({"ref_fg_fraction": float("nan"), "ref_on_white": None}, fg_min=0.01, fg_max=0.98)
    assert e.value.reason == "nan_score"
