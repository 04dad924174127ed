"""The input layer: every pipeline's source of photos goes through here, read lazily by Ray Data on
any filesystem pyarrow or fsspec reaches (a local disk, s3://, gs://, hf:// where installed).

One config field takes any of these; what it is follows from the string (README, "Inputs"):

- a folder of images (`groups`), or of one sub-folder per identity / subject (`singles`, DreamBench);
- a glob of images (`photos/*.jpg`); listed by a task, never by the driver;
- a list: .parquet / .jsonl / .csv with a `path` column (paths or URIs; `identity` for singles);
  relative paths are relative to the list's folder (`resolve`, the one place that says so);
- WebDataset shards in img2dataset's layout (`<key>.jpg` + `<key>.json` / `.txt`): a .tar, a glob
  or a brace pattern (`s3://crawl/groups/{00000..00999}.tar`);
- Parquet with the image bytes in a column (img2dataset's parquet output: `jpg`).

A source's rows: `input` (what identifies the photo: the path as listed, or `<shard URI>#<member
key>`, or `<parquet URI>#<key column>`, or `sha256:<bytes' hash>` where the parquet has no key),
`path` (what `open_bytes` reads on a worker; None when the bytes came with the row), `data` (the
image bytes of a shard member or a parquet row), `read_error` ("reason: detail" for a member the
reader could not produce: a truncated shard, a sample without an image) and, asked for,
`identity`. The driver lists shard and list files (hundreds), never photos: folders are listed
inside tasks, lists and shards are read by Ray Data's readers in parallel, in bounded blocks.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import tarfile
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

from runtime.rows import Reject
from schemas.store import resolve_filesystem

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
LIST_EXTS = (".parquet", ".jsonl", ".ndjson", ".json", ".csv")
# img2dataset's parquet output holds the photo in `jpg`; Hugging Face exports name it `image`
BYTES_COLUMNS = ("jpg", "jpeg", "png", "webp", "image", "bytes")
IMAGE_COLUMNS = ("path", "data", "read_error")  # besides `input`, what every source row carries
ROWS_PER_BLOCK = 256  # a listing task's or a shard's rows per output block: bounded, whatever the input
_PATTERN_CHARS = "*?[{"


class SourceError(ValueError):
    """A source that cannot be read at all (no such file, a list without `path`): the user's
    mistake, one line before any work."""


# --- where a source is ---------------------------------------------------------------------------

def is_uri(path) -> bool:
    return isinstance(path, str) and "://" in path


def resolve(path, base: str | None):
    """A path from a list, relative to the list's folder `base` (a local folder or a URI); absolute
    paths, URIs and non-strings (bytes) unchanged. Local results keep the form the list gave
    (`base/relative`, not made absolute), so the keys of existing datasets stay as they were."""
    if not isinstance(path, str) or not path or not base or is_uri(path) or Path(path).is_absolute():
        return path
    if is_uri(base):
        scheme, rest = base.split("://", 1)
        return f"{scheme}://{posixpath.normpath(posixpath.join(rest, path))}"
    return str(Path(base) / path)


def parent_of(source: str) -> str:
    """The folder a list file lives in: what its relative paths are relative to."""
    if is_uri(source):
        scheme, rest = source.split("://", 1)
        return f"{scheme}://{posixpath.dirname(rest.rstrip('/'))}"
    return str(Path(source).parent)


def join(root: str, rel: str) -> str:
    """root (as the config gave it) + a path below it, in root's own form."""
    return f"{root.rstrip('/')}/{rel}" if is_uri(root) else str(Path(root) / rel)


def _uri(scheme: str | None, fs_path: str) -> str:
    return f"{scheme}://{fs_path}" if scheme else fs_path


def _scheme(source: str) -> str | None:
    return source.split("://", 1)[0] if is_uri(source) else None


