"""``minidl summary`` and minidl.summary.summarize: the AlexNet reference numbers, the JSON layout,
batch scaling, the human table, and errors with their file:line:column."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minidl.builder import build_model
from minidl.summary import format_table, summarize

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"

# (params, MACs per image) from DESIGN.md's reference table; alexnet-mini from its measured notes
REFERENCE = {
    "alexnet": (60_965_224, 724_406_816),
    "alexnet-columns": (60_965_224, 724_406_816),
    "alexnet-torchvision": (61_100_840, 714_188_480),
    "alexnet-mini": (550_538, 9_830_912),
}
SUMMARY_KEYS = {"name", "input", "params", "macs", "layers"}
LAYER_KEYS = {"index", "name", "type", "output_shape", "params", "macs", "device", "split", "algorithm",
              "workspace_bytes"}


def run_cli(*args, check=True):
    """``python -m minidl.cli summary ...`` in a fresh interpreter, from the repository root."""
    result = subprocess.run([sys.executable, "-m", "minidl.cli", "summary", *map(str, args)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


_json_cache = {}


def cli_json(model, batch=1):
    key = (model, batch)
    if key not in _json_cache:
        _json_cache[key] = json.loads(run_cli(MODELS / f"{model}.yaml", "--json", "--batch", batch).stdout)
    return _json_cache[key]


@pytest.fixture(scope="module")
def built():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = build_model(MODELS / f"{name}.yaml")
        return cache[name]

    return get


# ----------------------------------------------------------------- reference numbers
@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_cli_json_reference_counts(model):
    summary = cli_json(model)
    params, macs = REFERENCE[model]
    assert summary["name"] == model
    assert summary["params"] == params
    assert summary["macs"] == macs


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_summarize_reference_counts(built, model):
    summary = summarize(built(model))
    assert (summary["params"], summary["macs"]) == REFERENCE[model]
    assert summary["params"] == sum(p.size for p in built(model).parameters())
    # the CLI shows what the API computes
    assert summary == cli_json(model)


def test_columns_graph_counts_equal_grouped_alexnet():
    grouped, columns = cli_json("alexnet"), cli_json("alexnet-columns")
    assert (columns["params"], columns["macs"]) == (grouped["params"], grouped["macs"])
    # the same computation: the final output and the per-type totals agree
    assert columns["layers"][-1]["output_shape"] == grouped["layers"][-1]["output_shape"] == [1, 1000]
    for kind in ("conv2d", "linear"):
        assert (sum(l["params"] for l in columns["layers"] if l["type"] == kind)
                == sum(l["params"] for l in grouped["layers"] if l["type"] == kind)), kind
        assert (sum(l["macs"] for l in columns["layers"] if l["type"] == kind)
                == sum(l["macs"] for l in grouped["layers"] if l["type"] == kind)), kind


def test_alexnet_per_layer_shapes_and_conv_fc_split():
    layers = {l["name"]: l for l in cli_json("alexnet")["layers"]}
    expected = {"conv1": [1, 96, 55, 55], "pool1": [1, 96, 27, 27], "conv2": [1, 256, 27, 27],
                "pool2": [1, 256, 13, 13], "conv3": [1, 384, 13, 13], "conv5": [1, 256, 13, 13],
                "pool5": [1, 256, 6, 6], "flatten": [1, 9216], "fc6": [1, 4096], "fc8": [1, 1000]}
    for name, shape in expected.items():
        assert layers[name]["output_shape"] == shape, name
    assert layers["conv2"]["params"] == 256 * 48 * 5 * 5 + 256  # groups=2: each column sees 48 channels
    assert layers["fc6"]["params"] == 9216 * 4096 + 4096
    # DESIGN.md: the conv layers hold ~92% of the MACs and ~4% of the parameters
    conv = [l for l in layers.values() if l["type"] == "conv2d"]
    total = cli_json("alexnet")
    assert round(100 * sum(l["macs"] for l in conv) / total["macs"]) == 92
    assert round(100 * sum(l["params"] for l in conv) / total["params"]) == 4


def test_torchvision_layout_shapes():
    layers = {l["name"]: l for l in cli_json("alexnet-torchvision")["layers"]}
    assert layers["features.0"]["output_shape"] == [1, 64, 55, 55]
    assert layers["features.12"]["output_shape"] == [1, 256, 6, 6]
    assert layers["avgpool"]["output_shape"] == [1, 256, 6, 6]
    assert layers["classifier.1"]["params"] == 9216 * 4096 + 4096
    assert layers["classifier.6"]["output_shape"] == [1, 1000]


# ----------------------------------------------------------------- JSON layout and consistency
@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_json_layout_and_sums(model):
    summary = cli_json(model)
    assert SUMMARY_KEYS <= set(summary), set(summary)
    assert summary["input"][0] == 1
    assert [l["index"] for l in summary["layers"]] == list(range(len(summary["layers"])))
    assert len({l["name"] for l in summary["layers"]}) == len(summary["layers"])
    for layer in summary["layers"]:
        assert LAYER_KEYS <= set(layer), (layer["name"], set(layer))
        assert isinstance(layer["params"], int) and isinstance(layer["macs"], int)
        assert all(isinstance(n, int) and n > 0 for n in layer["output_shape"])
        assert layer["device"] == ["cpu:0"] and layer["split"] is None
        assert (layer["algorithm"] is not None) == (layer["type"] == "conv2d")
    assert sum(l["params"] for l in summary["layers"]) == summary["params"]
    assert sum(l["macs"] for l in summary["layers"]) == summary["macs"]


@pytest.mark.parametrize("model", sorted(REFERENCE))
def test_macs_follow_from_weights_and_output_shapes(built, model):
    """Independently of how summarize counts: a conv's MACs are its weight count times its output
    positions, a linear layer's its weight count; parameter-free layers count none."""
    nodes = {n.name: n for n in built(model).nodes}
    for layer in summarize(built(model))["layers"]:
        module = nodes[layer["name"]].module
        if layer["type"] in ("conv2d", "linear"):
            positions = math.prod(layer["output_shape"][2:])  # 1 for linear
            assert layer["macs"] == module.weight.size * positions, layer["name"]
            assert layer["params"] == module.weight.size + module.bias.size, layer["name"]
        else:
            assert layer["macs"] == 0 and layer["params"] == 0, layer["name"]


