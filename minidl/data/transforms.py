"""Batch transforms: augmentation and normalization on (B, C, H, W) NumPy arrays.

Each transform is called as ``t(images, rng)`` with a NumPy Generator and
returns the new batch; random ones draw everything from ``rng``, so a
seeded loader gives the same batches on every run. Images may be uint8
(0-255) until :class:`Normalize` (or the loader's final float conversion)
turns them into float32.
"""
from __future__ import annotations

import numpy

__all__ = [
    "Transform", "RandomCrop", "CenterCrop", "TenCrop", "Resize", "HorizontalFlip", "PCAColorNoise", "Normalize",
    "MeanImage", "Compose", "to_float",
]

# RGB covariance of ImageNet pixels in [0, 1] (eigenvalues and eigenvectors), as used by the
# public re-implementations of the paper's "PCA colour augmentation".
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))


def to_float(images, scale: float = 1.0 / 255.0):
    """uint8 -> float32 in [0, 1]; float arrays pass through as float32."""
    if images.dtype == numpy.uint8:
        return images.astype(numpy.float32) * numpy.float32(scale)
    return images.astype(numpy.float32, copy=False)


class Transform:
    """Base class. ``expands`` > 1 means each image becomes that many (ten crops)."""

    expands = 1
    random = False

    def __call__(self, images, rng):
        raise NotImplementedError

    def fit(self, dataset) -> None:
        """Learn statistics from the training set (mean image); most transforms need nothing."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


def _gather_crops(images, tops, lefts, size):
    """Crop images[b] at (tops[b], lefts[b]) to size x size, vectorized over the batch."""
    b = len(images)
    rows = tops[:, None] + numpy.arange(size)  # (B, size)
    cols = lefts[:, None] + numpy.arange(size)
    out = images[numpy.arange(b)[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (B, s, s, C)
    return numpy.ascontiguousarray(out.transpose(0, 3, 1, 2))


class RandomCrop(Transform):
    """A random ``size`` x ``size`` crop of each image, after zero-padding by ``padding`` (AlexNet: 224 of 256)."""

    random = True

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def __call__(self, images, rng):
        if self.padding:
            p = self.padding
            images = numpy.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
        b, _, h, w = images.shape
        if h < self.size or w < self.size:
            raise ValueError(f"random_crop: images of {h}x{w} are smaller than the crop {self.size}")
        tops = rng.integers(0, h - self.size + 1, size=b)
        lefts = rng.integers(0, w - self.size + 1, size=b)
        return _gather_crops(images, tops, lefts, self.size)


class CenterCrop(Transform):
    """The central ``size`` x ``size`` crop."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, images, rng=None):
        h, w = images.shape[2:]
        if h < self.size or w < self.size:
            raise ValueError(f"center_crop: images of {h}x{w} are smaller than the crop {self.size}")
        top, left = (h - self.size) // 2, (w - self.size) // 2
        return numpy.ascontiguousarray(images[:, :, top:top + self.size, left:left + self.size])


class TenCrop(Transform):
    """The paper's test-time crops: four corners and the centre, and their mirror images.

    Output is (B*10, C, size, size), the ten crops of each image together.
    With ``padding``, images are zero-padded first (for inputs already at the model's size).
    """

    expands = 10

    def __init__(self, size: int, padding: int = 0):
        self.size, self.padding = size, padding

    def __call__(self, images, rng=None):
        if self.padding:
            p = self.padding
            images = numpy.pad(images, ((0, 0), (0, 0), (p, p), (p, p)))
        h, w = images.shape[2:]
        s = self.size
        corners = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
        crops = [images[:, :, t:t + s, l:l + s] for t, l in corners]
        crops += [c[..., ::-1] for c in crops]
        return numpy.ascontiguousarray(numpy.stack(crops, axis=1).reshape((-1,) + images.shape[1:2] + (s, s)))


