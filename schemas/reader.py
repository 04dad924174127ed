"""What training code imports: `load_manifest(dir)` and `read_samples(source)`.

    from schemas import load_manifest, read_samples
    df = load_manifest("out/dip")
    for s in read_samples("out/dip", manifest=df[df.category == "animal"], shuffle=1000):
        s["win"]  # uint8 HxWx3;  s["mask"] bool HxW;  s["complexity"] float16;  s["json"] dict

`read_samples` returns a webdataset DataPipeline (a torch IterableDataset): shards are split by rank
(torch.distributed, or RANK / WORLD_SIZE) and by DataLoader worker, optionally resampled forever, and
samples shuffled in a buffer. Paths may be local or any pyarrow / fsspec URI.

One epoch over all ranks and workers reads every sample once: rank r takes every world-th shard of
the list (shuffled alike on every rank by seed and epoch), each DataLoader worker every
num_workers-th of those. A dataset of fewer shards than ranks is split by key instead (every rank
opens every shard and keeps the keys that hash to it), so no rank is left without samples.
"""
from __future__ import annotations

import glob as globlib
import hashlib
import posixpath
import random
import re
from functools import partial
from itertools import islice

import pandas as pd
import pyarrow.fs as pafs
from braceexpand import braceexpand

from schemas.contract import DatasetSchema, decode_member
from schemas.registry import get_schema
from schemas.store import DatasetDir, resolve_filesystem


def load_manifest(dataset_dir: str, filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    """Every committed manifest row of a dataset as one DataFrame (empty if nothing is written)."""
    out = DatasetDir.open(dataset_dir, filesystem=filesystem)
    table = out.read_manifests()
    if table is None:
        return get_schema(out.dataset).manifest_schema.empty_table().to_pandas()
    return table.to_pandas()


def load_rejects(dataset_dir: str, filesystem: pafs.FileSystem | None = None) -> pd.DataFrame:
    return DatasetDir.open(dataset_dir, filesystem=filesystem).read_rejects().to_pandas()


def resolve_shards(source, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, list[str]]:
    """A dataset directory (its committed shards), a tar path, a glob or brace pattern, or a list
    of those -> (filesystem, shard paths)."""
    sources = [source] if isinstance(source, str) else list(source)
    fs, paths = None, []
    for src in sources:
        for item in braceexpand(src):
            fs_i, path = resolve_filesystem(item, filesystem)
            fs = fs or fs_i
            if any(ch in path for ch in "*?[") and isinstance(fs_i, pafs.LocalFileSystem):
                paths += sorted(globlib.glob(path))
            elif path.endswith(".tar"):
                paths.append(path)
            else:
                out = DatasetDir.open(item, filesystem=filesystem)
                paths += [out.shard_path(name) for name in out.committed_shards()]
    return fs or pafs.LocalFileSystem(), paths


def schema_of(path: str) -> DatasetSchema:
    """Shards are named `<dataset>-NNNNNN.tar`."""
    m = re.fullmatch(r"(.+)-\d+\.tar", posixpath.basename(path))
    if not m:
        raise ValueError(f"cannot tell the dataset of {path}; pass dataset=")
    return get_schema(m.group(1))


# The pipeline's stages are module functions bound with partial, not closures: a DataLoader whose
# workers are spawned (macOS, CUDA in workers, Python 3.14's forkserver default) pickles them.
def _open_shards(urls, fs: pafs.FileSystem):
    for sample in urls:
        yield dict(sample, stream=fs.open_input_stream(sample["url"]))


def _has_key(sample: dict, keys: set) -> bool:
    return sample["__key__"] in keys


def decode_sample(raw: dict, schema: DatasetSchema, decode: bool = True) -> dict:
    """webdataset sample (`name.ext` -> bytes) -> {key, shard, member name -> typed value}."""
    out = {"key": raw["__key__"], "shard": posixpath.basename(raw.get("__url__", ""))[: -len(".tar")]}
    for field, data in raw.items():
        if field.startswith("__"):
            continue
        name = field.rsplit(".", 1)[0]
        member = schema.member_for(name)
        if member is None:
            continue
        out[name] = decode_member(member, data) if decode or member.ext == "json" else data
    return out


def read_samples(source, *, dataset: str | None = None, manifest: pd.DataFrame | None = None,
                 shuffle: int = 0, resampled: bool = False, seed: int = 0, epoch: int = 0, decode: bool = True,
                 split_by_node: bool = True, split_by_worker: bool = True, rank: int | None = None,
                 world: int | None = None, filesystem: pafs.FileSystem | None = None):
    """Iterate decoded samples. `manifest`: a (filtered) manifest DataFrame; only its keys are read
    and shards holding none of them are never opened. `decode=False` keeps images as their bytes.
    `epoch` (with the same `seed` on every rank) reorders the shards before they are split, so
    each epoch gives a rank other shards. `rank` / `world`: this reader's part, by default
    torch.distributed's (or RANK / WORLD_SIZE), taken here and not in the DataLoader's workers,
    where a spawned worker has no process group."""
    import webdataset as wds  # torch comes with it: imported when samples are read, not for a manifest

    fs, shards = resolve_shards(source, filesystem)
    keys = None
    if manifest is not None:
        keys = set(manifest["key"])
        wanted = set(manifest["shard"])
        shards = [s for s in shards if posixpath.basename(s)[: -len(".tar")] in wanted]
    if not shards:
        raise ValueError(f"no shards found in {source!r}")
    schema = get_schema(dataset) if dataset else schema_of(shards[0])
    if epoch and not resampled:
        shards = random.Random(f"{seed}/{epoch}").sample(shards, len(shards))
    if rank is None or world is None:
        rank, world = wds.utils.pytorch_worker_info()[:2]
    by_node = split_by_node and not resampled and world > 1
    by_key = by_node and len(shards) < world
    stages = [wds.ResampledShards(shards, seed=seed, deterministic=True) if resampled else wds.SimpleShardList(shards)]
    if by_node and not by_key:
        stages.append(partial(_every_nth, start=rank, step=world))
    if split_by_worker and not resampled:
        stages.append(wds.split_by_worker)
    stages += [partial(_open_shards, fs=fs), wds.tariterators.tar_file_expander, wds.tariterators.group_by_keys]
    if by_key:
        stages.append(wds.select(partial(_key_of_rank, rank=rank, world=world)))
    if keys is not None:
        stages.append(wds.select(partial(_has_key, keys=keys)))
    if shuffle:
        stages.append(wds.shuffle(shuffle, seed=seed))
    stages.append(partial(_decode_all, schema=schema, decode=decode))
    return wds.DataPipeline(*stages)


def _every_nth(items, start: int, step: int):
    yield from islice(items, start, None, step)


def _key_of_rank(sample: dict, rank: int, world: int) -> bool:
    digest = hashlib.blake2b(sample["__key__"].encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % world == rank


def _decode_all(samples, schema, decode):
    # a plain generator rather than wds.map, which copies __key__ / __url__ into the output
    for raw in samples:
        yield decode_sample(raw, schema, decode)
