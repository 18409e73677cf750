"""Batch transforms and the loader: shapes, semantics, determinism, resumption."""
from __future__ import annotations

import numpy as np
import pytest

from minidl.data import (
    ArrayDataset, CenterCrop, Compose, DataLoader, HorizontalFlip, MeanImage, Normalize, PCAColorNoise, RandomCrop,
    Resize, TenCrop,
)


def images(n=4, c=3, h=8, w=8, seed=0):
    return np.random.default_rng(seed).integers(0, 255, (n, c, h, w), dtype=np.uint8)


def test_random_crop_takes_real_windows():
    x = images()
    out = RandomCrop(5)(x, np.random.default_rng(1))
    assert out.shape == (4, 3, 5, 5)
    for b in range(4):  # each crop is a window of its own image
        found = any((x[b, :, i:i + 5, j:j + 5] == out[b]).all() for i in range(4) for j in range(4))
        assert found
    padded = RandomCrop(8, padding=2)(x, np.random.default_rng(2))
    assert padded.shape == x.shape


def test_center_and_ten_crop():
    x = images(2)
    np.testing.assert_array_equal(CenterCrop(4)(x), x[:, :, 2:6, 2:6])
    ten = TenCrop(6)(x)
    assert ten.shape == (20, 3, 6, 6)
    np.testing.assert_array_equal(ten[0], x[0, :, :6, :6])            # top-left
    np.testing.assert_array_equal(ten[4], x[0, :, 1:7, 1:7])          # centre
    np.testing.assert_array_equal(ten[5], x[0, :, :6, :6][..., ::-1])  # its mirror
    np.testing.assert_array_equal(ten[10], x[1, :, :6, :6])


def test_flip_probability_and_semantics():
    x = images(200)
    out = HorizontalFlip(0.5)(x, np.random.default_rng(0))
    flipped = [(out[b] == x[b][..., ::-1]).all() and not (out[b] == x[b]).all() for b in range(200)]
    assert 70 < sum(flipped) < 130
    assert all(flipped[b] or (out[b] == x[b]).all() for b in range(200))


def test_normalize_mean_image_and_pca_noise():
    x = images(6)
    out = Normalize([0.5, 0.4, 0.3], [0.2, 0.2, 0.2])(x)
    np.testing.assert_allclose(out[:, 1], (x[:, 1] / 255.0 - 0.4) / 0.2, rtol=1e-5, atol=1e-6)
    mean = MeanImage()
    mean.fit(ArrayDataset(x, np.zeros(6, np.int64)))
    np.testing.assert_allclose(mean(x).mean(axis=0), 0, atol=1e-5)
    restored = MeanImage()
    restored.load_state_dict(mean.state_dict())
    np.testing.assert_array_equal(restored(x), mean(x))
    noisy = PCAColorNoise(0.1)(x, np.random.default_rng(0))
    shift = noisy - x.astype(np.float32) / 255
    # the same colour shift on every pixel of an image, different between images
    assert np.allclose(shift, shift[:, :, :1, :1], atol=1e-6)
    assert not np.allclose(shift[0, :, 0, 0], shift[1, :, 0, 0])


def test_resize_short_side():
    out = Resize(12)(images(2, h=8, w=16))
    assert out.shape == (2, 3, 12, 24)


def test_loader_is_deterministic_and_resumable():
    data = ArrayDataset(images(50, 1), np.arange(50) % 5)
    aug = [RandomCrop(8, padding=1), HorizontalFlip()]

    def batches(workers, start=0, epoch=3):
        loader = DataLoader(data, 8, transform=aug, seed=7, workers=workers)
        return [(b.inputs.numpy(), b.labels, b.index) for b in loader.epoch(epoch, start=start)]

    one, two = batches(1), batches(3)
    assert len(one) == 6  # drop_last
    for (x1, y1, i1), (x2, y2, i2) in zip(one, two):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)
        assert i1 == i2
    tail = batches(2, start=4)
    assert [b[2] for b in tail] == [4, 5]
    np.testing.assert_array_equal(tail[0][0], one[4][0])
    assert not np.array_equal(batches(1, epoch=4)[0][1], one[0][1])  # a new order each epoch


