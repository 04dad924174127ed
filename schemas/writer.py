"""The shard writer: a Ray Data Datasink that packs rows into WebDataset tars with one Parquet
manifest per shard, writes reject rows to Parquet, and dataset.json at the end.

A row is a dict: `key`, the schema's members (bytes already encoded, or arrays / dicts that are
encoded here), manifest columns, optional `time_<stage>` seconds, and for a reject the columns
`reject_stage` / `reject_reason` / `reject_detail`. The writer knows nothing about where rows came
from.

    ds.write_datasink(ShardDatasink("out/dip", SCHEMA, config=cfg.model_dump()))
"""
from __future__ import annotations

import json
import posixpath
import time
import uuid
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import ray
from ray.data import Datasink
from ray.data.block import BlockAccessor
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from schemas.contract import (
    REJECT_SCHEMA,
    TIMING_PREFIX,
    DatasetSchema,
    encode_member,
    to_jsonable,
)
from schemas.runs import record_run
from schemas.shard_registry import ShardRegistry
from schemas.store import DatasetDir, shard_name
from schemas.tars import BLOCK as TAR_BLOCK, archive_end, member_header, padded, write_member

DEFAULT_TARGET_BYTES = 1 << 30  # ~1 GB shards on the GPU profile
# A member's header, data and padding are three writes; the buffer makes them one system call per
# MB (on S3 the upload buffers its parts on top of it).
WRITE_BUFFER = 1 << 20


# What counts against a stage's error budget: failures, not verdicts on the data (a gate that
# rejects half its rows is doing its job; a model that fails on half of them is not).
ERROR_REASONS = ("model_error", "bad_data")
# An input that could not be read at all: a few are data, every one of them is a wrong source
UNREADABLE_REASONS = ("missing_file", "unreadable_file")


class ErrorBudgetExceeded(RuntimeError):
    """A stage failed on more than max_error_fraction of its rows: the run stops."""


class _ShardWriter:
    """One tar being filled in a write task; `commit` makes it visible.

    The bytes are those webdataset's TarWriter(encoder=False, mtime=0) writes (members in sorted
    order, tarfile's headers, the same end of archive; tests/schemas/test_writer.py compares them),
    but each header and its data go straight to a buffered stream: TarWriter's tarfile stream
    copies every member through 10 KB records, and importing webdataset imports torch into every
    write worker (2 s, and its memory)."""

    def __init__(self, out: DatasetDir, name: str):
        self.out, self.name = out, name
        self.final = out.shard_path(name)
        self.tmp = out.tmp_path(self.final)
        self.stream = out.fs.open_output_stream(self.tmp, buffer_size=WRITE_BUFFER)
        self.rows: list[dict] = []
        self.nbytes = 0

    def add(self, sample: dict, manifest_row: dict) -> None:
        """sample: `__key__` and `<member>.<ext>` -> bytes (or a memoryview of them)."""
        key = sample["__key__"]
        for name in sorted(sample):
            if name != "__key__":
                data = sample[name]
                self.nbytes += write_member(self.stream, member_header(f"{key}.{name}", len(data)), data)
        self.rows.append(dict(manifest_row, shard=self.name))

    def commit(self, schema: pa.Schema) -> None:
        self.stream.write(archive_end(self.nbytes))
        self.stream.close()
        self.out.commit(self.tmp, self.final)  # tar first: the manifest, renamed last, is the commit
        self.out.write_parquet_atomic(self.out.manifest_path(self.name), manifest_table(self.rows, schema))


def tar_size(sample: dict) -> int:
    """Bytes a sample takes in a tar: per member a header block plus data padded to whole blocks."""
    return sum(TAR_BLOCK + padded(len(v)) for k, v in sample.items() if k != "__key__")


