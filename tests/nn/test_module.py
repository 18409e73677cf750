"""Module: parameter discovery, modes, devices, state dicts, lazy parameters."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.plugins import registry


class Affine(mdl.nn.Module):
    def __init__(self, n):
        super().__init__()
        self.scale = mdl.Parameter(np.ones(n))
        self.shift = mdl.Parameter(np.zeros(n))
        self.register_buffer("calls", np.zeros(1))

    def forward(self, x):
        self.calls += 1
        return x * self.scale + self.shift


class Net(mdl.nn.Module):
    def __init__(self):
        super().__init__()
        self.a = Affine(3)
        self.b = Affine(3)
        self.shared = self.a.scale  # the same Parameter twice is listed once, under its first name

    def forward(self, x):
        return self.b(self.a(x))


def test_named_parameters_and_buffers_in_definition_order():
    net = Net()
    # a module's own parameters come before its children's, as in PyTorch
    assert [n for n, _ in net.named_parameters()] == ["shared", "a.shift", "b.scale", "b.shift"]
    assert [n for n, _ in net.named_buffers()] == ["a.calls", "b.calls"]
    assert net.num_parameters() == 12


def test_train_eval_propagate():
    net = Net().eval()
    assert not net.training and not net.a.training
    assert net.train() is net and net.b.training


def test_state_dict_round_trip_and_errors():
    net, other = Net(), Net()
    for p in net.parameters():
        p.data = np.random.default_rng(0).standard_normal(p.shape)
    other.load_state_dict(net.state_dict())
    for (n1, p1), (n2, p2) in zip(net.named_parameters(), other.named_parameters()):
        np.testing.assert_array_equal(p1.numpy(), p2.numpy())
        assert p1.data is not p2.data
    with pytest.raises(KeyError, match=r"missing \['b.shift'\]"):
        other.load_state_dict({k: v for k, v in net.state_dict().items() if k != "b.shift"})
    with pytest.raises(ValueError, match=r"b.scale has shape \(4,\) in the state but \(3,\) in the model"):
        other.load_state_dict({**net.state_dict(), "b.scale": np.ones(4)})


def test_to_device_keeps_parameter_identity():
    net = Net()
    params = list(net.parameters())
    net.to("cpu:1")
    assert list(net.parameters()) == params
    assert all(p.device == "cpu:1" for p in params)
    y = net(mdl.tensor(np.ones(3), device="cpu:1"))
    assert y.device == "cpu:1"


def test_lazy_parameters_learn_input_shape():
    layer = registry("layers").create("linear", out_features=2)
    assert layer.weight is None and list(layer.parameters()) == []
    y = layer(mdl.tensor(np.ones((4, 7), np.float32)))
    assert y.shape == (4, 2) and layer.weight.shape == (2, 7) and layer.in_features == 7


def test_sequential_and_repr():
    seq = mdl.nn.Sequential(Affine(2), registry("layers").create("relu"))
    assert len(seq) == 2 and isinstance(seq[0], Affine)
    y = seq(mdl.tensor(np.array([-1.0, 2.0])))
    np.testing.assert_array_equal(y.numpy(), [0.0, 2.0])
    assert "(0): Affine(" in repr(seq)


def test_setattr_before_init_is_a_clear_error():
    class Bad(mdl.nn.Module):
        def __init__(self):
            self.w = mdl.Parameter(np.ones(1))

    with pytest.raises(AttributeError, match="must call super"):
        Bad()


def test_initializers_from_specs():
    from minidl.plugins import make_initializer

    mdl.random.manual_seed(0)
    w = make_initializer({"type": "normal", "std": 0.01})((200, 300), "float32", "cpu")
    assert abs(w.std() - 0.01) < 5e-4 and abs(w.mean()) < 5e-4
    np.testing.assert_array_equal(make_initializer(1)((3,), "float32", "cpu"), np.ones(3))
    bound = 1 / np.sqrt(3 * 5 * 5)
    w = make_initializer(None)((64, 3, 5, 5), "float32", "cpu")
    assert w.max() <= bound and w.min() >= -bound and w.max() > 0.9 * bound
    k = make_initializer("kaiming")((1000, 50), "float64", "cpu")
    assert abs(k.std() - np.sqrt(2 / 50)) < 0.01
    x = make_initializer("xavier")((100, 100), "float64", "cpu")
    assert abs(x).max() <= np.sqrt(6 / 200)
    with pytest.raises(KeyError, match="unknown initializer type 'gaussian'"):
        make_initializer("gaussian")


def test_paper_init_in_layers():
    mdl.random.manual_seed(0)
    conv = registry("layers").create("conv2d", out_channels=256, kernel_size=5, in_channels=48,
                                     weight_init={"type": "normal", "std": 0.01}, bias_init=1)
    np.testing.assert_array_equal(conv.bias.numpy(), np.ones(256))
    assert abs(conv.weight.numpy().std() - 0.01) < 2e-4
