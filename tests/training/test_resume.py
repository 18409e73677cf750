"""Crash-safe checkpoints: kill -9 and resume is bit-exact; Ctrl-C writes a checkpoint; NaN stops training."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minidl.training.checkpoint import list_checkpoints, load_checkpoint

TRAIN = [sys.executable, "-m", "minidl.cli", "train"]


def run_train(model, data, out, *extra, check=True):
    cmd = TRAIN + [str(model), "--data", str(data), "--out", str(out), "--no-progress", "--workers", "2", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=300)


def params_of(checkpoint_path):
    return load_checkpoint(checkpoint_path)["model"]


def wait_for(predicate, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_kill_9_and_resume_is_bit_exact(tiny, tmp_path):
    model, data = tiny
    n = 7  # checkpoint after 7 steps, in the middle of the first epoch (10 steps per epoch)
    straight = tmp_path / "straight"
    run_train(model, data, straight, "--steps", str(2 * n))
    reference = params_of(list_checkpoints(straight / "checkpoints")[-1])

    crashed = tmp_path / "crashed"
    # the run would go on for many epochs; it is killed as soon as the step-n checkpoint exists
    cmd = TRAIN + [str(model), "--data", str(data), "--out", str(crashed), "--no-progress", "--workers", "2",
                   "--epochs", "1000", "--checkpoint-every", str(n), "--keep", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    target = crashed / "checkpoints" / f"ckpt-{n:09d}.safetensors"
    try:
        assert wait_for(target.exists), proc.stderr.read().decode() if proc.poll() is not None else "timeout"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # later checkpoints may exist; resume from exactly step n, as a crash right after it would
    for path in list_checkpoints(crashed / "checkpoints"):
        if path != target:
            path.unlink()
    result = run_train(model, data, crashed, "--steps", str(2 * n), "--resume")
    assert f"resumed from {target}" in result.stdout
    resumed = params_of(list_checkpoints(crashed / "checkpoints")[-1])
    assert load_checkpoint(list_checkpoints(crashed / "checkpoints")[-1])["meta"]["step"] == 2 * n
    assert reference.keys() == resumed.keys()
    for name in reference:
        np.testing.assert_array_equal(resumed[name], reference[name], err_msg=name)  # bit for bit


def test_resume_across_an_epoch_boundary_is_bit_exact(tiny, tmp_path):
    model, data = tiny
    straight, split = tmp_path / "straight", tmp_path / "split"
    run_train(model, data, straight, "--steps", "25")
    run_train(model, data, split, "--steps", "12")
    run_train(model, data, split, "--steps", "25", "--resume")
    a = params_of(list_checkpoints(straight / "checkpoints")[-1])
    b = params_of(list_checkpoints(split / "checkpoints")[-1])
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_corrupt_newest_checkpoint_falls_back_with_a_warning(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    run_train(model, data, out, "--steps", "6", "--checkpoint-every", "3")
    paths = list_checkpoints(out / "checkpoints")
    assert [load_checkpoint(p)["meta"]["step"] for p in paths] == [3, 6]
    paths[-1].write_bytes(paths[-1].read_bytes()[:100])  # truncated
    result = run_train(model, data, out, "--steps", "8", "--resume")
    assert "resumed from" in result.stdout and "ckpt-000000003" in result.stdout
    assert "skipping corrupt checkpoint" in result.stderr


def test_ctrl_c_writes_a_checkpoint(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    cmd = TRAIN + [str(model), "--data", str(data), "--out", str(out), "--no-progress", "--epochs", "1000"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (out / "metrics.jsonl").exists())  # training is under way
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted: checkpoint written at step" in stdout
    last = list_checkpoints(out / "checkpoints")[-1]
    step = load_checkpoint(last)["meta"]["step"]
    assert f"step {step}" in stdout


def test_non_finite_loss_stops_naming_the_step_and_cause(tiny, tmp_path):
    model, _ = tiny
    rng = np.random.default_rng(0)
    images = rng.random((160, 1, 8, 8)).astype(np.float32)
    images[37, 0, 2, 2] = np.nan  # one bad pixel in one training image
    data = tmp_path / "bad.npz"
    np.savez(data, x_train=images, y_train=rng.integers(0, 3, 160), x_test=images[:16],
             y_test=rng.integers(0, 3, 16))
    text = model.read_text().replace("    - {type: hflip}", "    - {type: hflip}\n    - {type: normalize, mean: [0.5], std: [0.3]}")
    model.write_text(text)
    out = tmp_path / "run"
    result = run_train(model, data, out, "--epochs", "3", "--checkpoint-every", "1", check=False)
    assert result.returncode == 3, result.stderr
    message = result.stderr
    assert "stopped: step" in message and "the input batch" in message and "is not finite" in message
    failing_step = int(message.split("stopped: step ")[1].split(":")[0])
    checkpoints = list_checkpoints(out / "checkpoints")
    assert checkpoints, "the good steps before the bad batch were checkpointed"
    last = load_checkpoint(checkpoints[-1])
    assert last["meta"]["step"] < failing_step
    assert all(np.isfinite(v).all() for v in last["model"].values())


def test_new_run_refuses_to_overwrite_checkpoints(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    run_train(model, data, out, "--steps", "2")
    result = run_train(model, data, out, "--steps", "2", check=False)
    assert result.returncode == 2 and "already has checkpoints" in result.stderr


def test_outputs_of_a_run(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    result = run_train(model, data, out, "--epochs", "2")
    for name in ("metrics.jsonl", "metrics.csv", "filters.png"):
        assert (out / name).exists(), result.stdout
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"val_top1"' in lines[0]
    header = (out / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,step,lr,train_loss,train_top1")
    meta = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["meta"]
    assert meta["epoch"] == 2 and meta["model_spec"]["name"] == "tiny"
    assert meta["plugins"]["minidl_layers"]["package"] == "minidl"
    assert meta["data"]["classes"] == ["top", "left", "dark"]
    pytest.importorskip("matplotlib", reason="training curves need matplotlib (the plots extra)")
    assert (out / "curves.png").exists()


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_diagnosis_names_the_first_non_finite_layer():
    import minidl as mdl
    from minidl.data.loader import Batch
    from minidl.training.trainer import Trainer

    model = mdl.build_model({"name": "m", "input": [2], "layers": [
        {"name": "fc1", "type": "linear", "out_features": 3}, {"name": "act", "type": "relu"},
        {"name": "fc2", "type": "linear", "out_features": 2}]})
    model.fc2.weight.data[0, 0] = np.float32(3e38)
    model.fc1.weight.data[...] = np.float32(1e3)
    trainer = Trainer.__new__(Trainer)
    trainer.model = model
    batch = Batch(mdl.tensor(np.ones((1, 2), np.float32) * 1e3), np.zeros(1, np.int64), 0)
    message = trainer._diagnose(batch, float("nan"), 9)
    assert message == "step 9: loss is nan; first non-finite output at layer 2 'fc2' (linear)"


def _conv_choices(out):
    meta = load_checkpoint(list_checkpoints(out / "checkpoints")[-1])["meta"]
    return {(r["layer"], tuple(r["problem"]["x_shape"])): r["algorithm"] for r in meta["conv_algorithms"]}


def test_checkpoints_record_conv_algorithms_and_resume_keeps_them(tiny, tmp_path):
    model, data = tiny
    out = tmp_path / "run"
    run_train(model, data, out, "--steps", "3", "--conv-algorithm", "im2col_gemm")
    assert _conv_choices(out)[("conv1", (16, 1, 8, 8))] == "im2col_gemm"
    # without the flag the rule would take im2col_tapfold (one input channel); the resumed run keeps
    # what the checkpoint says, so its arithmetic is the first run's
    run_train(model, data, out, "--steps", "6", "--resume")
    assert _conv_choices(out)[("conv1", (16, 1, 8, 8))] == "im2col_gemm"
    fresh = tmp_path / "fresh"
    run_train(model, data, fresh, "--steps", "3")
    assert _conv_choices(fresh)[("conv1", (16, 1, 8, 8))] == "im2col_tapfold"
