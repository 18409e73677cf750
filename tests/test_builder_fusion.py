"""A relu layer run inside the conv2d or linear layer before it (minidl/builder.py: Model.fuse_activations,
fused_activation): the same outputs and gradients as layer by layer, only where it is safe, and the model
still as its file wrote it (layers, summary, state dict, error messages)."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
import minidl.functions as F
from minidl.builder import FUSE_ACTIVATIONS, build_model, fused_activation
from minidl.plugins import registry
from minidl.summary import summarize

SPEC = {"name": "small", "input": [2, 8, 8], "layers": [
    {"name": "c1", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"name": "r1", "type": "relu"},
    {"name": "p1", "type": "maxpool2d", "kernel_size": 2},
    {"name": "c2", "type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1, "groups": 2},
    {"name": "r2", "type": "relu"},
    {"name": "r2b", "type": "relu"},  # a relu after a relu: left as it is
    {"name": "flat", "type": "flatten"},
    {"name": "fc1", "type": "linear", "out_features": 8},
    {"name": "r3", "type": "relu"},
    {"name": "drop", "type": "dropout", "p": 0.5},
    {"name": "fc2", "type": "linear", "out_features": 3},
    {"name": "r4", "type": "relu"},  # the model's output: fused too (nothing else reads fc2)
]}


def op_counts(y):
    """{Function class name: count} over the graph that produced y."""
    counts, seen, stack = {}, set(), [y.creator]
    while stack:
        fn = stack.pop()
        if fn is None or id(fn) in seen:
            continue
        seen.add(id(fn))
        counts[type(fn).__name__] = counts.get(type(fn).__name__, 0) + 1
        stack.extend(x.creator for x in fn.inputs)
    return counts


def run(model, x, fuse, seed=0):
    """Output, input gradient and parameter gradients of one training step with fusion on or off."""
    object.__setattr__(model, "fuse_activations", fuse)
    model.zero_grad()
    xt = mdl.tensor(x, requires_grad=True)
    mdl.random.manual_seed(seed)  # the same dropout mask both ways
    y = model(xt)
    counts = op_counts(y)
    (y * y).sum().backward()
    return y.numpy(), xt.grad.numpy(), {n: p.grad.numpy() for n, p in model.named_parameters()}, counts


@pytest.fixture
def model():
    return build_model(SPEC, dtype="float64")


@pytest.fixture
def x(rng):
    return rng.standard_normal((5, 2, 8, 8))


def test_fused_and_unfused_give_the_same_outputs_and_gradients(model, x):
    fused, unfused = run(model, x, True), run(model, x, False)
    np.testing.assert_allclose(fused[0], unfused[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(fused[1], unfused[1], rtol=1e-12, atol=1e-12)
    assert fused[2].keys() == unfused[2].keys()
    for name in fused[2]:
        np.testing.assert_allclose(fused[2][name], unfused[2][name], rtol=1e-12, atol=1e-12, err_msg=name)
    # c1+r1, c2+r2, fc1+r3 and fc2+r4 ran as one op each; r2b on its own
    assert fused[3].get("BiasReLU") == 4 and fused[3].get("ReLU") == 1
    assert unfused[3].get("BiasReLU") is None and unfused[3].get("ReLU") == 5


def test_the_default_follows_the_device(model, x):
    assert model.fuse_activations is None
    counts = run(model, x, None)[3]
    assert (counts.get("BiasReLU") == 4) is FUSE_ACTIVATIONS["cpu"]
    assert FUSE_ACTIVATIONS["cuda"] is True


def test_the_model_is_still_as_written(model, x):
    names = [layer["name"] for layer in SPEC["layers"]]
    state = {k: v.copy() for k, v in model.state_dict().items()}
    rows = summarize(model)["layers"]
    run(model, x, True)
    assert list(model.layers) == names and [r["name"] for r in rows] == names
    assert [r["name"] for r in summarize(model)["layers"]] == names
    assert list(model.state_dict()) == list(state)
    assert all(type(m).__name__ == "ReLU" for n, m in model.layers.items() if n.startswith("r"))


def test_errors_still_name_the_layer_that_raised(model, rng):
    def message(model, x, fuse):
        object.__setattr__(model, "fuse_activations", fuse)
        with pytest.raises(Exception) as info:
            model(mdl.tensor(x))
        return type(info.value), str(info.value)

    wrong_channels = rng.standard_normal((1, 3, 8, 8))  # 3 channels for a conv of 2
    kind, text = message(model, wrong_channels, True)
    assert (kind, text) == message(model, wrong_channels, False)
    assert issubclass(kind, mdl.ShapeError) and text.startswith("layer 0 'c1' (conv2d, <mapping>)")
    float32 = build_model(SPEC)
    wider = rng.standard_normal((1, 2, 8, 8))  # a float64 batch into a float32 model: the layer's own check
    kind, text = message(float32, wider, True)
    assert (kind, text) == message(float32, wider, False)
    assert issubclass(kind, mdl.OpTypeError) and "layer 0 'c1' (conv2d" in text and "dtype float32" in text


def test_a_patched_forward_is_never_bypassed(model, x):
    # a user's instrumentation (the nearest thing minidl has to a forward hook) must still run
    seen = []
    relu = model.layers["r1"]
    object.__setattr__(relu, "forward", lambda t: seen.append(t.shape) or F.relu(t))
    fc2 = model.layers["fc2"]
    original = fc2.forward
    object.__setattr__(fc2, "forward", lambda t: original(t) * 2.0)
    fused, unfused = run(model, x, True), run(model, x, False)
    assert seen == [(5, 4, 8, 8)] * 2
    np.testing.assert_allclose(fused[0], unfused[0], rtol=1e-12, atol=1e-12)
    assert fused[3].get("BiasReLU") == 2  # c2+r2 and fc1+r3 only


def test_graph_models_run_layer_by_layer(x):
    spec = {"name": "graph", "input": [2, 8, 8], "layers": [
        {"name": "c1", "type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1},
        {"name": "r1", "type": "relu"},
        {"name": "sum", "type": "add", "inputs": ["c1", "r1"]},  # c1's output has a second reader
    ]}
    model = build_model(spec, dtype="float64")
    assert not model.sequential
    assert run(model, x, True)[3].get("ReLU") == 1


def fusable(name, params=None):
    return registry("layers").create(name, **(params or {}))


def test_fused_activation_says_when_it_is_safe():
    conv = fusable("conv2d", {"out_channels": 2, "kernel_size": 3})
    relu, linear = fusable("relu"), fusable("linear", {"out_features": 2})
    pool = fusable("maxpool2d", {"kernel_size": 2})
    assert fused_activation(conv, relu) == "relu" and fused_activation(linear, relu) == "relu"
    assert fused_activation(pool, relu) is None  # no fusable_activations
    assert fused_activation(conv, pool) is None  # not an activation
    assert fused_activation(fusable("conv2d", {"out_channels": 2, "kernel_size": 3, "activation": "relu"}),
                            relu) is None  # it has its own

    class Leaky(type(relu)):  # a subclass that changes forward is not the relu it inherits the tag of
        def forward(self, x):
            return F.maximum(x, x * 0.1)

    class Traced(type(conv)):  # a subclass whose forward does more
        def forward(self, x, activation=None):
            return super().forward(x, activation)

    class Called(type(relu)):
        def __call__(self, *args):
            return super().__call__(*args)

    assert fused_activation(conv, Leaky()) is None
    assert fused_activation(Traced(out_channels=2, kernel_size=3), relu) is None
    assert fused_activation(conv, Called()) is None
    patched = fusable("relu")
    object.__setattr__(patched, "forward", patched.forward)
    assert fused_activation(conv, patched) is None


def test_fused_on_a_gpu_as_layer_by_layer_on_the_cpu(cuda, rng):
    x = rng.standard_normal((5, 2, 8, 8))
    cpu = build_model(SPEC, dtype="float64").eval()  # (no dropout: the two devices draw different masks)
    gpu = build_model(SPEC, dtype="float64").eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu.to(cuda)
    results = []
    for model, device, fuse in ((cpu, "cpu", False), (gpu, cuda, None)):
        object.__setattr__(model, "fuse_activations", fuse)
        xt = mdl.tensor(x, requires_grad=True, device=device)
        y = model(xt)
        counts = op_counts(y)
        (y * y).sum().backward()
        results.append([y.numpy(), xt.grad.numpy()] + [p.grad.numpy() for p in model.parameters()])
    assert counts.get("BiasReLU") == 4  # on by default on a GPU
    for a, e in zip(*results):
        np.testing.assert_allclose(a, e, rtol=1e-10, atol=1e-12)
