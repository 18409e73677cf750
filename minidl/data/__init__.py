"""Data: datasets (Fashion-MNIST, MNIST, .npz, image folders, packed datasets), batch transforms, the loader.

Datasets and transforms are also registered as plugins (``minidl_data``), so
model files and the CLI name them: ``--data fashion-mnist``,
``augmentation: [{type: random_crop, size: 28, padding: 2}, {type: hflip}]``.
"""
from .datasets import FASHION_MNIST_CLASSES, ArrayDataset, Subset, fashion_mnist, mnist, npz_dataset
from .idx import FASHION_MNIST_DIR, read_idx
from .images import IMAGE_EXTENSIONS, ImageFolder, decode_image
from .loader import Batch, DataLoader
from .pack import pack_folder
from .packed import PackedDataset, PackError
from .pixels import MeanImage, Normalize, PCAColorNoise
from .statistics import dataset_statistics
from .transforms import CenterCrop, Compose, HorizontalFlip, RandomCrop, Resize, TenCrop, Transform, to_float
from .windows import Windows

__all__ = [
    "ArrayDataset", "Batch", "CenterCrop", "Compose", "DataLoader", "FASHION_MNIST_CLASSES", "FASHION_MNIST_DIR",
    "HorizontalFlip", "IMAGE_EXTENSIONS", "ImageFolder", "MeanImage", "Normalize", "PCAColorNoise", "PackError",
    "PackedDataset", "RandomCrop", "Resize", "Subset", "TenCrop", "Transform", "Windows", "dataset_statistics",
    "decode_image", "fashion_mnist", "mnist", "npz_dataset", "pack_folder", "read_idx", "to_float",
]
