"""Decoding image files as training sees them, and image folders: real photos and odd files."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from minidl.data import DataLoader, HorizontalFlip, ImageFolder, RandomCrop, decode_image
from minidl.data.images import MissingSplitError, find_images

from .image_folders import add_odd_files, make_image_folder, photo


def test_decode_resizes_the_centre_square(tmp_path):
    pixels = photo("coffee")  # 400 x 600
    path = tmp_path / "coffee.png"
    Image.fromarray(pixels).save(path)
    out = decode_image(path, 200)
    assert out.shape == (200, 200, 3) and out.dtype == np.uint8
    centre = Image.fromarray(pixels[:, 100:500]).resize((200, 200), Image.BILINEAR)  # short side 400 -> 200
    assert np.abs(out.astype(int) - np.asarray(centre).astype(int)).mean() < 1.0
    assert decode_image(path).shape == (400, 600, 3)  # no size: as stored
    gray = decode_image(path, 64, channels=1)
    assert gray.shape == (64, 64, 1)


def test_large_jpeg_is_decoded_at_a_reduced_scale_with_the_same_result(tmp_path):
    big = np.asarray(Image.fromarray(photo("rocket")).resize((1280, 854), Image.BILINEAR))
    path = tmp_path / "big.jpg"
    Image.fromarray(big).save(path, quality=95)
    fast = decode_image(path, 128)  # draft mode: decoded at 1/4 scale (320 x 213), then resized
    full = decode_image(path, None)
    assert full.shape == (854, 1280, 3)
    box = ((1280 - 854) / 2, 0, (1280 + 854) / 2, 854)
    slow = np.asarray(Image.fromarray(full).resize((128, 128), Image.BILINEAR, box=box))
    assert np.abs(fast.astype(int) - slow.astype(int)).mean() < 3.0


def test_odd_files_decode_or_fail_by_name(tmp_path):
    files = add_odd_files(tmp_path)
    for path in files["good"]:
        out = decode_image(path, 48)
        assert out.shape == (48, 48, 3) and out.dtype == np.uint8, path
    gray = decode_image(tmp_path / "gray.jpg", 48)
    np.testing.assert_array_equal(gray[..., 0], gray[..., 1])  # grayscale repeated into RGB
    for path in files["bad"]:
        with pytest.raises(OSError):
            decode_image(path, 48)


def test_exif_orientation_turns_the_image_upright(tmp_path):
    pixels = np.zeros((60, 90, 3), np.uint8)
    pixels[:, :45] = 255  # left half white
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # stored turned: a viewer rotates it 90 degrees clockwise
    image.save(tmp_path / "turned.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "turned.jpg", 60)
    assert out[:20].mean() > 200 and out[-20:].mean() < 50  # the white half is now on top


def test_image_folder_numbers_classes_from_train_and_checks_val(tmp_path):
    root = make_image_folder(tmp_path / "data", train=2, val=1)
    (root / "val" / "rocket" / "000.jpg").unlink()
    (root / "val" / "rocket").rmdir()  # val lacks a class: labels still follow train
    train, val = ImageFolder(root, "train", size=32), ImageFolder(root, "test", size=32)
    assert train.classes == val.classes == ("astronaut", "coffee", "rocket")
    assert val.labels.tolist() == [0, 1] and val.name.endswith("val")
    (root / "val" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"class directories \['zebra'\] are not among the training classes"):
        find_images(root, "val")
    flat = make_image_folder(tmp_path / "flat", classes=("coffee",), train=1, val=0) / "train"
    assert len(ImageFolder(flat, "train", size=32)) == 1  # <root>/<class>/<image>
    with pytest.raises(MissingSplitError, match="no test or val split"):
        ImageFolder(flat, "test")


def test_image_folder_loader_skips_bad_files_and_matches_step_by_step(tmp_path):
    root = make_image_folder(tmp_path / "data", train=3, val=0)
    odd = add_odd_files(root / "train" / "coffee")
    data = ImageFolder(root, "train", size=40)
    assert len(data) == 9 + len(odd["good"]) + len(odd["bad"])
    transforms = [RandomCrop(32), HorizontalFlip()]
    with pytest.warns(UserWarning, match="skipping unreadable image") as caught:
        batches = list(DataLoader(data, 4, transform=transforms, seed=2, workers=2, to_float=False).epoch(0))
        whole = [data.get_batch(b_indices) for b_indices in
                 (DataLoader(data, 4, seed=2).order(0)[i * 4:(i + 1) * 4] for i in range(len(batches)))]
    reported = {str(w.message).split(":")[0].replace("skipping unreadable image ", "") for w in caught}
    assert reported == {str(p) for p in odd["bad"]}
    assert data.bad_files == set(odd["bad"])
    for b, (batch, (images, labels)) in enumerate(zip(batches, whole)):
        # decoding straight into the crops equals cropping the decoded batch
        expected = RandomCrop(32)(images, rng := np.random.default_rng([2, 0, b, 1]))
        expected = HorizontalFlip()(expected, rng)
        np.testing.assert_array_equal(batch.inputs.numpy(), expected)
        np.testing.assert_array_equal(batch.labels, labels)
