"""Shared test helpers: write synthetic rows through the real datasink; wait for and kill a run
started as a subprocess; check that every input key has exactly one outcome."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np

from runtime.rows import rows_of
from schemas.contract import encode_member
from schemas.registry import get_schema
from stages.keys import sample_key
from stages.synthetic import random_sample


def synthetic_rows(dataset: str, n: int, seed: int = 0, size: int = 64, encode_images: bool = True) -> list[dict]:
    schema = get_schema(dataset)
    rows = []
    for i in range(n):
        row = random_sample(schema, sample_key({"i": i, "seed": seed}, {"dataset": dataset}),
                            np.random.default_rng([seed, i]), size)
        if encode_images:  # images as JPEG bytes, so they can be compared byte for byte
            for m in schema.members:
                if m.ext == "jpg" and m.name in row:
                    row[m.name] = encode_member(m, row[m.name])
        rows.append(row)
    return rows


def write_rows(rows, out: str, dataset: str, **kw) -> dict:
    """The rows through the real datasink, then the dataset card, as the driver writes them."""
    import ray

    from runtime.card import write_card
    from runtime.registry import get_output
    from schemas.store import DatasetDir
    from schemas.writer import ShardDatasink

    sink = ShardDatasink(out, get_schema(dataset), **kw)
    ray.data.from_items(rows).write_datasink(sink)
    write_card(DatasetDir.open(out, dataset=dataset, filesystem=kw.get("filesystem")), get_output(dataset), sink.summary)
    return sink.summary


def plain(v):
    """Nested numpy / list values -> plain lists with float32-rounded floats, for comparison."""
    if isinstance(v, (np.ndarray, list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, (float, np.floating)):
        return float(np.float32(v))
    return v.item() if isinstance(v, np.generic) else v


def png(arr) -> bytes:
    """An array image as PNG bytes (any mode PIL takes: RGB, RGBA, L)."""
    return _encoded(arr, "PNG")


def jpeg(arr, quality: int = 75) -> bytes:
    """An array image as JPEG bytes (PIL's default quality 75)."""
    return _encoded(arr, "JPEG", quality=quality)


def _encoded(arr, fmt: str, **kwargs) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def noise(h, w, c=3, seed=0):
    """A random uint8 image (c=None: HxW)."""
    shape = (h, w) if c is None else (h, w, c)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def by_key(table):
    """A worker's output batch as {key: row}."""
    return {r["key"]: r for r in rows_of(table)}


def tar_members(dataset_dir) -> dict[str, dict[str, bytes]]:
    """key -> {member name with extension: bytes} over every committed shard of a local dataset."""
    import tarfile
    from pathlib import Path

    samples: dict[str, dict[str, bytes]] = {}
    for tar in sorted((Path(dataset_dir) / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                key, name = m.name.split(".", 1)
                samples.setdefault(key, {})[name] = t.extractfile(m).read()
    return samples


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def kill_group(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(1)  # let any orphan of the group die before the state is inspected


def assert_every_key_once(out: str, keys: set[str]) -> None:
    """Every input key exactly once, as a sample in a manifest or as a reject, and nothing else."""
    from schemas import load_manifest, load_rejects

    manifest, rejects = load_manifest(out), load_rejects(out)
    assert manifest["key"].is_unique and rejects["key"].is_unique
    assert not set(manifest["key"]) & set(rejects["key"])
    assert set(manifest["key"]) | set(rejects["key"]) == keys
