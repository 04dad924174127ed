"""Face analysis (insightface) and background removal (rembg) workers: tiny random-weight models
through the real loaders, bad inputs, Ray Data, and the real small models in ../shared/assets."""
import csv
import itertools
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from runtime.rows import batch_of, rows_of
from tests.conftest import assets_or_skip
from tests.helpers import jpeg
from workers.background_removal import BackgroundRemoval
from builders.background_removal import build_tiny as build_tiny_u2netp
from workers.face_analysis import FaceAnalysis
from builders.face_analysis import build_tiny as build_tiny_pack

os.environ.setdefault("HF_HUB_OFFLINE", "1")

RNG = np.random.default_rng(0)
NOISE = RNG.integers(0, 256, (200, 300, 3), dtype=np.uint8)  # the tiny detector fires on it
SQUARE = RNG.integers(0, 256, (320, 320, 3), dtype=np.uint8)  # u2netp's size: the mask reaches 0
GRAY = RNG.integers(0, 256, (64, 48), dtype=np.uint8)
RGBA = RNG.integers(0, 256, (40, 56, 4), dtype=np.uint8)



def bad_rows(column: str) -> list[dict]:
    """Rows every image worker must turn into rejects, with the reason expected."""
    return [
        {"key": "one", column: np.zeros((1, 1, 3), np.uint8), "want": "bad_image"},
        {"key": "empty", column: np.zeros((0, 0, 3), np.uint8), "want": "bad_image"},
        {"key": "corrupt", column: b"\xff\xd8 not a jpeg", "want": "bad_image"},
        {"key": "missing", "want": "missing_image"},
    ]


def check_rejects(rows: list[dict], stage: str):
    for r in rows:
        if r["key"] in ("one", "empty", "corrupt", "missing"):
            assert r["reject_stage"] == stage, r
            assert r["reject_reason"] == {"missing": "missing_image"}.get(r["key"], "bad_image"), r
        else:
            assert r.get("reject_reason") is None, r


# ---------------------------------------------------------------------------------------------
# face analysis, tiny pack

@pytest.fixture(scope="module")
def tiny_pack(tmp_path_factory):
    return build_tiny_pack(tmp_path_factory.mktemp("tiny") / "face_analysis", seed=0)


@pytest.fixture(scope="module")
def tiny_faces(tiny_pack):
    return FaceAnalysis(str(tiny_pack))


def test_tiny_pack_is_routed_like_a_real_pack(tiny_pack, tiny_faces):
    files = sorted(p.name for p in tiny_pack.iterdir())
    assert files == ["det_tiny_scrfd.onnx", "rec_tiny_arcface.onnx"]
    assert sum(p.stat().st_size for p in tiny_pack.iterdir()) < 1_000_000
    det, rec = tiny_faces.detector, tiny_faces.recogniser
    assert type(det).__name__ == "SCRFD" and type(rec).__name__ == "ArcFaceONNX"
    assert (det.fmc, det._feat_stride_fpn, det._num_anchors, det.use_kps) == (3, [8, 16, 32], 2, True)
    assert rec.input_size == (112, 112) and tiny_faces.embedding_dim == 512 and tiny_faces.rec_batched
    assert tiny_faces.device == "cpu"


def test_tiny_faces_batch(tiny_faces):
    good = [{"key": "rgb", "image": NOISE}, {"key": "jpeg", "image": jpeg(NOISE)},
            {"key": "gray", "image": GRAY}, {"key": "rgba", "image": RGBA}]
    rows = rows_of(tiny_faces(batch_of(good + bad_rows("image"))))
    check_rejects(rows, "face_analysis")
    by_key = {r["key"]: r for r in rows}
    assert by_key["rgb"]["n_faces"] >= 1  # the recogniser path ran
    for r in rows[:4]:
        n = r["n_faces"]
        assert isinstance(n, int)
        for col, shape in (("face_boxes", (n, 4)), ("face_kps", (n, 5, 2)), ("det_scores", (n,)),
                           ("embeddings", (n, 512))):
            assert r[col].dtype == np.float32 and r[col].shape == shape, (r["key"], col, r[col].shape)
        assert np.allclose(np.linalg.norm(r["embeddings"], axis=1), 1.0, atol=1e-5)
        assert (r["det_scores"] >= 0.5).all()
        assert r["time_face_analysis"] > 0


