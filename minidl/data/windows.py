"""Crop windows: where each output image's pixels come from, decided before any pixel is copied.

Crops and flips only choose pixels, so the loader plans them first (drawing
from the batch's random generator) and then copies each output image once,
on uint8, straight out of the decoded source:

    windows = Windows.whole(len(indices), 256, 256)
    windows = RandomCrop(227).plan(windows, rng)      # (K, C, 227, 227) to come
    windows = HorizontalFlip().plan(windows, rng)
    out = gather(windows, images)                     # in-memory batch, any device (xp)
    fill(windows, b, decoded_hwc, out)                # or one decoded image at a time (host)

Output image ``k`` is rows ``top[k] .. top[k] + height - 1`` and columns
``left[k] .. left[k] + width - 1`` of source image ``source[k]``, mirrored
left-right when ``flip[k]``. Pixels outside ``valid[k]`` (top, left, bottom,
right; bottom and right exclusive) or outside the source are zero: that is
how zero padding is expressed.
"""
from __future__ import annotations

import numpy

from ..backend import get_array_module

__all__ = ["Windows", "gather", "fill"]

_SLICE_COPY_ELEMENTS = 4096  # per window: above this, slice copies beat one big gather on the host


class Windows:
    """A plan of ``len(self)`` output windows of ``height`` x ``width`` over a batch of sources."""

    __slots__ = ("source", "top", "left", "flip", "valid", "height", "width")

    def __init__(self, source, top, left, flip, valid, height: int, width: int):
        self.source, self.top, self.left, self.flip, self.valid = source, top, left, flip, valid
        self.height, self.width = int(height), int(width)

    @classmethod
    def whole(cls, count: int, height: int, width: int) -> "Windows":
        """Each of ``count`` sources of ``height`` x ``width`` taken whole, unmirrored."""
        zeros = numpy.zeros(count, numpy.int64)
        valid = numpy.tile(numpy.array([0, 0, height, width], numpy.int64), (count, 1))
        return cls(numpy.arange(count), zeros, zeros.copy(), numpy.zeros(count, bool), valid, height, width)

    def __len__(self):
        return len(self.source)

    def sub(self, tops, lefts, height: int, width: int) -> "Windows":
        """Windows of ``height`` x ``width`` at (``tops``, ``lefts``) in each current window's own frame
        (as the current output shows it, so a mirrored window is cut from its mirrored image)."""
        tops, lefts = numpy.asarray(tops, numpy.int64), numpy.asarray(lefts, numpy.int64)
        source_lefts = numpy.where(self.flip, self.width - lefts - width, lefts)
        return Windows(self.source, self.top + tops, self.left + source_lefts, self.flip, self.valid,
                       height, width)

    def padded(self) -> "Windows":
        """The same windows, with everything outside them now zero (before a padded crop looks past them)."""
        frame = numpy.stack([self.top, self.left, self.top + self.height, self.left + self.width], axis=1)
        valid = numpy.concatenate([numpy.maximum(self.valid[:, :2], frame[:, :2]),
                                   numpy.minimum(self.valid[:, 2:], frame[:, 2:])], axis=1)
        return Windows(self.source, self.top, self.left, self.flip, valid, self.height, self.width)

    def mirrored(self, mask) -> "Windows":
        """Mirror the windows where ``mask`` is true."""
        return Windows(self.source, self.top, self.left, self.flip ^ numpy.asarray(mask, bool), self.valid,
                       self.height, self.width)

    def repeat(self, n: int) -> "Windows":
        """Each window ``n`` times in a row (ten crops of one image stay together)."""
        return Windows(*(numpy.repeat(a, n, axis=0) for a in (self.source, self.top, self.left, self.flip,
                                                              self.valid)), self.height, self.width)

    def over(self, rows) -> "Windows":
        """The same windows cut from a larger array: source ``b`` becomes its row ``rows[b]`` (a batch's
        windows taken straight from a whole in-memory dataset)."""
        return Windows(numpy.asarray(rows, numpy.int64)[self.source], self.top, self.left, self.flip, self.valid,
                       self.height, self.width)

    def outputs_of(self, b: int):
        """The output positions that read source ``b`` (the loader fills them as ``b`` is decoded)."""
        return numpy.flatnonzero(self.source == b)