def manifest_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows -> manifest table: declared columns typed by the schema, plus any `time_*` columns."""
    timing = sorted({k for r in rows for k in r if k.startswith(TIMING_PREFIX)})
    schema = pa.schema(list(schema) + [pa.field(t, pa.float64()) for t in timing])
    return pa.Table.from_pylist([{f.name: r.get(f.name) for f in schema} for r in rows], schema=schema)


class ShardDatasink(Datasink):
    """Writes `<out>/shards/<dataset>-NNNNNN.tar` + `<out>/manifest/<same>.parquet` per shard,
    `<out>/rejects/*.parquet` and `<out>/dataset.json`.

    out: the dataset directory (local path or URI); target_bytes / target_samples: when a shard is
    full; config: the resolved config stored in dataset.json; stages: stage names in DAG order, for
    the per-stage table; run_id: one pipeline run that writes the dataset in several passes (MultiID
    writes paired, then unpaired photos) passes the same id to each pass's sink, and dataset.json
    keeps one record of the run, its passes merged (default: a new run); shard_by: a manifest
    column whose values never share a shard (MultiID's paired and unpaired photos).
    """

    def __init__(self, out: str, schema: DatasetSchema, *, target_bytes: int = DEFAULT_TARGET_BYTES,
                 target_samples: int | None = None, config: dict | None = None,
                 stages: list[str] | None = None, filesystem=None, run_id: str | None = None,
                 max_error_fraction: float = 0.05, min_error_rows: int = 20, shard_by: str | None = None):
        self.schema, self.shard_by = schema, shard_by
        self.run_id = run_id or uuid.uuid4().hex
        self.sink_id = uuid.uuid4().hex[:8]  # names this write's reject files (a run may write in passes)
        self.max_error_fraction, self.min_error_rows = max_error_fraction, min_error_rows
        self.out = DatasetDir.open(out, dataset=schema.name, filesystem=filesystem)
        self.target_bytes = target_bytes
        self.target_samples = target_samples
        self.config = config or {}
        self.stages = list(stages or [])
        self.declared = set(schema.manifest_schema.names)
        self.started = time.time()
        # Set up on the driver before any task is serialised: clear what a killed run left, then
        # number new shards after every existing one.
        self.out.makedirs()
        self.removed = self.out.remove_uncommitted()
        # on this node: the registry dies with the driver, never with a preempted worker node
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.registry = ShardRegistry.options(scheduling_strategy=here).remote(self.out.max_shard_index() + 1)
        self.summary: dict | None = None

    # Ray hands each write task about one shard's worth of rows, so a task fills a shard instead of
    # writing one small tar per block (rows should arrive encoded, stages/encode, for bytes to
    # match). Ray takes one bundling target: the sample count when set, else the bytes.
    @property
    def min_bytes_per_write(self) -> int | None:
        return None if self.target_samples else self.target_bytes

    @property
    def min_rows_per_write(self) -> int | None:
        return self.target_samples

    def get_name(self) -> str:
        return f"Shards({self.schema.name})"

    # ------------------------------------------------------------------------------------------
    def write(self, blocks, ctx) -> dict:
        """One write task: its rows' shards and rejects. A retry of the task (its process died) has
        the same rows and task index, so it writes the same shard names with the same samples and
        the same reject file: what the first attempt committed is overwritten with itself, what it
        left half-written stays under a hidden temporary name (removed once every task is done, or by
        the next run)."""
        task = ctx.task_idx
        stats = {"samples": 0, "shards": [], "bytes": 0, "members": set(), "rejects": Counter(), "stage_rows": Counter(),
                 "stage_seconds": defaultdict(float)}
        rejects: list[dict] = []
        errors: dict[str, dict] = defaultdict(dict)
        unreadable: dict[str, dict] = defaultdict(dict)

        def reject(row, stage, reason, detail="", retryable=False):
            rejects.append({"key": str(row.get("key")), "stage": stage, "reason": reason,
                            "detail": str(detail)[:2000], "input": _as_str(row.get("input")),
                            "retryable": bool(retryable)})
            stats["rejects"][(stage, reason)] += 1
            if retryable or reason in ERROR_REASONS:
                count, example = errors[stage].get(reason, (0, f"input {row.get('input')!r}: {str(detail)[:300]}"))
                errors[stage][reason] = (count + 1, example)
            if reason in UNREADABLE_REASONS:
                count, example = unreadable[stage].get(reason, (0, f"input {row.get('input')!r}: {str(detail)[:300]}"))
                unreadable[stage][reason] = (count + 1, example)

        rows = [r for block in blocks for r in _rows(block, self.schema)]
        owners = ray.get(self.registry.claim.remote(task, [str(r.get("key")) for r in rows])) if rows else []
        seen: set[str] = set()
        encoded = []
        for row, owner in zip(rows, owners):
            key = str(row.get("key"))
            if owner is not None or key in seen:  # the same input listed twice: one outcome, one reject row
                where = "this write task" if owner is None else f"write task {owner}"
                reject(dict(row, key=key), "source", "duplicate_input", f"key {key} is also an input of {where}")
                continue
            seen.add(key)
            for k, v in row.items():
                # a row that skipped the stage (rejected earlier) has None, or NaN once a block
                # went through pandas
                if k.startswith(TIMING_PREFIX) and v is not None and v == v:
                    stats["stage_rows"][k[len(TIMING_PREFIX):]] += 1
                    stats["stage_seconds"][k[len(TIMING_PREFIX):]] += float(v)
            if row.get("reject_reason"):
                reject(row, row.get("reject_stage") or "unknown", row["reject_reason"], row.get("reject_detail") or "",
                       row.get("reject_retryable"))
                continue
            try:
                encoded.append(self._encode(row))
            except (ValueError, TypeError) as e:  # a value the schema cannot store: a reject
                reject(row, "write", "encode_failed", f"{type(e).__name__}: {e}")
        del rows
        by_value: dict = defaultdict(list)
        for item in encoded:
            by_value[str(item[1].get(self.shard_by)) if self.shard_by else ""].append(item)
        packed = [group for value in sorted(by_value) for group in self._pack(by_value[value])]
        indices = ray.get(self.registry.shard_indices.remote(task, len(packed))) if packed else []
        for group, index in zip(packed, indices):
            shard = _ShardWriter(self.out, shard_name(self.schema.name, index))
            for sample, manifest_row in group:
                shard.add(sample, manifest_row)
                stats["members"].update(name for name in sample if name != "__key__")
            shard.commit(self.schema.manifest_schema)
            stats["shards"].append(shard.name)
            stats["bytes"] += shard.nbytes
            stats["samples"] += len(group)
        self._write_rejects(rejects, task)
        violation = ray.get(self.registry.report.remote(task, dict(stats["stage_rows"]), dict(errors),
                                                        self.max_error_fraction, self.min_error_rows,
                                                        dict(unreadable)))
        if violation:
            raise ErrorBudgetExceeded(violation)
        stats["rejects"] = [[s, r, n] for (s, r), n in stats["rejects"].items()]
        stats["stage_seconds"] = dict(stats["stage_seconds"])
        stats["members"] = sorted(stats["members"])
        stats["stage_rows"] = dict(stats["stage_rows"])
        return stats

    def _pack(self, encoded: list[tuple[dict, dict]]) -> list[list]:
        """Cut a task's samples into shards of at most target bytes / samples. A byte-bounded tail
        under half a shard joins the shard before it, so a task does not leave a tiny shard behind."""
        groups, group, size = [], [], 0
        for item in encoded:
            n = tar_size(item[0])
            if group and (size + n > self.target_bytes or
                          (self.target_samples and len(group) >= self.target_samples)):
                groups.append(group)
                group, size = [], 0
            group.append(item)
            size += n
        if group:
            if groups and not self.target_samples and size < self.target_bytes / 2:
                groups[-1] += group
            else:
                groups.append(group)
        return groups

    def _encode(self, row: dict) -> tuple[dict, dict]:
        key = str(row["key"])
        if not key or "." in key or "/" in key:
            raise ValueError(f"bad key {key!r}: webdataset keys have no '.' or '/'")
        names = self.schema.member_names(row)
        missing = [n for n in self.schema.missing_required(names) if n != "json"]
        if missing:
            raise ValueError(f"missing members {missing}")
        manifest_row = {k: to_jsonable(v) for k, v in row.items()
                        if k in self.declared or k.startswith(TIMING_PREFIX)}
        sample = {"__key__": key}
        for name in names:
            if name == "json":
                continue
            member, value = self.schema.member_for(name), row[name]
            # bytes (stages/encode) are written as they are: a view into the block, never copied
            sample[f"{name}.{member.ext}"] = value if isinstance(value, (bytes, memoryview)) else encode_member(member, value)
        # The json member: the sample's manifest fields plus anything the pipeline put in `json`.
        meta = {k: v for k, v in manifest_row.items() if k != "shard"}
        extra = row.get("json")
        if extra is not None:
            meta.update(extra if isinstance(extra, dict) else json.loads(bytes(extra) if isinstance(extra, memoryview) else extra))
        sample["json.json"] = encode_member(self.schema.member_for("json"), meta)
        return sample, manifest_row

    def _write_rejects(self, rejects: list[dict], task: int) -> None:
        """The task's rejects in one file named by the write and the task: a retry overwrites it."""
        if rejects:
            name = f"{self.schema.name}-{self.run_id[:8]}-{self.sink_id}-task{task:05d}.parquet"
            table = pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)
            self.out.write_parquet_atomic(posixpath.join(self.out.rejects_dir, name), table)

    # ------------------------------------------------------------------------------------------
    def on_write_complete(self, write_result) -> None:
        # every write task has finished: what a task killed mid-shard (its node lost) left under a
        # temporary name is garbage now, not only for the next run
        self.removed += self.out.remove_uncommitted()
        self.summary = self.write_info([r for r in write_result.write_returns if r])
        violation = ray.get(self.registry.unreadable.remote())  # a small run: every one of its inputs
        if violation:
            raise ErrorBudgetExceeded(violation)

    def write_info(self, returns: list[dict]) -> dict:
        """Aggregate the tasks' counts into this run's record and rewrite dataset.json."""
        return record_run(self.out, self.schema, self.run_id, self.started, self.removed, self.config,
                          self.stages, returns)


