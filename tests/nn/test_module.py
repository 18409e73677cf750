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


# ------------------------------------------------------- PyTorch habits
def test_layer_constructors_take_pytorchs_positional_order(torch):
    x = np.random.default_rng(0).standard_normal((1, 3, 9, 9)).astype(np.float32)
    for args in [(3, 64, 3), (3, 8, 3, 2, 1), (3, 8, (3, 5), 2, (1, 2), 1, 1, False), (4, 8, 3, 1, 1, 1, 2)]:
        ours, theirs = mdl.nn.Conv2d(*args), torch.nn.Conv2d(*args)
        assert ours.weight.shape == tuple(theirs.weight.shape)
        assert (ours.bias is None) == (theirs.bias is None)
        xin = x if args[0] == 3 else np.concatenate([x, x[:, :1]], axis=1)
        assert ours(mdl.tensor(xin)).shape == tuple(theirs(torch.from_numpy(xin)).shape)
    assert mdl.nn.Linear(256, 10).weight.shape == tuple(torch.nn.Linear(256, 10).weight.shape)
    assert mdl.nn.Linear(256, 10, False).bias is None
    for name, args in [("MaxPool2d", (3,)), ("MaxPool2d", (3, 2)), ("MaxPool2d", (3, 2, 1)), ("MaxPool2d", (2, 1, 0, 2)),
                       ("AvgPool2d", (3, 2, 1)), ("AvgPool2d", (3, 2, 1, True))]:
        ours, theirs = getattr(mdl.nn, name)(*args), getattr(torch.nn, name)(*args)
        assert ours(mdl.tensor(x)).shape == tuple(theirs(torch.from_numpy(x)).shape)
    bn = mdl.nn.BatchNorm2d(3, 1e-3, 0.2)
    assert (bn.num_features, bn.eps, bn.momentum) == (3, 1e-3, 0.2)


def test_positional_arguments_that_pytorch_reads_differently_are_refused():
    with pytest.raises(TypeError):
        mdl.nn.MaxPool2d(3, 2, 0, 1, True)  # PyTorch's fifth is return_indices; ceil_mode is keyword-only
    with pytest.raises(TypeError):
        mdl.nn.BatchNorm2d(3, 1e-5, 0.1, True, False)  # PyTorch's fifth is track_running_stats
    with pytest.raises(TypeError):
        mdl.nn.LRN(5, 1e-4, 0.75, 2.0, "pytorch")  # the convention is keyword-only
    with pytest.raises(TypeError, match=r"Conv2d\(\) missing 'out_channels'"):
        mdl.nn.Conv2d(64, kernel_size=3)  # an error in PyTorch too: not out_channels=64
    with pytest.raises(TypeError, match=r"missing 'out_channels' and 'kernel_size'"):
        mdl.nn.Conv2d(3)
    with pytest.raises(TypeError, match=r"Linear\(\) missing 'out_features'"):
        mdl.nn.Linear(10)
    p = [mdl.Parameter(np.zeros(2))]
    with pytest.raises(TypeError):
        mdl.optim.SGD(p, 0.1, 0.9, 0.0, 5e-4)  # PyTorch: dampening, weight_decay; keyword-only here
    assert mdl.optim.SGD(p, 0.1, 0.9, weight_decay=5e-4).param_groups[0]["weight_decay"] == 5e-4


def test_lazy_layers_with_keywords():
    conv = mdl.nn.Conv2d(out_channels=8, kernel_size=3, padding=1)
    assert conv.weight is None
    assert conv(mdl.tensor(np.zeros((2, 5, 4, 4), np.float32))).shape == (2, 8, 4, 4)
    assert conv.weight.shape == (8, 5, 3, 3)


def test_add_module_children_modules_apply():
    net = Net()
    extra = Affine(3)
    net.add_module("extra", extra)
    assert net.extra is extra and [n for n, _ in net.named_children()] == ["a", "b", "extra"]
    assert list(net.children()) == [net.a, net.b, extra]
    assert [n for n, _ in net.named_modules()] == ["", "a", "b", "extra"]
    assert [n for n, _ in net.named_modules(prefix="net")] == ["net", "net.a", "net.b", "net.extra"]
    visited = []
    assert net.apply(lambda m: visited.append(type(m).__name__)) is net
    assert visited == ["Affine", "Affine", "Affine", "Net"]  # children first, as in PyTorch
    with pytest.raises(TypeError, match="must be a minidl.nn.Module"):
        net.add_module("bad", 3)
    with pytest.raises(KeyError, match="without '.'"):
        net.add_module("a.b", Affine(1))


def test_buffers_stay_buffers_when_reassigned():
    affine = Affine(3)
    affine(mdl.tensor(np.ones(3)))  # forward does self.calls += 1, which reassigns the attribute
    affine(mdl.tensor(np.ones(3)))
    assert "calls" in affine.state_dict() and affine.state_dict()["calls"].tolist() == [2.0]
    affine.calls = np.full(1, 7.0)
    assert affine.state_dict()["calls"].tolist() == [7.0]
    affine.calls = mdl.tensor([5.0])  # a Tensor's data is kept
    assert isinstance(affine.calls, np.ndarray) and list(affine.buffers())[0].tolist() == [5.0]
    with pytest.raises(TypeError, match="cannot assign a str as buffer 'calls'"):
        affine.calls = "seven"
    affine.register_buffer("count", mdl.tensor([1, 2]))
    assert [n for n, _ in affine.named_buffers(prefix="m")] == ["m.calls", "m.count"]


