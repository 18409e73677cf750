"""Packed datasets: images decoded once, resized, and stored as JPEG bytes in one file per split.

``minidl data pack FOLDER OUT`` writes ``OUT/train.mdlpack`` (and
``OUT/val.mdlpack``); ``--data OUT`` trains from them. One file, little-endian:

    header  48 bytes: magic b"MINIDLPK", version u32, channels u32, height u32, width u32,
                      count u64, index_offset u64, meta_length u64
    images  the encoded images, back to back, from byte 48 to index_offset
    index   offsets u64 (count + 1): image i is bytes offsets[i]:offsets[i + 1]
    labels  i64 (count)
    sums    u64 (channels, height, width): each pixel's sum over all images (values 0-255)
    squares u64 (channels): each channel's sum of squared pixel values
    meta    UTF-8 JSON (meta_length bytes): classes, encoding, quality, source, skipped files

The file size must equal what the header implies; the index must start at
byte 48, never decrease, and end at ``index_offset``; labels must name a
class. All of this is checked when the file is opened, from the header and
the file size first, so a truncated or inconsistent file is refused, naming
it, before anything large is allocated or read.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy

from .images import MissingSplitError
from .windows import Windows, fill

__all__ = ["PackedDataset", "PackError", "MAGIC", "HEADER", "SUFFIX", "pack_path", "is_packed", "packed_dataset"]

MAGIC = b"MINIDLPK"
VERSION = 1
HEADER = struct.Struct("<8sIIIIQQQ")
SUFFIX = ".mdlpack"
MAX_META_BYTES = 64 << 20
MAX_SIDE = 1 << 15


class PackError(ValueError):
    """A packed dataset file that cannot be used; the message names the file and the problem."""


def pack_path(directory, split: str) -> Path:
    return Path(directory) / f"{split}{SUFFIX}"


def is_packed(path) -> bool:
    """Whether ``path`` is a packed dataset: a directory with ``train.mdlpack``, or a ``.mdlpack`` file."""
    path = Path(path)
    return pack_path(path, "train").is_file() if path.is_dir() else path.suffix == SUFFIX


def packed_dataset(path: str, split: str = "train") -> "PackedDataset":
    """The ``split`` of the packed dataset in directory ``path`` (``val`` stands in for a missing ``test``);
    a ``.mdlpack`` file is opened as it is, whatever the split."""
    path = Path(path)
    if not path.is_dir():
        if not path.is_file():
            raise FileNotFoundError(f"packed dataset {path} does not exist")
        return PackedDataset(path)
    for name in (split, "val") if split == "test" else (split,):
        if pack_path(path, name).is_file():
            return PackedDataset(pack_path(path, name))
    raise MissingSplitError(f"{path}: no {split} split ({pack_path(path, split).name}); "
                            f"it has {sorted(p.name for p in path.glob('*' + SUFFIX))}")


def _stats_bytes(channels: int, height: int, width: int) -> int:
    return 8 * channels * height * width + 8 * channels


def _pread_exact(fd, length: int, offset: int, path) -> bytes:
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise PackError(f"{path}: truncated: {length} bytes expected at offset {offset}, {len(data)} read")
    return data


class PackedDataset:
    """A split of a packed dataset (see the module docstring); decodes with Pillow as images are read.

    ``statistics`` are the exact mean image and per-channel mean/std of all
    its images (in [0, 1]), computed while packing. Reads use ``os.pread``,
    so any number of loader threads read it at once.
    """

    dtype = numpy.uint8

    def __init__(self, path):
        self.path = Path(path)
        self.name = str(self.path)
        self._fd = None
        self._fd = os.open(self.path, os.O_RDONLY)
        try:
            self._read_index()
        except BaseException:
            self.close()
            raise

    def _fail(self, problem: str):
        raise PackError(f"{self.path}: {problem}")

    def _read_index(self):
        size = os.fstat(self._fd).st_size
        if size < HEADER.size:
            self._fail(f"truncated: {size} bytes, shorter than the {HEADER.size}-byte header")
        magic, version, c, h, w, count, index_offset, meta_length = HEADER.unpack(
            _pread_exact(self._fd, HEADER.size, 0, self.path))
        if magic != MAGIC:
            self._fail("not a minidl packed dataset (bad magic bytes)")
        if version != VERSION:
            self._fail(f"packed dataset version {version}; this minidl reads version {VERSION}")
        if c not in (1, 3) or not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE):
            self._fail(f"header declares images of {c}x{h}x{w}, which is not a valid image shape")
        if meta_length > MAX_META_BYTES:
            self._fail(f"header declares {meta_length} bytes of metadata (at most {MAX_META_BYTES})")
        expected = index_offset + 16 * count + 8 + _stats_bytes(c, h, w) + meta_length  # Python ints: no overflow
        if index_offset < HEADER.size or expected != size:
            self._fail(f"truncated or inconsistent: the header declares {count} images with the index at byte "
                       f"{index_offset}, making {expected} bytes, but the file has {size} bytes")
        self.count, self.sample_shape = int(count), (int(c), int(h), int(w))
        at = index_offset
        self._offsets = numpy.frombuffer(_pread_exact(self._fd, 8 * (count + 1), at, self.path), "<u8")
        at += 8 * (count + 1)
        labels = numpy.frombuffer(_pread_exact(self._fd, 8 * count, at, self.path), "<i8")
        at += 8 * count
        stats = _pread_exact(self._fd, _stats_bytes(c, h, w), at, self.path)
        at += len(stats)
        try:
            self.meta = json.loads(_pread_exact(self._fd, meta_length, at, self.path).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            self._fail(f"metadata is not valid JSON ({e})")
        if self._offsets[0] != HEADER.size or self._offsets[-1] != index_offset:
            self._fail(f"index spans bytes {self._offsets[0]}..{self._offsets[-1]}, but the images are bytes "
                       f"{HEADER.size}..{index_offset}")
        if (numpy.diff(self._offsets.astype(numpy.int64)) < 0).any():
            bad = int(numpy.argmax(numpy.diff(self._offsets.astype(numpy.int64)) < 0))
            self._fail(f"index is not increasing at image {bad}")
        self.classes = tuple(self.meta.get("classes", ()))
        if count and (labels.min() < 0 or labels.max() >= len(self.classes)):
            self._fail(f"labels outside 0..{len(self.classes) - 1} (the {len(self.classes)} classes)")
        self.labels = labels.astype(numpy.int64)
        total = numpy.frombuffer(stats, "<u8", count=c * h * w).reshape(c, h, w)
        squares = numpy.frombuffer(stats, "<u8", offset=8 * c * h * w)
        self.statistics = _statistics(count, total, squares) if count else None

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    def __len__(self):
        return self.count

    @property
    def size(self) -> int:
        return self.sample_shape[1]

    def encoded(self, i: int) -> bytes:
        """The stored (JPEG) bytes of image ``i``."""
        start, end = int(self._offsets[i]), int(self._offsets[i + 1])
        return _pread_exact(self._fd, end - start, start, self.path)

    def decode(self, i: int) -> numpy.ndarray:
        """(H, W, C) uint8 pixels of image ``i``."""
        from PIL import Image

        c, h, w = self.sample_shape
        mode = "RGB" if c == 3 else "L"
        try:  # every image has the header's size and mode: decode without parsing its JPEG header in Python
            array = numpy.asarray(Image.frombytes(mode, (w, h), self.encoded(i), "jpeg", mode, ""))
        except (OSError, ValueError, SyntaxError) as e:
            raise PackError(f"{self.path}: image {i} cannot be decoded as a {w}x{h} {mode} JPEG "
                            f"({type(e).__name__}: {e})") from None
        return array[:, :, None] if array.ndim == 2 else array

    def read_windows(self, indices, windows: Windows, out):
        """Decode images ``indices`` and copy their planned windows into ``out``; returns their labels."""
        for b, i in enumerate(indices):
            fill(windows, b, self.decode(int(i)), out)
        return self.labels[numpy.asarray(indices, dtype=numpy.int64)]

    def get_batch(self, indices):
        c, h, w = self.sample_shape
        out = numpy.empty((len(indices), c, h, w), numpy.uint8)
        return out, self.read_windows(indices, Windows.whole(len(indices), h, w), out)

    def __repr__(self):
        return f"PackedDataset({str(self.path)!r}: {self.count} images of {self.sample_shape}, " \
               f"{len(self.classes)} classes)"


def _statistics(count, total, squares) -> dict:
    from .statistics import StatisticsAccumulator

    accumulator = StatisticsAccumulator()
    accumulator.merge(int(count), total, squares)
    return accumulator.result(1 / 255)
