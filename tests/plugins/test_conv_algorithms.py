"""Every registered convolution algorithm, third-party ones included, against the reference im2col_gemm:
forward, input gradient and weight gradient (with and without what forward saved) in float64, on every shape
of a shared list that it claims, plus the examples it registered. A toy algorithm from a test distribution,
found through a real entry point, goes through the same checks and the same choice machinery."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.functions import ConvProblem
from minidl.functions.conv_algorithm import autotune_timings, conv_algorithms, get_algorithm, select
from minidl.plugins import get_plugin_manager, registry

from ..functions._conv_reference import channels_last_copy, np_conv2d
from .conftest import install_plugin

SHAPES = [  # ConvProblem.make keywords: strides, paddings, dilations, groups, odd sizes, the AlexNet kernels
    {"x_shape": (2, 3, 9, 9), "w_shape": (4, 3, 3, 3)},
    {"x_shape": (2, 3, 9, 9), "w_shape": (4, 3, 3, 3), "padding": 1},
    {"x_shape": (1, 4, 11, 10), "w_shape": (6, 2, 3, 3), "padding": 1, "groups": 2},
    {"x_shape": (2, 2, 13, 13), "w_shape": (5, 2, 5, 5), "padding": 2},
    {"x_shape": (1, 6, 12, 12), "w_shape": (6, 2, 5, 5), "padding": 2, "groups": 3},
    {"x_shape": (2, 3, 27, 27), "w_shape": (4, 3, 11, 11), "stride": 4, "padding": 2},  # conv1's geometry
    {"x_shape": (2, 4, 10, 9), "w_shape": (4, 4, 3, 3), "stride": 2, "padding": 1},
    {"x_shape": (1, 2, 9, 11), "w_shape": (3, 2, 3, 2), "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)},
    {"x_shape": (2, 4, 8, 8), "w_shape": (2, 4, 1, 1)},
    {"x_shape": (1, 2, 6, 7), "w_shape": (3, 2, 3, 3), "padding": 3},  # padding past the kernel's reach
    {"x_shape": (2, 3, 7, 7), "w_shape": (2, 3, 3, 3), "dilation": 2, "padding": 2},
]


def _cases(algorithms, entries, devices=("cpu", "cuda:0")):
    """(name, shape keywords, dtype) for every shape each algorithm claims on some device, in float64 when it
    takes it. (A device's rule can be asked about on any machine; the test skips the devices absent here, and
    those the algorithm does not claim the shape on, saying why.)"""
    cases = []
    for name in sorted(algorithms):
        for shape in SHAPES + list(entries[name].options.get("examples") or []):
            for dtype in ("float64", "float32"):
                if any(algorithms[name].unsupported(ConvProblem.make(**shape, dtype=dtype, device=device)) is None
                       for device in devices):
                    cases.append((name, shape, dtype))
                    break
    return cases


def check_algorithm(algorithm, shape: dict, dtype: str, device: str, seed: int = 0) -> None:
    """Assert ``algorithm`` computes all three passes of ``shape`` as the reference does."""
    reference = get_algorithm("im2col_gemm")
    problem = ConvProblem.make(**shape, dtype=dtype, device=device)
    assert algorithm.unsupported(problem) is None
    rng = np.random.default_rng(seed)
    x, W, gy = (rng.standard_normal(s).astype(dtype) for s in (problem.x_shape, problem.w_shape, problem.y_shape))
    if seed % 2:  # channels-last storage, as convolutions hand it on
        x, gy = channels_last_copy(x), channels_last_copy(gy)
    xp = mdl.Device(device).xp
    x, W, gy = (xp.asarray(a) for a in (x, W, gy))
    originals = [a.copy() for a in (x, W, gy)]

    def passes(alg):
        y, saved = alg.forward(x, W, problem)
        y = y.copy()
        gW_saved = alg.grad_weight(x, gy, problem, saved).copy()
        alg.release(saved)
        return [y, alg.grad_input(gy, W, problem), gW_saved, alg.grad_weight(x, gy, problem, None)]

    expected, got = passes(reference), passes(algorithm)
    tolerance = 1e-10 if dtype == "float64" else 1e-4
    host = [mdl.tensor(a).numpy() for a in expected]
    np.testing.assert_allclose(host[0], np_conv2d(*(mdl.tensor(a).numpy().astype(np.float64) for a in (x, W)),
                                                  **_np_args(problem)), rtol=tolerance, atol=tolerance)
    for what, mine, theirs, shape_ in zip(["y", "gx", "gW (forward's saved)", "gW"], got, host,
                                          [problem.y_shape, problem.x_shape, problem.w_shape, problem.w_shape]):
        mine = mdl.tensor(mine).numpy()
        assert mine.shape == shape_ and mine.dtype == np.dtype(dtype), f"{what}: {mine.shape} {mine.dtype}"
        scale = max(np.abs(theirs).max(), 1.0)
        np.testing.assert_allclose(mine, theirs, rtol=tolerance, atol=tolerance * scale,
                                   err_msg=f"{algorithm.name} {what} on {problem}")
    for before, after in zip(originals, (x, W, gy)):  # inputs are read, never written
        assert (mdl.tensor(before).numpy() == mdl.tensor(after).numpy()).all()
    if algorithm.deterministic:
        again = passes(algorithm)
        for a, b in zip(got, again):
            assert (mdl.tensor(a).numpy() == mdl.tensor(b).numpy()).all(), f"{algorithm.name} is not deterministic"


def _np_args(problem):
    w = problem.window
    return {"stride": w.stride, "padding": w.padding, "dilation": w.dilation, "groups": problem.groups}


CASES = _cases(conv_algorithms(), registry("conv_algorithms").entries)  # whatever is installed


@pytest.mark.parametrize("name, shape, dtype", CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(CASES)])
def test_registered_algorithm_matches_the_reference(name, shape, dtype, device):
    reason = get_algorithm(name).unsupported(ConvProblem.make(**shape, dtype=dtype, device=device))
    if reason is not None:  # claimed on the other device only (cudnn: CUDA only)
        pytest.skip(f"{name} does not compute this on {device}: {reason}")
    check_algorithm(get_algorithm(name), shape, dtype, device, seed=CASES.index((name, shape, dtype)))


def _unavailable(algorithm):
    check = getattr(algorithm, "unavailable", None)
    return check() if callable(check) else None


UNAVAILABLE = {name: _unavailable(a) for name, a in sorted(conv_algorithms().items()) if _unavailable(a)}


def test_every_algorithm_claims_shapes_and_the_reference_claims_them_all():
    claimed = {name for name, _, _ in CASES}
    assert claimed | set(UNAVAILABLE) == set(conv_algorithms())
    assert not claimed & set(UNAVAILABLE)  # one that says it computes nothing here claims nothing
    assert sum(name == "im2col_gemm" for name, _, _ in CASES) == len(SHAPES)
    assert {"im2col_gemm", "im2col_tapfold", "im2col_flip", "fft", "winograd"} <= claimed


@pytest.mark.parametrize("name", sorted(UNAVAILABLE) or [None])
def test_algorithms_unusable_here_say_why(name):
    """An algorithm that computes nothing in this environment (cudnn without its package or a GPU) is not
    checked here; this says so in the test report rather than passing silently."""
    if name is None:
        return
    reason = UNAVAILABLE[name]
    assert isinstance(reason, str) and reason.strip()
    for shape in SHAPES:
        for device in ("cpu", "cuda:0"):
            assert get_algorithm(name).unsupported(ConvProblem.make(**shape, device=device))
    pytest.skip(f"conformance of {name!r} not checked on this machine: {reason}")


def test_algorithms_report_their_workspace():
    problem = ConvProblem.make((2, 8, 13, 13), (8, 8, 3, 3), padding=1)
    for name, algorithm in conv_algorithms().items():
        if algorithm.unsupported(problem) is None:
            assert algorithm.workspace_bytes(problem) >= 0, name
    assert get_algorithm("im2col_gemm").workspace_bytes(problem) == 2 * 13 * 13 * 9 * 8 * 4  # the columns


# ---------------------------------------------------------------- a third-party algorithm
TOY = """
import numpy as np
import minidl
from minidl.backend import get_array_module
from minidl.functions import ConvAlgorithm


