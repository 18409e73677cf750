"""IDX files (the MNIST family's format), plain or gzipped, read into NumPy arrays."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy

__all__ = ["read_idx", "FASHION_MNIST_DIR"]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# IDX type codes -> big-endian dtypes
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> numpy.ndarray:
    """Read one IDX file (``.gz`` or not) and check its header against its size.

    Raises ValueError naming the file when the magic number, the type code or
    the declared shape does not fit the bytes present.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number)")
    type_code, ndim = raw[2], raw[3]
    if type_code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown IDX element type 0x{type_code:02x}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = numpy.dtype(_IDX_DTYPES[type_code])
    expected = int(numpy.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX header declares shape {shape} ({expected} bytes) but {len(raw) - header} bytes follow"
        )
    return numpy.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))
