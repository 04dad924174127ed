"""`validate(dataset_dir)`: does what is on disk keep the data contract?

Checked: every manifest row has exactly its members in the named tar; members of a key are
contiguous; every member decodes with its declared kind, dtype and rank; masks match their image's
size and maps divide it into a whole grid; every tar member has a manifest row; each key appears
once in the dataset. Tars without a manifest are uncommitted leftovers of a killed run (the next
run removes them); they are listed but are not problems, since no reader ever sees them.
"""
from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from schemas.contract import decode_member
from schemas.registry import get_schema
from schemas.store import DatasetDir


@dataclass
class Problem:
    kind: str  # missing_member, extra_member, non_contiguous, undecodable, size_mismatch, truncated, ...
    shard: str
    key: str | None
    detail: str

    def __str__(self):
        return f"{self.kind:<16} {self.shard} {self.key or '-'}: {self.detail}"


@dataclass
class Report:
    dataset: str
    path: str
    samples: int = 0
    shards: int = 0
    rejects: int = 0
    problems: list[Problem] = field(default_factory=list)
    uncommitted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def kinds(self) -> set[str]:
        return {p.kind for p in self.problems}

    def __str__(self):
        head = (f"{self.dataset} at {self.path}: {self.samples} samples in {self.shards} shards, "
                f"{self.rejects} rejects: {'OK' if self.ok else f'{len(self.problems)} PROBLEMS'}")
        lines = [head] + [f"  {p}" for p in self.problems[:200]]
        if len(self.problems) > 200:
            lines.append(f"  ... {len(self.problems) - 200} more")
        lines += [f"  uncommitted (ignored, removed by the next run): {u}" for u in self.uncommitted]
        return "\n".join(lines)


def validate(dataset_dir: str, filesystem: pafs.FileSystem | None = None) -> Report:
    out = DatasetDir.open(dataset_dir, filesystem=filesystem)
    layout = [out.sub(d) for d in ("shards", "manifest", "rejects")]
    if out.read_info() is None and all(out.fs.get_file_info(d).type == pafs.FileType.NotFound for d in layout):
        # nothing to check is not "OK": a typo in the path must not pass as an empty dataset
        kind = "not_a_dataset" if out.fs.get_file_info(out.path).type == pafs.FileType.Directory else "no_dataset"
        what = "has no dataset.json, shards, manifest or rejects" if kind == "not_a_dataset" else "does not exist"
        return Report(out.dataset, out.path, problems=[Problem(kind, "-", None, f"{out.path} {what}")])
    try:
        schema = get_schema(out.dataset)
    except ValueError as e:
        return Report(out.dataset, out.path, problems=[Problem("unknown_dataset", "-", None, str(e))])
    report = Report(out.dataset, out.path, rejects=out.read_rejects().num_rows)
    declared = set(schema.manifest_schema.names)
    seen: dict[str, str] = {}
    committed = set()
    for mpath in out.manifest_files():
        name = posixpath.basename(mpath)[: -len(".parquet")]
        committed.add(name)
        report.shards += 1
        try:
            table = pq.read_table(mpath, filesystem=out.fs)
        except Exception as e:  # noqa: BLE001
            report.problems.append(Problem("bad_manifest", name, None, repr(e)))
            continue
        missing_cols = declared - set(table.column_names)
        if missing_cols:
            report.problems.append(Problem("manifest_columns", name, None, f"missing {sorted(missing_cols)}"))
        keys = table.column("key").to_pylist()
        report.samples += len(keys)
        for k, shard in zip(keys, table.column("shard").to_pylist()):
            if shard != name:
                report.problems.append(Problem("wrong_shard", name, k, f"row names shard {shard}"))
            if k in seen:
                report.problems.append(Problem("duplicate_key", name, k, f"also in {seen[k]}"))
            seen[k] = name
        _check_tar(out, schema, name, set(keys), report)
    report.uncommitted = [p for p in out.shard_files()
                          if posixpath.basename(p)[: -len(".tar")] not in committed]
    return report


def _check_tar(out: DatasetDir, schema, name: str, rows: set[str], report: Report) -> None:
    path = out.shard_path(name)
    info = out.fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        report.problems.append(Problem("missing_shard", name, None, f"{len(rows)} manifest rows point at {path}"))
        return
    # tarfile reads a tar cut at a member boundary as a shorter, valid one: the end-of-archive
    # marker (two zero blocks, whole 512-byte blocks) is what says the writer finished it
    with out.fs.open_input_file(path) as f:
        f.seek(max(0, info.size - 1024))
        tail = f.read()
    if info.size % 512 or len(tail) < 1024 or any(tail):
        report.problems.append(Problem("truncated", name, None, f"{info.size} bytes, no end-of-archive marker"))
    finished: set[str] = set()
    current, members = None, {}

    def close_sample():
        if current is None:
            return
        finished.add(current)
        if current not in rows:
            report.problems.append(Problem("no_manifest_row", name, current, f"tar members {sorted(members)}"))
            return
        missing = schema.missing_required(members)
        if missing:
            report.problems.append(Problem("missing_member", name, current, f"{missing}"))
        _check_sizes(schema, name, current, members, report)

    try:
        with out.fs.open_input_stream(path) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                key, _, rest = info.name.partition(".")
                mname, _, ext = rest.rpartition(".")
                data = tar.extractfile(info).read()
                if key != current:
                    close_sample()
                    if key in finished:
                        report.problems.append(Problem("non_contiguous", name, key, f"{info.name} after other keys"))
                    current, members = key, {}
                member = schema.member_for(mname)
                if member is None or member.ext != ext:
                    report.problems.append(Problem("extra_member", name, key, info.name))
                    continue
                try:
                    members[mname] = decode_member(member, data)
                except Exception as e:  # noqa: BLE001
                    report.problems.append(Problem("undecodable", name, key, f"{info.name}: {e}"))
                    members[mname] = None
        close_sample()
    except (tarfile.TarError, EOFError, OSError) as e:
        report.problems.append(Problem("truncated", name, current, f"{type(e).__name__}: {e}"))
    for k in sorted(rows - finished):
        report.problems.append(Problem("missing_sample", name, k, "manifest row has no members in the tar"))


def _check_sizes(schema, shard: str, key: str, members: dict, report: Report) -> None:
    for mname, value in members.items():
        member = schema.member_for(mname)
        ref = member.size_of or member.grid_of
        if value is None or ref is None or members.get(ref) is None:
            continue
        h, w = value.shape[:2]
        H, W = members[ref].shape[:2]
        if member.size_of and (h, w) != (H, W):
            report.problems.append(Problem("size_mismatch", shard, key, f"{mname} {h}x{w} vs {ref} {H}x{W}"))
        if member.grid_of and (h == 0 or w == 0 or H % h or W % w or H // h != W // w):
            report.problems.append(Problem("size_mismatch", shard, key, f"{mname} grid {h}x{w} does not tile {ref} {H}x{W}"))
