"""Batch transforms: crops and flips (on uint8, planned as windows), resizing, and the Compose pipeline.

Each transform is called as ``t(images, rng)`` on a batch (B, C, H, W) with a
NumPy Generator and returns the new batch; random ones draw everything from
``rng`` (on the host, also for GPU batches), so a seeded loader gives the
same batches on every run and on every device. The pixel-value transforms
(float conversion, PCA colour noise, normalization, the mean image) are in
:mod:`minidl.data.pixels`.

Crops and flips are *window* transforms: besides ``__call__`` they have
``plan(windows, rng)``, which only decides which pixels go where (see
:mod:`minidl.data.windows`). The loader plans a pipeline's leading window
transforms first and copies each cropped, mirrored image once, on uint8,
as it is decoded; ``__call__`` draws the same random numbers in the same
order, so both ways give the same batch.
"""
from __future__ import annotations

import numpy

from ..backend import get_array_module
from .windows import Windows, gather

__all__ = ["Transform", "RandomCrop", "CenterCrop", "TenCrop", "Resize", "HorizontalFlip", "Compose", "to_float"]


def to_float(images, scale: float = 1.0 / 255.0):
    """uint8 -> float32 in [0, 1]; float arrays pass through as float32 (on the array's own device)."""
    xp = get_array_module(images)
    if images.dtype == xp.uint8:
        out = images.astype(xp.float32)
        out *= xp.float32(scale)
        return out
    return images.astype(xp.float32, copy=False)


