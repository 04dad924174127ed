"""Synthetic inputs at real size for each pipeline's gpu config, in the formats its source reads,
for runs with the simulated workers (workers/simulated.py), where every row passes every gate.

    overrides = make_inputs("uper", Path("/tmp/sim"), n=200)   # ["pairs=/tmp/sim/uper/pairs.parquet"]
    uper.main(["--config", "configs/uper.gpu.yaml", "--out", out] + [a for o in overrides for a in ("--set", o)],
              workers=simulated_workers(uper.WORKERS, DEFAULT_COSTS))

- dip: the catalog generator needs no files: n_single = ceil(n / 2), n_multi = floor(n / 2) prompts,
  image_size = side (the FLUX diptych is 2 side x side).
- multiid: n group photos (1-4 faces of known identities each) in `groups/` and, in `singles/`, 3
  photos of each of max(2, min(255, n // 2)) identities (one folder per identity), side x 3/4 side
  coded photos, JPEG quality 90.
- uper: a Parquet of n Subjects200K rows (`image` = {"bytes", "path"} of a diptych: two side / 2
  halves, each in an 8 px white border, so side 1024 is Subjects200K's 1056 x 528; `description` =
  {"item", "description_0", "description_1"}).
- iapo: a Parquet of n Pick-a-Pic v2 rows (caption, jpg_0, jpg_1 as JPEG bytes at side x side,
  label_0 / label_1 one-hot, never a tie).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from workers.simulated import MAX_IDENTITY, coded_photo, photo

PIPELINES = ("dip", "multiid", "uper", "iapo")
SUBJECTS = ("teapot", "backpack", "sneaker", "vase", "guitar", "dog", "cat", "robot")
DIPTYCH_PADDING = 8  # Subjects200K's border around each half (UPERConfig.diptych_padding)


def make_inputs(pipeline: str, root: Path, n: int, side: int = 1024, seed: int = 0) -> list[str]:
    """Write the inputs of `pipeline` under root/<pipeline> and return the `--set` overrides
    (KEY=VALUE) that point its gpu config at them."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r} (known: {', '.join(PIPELINES)})")
    if pipeline == "dip":
        return [f"n_single={n - n // 2}", f"n_multi={n // 2}", f"image_size={side}", f"seed={seed}"]
    root = Path(root) / pipeline
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    if pipeline == "multiid":
        multiid_photos(root, n, identities=max(2, min(MAX_IDENTITY, n // 2)), per_identity=3, side=side, rng=rng)
        return [f"singles={root / 'singles'}", f"groups={root / 'groups'}"]
    rows = [(uper_row if pipeline == "uper" else iapo_row)(i, side, rng) for i in range(n)]
    write_parquet(rows, root / "pairs.parquet")
    return [f"pairs={root / 'pairs.parquet'}"]


def jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_parquet(rows: list[dict], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)


def multiid_photos(root: Path, n_groups: int, identities: int, per_identity: int, side: int,
                   rng: np.random.Generator, strangers: bool = False) -> None:
    """root/singles/personNNN/J.jpg (identity NNN + 1 coded) and root/groups/gNNNNN.jpg (1-4
    distinct identities; with `strangers`, code 0, a face no bank center matches, among them)."""
    height = side * 3 // 4
    for i in range(identities):
        folder = root / "singles" / f"person{i:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_identity):
            (folder / f"{j}.jpg").write_bytes(jpeg(coded_photo([i + 1], height, side, rng), quality=90))
    (root / "groups").mkdir(parents=True, exist_ok=True)
    codes = np.arange(0 if strangers else 1, identities + 1)
    for g in range(n_groups):
        k = int(rng.integers(1, min(4, len(codes)) + 1))
        faces = [int(c) for c in rng.choice(codes, size=k, replace=False)]
        (root / "groups" / f"g{g:05d}.jpg").write_bytes(jpeg(coded_photo(faces, height, side, rng), quality=90))


def uper_row(i: int, side: int, rng: np.random.Generator) -> dict:
    half, p = side // 2, DIPTYCH_PADDING
    canvas = np.full((half + 2 * p, 2 * (half + 2 * p), 3), 255, np.uint8)
    canvas[p:p + half, p:p + half] = photo(half, half, rng)
    canvas[p:p + half, 3 * p + half:3 * p + 2 * half] = photo(half, half, rng)
    item = SUBJECTS[i % len(SUBJECTS)]
    return {"image": {"bytes": jpeg(canvas), "path": None},
            "description": {"item": item, "description_0": f"a {item} on a white background",
                            "description_1": f"a {item} on a wooden table in a sunlit kitchen, photo {i}"}}


def iapo_row(i: int, side: int, rng: np.random.Generator) -> dict:
    return {"caption": f"a person walking a dog along a beach at sunset, picture {i}",
            "jpg_0": jpeg(photo(side, side, rng)), "jpg_1": jpeg(photo(side, side, rng)),
            "label_0": float(i % 2), "label_1": float(1 - i % 2)}
