"""Where a dataset lives: `OUT/<dataset>/{shards,manifest,rejects}/` and `dataset.json`, on a local
disk or any pyarrow / fsspec filesystem (s3://, gs://, ...).

Commit rule: on a local disk a file is written under a temporary name starting with "_" (pyarrow,
pandas and this module ignore such names), fsynced, and renamed into place; on an object store it
is written to its final name directly (an object appears whole or not at all, and a rename would
be a copy of every byte). A shard's tar is committed before its manifest, so the manifest is the
commit record: a tar without a manifest is an interrupted write, invisible to readers and removed
by the next run.
"""
from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.contract import REJECT_SCHEMA

TMP_PREFIX = "_tmp-"


def resolve_filesystem(uri: str, filesystem: pafs.FileSystem | None = None) -> tuple[pafs.FileSystem, str]:
    """A URI or local path -> (pyarrow filesystem, path in it). pyarrow's own filesystems first
    (local, s3, gcs, hdfs; S3 honours AWS_ENDPOINT_URL), any other fsspec protocol through
    pyarrow's fsspec handler."""
    if filesystem is not None:
        return filesystem, uri.split("://", 1)[-1] if "://" in uri else uri
    if "://" not in uri:
        import os

        path = os.path.abspath(uri)
        return pafs.LocalFileSystem(), path
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def dataset_uri(out: str, dataset: str) -> str:
    """OUT/<dataset>: where a pipeline run with --out OUT writes that dataset."""
    return out.rstrip("/") + "/" + dataset


def shard_name(dataset: str, index: int) -> str:
    return f"{dataset}-{index:06d}"


