"""`minidl export`: the main job's model, trained by `minidl train`, predicts the same in ONNX Runtime."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import minidl as mdl
from minidl.training.checkpoint import list_checkpoints
from minidl.training.recipe import checkpoint_eval_pipeline

from .helpers import minidl_forward, ort_forward, require_onnx

onnx = require_onnx()

CLI = [sys.executable, "-m", "minidl.cli"]
CLASSES = [f"class{i}" for i in range(10)]


def fashion_like_npz(path, seed=0):
    """Ten classes of 28x28 grey images (a bright bar whose place is the class, on noise), as a real .npz file."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 80, (n, 1, 28, 28))
        for i, label in enumerate(labels):
            images[i, 0, 2 * label + 4: 2 * label + 7, 4:24] += 150
        return images.astype(np.uint8), labels.astype(np.int64)

    (x_train, y_train), (x_test, y_test) = split(96), split(32)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test, classes=np.array(CLASSES))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of models/alexnet-mini.yaml (the README's main job) after a few steps of `minidl train`."""
    root = tmp_path_factory.mktemp("main-job")
    data = fashion_like_npz(root / "data.npz")
    subprocess.run(CLI + ["train", "models/alexnet-mini.yaml", "--data", str(data), "--steps", "3", "--batch-size",
                          "32", "--out", str(root / "run"), "--no-progress"],
                   check=True, capture_output=True, text=True, timeout=300)
    return list_checkpoints(root / "run" / "checkpoints")[-1], data


def test_a_trained_checkpoint_exports_and_predicts_the_same_in_onnx_runtime(trained, tmp_path):
    checkpoint, data = trained
    out = tmp_path / "alexnet-mini.onnx"
    result = subprocess.run(CLI + ["export", str(checkpoint), str(out)], capture_output=True, text=True, check=True)
    assert f"wrote {out}" in result.stdout and "input 'input' Nx1x28x28, output 'fc8'" in result.stdout
    loaded = mdl.load(checkpoint)
    assert loaded.ema  # the main job keeps a weight average (train: {ema}) ...
    loaded.use_average()  # ... and, as eval and predict do, export writes it
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["minidl.data"])["classes"] == CLASSES and props["minidl.step"] == "3"
    # the test images as `minidl predict` prepares them (normalized with the training run's statistics)
    images = np.load(data)["x_test"]
    x = checkpoint_eval_pipeline(loaded.meta, loaded.transform_state)(images, None).astype(np.float32)
    expected = minidl_forward(loaded.model.eval(), x)
    actual = ort_forward(out, x)
    assert np.abs(actual - expected).max() <= 1e-4
    assert (actual.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_fixed_batch_and_opset(trained, tmp_path):
    checkpoint, _ = trained
    out = tmp_path / "fixed.onnx"
    subprocess.run(CLI + ["export", str(checkpoint), str(out), "--batch", "4", "--opset", "21"], check=True,
                   capture_output=True)
    proto = onnx.load(str(out))
    assert [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == [4, 1, 28, 28]
    assert proto.opset_import[0].version == 21


def test_a_model_file_exports_with_fresh_weights(tmp_path):
    out = tmp_path / "fresh.onnx"
    result = subprocess.run(CLI + ["export", "models/alexnet-mini.yaml", str(out)], capture_output=True, text=True,
                            check=True)
    assert "weights are freshly initialized" in result.stderr and out.exists()


@pytest.mark.parametrize("args, message", [
    (["--batch", "0"], "expected a positive integer or 'dynamic', got '0'"),
    (["--opset", "9"], "opset must be an integer from 13"),
])
def test_bad_options_are_errors(tmp_path, args, message):
    result = subprocess.run(CLI + ["export", "models/alexnet-mini.yaml", str(tmp_path / "m.onnx"), *args],
                            capture_output=True, text=True)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "m.onnx").exists()
