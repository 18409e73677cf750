"""The optional cudnn conv algorithm (plugins/minidl_cudnn). Everywhere: it is registered, `minidl plugins` says
why it cannot run here, it is never chosen or imported for CPU convolutions, forcing it on the CPU fails naming
the layer and the reason, and without nvidia-cudnn-frontend installed minidl's choices are those it makes
without the plugin. On a GPU with the frontend: all three passes against im2col_gemm in float64/float32 on the
conformance shapes (both storage orders), float16/bfloat16 against float32, the default rule and autotuning,
graphs built once. (The conformance suite in test_conv_algorithms.py runs it too, on the devices it claims.)"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.backend import as_dtype
from minidl.gemm import tf32_enabled
from minidl.functions import ConvProblem
from minidl.functions.conv_algorithm import autotune_timings, get_algorithm, select, use_deterministic_algorithms
from minidl.plugins import get_plugin_manager, registry

from ..functions._conv_reference import np_conv2d
from .test_conv_algorithms import SHAPES, check_algorithm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("cudnn") is not None


def _minidl(*args, env=None):
    return subprocess.run([sys.executable, "-m", "minidl.cli", *args], capture_output=True, text=True, check=True,
                          cwd=REPO, env=dict(os.environ, **(env or {})))


# ---------------------------------------------------------------- everywhere
def test_the_plugin_is_loaded_and_registers_cudnn():
    entry = registry("conv_algorithms")["cudnn"]  # builds the registry if this manager has not yet
    info = get_plugin_manager().plugins["minidl_cudnn"]
    assert entry.plugin is info and info.builtin
    assert (info.status, info.package, info.registered) == ("active", "minidl", {"conv_algorithms": ["cudnn"]})
    assert get_algorithm("cudnn").deterministic


def test_minidl_plugins_says_why_cudnn_cannot_run_here():
    reason = get_algorithm("cudnn").unavailable()
    if not _installed():
        assert reason == "nvidia-cudnn-frontend is not installed (pip install 'minidl[cudnn]')"
    elif not mdl.cuda_available():
        assert "CUDA" in reason
    listing = {p["name"]: p for p in json.loads(_minidl("plugins", "--json").stdout)["plugins"]}
    assert listing["minidl_cudnn"]["registered"] == {"conv_algorithms": ["cudnn"]}
    assert listing["minidl_cudnn"]["inactive"] == ({"cudnn": reason} if reason else {})
    assert listing["minidl_conv"]["inactive"] == {}
    table = _minidl("plugins")
    assert "minidl_cudnn  [minidl " in table.stdout and "conv_algorithms: cudnn" in table.stdout
    assert (f"not usable here: cudnn: {reason}" in table.stdout) == bool(reason)
    assert table.stderr == ""  # no warning: a missing optional package is not a failure


@pytest.mark.parametrize("shape", SHAPES)
def test_never_chosen_for_cpu_convolutions(shape):
    cudnn = get_algorithm("cudnn")
    for dtype in ("float32", "float64"):
        problem = ConvProblem.make(**shape, dtype=dtype)
        assert cudnn.unsupported(problem).startswith("cuDNN runs on CUDA devices only")
        assert cudnn.priority(problem) is None and cudnn.workspace_bytes(problem) == 0
        assert select(problem).name != "cudnn"


def test_autotuning_on_the_cpu_leaves_cudnn_out():
    problem = ConvProblem.make((2, 3, 9, 9), (4, 3, 3, 3), padding=1, dtype="float64")
    assert select(problem, "auto").name != "cudnn"
    timings = autotune_timings(problem)
    assert "im2col_gemm" in timings and "cudnn" not in timings


def test_cpu_convolutions_never_import_cudnn():
    # a fresh interpreter: load every plugin, list them, run a conv forward and backward by the default rule,
    # by "auto", and build a model
    script = (
        "import sys, numpy as np, minidl as mdl, minidl.functions as F\n"
        "from minidl.functions.conv_algorithm import conv_algorithms\n"
        "assert 'cudnn' in conv_algorithms()\n"
        "x = mdl.tensor(np.ones((2, 3, 8, 8)), requires_grad=True)\n"
        "W = mdl.tensor(np.ones((4, 3, 3, 3)), requires_grad=True)\n"
        "for algorithm in (None, 'auto'):\n"
        "    F.conv2d(x, W, padding=1, algorithm=algorithm).sum().backward()\n"
        "mdl.build_model('models/alexnet-mini.yaml')(mdl.tensor(np.zeros((2, 1, 28, 28), np.float32)))\n"
        "assert 'cudnn' not in sys.modules, 'cudnn was imported'\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-W", "error", "-c", script], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout == "ok\n", out.stderr[-2000:]


@pytest.mark.parametrize("device", ["cpu", "cuda:0"])
def test_without_the_frontend_every_choice_is_as_without_the_plugin(device):
    # `minidl summary` names each layer's algorithm for a device's rule, on any machine: the same with the plugin
    # as with it disabled, wherever cuDNN cannot run (on the CPU always)
    if device.startswith("cuda") and get_algorithm("cudnn").unavailable() is None:
        pytest.skip("cuDNN runs here: on CUDA it is chosen (the cuda tests below)")
    args = ("summary", "models/alexnet.yaml", "--json", "--device", device)
    with_plugin = json.loads(_minidl(*args).stdout)
    without = json.loads(_minidl(*args, env={"MINIDL_DISABLE_PLUGINS": "minidl_cudnn"}).stdout)
    assert with_plugin == without
    assert {layer["algorithm"] for layer in with_plugin["layers"]} - {None} <= {
        "im2col_gemm", "im2col_tapfold", "im2col_flip", "fft", "winograd"}


MODEL = """\
name: one-conv
input: [3, 10, 10]
layers:
  - {type: conv2d, name: conv1, out_channels: 4, kernel_size: 3, padding: 1, algorithm: cudnn}
  - {type: relu}
