"""ImageNet-layout folders of real photos (scikit-image's, from the test extra) and of odd files, for tests."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

PHOTOS = ("astronaut", "coffee", "rocket", "chelsea")


def photo(name: str) -> np.ndarray:
    """A colour photo shipped with scikit-image, (H, W, 3) uint8."""
    data = pytest.importorskip("skimage.data", reason="scikit-image is in the test extra: pip install -e '.[test]'")
    return getattr(data, name)()


def cut(pixels, rng, low=180, high=360):
    """A random crop of ``pixels`` whose sides are in [low, high) (odd sizes and aspect ratios)."""
    h, w = rng.integers(low, min(high, pixels.shape[0]) + 1), rng.integers(low, min(high, pixels.shape[1]) + 1)
    top, left = rng.integers(0, pixels.shape[0] - h + 1), rng.integers(0, pixels.shape[1] - w + 1)
    return pixels[top:top + h, left:left + w]


def make_image_folder(root, classes=PHOTOS[:3], train=4, val=2, seed=0, low=180, high=360):
    """root/train/<class>/<i>.jpg and root/val/<class>/<i>.jpg: JPEG crops of one photo per class."""
    rng = np.random.default_rng(seed)
    for name in classes:
        pixels = photo(name)
        for split, count in (("train", train), ("val", val)):
            if not count:
                continue
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                Image.fromarray(cut(pixels, rng, low, high)).save(folder / f"{i:03d}.jpg", quality=90)
    return root


def add_odd_files(folder, rng=None) -> dict:
    """Odd but readable images and unreadable files in ``folder`` (a class directory).

    Returns {"good": [paths], "bad": [paths]}.
    """
    rng = rng or np.random.default_rng(1)
    pixels = cut(photo("chelsea"), rng, 120, 280)
    good, bad = [], []
    Image.fromarray(pixels).convert("L").save(folder / "gray.jpg", quality=90)
    Image.fromarray(pixels).convert("CMYK").save(folder / "cmyk.jpg", quality=90)
    rgba = Image.fromarray(pixels).convert("RGBA")
    rgba.putalpha(Image.fromarray(rng.integers(0, 256, pixels.shape[:2], dtype=np.uint8)))
    rgba.save(folder / "alpha.png")
    Image.fromarray(pixels[:21, :37]).save(folder / "tiny.PNG")  # smaller than 256: scaled up; upper-case suffix
    Image.fromarray(pixels[:, :40]).save(folder / "narrow.jpeg", quality=90)  # extreme aspect ratio
    good += [folder / n for n in ("gray.jpg", "cmyk.jpg", "alpha.png", "tiny.PNG", "narrow.jpeg")]
    whole = folder / "whole.jpg"
    Image.fromarray(pixels).save(whole, quality=90)
    (folder / "truncated.jpg").write_bytes(whole.read_bytes()[: len(whole.read_bytes()) // 2])
    whole.unlink()
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    bad += [folder / "truncated.jpg", folder / "notes.jpg"]
    (folder / "README.txt").write_text("not an image: ignored by extension\n")
    return {"good": good, "bad": bad}
