"""`minidl eval` and `minidl predict` on a trained checkpoint, with real image files; the paper preset."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
from PIL import Image

import minidl as mdl
from minidl.training.checkpoint import list_checkpoints, load_checkpoint
from minidl.training.recipe import apply_paper_init

CLI = [sys.executable, "-m", "minidl.cli"]


def train(model, data, out, *extra):
    subprocess.run(CLI + ["train", str(model), "--data", str(data), "--out", str(out), "--no-progress", *extra],
                   check=True, capture_output=True, text=True, timeout=300)
    return list_checkpoints(out / "checkpoints")[-1]


def test_eval_matches_the_training_run_and_ten_crop(tiny, tmp_path):
    model, data = tiny
    ckpt = train(model, data, tmp_path / "run", "--epochs", "3")
    out = subprocess.run(CLI + ["eval", str(ckpt), "--json"], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    last = load_checkpoint(ckpt)["meta"]["history"][-1]
    assert result["count"] == 48
    assert abs(result["top1"] - last["val_top1"]) < 1e-9 and abs(result["loss"] - last["val_loss"]) < 1e-5
    assert result["top1"] > 0.6  # the tiny task is learnable
    ten = json.loads(subprocess.run(CLI + ["eval", str(ckpt), "--json", "--ten-crop"], capture_output=True,
                                    text=True, check=True).stdout)
    assert ten["ten_crop"] and ten["count"] == 48 and 0 <= ten["top1"] <= 1


def test_predict_prints_top_classes_for_image_files(tiny, tmp_path):
    model, data = tiny
    ckpt = train(model, data, tmp_path / "run", "--epochs", "3")
    arrays = np.load(data)
    paths = []
    for i in range(3):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(arrays["x_test"][i, 0]).save(path)
        paths.append(str(path))
    out = subprocess.run(CLI + ["predict", str(ckpt), *paths, "--top", "3"], capture_output=True, text=True,
                         check=True).stdout
    # the CLI's answer equals the model's own prediction on the same pixels
    checkpoint = load_checkpoint(ckpt)
    net = mdl.build_model(checkpoint["meta"]["model_spec"])
    net.load_state_dict(checkpoint["model"])
    net.eval()
    x = (arrays["x_test"][:3].astype(np.float32) / 255 - checkpoint["meta"]["data"]["normalize"]["mean"][0]) / \
        checkpoint["meta"]["data"]["normalize"]["std"][0]
    probs = net(mdl.tensor(x.astype(np.float32))).softmax(axis=1).numpy()
    names = ["top", "left", "dark"]
    blocks = []
    for line in out.strip().splitlines():
        if line.endswith(":"):
            assert line[:-1] == paths[len(blocks)]
            blocks.append([])
        else:
            blocks[-1].append(line.split())
    assert len(blocks) == 3
    for i, lines in enumerate(blocks):
        assert len(lines) == 3
        assert lines[0][1] == names[int(probs[i].argmax())]
        assert abs(float(lines[0][2].rstrip("%")) - 100 * probs[i].max()) < 0.01


def test_predict_reports_unreadable_image(tiny, tmp_path):
    model, data = tiny
    ckpt = train(model, data, tmp_path / "run", "--steps", "2")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    result = subprocess.run(CLI + ["predict", str(ckpt), str(bad)], capture_output=True, text=True)
    assert result.returncode == 2 and "cannot read image" in result.stderr


def test_eval_of_a_malicious_checkpoint_is_refused(tmp_path):
    path = tmp_path / "ckpt-000000001.safetensors"
    path.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    result = subprocess.run(CLI + ["eval", str(path)], capture_output=True, text=True)
    assert result.returncode == 2 and "header length 1000000 is larger than the file" in result.stderr


def test_paper_preset_init():
    model = mdl.build_model("models/alexnet.yaml")
    mdl.random.manual_seed(0)
    apply_paper_init(model)
    for name in ("conv2", "conv4", "conv5", "fc6", "fc7"):
        assert (model.layers[name].bias.numpy() == 1).all(), name
    for name in ("conv1", "conv3", "fc8"):
        assert (model.layers[name].bias.numpy() == 0).all(), name
    assert abs(model.layers["fc6"].weight.numpy().std() - 0.01) < 1e-4
