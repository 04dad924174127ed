"""What a record is on disk: per-dataset schemas, the shard writer, the reader and validation."""
from schemas.contract import DatasetSchema, Member
from schemas.reader import load_manifest, load_rejects, read_samples
from schemas.registry import SCHEMAS, get_schema
from schemas.validate import validate

__all__ = ["DatasetSchema", "Member", "SCHEMAS", "get_schema", "load_manifest", "load_rejects",
           "read_samples", "validate"]
