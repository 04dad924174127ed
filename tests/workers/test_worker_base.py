"""The batch protocol every worker shares: bad input -> reject rows, a poison sample isolated from
its batch, timings, rejected rows passed through untouched."""
import os
import time

import numpy as np
import pytest

from runtime.rows import Reject, batch_of, rows_of
from runtime.steps import Model
from workers.base import Worker, image_of, text_of


class Brightness(Worker):
    """A model-free worker: mean brightness of `image` scaled by a word count of `prompt`."""

    role = "brightness"

    def __init__(self, model="none", **kw):
        super().__init__(model, **kw)
        self.calls = []

    def check(self, row):
        return {"image": image_of(row, "image"), "prompt": text_of(row, "prompt")}

    def predict(self, inputs):
        self.calls.append(len(inputs))
        out = []
        for x in inputs:
            if "poison" in x["prompt"]:
                raise ValueError("model blew up")  # a data error from the library: this row's alone
            out.append({"brightness": float(x["image"].mean()) * len(x["prompt"].split())})
        return out


def rows():
    gray = np.full((16, 16), 100, np.uint8)
    rgba = np.zeros((16, 16, 4), np.uint8)  # fully transparent: white once composited
    return [
        {"key": "ok", "image": np.full((16, 16, 3), 10, np.uint8), "prompt": "two words"},
        {"key": "gray", "image": gray, "prompt": "one"},
        {"key": "rgba", "image": rgba, "prompt": "one"},
        {"key": "tiny", "image": np.zeros((1, 1, 3), np.uint8), "prompt": "one"},
        {"key": "empty", "image": np.zeros((0, 0, 3), np.uint8), "prompt": "one"},
        {"key": "noprompt", "image": gray, "prompt": "  "},
        {"key": "noimage", "image": None, "prompt": "one"},
        {"key": "corrupt", "image": b"\xff\xd8 not a jpeg", "prompt": "one"},
        {"key": "poison", "image": gray, "prompt": "poison pill"},
        {"key": "earlier", "reject_stage": "load", "reject_reason": "corrupt", "reject_detail": "x"},
    ]


def test_batch_protocol():
    w = Brightness(stage="bright")
    out = {r["key"]: r for r in rows_of(w(batch_of(rows())))}
    assert out["ok"]["brightness"] == pytest.approx(20.0)
    assert out["gray"]["brightness"] == pytest.approx(100.0)
    assert out["rgba"]["brightness"] == pytest.approx(255.0)
    reasons = {k: (r.get("reject_stage"), r.get("reject_reason")) for k, r in out.items() if r.get("reject_reason")}
    assert reasons == {
        "tiny": ("bright", "bad_image"), "empty": ("bright", "bad_image"), "noprompt": ("bright", "empty_prompt"),
        "noimage": ("bright", "missing_image"), "corrupt": ("bright", "bad_image"),
        "poison": ("bright", "model_error"), "earlier": ("load", "corrupt"),
    }
    assert "model blew up" in out["poison"]["reject_detail"]
    # one batched call for the 4 live rows, then row by row to isolate the poison sample
    assert w.calls == [4, 1, 1, 1, 1]
    assert all(out[k]["time_bright"] >= 0 for k in ("ok", "gray", "poison")) and out["earlier"].get("time_bright") is None
    assert out["ok"]["prompt"] == "two words"  # inputs pass through


def test_in_ray_data_actor_pool(ray_local):
    import ray

    from configs import ModelSpec

    spec = ModelSpec(model="none", dtype="float32", batch_size=3, concurrency=2)
    args = Model("bright", role="brightness", cls=Brightness, spec=spec).pool_args(spec)
    assert args["compute"].min_size == args["compute"].max_size == 2
    # a source of mixed rows (arrays, None, bytes) goes in as one object-typed table, see batch_of
    got = {r["key"]: r for r in ray.data.from_arrow(batch_of(rows())).map_batches(Brightness, **args).take_all()}
    assert len(got) == 10 and got["ok"]["brightness"] == pytest.approx(20.0)
    assert got["poison"]["reject_reason"] == "model_error" and got["tiny"]["reject_reason"] == "bad_image"


def test_reject_raised_in_predict_is_a_row_reject():
    class Picky(Brightness):
        def predict(self, inputs):
            return [Reject("too_dark", "mean < 50") if x["image"].mean() < 50 else {"brightness": 1.0} for x in inputs]

    out = {r["key"]: r for r in rows_of(Picky()(batch_of(rows()[:2])))}
    assert out["ok"]["reject_reason"] == "too_dark" and out["gray"]["brightness"] == 1.0


