"""Sample keys: a stable content hash of a sample's inputs and of the config fields that change its
output, so a re-run produces the same keys and resume can skip what exists."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

KEY_LENGTH = 32  # hex chars: 128 bits, no collisions at any dataset size we will see


def _canonical(value):
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(bytes(value)).hexdigest()}
    if isinstance(value, np.ndarray):
        return {"sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest(),
                "shape": list(value.shape), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def sample_key(inputs, output_config: dict) -> str:
    """inputs: what the sample is made from (prompt, seed, file bytes or path + size, ...);
    output_config: the config fields that change the output (PipelineConfig.output_fields())."""
    payload = json.dumps({"in": _canonical(inputs), "cfg": _canonical(output_config)}, sort_keys=True,
                         separators=(",", ":"), default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def file_id(path) -> dict | None:
    """A file's identity for a key: absolute path and size (cheap on the driver; hashing every file
    would be the driver's largest job). Bytes are hashed by sample_key itself."""
    if path is None:
        return None
    if isinstance(path, (bytes, bytearray, memoryview)):
        return {"sha256": hashlib.sha256(bytes(path)).hexdigest()}
    path = os.fspath(path)
    size = os.stat(path).st_size if os.path.isfile(path) else None
    return {"path": os.path.abspath(path) if "://" not in path else path, "size": size}