def kind_of(source: str) -> str:
    """"shards", "table" (a list, or parquet with bytes), "glob" (of images) or "folder"."""
    name = source.rstrip("/").rsplit("/", 1)[-1].lower()
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "shards"
    if name.endswith(LIST_EXTS):
        return "table"
    if any(c in source for c in _PATTERN_CHARS):
        return "glob"
    return "folder"


def expand(source: str) -> tuple[pafs.FileSystem, list[str]]:
    """The files a shard or list source names (fs paths): brace patterns expanded, globs matched
    against a listing of their folder. These are the source's files (hundreds), not its photos."""
    import braceexpand

    fs = filesystem_of(source)
    files = []
    for pattern in braceexpand.braceexpand(source):
        path = locate(pattern)[1]
        if any(c in pattern for c in "*?["):
            folder = posixpath.dirname(path)
            infos = _listing(fs, folder, recursive=False)
            files += sorted(i.path for i in infos if i.type == pafs.FileType.File
                            and fnmatch.fnmatchcase(i.path, path))
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.Directory:  # a folder of list files (a parquet dataset)
                files += sorted(i.path for i in _listing(fs, path, recursive=False)
                                if i.type == pafs.FileType.File and i.path.lower().endswith(LIST_EXTS)
                                and not posixpath.basename(i.path).startswith(("_", ".")))
            elif info.type == pafs.FileType.File:
                files.append(path)
            else:
                raise SourceError(f"{pattern}: no such file")
    if not files:
        raise SourceError(f"{source}: matches no file")
    return fs, files


def _listing(fs: pafs.FileSystem, folder: str, recursive: bool) -> list:
    try:
        return fs.get_file_info(pafs.FileSelector(folder, recursive=recursive))
    except FileNotFoundError:
        raise SourceError(f"{folder}: no such folder") from None


def read_text(source: str) -> str:
    """A small text file (DreamBench's prompts_and_classes.txt) from any filesystem."""
    fs, path = locate(source)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{source}: no such file") from None


def exists(source: str) -> bool:
    fs, path = locate(source)
    return fs.get_file_info(path).type == pafs.FileType.File


def list_subjects(source: str) -> list[tuple[str, list[str]]]:
    """(sub-folder name, its images in name order) per sub-folder of a photo folder (DreamBench:
    a folder per subject), paths in the source's own form."""
    fs, root = locate(source)
    if fs.get_file_info(root).type != pafs.FileType.Directory:
        raise SourceError(f"{source} is not a folder")
    out = []
    for folder in sorted(i.path for i in _listing(fs, root, recursive=False) if i.type == pafs.FileType.Directory):
        name = posixpath.basename(folder)
        photos = sorted(posixpath.basename(i.path) for i in _listing(fs, folder, recursive=False)
                        if i.type == pafs.FileType.File and i.path.lower().endswith(IMAGE_EXTS))
        out.append((name, [join(join(source, name), p) for p in photos]))
    return out


# --- reading photos ------------------------------------------------------------------------------

def read_images(source: str, with_identity: bool = False):
    """A Ray Dataset of the source's photos: input, path, data, read_error (and identity)."""
    if not source:
        raise SourceError("no source given")
    kind = kind_of(source)
    if kind == "shards":  # a task per shard already (a crawl has thousands); spread, the driver
        return read_shards(source, with_identity)  # held 448 MB at 1M members against 396 MB
    return spread((read_table if kind == "table" else read_folder)(source, with_identity))


def spread(ds):
    """Blocks of ROWS_PER_BLOCK rows, each its own task downstream: Ray Data fuses the steps after
    a read into the read's task, so one big list or folder would be keyed and decoded by one task,
    row after row (measured: the first of 20k rows after 115 s, against 5 s spread)."""
    return ds.repartition(target_num_rows_per_block=ROWS_PER_BLOCK)