class Pid(Worker):
    """Which actor process served each row."""

    role = "pid"

    def check(self, row):
        return {"key": row["key"]}

    def predict(self, inputs):
        time.sleep(0.05)  # long enough that one actor cannot take every batch while the other starts
        return [{"pid": os.getpid()} for _ in inputs]


def test_driver_built_source_feeds_every_actor_of_a_pool(ray_local):
    """Ray Data hands an actor pool one task per input block: dataset_of cuts the driver's rows into
    blocks, so both actors of a 2-actor pool get work (a single block would keep one idle)."""
    from runtime.rows import MAX_BLOCKS, MIN_BLOCK_ROWS, dataset_of
    from configs import ModelSpec

    rows_in = [{"key": f"k{i}", "n": i} for i in range(48)]
    ds = dataset_of(rows_in)
    assert ds.num_blocks() == 48 // MIN_BLOCK_ROWS
    assert ds.take_all() == rows_in  # order and values kept
    assert dataset_of([{"key": f"k{i}"} for i in range(MAX_BLOCKS * 10 + 1)]).num_blocks() <= MAX_BLOCKS
    spec = ModelSpec(model="none", dtype="float32", batch_size=4, concurrency=2)
    args = Model("pid", role="pid", cls=Pid, spec=spec).pool_args(spec)
    got = ds.map_batches(Pid, **args).take_all()
    assert sorted(r["key"] for r in got) == sorted(r["key"] for r in rows_in)
    assert len({r["pid"] for r in got}) == 2


def test_a_bug_in_predict_fails_instead_of_becoming_model_errors():
    """A TypeError or KeyError in a worker is a programming error: it propagates (the run fails
    with its traceback) instead of ending as one model_error reject per row."""
    class Buggy(Brightness):
        def predict(self, inputs):
            return [{"brightness": x["no_such_input"]} for x in inputs]

    with pytest.raises(KeyError, match="no_such_input"):
        Buggy()(batch_of(rows()[:2]))


def test_worker_columns_come_from_its_arguments():
    from workers.image_encoder import ImageEncoder
    from workers.text_to_image import TextToImage
    from workers.vlm import VLM

    assert VLM.columns(images=["ref", "win"], prompt="rubric_prompts", output="pos_raw") == (
        ["ref", "win", "rubric_prompts"], ["pos_raw"])
    assert TextToImage.columns(mode="diptych", prompt="diptych_prompt", left="ref", right="win") == (
        ["diptych_prompt", "seed"], ["ref", "win"])
    assert TextToImage.columns(mode="independent", output="win")[1] == ["win"]
    assert ImageEncoder.columns(image="ref", image_b="win", cosine="c", embedding=None) == (["ref", "win"], ["c"])
    assert "image_column" not in VLM.arguments() and {"stage", "drop", "keep", "images"} <= VLM.arguments()


class Flaky(Brightness):
    """CUDA out of memory on its first `ooms` calls; then a broken CUDA context on `broken` rows."""

    def __init__(self, ooms=0, broken=(), **kw):
        super().__init__(**kw)
        self.ooms, self.broken = ooms, set(broken)

    def predict(self, inputs):
        self.calls.append(len(inputs))
        if self.ooms:
            self.ooms -= 1
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        if any(x["prompt"] in self.broken for x in inputs):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return [{"brightness": 1.0} for _ in inputs]


def test_out_of_memory_three_times_then_success_halves_the_batch_and_loses_nothing():
    w = Flaky(ooms=3)
    batch = [{"key": f"k{i}", "image": np.full((16, 16, 3), 10, np.uint8), "prompt": f"p{i}"} for i in range(4)]
    out = rows_of(w(batch_of(batch)))
    assert all(r["brightness"] == 1.0 and not r.get("reject_reason") for r in out)
    assert w.calls == [4, 2, 1, 1, 1, 2]  # halved twice, the single row retried, the rest at its size


def test_a_persistent_infrastructure_error_is_a_retryable_reject_after_its_retries():
    w = Flaky(broken={"p1"}, retries=2)
    batch = [{"key": f"k{i}", "image": np.full((16, 16, 3), 10, np.uint8), "prompt": f"p{i}"} for i in range(3)]
    out = {r["key"]: r for r in rows_of(w(batch_of(batch)))}
    assert out["k1"]["reject_reason"] == "model_error" and out["k1"]["reject_retryable"] is True
    assert "illegal memory access" in out["k1"]["reject_detail"]
    assert out["k0"]["brightness"] == out["k2"]["brightness"] == 1.0
    assert w.calls == [3, 3, 3, 1, 1, 1]  # the batch and its 2 retries, then each row once alone