def test_parameters_are_replaced_only_by_parameters_and_del_removes_them(torch):
    affine = Affine(3)
    with pytest.raises(TypeError, match="cannot assign a Tensor as parameter 'scale'"):
        affine.scale = mdl.tensor(np.ones(3))
    affine.scale = mdl.Parameter(np.full(3, 2.0))
    assert affine.state_dict()["scale"].tolist() == [2.0, 2.0, 2.0]
    del affine.shift
    assert [n for n, _ in affine.named_parameters()] == ["scale"] and "shift" not in affine.state_dict()
    assert not hasattr(affine, "shift")
    reference = torch.nn.Linear(2, 2)
    del reference.bias
    assert [n for n, _ in reference.named_parameters()] == ["weight"]  # the same in PyTorch


def test_module_to_dtype_casts_floating_parameters_and_buffers_in_place():
    net = Net()
    params = list(net.parameters())
    net.a.register_buffer("index", np.arange(3))
    assert net.to(mdl.float32) is net
    assert list(net.parameters()) == params and all(p.dtype == np.float32 for p in params)
    assert net.a.calls.dtype == np.float32 and net.a.index.dtype == np.int64  # integer buffers keep their dtype
    net.double()
    assert all(p.dtype == np.float64 for p in net.parameters())
    net.to("cpu", "float16")
    assert all(p.dtype == np.float16 for p in net.parameters())
    with pytest.raises(TypeError, match="neither a device"):
        net.to("fast")


def test_load_state_dict_reports_missing_and_unexpected_keys(torch):
    net, other = Net(), Net()
    state = {k: v for k, v in net.state_dict().items() if k != "b.shift"}
    state["c.weight"] = np.ones(2)
    result = other.load_state_dict(state, strict=False)
    assert result.missing_keys == ["b.shift"] and result.unexpected_keys == ["c.weight"]
    missing, unexpected = result  # a pair, as PyTorch's _IncompatibleKeys
    reference = torch.nn.Linear(2, 2).load_state_dict({"weight": torch.zeros(2, 2), "extra": torch.zeros(1)},
                                                      strict=False)
    assert (reference.missing_keys, reference.unexpected_keys) == (["bias"], ["extra"])
    assert other.load_state_dict(net.state_dict()) == ([], [])
    with pytest.raises(mdl.nn.StateDictKeyError, match=r"missing \['b.shift'\]; unexpected \['c.weight'\]"):
        other.load_state_dict(state)


def test_load_state_dict_lists_every_shape_mismatch_and_loads_nothing():
    net, other = Net(), Net()
    before = {k: v.copy() for k, v in other.state_dict().items()}
    state = {**net.state_dict(), "a.shift": np.ones(4), "b.scale": np.ones(2)}
    with pytest.raises(ValueError, match=r"a.shift has shape \(4,\) .*; b.scale has shape \(2,\)"):
        other.load_state_dict(state)
    for key, value in other.state_dict().items():
        np.testing.assert_array_equal(value, before[key])


def test_optimizer_state_loads_into_a_rebuilt_model_by_position():
    spec = {"name": "m", "input": [3], "layers": [{"type": "linear", "out_features": 4}, {"type": "relu"},
                                                    {"type": "linear", "out_features": 2}]}
    x = mdl.tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))

    def step(model, opt):
        opt.zero_grad()
        (model(x) ** 2).sum().backward()
        opt.step()

    mdl.random.manual_seed(0)
    model = mdl.build_model(spec)
    opt = mdl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt)
    saved_model, saved_opt = {k: v.copy() for k, v in model.state_dict().items()}, opt.state_dict()
    assert sorted(saved_opt["state"]) == [0, 1, 2, 3]  # by position, as PyTorch's
    step(model, opt)

    rebuilt = mdl.build_model(spec)  # new Parameter objects
    rebuilt.load_state_dict(saved_model)
    opt2 = mdl.optim.SGD(rebuilt.parameters(), lr=0.1, momentum=0.9)
    opt2.load_state_dict({**saved_opt, "state": {str(k): v for k, v in saved_opt["state"].items()}})  # as from JSON
    step(rebuilt, opt2)
    for (name, p), (_, q) in zip(model.named_parameters(), rebuilt.named_parameters()):
        np.testing.assert_array_equal(p.numpy(), q.numpy(), err_msg=name)


def test_deepcopy_of_a_model_as_in_pytorch():
    import copy

    net = Net()
    twin = copy.deepcopy(net)  # a Device holds its array module, which cannot be copied: tensors copy their arrays
    assert [n for n, _ in twin.named_parameters()] == [n for n, _ in net.named_parameters()]
    assert twin.shared is twin.a.scale and twin.a.scale is not net.a.scale  # sharing kept inside the copy
    with mdl.no_grad():
        twin.a.scale += 1.0
    assert net.a.scale.numpy().tolist() == [1.0, 1.0, 1.0]
    with pytest.raises(RuntimeError, match="only leaf tensors can be deep-copied"):
        copy.deepcopy(net.a.scale * 2)
