"""The loader's resident datasets and its GPU paths: every way of making a batch gives the CPU's batches.

A resident dataset's batches are gathered straight from its whole image
array (on the CPU with ``resident=True``, on a GPU after one copy); the
others are cut on the host and copied (on a GPU from pinned memory, on a
copy stream per worker). The random draws are the same in every case, so
the uint8 batches must be equal bit for bit, the float ones to rounding.
"""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl import backend
from minidl.data import (
    ArrayDataset, Compose, DataLoader, HorizontalFlip, ImageFolder, MeanImage, Normalize, PCAColorNoise, RandomCrop,
    Subset, TenCrop,
)
from minidl.data.datasets import in_memory

from .image_folders import make_image_folder


def colour(n=40, h=12, w=10, seed=0):
    """(n, 3, h, w) uint8 with no zeros, so zero padding cannot pass for pixels."""
    return np.random.default_rng(seed).integers(1, 256, (n, 3, h, w), dtype=np.uint8)


def float_pipeline(data, crop=10):
    """Padded random crops and flips, then PCA colour noise, normalization and the paper's mean image."""
    pipeline = Compose([RandomCrop(crop, padding=2), HorizontalFlip(), PCAColorNoise(0.1),
                        Normalize([0.4, 0.5, 0.6], [0.2, 0.25, 0.3]), MeanImage(scale=255)])
    pipeline.fit(data)
    return pipeline


def batches(loader, epochs=(0, 1)):
    return [(b.inputs.numpy(), b.labels, b.index) for e in epochs for b in loader.epoch(e)]


def assert_same(got, want, exact=True):
    assert len(got) == len(want) > 0
    for (x, y, i), (x0, y0, i0) in zip(got, want):
        assert i == i0 and x.dtype == x0.dtype and x.shape == x0.shape
        np.testing.assert_array_equal(y, y0)
        assert y.dtype == np.int64 and isinstance(y, np.ndarray)
        if exact:
            np.testing.assert_array_equal(x, x0)
        else:
            np.testing.assert_allclose(x, x0, rtol=1e-6, atol=1e-4)