"""


def test_forcing_cudnn_on_the_cpu_names_the_layer_and_the_reason(tmp_path, rng):
    path = tmp_path / "one-conv.yaml"
    path.write_text(MODEL)
    model = mdl.build_model(str(path))
    with pytest.raises(ValueError, match=r"layer 0 'conv1' \(conv2d, .*one-conv.yaml\).*conv algorithm 'cudnn' "
                                         r"cannot compute this convolution \(.* on cpu:0\): cuDNN runs on CUDA "
                                         r"devices only"):
        model(mdl.tensor(rng.standard_normal((2, 3, 10, 10)).astype(np.float32)))
    x, W = mdl.tensor(rng.standard_normal((1, 2, 5, 5))), mdl.tensor(rng.standard_normal((3, 2, 3, 3)))
    with pytest.raises(ValueError, match="'cudnn' cannot compute.*cuDNN runs on CUDA devices only"
                                         + ("" if _installed() else r".*nvidia-cudnn-frontend is not installed")):
        F.conv2d(x, W, algorithm="cudnn")
    mdl.set_conv_algorithm("cudnn")  # a known name: accepted, and refused per convolution
    try:
        with pytest.raises(ValueError, match="cuDNN runs on CUDA devices only"):
            F.conv2d(x, W)
    finally:
        mdl.set_conv_algorithm(None)


# ---------------------------------------------------------------- on a GPU with nvidia-cudnn-frontend
@pytest.fixture
def cudnn_cuda(cuda):
    """"cuda:0" and the cudnn algorithm where both run; the test skips elsewhere."""
    pytest.importorskip("cudnn", reason="nvidia-cudnn-frontend is not installed (pip install 'minidl[cudnn]')")
    algorithm = get_algorithm("cudnn")
    reason = algorithm.unavailable()
    if reason is not None:
        pytest.skip(reason)
    return cuda, algorithm


@pytest.mark.parametrize("index", range(len(SHAPES)))
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_cuda_passes_match_im2col_gemm(cudnn_cuda, index, dtype):
    device, algorithm = cudnn_cuda
    shape = SHAPES[index]
    reason = algorithm.unsupported(ConvProblem.make(**shape, dtype=dtype, device=device))
    if dtype == "float64" and reason is not None:
        pytest.skip(f"cuDNN declines this float64 convolution: {reason}")
    assert reason is None  # every conformance shape in float32
    for seed in (2 * index, 2 * index + 1):  # NCHW inputs, then channels-last ones
        check_algorithm(algorithm, shape, dtype, device, seed=seed)


@pytest.mark.parametrize("dtype, tolerance", [("float16", 2e-3), ("bfloat16", 1.6e-2)])
@pytest.mark.parametrize("shape", [SHAPES[2], SHAPES[5], {"x_shape": (2, 16, 12, 12), "w_shape": (32, 8, 3, 3),
                                                          "padding": 1, "groups": 2}])
def test_cuda_half_precision_accumulates_in_float32(cudnn_cuda, dtype, tolerance, shape, rng):
    device, algorithm = cudnn_cuda
    problem = ConvProblem.make(**shape, dtype=dtype, device=device)
    assert algorithm.unsupported(problem) is None
    low = as_dtype(dtype)
    x, W, gy = (rng.standard_normal(s).astype(low) for s in (problem.x_shape, problem.w_shape, problem.y_shape))
    wide = [a.astype(np.float32) for a in (x, W, gy)]  # the same values, in float32
    reference = get_algorithm("im2col_gemm")
    exact = ConvProblem.make(**shape, dtype="float32")
    expected = [reference.forward(wide[0], wide[1], exact)[0], reference.grad_input(wide[2], wide[1], exact),
                reference.grad_weight(wide[0], wide[2], exact)]
    xd, Wd, gyd = (mdl.tensor(a, device=device).data for a in (x, W, gy))
    got = [algorithm.forward(xd, Wd, problem)[0], algorithm.grad_input(gyd, Wd, problem),
           algorithm.grad_weight(xd, gyd, problem)]
    for what, mine, theirs in zip(["y", "gx", "gW"], got, expected):
        mine = mdl.tensor(mine).numpy()
        assert mine.dtype == low and mine.shape == theirs.shape
        scale = max(np.abs(theirs).max(), 1.0)
        np.testing.assert_allclose(mine.astype(np.float32), theirs, rtol=0, atol=tolerance * scale, err_msg=what)


def test_cuda_default_rule_autotuning_and_determinism(cudnn_cuda):
    device, algorithm = cudnn_cuda
    problem = ConvProblem.make((4, 16, 13, 13), (32, 16, 3, 3), padding=1, device=device)
    assert select(problem).name == "cudnn"
    select(problem, "auto")
    assert "cudnn" in autotune_timings(problem) and "im2col_gemm" in autotune_timings(problem)
    use_deterministic_algorithms(True)
    try:
        assert select(problem, "cudnn") is algorithm  # deterministic engines only, so allowed
    finally:
        use_deterministic_algorithms(False)


def test_cuda_graphs_are_built_once_per_problem_and_pass(cudnn_cuda, rng):
    device, algorithm = cudnn_cuda
    problem = ConvProblem.make((2, 8, 9, 9), (8, 8, 3, 3), padding=1, device=device)
    assert algorithm.unsupported(problem) is None
    built = {k for k in algorithm._plans if k[0] == problem}
    assert {k[2] for k in built} == {"fprop", "dgrad", "wgrad"}
    assert algorithm.workspace_bytes(problem) >= 8 * 8 * 9 * 4  # at least the kernels' KRSC copy
    x, W = (mdl.tensor(rng.standard_normal(s).astype(np.float32), device=device).data
            for s in (problem.x_shape, problem.w_shape))
    for _ in range(3):
        algorithm.forward(x, W, problem)
    assert {k for k in algorithm._plans if k[0] == problem} == built
    with tf32_enabled(True):  # float32 on tensor cores: its own graphs, rounding inputs to 10-bit mantissas
        y = mdl.tensor(algorithm.forward(x, W, problem)[0]).numpy()
    assert (problem, True, "fprop") in algorithm._plans
    expected = np_conv2d(*(mdl.tensor(a).numpy().astype(np.float64) for a in (x, W)), padding=(1, 1))
    np.testing.assert_allclose(y, expected, rtol=0, atol=5e-3 * np.abs(expected).max())


def test_cuda_conv2d_autograd_through_cudnn(cudnn_cuda, rng):
    # the Functions around it: bias, channels-last outputs fed onward, double use of saved values
    device, _ = cudnn_cuda
    arrays = [rng.standard_normal(s).astype(np.float32) for s in ((2, 4, 11, 11), (6, 2, 3, 3), (6,))]
    results = {}
    for algorithm in ("cudnn", "im2col_gemm"):
        xs = [mdl.tensor(a, requires_grad=True, device=device) for a in arrays]
        y = F.conv2d(*xs, stride=2, padding=1, groups=2, algorithm=algorithm)
        assert y.creator.algorithm.name == algorithm
        (y * y).sum().backward()
        results[algorithm] = [y.numpy()] + [t.grad.numpy() for t in xs]
    for a, b in zip(results["cudnn"], results["im2col_gemm"]):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(b).max())


def test_cuda_unaligned_and_strided_inputs(cudnn_cuda, rng):
    # a batch slice starting 300 bytes into its buffer (cuDNN's tensors promise 16-byte alignment) and a strided
    # view are copied, not handed over as they lie
    device, algorithm = cudnn_cuda
    whole = mdl.tensor(rng.standard_normal((3, 3, 5, 5)).astype(np.float32), device=device).data
    W = mdl.tensor(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), device=device).data
    wide = mdl.tensor(rng.standard_normal((2, 3, 5, 10)).astype(np.float32), device=device).data
    for x in (whole[1:], wide[:, :, :, ::2]):
        problem = ConvProblem.make(x.shape, W.shape, padding=1, device=device)
        y = mdl.tensor(algorithm.forward(x, W, problem)[0]).numpy()
        expected = np_conv2d(*(mdl.tensor(a).numpy().astype(np.float64) for a in (x, W)), padding=(1, 1))
        np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
