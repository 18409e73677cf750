"""Packing image folders of real photos: every good image packed, bad ones reported, files checked on open."""
from __future__ import annotations

import json
import struct
import tracemalloc

import numpy as np
import pytest

from minidl.data import (
    Compose, DataLoader, HorizontalFlip, MeanImage, Normalize, PackedDataset, PackError, PCAColorNoise, RandomCrop,
    decode_image, pack_folder,
)
from minidl.data.images import MissingSplitError, find_images
from minidl.data.packed import HEADER, packed_dataset

from .image_folders import add_odd_files, make_image_folder


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """(image folder with odd files, packed directory, lines reported while packing)."""
    root = make_image_folder(tmp_path_factory.mktemp("raw"), train=4, val=2)
    odd = add_odd_files(root / "train" / "coffee")
    out = tmp_path_factory.mktemp("packed")
    lines = []
    summary = pack_folder(root, out, size=64, quality=90, workers=1, progress=False, report=lines.append)
    return root, out, odd, lines, summary


def test_every_good_image_is_packed_and_every_bad_one_reported(packed):
    root, out, odd, lines, summary = packed
    assert sorted(summary) == ["train", "val"]
    assert summary["train"]["images"] == 12 + len(odd["good"]) and summary["val"]["images"] == 6
    assert sorted(p for p, _ in summary["train"]["skipped"]) == sorted(str(p) for p in odd["bad"])
    assert len(lines) == 2 and all(line.startswith("skipping unreadable image ") for line in lines)
    assert any("truncated.jpg: OSError" in line for line in lines)
    data = PackedDataset(out / "train.mdlpack")
    assert data.classes == ("astronaut", "coffee", "rocket") and data.sample_shape == (3, 64, 64)
    assert sorted(s["path"] for s in data.meta["skipped"]) == ["train/coffee/notes.jpg", "train/coffee/truncated.jpg"]
    _, _, files = find_images(root, "train")
    good = [(p, label) for p, label in files if p not in odd["bad"]]
    images, labels = data.get_batch(np.arange(len(data)))
    assert labels.tolist() == [label for _, label in good]
    for image, (path, _) in zip(images, good):  # the stored JPEGs decode to what the files decode to
        # (up to JPEG's loss: quality 90 with 4:2:0 chroma gives mean errors of about 3 levels at 64x64)
        assert np.abs(image.transpose(1, 2, 0).astype(int) - decode_image(path, 64).astype(int)).mean() < 5, path


