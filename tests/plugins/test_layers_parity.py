"""Built-in layers against PyTorch (CPU) on the same inputs and weights, float64."""
from __future__ import annotations

import numpy as np
import pytest

import minidl as mdl
from minidl.plugins import registry


def make(name, **params):
    return registry("layers").create(name, **params)


def run_both(torch, layer, torch_fn, x, params_to_torch=()):
    """Forward and input/parameter gradients of a minidl layer and a torch function, same upstream grad."""
    xm = mdl.tensor(x, requires_grad=True)
    y = layer(xm)
    gy = np.random.default_rng(5).standard_normal(y.shape)
    y.backward(gy)
    xt = torch.tensor(x, requires_grad=True)
    torch_params = [torch.tensor(p.numpy(), requires_grad=True) for p in params_to_torch]
    yt = torch_fn(xt, *torch_params)
    yt.backward(torch.tensor(gy))
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(xm.grad.numpy(), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    for p, pt in zip(params_to_torch, torch_params):
        np.testing.assert_allclose(p.grad.numpy(), pt.grad.numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("stride,padding,dilation,groups", [
    (1, 0, 1, 1), (2, 1, 1, 1), (1, 2, 2, 1), (1, 1, 1, 2), (4, 2, 1, 1), (3, 0, 2, 2),
])
def test_conv2d(torch, stride, padding, dilation, groups):
    x = np.random.default_rng(0).standard_normal((2, 4, 11, 10))
    layer = make("conv2d", out_channels=6, kernel_size=3, stride=stride, padding=padding, dilation=dilation,
                 groups=groups, in_channels=4)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    run_both(torch, layer, lambda xt, w, b: torch.nn.functional.conv2d(xt, w, b, stride, padding, dilation, groups),
             x, [layer.weight, layer.bias])


def test_conv2d_alexnet_conv1_geometry(torch):
    x = np.random.default_rng(1).standard_normal((1, 3, 35, 35))
    layer = make("conv2d", out_channels=4, kernel_size=11, stride=4, padding=2, in_channels=3)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    run_both(torch, layer, lambda xt, w, b: torch.nn.functional.conv2d(xt, w, b, 4, 2), x,
             [layer.weight, layer.bias])


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode", [(3, 2, 0, False), (2, 2, 0, False), (3, 2, 1, True),
                                                               (3, 1, 1, False)])
def test_pools(torch, kernel, stride, padding, ceil_mode):
    x = np.random.default_rng(2).standard_normal((2, 3, 9, 8))
    run_both(torch, make("maxpool2d", kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode),
             lambda xt: torch.nn.functional.max_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode), x)
    for include in (True, False):
        run_both(torch, make("avgpool2d", kernel_size=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                             count_include_pad=include),
                 lambda xt: torch.nn.functional.avg_pool2d(xt, kernel, stride, padding, ceil_mode=ceil_mode,
                                                           count_include_pad=include), x)


@pytest.mark.parametrize("size", [(6, 6), (4, 3), (1, 1)])
def test_adaptive_avgpool(torch, size):
    x = np.random.default_rng(3).standard_normal((2, 3, 13, 11))
    run_both(torch, make("adaptive_avgpool2d", output_size=size),
             lambda xt: torch.nn.functional.adaptive_avg_pool2d(xt, size), x)


@pytest.mark.parametrize("size", [5, 4, 3])
def test_lrn_pytorch_convention_matches_torch(torch, size):
    x = np.random.default_rng(4).standard_normal((2, 7, 3, 3)) * 3
    run_both(torch, make("lrn", size=size, alpha=0.3, beta=0.75, k=2.0, convention="pytorch"),
             lambda xt: torch.nn.functional.local_response_norm(xt, size, alpha=0.3, beta=0.75, k=2.0), x)


