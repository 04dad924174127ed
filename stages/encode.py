"""Encode a row's members to their on-disk bytes (JPEG / PNG / npy / json) as a CPU stage, so the
GPU actors never wait on JPEG work and the writer only packs bytes."""
from __future__ import annotations

from runtime.plan import step
from runtime.rows import Reject
from schemas.contract import DatasetSchema, encode_member


@step(rejects=("unencodable",))  # reads the schema's members (Plan.check requires them)
def encode_members(row: dict, schema: DatasetSchema) -> dict:
    """Replace each member value by its bytes; a value that is no valid member (a NaN image, a
    mask of the wrong rank) is the reject `unencodable`."""
    for name in schema.member_names(row):
        member = schema.member_for(name)
        if member.ext != "json":  # the writer builds the json member from the manifest fields
            try:
                row[name] = encode_member(member, row[name])
            except ValueError as e:
                raise Reject("unencodable", f"{name}: {e}") from None
    return row