class Direct(ConvAlgorithm):
    '''One einsum per kernel tap, no columns. Ungrouped and undilated only. Says it is not deterministic,
    to exercise use_deterministic_algorithms; never chosen by default (no priority).'''

    deterministic = False

    def unsupported(self, problem):
        if problem.groups != 1:
            return "groups: needs 1"
        if problem.window.dilation != (1, 1):
            return "dilation: needs 1"
        return None

    def _taps(self, problem):
        w = problem.window
        oh, ow = problem.output_hw
        for i in range(w.kh):
            for j in range(w.kw):
                yield i, j, (slice(i, i + w.sy * (oh - 1) + 1, w.sy), slice(j, j + w.sx * (ow - 1) + 1, w.sx))

    def _padded(self, x, problem):
        xp = get_array_module(x)
        w = problem.window
        return xp.pad(x, ((0, 0), (0, 0), (w.ph, w.ph), (w.pw, w.pw)))

    def forward(self, x, W, problem):
        xp = get_array_module(x, W)
        xpad = self._padded(x, problem)
        y = xp.zeros(problem.y_shape, dtype=problem.dtype)
        for i, j, (rows, cols) in self._taps(problem):
            y += xp.einsum("nchw,oc->nohw", xpad[:, :, rows, cols], W[:, :, i, j])
        return y, None

    def grad_input(self, gy, W, problem):
        xp = get_array_module(gy, W)
        n, c, h, w = problem.x_shape
        win = problem.window
        gx = xp.zeros((n, c, h + 2 * win.ph, w + 2 * win.pw), dtype=problem.dtype)
        for i, j, (rows, cols) in self._taps(problem):
            gx[:, :, rows, cols] += xp.einsum("nohw,oc->nchw", gy, W[:, :, i, j])
        return gx[:, :, win.ph:win.ph + h, win.pw:win.pw + w]

    def grad_weight(self, x, gy, problem, saved=None):
        xp = get_array_module(x, gy)
        xpad = self._padded(x, problem)
        gW = xp.zeros(problem.w_shape, dtype=problem.dtype)
        for i, j, (rows, cols) in self._taps(problem):
            gW[:, :, i, j] = xp.einsum("nohw,nchw->oc", gy, xpad[:, :, rows, cols])
        return gW