def test_statistics_are_exact_over_every_image(packed):
    root, out, odd, _, _ = packed
    _, _, files = find_images(root, "train")
    pixels = np.stack([decode_image(p, 64) for p, _ in files if p not in odd["bad"]]).astype(np.float64) / 255
    stats = PackedDataset(out / "train.mdlpack").statistics
    np.testing.assert_allclose(stats["mean_image"], pixels.mean(axis=0).transpose(2, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(stats["channel_mean"], pixels.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(stats["channel_std"], pixels.std(axis=(0, 1, 2)), rtol=1e-9)


def test_packing_in_processes_writes_the_same_file(packed, tmp_path):
    root, out, _, _, _ = packed
    pack_folder(root, tmp_path, size=64, quality=90, workers=2, progress=False, report=lambda line: None)
    for split in ("train", "val"):
        assert (tmp_path / f"{split}.mdlpack").read_bytes() == (out / f"{split}.mdlpack").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.mdlpack", "val.mdlpack"]  # no temporary files


def test_a_failed_pack_leaves_the_previous_one(packed, tmp_path):
    root = make_image_folder(tmp_path / "raw", classes=("coffee",), train=1, val=0)
    out = tmp_path / "out"
    pack_folder(root, out, size=32, workers=1, progress=False)
    before = (out / "train.mdlpack").read_bytes()
    (root / "train" / "coffee" / "000.jpg").write_bytes(b"broken")
    with pytest.raises(ValueError, match="no readable image in the train split"):
        pack_folder(root, out, size=32, workers=1, progress=False, report=lambda line: None)
    assert (out / "train.mdlpack").read_bytes() == before
    assert [p.name for p in out.iterdir()] == ["train.mdlpack"]


def test_splits_open_by_name(packed):
    _, out, _, _, _ = packed
    assert packed_dataset(str(out), "test").path.name == "val.mdlpack"  # val stands in for test
    assert len(packed_dataset(str(out / "train.mdlpack"))) == len(PackedDataset(out / "train.mdlpack"))
    with pytest.raises(MissingSplitError, match="no extra split"):
        packed_dataset(str(out), "extra")


def _copy_with(source, path, edit):
    raw = bytearray(source.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    return path


def test_truncated_or_inconsistent_files_are_refused_naming_them(packed, tmp_path):
    _, out, _, _, _ = packed
    good = out / "val.mdlpack"
    raw = good.read_bytes()
    magic, version, c, h, w, count, index_offset, meta_length = HEADER.unpack(raw[:HEADER.size])
    for cut in (10, HEADER.size + 100, index_offset + 8, len(raw) - 1):
        path = tmp_path / f"cut{cut}.mdlpack"
        path.write_bytes(raw[:cut])
        with pytest.raises(PackError, match=rf"{path}: truncated"):
            PackedDataset(path)

    def header(**changes):
        fields = dict(magic=magic, version=version, c=c, h=h, w=w, count=count, index_offset=index_offset,
                      meta_length=meta_length)
        fields.update(changes)
        return lambda b: b.__setitem__(slice(0, HEADER.size), HEADER.pack(*fields.values()))

    huge = _copy_with(good, tmp_path / "huge.mdlpack", header(count=2 ** 40))
    tracemalloc.start()
    with pytest.raises(PackError, match=rf"{huge}: truncated or inconsistent: the header declares 1099511627776"):
        PackedDataset(huge)
    assert tracemalloc.get_traced_memory()[1] < 1 << 20  # refused before allocating the index
    tracemalloc.stop()
    with pytest.raises(PackError, match="not a minidl packed dataset"):
        PackedDataset(_copy_with(good, tmp_path / "magic.mdlpack", header(magic=b"NOTAPACK")))
    with pytest.raises(PackError, match="not a valid image shape"):
        PackedDataset(_copy_with(good, tmp_path / "shape.mdlpack", header(c=7)))

    def swap_offsets(b):  # images 0 and 1 end where the other should
        first = index_offset + 8
        b[first:first + 8] = struct.pack("<Q", index_offset - 1)
    with pytest.raises(PackError, match="index is not increasing at image 1"):
        PackedDataset(_copy_with(good, tmp_path / "order.mdlpack", swap_offsets))

    def bad_label(b):
        at = index_offset + 8 * (count + 1)
        b[at:at + 8] = struct.pack("<q", 99)
    with pytest.raises(PackError, match=r"labels outside 0..2"):
        PackedDataset(_copy_with(good, tmp_path / "label.mdlpack", bad_label))

    def bad_meta(b):
        b[-meta_length:] = b"{" * meta_length
    with pytest.raises(PackError, match="metadata is not valid JSON"):
        PackedDataset(_copy_with(good, tmp_path / "meta.mdlpack", bad_meta))
    assert json.loads(raw[-meta_length:])["classes"] == ["astronaut", "coffee", "rocket"]


def test_loader_on_packed_data_reuses_buffers_safely_and_is_deterministic(packed):
    _, out, _, _, _ = packed
    data = PackedDataset(out / "train.mdlpack")
    crops = [RandomCrop(56), HorizontalFlip()]

    def uint8_epoch(workers):
        loader = DataLoader(data, 4, transform=crops, seed=4, workers=workers, to_float=False)
        return [batch.inputs.numpy() for batch in loader.epoch(1)]  # all held at once

    kept, again = uint8_epoch(1), uint8_epoch(3)
    assert kept[0].dtype == np.uint8 and kept[0].shape == (4, 3, 56, 56)
    for a, b in zip(kept, again):
        np.testing.assert_array_equal(a, b)
    floats = DataLoader(data, 4, transform=crops + [Normalize([0.5] * 3, [0.25] * 3)], seed=4, workers=2)
    for b, (batch, crop) in enumerate(zip(floats.epoch(1), kept)):  # float batches from recycled uint8 buffers
        np.testing.assert_array_equal(batch.inputs.numpy(), (crop.astype(np.float32) * np.float32(1 / 255) - 0.5)
                                      / np.float32(0.25))


def test_the_array_stage_on_a_device_equals_the_cpu(packed, device):
    _, out, _, _, _ = packed
    data = PackedDataset(out / "train.mdlpack")
    pipeline = Compose([RandomCrop(56), HorizontalFlip(), PCAColorNoise(0.1), MeanImage(scale=255)])
    pipeline.fit(data)
    cpu = [b.inputs.numpy() for b in DataLoader(data, 5, transform=pipeline, seed=9).epoch(0)]
    there = [b for b in DataLoader(data, 5, transform=pipeline, seed=9, device=device).epoch(0)]
    assert str(there[0].inputs.device) == str(device).replace("cpu", "cpu:0")
    for a, b in zip(cpu, there):
        np.testing.assert_allclose(b.inputs.numpy(), a, rtol=1e-6, atol=1e-4)


def test_a_damaged_image_inside_a_pack_is_reported_by_file_and_index(packed, tmp_path):
    _, out, _, _, _ = packed
    raw = bytearray((out / "val.mdlpack").read_bytes())
    raw[HEADER.size:HEADER.size + 64] = bytes(64)  # image 0 loses its JPEG markers
    path = tmp_path / "damaged.mdlpack"
    path.write_bytes(bytes(raw))
    data = PackedDataset(path)
    assert data.decode(1).shape == (64, 64, 3)
    with pytest.raises(PackError, match=rf"{path}: image 0 cannot be decoded as a 64x64 RGB JPEG"):
        data.decode(0)