@dataclass
class DatasetDir:
    """One dataset's output directory."""

    fs: pafs.FileSystem
    path: str
    dataset: str

    @classmethod
    def open(cls, uri: str, dataset: str | None = None, filesystem: pafs.FileSystem | None = None):
        """`uri` is the dataset directory itself (OUT/<dataset>). Without `dataset`, the name comes
        from dataset.json, else from the directory name."""
        fs, path = resolve_filesystem(uri, filesystem)
        path = path.rstrip("/")
        if dataset is None:
            info = read_json(fs, posixpath.join(path, "dataset.json"))
            dataset = (info or {}).get("dataset") or posixpath.basename(path)
        return cls(fs, path, dataset)

    # layout ---------------------------------------------------------------------------------------
    def sub(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    @property
    def shards_dir(self) -> str:
        return self.sub("shards")

    @property
    def manifest_dir(self) -> str:
        return self.sub("manifest")

    @property
    def rejects_dir(self) -> str:
        return self.sub("rejects")

    def shard_path(self, name: str) -> str:
        return posixpath.join(self.shards_dir, name + ".tar")

    def manifest_path(self, name: str) -> str:
        return posixpath.join(self.manifest_dir, name + ".parquet")

    def makedirs(self) -> None:
        for d in (self.shards_dir, self.manifest_dir, self.rejects_dir):
            self.fs.create_dir(d, recursive=True)

    # listing --------------------------------------------------------------------------------------
    def _list(self, directory: str, suffix: str) -> list[str]:
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
        except FileNotFoundError:
            return []
        return sorted(
            i.path for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(("_", "."))
        )

    def manifest_files(self) -> list[str]:
        return self._list(self.manifest_dir, ".parquet")

    def shard_files(self) -> list[str]:
        return self._list(self.shards_dir, ".tar")

    def reject_files(self) -> list[str]:
        return self._list(self.rejects_dir, ".parquet")

    def committed_shards(self) -> list[str]:
        """Shard names that have a manifest: the only shards that exist for a reader."""
        return [posixpath.basename(p)[: -len(".parquet")] for p in self.manifest_files()]

    def max_shard_index(self) -> int:
        indices = [-1]
        for p in self.manifest_files() + self.shard_files():
            m = re.search(r"-(\d+)\.(tar|parquet)$", p)
            if m:
                indices.append(int(m.group(1)))
        return max(indices)

    # reading --------------------------------------------------------------------------------------
    def read_manifests(self, columns: list[str] | None = None) -> pa.Table | None:
        tables = [pq.read_table(p, filesystem=self.fs, columns=columns) for p in self.manifest_files()]
        if not tables:
            return None
        return pa.concat_tables(tables, promote_options="permissive")

    def read_rejects(self) -> pa.Table:
        """Every final reject, and each retryable one whose key has no outcome since (a sample or
        a final reject of a later run): a key is in the rejects at most once."""
        tables = [pq.read_table(p, filesystem=self.fs) for p in self.reject_files()]
        if not tables:
            return REJECT_SCHEMA.empty_table()
        table = pa.concat_tables(tables + [REJECT_SCHEMA.empty_table()], promote_options="permissive")
        retryable = pc.fill_null(table["retryable"], False)
        if not pc.any(retryable).as_py():
            return table
        final = table.filter(pc.invert(retryable))
        manifests = self.read_manifests(columns=["key"])
        decided = pa.concat_arrays([final["key"].combine_chunks().cast(pa.string())] + (
            [manifests["key"].combine_chunks()] if manifests is not None else []))
        pending = table.filter(retryable)
        pending = pending.filter(pc.invert(pc.is_in(pending["key"], value_set=decided)))
        last = {k: i for i, k in enumerate(pending["key"].to_pylist())}  # one row per pending key
        return pa.concat_tables([final, pending.take(pa.array(sorted(last.values()), pa.int64()))])

    def decided_keys(self) -> pa.Array:
        """Keys already decided: written samples and final rejects. Resume skips these; a
        retryable reject is not a decision, so its key is tried again."""
        parts = []
        manifests = self.read_manifests(columns=["key"])
        if manifests is not None:
            parts.append(manifests["key"].combine_chunks().cast(pa.string()))
        rejects = self.read_rejects()
        parts.append(rejects.filter(pc.invert(pc.fill_null(rejects["retryable"], False)))["key"]
                     .combine_chunks().cast(pa.string()))
        return pa.concat_arrays(parts)

    def committed_keys(self) -> set[str]:
        """decided_keys as a set (small datasets, tests)."""
        return set(self.decided_keys().to_pylist())

    def committed_key_array(self):
        """decided_keys as one sorted numpy array of fixed-width bytes (32 MB for 1M keys), for
        resume at scale: put in the object store once, searched per block (runtime/steps.py)
        instead of a hash set of every key rebuilt per batch."""
        return sorted_keys(self.decided_keys())

    def read_info(self) -> dict | None:
        return read_json(self.fs, self.sub("dataset.json"))

    # writing --------------------------------------------------------------------------------------
    @property
    def local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def tmp_path(self, final_path: str) -> str:
        """Where a file is written before its commit: a hidden temporary name beside it on a local
        disk, the final name itself on an object store."""
        if not self.local:
            return final_path
        d, base = posixpath.split(final_path)
        return posixpath.join(d, f"{TMP_PREFIX}{uuid.uuid4().hex[:12]}-{base}")

    def commit(self, tmp: str, final: str) -> None:
        """Local: the data on disk (fsync), then an atomic rename, then the directory entry on disk,
        so a crash of the machine never leaves a committed name over missing bytes."""
        if tmp == final:
            return
        _fsync(tmp)
        self.fs.move(tmp, final)
        _fsync(posixpath.dirname(final))

    def write_info(self, info: dict) -> None:
        """dataset.json. (Its human side, the dataset card README.md, is written above the data
        contract, from the dataset's spec: runtime/card.py.)"""
        self.write_bytes_atomic(self.sub("dataset.json"), json.dumps(info, indent=2).encode())

    def write_bytes_atomic(self, final: str, data: bytes) -> None:
        tmp = self.tmp_path(final)
        with self.fs.open_output_stream(tmp) as f:
            f.write(data)
        self.commit(tmp, final)

    def write_parquet_atomic(self, final: str, table: pa.Table) -> None:
        tmp = self.tmp_path(final)
        pq.write_table(table, tmp, filesystem=self.fs)
        self.commit(tmp, final)

    def remove_uncommitted(self) -> list[str]:
        """Delete what an interrupted run left: temporary files and tars without a manifest."""
        removed = []
        committed = set(self.committed_shards())
        for directory in (self.shards_dir, self.manifest_dir, self.rejects_dir):
            infos = self.fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
            for i in infos:
                if i.type != pafs.FileType.File:
                    continue
                orphan_tar = directory == self.shards_dir and i.base_name.endswith(".tar") and (
                    i.base_name[: -len(".tar")] not in committed
                )
                if i.base_name.startswith(TMP_PREFIX) or orphan_tar:
                    self.fs.delete_file(i.path)
                    removed.append(i.path)
        return removed


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sorted_keys(keys: pa.Array):
    """Unique keys, sorted, as numpy fixed-width bytes (np.searchsorted finds one in log n). Sorted
    by Arrow and viewed in place where every key has one length (sample keys do): 1M keys never
    become 1M Python strings on the driver."""
    import numpy as np

    keys = pc.unique(keys.cast(pa.string()))
    if len(keys) == 0:
        return np.zeros(0, "S1")
    keys = keys.take(pc.sort_indices(keys))
    lengths = pc.binary_length(keys)
    width = max(1, pc.max(lengths).as_py())
    if pc.min(lengths).as_py() == width and keys.null_count == 0:
        offsets = np.frombuffer(keys.buffers()[1], np.int32, count=len(keys) + 1, offset=4 * keys.offset)
        return np.frombuffer(keys.buffers()[2], f"S{width}", count=len(keys), offset=int(offsets[0]))
    return np.asarray(keys.to_numpy(zero_copy_only=False), dtype=f"S{width}")


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    try:
        with fs.open_input_stream(path) as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError):
        return None
