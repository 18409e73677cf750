"""Image files: decoding one image the way training sees it, and image folders in the ImageNet layout.

``decode_image`` is the one place an image file becomes pixels, for packing,
for training from a folder and for ``minidl predict``: Pillow decodes it (a
large JPEG at a reduced scale, with Pillow's draft mode), turns it upright
by its EXIF orientation, converts it to RGB (or L) as Pillow's ``convert``
does (grayscale is repeated, CMYK converted, an alpha channel dropped, as
torchvision's loader does), and resizes the centre square to ``size`` x
``size`` (the paper's "short side to 256, centre crop 256x256").
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy

from .windows import Windows, fill

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "MissingSplitError", "decode_image", "find_images", "split_directory"]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
_ORIENTATION = 0x0112  # EXIF tag
_UPRIGHT = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_270",
            7: "TRANSVERSE", 8: "ROTATE_90"}


def decode_image(source, size: int | None = None, channels: int = 3) -> numpy.ndarray:
    """(size, size, channels) uint8 pixels of an image file (path or file object); (H, W, channels) when
    ``size`` is None. Raises Pillow's errors (OSError and others) for unreadable files."""
    from PIL import Image

    mode = "RGB" if channels == 3 else "L"
    with Image.open(source) as image:
        if size is not None and image.format == "JPEG":
            image.draft(mode, (size, size))  # decode at 1/2, 1/4 or 1/8 scale while both sides stay >= size
        orientation = image.getexif().get(_ORIENTATION, 1)
        if image.mode != mode:
            image = image.convert(mode)
        if size is not None:
            w, h = image.size
            side = min(w, h)
            box = ((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2)
            image = image.resize((size, size), Image.BILINEAR, box=box)
        if orientation in _UPRIGHT:  # a square centre crop turns with the image, so this can come last
            image = image.transpose(getattr(Image.Transpose, _UPRIGHT[orientation]))
        array = numpy.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


class MissingSplitError(FileNotFoundError):
    """An image folder or packed dataset has no such split (e.g. no ``val``)."""


def split_directory(root, split: str) -> Path:
    """``root/<split>`` (``val`` stands in for ``test``); ``root`` itself for the training split of a folder
    without splits (``root/<class>/<image>``)."""
    base = Path(root)
    if not base.is_dir():
        raise FileNotFoundError(f"image folder {base} does not exist")
    names = (split, "val") if split == "test" else (split,)
    for name in names:
        if (base / name).is_dir():
            return base / name
    if split == "train":
        return base
    raise MissingSplitError(f"{base}: no {' or '.join(names)} split (expected {base}/{names[-1]}/<class>/<image>)")


def find_images(root, split: str = "train", classes=None) -> tuple:
    """(directory, class names, [(path, label), ...]) of an image folder, in a fixed order.

    Classes are the sub-directories of ``root/train`` (or of the split's own
    directory), sorted, so every split numbers them alike; a class directory
    in another split that training does not have is an error. Images are
    found by extension (case-insensitive), in sub-directories too.
    """
    directory = split_directory(root, split)
    if classes is None:
        reference = Path(root) / "train" if (Path(root) / "train").is_dir() else directory
        classes = sorted(p.name for p in reference.iterdir() if p.is_dir())
        if not classes:
            raise FileNotFoundError(f"{reference}: no class directories (expected {reference}/<class>/<image>)")
    classes = tuple(classes)
    present = sorted(p.name for p in directory.iterdir() if p.is_dir())
    unknown = [name for name in present if name not in classes]
    if unknown:
        raise ValueError(f"{directory}: class directories {unknown} are not among the training classes "
                         f"({len(classes)} in {Path(root) / 'train'})")
    files = []
    for label, name in enumerate(classes):
        folder = directory / name
        if folder.is_dir():
            files += [(p, label) for p in sorted(folder.rglob("*"))
                      if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()]
    if not files:
        raise FileNotFoundError(f"{directory}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in the class "
                                "directories")
    return directory, classes, files


class ImageFolder:
    """Image files in the ImageNet layout: ``root/<split>/<class>/<image>`` (or ``root/<class>/...``).

    Each image is decoded with :func:`decode_image` to ``size`` x ``size``
    (uint8, RGB or L with ``grayscale``) every time it is read; pack the
    folder (``minidl data pack``) to decode each image once. A corrupt or
    unreadable file is skipped: its sample is replaced by the next readable
    one (in batches and in the statistics alike), and the file is reported
    once (a warning naming it) and kept in ``bad_files``.
    """

    dtype = numpy.uint8

    def __init__(self, root: str, split: str = "train", size: int = 256, grayscale: bool = False, classes=None):
        directory, self.classes, found = find_images(root, split, classes)
        self.files = [path for path, _ in found]
        self.labels = numpy.asarray([label for _, label in found], dtype=numpy.int64)
        self.size = size
        self.grayscale = grayscale
        self.name = f"{directory}"
        self.bad_files = set()
        self._lock = threading.Lock()

    def __len__(self):
        return len(self.files)

    @property
    def sample_shape(self) -> tuple:
        return (1 if self.grayscale else 3, self.size, self.size)

    def _decode(self, i):
        """(size, size, C) uint8 of image ``i``, or None if it cannot be read (reported once)."""
        try:
            return decode_image(self.files[i], self.size, 1 if self.grayscale else 3)
        except Exception as e:  # Pillow raises many types for corrupt files
            with self._lock:
                new = self.files[i] not in self.bad_files
                self.bad_files.add(self.files[i])
            if new:
                warnings.warn(f"skipping unreadable image {self.files[i]}: {type(e).__name__}: {e}", stacklevel=3)
            return None

    def load(self, i):
        """(C, size, size) uint8 of image ``i``, or None if it cannot be read (counted in ``bad_files``)."""
        array = self._decode(i)
        return None if array is None else array.transpose(2, 0, 1)

    def _readable(self, i):
        """(pixels, index) of image ``i``, or of the next readable image after it."""
        for step in range(len(self)):
            j = (i + step) % len(self)
            array = self._decode(j)
            if array is not None:
                return array, j
        raise ValueError(f"{self.name}: no readable image at all")

    def read_windows(self, indices, windows: Windows, out):
        """Decode images ``indices`` and copy their planned windows into ``out``; returns their labels."""
        labels = numpy.empty(len(indices), numpy.int64)
        for b, i in enumerate(indices):
            array, j = self._readable(int(i))
            fill(windows, b, array, out)
            labels[b] = self.labels[j]
        return labels

    def get_batch(self, indices):
        c, h, w = self.sample_shape
        out = numpy.empty((len(indices), c, h, w), numpy.uint8)
        return out, self.read_windows(indices, Windows.whole(len(indices), h, w), out)
