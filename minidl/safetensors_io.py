"""Reading safetensors files defensively: the header is checked before any tensor is allocated.

The ``safetensors`` library does the reading; this module first checks the
8-byte header length and the JSON header itself, so that a truncated or
malicious file is refused with an error that names the problem (and the
tensor) rather than a generic failure or a huge allocation:

- header length larger than the file, or not valid UTF-8 JSON;
- duplicate tensor names;
- a dtype outside :data:`ALLOWED_DTYPES`;
- a shape whose byte size disagrees with the tensor's offsets;
- offsets past the end of the data, overlapping tensors, or gaps.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

__all__ = ["ALLOWED_DTYPES", "SafetensorsError", "read_header", "read_safetensors"]

ALLOWED_DTYPES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "I32": 4, "I64": 8,
                  "BOOL": 1}
MAX_HEADER_BYTES = 100 << 20


class SafetensorsError(ValueError):
    """A safetensors file that is malformed or unsafe; the message names the file and the problem."""


def _no_duplicates(pairs):
    seen = {}
    for key, value in pairs:
        if key in seen:
            raise SafetensorsError(f"duplicate name {key!r} in the header")
        seen[key] = value
    return seen


def read_header(path) -> tuple:
    """(header dict without "__metadata__", metadata dict, data offset) after checking everything."""
    path = Path(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise SafetensorsError(f"{path}: file too short for a safetensors header ({size} bytes)")
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len > size - 8:
            raise SafetensorsError(f"{path}: header length {header_len} is larger than the file ({size} bytes)")
        if header_len > MAX_HEADER_BYTES:
            raise SafetensorsError(f"{path}: header length {header_len} is over the limit of {MAX_HEADER_BYTES} bytes")
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except SafetensorsError as e:
        raise SafetensorsError(f"{path}: {e}") from None
    except (ValueError, RecursionError) as e:  # bad UTF-8 or JSON, a 5000-digit number, [[[[...]]]]
        raise SafetensorsError(f"{path}: header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise SafetensorsError(f"{path}: header is not a JSON object")
    metadata = header.pop("__metadata__", {}) or {}
    if not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise SafetensorsError(f"{path}: __metadata__ must map names to strings, got {metadata!r}")
    data_len = size - 8 - header_len
    spans = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise SafetensorsError(f"{path}: tensor {name!r}: entry must have exactly dtype, shape, data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in ALLOWED_DTYPES:
            raise SafetensorsError(f"{path}: tensor {name!r}: dtype {dtype!r} is not allowed "
                                   f"(allowed: {', '.join(sorted(ALLOWED_DTYPES))})")
        if not (isinstance(shape, list) and all(type(n) is int and n >= 0 for n in shape)):
            raise SafetensorsError(f"{path}: tensor {name!r}: bad shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"{path}: tensor {name!r}: bad data_offsets {offsets!r}")
        if offsets[1] > data_len:
            raise SafetensorsError(f"{path}: tensor {name!r}: offsets {offsets} go past the end of the data "
                                   f"({data_len} bytes)")
        expected = math.prod(shape) * ALLOWED_DTYPES[dtype]  # exact: numpy.prod would wrap around in int64
        if offsets[1] - offsets[0] != expected:
            raise SafetensorsError(f"{path}: tensor {name!r}: shape {shape} of {dtype} needs {expected} bytes but "
                                   f"its offsets span {offsets[1] - offsets[0]}")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    position = 0
    for begin, end, name in spans:
        if begin < position:
            raise SafetensorsError(f"{path}: tensor {name!r} overlaps the tensor before it (offset {begin})")
        if begin > position:
            raise SafetensorsError(f"{path}: gap of {begin - position} bytes before tensor {name!r}")
        position = end
    if position != data_len:
        raise SafetensorsError(f"{path}: {data_len - position} bytes after the last tensor are not accounted for")
    return header, metadata, 8 + header_len


def read_safetensors(path) -> dict:
    """name -> NumPy array, after :func:`read_header` accepted the file.

    BF16 tensors come back as ml_dtypes' bfloat16 (NumPy has none of its own).
    """
    header, _, _ = read_header(path)
    if any(info["dtype"] == "BF16" for info in header.values()):
        from .backend import bfloat16

        try:
            bfloat16()  # importing ml_dtypes teaches NumPy the name the library asks for
        except TypeError as e:
            raise SafetensorsError(f"{path}: {e}") from None
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # the library's own checks, as a last line
        raise SafetensorsError(f"{path}: {e}") from None