CASES = {  # name: (images, transform maker, loader keywords)
    "padded crops and flips, uint8": (colour(), lambda d: [RandomCrop(10, padding=2), HorizontalFlip()],
                                      {"to_float": False}),
    "the float transforms": (colour(), float_pipeline, {}),
    "ten crops, uint8, last batch kept": (colour(13), lambda d: [TenCrop(8, padding=1)],
                                          {"to_float": False, "shuffle": False, "drop_last": False}),
    "whole images": (colour(), lambda d: [], {}),
    "large windows (slice copies)": (colour(12, 48, 46, seed=1), lambda d: float_pipeline(d, crop=40), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_resident_batches_equal_the_in_memory_path_on_the_cpu(case):
    images, make, keywords = CASES[case]
    data = ArrayDataset(images, np.arange(len(images)) % 7)
    transform = make(data)
    plain = DataLoader(data, 6, transform=transform, seed=3, workers=2, resident=False, **keywords)
    resident = DataLoader(data, 6, transform=transform, seed=3, workers=2, resident=True, **keywords)
    assert not plain.is_resident and resident.is_resident
    assert_same(batches(resident), batches(plain))


def test_a_subset_of_a_subset_is_gathered_from_the_rows_it_names():
    images = colour(30)
    data = Subset(Subset(ArrayDataset(images, np.arange(30)), np.arange(29, -1, -1)), np.arange(0, 30, 2))
    whole, labels, rows = in_memory(data)
    assert whole is data.dataset.dataset.images and rows.tolist() == list(range(29, -1, -2))
    np.testing.assert_array_equal(labels[rows], data.get_batch(np.arange(15))[1])
    transform = [RandomCrop(10, padding=2), HorizontalFlip()]
    plain = DataLoader(data, 4, transform=transform, seed=5, resident=False, to_float=False)
    resident = DataLoader(data, 4, transform=transform, seed=5, resident=True, to_float=False)
    assert_same(batches(resident), batches(plain))
    assert in_memory(Subset(OnTheFly(), [0, 1])) is None


class OnTheFly:
    """A dataset that makes its images when asked: nothing to keep on a device."""

    classes = ("a", "b")
    sample_shape = (3, 12, 10)

    def __len__(self):
        return 16

    def get_batch(self, indices):
        indices = np.asarray(indices)
        return colour(16)[indices], indices % 2


def test_resident_options_are_checked():
    data = ArrayDataset(colour(8), np.zeros(8, np.int64))
    for bad in ("yes", 1, None, "true"):
        with pytest.raises(ValueError, match=rf"resident must be 'auto', True or False, got {bad!r}"):
            DataLoader(data, 4, resident=bad)
    with pytest.raises(ValueError, match=r"resident=True needs a dataset held in memory as arrays .*'OnTheFly' "
                                         r"\(OnTheFly\) is not: use resident='auto' or False"):
        DataLoader(OnTheFly(), 4, resident=True)
    assert not DataLoader(data, 4).is_resident  # "auto" on the CPU: the in-memory path as before
    assert not DataLoader(OnTheFly(), 4).is_resident and not DataLoader(OnTheFly(), 4, resident=False).is_resident
    assert DataLoader(data, 4, resident=True).is_resident  # on the CPU: straight from the dataset's arrays


# ----------------------------------------------------------------------------- on a GPU (skipped without one)

@pytest.mark.parametrize("resident", ["auto", False])
@pytest.mark.parametrize("case", sorted(CASES))
def test_gpu_batches_equal_the_cpu_batches(case, resident, cuda):
    images, make, keywords = CASES[case]
    data = ArrayDataset(images, np.arange(len(images)) % 7)
    transform = make(data)
    want = batches(DataLoader(data, 6, transform=transform, seed=3, workers=2, **keywords))
    loader = DataLoader(data, 6, transform=transform, seed=3, workers=3, device=cuda, resident=resident, **keywords)
    assert loader.is_resident == (resident == "auto")  # a small array goes to the GPU by default
    first = next(iter(loader.epoch(0)))
    assert str(first.inputs.device) == cuda and isinstance(first.labels, np.ndarray)
    assert_same(batches(loader), want, exact=keywords.get("to_float", True) is False)


def test_gpu_batches_of_a_decoded_folder_equal_the_cpu_batches(tmp_path, cuda):
    # read_windows decodes into pinned buffers, recycled once their copies are done (hazard (a))
    root = make_image_folder(tmp_path, train=5, val=0, low=40, high=80)
    data = ImageFolder(root, "train", size=32)
    for transform, exact in (([RandomCrop(28, padding=2), HorizontalFlip()], True), (float_pipeline(data, 28), False)):
        want = batches(DataLoader(data, 2, transform=transform, seed=1, workers=2, to_float=not exact), (0, 1, 2))
        got = batches(DataLoader(data, 2, transform=transform, seed=1, workers=4, prefetch=4, device=cuda,
                                 to_float=not exact), (0, 1, 2))
        assert_same(got, want, exact=exact)


@pytest.mark.parametrize("resident", ["auto", False])
def test_iterating_a_gpu_loader_reads_nothing_back_and_never_waits(resident, cuda):
    data = ArrayDataset(colour(60), np.arange(60) % 7)
    loader = DataLoader(data, 8, transform=float_pipeline(data), seed=2, workers=3, device=cuda, resident=resident)
    before = backend.device_reads()
    kept = [batch for e in range(2) for batch in loader.epoch(e)]  # the first batches copy the dataset and stats
    assert backend.device_reads() == before
    want = batches(DataLoader(data, 8, transform=float_pipeline(data), seed=2))
    assert_same([(b.inputs.numpy(), b.labels, b.index) for b in kept], want, exact=False)


@pytest.mark.parametrize("resident", ["auto", False])
def test_batches_stay_intact_for_a_slow_consumer_on_its_own_stream(resident, cuda):
    # the consumer reads each batch only after slow work on its stream and drops it at once: were a batch's memory
    # handed back to a copy stream's pool (hazard (b)), a later batch would overwrite it before it is read
    xp = mdl.Device(cuda).xp
    data = ArrayDataset(colour(160), np.arange(160) % 7)
    transform = [RandomCrop(10, padding=2), HorizontalFlip()]
    loader = DataLoader(data, 8, transform=transform, seed=4, workers=4, prefetch=4, device=cuda, resident=resident,
                        to_float=False)
    copies, labels = [], []
    with xp.cuda.Device(0), xp.cuda.Stream(non_blocking=True):
        slow = xp.ones((4096, 4096), xp.float32)
        for batch in loader.epoch(0):
            for _ in range(3):
                xp.matmul(slow, slow)
            copies.append(batch.inputs.data.copy())
            labels.append(batch.labels)
            del batch
        got = [(xp.asnumpy(c), y, i) for i, (c, y) in enumerate(zip(copies, labels))]
    want = batches(DataLoader(data, 8, transform=transform, seed=4, to_float=False), (0,))
    assert_same(got, want)


def test_a_gpu_loader_left_early_gives_the_same_batches_next_time(cuda):
    data = ArrayDataset(colour(60), np.arange(60) % 7)
    transform = [RandomCrop(10, padding=2), HorizontalFlip()]
    loader = DataLoader(data, 4, transform=transform, seed=6, workers=3, prefetch=3, device=cuda, resident=False,
                        to_float=False)
    for i, _ in enumerate(loader.epoch(0)):
        if i == 1:
            break  # batches in flight are dropped; the consumer's stream still waits for their copies
    want = batches(DataLoader(data, 4, transform=transform, seed=6, to_float=False), (0,))
    assert_same(batches(loader, (0,)), want)