def _rows_and_columns(windows: Windows, height: int, width: int):
    """(K, h) source rows, (K, w) source columns, and (K, h, w) bool: inside the valid region (host arrays)."""
    rows = windows.top[:, None] + numpy.arange(windows.height)
    steps = numpy.arange(windows.width)
    cols = windows.left[:, None] + numpy.where(windows.flip[:, None], windows.width - 1 - steps, steps)
    lo_r = numpy.maximum(windows.valid[:, 0], 0)[:, None]
    lo_c = numpy.maximum(windows.valid[:, 1], 0)[:, None]
    hi_r = numpy.minimum(windows.valid[:, 2], height)[:, None]
    hi_c = numpy.minimum(windows.valid[:, 3], width)[:, None]
    row_ok, col_ok = (rows >= lo_r) & (rows < hi_r), (cols >= lo_c) & (cols < hi_c)
    return rows.clip(0, height - 1), cols.clip(0, width - 1), row_ok[:, :, None] & col_ok[:, None, :]


def gather(windows: Windows, images):
    """The planned windows of a batch ``images`` (B, C, H, W), as (K, C, height, width), on its device.

    Small windows (and any on a GPU: one kernel) are taken with one flat
    index computed on the batch's device; large windows of a host batch are
    copied slice by slice, as :func:`fill` does. Zero where a window reaches
    past its valid region.
    """
    xp = get_array_module(images)
    _, c, h, w = images.shape
    if xp is numpy and c * windows.height * windows.width >= _SLICE_COPY_ELEMENTS:
        out = numpy.empty((len(windows), c, windows.height, windows.width), images.dtype)
        for b in numpy.unique(windows.source):
            fill(windows, int(b), images[b], out, channels_last=False)
        return out
    rows, cols, inside = _rows_and_columns(windows, h, w)
    planes = xp.asarray(windows.source)[:, None] * c + xp.arange(c)  # (K, C) plane of each output channel
    flat = ((planes[:, :, None] * h + xp.asarray(rows)[:, None, :])[:, :, :, None] * w
            + xp.asarray(cols)[:, None, None, :])  # (K, C, height, width) index into images.ravel()
    out = xp.take(xp.ascontiguousarray(images).reshape(-1), flat)
    if not inside.all():
        out *= xp.asarray(inside[:, None], dtype=out.dtype)
    return out


def fill(windows: Windows, b: int, image, out, channels_last: bool = True) -> None:
    """Copy source ``b``'s windows out of one decoded ``image`` ((H, W, C), or (C, H, W) with
    ``channels_last=False``) into their places in ``out`` (K, C, height, width): one slice copy each."""
    if channels_last:
        image = image.transpose(2, 0, 1)  # a view: (C, H, W)
    _, h, w = image.shape
    for k in windows.outputs_of(b):
        top, left, flip = int(windows.top[k]), int(windows.left[k]), bool(windows.flip[k])
        v_top, v_left, v_bottom, v_right = (int(v) for v in windows.valid[k])
        r0, r1 = max(top, v_top, 0), min(top + windows.height, v_bottom, h)
        c0, c1 = max(left, v_left, 0), min(left + windows.width, v_right, w)
        target = out[k]
        if r1 <= r0 or c1 <= c0:
            target[...] = 0
            continue
        if r1 - r0 < windows.height or c1 - c0 < windows.width:
            target[...] = 0
        if flip:  # output column j shows source column left + width - 1 - j
            dest = target[:, r0 - top:r1 - top, left + windows.width - c1:left + windows.width - c0]
            dest[...] = image[:, r0:r1, c0:c1][:, :, ::-1]
        else:
            target[:, r0 - top:r1 - top, c0 - left:c1 - left] = image[:, r0:r1, c0:c1]