def read_folder(source: str, with_identity: bool):
    """A folder (with identity: its sub-folders are the identities) or a glob of images, listed by
    tasks: the driver lists only the identity folders."""
    import ray

    fs, root = locate(source)
    pattern = None
    if kind_of(source) == "glob":
        root, pattern = _glob_root(root)
        source = source[: len(source) - len(pattern)].rstrip("/") if pattern else source
    info = fs.get_file_info(root)
    if info.type != pafs.FileType.Directory:
        raise SourceError(f"{source}: no such folder")
    if with_identity and pattern is None:
        folders = sorted(posixpath.basename(i.path) for i in _listing(fs, root, recursive=False)
                         if i.type == pafs.FileType.Directory)
        tasks = [{"folder": f} for f in folders]
    else:
        tasks = [{"folder": ""}]
    listing = _Lister(source, root, pattern, with_identity)
    ds = ray.data.from_items(tasks, override_num_blocks=max(1, min(len(tasks), 64)))
    return ds.map_batches(listing, batch_size=1, batch_format="pyarrow")


def _glob_root(path: str) -> tuple[str, str]:
    """("folder", "pattern below it") of a glob: the folder is the part before the first wildcard."""
    parts = path.split("/")
    i = next(n for n, p in enumerate(parts) if any(c in p for c in _PATTERN_CHARS))
    return "/".join(parts[:i]) or "/", "/".join(parts[i:])


class _Lister:
    """A listing task: one folder's images as rows, ROWS_PER_BLOCK a block."""

    def __init__(self, source: str, root: str, pattern: str | None, with_identity: bool):
        self.source, self.root, self.pattern, self.with_identity = source, root, pattern, with_identity

    def __call__(self, batch: pa.Table):
        fs = filesystem_of(self.source)
        for folder in batch["folder"].to_pylist():
            where = posixpath.join(self.root, folder) if folder else self.root
            infos = _listing(fs, where, recursive=self.pattern is not None and "/" in self.pattern)
            rels = sorted(posixpath.relpath(i.path, self.root) for i in infos if i.type == pafs.FileType.File)
            if self.pattern is not None:
                rels = [r for r in rels if fnmatch.fnmatchcase(r, self.pattern)]
            rels = [r for r in rels if r.lower().endswith(IMAGE_EXTS)]
            for i in range(0, len(rels), ROWS_PER_BLOCK):
                chunk = rels[i:i + ROWS_PER_BLOCK]
                paths = [join(self.source, r) for r in chunk]  # as the config gave it: what keys hash
                yield photo_table(
                    self.with_identity, input=paths,
                    # what a worker reads: absolute, whatever its working directory
                    path=paths if is_uri(self.source) else [posixpath.join(self.root, r) for r in chunk],
                    identity=[folder or posixpath.basename(posixpath.dirname(r)) or None for r in chunk])


def read_table(source: str, with_identity: bool = False, path_column: str = "path"):
    """A list (.parquet / .jsonl / .csv of `path`, `identity`) or a parquet with image bytes."""
    fs, files = expand(source)
    scheme = _scheme(source)
    columns = _columns_of(fs, files[0])
    bytes_column = next((c for c in BYTES_COLUMNS if c in columns), None) if files[0].endswith(".parquet") else None
    if bytes_column is None and path_column not in columns:
        raise SourceError(f"{source}: a list needs a `{path_column}` column (has {', '.join(columns) or 'none'}), "
                          f"or a parquet an image bytes column ({', '.join(BYTES_COLUMNS)})")
    if with_identity and "identity" not in columns:
        raise SourceError(f"{source}: no `identity` column (the bank needs each single's identity)")
    want = [c for c in ((bytes_column or path_column), "key", "identity") if c in columns]
    if not with_identity and "identity" in want:
        want.remove("identity")
    parts = []
    for folder in sorted({posixpath.dirname(f) for f in files}):
        group = [f for f in files if posixpath.dirname(f) == folder]
        ds = _reader(group, fs, columns=want, include_paths=bytes_column is not None)
        if bytes_column:
            fn = _BytesRows(bytes_column, scheme, with_identity)
        else:  # one list: its folder as the config names it (relative stays relative: the keys)
            base = parent_of(source) if len(files) == 1 else _uri(scheme, folder)
            fn = _ListRows(path_column, base, with_identity)
        parts.append(ds.map_batches(fn, batch_format="pyarrow", batch_size=ROWS_PER_BLOCK))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def read_rows(source: str):
    """A list's rows as they are (UPER / IAPO pairs, DIP prompts): Ray Data's reader for its
    format. Path columns are resolved by the steps that read them, against `parent_of(source)`."""
    fs, files = expand(source)
    return spread(_reader(files, fs))


