"""Data sources. ``read_idx`` reads the IDX files of MNIST and Fashion-MNIST."""
from .idx import FASHION_MNIST_DIR, load_idx_dataset, read_idx

__all__ = ["FASHION_MNIST_DIR", "load_idx_dataset", "read_idx"]