def test_loader_keeps_last_partial_batch_for_evaluation():
    data = ArrayDataset(images(10, 1), np.zeros(10, np.int64))
    loader = DataLoader(data, 4, shuffle=False, drop_last=False, transform=Compose([]))
    sizes = [len(b.labels) for b in loader.epoch(0)]
    assert sizes == [4, 4, 2] and len(loader) == 3
    first = next(iter(loader.epoch(0)))
    assert first.inputs.dtype == np.float32 and float(first.inputs.numpy().max()) <= 1.0


def test_crop_larger_than_image_is_an_error():
    with pytest.raises(ValueError, match="smaller than the crop 9"):
        RandomCrop(9)(images(), np.random.default_rng(0))


def test_for_x_y_in_loader_and_each_iteration_is_the_next_epoch():
    data = ArrayDataset(images(20, 1), np.arange(20) % 4)
    loader = DataLoader(data, 5, transform=[RandomCrop(6), HorizontalFlip()], seed=3)
    epochs = [[(x.numpy(), y) for x, y in loader] for _ in range(2)]
    for e, got in enumerate(epochs):
        want = list(loader.epoch(e))
        assert len(got) == len(want) == 4
        for (x, y), batch in zip(got, want):
            np.testing.assert_array_equal(x, batch.inputs.numpy())
            np.testing.assert_array_equal(y, batch.labels)
    assert not np.array_equal(epochs[0][0][1], epochs[1][0][1])  # epoch 1 is in another order
    loader.set_epoch(5)
    x5, y5 = next(iter(loader))
    np.testing.assert_array_equal(y5, next(iter(loader.epoch(5))).labels)
    assert loader.next_epoch == 6
    batch = next(iter(loader.epoch(0)))
    assert batch.index == 0 and len(batch) == 2


def test_statistics_from_a_sample_and_the_fitted_normalizations():
    from minidl.data import dataset_statistics

    x = images(30, 3, 6, 5, seed=4)
    data = ArrayDataset(x, np.zeros(30, np.int64))
    stats = dataset_statistics(data, samples=10)
    sample = x[np.linspace(0, 29, 10).astype(np.int64)].astype(np.float64) / 255
    assert stats["count"] == 10
    np.testing.assert_allclose(stats["mean_image"], sample.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats["channel_mean"], sample.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats["channel_std"], sample.std(axis=(0, 2, 3)), rtol=1e-9)
    everything = x.astype(np.float64) / 255
    norm = Normalize()
    norm.fit(data)  # 10,000 samples by default: all 30 here
    np.testing.assert_allclose(norm.mean, everything.mean(axis=(0, 2, 3)), rtol=1e-9)
    restored = Normalize()
    restored.load_state_dict(norm.state_dict())
    np.testing.assert_array_equal(restored(x), norm(x))
    paper = MeanImage(scale=255)
    paper.fit(data)
    out = paper(x[:, :, 1:5, 1:4])  # a 4x3 crop: the mean's centre 4x3 is subtracted
    np.testing.assert_allclose(out, x[:, :, 1:5, 1:4] - 255 * everything.mean(axis=0)[:, 1:5, 1:4], atol=2e-4)
    channels = MeanImage(per_channel=True)
    channels.fit(data)
    np.testing.assert_allclose(channels(x).mean(axis=(0, 2, 3)), 0, atol=1e-6)


def test_normalize_needs_both_or_neither():
    with pytest.raises(ValueError, match="give both mean and std, or neither"):
        Normalize(mean=[0.5])
    with pytest.raises(ValueError, match="call fit"):
        Normalize()(images())