def _reader(files: list[str], fs, columns: list[str] | None = None, include_paths: bool = False):
    import ray

    suffix = files[0].lower().rsplit(".", 1)[-1]
    if suffix == "parquet":
        ctx = ray.data.DataContext.get_current()
        # Ray 2.60's datasource v2 lists the files in an operator of its own that took 5 s (local)
        # to 12 s (S3) before the first block here; v1 reads a small list in 0.1 s (measured). The
        # choice is made when the read is declared, so the context is restored at once.
        v2, ctx.use_datasource_v2 = ctx.use_datasource_v2, False
        try:
            return ray.data.read_parquet(files, filesystem=fs, columns=columns, include_paths=include_paths)
        finally:
            ctx.use_datasource_v2 = v2
    if suffix == "csv":
        import pyarrow.csv as pacsv

        # identities like "0042" stay strings (CSV's type inference would make them 42)
        ds = ray.data.read_csv(files, filesystem=fs, convert_options=pacsv.ConvertOptions(
            column_types={c: pa.string() for c in columns or ()}))
    else:
        ds = ray.data.read_json(files, filesystem=fs)  # Arrow's reader: one JSON object a line
    return ds.select_columns(columns) if columns else ds


def _columns_of(fs: pafs.FileSystem, path: str) -> list[str]:
    """The columns of a list file, from its footer or first line (a read of a few KB)."""
    import pyarrow.parquet as pq

    if path.endswith(".parquet"):
        with fs.open_input_file(path) as f:
            return pq.read_schema(f).names
    with fs.open_input_stream(path) as f:
        head = f.read(1 << 16).decode("utf-8", "replace").splitlines()
    if not head:
        return []
    if path.endswith(".csv"):
        import csv

        return next(csv.reader([head[0]]))
    try:
        return list(json.loads(head[0]))
    except ValueError:
        raise SourceError(f"{path}: the first line is not a JSON object") from None


class _ListRows:
    """A list's rows -> photo rows: relative paths resolved against the list's folder."""

    def __init__(self, column: str, base: str, with_identity: bool):
        self.column, self.base, self.with_identity = column, base, with_identity
        self.absolute = base if is_uri(base) else os.path.abspath(base)  # on the driver: its working directory

    def __call__(self, batch: pa.Table) -> pa.Table:
        listed = batch[self.column].to_pylist()
        inputs = [resolve(p, self.base) if p else None for p in listed]
        return photo_table(self.with_identity, input=inputs,
                           path=[resolve(p, self.absolute) if p else None for p in listed],
                           read_error=[None if p else "missing_file: the list's row has no path" for p in inputs],
                           identity=_identities(batch, self.with_identity))


class _BytesRows:
    """A parquet's rows with image bytes -> photo rows, each identified by its file and key (or
    its bytes' SHA-256 where the parquet has no `key`)."""

    def __init__(self, column: str, scheme: str | None, with_identity: bool):
        self.column, self.scheme, self.with_identity = column, scheme, with_identity

    def __call__(self, batch: pa.Table) -> pa.Table:
        data = [_image_bytes(v) for v in batch[self.column].to_pylist()]
        files = batch["path"].to_pylist()
        keys = batch["key"].to_pylist() if "key" in batch.column_names else [None] * len(data)
        inputs = [f"{_uri(self.scheme, f)}#{k}" if k is not None else
                  f"sha256:{hashlib.sha256(d).hexdigest()}" if d is not None else f"{_uri(self.scheme, f)}#?"
                  for f, k, d in zip(files, keys, data)]
        return photo_table(self.with_identity, input=inputs, data=data,
                           read_error=[None if d is not None else f"missing_file: no bytes in `{self.column}`"
                                       for d in data],
                           identity=_identities(batch, self.with_identity))