# ----------------------------------------------------------------- --batch
@pytest.mark.parametrize("batch", [3, 8])
def test_batch_scales_shapes_and_activations_linearly(batch):
    one, many = cli_json("alexnet-mini", 1), cli_json("alexnet-mini", batch)
    assert many["input"] == [batch] + one["input"][1:]
    assert (many["params"], many["macs"]) == (one["params"], one["macs"])  # per image, unchanged
    assert many["activation_bytes"] == batch * one["activation_bytes"] > 0
    for a, b in zip(one["layers"], many["layers"]):
        assert b["output_shape"] == [batch] + a["output_shape"][1:]
        assert a["output_shape"][0] == 1
        assert b["activation_bytes"] == batch * a["activation_bytes"]
        assert a["activation_bytes"] == 4 * math.prod(a["output_shape"])  # float32
        assert (b["params"], b["macs"]) == (a["params"], a["macs"])


def test_summarize_batch_and_dtype(built):
    model = built("alexnet-mini")
    base = summarize(model)
    s = summarize(model, batch=5, dtype="float64")
    assert s["activation_bytes"] == 5 * 2 * base["activation_bytes"]
    assert all(l["output_shape"][0] == 5 for l in s["layers"])


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_nonpositive_batch_is_refused(batch):
    result = run_cli(MODELS / "alexnet-mini.yaml", "--batch", batch, check=False)
    assert result.returncode == 2
    assert "batch" in result.stderr and result.stdout == ""
    with pytest.raises(ValueError, match="batch"):
        summarize(build_model({"name": "m", "input": [3], "layers": [{"type": "relu"}]}), batch=int(batch))


# ----------------------------------------------------------------- the human table
def test_table_has_every_layer_and_the_totals_line():
    out = run_cli(MODELS / "alexnet.yaml").stdout
    lines = out.splitlines()
    assert lines[0] == "alexnet: input 1x3x227x227"
    assert lines[-1].startswith("total: 60,965,224 parameters, 724,406,816 MACs per image, ")
    assert lines[-1].endswith(" of activations for batch 1")
    header = lines[1].split()
    assert header[:3] == ["#", "name", "type"] and "params" in header and "MACs" in header and "device" in header
    rows = lines[3:-1]
    assert len(rows) == len(cli_json("alexnet")["layers"])
    for row, layer in zip(rows, cli_json("alexnet")["layers"]):
        cells = row.split()
        assert cells[:3] == [str(layer["index"]), layer["name"], layer["type"]]
        assert "x".join(map(str, layer["output_shape"])) in cells
        assert f"{layer['params']:,}" in cells and f"{layer['macs']:,}" in cells