def _rows(block, schema: DatasetSchema) -> list[dict]:
    """A block -> row dicts. A member column of bytes in an Arrow block is read in place (a
    memoryview per value into the block the object store already holds) rather than copied into
    a Python bytes object per value; the other columns go through Ray's numpy conversion, where a
    scalar NaN is a null that went through pandas."""
    acc = BlockAccessor.for_block(block)
    if isinstance(block, pa.Table):
        in_place = {f.name for f in block.schema if schema.member_for(f.name) is not None
                    and (pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type))}
        rest = [n for n in block.column_names if n not in in_place]
        columns = acc.to_numpy(rest) if rest else {}
        for name in in_place:
            columns[name] = _views(block.column(name))
    else:
        columns = acc.to_batch_format("numpy")
    n = acc.num_rows()
    return [{k: (None if isinstance(v[i], (float, np.floating)) and v[i] != v[i] else v[i]) for k, v in columns.items()}
            for i in range(n)]


def _views(column: pa.ChunkedArray) -> list:
    """Each value of a binary column as a memoryview into the column's data buffer (None for a
    null): no copy, where a scalar's as_buffer() per value costs tens of microseconds."""
    out = []
    for chunk in column.chunks:
        _, offsets, data = chunk.buffers()
        dtype = np.int64 if pa.types.is_large_binary(chunk.type) else np.int32
        ends = np.frombuffer(offsets, dtype=dtype)[chunk.offset:chunk.offset + len(chunk) + 1]
        view = memoryview(data if data is not None else b"")
        nulls = chunk.is_null().to_pylist() if chunk.null_count else [False] * len(chunk)
        out.extend(None if null else view[ends[i]:ends[i + 1]] for i, null in enumerate(nulls))
    return out


def _as_str(v):
    return None if v is None else str(v)
