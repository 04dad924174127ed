"""Text detection (RapidOCR's PP-OCRv4, the real model the wheel ships) and aesthetic score
(tiny random CLIP + LAION's head layout) workers: text drawn over the real face photos of
../shared/assets, the face photos themselves against the text-fraction default, bad inputs, and
the aesthetic head's published state-dict layouts."""
import os
from configs.multiid import MultiIDConfig
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from builders.aesthetic import build_tiny as build_tiny_aesthetic
from runtime.rows import batch_of, rows_of
from tests.conftest import assets_or_skip
from tests.helpers import jpeg
from workers.aesthetic import Aesthetic, laion_mlp, load_head, v2_5_head
from workers.text_detection import TextDetection, text_fraction

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# The fraction of an image that text may cover before MultiID discards it (WithAnyone, appendix C:
# watermarks and logos that cannot be cropped out). The face photos reach 0.22 (a step-and-repeat
# backdrop, real text: singles/df02/img23.jpg), the heavy overlays below start at 0.4.
MAX_TEXT_FRACTION = MultiIDConfig().max_text_fraction  # the pipeline's default gate

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (96, 128, 3), dtype=np.uint8)


def bad_rows(column: str) -> list[dict]:
    return [
        {"key": "one", column: np.zeros((1, 1, 3), np.uint8)},
        {"key": "corrupt", column: b"\xff\xd8 not a jpeg"},
        {"key": "missing"},
    ]


def check_rejects(rows: list[dict], stage: str):
    for r in rows:
        if r["key"] in ("one", "corrupt", "missing"):
            assert (r["reject_stage"], r["reject_reason"]) == (
                stage, "missing_image" if r["key"] == "missing" else "bad_image"), r
        else:
            assert r.get("reject_reason") is None, r


def font(size: int) -> ImageFont.FreeTypeFont:
    from matplotlib import font_manager

    path = font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans", weight="bold"),
                                 fallback_to_default=False)
    return ImageFont.truetype(path, size)


def fitted(text: str, size: int, width: float) -> ImageFont.FreeTypeFont:
    f = font(size)
    while f.getlength(text) > width:
        size = int(size * 0.95)
        f = font(size)
    return f


