"""Datasets from real files: IDX (gzip), .npz without pickle, image folders with a corrupt file."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from minidl.data import ArrayDataset, ImageFolder, fashion_mnist, mnist, npz_dataset, read_idx
from minidl.plugins import registry


def write_idx(path, array):
    codes = {np.dtype(np.uint8): 0x08, np.dtype(">i4"): 0x0C}
    header = struct.pack(">BBBB", 0, 0, codes[array.dtype], array.ndim) + b"".join(
        struct.pack(">I", n) for n in array.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())


def make_idx_dir(root, n=12):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n, dtype=np.uint8))
    return root


def test_idx_directory_as_fashion_mnist(tmp_path):
    data = fashion_mnist("train", root=make_idx_dir(tmp_path))
    assert len(data) == 12 and data.sample_shape == (1, 28, 28)
    images, labels = data.get_batch(np.array([0, 3]))
    assert images.shape == (2, 1, 28, 28) and images.dtype == np.uint8 and labels.dtype == np.int64
    assert data.classes[9] == "Ankle boot"
    assert len(mnist("test", root=str(tmp_path))) == 12


def test_missing_dataset_says_how_to_install(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist("train", root=tmp_path)
    with pytest.raises(FileNotFoundError, match="directory with the MNIST IDX files"):
        mnist("train")


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "bad-idx3-ubyte"
    write_idx(path, np.zeros((4, 2, 2), np.uint8))
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"declares shape \(4, 2, 2\) \(16 bytes\) but 13 bytes follow"):
        read_idx(path)


def test_real_fashion_mnist_when_installed():
    try:
        data = registry("datasets").create("fashion-mnist", split="test")
    except FileNotFoundError as e:
        pytest.skip(str(e))
    assert len(data) == 10000 and data.sample_shape == (1, 28, 28)
    assert np.bincount(data.labels).tolist() == [1000] * 10


def test_npz_loads_without_pickle(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, x_train=np.zeros((5, 3, 4, 4), np.float32), y_train=np.arange(5) % 2,
             x_test=np.ones((2, 3, 4, 4), np.float32), y_test=np.array([1, 0]), classes=np.array(["a", "b"]))
    train = npz_dataset(str(path), "train")
    assert len(train) == 5 and train.classes == ("a", "b") and train.sample_shape == (3, 4, 4)
    pickled = tmp_path / "p.npz"
    np.savez(pickled, x_train=np.array([{"evil": 1}], dtype=object), y_train=np.array([0]))
    with pytest.raises(ValueError, match="without pickle"):
        npz_dataset(str(pickled), "train")


def test_array_dataset_validates():
    with pytest.raises(ValueError, match="labels must be 3 integers"):
        ArrayDataset(np.zeros((3, 1, 2, 2)), np.zeros(3))


def test_image_folder_decodes_and_skips_corrupt_files(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        (tmp_path / "train" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 255, (40 + 10 * i, 60, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "train" / name / f"{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "train" / "dog" / "9_broken.jpg").write_bytes(b"not a jpeg at all")
    data = ImageFolder(str(tmp_path), "train", size=32)
    assert data.classes == ("cat", "dog") and len(data) == 7 and data.sample_shape == (3, 32, 32)
    broken = [i for i, f in enumerate(data.files) if f.name == "9_broken.jpg"][0]
    with pytest.warns(UserWarning, match="skipping unreadable image .*9_broken.jpg"):
        images, labels = data.get_batch(np.array([broken, 0]))
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    assert data.bad_files == {data.files[broken]}
    # the broken file's place is taken by the next readable image, and it is reported once
    images2, _ = data.get_batch(np.array([broken]))
    assert len(data.bad_files) == 1
    np.testing.assert_array_equal(images2[0], data.load((broken + 1) % len(data)))
