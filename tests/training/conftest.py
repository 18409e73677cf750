"""A tiny real dataset (.npz file) and model file for fast end-to-end training tests."""
from __future__ import annotations

import textwrap

import numpy as np
import pytest

TINY_MODEL = """
name: tiny
input: [1, 8, 8]
layers:
  - {name: conv1, type: conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - {name: relu1, type: relu}
  - {name: norm1, type: lrn, size: 3}
  - {name: pool1, type: maxpool2d, kernel_size: 3, stride: 2}
  - {name: flatten, type: flatten}
  - {name: fc1, type: linear, out_features: 16}
  - {name: relu2, type: relu}
  - {name: drop, type: dropout, p: 0.5}
  - {name: fc2, type: linear, out_features: 3}
train:
  epochs: 2
  batch_size: 16
  optimizer: {type: sgd, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4}
  scheduler: {type: cosine, t_max: 40, warmup_steps: 2}
  scheduler_interval: step
  augmentation:
    - {type: random_crop, size: 8, padding: 1}
    - {type: hflip}
  seed: 3
"""


def make_npz(path, n_train=160, n_test=48, seed=0):
    """Three classes of 8x8 images: bright top, bright left, dark; with noise."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 3, n)
        images = rng.integers(0, 60, (n, 1, 8, 8))
        images[labels == 0, :, :3, :] += 150
        images[labels == 1, :, :, :3] += 150
        return images.astype(np.uint8), labels.astype(np.int64)

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
             classes=np.array(["top", "left", "dark"]))
    return path


@pytest.fixture
def tiny(tmp_path):
    """(model file, npz data file) in tmp_path."""
    model = tmp_path / "tiny.yaml"
    model.write_text(textwrap.dedent(TINY_MODEL).lstrip())
    return model, make_npz(tmp_path / "tiny.npz")
