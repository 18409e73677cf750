"""Packing an image folder: decode each image once, in parallel processes, into one file per split.

    minidl data pack IMAGE_FOLDER OUT [--size 256] [--quality 90] [--workers N]

Every image is decoded with :func:`~minidl.data.images.decode_image`
(short side to ``size``, centre crop) and stored as a JPEG of that size in
``OUT/<split>.mdlpack`` (format: :mod:`minidl.data.packed`), with the labels,
the class names and the sums that give the exact mean image. Unreadable
images are reported by path and left out; the rest are packed. Each file is
written to a temporary file, fsynced and renamed, so ``OUT`` never holds a
partial pack.
"""
from __future__ import annotations

import concurrent.futures
import io
import json
import multiprocessing
import os
import sys
from pathlib import Path

import numpy

from ..io_utils import atomic_write
from .images import decode_image, find_images
from .packed import HEADER, MAGIC, VERSION, PackedDataset, pack_path
from .statistics import channel_square_sums

__all__ = ["pack_folder", "available_cores"]

CHUNK = 32  # images per task sent to a worker process


def available_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _encode_chunk(task):
    """Worker: ([paths], size, quality, channels) -> ([JPEG bytes or error text], pixel sums, channel squares)."""
    from PIL import Image

    paths, size, quality, channels = task
    encoded = []
    total = numpy.zeros((size, size, channels), numpy.uint64)  # (H, W, C) like the pixels: no strided adds
    squares = numpy.zeros(channels, numpy.uint64)
    for path in paths:
        try:
            pixels = decode_image(path, size, channels)  # (size, size, C) uint8
        except Exception as e:  # Pillow raises many types for corrupt files
            encoded.append(f"{type(e).__name__}: {e}")
            continue
        buffer = io.BytesIO()
        Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels).save(buffer, "JPEG", quality=quality)
        encoded.append(buffer.getvalue())
        total += pixels
        squares += channel_square_sums(pixels, 2)
    return encoded, total.transpose(2, 0, 1), squares


def _splits(folder: Path) -> list:
    found = [name for name in ("train", "val", "test") if (folder / name).is_dir()]
    return found or ["train"]  # a folder without splits: <folder>/<class>/<image> is the training split


def pack_folder(folder, out, size: int = 256, quality: int = 90, workers: int | None = None,
                grayscale: bool = False, progress: bool = True, report=None) -> dict:
    """Pack every split of an ImageNet-layout ``folder`` into ``out/<split>.mdlpack``.

    ``workers`` processes decode (default: every core; 1 decodes in this
    process). ``report(text)`` receives one line per unreadable image
    (default: printed to stderr). Returns ``{split: {"path", "images",
    "skipped": [(path, error), ...]}}``.
    """
    folder, out = Path(folder), Path(out)
    if size < 1 or not 1 <= quality <= 100:
        raise ValueError(f"pack: size must be >= 1 and quality 1..100, got size {size}, quality {quality}")
    workers = workers or available_cores()
    channels = 1 if grayscale else 3
    _, classes, _ = find_images(folder, "train")
    summary = {}
    # fresh interpreters ("spawn"): forking a process that runs threads (BLAS, loaders) is not safe
    pool = concurrent.futures.ProcessPoolExecutor(workers, multiprocessing.get_context("spawn")) if workers > 1 \
        else None
    try:
        for split in _splits(folder):
            _, _, files = find_images(folder, split, classes)
            summary[split] = _pack_split(files, classes, split, folder, pack_path(out, split), size, quality,
                                         channels, pool, progress, report)
    except concurrent.futures.process.BrokenProcessPool as e:
        raise RuntimeError(f"pack: a decoding process of {folder} died ({e}). Worker processes start as fresh "
                           "interpreters that import the main module: from `python -` or a script without an "
                           "`if __name__ == '__main__':` guard, use workers=1") from None
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)  # after an error or Ctrl-C, do not finish the rest
    return summary


def _pack_split(files, classes, split, folder, path, size, quality, channels, pool, progress, report) -> dict:
    from tqdm import tqdm

    say = report or (lambda text: tqdm.write(text, file=sys.stderr))
    tasks = [([str(p) for p, _ in files[i:i + CHUNK]], size, quality, channels) for i in range(0, len(files), CHUNK)]
    results = pool.map(_encode_chunk, tasks) if pool is not None else map(_encode_chunk, tasks)
    offsets, labels, skipped = [HEADER.size], [], []
    total = numpy.zeros((channels, size, size), numpy.uint64)
    squares = numpy.zeros(channels, numpy.uint64)
    bar = tqdm(total=len(files), unit="image", desc=f"packing {split}", disable=None if progress else True, leave=False)
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        f.write(bytes(HEADER.size))  # the header goes in last, when the index is known
        start = 0
        for encoded, chunk_total, chunk_squares in results:
            for (source, label), item in zip(files[start:start + len(encoded)], encoded):
                if isinstance(item, str):
                    skipped.append((str(source), item))
                    say(f"skipping unreadable image {source}: {item}")
                    continue
                f.write(item)
                offsets.append(offsets[-1] + len(item))
                labels.append(label)
            total += chunk_total
            squares += chunk_squares
            start += len(encoded)
            bar.update(len(encoded))
        bar.close()
        if not labels:
            raise ValueError(f"{folder}: no readable image in the {split} split ({len(skipped)} unreadable)")
        meta = {"format": "minidl-pack", "split": split, "classes": list(classes), "encoding": "jpeg",
                "quality": quality, "size": size, "source": str(folder.resolve()),
                "skipped": [{"path": _relative(p, folder), "error": e} for p, e in skipped]}
        meta_bytes = json.dumps(meta, ensure_ascii=False).encode("utf-8")
        for array, dtype in ((offsets, "<u8"), (labels, "<i8"), (total, "<u8"), (squares, "<u8")):
            f.write(numpy.asarray(array).astype(dtype).tobytes())
        f.write(meta_bytes)
        f.seek(0)
        f.write(HEADER.pack(MAGIC, VERSION, channels, size, size, len(labels), offsets[-1], len(meta_bytes)))
        f.flush()
    PackedDataset(path).close()  # what was written reads back
    return {"path": path, "images": len(labels), "skipped": skipped}


def _relative(path, folder) -> str:
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        return str(path)
