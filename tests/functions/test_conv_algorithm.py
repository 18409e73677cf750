"""Choosing a convolution algorithm (minidl/functions/conv_algorithm.py): the documented default rule, forced
choices and their errors, autotuning, the process-wide settings, and ConvProblem's JSON form."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.functions import ConvProblem
from minidl.functions.conv_algorithm import autotune_timings, conv_algorithms, get_algorithm, select


@pytest.fixture
def settings():
    """Restore the process-wide choices after a test that changes them."""
    yield
    mdl.set_conv_algorithm(None)
    mdl.use_deterministic_algorithms(False)


# the paper's AlexNet and alexnet-mini at batch 128, and what the rule's table says for each
ALEXNET = {
    "conv1": ((128, 3, 227, 227), (96, 3, 11, 11), {"stride": 4}),
    "conv2": ((128, 96, 27, 27), (256, 48, 5, 5), {"padding": 2, "groups": 2}),
    "conv3": ((128, 256, 13, 13), (384, 256, 3, 3), {"padding": 1}),
    "conv4": ((128, 384, 13, 13), (384, 192, 3, 3), {"padding": 1, "groups": 2}),
    "mini conv1": ((128, 1, 28, 28), (32, 1, 5, 5), {"padding": 2}),
    "mini conv2": ((128, 32, 13, 13), (64, 16, 5, 5), {"padding": 2, "groups": 2}),
    "mini conv5": ((128, 96, 6, 6), (64, 48, 3, 3), {"padding": 1, "groups": 2}),
}


@pytest.mark.parametrize("layer, cpu, cuda", [
    ("conv1", "im2col_tapfold", "im2col_tapfold"),  # 3 input channels: fold along rows, by phases
    ("conv2", "fft", "im2col_tapfold"),  # 5x5 on 27x27; on a GPU 128 > 2 * 48 output channels per group: no flip
    ("conv3", "winograd", "im2col_flip"),
    ("conv4", "winograd", "im2col_flip"),
    ("mini conv1", "im2col_tapfold", "im2col_tapfold"),
    ("mini conv2", "fft", "im2col_flip"),  # 5x5 on 13x13 (16 channels per group: too thin for Winograd)
    ("mini conv5", "fft", "im2col_flip"),  # 3x3 with 48 channels per group: the fft's, not Winograd's
])
def test_default_rule_follows_its_table(layer, cpu, cuda):
    x_shape, w_shape, kwargs = ALEXNET[layer]
    assert select(ConvProblem.make(x_shape, w_shape, **kwargs)).name == cpu
    assert select(ConvProblem.make(x_shape, w_shape, **kwargs, device="cuda:0")).name == cuda


def test_the_reference_computes_everything_else():
    # strided with many channels per group: only im2col_gemm ranks
    problem = ConvProblem.make((2, 32, 9, 9), (8, 32, 3, 3), stride=2)
    assert select(problem).name == "im2col_gemm"
    assert select(problem) is select(problem)  # settled once


def test_forced_algorithm_and_its_errors(rng):
    x = mdl.tensor(rng.standard_normal((2, 4, 9, 9)), requires_grad=True)  # recorded: y.creator is the op
    W = mdl.tensor(rng.standard_normal((4, 4, 3, 3)))
    assert F.conv2d(x, W, algorithm="im2col_gemm").creator.algorithm.name == "im2col_gemm"
    assert F.conv2d(x, W, algorithm=get_algorithm("winograd")).creator.algorithm.name == "winograd"
    with pytest.raises(ValueError, match="unknown conv algorithm 'winograt'. Did you mean 'winograd'.*im2col_gemm"):
        F.conv2d(x, W, algorithm="winograt")
    with pytest.raises(ValueError, match=r"'im2col_flip' cannot compute this convolution \(x 2x4x9x9, W 4x4x3x3, "
                                         r"stride 2x2.*\): stride 2x2: needs 1"):
        F.conv2d(x, W, stride=2, algorithm="im2col_flip")


def test_set_conv_algorithm_is_the_default_for_unforced_convolutions(settings, rng):
    x = mdl.tensor(rng.standard_normal((2, 40, 6, 6)), requires_grad=True)
    W = mdl.tensor(rng.standard_normal((40, 40, 3, 3)))
    assert F.conv2d(x, W, padding=1).creator.algorithm.name == "fft"
    mdl.set_conv_algorithm("im2col_gemm")
    assert mdl.get_conv_algorithm() == "im2col_gemm"
    assert F.conv2d(x, W, padding=1).creator.algorithm.name == "im2col_gemm"
    assert F.conv2d(x, W, padding=1, algorithm="im2col_flip").creator.algorithm.name == "im2col_flip"
    with pytest.raises(ValueError, match="unknown conv algorithm"):
        mdl.set_conv_algorithm("fourier")
    assert mdl.get_conv_algorithm() == "im2col_gemm"  # a refused setting changes nothing
    mdl.set_conv_algorithm(None)
    assert F.conv2d(x, W, padding=1).creator.algorithm.name == "fft"


def test_autotune_times_every_supporting_algorithm_once(settings):
    problem = ConvProblem.make((2, 8, 12, 12), (8, 8, 3, 3), padding=1)
    chosen = select(problem, "auto")
    timings = autotune_timings(problem)
    supporting = {n for n, a in conv_algorithms().items() if a.unsupported(problem) is None}
    assert set(timings) == supporting and all(t > 0 for t in timings.values())
    assert chosen.name == min(timings, key=lambda n: (timings[n], n))
    assert select(problem, "auto") is chosen and autotune_timings(problem) == timings  # cached, not re-timed
    mdl.use_deterministic_algorithms(True)  # every built-in is deterministic: the same candidates
    select(problem, "auto")
    assert set(autotune_timings(problem)) == supporting


def test_autotune_leaves_global_random_state_alone(settings):
    np.random.seed(5)
    mdl.random.manual_seed(5)
    expected_np, expected_mdl = np.random.random(), mdl.random.get_state()
    np.random.seed(5)
    mdl.random.manual_seed(5)
    select(ConvProblem.make((1, 4, 7, 7), (4, 4, 3, 3), padding=1, dtype="float64"), "auto")
    assert np.random.random() == expected_np and mdl.random.get_state() == expected_mdl


def test_results_do_not_depend_on_the_choice(rng):
    # float64, every algorithm that takes the problem: the same forward and gradients to round-off
    x0, W0 = rng.standard_normal((2, 4, 8, 8)), rng.standard_normal((6, 2, 3, 3))
    results = {}
    for name, algorithm in conv_algorithms().items():
        if algorithm.unsupported(ConvProblem.make(x0.shape, W0.shape, padding=1, groups=2, dtype="float64")):
            continue
        x, W = mdl.tensor(x0, requires_grad=True), mdl.tensor(W0, requires_grad=True)
        y = F.conv2d(x, W, padding=1, groups=2, algorithm=name)
        (y * y).sum().backward()
        results[name] = [y.numpy(), x.grad.numpy(), W.grad.numpy()]
    assert len(results) >= 4
    for name, values in results.items():
        for a, b in zip(values, results["im2col_gemm"]):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("kwargs", [{}, {"stride": (2, 1), "padding": (0, 3), "dilation": 2, "groups": 2,
                                         "dtype": "float16", "device": "cuda:1"}])
def test_problem_json_round_trip(kwargs):
    problem = ConvProblem.make((2, 4, 9, 11), (6, 4 // kwargs.get("groups", 1), 3, 3), **kwargs)
    assert ConvProblem.from_dict(problem.as_dict()) == problem
    assert hash(ConvProblem.from_dict(problem.as_dict())) == hash(problem)
    assert ConvProblem.make((1, 1, 3, 3), (1, 1, 1, 1), device="cpu").device == "cpu:0"
