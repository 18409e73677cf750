"""2-D convolution as an op whose arithmetic is delegated to a pluggable algorithm.

    y  = conv2d(x, W)             gx = conv2d_grad_input(gy, W)   gW = conv2d_grad_weight(x, gy)

The gradient of a convolution is made of convolutions, so each of the three
is a Function whose backward uses the others, and double backward works.
What each computes with arrays is up to a :class:`ConvAlgorithm`: im2col +
GEMM (the reference), Winograd, or one a plugin registers with
``minidl_register_conv_algorithms``. Which one runs is settled once per
:class:`ConvProblem` (shapes, window, groups, dtype, device) by
:mod:`minidl.functions.conv_algorithm`: a documented default rule, autotuning
when asked, or a forced choice.

Outputs keep the storage order the algorithm produces (minidl's own give
channels-last storage, see :mod:`minidl.functions.window`).
"""
from __future__ import annotations

from ..errors import ShapeError
from ..function import Function
from ..tensor import Tensor
from .autocast import cast_operands
from .conv_algorithm import ConvAlgorithm, ConvProblem, select
from .nn import activate, check_activation
from .window import Window

__all__ = ["conv2d", "ConvProblem", "ConvAlgorithm"]


class Conv2d(Function):
    """y = x * W (+ b), computed by ``algorithm``; keeps what the algorithm saved for the weight gradient."""

    def __init__(self, problem: ConvProblem, algorithm: ConvAlgorithm):
        self.problem, self.algorithm = problem, algorithm
        self.saved = None

    def forward(self, x, W, b=None):
        y, self.saved = self.algorithm.forward(x, W, self.problem)
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = Conv2dGradInput(self.problem, self.algorithm)(gy, W) if x.requires_grad else None
        gW = Conv2dGradWeight(self.problem, self.algorithm, self.saved)(x, gy) if W.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gW
        return gx, gW, gy.sum(axis=(0, 2, 3))

    def release(self):
        self.algorithm.release(self.saved)  # the graph is freed: nothing else reads it
        self.saved = None


class Conv2dGradInput(Function):
    """gx = conv2d_grad_input(gy, W): the transposed convolution."""

    def __init__(self, problem: ConvProblem, algorithm: ConvAlgorithm):
        self.problem, self.algorithm = problem, algorithm

    def forward(self, gy, W):
        return self.algorithm.grad_input(gy, W, self.problem)

    def backward(self, ggx):
        gy, W = self.inputs
        g_gy = Conv2d(self.problem, self.algorithm)(ggx, W) if gy.requires_grad else None
        g_W = Conv2dGradWeight(self.problem, self.algorithm)(ggx, gy) if W.requires_grad else None
        return g_gy, g_W


class Conv2dGradWeight(Function):
    """gW = conv2d_grad_weight(x, gy): correlation of the input with the output gradient.

    ``saved`` is borrowed from the forward :class:`Conv2d` (which releases it), or None.
    """

    def __init__(self, problem: ConvProblem, algorithm: ConvAlgorithm, saved=None):
        self.problem, self.algorithm, self.saved = problem, algorithm, saved

    def forward(self, x, gy):
        saved, self.saved = self.saved, None
        return self.algorithm.grad_weight(x, gy, self.problem, saved)

    def backward(self, ggW):
        x, gy = self.inputs
        g_x = Conv2dGradInput(self.problem, self.algorithm)(gy, ggW) if x.requires_grad else None
        g_gy = Conv2d(self.problem, self.algorithm)(x, ggW) if gy.requires_grad else None
        return g_x, g_gy


def check_conv_shapes(x_shape, w_shape, b_shape, groups: int) -> None:
    """Raise :class:`minidl.ShapeError` naming the shapes when x, W and b do not make a convolution."""
    if len(x_shape) != 4 or len(w_shape) != 4:
        raise ShapeError(f"conv2d: expected x (N, C, H, W) and W (O, C/groups, kh, kw), "
                         f"got {tuple(x_shape)} and {tuple(w_shape)}", "conv2d")
    c, o = x_shape[1], w_shape[0]
    if groups < 1 or c % groups or o % groups or w_shape[1] * groups != c:
        raise ShapeError(
            f"conv2d: input of shape {tuple(x_shape)} ({c} channels) and weight of shape {tuple(w_shape)} do not fit "
            f"groups={groups} (need in_channels = W.shape[1] * groups and out_channels divisible by groups)", "conv2d"
        )
    if b_shape is not None and tuple(b_shape) != (o,):
        raise ShapeError(f"conv2d: bias of shape {tuple(b_shape)} does not match {o} output channels", "conv2d")


def conv2d(x, W, b=None, stride=1, padding=0, dilation=1, groups: int = 1, algorithm=None,
           activation: str | None = None) -> Tensor:
    """2-D convolution (cross-correlation, as in PyTorch).

    Args:
        x: (N, C, H, W) input.
        W: (O, C/groups, kh, kw) kernels.
        b: optional (O,) bias.
        stride, padding, dilation: ints or (h, w) pairs.
        groups: split channels into this many independent convolutions
            (AlexNet's two columns are groups=2).
        algorithm: None (the default rule, or what ``mdl.set_conv_algorithm``
            set), ``"auto"`` (time every supporting algorithm once per
            problem and keep the fastest), a registered name such as
            ``"im2col_gemm"``, or a :class:`ConvAlgorithm`. See
            :mod:`minidl.functions.conv_algorithm`.
        activation: None, or ``"relu"`` to return ``relu(conv + b)``: the bias
            add and the ReLU are one op (:func:`~minidl.functions.bias_relu`)
            working in the convolution's output, which keeps less for the
            backward and is one GPU kernel.

    Returns (N, O, oh, ow).

    Example::

        y = F.conv2d(x, W, b, stride=4)        # x (8, 3, 227, 227), W (96, 3, 11, 11) -> (8, 96, 55, 55)
        y = F.conv2d(x, W, b, stride=4, activation="relu")    # = F.relu(F.conv2d(x, W, b, stride=4))
    """
    check_activation(activation, "conv2d")
    x, W, b = cast_operands("conv2d", x, W, b)
    check_conv_shapes(x.shape, W.shape, None if b is None else b.shape, groups)
    win = Window.make((W.shape[2], W.shape[3]), stride, padding, dilation)
    try:
        win.output_hw(x.shape[2], x.shape[3])  # fail early on too-small inputs
    except ValueError as e:
        raise ShapeError(f"conv2d: {e}", "conv2d") from None
    problem = ConvProblem.of(x, W, win, groups)
    if activation is not None:
        return activate(Conv2d(problem, select(problem, algorithm))(x, W), b, activation, "conv2d")
    inputs = (x, W) if b is None else (x, W, b)
    return Conv2d(problem, select(problem, algorithm))(*inputs)
