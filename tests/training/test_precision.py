"""Training in every precision (issue 14) and with a weight average (issue 18): float32 checkpoints that eval and
predict read, bit-exact resume with the loss scaler's and the average's state, and alexnet-mini's loss in bfloat16
and float16 tracking float32's over 300 steps on the CPU."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import minidl as mdl
import minidl.functions as F
from minidl.amp import LossScaler
from minidl.plugins import registry
from minidl.training.checkpoint import list_checkpoints, load_checkpoint

from .test_resume import run_train

CLI = [sys.executable, "-m", "minidl.cli"]
pytest.importorskip("ml_dtypes", reason="bfloat16 comes from ml_dtypes (in the test extra)")


@pytest.mark.parametrize("precision", ["bf16", "fp16", "tf32"])
def test_every_precision_trains_and_its_checkpoint_evaluates_and_predicts(precision, tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    result = run_train(model, data, out, "--epochs", "1", "--precision", precision)
    assert result.stdout.count("on the CPU this run is float32") == (precision == "tf32")
    checkpoint = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])
    assert all(v.dtype == np.float32 for v in checkpoint["model"].values())  # float32 master weights
    assert checkpoint["meta"]["precision"] == precision
    assert checkpoint["meta"]["loss_scaler"]["enabled"] == (precision == "fp16")
    path = str(list_checkpoints(out / "checkpoints")[-1])
    evaluated = json.loads(subprocess.run(CLI + ["eval", path, "--json"], capture_output=True, text=True,
                                          check=True).stdout)
    assert evaluated["count"] == 48 and 0 <= evaluated["top1"] <= 1
    image = tmp_path / "x.png"
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(image)
    predicted = subprocess.run(CLI + ["predict", path, str(image)], capture_output=True, text=True, check=True)
    assert "x.png" in predicted.stdout


def test_fp16_with_a_weight_average_resumes_bit_exactly(tiny, tmp_path):
    model, data = tiny
    model.write_text(model.read_text().replace("  seed: 3\n", "  seed: 3\n  precision: fp16\n  ema: 0.9\n"
                                                               "  label_smoothing: 0.1\n"))
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_train(model, data, straight, "--steps", "25")
    run_train(model, data, split, "--steps", "12")
    run_train(model, data, split, "--steps", "25", "--resume")
    a, b = (load_checkpoint(list_checkpoints(d / "checkpoints")[-1]) for d in (straight, split))
    assert a["ema"] and a["ema"].keys() == a["model"].keys()
    for part in ("model", "ema"):
        for name in a[part]:
            np.testing.assert_array_equal(a[part][name], b[part][name], err_msg=f"{part}/{name}")
    assert a["meta"]["loss_scaler"] == b["meta"]["loss_scaler"]
    assert a["meta"]["ema"] == b["meta"]["ema"] == {"decay": 0.9, "updates": 25}
    assert not np.array_equal(a["ema"]["conv1.weight"], a["model"]["conv1.weight"])


def _task(rng, n):
    """A learnable synthetic task for alexnet-mini: each class brightens its own band of rows."""
    labels = rng.integers(0, 10, n)
    images = rng.normal(0, 0.5, (n, 1, 28, 28)).astype(np.float32)
    for c in range(10):
        images[labels == c, 0, 2 * c:2 * c + 6, 4:24] += 1.5
    return images, labels


def _mini_after_300_steps(precision, steps=300, batch=16):
    """alexnet-mini trained ``steps`` SGD steps with ``precision`` as the trainer runs it; returns the float32
    cross-entropy of the result on 500 held-out images."""
    mdl.random.manual_seed(0)
    rng = np.random.default_rng(0)
    model = mdl.build_model("models/alexnet-mini.yaml")
    opt = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9)
    scaler = LossScaler(enabled=precision == "float16")
    for _ in range(steps):
        images, labels = _task(rng, batch)
        with mdl.autocast(precision if precision != "float32" else "bfloat16", enabled=precision != "float32"):
            loss = F.cross_entropy(model(mdl.tensor(images)), labels)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert all(p.dtype == np.float32 for p in model.parameters())
    images, labels = _task(np.random.default_rng(1), 500)
    with mdl.no_grad():
        return float(F.cross_entropy(model.eval()(mdl.tensor(images)), labels).item())


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # float16 steps the scaler skips
def test_alexnet_mini_low_precision_tracks_float32_over_300_steps():
    # The stated tolerance: held-out loss within 0.3 of float32's, where float32 itself falls from ln(10) = 2.3
    # to under 1. (Measured: 0.2-0.25 apart between precisions, trajectories that rounding sends apart; a
    # precision that does not train stays near 2.3.)
    reference = _mini_after_300_steps("float32")
    assert reference < 1.0
    for precision in ("bfloat16", "float16"):
        loss = _mini_after_300_steps(precision)
        assert abs(loss - reference) < 0.3, (precision, loss, reference)
