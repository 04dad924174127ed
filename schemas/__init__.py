"""What a record is on disk: per-dataset schemas, the shard writer, the reader and validation.

Names are imported lazily: a Ray worker that only unpickles the writer does not pay for the
reader's imports (webdataset pulls in torch)."""
import importlib

_EXPORTS = {
    "DatasetSchema": "schemas.contract", "Member": "schemas.contract",
    "get_schema": "schemas.registry",
    "load_manifest": "schemas.reader", "load_rejects": "schemas.reader", "read_samples": "schemas.reader",
    "validate": "schemas.validation",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'schemas' has no attribute {name!r}")