def test_tiny_faces_match_insightface_get(tiny_faces):
    """Recognition batched over the batch's faces gives what FaceAnalysis.get gives face by face."""
    out = rows_of(tiny_faces(batch_of([{"image": NOISE}, {"image": SQUARE}])))
    for img, r in zip((NOISE, SQUARE), out):
        faces = tiny_faces.app.get(np.ascontiguousarray(img[..., ::-1]))
        assert r["n_faces"] == len(faces)
        if faces:
            np.testing.assert_allclose(r["face_boxes"], np.stack([f.bbox for f in faces]), rtol=1e-5)
            np.testing.assert_allclose(r["face_kps"], np.stack([f.kps for f in faces]), rtol=1e-5)
            np.testing.assert_allclose(r["embeddings"], np.stack([f.normed_embedding for f in faces]), atol=1e-5)


def test_no_face_is_not_a_reject(tiny_pack):
    worker = FaceAnalysis(str(tiny_pack), det_thresh=1.01, image="photo", prefix="group_")
    (r,) = rows_of(worker(batch_of([{"photo": NOISE}])))
    assert r.get("reject_reason") is None and r["group_n_faces"] == 0
    assert r["group_face_boxes"].shape == (0, 4) and r["group_face_kps"].shape == (0, 5, 2)
    assert r["group_det_scores"].shape == (0,) and r["group_embeddings"].shape == (0, 512)


def test_missing_pack_is_an_error_not_a_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="never download"):
        FaceAnalysis("buffalo_l", root=str(tmp_path))
    assert not (tmp_path / "models").exists()


def test_tiny_faces_in_ray_data(tiny_pack, ray_local):
    # Every image 3-D: Ray Data turns a 2-D array batched with 3-D ones into 1xHxW.
    items = [{"key": "rgb", "image": NOISE}, {"key": "rgba", "image": RGBA}, {"key": "one", "image": np.zeros((1, 1, 3), np.uint8)}]
    ds = ray_local.data.from_items(items).map_batches(
        FaceAnalysis, fn_constructor_kwargs={"model": str(tiny_pack)}, batch_size=2,
        compute=ray_local.data.ActorPoolStrategy(size=1))
    rows = {r["key"]: r for r in ds.take_all()}
    assert rows["one"]["reject_reason"] == "bad_image"
    direct = {r["key"]: r for r in rows_of(FaceAnalysis(str(tiny_pack))(batch_of(items[:2])))}
    for k in ("rgb", "rgba"):
        assert rows[k]["n_faces"] == direct[k]["n_faces"]
        assert np.asarray(rows[k]["embeddings"]).shape == (direct[k]["n_faces"], 512)
        np.testing.assert_allclose(np.asarray(rows[k]["embeddings"]), direct[k]["embeddings"], atol=1e-5)
    assert rows["rgb"]["n_faces"] >= 1


# ---------------------------------------------------------------------------------------------
# background removal, tiny u2netp

@pytest.fixture(scope="module")
def tiny_u2netp(tmp_path_factory):
    return build_tiny_u2netp(tmp_path_factory.mktemp("tiny") / "background_removal", seed=0)


@pytest.fixture(scope="module")
def tiny_rembg(tiny_u2netp):
    return BackgroundRemoval(str(tiny_u2netp), cutout=True)


