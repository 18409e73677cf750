"""Linear, activation, shape and dropout layers."""
from __future__ import annotations

import minidl as mdl
import minidl.functions as F
from minidl.functions.nn import check_activation
from minidl.plugins import make_initializer


class Linear(mdl.nn.Module):
    """y = x W^T + b with W of shape (out_features, in_features), as in PyTorch.

    Positional arguments follow PyTorch: ``Linear(9216, 4096)``. With
    keywords, ``in_features`` may be left out and is learned from the first
    input (``Linear(out_features=10)``). ``activation="relu"`` returns
    ``relu(x W^T + b)``, the bias add and the ReLU as one op
    (:func:`minidl.functions.bias_relu`); a model built from YAML does the
    same on a GPU for a linear layer followed by a relu layer (see
    :attr:`minidl.builder.Model.fuse_activations`).

    YAML: ``{type: linear, out_features: 4096, weight_init: {type: normal, std: 0.01}, bias_init: 1,
    activation: relu}``
    """

    fusable_activations = ("relu",)  # forward(x, activation=...) applies these (minidl.builder fuses with them)

    def __init__(self, in_features: int | None = None, out_features: int | None = None, bias: bool = True, *,
                 weight_init=None, bias_init=None, activation: str | None = None):
        super().__init__()
        if out_features is None:
            raise TypeError("Linear() missing 'out_features': give Linear(in_features, out_features) as in PyTorch, "
                            "or out_features=... to learn in_features from the first input")
        if out_features < 1:
            raise ValueError(f"linear: out_features must be positive, got {out_features}")
        self.out_features = out_features
        self.in_features = in_features
        self.use_bias = bias
        self.activation = check_activation(activation, "linear")
        self.weight_init = make_initializer(weight_init)
        self.bias_init = make_initializer(bias_init)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if in_features is not None:
            self.build((in_features,))

    def build(self, input_shape, device=None, dtype="float32") -> None:
        if len(input_shape) != 1:
            raise ValueError(f"linear: expects (N, features) inputs, got per-sample shape {tuple(input_shape)}; "
                             "add a flatten layer before it")
        self.in_features = input_shape[0]
        shape = (self.out_features, self.in_features)
        self.weight = mdl.Parameter(self.weight_init(shape, dtype, device), device=device)
        if self.use_bias:
            self.bias = mdl.Parameter(self.bias_init((self.out_features,), dtype, device, fan_in=self.in_features),
                                      device=device)

    def output_shape(self, input_shape) -> tuple:
        if len(input_shape) != 1:
            raise ValueError(f"linear: expects (N, features) inputs, got per-sample shape {tuple(input_shape)}; "
                             "add a flatten layer before it")
        if self.in_features is not None and input_shape[0] != self.in_features:
            raise ValueError(f"linear expects {self.in_features} input features, got {input_shape[0]}")
        return (self.out_features,)

    def macs(self, input_shape) -> int:
        return input_shape[0] * self.out_features

    def output_slice(self, lo: int, hi: int):
        """For device strategies: output features [lo, hi) from every input feature."""
        rows = slice(lo, hi)

        def share(inputs, params):
            return F.linear(inputs[0], params[0], params[1] if self.use_bias else None, activation=self.activation)

        params = [(self.weight, rows)] + ([(self.bias, rows)] if self.use_bias else [])
        return 0, self.in_features, share, params

    def forward(self, x, activation: str | None = None):
        """x (N, in_features) -> (N, out_features), with :attr:`activation` applied, or ``activation`` when
        given (the builder passes the relu layer that follows it)."""
        if self.weight is None:
            self.build(x.shape[1:], x.device, x.dtype)
        return F.linear(x, self.weight, self.bias, activation=activation or self.activation)

    def extra_repr(self):
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.use_bias}"
                + (f", activation={self.activation!r}" if self.activation is not None else ""))


def same_channels(self, lo, hi, input_shape):
    """For device strategies: a layer that treats channels independently keeps a channel range as is."""
    return lo, hi


class ReLU(mdl.nn.Module):
    """max(x, 0). In a model built from YAML on a GPU, a relu right after a conv2d or linear layer runs inside
    that layer's op (see :attr:`minidl.builder.Model.fuse_activations`); it is still its own layer."""

    channel_map = same_channels
    elementwise_activation = "relu"  # forward is exactly F.relu: a layer before it may apply it instead

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        return F.relu(x)


