"""Training examples from the four datasets' shards, through the schemas readers.

Every dataset becomes the same few fields, at one square `size` so a batch stacks:
- DIP (dpo, focus_dpo): prompt, ref, win, lose, m_prior (the subject mask) and m_d (the
  complexity map), both on the token grid (one token = 16 px).
- IAPO (iapo, dpo): prompt = caption, win / lose = the globally preferred image and the other, no
  reference, weight_w / weight_l = eq. 1 maps on the token grid.
- UPER (sft): prompt, ref = ref_clean, target.
- ReFL (refl) on UPER or DIP: prompt and ref only; the policy generates the image.
- MultiID (sft, id): prompt = caption, target = the group photo, ref = a reference photo of its
  first identity (from OUT/multiid_refs, read on demand), faces' 5-point landmarks and ArcFace
  embeddings, and the identity ids for the contrastive negatives. Only the train split by default.

Which function makes a dataset's examples for an objective is the dataset's spec's (`examples`,
runtime/registry.py): an objective trains on the datasets that declare it.

A sample that cannot be used (a member missing, a mask whose size is not its image's) is skipped
and counted by reason; training goes on.
"""
from __future__ import annotations

import functools
import io
import logging
import posixpath
import tarfile
from collections import Counter

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image

from schemas.contract import decode_member
from schemas.multiid import REFS_SCHEMA
from schemas.multiid import SCHEMA as GROUPS_SCHEMA
from schemas.reader import load_manifest, read_samples
from schemas.registry import get_schema
from schemas.store import DatasetDir
from stages.complexity import min_max

log = logging.getLogger("subjectforge.train")
TOKEN_PX = 16  # FLUX: VAE / 8, then 2 x 2 latents per token


