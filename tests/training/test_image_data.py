"""Training from ImageNet-layout folders of real photos, raw and packed: the CLI end to end.

`minidl train models/alexnet.yaml --data DIR` with the paper's recipe from the model file; packing with
`minidl data pack`; resume bit for bit with the statistics stored in the run; eval with ten crops; predict.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from minidl.data import decode_image
from minidl.data.images import find_images
from minidl.training.checkpoint import list_checkpoints, load_checkpoint
from tests.data.image_folders import add_odd_files, make_image_folder

CLI = [sys.executable, "-m", "minidl.cli"]
REPO = Path(__file__).resolve().parents[2]

SMALL_RGB = """
name: small-rgb
input: [3, 32, 32]
layers:
  - {name: conv1, type: conv2d, out_channels: 8, kernel_size: 5, stride: 2}
  - {name: relu1, type: relu}
  - {name: pool1, type: maxpool2d, kernel_size: 3, stride: 2}
  - {name: flatten, type: flatten}
  - {name: fc, type: linear, out_features: 3}
train:
  epochs: 1
  batch_size: 4
  optimizer: {type: sgd, lr: 0.01, momentum: 0.9}
  image_size: 36
  augmentation:
    - {type: random_crop, size: 32}
    - {type: hflip}
    - {type: pca_noise, std: 0.1}
    - {type: mean_image}
"""


def run(*args, check=True):
    result = subprocess.run(CLI + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_paper_alexnet_trains_from_an_image_folder_with_its_own_recipe(tmp_path):
    root = make_image_folder(tmp_path / "photos", train=2, val=1)  # 6 training and 3 validation photos
    (root / "train" / "rocket" / "broken.jpg").write_text("not a JPEG")
    out = tmp_path / "run"
    # no flag about the data recipe: it comes from models/alexnet.yaml (only the run is made short)
    result = run("train", REPO / "models" / "alexnet.yaml", "--data", root, "--out", out, "--no-progress",
                 "--epochs", "1", "--batch-size", "4")
    assert f"skipping unreadable image {root / 'train' / 'rocket' / 'broken.jpg'}" in result.stderr
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["epoch"] == 1 and 0 <= row["val_top1"] <= 1 and np.isfinite(row["train_loss"])
    checkpoint = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert checkpoint["meta"]["data"]["image_size"] == 256
    assert checkpoint["meta"]["data"]["classes"] == ["astronaut", "coffee", "rocket"]
    # the mean image of the training photos as training sees them (decoded at 256x256; the broken file's
    # place taken by the next photo) is stored with the run
    _, _, files = find_images(root, "train")
    paths = [p for p, _ in files]
    broken = paths.index(root / "train" / "rocket" / "broken.jpg")
    paths[broken] = paths[(broken + 1) % len(paths)]
    pixels = [decode_image(p, 256) for p in paths]
    expected = np.mean(pixels, axis=0, dtype=np.float64).transpose(2, 0, 1) / 255
    (key,) = checkpoint["transform"]
    np.testing.assert_allclose(checkpoint["transform"][key], expected, atol=1e-6)


def test_packed_photos_train_resume_bit_exact_and_evaluate_with_ten_crops(tmp_path):
    root = make_image_folder(tmp_path / "photos", train=4, val=2, low=100, high=200)
    odd = add_odd_files(root / "train" / "coffee")
    packed = tmp_path / "packed"
    result = run("data", "pack", root, packed, "--size", "36", "--workers", "2", "--no-progress")
    for path in odd["bad"]:
        assert f"skipping unreadable image {path}" in result.stderr
    assert f"train: {12 + len(odd['good'])} images" in result.stdout and "2 unreadable images skipped" in result.stdout
    assert "val: 6 images" in result.stdout

    model = tmp_path / "small.yaml"
    model.write_text(textwrap.dedent(SMALL_RGB).lstrip())
    straight, split = tmp_path / "straight", tmp_path / "split"
    run("train", model, "--data", packed, "--out", straight, "--no-progress", "--steps", "6")
    run("train", model, "--data", packed, "--out", split, "--no-progress", "--steps", "3")
    run("train", model, "--data", packed, "--out", split, "--no-progress", "--steps", "6", "--resume")
    a = load_checkpoint(list_checkpoints(straight / "checkpoints")[-1])
    b = load_checkpoint(list_checkpoints(split / "checkpoints")[-1])
    assert a["meta"]["step"] == b["meta"]["step"] == 6
    for name in a["model"]:
        np.testing.assert_array_equal(a["model"][name], b["model"][name], err_msg=name)  # bit for bit

    checkpoint = list_checkpoints(straight / "checkpoints")[-1]
    ten = json.loads(run("eval", checkpoint, "--ten-crop", "--json", "--data", root).stdout)  # the raw photos
    assert ten["ten_crop"] and ten["count"] == 6 and 0 <= ten["top1"] <= 1
    one = json.loads(run("eval", checkpoint, "--json").stdout)  # the packed val split it trained with
    assert one["count"] == 6 and not one["ten_crop"]
    photo = next((root / "val" / "rocket").iterdir())
    lines = run("predict", checkpoint, photo, "--top", "3").stdout.splitlines()
    assert lines[0] == f"{photo}:" and len(lines) == 4
    assert sorted(line.split()[1] for line in lines[1:]) == ["astronaut", "coffee", "rocket"]

    # the statistics are computed once and stay with the run: other photos packed in their place change nothing
    run("data", "pack", make_image_folder(tmp_path / "other", train=2, val=1, seed=7), packed, "--size", "36",
        "--workers", "1", "--no-progress")
    run("train", model, "--data", packed, "--out", split, "--no-progress", "--steps", "7", "--resume")
    resumed = load_checkpoint(list_checkpoints(split / "checkpoints")[-1])
    assert resumed["meta"]["step"] == 7
    for key in a["transform"]:
        np.testing.assert_array_equal(resumed["transform"][key], a["transform"][key])


def test_data_that_does_not_fit_the_model_is_refused_before_training(tmp_path):
    root = make_image_folder(tmp_path / "photos", classes=("coffee",), train=1, val=0)
    model = tmp_path / "small.yaml"
    model.write_text(textwrap.dedent(SMALL_RGB).lstrip().replace("    - {type: random_crop, size: 32}\n", ""))
    result = run("train", model, "--data", root, "--out", tmp_path / "run", "--no-progress", check=False)
    assert result.returncode == 2
    assert "data samples are (3, 36, 36) but" in result.stderr and "expects (3, 32, 32)" in result.stderr


def test_a_folder_without_splits_trains_without_validation(tmp_path):
    root = make_image_folder(tmp_path / "photos", train=2, val=0) / "train"  # photos/<class>/<image>
    model = tmp_path / "small.yaml"
    model.write_text(textwrap.dedent(SMALL_RGB).lstrip())
    out = tmp_path / "run"
    result = run("train", model, "--data", root, "--out", out, "--no-progress", "--epochs", "1")
    assert "no validation data, training without it" in result.stderr and "no test or val split" in result.stderr
    row = json.loads((out / "metrics.jsonl").read_text())
    assert row["epoch"] == 1 and "val_top1" not in row