@minidl.hookimpl
def minidl_register_conv_algorithms(register):
    register("toy_direct", Direct, examples=[{"x_shape": (1, 2, 5, 6), "w_shape": (3, 2, 2, 3), "stride": 2}])
"""


@pytest.fixture
def toy_installed(tmp_path, monkeypatch, fresh_plugins):
    """The toy algorithm's package made discoverable through a real dist-info, as `pip install` would."""
    yield install_plugin(tmp_path, monkeypatch, "minidl-toyconv", "0.2.0", "minidl_toyconv", TOY)
    mdl.use_deterministic_algorithms(False)


def test_third_party_algorithm_conforms(toy_installed, device):
    toy = get_algorithm("toy_direct")
    assert registry("conv_algorithms")["toy_direct"].plugin.package == "minidl-toyconv"
    cases = [c for c in _cases(conv_algorithms(), registry("conv_algorithms").entries) if c[0] == "toy_direct"]
    assert len(cases) >= 5  # the ungrouped, undilated shared shapes and its own example
    for i, (_, shape, dtype) in enumerate(cases):
        check_algorithm(toy, shape, dtype, device, seed=i)


def test_third_party_algorithm_is_used_only_when_chosen(toy_installed, rng):
    x = mdl.tensor(rng.standard_normal((2, 3, 8, 8)), requires_grad=True)
    W = mdl.tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    assert F.conv2d(x, W).creator.algorithm.name != "toy_direct"  # no priority: never a default
    y = F.conv2d(x, W, algorithm="toy_direct")
    assert y.creator.algorithm.name == "toy_direct"
    y.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np_grad_input(W.numpy(), y.shape, x.shape), rtol=1e-10)
    with pytest.raises(ValueError, match="toy_direct.*groups: needs 1"):
        F.conv2d(mdl.tensor(rng.standard_normal((2, 4, 8, 8))), mdl.tensor(rng.standard_normal((4, 2, 3, 3))),
                 groups=2, algorithm="toy_direct")