class BadSample(Exception):
    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def square(image: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square, then resize to size x size."""
    h, w = image.shape[:2]
    s = min(h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = image[y:y + s, x:x + s]
    if s == size:
        return np.ascontiguousarray(crop)
    mode = Image.BICUBIC if crop.dtype == np.uint8 else Image.BILINEAR
    return np.asarray(Image.fromarray(crop).resize((size, size), mode))


def token_map(values: np.ndarray, image_hw: tuple[int, int], size: int, reduce=np.mean) -> np.ndarray:
    """A map over an image (at any grid that divides it) -> [size/16 * size/16] on the token grid
    of the image cropped and resized like the image itself: `reduce` (area mean) per token."""
    h, w = image_hw
    gh, gw = values.shape
    if h % gh or w % gw:
        raise BadSample("map_size", f"map {gh}x{gw} does not tile image {h}x{w}")
    full = np.repeat(np.repeat(values.astype(np.float32), h // gh, 0), w // gw, 1)
    full = square(full, size)
    n = size // TOKEN_PX
    return reduce(full.reshape(n, TOKEN_PX, n, TOKEN_PX), axis=(1, 3)).reshape(-1)


def need(sample: dict, *names: str):
    missing = [n for n in names if sample.get(n) is None]
    if missing:
        raise BadSample("missing_member", ", ".join(missing))
    return [sample[n] for n in names]


def dip_example(s: dict, size: int) -> dict:
    ref, win, lose, mask, complexity = need(s, "ref", "win", "lose", "mask", "complexity")
    if mask.shape != win.shape[:2]:
        raise BadSample("mask_size", f"mask {mask.shape} vs image {win.shape[:2]}")
    if lose.shape != win.shape:
        raise BadSample("image_size", f"loser {lose.shape} vs winner {win.shape}")
    return {"prompt": s["json"]["prompt"], "ref": square(ref, size), "win": square(win, size),
            "lose": square(lose, size),
            # a token is a subject token when any of its pixels is: a small subject keeps its tokens
            "m_prior": (token_map(mask, win.shape[:2], size, np.max) > 0).astype(np.float32),
            "m_d": min_max(token_map(complexity, win.shape[:2], size))}  # eq. 8 on the token grid


def iapo_example(s: dict, size: int) -> dict:
    im0, im1, w0, w1 = need(s, "image_0", "image_1", "weights_0", "weights_1")
    meta = s["json"]
    images, weights = (im0, im1), (w0, w1)
    win = 0 if float(meta["label_0"]) > float(meta["label_1"]) else 1
    return {"prompt": meta["caption"], "win": square(images[win], size), "lose": square(images[1 - win], size),
            "weight_w": token_map(weights[win], images[win].shape[:2], size),
            "weight_l": token_map(weights[1 - win], images[1 - win].shape[:2], size)}


def uper_example(s: dict, size: int) -> dict:
    ref, target = need(s, "ref_clean", "target")
    return {"prompt": s["json"]["prompt"], "ref": square(ref, size), "target": square(target, size)}


def multiid_example(s: dict, size: int, references: "References") -> dict:
    image, embeddings = need(s, "image", "embeddings")
    meta = s["json"]
    ids = [int(i) for i in meta.get("identity") or []]  # the assignment the split was built from
    keys = [k for i in ids if i >= 0 for k in meta.get("reference_keys", {}).get(str(i), [])]
    # the first key that resolves: the rest are never read
    ref = next((r for r in map(references.get, keys) if r is not None), None)
    if ref is None:
        raise BadSample("no_reference", f"identities {ids}")
    kps = np.asarray(meta["keypoints"], np.float32).reshape(-1, 5, 2)
    if len(kps) != len(embeddings):
        raise BadSample("face_count", f"{len(kps)} landmark sets, {len(embeddings)} embeddings")
    h, w = image.shape[:2]
    s_ = min(h, w)
    scale, (y0, x0) = size / s_, ((h - s_) // 2, (w - s_) // 2)
    # pixel centres at integer coordinates (insightface): a resize by s maps x to (x + 0.5) s - 0.5
    landmarks = (kps - [x0, y0] + 0.5) * scale - 0.5
    # a face the centre crop cuts (a landmark outside it) would be an ArcFace crop of zero padding:
    # it leaves the ID and contrastive losses (its identity still leaves the negatives)
    inside = ((landmarks >= 0) & (landmarks <= size - 1)).all(axis=(1, 2))
    if not inside.any():
        raise BadSample("no_face_in_crop", f"{len(kps)} faces, none inside the {s_} px centre crop")
    return {"prompt": meta["caption"], "target": square(image, size), "ref": square(ref, size),
            "landmarks": landmarks[inside], "embeddings": np.asarray(embeddings, np.float32)[inside],
            "identities": ids}


def rl_example(s: dict, size: int, member: str) -> dict:
    """ReFL's D_RL (seed 001, Alg. 1 line 13): (I_ref, P) only, the policy makes the image; `member`
    holds the dataset's reference (UPER's background-cleaned one), the only one decoded."""
    (ref,) = need(s, member)
    return {"prompt": s["json"]["prompt"], "ref": square(ref, size)}


class References:
    """MultiID reference photos by key (OUT/multiid_refs), read when an example needs one: at 1M
    references the images do not fit in memory, their manifest (key -> shard) does.

    A shard's member offsets are learnt once, the first time one of its keys is asked for, from its
    tar headers alone (tarfile seeks over the data); an image is then one ranged read, local or on
    an object store. Decoded images stay in an LRU cache of `cache_size`."""

    def __init__(self, refs_dir: str, cache_size: int = 512, filesystem=None):
        self.dir = DatasetDir.open(refs_dir, dataset=REFS_SCHEMA.name, filesystem=filesystem)
        table = self.dir.read_manifests(columns=["key", "shard"])
        rows = table.to_pydict() if table is not None else {"key": [], "shard": []}
        keys = np.array([k.encode() for k in rows["key"]], dtype="S")
        shards = np.array(rows["shard"], dtype=str)
        # sorted fixed-width bytes and int arrays rather than dicts of str: ~50 bytes a reference, not ~200
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.shard_names, codes = np.unique(shards, return_inverse=True)
        self.shard = codes.reshape(-1)[order]
        self.offset = np.full(len(keys), -1, np.int64)  # -1: not in its tar (or its shard not indexed yet)
        self.size = np.zeros(len(keys), np.int64)
        self.indexed: set[int] = set()
        self.member = REFS_SCHEMA.member_for("image")
        self.decodes = 0
        self.get = functools.lru_cache(maxsize=cache_size)(self._load)

    def __len__(self) -> int:
        return len(self.keys)

    def _find(self, key: str) -> int | None:
        k = key.encode()
        i = int(np.searchsorted(self.keys, k))
        return i if i < len(self.keys) and self.keys[i] == k else None

    def _index(self, code: int) -> None:
        """Offsets of the shard's image members, from its headers."""
        path = self.dir.shard_path(str(self.shard_names[code]))
        suffix = f".{self.member.name}.{self.member.ext}"
        with self.dir.fs.open_input_file(path) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if m.isfile() and m.name.endswith(suffix):
                    i = self._find(m.name[: -len(suffix)])
                    if i is not None and self.shard[i] == code:
                        self.offset[i], self.size[i] = m.offset_data, m.size
        self.indexed.add(code)

    def _load(self, key: str) -> np.ndarray | None:
        """The decoded image of `key`; None when the manifest or its shard has no such image."""
        i = self._find(key)
        if i is None:
            return None
        code = int(self.shard[i])
        if code not in self.indexed:
            self._index(code)
        if self.offset[i] < 0:
            return None
        with self.dir.fs.open_input_file(self.dir.shard_path(str(self.shard_names[code]))) as f:
            data = f.read_at(int(self.size[i]), int(self.offset[i]))
        self.decodes += 1
        image = decode_member(self.member, data)
        image.setflags(write=False)  # shared by every example that hits the cache
        return image


