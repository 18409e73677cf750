"""The built-in device strategies give the single-device results, on logical CPU devices (float64)."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.parallel import PlacementError, place
from minidl.plugins import registry

MODELS = Path(__file__).resolve().parents[2] / "models"
TWO = "cpu:0,cpu:1"
SPLITS = ["columns", "data_parallel", "hybrid"]

pytestmark = pytest.mark.skipif(mdl.parallel.cpu_cores() < 2, reason="needs two CPU cores for cpu:0 and cpu:1")


def _forward_backward(path, strategy, batch, train=False, steps=0):
    """Outputs and parameter gradients of one step (after ``steps`` SGD updates) with ``strategy``."""
    mdl.random.manual_seed(0)
    model = mdl.build_model(path, dtype="float64")
    if strategy is not None:
        place(model, strategy, TWO)
    model.train(train)
    rng = np.random.default_rng(1)
    optimizer = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9)
    try:
        for _ in range(steps + 1):
            x = mdl.tensor(rng.standard_normal((batch,) + model.input_shape))
            labels = rng.integers(0, 10, batch)
            optimizer.zero_grad()
            out = model(x)
            F.cross_entropy(out, labels).backward()
            if _ < steps:
                optimizer.step()
        return out.numpy(), {name: p.grad.numpy() for name, p in model.named_parameters()}
    finally:
        if model.placement is not None:
            model.placement.close()


def _assert_same(result, reference):
    out, grads = result
    ref_out, ref_grads = reference
    np.testing.assert_allclose(out, ref_out, rtol=1e-10, atol=1e-12)
    assert grads.keys() == ref_grads.keys()
    for name in ref_grads:
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-9, atol=1e-12, err_msg=name)


@pytest.fixture(scope="module")
def mini_single():
    return _forward_backward(MODELS / "alexnet-mini.yaml", None, batch=5, steps=2)


@pytest.mark.parametrize("strategy", SPLITS)
def test_alexnet_mini_matches_single_after_updates(strategy, mini_single):
    # batch 5 splits unevenly; two SGD steps first, so replicas must follow the updated weights
    _assert_same(_forward_backward(MODELS / "alexnet-mini.yaml", strategy, batch=5, steps=2), mini_single)


def test_data_parallel_dropout_draws_the_single_device_masks():
    path = MODELS / "alexnet-mini.yaml"
    _assert_same(_forward_backward(path, "data_parallel", batch=4, train=True),
                 _forward_backward(path, None, batch=4, train=True))


@pytest.fixture(scope="module")
def alexnet_single():
    return _forward_backward(MODELS / "alexnet.yaml", None, batch=2)


@pytest.mark.parametrize("strategy", SPLITS)
def test_alexnet_matches_single(strategy, alexnet_single):
    _assert_same(_forward_backward(MODELS / "alexnet.yaml", strategy, batch=2), alexnet_single)


def test_graph_model_with_concat_matches_single():
    path = MODELS / "alexnet-columns.yaml"
    _assert_same(_forward_backward(path, "columns", batch=1), _forward_backward(path, None, batch=1))


def test_strategies_are_plugins():
    names = registry("device_strategies").names()
    assert {"single", "columns", "data_parallel", "hybrid"} <= set(names)
    assert registry("device_strategies")["columns"].plugin.name == "minidl_strategies"


class _Recorder(mdl.nn.Module):
    """A channel-wise layer that notes which thread ran each share."""

    def __init__(self, seen):
        super().__init__()
        self.seen = seen

    def channel_map(self, lo, hi, input_shape):
        return lo, hi

    def forward(self, x):
        self.seen.append(threading.current_thread().name)
        return x * 2.0


def test_shares_run_on_one_thread_per_device():
    seen = []
    model = mdl.build_model({"name": "t", "input": [4, 3, 3], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 1}, {"type": "relu"}]})
    model.nodes[1].module = _Recorder(seen)
    place(model, "columns", TWO)
    try:
        out = model(mdl.tensor(np.ones((2, 4, 3, 3), np.float32), requires_grad=True))
        out.sum().backward()
    finally:
        model.placement.close()
    assert sorted(seen) == ["minidl-cpu:0_0", "minidl-cpu:1_0"]


class _BlasRecorder(_Recorder):
    def forward(self, x):
        self.seen.append(_blas_threads())
        return x * 2.0


def _blas_threads():
    import threadpoolctl

    return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]


def test_blas_threads_are_shared_out_only_while_split_layers_run():
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    seen = []
    model = mdl.build_model({"name": "t", "input": [4, 3, 3], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 1}, {"type": "relu"}]})
    model.nodes[1].module = _BlasRecorder(seen)
    place(model, "columns", TWO)
    try:
        assert _blas_threads() == before  # placing changes nothing process-wide
        out = model(mdl.tensor(np.ones((2, 4, 3, 3), np.float32), requires_grad=True))
        assert _blas_threads() == before  # nor does running, once the run is over
        out.sum().backward()
        assert _blas_threads() == before
    finally:
        model.placement.close()
    assert seen == [[max(1, mdl.parallel.cpu_cores() // 2)] * len(before)] * 2  # each share, while it ran
    assert _blas_threads() == before


def test_double_backward_through_a_split_layer_is_refused():
    model = place(mdl.build_model(MODELS / "alexnet-mini.yaml", dtype="float64"), "columns", TWO)
    try:
        x = mdl.tensor(np.ones((1, 1, 28, 28)), requires_grad=True)
        with pytest.raises(RuntimeError, match="double backward .* device-split layer"):
            mdl.grad(model(x).sum(), [x], create_graph=True)
    finally:
        model.placement.close()


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("devices, message", [
    ("cpu:0,gpu:1", "unknown device 'gpu:1'"),
    ("cpu:0,cpu:4096", "device cpu:4096 is not present"),
    ("cpu:0,cpu:0", "listed twice"),
])
def test_bad_devices_are_refused(devices, message):
    with pytest.raises(PlacementError, match=message):
        mdl.build_model(MODELS / "alexnet-mini.yaml", devices=devices, strategy="columns")


def test_a_cut_through_a_group_names_the_layer():
    spec = {"name": "g", "input": [6, 5, 5], "layers": [
        {"name": "grouped", "type": "conv2d", "out_channels": 6, "kernel_size": 3, "groups": 3}]}
    with pytest.raises(ValueError, match=r"layer 0 'grouped' \(conv2d\) cannot be split over 2 devices"):
        mdl.build_model(spec, devices=TWO, strategy="columns")


def test_single_takes_one_device_and_unknown_strategies_get_a_suggestion():
    with pytest.raises(PlacementError, match="'single' needs exactly 1 device"):
        mdl.build_model(MODELS / "alexnet-mini.yaml", devices=TWO, strategy="single")
    with pytest.raises(PlacementError, match="Did you mean 'hybrid'"):
        mdl.build_model(MODELS / "alexnet-mini.yaml", devices=TWO, strategy="hybird")
    with pytest.raises(PlacementError, match="takes no options"):
        mdl.build_model(MODELS / "alexnet-mini.yaml", devices=TWO, strategy={"type": "columns", "speed": 2})


def test_yaml_devices_and_strategy_are_read_and_located(tmp_path):
    text = (MODELS / "alexnet-mini.yaml").read_text().replace(
        "input: [1, 28, 28]", "input: [1, 28, 28]\ndevices: [cpu:0, cpu:1]\nstrategy: columns")
    good = tmp_path / "split.yaml"
    good.write_text(text)
    model = mdl.build_model(good)
    assert model.placement is not None and model.placement.strategy == "columns"
    model.placement.close()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("strategy: columns", "strategy: colums"))
    line = text.splitlines().index("strategy: columns") + 1
    with pytest.raises(mdl.ModelError, match=rf"bad.yaml:{line}:1: unknown device strategy type 'colums'"):
        mdl.build_model(bad)


def test_summary_counts_what_crosses_devices():
    from minidl.summary import summarize

    model = mdl.build_model({"name": "s", "input": [2, 4, 4], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
        {"type": "flatten"}, {"type": "linear", "out_features": 2}]}, devices=TWO, strategy="columns")
    try:
        placement = summarize(model, batch=1)["placement"]
    finally:
        model.placement.close()
    # cpu:1 reads the input (128 B, no gradient goes back); each device sends the other its 32 conv
    # features for the linear layer and gets their gradient back (4 x 128 B); cpu:1's output (4 B)
    # goes to cpu:0 and its gradient back
    assert placement["activation_transfer_bytes_per_step"] == 128 + 4 * 128 + 2 * 4
    assert [d["params"] for d in placement["devices"]] == [2 * 2 * 9 + 2 + 64 + 1] * 2  # half the conv kernels, one row of the linear layer


def test_a_layer_split_annotation_overrides_the_strategy(tmp_path):
    text = (MODELS / "alexnet-mini.yaml").read_text()
    annotated = tmp_path / "annotated.yaml"
    annotated.write_text(text.replace("{name: fc8, type: linear,", "{name: fc8, type: linear, split: home,")
                         .replace("{name: conv1, type: conv2d,", "{name: conv1, type: conv2d, split: data,"))
    model = mdl.build_model(annotated, devices=TWO, strategy="columns")
    try:
        assert model.placement.modes["fc8"] == "home" and model.placement.modes["conv1"] == "data"
        assert model.placement.modes["fc7"] == "model"
    finally:
        model.placement.close()
    _assert_same(_forward_backward(annotated, "columns", batch=3), _forward_backward(annotated, None, batch=3))
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("{name: fc8, type: linear,", "{name: fc8, type: linear, split: columns,"))
    with pytest.raises(mdl.ModelError, match=r"bad.yaml:\d+:\d+: .*split must be one of data, model, home"):
        mdl.build_model(bad)


class ShareError(ValueError):
    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


class _FailsOnSecondDevice(_Recorder):
    def forward(self, x):
        if str(x.device) == "cpu:1":
            raise ShareError("bad share", code=7)
        return x


def test_an_error_in_a_share_names_its_device_and_layer_and_keeps_its_type():
    model = mdl.build_model({"name": "t", "input": [4, 3, 3], "layers": [
        {"type": "conv2d", "out_channels": 4, "kernel_size": 1}, {"type": "relu"}]})
    model.nodes[1].module = _FailsOnSecondDevice([])
    place(model, "columns", TWO)
    try:
        with pytest.raises(ShareError, match=r"^layer 1 'relu1' \(relu, <mapping>\), input shape \(2, 4, 3, 3\): "
                                             r"on cpu:1: bad share$") as info:
            model(mdl.tensor(np.ones((2, 4, 3, 3), np.float32)))
    finally:
        model.placement.close()
    error = info.value
    assert error.code == 7 and error.device == mdl.Device("cpu:1")
    assert (error.layer_name, error.layer_type, error.layer_index) == ("relu1", "relu", 1)


def test_a_shape_error_in_a_split_linear_stays_a_shape_error():
    model = mdl.build_model({"name": "t", "input": [8], "layers": [
        {"type": "linear", "out_features": 4, "name": "fc"}]})
    place(model, "columns", TWO)
    try:
        with pytest.raises(mdl.ShapeError, match=r"layer 0 'fc' \(linear, <mapping>\), input shape \(2, 6\): "
                                                 r"on cpu:\d: linear: expected x \(N, 8\)") as info:
            model(mdl.tensor(np.ones((2, 6), np.float32)))
    finally:
        model.placement.close()
    assert info.value.op == "linear" and info.value.device.type == "cpu"
