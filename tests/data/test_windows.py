"""Crop windows: planned crops and flips equal the same transforms applied one after another to arrays.

The reference applies each transform the plain way (zero-pad, slice, mirror);
the planned way copies each output once, by a batch gather (any device) or
image by image as images are decoded. All three must agree exactly.
"""
from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from minidl.data import CenterCrop, Compose, HorizontalFlip, RandomCrop, TenCrop, Windows, to_float
from minidl.data.windows import fill, gather


def reference(images, steps, rng):
    """Apply (kind, size, padding) steps one at a time with plain NumPy."""
    for kind, size, padding in steps:
        if padding:
            images = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
        b, _, h, w = images.shape
        if kind == "random_crop":
            tops, lefts = rng.integers(0, h - size + 1, size=b), rng.integers(0, w - size + 1, size=b)
            images = np.stack([images[i, :, t:t + size, l:l + size] for i, (t, l) in enumerate(zip(tops, lefts))])
        elif kind == "center_crop":
            t, l = (h - size) // 2, (w - size) // 2
            images = images[:, :, t:t + size, l:l + size]
        elif kind == "hflip":
            flip = rng.random(b) < 0.5
            images = images.copy()
            images[flip] = images[flip][..., ::-1]
        elif kind == "ten_crop":
            s = size
            spots = [(0, 0), (0, w - s), (h - s, 0), (h - s, w - s), ((h - s) // 2, (w - s) // 2)]
            crops = [images[:, :, t:t + s, l:l + s] for t, l in spots]
            crops += [c[..., ::-1] for c in crops]
            images = np.stack(crops, axis=1).reshape((-1, images.shape[1], s, s))
    return np.ascontiguousarray(images)


def transform(kind, size, padding):
    return {"random_crop": lambda: RandomCrop(size, padding), "center_crop": lambda: CenterCrop(size),
            "hflip": lambda: HorizontalFlip(), "ten_crop": lambda: TenCrop(size, padding)}[kind]()


@st.composite
def pipelines(draw):
    """(images (B, C, H, W) uint8, [(kind, size, padding), ...]) with every crop fitting its input."""
    b, c = draw(st.integers(1, 3)), draw(st.sampled_from([1, 3]))
    h, w = draw(st.integers(3, 10)), draw(st.integers(3, 10))
    seed = draw(st.integers(0, 2 ** 16))
    images = np.random.default_rng(seed).integers(1, 256, (b, c, h, w), dtype=np.uint8)  # no zeros: padding shows
    steps, side = [], min(h, w)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["random_crop", "center_crop", "hflip", "ten_crop"]))
        padding = draw(st.integers(0, 2)) if kind in ("random_crop", "ten_crop") else 0
        size = draw(st.integers(1, side + 2 * padding)) if kind != "hflip" else 0
        if kind == "ten_crop" and any(k == "ten_crop" for k, _, _ in steps):
            continue
        steps.append((kind, size, padding))
        side = size or side
    return images, steps


@given(pipelines())
def test_planned_windows_equal_step_by_step_transforms(case):
    images, steps = case
    expected = reference(images, steps, np.random.default_rng(5))
    one_by_one = Compose([transform(*s) for s in steps])  # each transform's own __call__
    np.testing.assert_array_equal(one_by_one(images, np.random.default_rng(5)), to_float(expected))
    rng = np.random.default_rng(5)
    windows = Windows.whole(len(images), *images.shape[2:])
    for s in steps:
        windows = transform(*s).plan(windows, rng)
    np.testing.assert_array_equal(gather(windows, images), expected)
    decoded = np.full((len(windows), images.shape[1], windows.height, windows.width), 77, np.uint8)  # stale data
    for b in range(len(images)):  # as a decoder delivers them: one (H, W, C) image at a time
        fill(windows, b, images[b].transpose(1, 2, 0), decoded)
    np.testing.assert_array_equal(decoded, expected)


def test_padded_crop_after_a_crop_pads_with_zeros_not_with_the_image():
    images = np.arange(1, 1 + 2 * 8 * 8, dtype=np.uint8).reshape(2, 1, 8, 8)
    rng = np.random.default_rng(0)
    windows = CenterCrop(4).plan(Windows.whole(2, 8, 8), rng)
    windows = TenCrop(4, padding=1).plan(windows, rng)
    out = gather(windows, images)
    assert out.shape == (20, 1, 4, 4)
    np.testing.assert_array_equal(out[0, 0, 0], 0)  # the top-left crop's first row is padding
    np.testing.assert_array_equal(out[0, 0, 1:, 1:], images[0, 0, 2:5, 2:5])


def test_large_windows_are_copied_by_slices_with_the_same_result():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, (3, 3, 70, 76), dtype=np.uint8)  # 3 x 64 x 64 windows: the slice-copy path
    steps = [("random_crop", 66, 2), ("hflip", 0, 0), ("ten_crop", 64, 1)]
    expected = reference(images, steps, np.random.default_rng(8))
    windows = Windows.whole(3, 70, 76)
    rng = np.random.default_rng(8)
    for s in steps:
        windows = transform(*s).plan(windows, rng)
    np.testing.assert_array_equal(gather(windows, images), expected)


def test_gather_on_a_device_equals_the_host(device):
    import minidl as mdl

    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (4, 3, 12, 10), dtype=np.uint8)
    windows = HorizontalFlip().plan(RandomCrop(9, padding=2).plan(Windows.whole(4, 12, 10), rng), rng)
    there = gather(windows, mdl.tensor(images, device=device).data)
    np.testing.assert_array_equal(mdl.tensor(there).numpy(), gather(windows, images))


@given(pipelines(), st.integers(0, 2 ** 16))
def test_windows_over_rows_of_a_larger_array_equal_the_batch_they_name(case, seed):
    # a resident dataset's batch: the plan made for the batch, cut straight from the whole array
    images, steps = case
    rng = np.random.default_rng(seed)
    rows = rng.permutation(len(images) + 5)[:len(images)]
    whole = rng.integers(1, 256, (len(images) + 5,) + images.shape[1:], dtype=np.uint8)
    whole[rows] = images
    windows = Windows.whole(len(images), *images.shape[2:])
    for s in steps:
        windows = transform(*s).plan(windows, np.random.default_rng(5))
    np.testing.assert_array_equal(gather(windows.over(rows), whole), gather(windows, images))