def caption(path: Path, lines: list[str], fill: float = 0.85):
    """Poster / meme text: white letters with a black outline, one line per row of the photo's
    height. Returns (photo, mask of the drawn letters)."""
    img = Image.open(path).convert("RGB")
    ink = Image.new("L", img.size, 0)
    w, h = img.size
    step = 0.96 * h / len(lines)
    for i, line in enumerate(lines):
        f = fitted(line, int(step * fill), 0.92 * w)
        xy = ((w - f.getlength(line)) / 2, 0.02 * h + i * step + (step - f.size) / 2)
        kw = dict(font=f, stroke_width=max(2, f.size // 15))
        ImageDraw.Draw(img).text(xy, line, fill="white", stroke_fill="black", **kw)
        ImageDraw.Draw(ink).text(xy, line, fill=255, **kw)
    return np.asarray(img), np.asarray(ink) > 127


def watermark(path: Path, text: str, rows: int, cols: int, angle: float = 0, alpha: int = 128):
    """A stock-photo watermark: the word tiled over the photo, half transparent, optionally
    rotated. Returns (photo, mask of the drawn letters)."""
    img = Image.open(path).convert("RGBA")
    w, h = img.size
    layer, ink = Image.new("RGBA", img.size, (0, 0, 0, 0)), Image.new("L", img.size, 0)
    f = fitted(text, int(0.75 * h / rows), 0.9 * w / cols)
    for r in range(rows):
        for c in range(cols):
            xy = ((c + 0.5) * w / cols - f.getlength(text) / 2, (r + 0.5) * h / rows - f.size / 2)
            kw = dict(font=f, stroke_width=max(1, f.size // 20))
            ImageDraw.Draw(layer).text(xy, text, fill=(255, 255, 255, alpha), stroke_fill=(0, 0, 0, alpha), **kw)
            ImageDraw.Draw(ink).text(xy, text, fill=255, **kw)
    if angle:
        layer, ink = layer.rotate(angle, resample=Image.BICUBIC), ink.rotate(angle)
    return np.asarray(Image.alpha_composite(img, layer).convert("RGB")), np.asarray(ink) > 127


def box_mask(boxes: np.ndarray, shape) -> np.ndarray:
    mask = np.zeros(shape[:2], bool)
    for box in np.round(boxes).astype(np.int32):
        one = np.zeros(shape[:2], np.uint8)
        cv2.fillConvexPoly(one, box, 1)  # DB's boxes are rotated rectangles
        mask |= one > 0
    return mask


# ---------------------------------------------------------------------------------------------
# text detection

@pytest.fixture(scope="module")
def ocr():
    return TextDetection()


def test_text_fraction_is_the_union_of_the_boxes():
    square = np.array([[10, 10], [50, 10], [50, 50], [10, 50]], np.float32)  # 40 x 40
    assert text_fraction(np.zeros((0, 4, 2), np.float32), 100, 100) == 0.0
    one = text_fraction(square[None], 100, 100)
    assert one == pytest.approx(41 * 41 / 1e4)  # fillPoly includes the boundary pixels
    assert text_fraction(np.stack([square, square]), 100, 100) == one  # overlap counted once
    shifted = square + 20  # overlaps the first by 21 x 21 pixels
    assert text_fraction(np.stack([square, shifted]), 100, 100) == pytest.approx((2 * 41 * 41 - 21 * 21) / 1e4)
    triangle = np.array([[0, 0], [99, 0], [99, 99], [99, 99]], np.float32)  # a degenerate quad
    assert text_fraction(triangle[None], 100, 100) == pytest.approx(0.5, abs=0.01)


def test_columns_and_model_argument(tmp_path):
    assert TextDetection.columns() == (["image"], ["text_boxes", "text_fraction"])
    assert TextDetection.columns(image="win", prefix="win_") == (["win"], ["win_text_boxes", "win_text_fraction"])
    assert {"box_thresh", "unclip_ratio", "text_score", "stage", "device"} <= TextDetection.arguments()
    with pytest.raises(FileNotFoundError, match="never download"):
        TextDetection(str(tmp_path / "det.onnx"))


def test_bad_rows_and_no_text(ocr):
    gray = np.full((120, 160), 200, np.uint8)
    good = [{"key": "noise", "image": NOISE}, {"key": "jpeg", "image": jpeg(NOISE)}, {"key": "gray", "image": gray}]
    rows = rows_of(ocr(batch_of(good + bad_rows("image"))))
    check_rejects(rows, "text_detection")
    by_key = {r["key"]: r for r in rows}
    assert by_key["gray"]["text_fraction"] == 0.0  # a blank image has no text
    for r in rows[:3]:
        boxes = np.asarray(r["text_boxes"], np.float32).reshape(-1, 4, 2)
        assert boxes.shape[1:] == (4, 2) and 0.0 <= r["text_fraction"] <= 1.0


@pytest.mark.assets
def test_text_over_photos_is_found(ocr):
    """Heavy text drawn over real photos: posters, a meme, tiled stock watermarks (one rotated).
    The boxes cover the letters drawn and little else, and every photo is well over the default."""
    faces = assets_or_skip() / "images" / "faces"
    photos = {
        "poster_group": caption(faces / "groups/t1.jpg", ["FAMILY", "REUNION", "SUMMER 2024"]),
        "poster_wide": caption(faces / "groups/two_people.jpg", ["GRAND", "OPENING", "TODAY"]),
        "meme": caption(faces / "singles/obama/obama.jpg", ["WHEN THE", "CODE", "FINALLY", "COMPILES"], 0.8),
        "watermark": watermark(faces / "singles/obama/obama_b.jpg", "SAMPLE", 7, 2),
        "watermark_rotated": watermark(faces / "singles/df04/img30.jpg", "STOCK", 7, 3, angle=30),
    }
    rows = rows_of(ocr(batch_of([{"key": k, "image": img} for k, (img, _) in photos.items()])))
    fractions = {}
    for r in rows:
        img, ink = photos[r["key"]]
        boxes = np.asarray(r["text_boxes"], np.float32).reshape(-1, 4, 2)
        covered = box_mask(boxes, img.shape)
        near_ink = cv2.dilate(ink.astype(np.uint8), np.ones((41, 41), np.uint8)) > 0
        assert covered[ink].mean() > 0.9, r["key"]  # the letters drawn are inside the boxes
        assert near_ink[covered].mean() > 0.95, r["key"]  # and the boxes are on the letters
        assert r["text_fraction"] == pytest.approx(covered.mean(), abs=1e-4)
        assert r["text_fraction"] >= ink.mean()  # a box holds its letters and the gaps between them
        fractions[r["key"]] = float(r["text_fraction"])
    print("text photos:", {k: round(v, 3) for k, v in fractions.items()})
    assert min(fractions.values()) > MAX_TEXT_FRACTION + 0.08, fractions


@pytest.mark.assets
def test_face_photos_stay_under_the_default(ocr):
    """Every shared face photo (groups and singles, 49) keeps its row at the default fraction. Some
    have real text (press backdrops, HBO logos), so the fractions are not zero."""
    faces = assets_or_skip() / "images" / "faces"
    paths = sorted(p for p in faces.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg"))
    assert len(paths) >= 45
    rows = rows_of(ocr(batch_of([{"key": p.relative_to(faces).as_posix(), "image": p.read_bytes()} for p in paths])))
    fractions = {r["key"]: float(r["text_fraction"]) for r in rows}
    worst = sorted(fractions.items(), key=lambda kv: -kv[1])[:5]
    print("face photos, highest text fractions:", [(k, round(v, 3)) for k, v in worst])
    assert max(fractions.values()) < MAX_TEXT_FRACTION - 0.05, worst
    assert fractions["singles/df02/img23.jpg"] > 0.1  # its backdrop's "BREAKTHROUGH PRIZE" is text


@pytest.mark.assets
def test_recognition_drops_the_detectors_face_boxes(ocr):
    """Why a box needs a recognition score: the detector alone takes this close-up portrait's face
    (no text in the photo) for a text block."""
    photo = assets_or_skip() / "images" / "faces" / "singles" / "df01" / "img21.jpg"
    row = {"image": photo.read_bytes()}
    detector_only = TextDetection(text_score=None)
    alone = detector_only.predict([detector_only.check(row)])[0]
    checked = ocr.predict([ocr.check(row)])[0]
    assert alone["text_fraction"] > 0.1
    assert checked["text_fraction"] < 0.05


# ---------------------------------------------------------------------------------------------
# aesthetic

@pytest.fixture(scope="module")
def tiny_aesthetic(tmp_path_factory):
    return build_tiny_aesthetic(tmp_path_factory.mktemp("tiny") / "aesthetic", seed=0)


def images(n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    out = [rng.integers(0, 256, (72, 96, 3), dtype=np.uint8) for _ in range(n - 1)]
    return out + [np.tile(np.linspace(0, 255, 96, dtype=np.uint8)[None, :, None], (64, 1, 3))]  # a gradient


def test_tiny_aesthetic_scores(tiny_aesthetic):
    assert (tiny_aesthetic / "aesthetic_head.pth").is_file()
    worker = Aesthetic(str(tiny_aesthetic), prefix="win_")
    good = [{"key": str(i), "image": img} for i, img in enumerate(images(4))]
    good[1]["image"] = jpeg(good[1]["image"])
    rows = rows_of(worker(batch_of(good + bad_rows("image"))))
    check_rejects(rows, "aesthetic")
    batch = np.array([r["win_aesthetic"] for r in rows[:4]])
    assert np.isfinite(batch).all() and 4 < batch.min() and batch.max() < 6  # the tiny head's scale
    assert isinstance(worker.predict([worker.check(good[0])])[0]["win_aesthetic"], np.float32)
    assert np.ptp(batch) > 1e-5  # different images, different scores
    one_by_one = np.array([worker.predict([worker.check(r)])[0]["win_aesthetic"] for r in good])
    np.testing.assert_allclose(one_by_one, batch, atol=1e-6)
    again = Aesthetic(str(tiny_aesthetic), prefix="win_")
    np.testing.assert_array_equal([again.predict([again.check(r)])[0]["win_aesthetic"] for r in good], one_by_one)
    assert Aesthetic.columns(image="win", prefix="win_") == (["win"], ["win_aesthetic"])


def published_state(keys: str, dim: int, seed: int = 0) -> dict:
    """A head's state dict written key by key as the published files name them: LAION's
    sac+logos+ava1-l14-linearMSE.pth (`layers.0` ... `layers.7`) or v2.5's
    aesthetic_predictor_v2_5.pth (`scoring_head.0` ... `scoring_head.8`)."""
    g = torch.Generator().manual_seed(seed)
    last = {"layers": 7, "scoring_head": 8}[keys]
    shapes = {0: (1024, dim), 2: (128, 1024), 4: (64, 128), 6: (16, 64), last: (1, 16)}
    state = {}
    for i, (out, inp) in shapes.items():
        state[f"{keys}.{i}.weight"] = torch.randn(out, inp, generator=g) / inp ** 0.5
        state[f"{keys}.{i}.bias"] = torch.randn(out, generator=g) * 0.1
    return state


def chain(state: dict, x: torch.Tensor) -> torch.Tensor:
    """The heads by hand: their linear layers in order, nothing between them at inference."""
    names = sorted({k.rsplit(".", 1)[0] for k in state}, key=lambda k: int(k.rsplit(".", 1)[1]))
    for n in names:
        x = x @ state[f"{n}.weight"].T + state[f"{n}.bias"]
    return x


def test_head_loads_laion_keys(tiny_aesthetic, tmp_path):
    """LAION's key names load into the worker and the score is their MLP on the unit-length CLIP
    image embedding."""
    from transformers import CLIPModel, CLIPProcessor

    state = published_state("layers", 16)
    torch.save(state, tmp_path / "sac+logos+ava1-l14-linearMSE.pth")
    worker = Aesthetic(str(tiny_aesthetic), head=str(tmp_path / "sac+logos+ava1-l14-linearMSE.pth"))
    imgs = images(3)
    got = np.array([o["aesthetic"] for o in worker.predict([{"image": i} for i in imgs])])

    clip, processor = CLIPModel.from_pretrained(tiny_aesthetic).eval(), CLIPProcessor.from_pretrained(tiny_aesthetic)
    with torch.no_grad():
        pixels = processor(images=imgs, return_tensors="pt")["pixel_values"]
        feats = clip.vision_model(pixel_values=pixels).pooler_output @ clip.visual_projection.weight.T
        want = chain(state, feats / feats.norm(dim=-1, keepdim=True))[:, 0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_head_layouts():
    laion, v25 = published_state("layers", 24), published_state("scoring_head", 24, seed=1)
    x = torch.nn.functional.normalize(torch.randn(5, 24), dim=-1)
    for state, layout in ((laion, laion_mlp(24)), (v25, v2_5_head(24))):
        head = load_head(state).eval()
        assert [type(m) for m in head] == [type(m) for m in layout]  # the published module order
        with torch.no_grad():
            torch.testing.assert_close(head(x), chain(state, x))
    bare = {k.removeprefix("scoring_head."): v for k, v in v25.items()}  # a Sequential saved alone
    assert len(load_head(bare)) == 9
    with pytest.raises(ValueError, match="not an aesthetic head"):
        load_head({"fc.weight": torch.zeros(1, 24)})


def test_head_of_the_wrong_width(tiny_aesthetic, tmp_path):
    torch.save(published_state("layers", 768), tmp_path / "l14.pth")  # ViT-L/14's head on a 16-d CLIP
    with pytest.raises(ValueError, match="768-d embeddings"):
        Aesthetic(str(tiny_aesthetic), head=str(tmp_path / "l14.pth"))


def test_aesthetic_builder_is_registered():
    from builders import aesthetic
    from runtime.roles import Builder, buildable, get_role

    assert get_role("aesthetic").builder == Builder("builders.aesthetic")
    assert "aesthetic" in buildable("full") and callable(aesthetic.build_full)
