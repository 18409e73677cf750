"""Data: datasets (Fashion-MNIST, MNIST, .npz, image folders), batch transforms, and the loader.

Datasets and transforms are also registered as plugins (``minidl_data``), so
model files and the CLI name them: ``--data fashion-mnist``,
``augmentation: [{type: random_crop, size: 28, padding: 2}, {type: hflip}]``.
"""
from .datasets import FASHION_MNIST_CLASSES, ArrayDataset, ImageFolder, fashion_mnist, mnist, npz_dataset
from .idx import FASHION_MNIST_DIR, read_idx
from .loader import Batch, DataLoader
from .transforms import (
    CenterCrop, Compose, HorizontalFlip, MeanImage, Normalize, PCAColorNoise, RandomCrop, Resize, TenCrop, Transform,
)

__all__ = [
    "ArrayDataset", "Batch", "CenterCrop", "Compose", "DataLoader", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR",
    "HorizontalFlip", "ImageFolder", "MeanImage", "Normalize", "PCAColorNoise", "RandomCrop", "Resize", "TenCrop",
    "Transform", "fashion_mnist", "mnist", "npz_dataset", "read_idx",
]
