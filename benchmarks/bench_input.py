"""Input pipeline throughput: images/s of uint8 training crops, from packed data and from the raw folder.

    python benchmarks/bench_input.py [--folder DIR] [--images 1536] [--batch 128] [--crop 227] [--batches 12]

Without ``--folder`` it first writes an ImageNet-like folder: ``--images``
JPEGs of 500x375 (quality 90, 8 classes) cut from scikit-image's photos
(the test extra), and packs it with ``minidl data pack`` (256x256, quality
90, every core), timing the packing. Then, for each source (packed, folder)
and each core count (1 and every core), a fresh process pinned to that many
cores runs a DataLoader with that many worker threads: random crops and
horizontal flips on uint8, the paper's training augmentation before any
float conversion, in batches of ``--batch``. It times ``--batches`` batches
after two warm-up batches and prints images/s and images/s per core.
``--pipeline paper`` adds the rest of the paper's CPU pipeline (float
conversion, PCA colour noise, mean image) to each batch.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, os, sys, time
cores, source, batch, crop, batches, pipeline = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                                  int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:cores])  # before NumPy starts its threads
from minidl.data import DataLoader, HorizontalFlip, ImageFolder, MeanImage, PCAColorNoise, RandomCrop
from minidl.data.packed import is_packed, packed_dataset
data = packed_dataset(source) if is_packed(source) else ImageFolder(source, "train", size=256)
transform = [RandomCrop(crop), HorizontalFlip()]
if pipeline == "paper":
    mean = MeanImage(scale=255)
    mean.fit(data)
    transform += [PCAColorNoise(0.1), mean]
loader = DataLoader(data, batch, transform=transform, workers=cores, to_float=pipeline == "paper")
stream = (b for e in range(10 ** 6) for b in loader.epoch(e))  # epoch after epoch
for _ in range(2):
    next(stream)
start = time.perf_counter()
images = 0
for _ in range(batches):
    last = next(stream)
    images += len(last.labels)
seconds = time.perf_counter() - start
print(json.dumps({"images_per_s": images / seconds, "dtype": str(last.inputs.dtype),
                  "shape": list(last.inputs.shape)}))
"""


def make_folder(root: Path, count: int, classes: int = 8) -> Path:
    """``count`` 500x375 JPEGs cut from scikit-image's photos, in ``root/train/<class>/``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field",
                                                 "immunohistochemistry", "retina", "cat")]
    rng = np.random.default_rng(0)
    for i in range(count):
        label = i % classes
        image = Image.fromarray(photos[label % len(photos)])
        scale = rng.uniform(1.0, 1.6) * max(500 / image.width, 375 / image.height)
        image = image.resize((round(image.width * scale) + 1, round(image.height * scale) + 1), Image.BILINEAR)
        left, top = rng.integers(0, image.width - 500 + 1), rng.integers(0, image.height - 375 + 1)
        folder = root / "train" / f"class{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.crop((left, top, left + 500, top + 375)).save(folder / f"{i:06d}.jpg", quality=90)
    return root


def measure(cores, source, args) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cores), str(source), str(args.batch), str(args.crop),
                          str(args.batches), args.pipeline], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [str(HERE.parent), str(HERE.parent / "plugins"), os.environ.get("PYTHONPATH", "")])})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", help="an ImageNet-layout folder to read (default: make one)")
    parser.add_argument("--images", type=int, default=1536, help="images in the folder made (default 1536)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--crop", type=int, default=227)
    parser.add_argument("--batches", type=int, default=12, help="timed batches per case")
    parser.add_argument("--pipeline", choices=["uint8", "paper"], default="uint8",
                        help="uint8: crops and flips only (default); paper: also PCA noise and the mean image")
    args = parser.parse_args(argv)
    sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parent / "plugins")]
    from _timing import machine

    from minidl.data import pack_folder
    from minidl.data.pack import available_cores

    every = available_cores()
    print(f"machine: {machine()}; {every} cores available")
    with tempfile.TemporaryDirectory(prefix="bench-input-") as tmp:
        folder = Path(args.folder) if args.folder else make_folder(Path(tmp) / "folder", args.images)
        packed = Path(tmp) / "packed"
        start = time.perf_counter()
        summary = pack_folder(folder, packed, size=256, quality=90, workers=every, progress=False)
        seconds = time.perf_counter() - start
        count = summary["train"]["images"]
        size = summary["train"]["path"].stat().st_size
        print(f"packed {count} images of {folder} in {seconds:.1f} s with {every} processes "
              f"({count / seconds:,.0f} images/s; {size / count / 1024:.1f} KiB per image)")
        print(f"{args.pipeline} batches of {args.batch} random {args.crop}x{args.crop} crops with flips, "
              f"{args.batches} timed batches")
        print(f"{'source':8s} {'cores':>5s} {'images/s':>10s} {'per core':>9s}")
        for source, path in (("packed", packed / "train.mdlpack"), ("folder", folder)):
            for cores in sorted({1, every}):
                result = measure(cores, path, args)
                assert result["shape"][1:] == [3, args.crop, args.crop], result
                rate = result["images_per_s"]
                print(f"{source:8s} {cores:5d} {rate:10,.0f} {rate / cores:9,.0f}")


if __name__ == "__main__":
    main()