def _image_bytes(value):
    if isinstance(value, dict):  # Hugging Face's image struct {"bytes", "path"}
        value = value.get("bytes")
    return bytes(value) if value is not None else None


def _identities(batch: pa.Table, with_identity: bool) -> list | None:
    return [None if v is None else str(v) for v in batch["identity"].to_pylist()] if with_identity else None


def photo_table(with_identity: bool, input: list, path=None, data=None, read_error=None, identity=None) -> pa.Table:
    """A block of photo rows in the source schema; a column not given is null."""
    n = len(input)
    columns = {"input": input, "path": path, "data": data, "read_error": read_error, "identity": identity}
    schema = _schema(with_identity)
    return pa.table({f.name: pa.nulls(n, f.type) if columns[f.name] is None else pa.array(columns[f.name], f.type)
                     for f in schema}, schema=schema)


def _schema(with_identity: bool) -> pa.Schema:
    fields = [("input", pa.string()), ("path", pa.string()), ("data", pa.binary()), ("read_error", pa.string())]
    return pa.schema(fields + ([("identity", pa.string())] if with_identity else []))


# --- WebDataset shards (img2dataset) ---------------------------------------------------------------

def read_shards(source: str, with_identity: bool = False):
    """img2dataset's shards: each sample's image member (jpg / png / webp) and its json (`identity`
    for singles; url, caption are kept in the crawl, not here). A shard is read as a stream by a
    task; a truncated or corrupt shard ends in a reject row, after the samples before the damage."""
    import ray

    fs, files = expand(source)
    return ray.data.read_datasource(crawl_shards()(files, filesystem=fs, scheme=_scheme(source),
                                                   with_identity=with_identity))


MAX_MEMBER_BYTES = 256 << 20  # the default max_input_bytes: a shard member past it is never read


@lru_cache(maxsize=None)
def crawl_shards() -> type:
    """The datasource class, made on first use: importing this module (every stage that opens a
    photo does) never imports Ray Data."""
    from ray.data.datasource import FileBasedDatasource

    class CrawlShards(FileBasedDatasource):
        """Ray Data's file-based datasource over tar streams: its files, filesystem, parallelism
        and retries of I/O are Ray's; what a tar holds is read_shard's."""

        _FILE_EXTENSIONS = ["tar", "tar.gz", "tgz"]

        def __init__(self, paths, *, scheme: str | None, with_identity: bool, **kwargs):
            super().__init__(paths, **kwargs)
            self.scheme, self.with_identity = scheme, with_identity

        def _read_stream(self, f, path: str):
            yield from read_shard(f, _uri(self.scheme, path), self.with_identity)

    return CrawlShards


def read_shard(f, uri: str, with_identity: bool):
    """One tar stream (Python's tarfile) -> photo rows, one per member key, ROWS_PER_BLOCK a block.
    Unlike read_webdataset, damage in a shard is data (a reject row after the samples before it),
    not a failed task, and a member larger than MAX_MEMBER_BYTES is skipped unread."""
    schema = _schema(with_identity)
    rows: list[dict] = []
    sample: dict | None = None
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isreg():
                    continue
                key, ext = _member_key(member.name)
                if sample is None or key != sample["key"]:
                    if sample is not None:
                        rows.append(_shard_row(uri, sample, with_identity))
                    sample = {"key": key}
                    if len(rows) >= ROWS_PER_BLOCK:
                        yield pa.Table.from_pylist(rows, schema=schema)
                        rows = []
                if ext in IMAGE_EXTS and "image" not in sample:
                    if member.size > MAX_MEMBER_BYTES:
                        sample["error"] = f"file_too_large: {member.name}: {member.size} bytes"
                    else:
                        sample["image"] = tar.extractfile(member).read()
                elif ext == ".json":
                    sample["json"] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, UnicodeDecodeError) as e:
        # bad data, not a failed read: the sample in progress (if any) carries the damage
        sample = sample or {"key": "(start)"}
        sample["error"] = f"unreadable_file: {uri}: the shard is damaged at sample {sample['key']}: " \
                          f"{type(e).__name__}: {e}"
        sample.pop("image", None)
    if sample is not None:
        rows.append(_shard_row(uri, sample, with_identity))
    if rows:
        yield pa.Table.from_pylist(rows, schema=schema)


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the sample key is the member's path up to the first dot of its base name."""
    folder, base = posixpath.split(name)
    stem, dot, rest = base.partition(".")
    return posixpath.join(folder, stem), ("." + rest.rsplit(".", 1)[-1].lower()) if dot else ""