def test_tiny_u2netp_loads_through_rembgs_u2netp_session(tiny_u2netp, tiny_rembg):
    assert [p.name for p in tiny_u2netp.iterdir()] == ["u2netp.onnx"]
    assert (tiny_u2netp / "u2netp.onnx").stat().st_size < 1_000_000
    s = tiny_rembg.session
    assert type(s).__name__ == "U2netpSession"
    (inp,) = s.inner_session.get_inputs()
    assert (inp.name, inp.shape) == ("input.1", [1, 3, 320, 320])
    assert [o.shape for o in s.inner_session.get_outputs()] == [[1, 1, 320, 320]] * 7
    assert "U2NET_HOME" not in os.environ  # set only while the session was created


def test_tiny_rembg_batch(tiny_rembg):
    good = [{"key": "square", "image": SQUARE}, {"key": "rgb", "image": NOISE}, {"key": "jpeg", "image": jpeg(NOISE)},
            {"key": "gray", "image": GRAY}, {"key": "rgba", "image": RGBA}]
    rows = rows_of(tiny_rembg(batch_of(good + bad_rows("image"))))
    check_rejects(rows, "background_removal")
    from schemas.contract import as_rgb

    for g, r in zip(good, rows):
        rgb = as_rgb(g["image"])
        alpha, white = r["alpha"], r["on_white"]
        assert alpha.dtype == np.uint8 and alpha.shape == rgb.shape[:2]
        assert white.dtype == np.uint8 and white.shape == rgb.shape
        assert (white[alpha == 0] == 255).all() and (white[alpha == 255] == rgb[alpha == 255]).all()
        assert r["fg_fraction"] == pytest.approx((alpha > 127).mean())
        assert r["cutout"].shape == (*rgb.shape[:2], 4) and (r["cutout"][..., 3] == alpha).all()
    square = rows[0]["alpha"]
    assert square.min() == 0 and square.max() == 255  # rembg stretches the map to [0, 255]
    assert 0.0 < rows[0]["fg_fraction"] < 1.0


def test_rembg_model_resolution(tiny_u2netp, tmp_path, monkeypatch):
    rgb = {"image": SQUARE}
    ref = rows_of(BackgroundRemoval(str(tiny_u2netp))(batch_of([rgb])))[0]["alpha"]
    by_file = BackgroundRemoval(str(tiny_u2netp / "u2netp.onnx"))
    assert type(by_file.session).__name__ == "U2netpSession"
    # A file of another name goes through rembg's custom U^2-Net session: same preprocessing.
    other = tmp_path / "mine" / "subject_matting.onnx"
    other.parent.mkdir()
    shutil.copy(tiny_u2netp / "u2netp.onnx", other)
    custom = BackgroundRemoval(str(other))
    assert type(custom.session).__name__ == "U2netCustomSession"
    assert (rows_of(custom(batch_of([rgb])))[0]["alpha"] == ref).all()
    # A session name reads rembg's model home, as rembg does.
    monkeypatch.setenv("U2NET_HOME", str(tiny_u2netp))
    assert (rows_of(BackgroundRemoval("u2netp")(batch_of([rgb])))[0]["alpha"] == ref).all()
    # Missing files are errors before rembg could fetch anything.
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="never download"):
        BackgroundRemoval("bria-rmbg")
    assert not (tmp_path / "empty").exists()
    with pytest.raises(FileNotFoundError):
        BackgroundRemoval(str(tmp_path / "nothing.onnx"))
    with pytest.raises(ValueError, match="exactly one"):
        BackgroundRemoval(str(tmp_path))
    with pytest.raises(ValueError, match="neither a rembg session"):
        BackgroundRemoval("no-such-session")


