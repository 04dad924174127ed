"""Encode a row's members to their on-disk bytes (JPEG / PNG / npy / json) as a CPU stage, so the
GPU actors never wait on JPEG work and the writer only packs bytes."""
from __future__ import annotations

from schemas.contract import DatasetSchema, encode_member


def encode_members(row: dict, schema: DatasetSchema) -> dict:
    """Replace each member value by its bytes. Raises on a value that cannot be encoded; run it
    through schemas.batch.run_rows so that becomes a reject row."""
    for name in schema.member_names(row):
        member = schema.member_for(name)
        if member.ext != "json":  # the writer builds the json member from the manifest fields
            row[name] = encode_member(member, row[name])
    return row