def select(dataset_dir: str, manifest_query: str | None = None, split: str | None = "train") -> tuple[pd.DataFrame, dict]:
    """The manifest rows a run reads, and what was selected: `split` applies to datasets whose
    manifest has a split column (MultiID: "train" keeps MultiID-Bench's photos out of training;
    None: every row), combined with the pandas `manifest_query`."""
    manifest = load_manifest(dataset_dir)
    applied = split if split is not None and "split" in manifest.columns else None
    if applied is not None:
        manifest = manifest[manifest["split"] == applied]
    if manifest_query:
        manifest = manifest.query(manifest_query)
    if manifest.empty:
        raise ValueError(f"{dataset_dir}: no manifest rows with split={applied!r}, manifest_query={manifest_query!r}")
    return manifest, {"split": applied, "manifest_rows": len(manifest)}


def negative_pool(multiid_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(identity ids, centers) the ID contrastive loss draws negatives from: bank/centers.npy row i
    is the identity of bank/bank.parquet row i (ids are hashes, not positions), without the
    held-out identities of MultiID-Bench (dataset.json), which training must never see."""
    d = DatasetDir.open(multiid_dir, dataset=GROUPS_SCHEMA.name)
    ids = pq.read_table(d.sub("bank", "bank.parquet"), filesystem=d.fs, columns=["identity_id"])["identity_id"]
    ids = ids.to_numpy().astype(np.int64)
    with d.fs.open_input_file(d.sub("bank", "centers.npy")) as f:
        centers = np.load(io.BytesIO(f.read()), allow_pickle=False)
    if len(centers) != len(ids):
        raise ValueError(f"{multiid_dir}: centers.npy has {len(centers)} rows, bank.parquet {len(ids)}")
    held = ((d.read_info() or {}).get("bench_split") or {}).get("held_out") or []
    keep = ~np.isin(ids, np.asarray(held, np.int64))
    return ids[keep], centers[keep]


def multiid_references(dataset_dir: str, options: dict) -> dict:
    """MultiID's examples' context: the reference photos in OUT/multiid_refs beside OUT/multiid."""
    refs = posixpath.join(posixpath.dirname(dataset_dir.rstrip("/")), REFS_SCHEMA.name)
    return {"references": References(refs, cache_size=options.get("reference_cache", 512))}


def example_maker(dataset: str, objective: str):
    """The dataset's Example for an objective (its spec, runtime/registry.py); ValueError naming the
    datasets the objective trains on when this one is not among them."""
    from runtime.registry import get_output, trained_by

    ex = get_output(dataset).examples.get(objective)
    if ex is None:
        raise ValueError(f"objective {objective} trains on {', '.join(trained_by(objective)) or 'no dataset'}, "
                         f"not {dataset}")
    return ex


def examples(dataset_dir: str, size: int, *, objective: str, manifest_query: str | None = None,
             split: str | None = "train", shuffle: int = 0, seed: int = 0, epochs: int | None = None,
             skipped: Counter | None = None, selected: dict | None = None, reference_cache: int = 512):
    """Examples of `objective` from one dataset directory (its spec's Example), over the rows
    `select` picks, epoch after epoch (None: endless); `manifest_query` is a pandas query on its
    manifest (e.g. "category == 'animal'", "rating >= 4"). Under torch.distributed each rank reads
    its own part of every epoch (the reader splits shards by rank; `seed` must be the same on every
    rank), so no sample is seen twice in an epoch and an endless stream never runs dry on one rank.
    `selected` is filled with select's record of what was read."""
    dataset = DatasetDir.open(dataset_dir).dataset
    ex = example_maker(dataset, objective)
    make = ex.make
    wanted = set(ex.members) if ex.members is not None else None  # the undecoded members to decode
    manifest, info = select(dataset_dir, manifest_query, split)
    if selected is not None:
        selected.update(info)
    extra = ex.context(dataset_dir, {"reference_cache": reference_cache}) if ex.context else {}
    skipped = Counter() if skipped is None else skipped
    schema = get_schema(dataset)
    epoch = 0
    while epochs is None or epoch < epochs:
        made = 0
        for raw in read_samples(dataset_dir, dataset=dataset, manifest=manifest, shuffle=shuffle, seed=seed,
                                epoch=epoch, decode=False):
            try:
                s = {k: decode_member(schema.member_for(k), v) if isinstance(v, bytes) else v for k, v in raw.items()
                     if wanted is None or k in wanted or not isinstance(v, bytes)}
                made += 1
                yield make(s, size, **extra)
            except (BadSample, KeyError, ValueError, TypeError, OSError) as e:  # OSError: PIL on a corrupt member
                reason = e.reason if isinstance(e, BadSample) else type(e).__name__
                skipped[reason] += 1
                log.warning("skipped sample %s (%s): %s", raw.get("key"), reason, e)
        if not made and epochs is None:  # endless over nothing would spin forever
            raise ValueError(f"{dataset_dir}: an epoch gave this rank no usable example ({dict(skipped)})")
        epoch += 1


def collate(items: list[dict]) -> dict:
    out = {}
    for k in items[0]:
        values = [it[k] for it in items]
        out[k] = values if k in ("prompt", "landmarks", "embeddings", "identities") else np.stack(values)
    return out