def test_table_and_format_table_agree(built):
    summary = summarize(built("alexnet-torchvision"), batch=2)
    table = format_table(summary)
    assert table.splitlines()[-1].startswith("total: 61,100,840 parameters, 714,188,480 MACs per image, ")
    assert table.splitlines()[-1].endswith("for batch 2")
    assert run_cli(MODELS / "alexnet-torchvision.yaml", "--batch", 2).stdout.rstrip("\n") == table


# ----------------------------------------------------------------- errors
def test_bad_model_file_exits_2_with_location(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: m\ninput: [1, 8, 8]\nlayers:\n  - name: conv1\n    type: conv2d\n"
                    "    out_channels: 4\n    kernal_size: 3\n")
    result = run_cli(path, check=False)
    assert result.returncode == 2
    assert result.stdout == ""
    assert f"{path}:7:5: layer 0 'conv1': unknown key 'kernal_size' for conv2d" in result.stderr
    assert "did you mean 'kernel_size'?" in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_syntax_error_and_missing_file_exit_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: m\ninput: [1, 8, 8\nlayers: []\n")
    result = run_cli(path, "--json", check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert f"{path}:3:" in result.stderr and "YAML syntax error" in result.stderr
    missing = run_cli(tmp_path / "nope.yaml", check=False)
    assert missing.returncode == 2 and "cannot read model file" in missing.stderr
    assert "Traceback" not in result.stderr + missing.stderr


def test_installed_console_script_matches_module():
    script = shutil.which("minidl")
    if script is None:
        pytest.skip("the minidl console script is not on PATH")
    result = subprocess.run([script, "summary", str(MODELS / "alexnet-mini.yaml"), "--json"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == cli_json("alexnet-mini")


# ----------------------------------------------------------------- convolution algorithms
def _algorithms(*args):
    summary = json.loads(run_cli(MODELS / "alexnet.yaml", "--json", *args).stdout)
    return {l["name"]: (l["algorithm"], l["workspace_bytes"]) for l in summary["layers"] if l["type"] == "conv2d"}


def test_summary_names_each_convolutions_algorithm_per_device():
    # the rule of minidl.functions.conv_algorithm for the paper's AlexNet at batch 128
    cpu = _algorithms("--batch", "128")
    assert {n: a for n, (a, _) in cpu.items()} == {
        "conv1": "im2col_tapfold", "conv2": "fft", "conv3": "winograd", "conv4": "winograd", "conv5": "winograd"}
    assert cpu["conv1"][1] == 128 * 55 * 55 * 11 * 11 * 3 * 4  # im2col's columns, float32
    gpu = _algorithms("--batch", "128", "--device", "cuda:0")  # the GPU's rule, asked on any machine
    assert {n: a for n, (a, _) in gpu.items()} == {
        "conv1": "im2col_tapfold", "conv2": "im2col_tapfold", "conv3": "im2col_flip", "conv4": "im2col_flip",
        "conv5": "im2col_flip"}
    forced = _algorithms("--conv-algorithm", "im2col_gemm")
    assert {a for a, _ in forced.values()} == {"im2col_gemm"}


def test_summary_table_has_the_algorithm_column():
    out = run_cli(MODELS / "alexnet-mini.yaml").stdout
    head = out.splitlines()[1].split()
    assert head[head.index("device") + 1] == "algorithm"
    conv3 = next(line for line in out.splitlines() if " conv3 " in line)
    assert "fft" in conv3.split()


def test_yaml_algorithm_and_unknown_names(tmp_path):
    model = tmp_path / "m.yaml"
    model.write_text("name: m\ninput: [3, 16, 16]\nlayers:\n"
                     "  - {name: c1, type: conv2d, out_channels: 40, kernel_size: 3, padding: 1, algorithm: im2col_gemm}\n"
                     "  - {name: c2, type: conv2d, out_channels: 40, kernel_size: 3, padding: 1}\n")
    summary = json.loads(run_cli(model, "--json").stdout)
    assert [l["algorithm"] for l in summary["layers"]] == ["im2col_gemm", "fft"]  # c2: the rule
    model.write_text(model.read_text().replace("algorithm: im2col_gemm", "algorithm: winogard"))
    result = run_cli(model, check=False)
    assert result.returncode != 0
    assert f"{model}:4:" in result.stderr and "Did you mean 'winograd'" in result.stderr, result.stderr
    model.write_text(model.read_text().replace("algorithm: winogard", "algorithm: winograd"))
    result = run_cli(model, "--conv-algorithm", "fourier", check=False)
    assert result.returncode != 0 and "unknown conv algorithm 'fourier'" in result.stderr
