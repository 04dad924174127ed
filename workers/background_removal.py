"""Background removal: a salient-object alpha mask from a rembg session, and the subject on pure
white. UPER (seed 001, sec. 3.2.1 / app. B.4) puts the reference subject on a white background
with RMBG before the VLM checks it; `fg_fraction` lets the pipeline drop references where
nothing (or everything) was kept.

The model is a rembg session name ("bria-rmbg", "u2netp", ...) found in rembg's model home, a
directory holding `<session name>.onnx`, or a path to such a file. rembg downloads a model file it
does not find; a worker never does, so a missing file is an error before rembg is called.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

from runtime.costs import Cost
from runtime.roles import Builder, register_worker
from workers.base import Worker, image_of
from workers.face_analysis import onnx_providers

CUSTOM_SESSION = "u2net_custom"  # rembg's session for a U^2-Net-style file of any name


@contextlib.contextmanager
def _rembg_home(directory: Path | None):
    """rembg finds model files under U2NET_HOME; set it only while the session is created, so two
    workers in one process can load from two directories."""
    if directory is None:
        yield
        return
    old = os.environ.get("U2NET_HOME")
    os.environ["U2NET_HOME"] = str(directory)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("U2NET_HOME", None)
        else:
            os.environ["U2NET_HOME"] = old


def resolve_model(model: str, session_name: str | None = None) -> tuple[str, Path | None, dict]:
    """(rembg session name, model home or None for rembg's own, extra new_session kwargs)."""
    from rembg.sessions import sessions

    path = Path(model).expanduser()
    if path.suffix == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"rembg model file {path} does not exist")
        name = session_name or (path.stem if path.stem in sessions else CUSTOM_SESSION)
        if name.endswith("_custom"):
            return name, path.resolve().parent, {"model_path": str(path.resolve())}
        if path.name != f"{name}.onnx":
            raise ValueError(f"rembg's {name!r} session loads {name}.onnx, not {path.name}")
        return name, path.resolve().parent, {}
    if path.is_dir():
        found = [n for n in sessions if (path / f"{n}.onnx").is_file()]
        name = session_name or (found[0] if len(found) == 1 else None)
        if name is None:
            raise ValueError(f"{path}: expected exactly one <rembg session>.onnx file, found {found}")
        return name, path.resolve(), {}
    if model not in sessions:
        raise ValueError(f"{model!r} is neither a rembg session ({', '.join(sorted(sessions))}) nor a path")
    return model, None, {}


def new_session(model: str, providers: list[str], session_name: str | None = None):
    """`rembg.new_session` for `model`, refusing to start a download."""
    import rembg
    from rembg.sessions import sessions

    name, home, kwargs = resolve_model(model, session_name)
    with _rembg_home(home):
        cls = sessions[name]
        if "model_path" not in kwargs and cls.resolve_existing(f"{name}.onnx") is None:
            raise FileNotFoundError(
                f"rembg model {name}.onnx is not in {cls.model_dir()} or {cls.legacy_home()}; workers never "
                "download models: put the file there or pass its path")
        return rembg.new_session(name, providers=providers, **kwargs)


def simulated_background_removal(w, row: dict) -> dict:
    """A simulated accelerator's subject: an ellipse over the middle (~33% of the image, inside
    UPER's 0.01-0.98)."""
    from workers.simulated import ellipse

    a, p = w.args, w.args["prefix"]
    rgb = image_of(row, a["image"])
    h, width = rgb.shape[:2]
    alpha = ellipse([0.2 * width, 0.15 * h, 0.8 * width, 0.85 * h], h, width).astype(np.uint8) * 255
    on_white = np.where(alpha[..., None] > 127, rgb, np.uint8(255))
    out = {p + "alpha": alpha, p + "on_white": on_white, p + "fg_fraction": float((alpha > 127).mean())}
    if a["cutout"]:
        out[p + "cutout"] = np.concatenate([rgb, alpha[..., None]], axis=2)
    return out


@register_worker
class BackgroundRemoval(Worker):
    """Per image: `alpha` uint8 HxW (the session's soft mask), `on_white` uint8 HxWx3 (the image
    composited on (255, 255, 255) through alpha: alpha 0 is exactly white) and `fg_fraction`
    float (share of pixels with alpha > 127); with `cutout=True` also `cutout` uint8 HxWx4 RGBA.
    Column names take `prefix`."""

    role = "background_removal"
    builder = Builder("builders.background_removal", full=False)
    # ONNX graphs: no library config to build a production-size one from
    cost = Cost(0.05, per_batch=0.005, source="BRIA RMBG-1.4 (IS-Net) at 1024: ~20 images/s on one GPU "
                                             "(model card, rembg reports)")
    simulated = staticmethod(simulated_background_removal)
    inputs = ("image",)

    def __init__(self, model: str, *, dtype: str = "float32", image: str = "image", prefix: str = "",
                 session_name: str | None = None, post_process_mask: bool = False, cutout: bool = False,
                 **common):
        super().__init__(model, dtype=dtype, **common)
        providers = onnx_providers(self.device)
        if providers[0] == "CPUExecutionProvider":
            self.device = "cpu"
        self.image, self.prefix = image, prefix
        self.post_process_mask, self.cutout = post_process_mask, cutout
        self.session = new_session(model, providers, session_name)  # once per actor

    def check(self, row: dict) -> dict:
        return {"rgb": image_of(row, self.image)}

    @classmethod
    def columns(cls, image: str = "image", prefix: str = "", cutout: bool = False, **kwargs):
        return [image], [prefix + c for c in ("alpha", "on_white", "fg_fraction") + (("cutout",) if cutout else ())]

    def predict(self, inputs: list[dict]) -> list[dict]:
        import rembg

        out = []
        # rembg's sessions take one image each (the exported graphs have batch 1).
        for x in inputs:
            rgb = x["rgb"]
            alpha = np.asarray(rembg.remove(rgb, session=self.session, only_mask=True,
                                            post_process_mask=self.post_process_mask), dtype=np.uint8)
            if alpha.shape != rgb.shape[:2]:
                raise RuntimeError(f"mask {alpha.shape} does not match image {rgb.shape[:2]}")
            a = alpha[..., None].astype(np.float32) / 255.0
            on_white = (rgb * a + 255.0 * (1.0 - a)).round().astype(np.uint8)
            p = self.prefix
            row = {p + "alpha": alpha, p + "on_white": on_white,
                   p + "fg_fraction": float((alpha > 127).mean())}
            if self.cutout:
                row[p + "cutout"] = np.concatenate([rgb, alpha[..., None]], axis=2)
            out.append(row)
        return out