def np_grad_input(W, y_shape, x_shape):
    """d sum(conv(x, W)) / dx for stride 1, no padding: every tap adds W's channel sums."""
    gx = np.zeros(x_shape)
    oh, ow = y_shape[2:]
    for i in range(W.shape[2]):
        for j in range(W.shape[3]):
            gx[:, :, i:i + oh, j:j + ow] += W[:, :, i, j].sum(axis=0)[None, :, None, None]
    return gx


def test_deterministic_mode_excludes_and_refuses_the_toy(toy_installed):
    problem = ConvProblem.make((2, 3, 8, 8), (4, 3, 3, 3), padding=1)
    select(problem, "auto")
    assert "toy_direct" in autotune_timings(problem)  # timed with the others
    mdl.use_deterministic_algorithms(True)
    assert mdl.are_deterministic_algorithms_enabled()
    chosen = select(problem, "auto")
    assert chosen.name != "toy_direct" and chosen.deterministic
    assert "toy_direct" not in autotune_timings(problem)
    with pytest.raises(RuntimeError, match="toy_direct.*not deterministic"):
        select(problem, "toy_direct")


def test_cli_plugins_lists_conv_algorithms_with_providers(toy_installed):
    paths = [str(toy_installed)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    out = subprocess.run([sys.executable, "-m", "minidl.cli", "plugins", "--json"], capture_output=True, text=True,
                         check=True, env=dict(os.environ, PYTHONPATH=os.pathsep.join(paths))).stdout
    listing = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert listing["minidl_conv"]["registered"]["conv_algorithms"] == [
        "im2col_gemm", "im2col_tapfold", "im2col_flip", "fft", "winograd"]
    toy = listing["toyconv"]
    assert (toy["package"], toy["version"], toy["registered"]) == (
        "minidl-toyconv", "0.2.0", {"conv_algorithms": ["toy_direct"]})
    assert get_plugin_manager().plugins["toyconv"].status == "active"


BROKEN = """
import minidl


class Half:  # forward only: not an algorithm
    def forward(self, x, W, problem):
        pass


@minidl.hookimpl
def minidl_register_conv_algorithms(register):
    register("half", Half)
"""


def test_a_broken_algorithm_is_reported_and_the_rest_keep_working(tmp_path, monkeypatch, fresh_plugins, rng):
    from minidl.plugins import PluginWarning

    install_plugin(tmp_path, monkeypatch, "minidl-half", "0.1.0", "minidl_half", BROKEN)
    with pytest.warns(PluginWarning, match="'half' from plugin 'half' .*cannot be used.*no unsupported"):
        names = set(conv_algorithms())
    assert "half" not in names and "im2col_gemm" in names
    x = mdl.tensor(rng.standard_normal((1, 2, 5, 5)), requires_grad=True)
    assert F.conv2d(x, mdl.tensor(rng.standard_normal((3, 2, 3, 3)))).shape == (1, 3, 3, 3)