class Dropout(mdl.nn.Module):
    """Inverted dropout with probability ``p`` (AlexNet: 0.5 after fc6 and fc7); identity in eval mode."""

    channel_map = same_channels
    stochastic = True  # device strategies draw its masks in device order, reproducibly

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout: p must be in [0, 1), got {p}")
        self.p = p

    def output_shape(self, input_shape):
        return tuple(input_shape)

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(mdl.nn.Module):
    """(N, C, H, W) -> (N, C*H*W) (all axes from ``start_dim`` on, merged)."""

    def __init__(self, start_dim: int = 1):
        super().__init__()
        if start_dim < 1:
            raise ValueError(f"flatten: start_dim must be >= 1 (the batch axis stays), got {start_dim}")
        self.start_dim = start_dim

    def output_shape(self, input_shape):
        if self.start_dim > len(input_shape):
            raise ValueError(f"flatten: start_dim {self.start_dim} is past the last axis of inputs of per-sample "
                             f"shape {tuple(input_shape)}")
        keep = tuple(input_shape[: self.start_dim - 1])
        rest = 1
        for n in input_shape[self.start_dim - 1:]:
            rest *= n
        return keep + (rest,)

    def channel_map(self, lo, hi, input_shape):
        """For device strategies: channels [lo, hi) of (C, H, W) are features [lo*H*W, hi*H*W)."""
        if self.start_dim != 1:
            raise ValueError("flatten: only start_dim=1 maps channels to features")
        per_channel = 1
        for n in input_shape[1:]:
            per_channel *= n
        return lo * per_channel, hi * per_channel

    def forward(self, x):
        return F.flatten(x, self.start_dim)


class Softmax(mdl.nn.Module):
    """Softmax along ``axis`` (default: the class axis 1)."""

    def __init__(self, axis: int = 1):
        super().__init__()
        self.axis = axis

    def output_shape(self, input_shape):
        ndim = len(input_shape) + 1  # with the batch axis
        if not -ndim <= self.axis < ndim:
            raise ValueError(f"axis {self.axis} is out of range for inputs of per-sample shape {tuple(input_shape)}")
        return tuple(input_shape)

    def forward(self, x):
        return F.softmax(x, self.axis)


class LogSoftmax(Softmax):
    """Log-softmax along ``axis`` (default: the class axis 1)."""

    def forward(self, x):
        return F.log_softmax(x, self.axis)


class Concat(mdl.nn.Module):
    """Join several inputs along ``axis`` (default 1, the channels): a merge layer for graph models."""

    def __init__(self, axis: int = 1):
        super().__init__()
        if axis == 0:
            raise ValueError("concat: axis 0 is the batch axis")
        self.axis = axis

    def output_shape(self, *input_shapes):
        axis = self.axis - 1 if self.axis > 0 else self.axis  # per-sample shapes have no batch axis
        first = list(input_shapes[0])
        if not -len(first) <= axis < len(first):
            raise ValueError(f"concat: axis {self.axis} is out of range for inputs of per-sample shape "
                             f"{tuple(first)}")
        for i, shape in enumerate(input_shapes[1:], 1):
            if len(shape) != len(first) or any(a != b for k, (a, b) in enumerate(zip(first, shape))
                                               if k != axis % len(first)):
                raise ValueError(f"concat: inputs 0 and {i} have shapes {tuple(input_shapes[0])} and {tuple(shape)}, "
                                 f"which differ outside axis {self.axis}")
        first[axis] = sum(shape[axis] for shape in input_shapes)
        return tuple(first)

    def forward(self, *xs):
        return F.concatenate(xs, axis=self.axis)


class Add(mdl.nn.Module):
    """Elementwise sum of several inputs of one shape (residual connections)."""

    def output_shape(self, *input_shapes):
        for i, shape in enumerate(input_shapes[1:], 1):
            if tuple(shape) != tuple(input_shapes[0]):
                raise ValueError(f"add: inputs 0 and {i} have shapes {tuple(input_shapes[0])} and {tuple(shape)}")
        return tuple(input_shapes[0])

    def forward(self, *xs):
        total = xs[0]
        for x in xs[1:]:
            total = total + x
        return total
