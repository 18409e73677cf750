"""IDX files (the MNIST family's format), plain or gzipped, read into NumPy arrays."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy

__all__ = ["read_idx", "load_idx_dataset", "FASHION_MNIST_DIR"]

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


def load_idx_dataset(root=None, split: str = "train"):
    """(images uint8 (N, 28, 28), labels int64 (N,)) of an MNIST-layout directory.

    ``root`` defaults to Debian's Fashion-MNIST location; ``split`` is
    "train" or "test" (files ``train-*`` / ``t10k-*``).
    """
    root = Path(root or os.environ.get("MINIDL_FASHION_MNIST", FASHION_MNIST_DIR))
    prefix = {"train": "train", "test": "t10k"}[split]
    found = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [root / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(
                f"{candidates[0]} not found. Fashion-MNIST is Debian's package dataset-fashion-mnist: "
                "apt-get install dataset-fashion-mnist (or point root/MINIDL_FASHION_MNIST at a directory "
                "with the IDX files)"
            )
        found[kind] = read_idx(path)
    images, labels = found["images-idx3-ubyte"], found["labels-idx1-ubyte"].astype(numpy.int64)
    if len(images) != len(labels):
        raise ValueError(f"{root}: {len(images)} images but {len(labels)} labels for split {split!r}")
    return images, labels