def test_lrn_paper_convention_does_not_divide_alpha(torch):
    # The paper's alpha equals PyTorch's alpha * size.
    x = np.random.default_rng(5).standard_normal((2, 7, 3, 3)) * 3
    run_both(torch, make("lrn", size=5, alpha=0.1, beta=0.75, k=2.0),
             lambda xt: torch.nn.functional.local_response_norm(xt, 5, alpha=0.1 * 5, beta=0.75, k=2.0), x)


def test_lrn_paper_formula_pinned():
    """b = a / (k + alpha * sum_{j=i-2}^{i+2} a_j^2)^beta, computed by hand for one element."""
    x = np.arange(1.0, 8.0).reshape(1, 7, 1, 1)
    y = make("lrn", size=5, alpha=1e-2, beta=0.75, k=2.0)(mdl.tensor(x)).numpy()
    a = x[0, :, 0, 0]
    expected_3 = a[3] / (2.0 + 1e-2 * (a[1:6] ** 2).sum()) ** 0.75
    expected_0 = a[0] / (2.0 + 1e-2 * (a[0:3] ** 2).sum()) ** 0.75  # window clipped at the edge
    assert y[0, 3, 0, 0] == pytest.approx(expected_3, rel=1e-12)
    assert y[0, 0, 0, 0] == pytest.approx(expected_0, rel=1e-12)
    assert make("lrn").convention == "paper"


def test_linear(torch):
    x = np.random.default_rng(6).standard_normal((4, 5))
    layer = make("linear", out_features=3, in_features=5)
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    run_both(torch, layer, lambda xt, w, b: torch.nn.functional.linear(xt, w, b), x, [layer.weight, layer.bias])


def test_dropout_eval_is_identity_and_train_is_inverted(torch):
    x = np.random.default_rng(7).standard_normal((50, 40))
    layer = make("dropout", p=0.5).eval()
    run_both(torch, layer, lambda xt: torch.nn.functional.dropout(xt, 0.5, training=False), x)
    layer.train()
    y = layer(mdl.tensor(x)).numpy()
    kept = y != 0
    np.testing.assert_allclose(y[kept], 2 * x[kept])
    assert 0.4 < kept.mean() < 0.6


def test_batchnorm_train_and_eval(torch):
    rng = np.random.default_rng(8)
    layer = make("batchnorm2d", num_features=3)
    for p in layer.parameters():
        p.data = rng.standard_normal(3)
    layer.register_buffer("running_mean", np.zeros(3))
    layer.register_buffer("running_var", np.ones(3))
    reference = torch.nn.BatchNorm2d(3).double()
    with torch.no_grad():
        reference.weight.copy_(torch.tensor(layer.weight.numpy()))
        reference.bias.copy_(torch.tensor(layer.bias.numpy()))
    for _ in range(3):
        layer.zero_grad()
        x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
        run_both(torch, layer, lambda xt, w, b: torch.nn.functional.batch_norm(
            xt, reference.running_mean, reference.running_var, w, b, training=True, momentum=0.1, eps=1e-5),
            x, [layer.weight, layer.bias])
    np.testing.assert_allclose(layer.running_mean, reference.running_mean.numpy(), rtol=1e-10)
    np.testing.assert_allclose(layer.running_var, reference.running_var.numpy(), rtol=1e-10)
    layer.eval()
    layer.zero_grad()
    x = rng.standard_normal((4, 3, 5, 5))
    run_both(torch, layer, lambda xt, w, b: torch.nn.functional.batch_norm(
        xt, reference.running_mean, reference.running_var, w, b, training=False, eps=1e-5),
        x, [layer.weight, layer.bias])


def test_flatten_softmax_log_softmax(torch):
    x = np.random.default_rng(9).standard_normal((3, 2, 2, 2))
    run_both(torch, make("flatten"), lambda xt: torch.flatten(xt, 1), x)
    z = np.random.default_rng(10).standard_normal((3, 5)) * 10
    run_both(torch, make("softmax"), lambda xt: torch.softmax(xt, 1), z)
    run_both(torch, make("log_softmax"), lambda xt: torch.log_softmax(xt, 1), z)