def test_tiny_rembg_in_ray_data(tiny_u2netp, ray_local):
    items = [{"key": "rgb", "image": NOISE}, {"key": "rgba", "image": RGBA}, {"key": "one", "image": np.zeros((1, 1, 3), np.uint8)}]
    ds = ray_local.data.from_items(items).map_batches(
        BackgroundRemoval, fn_constructor_kwargs={"model": str(tiny_u2netp), "image": "image"},
        batch_size=2, compute=ray_local.data.ActorPoolStrategy(size=1))
    rows = {r["key"]: r for r in ds.take_all()}
    assert rows["one"]["reject_reason"] == "bad_image"
    direct = {r["key"]: r for r in rows_of(BackgroundRemoval(str(tiny_u2netp), image="image")(batch_of(items[:2])))}
    for k in ("rgb", "rgba"):
        assert np.asarray(rows[k]["on_white"]).shape == (*items[0 if k == "rgb" else 1]["image"].shape[:2], 3)
        assert (np.asarray(rows[k]["alpha"]) == direct[k]["alpha"]).all()
        assert rows[k]["fg_fraction"] == pytest.approx(direct[k]["fg_fraction"])
        assert "cutout" not in rows[k]


# ---------------------------------------------------------------------------------------------
# real small models from ../shared/assets

@pytest.fixture(scope="module")
def real_faces():
    assets = assets_or_skip()
    return assets, FaceAnalysis(str(assets / "models" / "insightface_pack"))


@pytest.mark.assets
def test_real_faces_in_group_photos(real_faces):
    assets, worker = real_faces
    names = ["obama_and_biden", "kit_with_rose", "two_people", "t1"]
    rows = [{"image": (assets / "images/faces/groups" / f"{n}.jpg").read_bytes()} for n in names]
    rows.append({"image": (assets / "images/u2net_test/test_images/whisk.png").read_bytes()})  # no face
    out = rows_of(worker(batch_of(rows)))
    assert [r["n_faces"] for r in out] == [3, 2, 2, 6, 0]
    for r in out[:4]:
        assert (r["det_scores"] > 0.5).all() and r["embeddings"].shape == (r["n_faces"], 512)
        w = r["face_boxes"][:, 2] - r["face_boxes"][:, 0]
        assert (w > 10).all()
        inside = (r["face_kps"] >= r["face_boxes"][:, None, :2] - 0.2 * w[:, None, None]) & \
                 (r["face_kps"] <= r["face_boxes"][:, None, 2:] + 0.2 * w[:, None, None])
        assert inside.all()  # landmarks lie on their face
    assert out[4]["embeddings"].shape == (0, 512)


@pytest.mark.assets
def test_real_embeddings_separate_identities(real_faces):
    from sklearn.metrics import roc_auc_score

    assets, worker = real_faces
    faces = assets / "images/faces"
    labels = list(csv.DictReader((faces / "labels.csv").open()))
    out = rows_of(worker(batch_of([{"image": (faces / r["path"]).read_bytes()} for r in labels])))
    assert [r["n_faces"] for r in out] == [1] * len(labels)  # single-person photos
    emb = np.stack([r["embeddings"][0] for r in out])
    pairs = list(itertools.combinations(range(len(labels)), 2))
    same = [labels[i]["identity"] == labels[j]["identity"] for i, j in pairs]
    cosine = [float(emb[i] @ emb[j]) for i, j in pairs]
    auc = roc_auc_score(same, cosine)
    print(f"same- vs different-identity cosine ROC AUC over {len(pairs)} pairs: {auc:.4f}")
    assert auc >= 0.99


@pytest.mark.assets
def test_real_u2netp_reproduces_reference_masks():
    assets = assets_or_skip()
    root = assets / "images/u2net_test"
    worker = BackgroundRemoval(str(assets / "models/u2netp"))
    images = sorted((root / "test_images").iterdir())
    out = rows_of(worker(batch_of([{"image": p.read_bytes()} for p in images])))
    ious = []
    for p, r in zip(images, out):
        reference = np.asarray(Image.open(root / "u2netp_results" / f"{p.stem}.png").convert("L")) > 127
        mask = r["alpha"] > 127
        assert mask.shape == reference.shape
        ious.append((mask & reference).sum() / max((mask | reference).sum(), 1))
        assert (r["on_white"][r["alpha"] == 0] == 255).all()
    print(f"u2netp mean IoU against the U^2-Net authors' masks over {len(ious)} images: {np.mean(ious):.4f}")
    assert len(ious) == 18 and np.mean(ious) >= 0.95
