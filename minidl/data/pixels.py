"""Pixel-value transforms: PCA colour noise, per-channel normalization, and the mean image.

These run after the uint8 batch is made, as array code on the batch's device
(``xp``): on a GPU they run there. Their random numbers are drawn on the
host from the batch's generator, so a GPU batch equals the CPU batch.
Statistics (the mean image, per-channel means and deviations) come from the
training data by ``fit`` (precomputed in a packed dataset, else sampled
once; see :func:`minidl.data.statistics.dataset_statistics`) and are kept in
the transform's ``state_dict``, so checkpoints carry them.
"""
from __future__ import annotations

import numpy

from ..backend import device_of_array, get_array_module, transfer
from . import staging
from .statistics import dataset_statistics
from .transforms import Transform, to_float

__all__ = ["PCAColorNoise", "Normalize", "MeanImage", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC"]

# RGB covariance of ImageNet pixels in [0, 1] (eigenvalues and eigenvectors), as used by the
# public re-implementations of the paper's "PCA colour augmentation" (fb.resnet.torch).
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


class _OnDevice:
    """Host arrays copied to each device once, on first use there (not per batch).

    On a GPU the copy is made on the current stream of whichever loader worker asks first; every later
    use makes its own stream wait on the event recorded after that copy (no host wait).
    """

    def __init__(self):
        self._copies = {}

    def get(self, name: str, host, like):
        device = device_of_array(like)
        key = (name, device)
        copy = self._copies.get(key)
        if copy is None:
            array = transfer(host, device)
            copy = self._copies[key] = array, (staging.record(device) if device.is_cuda else None)
        array, copied = copy
        if copied is not None:
            staging.wait(device, copied)
        return array

    def clear(self):
        self._copies.clear()


class PCAColorNoise(Transform):
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, alpha ~ N(0, std^2).

    ``eigval``/``eigvec`` are the RGB covariance's eigenvalues and eigenvectors
    (columns) for pixels in [0, 1]; ImageNet's by default. Applied to float
    images in [0, 1] (uint8 input is converted first), before normalization.
    """

    random = True

    def __init__(self, std: float = 0.1, eigval: list | None = None, eigvec: list | None = None):
        self.std = std
        self.eigval = numpy.asarray(eigval or IMAGENET_EIGVAL, dtype=numpy.float32)
        self.eigvec = numpy.asarray(eigvec or IMAGENET_EIGVEC, dtype=numpy.float32)

    def __call__(self, images, rng):
        xp = get_array_module(images)
        images = to_float(images)
        c = images.shape[1]
        if c != len(self.eigval):
            raise ValueError(f"pca_noise: {len(self.eigval)} eigenvalues for images with {c} channels")
        alpha = rng.normal(0.0, self.std, size=(len(images), c)).astype(numpy.float32)
        shift = (alpha * self.eigval) @ self.eigvec.T  # (B, C), on the host
        return images + xp.asarray(shift)[:, :, None, None]


class Normalize(Transform):
    """(x / 255 - mean) / std per channel (uint8 input), or (x - mean) / std for float input.

    Without ``mean`` and ``std``, both are computed from the training data by
    ``fit`` (and stored with the run).
    """

    def __init__(self, mean: list | None = None, std: list | None = None):
        if (mean is None) != (std is None):
            raise ValueError("normalize: give both mean and std, or neither (to compute them from the data)")
        self.mean = None if mean is None else [float(m) for m in mean]
        self.std = None if std is None else [float(s) for s in std]
        self._arrays = _OnDevice()

    def fit(self, dataset):
        if self.mean is None:
            stats = dataset_statistics(dataset)
            self.mean, self.std = stats["channel_mean"].tolist(), stats["channel_std"].tolist()
            self._arrays.clear()

    def __call__(self, images, rng=None):
        if self.mean is None:
            raise ValueError("normalize: no mean and std given; call fit(training_dataset) first (the trainer does)")
        images = to_float(images)
        if len(self.mean) not in (1, images.shape[1]):
            raise ValueError(f"normalize: {len(self.mean)} means for images with {images.shape[1]} channels")
        mean = self._arrays.get("mean", numpy.asarray(self.mean, dtype=numpy.float32)[:, None, None], images)
        std = self._arrays.get("std", numpy.asarray(self.std, dtype=numpy.float32)[:, None, None], images)
        return (images - mean) / std

    def state_dict(self):
        if self.mean is None:
            return {}
        return {"mean": numpy.asarray(self.mean, numpy.float32), "std": numpy.asarray(self.std, numpy.float32)}

    def load_state_dict(self, state):
        if "mean" in state:
            self.mean = [float(m) for m in numpy.asarray(state["mean"])]
            self.std = [float(s) for s in numpy.asarray(state["std"])]
            self._arrays.clear()


class MeanImage(Transform):
    """Subtract the training set's mean image (the paper's only normalization), then multiply by ``scale``.

    The mean is of the training images as the dataset gives them (256 x 256
    for the paper) in [0, 1]; a cropped batch has the mean's centre crop of
    its size subtracted. ``per_channel=True`` subtracts per-channel means
    instead. ``scale=255`` gives the paper's pixel scale (0-255 minus the
    mean), which its N(0, 0.01) initialization expects. ``samples`` bounds
    how many images an unpacked dataset's mean is estimated from (a packed
    dataset has the exact mean of all its images).
    """

    def __init__(self, samples: int = 10000, per_channel: bool = False, scale: float = 1.0):
        self.samples, self.per_channel, self.scale = samples, per_channel, scale
        self._mean = None
        self._arrays = _OnDevice()

    def fit(self, dataset):
        if self._mean is not None:
            return
        stats = dataset_statistics(dataset, self.samples)
        mean = stats["channel_mean"][:, None, None] if self.per_channel else stats["mean_image"]
        self._mean = numpy.asarray(mean, dtype=numpy.float32)

    def _mean_for(self, images):
        h, w = images.shape[2:]
        mh, mw = self._mean.shape[1:]
        if (mh, mw) == (1, 1) or (mh, mw) == (h, w):
            host = self._mean
        elif mh >= h and mw >= w:
            top, left = (mh - h) // 2, (mw - w) // 2
            host = numpy.ascontiguousarray(self._mean[:, top:top + h, left:left + w])
        else:
            raise ValueError(f"mean_image: the mean is {mh}x{mw} but the images are {h}x{w} (larger)")
        return self._arrays.get(f"mean{h}x{w}", host * numpy.float32(self.scale), images)

    def __call__(self, images, rng=None):
        if self._mean is None:
            raise ValueError("mean_image: call fit(training_dataset) first (the trainer does)")
        images = to_float(images)
        if self.scale != 1:
            images = images * images.dtype.type(self.scale)
        return images - self._mean_for(images)

    def state_dict(self):
        return {} if self._mean is None else {"mean": self._mean}

    def load_state_dict(self, state):
        if "mean" in state:
            self._mean = numpy.asarray(state["mean"], dtype=numpy.float32)
            self._arrays.clear()