class Resize(Transform):
    """Resize each image so its short side is ``size`` (bilinear, with Pillow)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, images, rng=None):
        from PIL import Image

        out = []
        for image in images:
            c, h, w = image.shape
            scale = self.size / min(h, w)
            new = (max(self.size, round(w * scale)), max(self.size, round(h * scale)))
            planes = [numpy.asarray(Image.fromarray(plane).resize(new, Image.BILINEAR)) for plane in
                      (image if image.dtype == numpy.uint8 else image.astype(numpy.float32))]
            out.append(numpy.stack(planes))
        return numpy.stack(out)


class HorizontalFlip(Transform):
    """Mirror each image left-right with probability ``p``."""

    random = True

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, images, rng):
        flip = rng.random(len(images)) < self.p
        if not flip.any():
            return images
        out = images.copy()
        out[flip] = images[flip][..., ::-1]
        return out


class PCAColorNoise(Transform):
    """The paper's colour augmentation: add sum_i alpha_i * lambda_i * p_i to every pixel, alpha ~ N(0, std^2).

    ``eigval``/``eigvec`` are the RGB covariance's eigenvalues and eigenvectors
    (columns) for pixels in [0, 1]; ImageNet's by default. Applied to float
    images in [0, 1] (after conversion), before normalization.
    """

    random = True

    def __init__(self, std: float = 0.1, eigval: list | None = None, eigvec: list | None = None):
        self.std = std
        self.eigval = numpy.asarray(eigval or IMAGENET_EIGVAL, dtype=numpy.float32)
        self.eigvec = numpy.asarray(eigvec or IMAGENET_EIGVEC, dtype=numpy.float32)

    def __call__(self, images, rng):
        images = to_float(images)
        c = images.shape[1]
        if c != len(self.eigval):
            raise ValueError(f"pca_noise: {len(self.eigval)} eigenvalues for images with {c} channels")
        alpha = rng.normal(0.0, self.std, size=(len(images), c)).astype(numpy.float32)
        shift = (alpha * self.eigval) @ self.eigvec.T  # (B, C)
        return images + shift[:, :, None, None]


class Normalize(Transform):
    """(x / 255 - mean) / std per channel (uint8 input), or (x - mean) / std for float input."""

    def __init__(self, mean: list, std: list):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def __call__(self, images, rng=None):
        images = to_float(images)
        mean = numpy.asarray(self.mean, dtype=numpy.float32)[:, None, None]
        std = numpy.asarray(self.std, dtype=numpy.float32)[:, None, None]
        if len(self.mean) not in (1, images.shape[1]):
            raise ValueError(f"normalize: {len(self.mean)} means for images with {images.shape[1]} channels")
        return (images - mean) / std


class MeanImage(Transform):
    """Subtract the training set's mean image (the paper's only normalization); learned by ``fit``."""

    def __init__(self, samples: int = 10000):
        self.samples = samples
        self._mean = None

    def fit(self, dataset):
        if self._mean is not None:
            return
        count = min(len(dataset), self.samples)
        indices = numpy.linspace(0, len(dataset) - 1, count).astype(numpy.int64)
        total = None
        for start in range(0, count, 256):
            images, _ = dataset.get_batch(indices[start:start + 256])
            part = to_float(images).sum(axis=0, dtype=numpy.float64)
            total = part if total is None else total + part
        self._mean = (total / count).astype(numpy.float32)

    def __call__(self, images, rng=None):
        if self._mean is None:
            raise ValueError("mean_image: call fit(training_dataset) first (the trainer does)")
        return to_float(images) - self._mean

    def state_dict(self):
        return {} if self._mean is None else {"mean": self._mean}

    def load_state_dict(self, state):
        if "mean" in state:
            self._mean = numpy.asarray(state["mean"], dtype=numpy.float32)


class Compose(Transform):
    """Apply transforms in order, then make sure the result is float32."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        self.expands = int(numpy.prod([t.expands for t in self.transforms])) if self.transforms else 1

    def __call__(self, images, rng):
        for t in self.transforms:
            images = t(images, rng)
        return to_float(images)

    def fit(self, dataset):
        for t in self.transforms:
            t.fit(dataset)

    def state_dict(self):
        return {f"{i}.{k}": v for i, t in enumerate(self.transforms) for k, v in t.state_dict().items()}

    def load_state_dict(self, state):
        for i, t in enumerate(self.transforms):
            t.load_state_dict({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})