def _shard_row(uri: str, sample: dict, with_identity: bool) -> dict:
    row = {"input": f"{uri}#{sample['key']}", "path": None, "data": sample.get("image"), "read_error": None}
    meta = {}
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except ValueError:
            meta = {}
    if sample.get("error"):
        row["read_error"] = sample["error"]
    elif row["data"] is None:
        row["read_error"] = f"missing_file: sample {sample['key']} has no image member"
    if with_identity:
        identity = meta.get("identity") if isinstance(meta, dict) else None
        row["identity"] = None if identity is None else str(identity)
    return row


# --- reading a photo on a worker -------------------------------------------------------------------

@lru_cache(maxsize=16)
def _filesystem(prefix: str) -> pafs.FileSystem:
    """One filesystem per scheme and bucket in a process (an S3 client is not free)."""
    return resolve_filesystem(prefix + "x")[0]


def locate(source: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path in it) of a path or URI; a local path made absolute."""
    fs = filesystem_of(source)
    return fs, resolve_filesystem(source, fs if is_uri(source) else None)[1]


def filesystem_of(source: str) -> pafs.FileSystem:
    """The filesystem of a path or URI, from its scheme and bucket only: an object name may hold
    what a URI parser refuses (spaces, braces of a pattern, brackets)."""
    if not is_uri(source):
        return pafs.LocalFileSystem()
    scheme, rest = source.split("://", 1)
    return _filesystem(f"{scheme}://{rest.split('/', 1)[0]}/")


def open_bytes(path: str, max_bytes: int | None) -> bytes:
    """A URI's bytes through its filesystem; never more than max_bytes are read. A missing object
    is "missing_file"; a directory "unreadable_file"; a refused or failed read an
    "unreadable_file" the next run retries (credentials, a network: not the data's fault)."""
    fs, where = locate(path)
    try:
        info = fs.get_file_info(where)
        if info.type == pafs.FileType.NotFound:
            raise Reject("missing_file", path)
        if info.type != pafs.FileType.File:
            raise Reject("unreadable_file", f"{path}: not a file")
        if max_bytes is not None and info.size is not None and info.size > max_bytes:
            raise Reject("file_too_large", f"{path}: {info.size} bytes > max_input_bytes {max_bytes}")
        with fs.open_input_stream(where) as f:
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
    except Reject:
        raise
    except FileNotFoundError:
        raise Reject("missing_file", path) from None
    except OSError as e:
        raise Reject("unreadable_file", f"{path}: {type(e).__name__}: {e}", retryable=True) from None
    if max_bytes is not None and len(data) > max_bytes:
        raise Reject("file_too_large", f"{path}: more than max_input_bytes {max_bytes}")
    return data


def image_of(row: dict):
    """What a photo row's loader decodes: its bytes, or its path; a reader's error is its reject."""
    error = row.get("read_error")
    if error:
        reason, _, detail = str(error).partition(": ")
        raise Reject(reason, detail)
    data = row.get("data")
    return data if data is not None else row.get("path")