class Transform:
    """Base class. ``expands`` > 1 means each image becomes that many (ten crops).

    ``random``: draws from the generator (dropped at evaluation). ``window``:
    has ``plan`` (a crop or flip the loader can apply while decoding).
    """

    expands = 1
    random = False
    window = False

    def __call__(self, images, rng):
        raise NotImplementedError

    def output_shape(self, shape: tuple) -> tuple:
        """The (C, H, W) of an output image for an input image of ``shape``."""
        return tuple(shape)

    def fit(self, dataset) -> None:
        """Learn statistics from the training set (mean image); most transforms need nothing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


class WindowTransform(Transform):
    """A crop or flip: ``plan`` decides the windows, ``__call__`` gathers them from a batch."""

    window = True

    def plan(self, windows: Windows, rng) -> Windows:
        raise NotImplementedError

    def __call__(self, images, rng=None):
        b, _, h, w = images.shape
        return gather(self.plan(Windows.whole(b, h, w), rng), images)


def _check_fits(name, h, w, size):
    if h < size or w < size:
        raise ValueError(f"{name}: images of {h}x{w} are smaller than the crop {size}")


class RandomCrop(WindowTransform):
    """A random ``size`` x ``size`` crop of each image, after zero-padding by ``padding`` (AlexNet: 227 of 256)."""

    random = True

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def plan(self, windows, rng):
        p = self.padding
        if p:
            windows = windows.padded()
        _check_fits("random_crop", windows.height + 2 * p, windows.width + 2 * p, self.size)
        tops = rng.integers(0, windows.height + 2 * p - self.size + 1, size=len(windows))
        lefts = rng.integers(0, windows.width + 2 * p - self.size + 1, size=len(windows))
        return windows.sub(tops - p, lefts - p, self.size, self.size)

    def output_shape(self, shape):
        return (shape[0], self.size, self.size)


class CenterCrop(WindowTransform):
    """The central ``size`` x ``size`` crop."""

    def __init__(self, size: int):
        self.size = size

    def plan(self, windows, rng=None):
        h, w, s = windows.height, windows.width, self.size
        _check_fits("center_crop", h, w, s)
        # centred in the image as it looks now (for a mirrored window, its mirror's centre crop)
        count = len(windows)
        return windows.sub(numpy.full(count, (h - s) // 2), numpy.full(count, (w - s) // 2), s, s)

    def output_shape(self, shape):
        return (shape[0], self.size, self.size)


class TenCrop(WindowTransform):
    """The paper's test-time crops: four corners and the centre, and their mirror images.

    Output is (B*10, C, size, size), the ten crops of each image together.
    With ``padding``, images are zero-padded first (for inputs already at the model's size).
    """

    expands = 10

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def plan(self, windows, rng=None):
        p, s = self.padding, self.size
        if p:
            windows = windows.padded()
        h, w = windows.height + 2 * p, windows.width + 2 * p
        _check_fits("ten_crop", h, w, s)
        corners = numpy.array([(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]) - p
        count = len(windows)
        tiled = numpy.tile(numpy.concatenate([corners, corners]), (count, 1))  # (count*10, 2)
        crops = windows.repeat(10).sub(tiled[:, 0], tiled[:, 1], s, s)
        return crops.mirrored(numpy.tile(numpy.arange(10) >= 5, count))

    def output_shape(self, shape):
        return (shape[0], self.size, self.size)


class HorizontalFlip(WindowTransform):
    """Mirror each image left-right with probability ``p``."""

    random = True

    def __init__(self, p: float = 0.5):
        self.p = p

    def plan(self, windows, rng):
        return windows.mirrored(rng.random(len(windows)) < self.p)


class Resize(Transform):
    """Resize each image so its short side is ``size`` (bilinear, with Pillow; NumPy batches only).

    Image folders and packed datasets resize while decoding (``train: image_size``);
    this transform is for in-memory arrays.
    """

    def __init__(self, size: int):
        self.size = size

    def _new_size(self, h, w):
        scale = self.size / min(h, w)
        return max(self.size, round(h * scale)), max(self.size, round(w * scale))

    def __call__(self, images, rng=None):
        from PIL import Image

        if not isinstance(images, numpy.ndarray):
            raise TypeError(f"resize: works on NumPy batches (it uses Pillow), got {type(images).__name__}; "
                            "resize image files while decoding them instead (train: image_size)")
        new_h, new_w = self._new_size(*images.shape[2:])
        out = []
        for image in images:
            planes = [numpy.asarray(Image.fromarray(plane).resize((new_w, new_h), Image.BILINEAR)) for plane in
                      (image if image.dtype == numpy.uint8 else image.astype(numpy.float32))]
            out.append(numpy.stack(planes))
        return numpy.stack(out)

    def output_shape(self, shape):
        return (shape[0],) + self._new_size(*shape[1:])


class Compose(Transform):
    """Apply transforms in order, then make sure the result is float32.

    ``split()`` gives the leading window transforms (crops and flips the
    loader applies on uint8 while decoding) and the rest (array code that
    runs on the batch's device).
    """

    def __init__(self, transforms):
        self.transforms = list(transforms)
        self.expands = int(numpy.prod([getattr(t, "expands", 1) for t in self.transforms])) if self.transforms else 1

    def __call__(self, images, rng):
        for t in self.transforms:
            images = t(images, rng)
        return to_float(images)

    def split(self) -> tuple:
        """(leading window transforms, the remaining transforms)."""
        count = 0
        while count < len(self.transforms) and getattr(self.transforms[count], "window", False):
            count += 1
        return self.transforms[:count], self.transforms[count:]

    def output_shape(self, shape):
        for t in self.transforms:
            if not isinstance(t, Transform):
                return None  # a plain callable: its output shape is not known in advance
            shape = t.output_shape(shape)
        return tuple(shape)

    def fit(self, dataset):
        for t in self.transforms:
            if isinstance(t, Transform):
                t.fit(dataset)

    def state_dict(self):
        return {f"{i}.{k}": v for i, t in enumerate(self.transforms) if isinstance(t, Transform)
                for k, v in t.state_dict().items()}

    def load_state_dict(self, state):
        for i, t in enumerate(self.transforms):
            if isinstance(t, Transform):
                t.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items()
                                   if k.split(".", 1)[0] == str(i)})
