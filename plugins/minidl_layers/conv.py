"""Conv2d: 2-D convolution with stride, padding, dilation, groups and bias."""
from __future__ import annotations

import minidl as mdl
import minidl.functions as F
from minidl.functions import ConvProblem, Window
from minidl.functions.autocast import cast_operands
from minidl.functions.conv_algorithm import AUTO, get_algorithm, select
from minidl.functions.nn import check_activation
from minidl.plugins import make_initializer


class Conv2d(mdl.nn.Module):
    """2-D convolution over (N, C, H, W); weights (out_channels, in_channels/groups, kh, kw).

    Positional arguments follow PyTorch: ``Conv2d(3, 64, 3)`` is 3 input
    channels, 64 output channels, 3x3 kernels. With keywords,
    ``in_channels`` may be left out and is learned from the first input
    (``Conv2d(out_channels=64, kernel_size=3)``). AlexNet's two columns are
    ``groups=2``. ``weight_init``/``bias_init`` (keyword-only) take an
    initializer spec (``{type: normal, std: 0.01}``, a number for a constant);
    the default is PyTorch's U(-1/sqrt(fan_in), 1/sqrt(fan_in)). ``algorithm``
    forces a convolution algorithm (``im2col_gemm``, ``winograd``, a plugin's,
    or ``auto`` to time them once per shape); by default the rule in
    :mod:`minidl.functions.conv_algorithm` picks one per shape, device and
    dtype. The choices made are kept in :attr:`algorithm_choices` (and in
    checkpoints). ``activation="relu"`` (Keras's habit) returns
    ``relu(conv + bias)``, the bias add and the ReLU as one op
    (:func:`minidl.functions.bias_relu`); a model built from YAML does the
    same on a GPU for a conv2d layer followed by a relu layer (see
    :attr:`minidl.builder.Model.fuse_activations`).

    YAML: ``{type: conv2d, out_channels: 96, kernel_size: 11, stride: 4, activation: relu}``
    """

    fusable_activations = ("relu",)  # forward(x, activation=...) applies these (minidl.builder fuses with them)

    def __init__(self, in_channels: int | None = None, out_channels: int | None = None,
                 kernel_size: int | tuple | None = None, stride: int | tuple = 1, padding: int | tuple = 0,
                 dilation: int | tuple = 1, groups: int = 1, bias: bool = True, *, weight_init=None, bias_init=None,
                 algorithm: str | None = None, activation: str | None = None):
        super().__init__()
        if out_channels is None or kernel_size is None:
            missing = " and ".join(repr(n) for n, v in (("out_channels", out_channels), ("kernel_size", kernel_size))
                                   if v is None)
            raise TypeError(f"Conv2d() missing {missing}: give Conv2d(in_channels, out_channels, kernel_size) as in "
                            "PyTorch, or out_channels=..., kernel_size=... to learn in_channels from the first input")
        if in_channels is not None and in_channels < 1:
            raise ValueError(f"conv2d: in_channels must be positive, got {in_channels}")
        if out_channels < 1 or groups < 1 or out_channels % groups:
            raise ValueError(f"conv2d: out_channels={out_channels} must be positive and divisible by groups={groups}")
        self.window = Window.make(kernel_size, stride, padding, dilation)
        self.out_channels = out_channels
        self.groups = groups
        self.use_bias = bias
        self.in_channels = in_channels
        if algorithm is not None and algorithm != AUTO:
            get_algorithm(algorithm)  # an unknown name fails when the model is built
        self.algorithm = algorithm
        self.activation = check_activation(activation, "conv2d")
        self.algorithm_choices = {}  # ConvProblem -> algorithm name, as the layer ran
        self.weight_init = make_initializer(weight_init)
        self.bias_init = make_initializer(bias_init)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if in_channels is not None:
            self.build((in_channels,))

    def build(self, input_shape, device=None, dtype="float32") -> None:
        """Create the parameters for inputs of per-sample shape (C, H, W)."""
        in_channels = input_shape[0]
        if in_channels < 1 or in_channels % self.groups:
            raise ValueError(f"conv2d: {in_channels} input channels are not divisible by groups={self.groups}")
        self.in_channels = in_channels
        w = self.window
        shape = (self.out_channels, in_channels // self.groups, w.kh, w.kw)
        fan_in = shape[1] * w.kh * w.kw
        self.weight = mdl.Parameter(self.weight_init(shape, dtype, device), device=device)
        if self.use_bias:
            self.bias = mdl.Parameter(self.bias_init((self.out_channels,), dtype, device, fan_in=fan_in), device=device)

    def output_shape(self, input_shape) -> tuple:
        if len(input_shape) != 3:
            raise ValueError(f"conv2d expects (C, H, W) inputs, got per-sample shape {tuple(input_shape)}")
        c, h, w = input_shape
        if self.in_channels is not None and c != self.in_channels:
            raise ValueError(f"conv2d expects {self.in_channels} input channels, got {c}")
        if c % self.groups:
            raise ValueError(f"conv2d: {c} input channels are not divisible by groups={self.groups}")
        oh, ow = self.window.output_hw(h, w)
        return (self.out_channels, oh, ow)

    def macs(self, input_shape) -> int:
        """Multiply-accumulates per sample: one per kernel tap per output element."""
        out_c, oh, ow = self.output_shape(input_shape)
        return out_c * oh * ow * (input_shape[0] // self.groups) * self.window.kh * self.window.kw

    def output_slice(self, lo: int, hi: int):
        """For device strategies: output channels [lo, hi) on their own (see minidl.parallel.placement).

        With groups, the cut must fall between groups: each share is then a
        grouped convolution of its own groups' input channels.
        """
        out_per_group = self.out_channels // self.groups
        if self.groups > 1 and (lo % out_per_group or hi % out_per_group):
            raise ValueError(f"output channels {lo}..{hi} cut through a group (groups={self.groups} of "
                             f"{out_per_group} channels); use a device count that divides {self.groups}")
        if self.groups == 1:
            in_lo, in_hi, groups = 0, self.in_channels, 1
        else:
            in_per_group = self.in_channels // self.groups
            in_lo, in_hi, groups = lo // out_per_group * in_per_group, hi // out_per_group * in_per_group, \
                (hi - lo) // out_per_group
        w, rows = self.window, slice(lo, hi)

        def share(inputs, params):
            return F.conv2d(inputs[0], params[0], params[1] if self.use_bias else None, stride=(w.sy, w.sx),
                            padding=(w.ph, w.pw), dilation=(w.dy, w.dx), groups=groups, algorithm=self.algorithm,
                            activation=self.activation)

        params = [(self.weight, rows)] + ([(self.bias, rows)] if self.use_bias else [])
        return in_lo, in_hi, share, params

    def choose_algorithm(self, problem: ConvProblem, record: bool = True):
        """The algorithm this layer runs ``problem`` with: the one chosen before (or restored from a
        checkpoint), else what :attr:`algorithm` asks for (kept in :attr:`algorithm_choices` if ``record``)."""
        name = self.algorithm_choices.get(problem)
        if name is not None:
            return get_algorithm(name)
        chosen = select(problem, self.algorithm)
        if record:
            self.algorithm_choices[problem] = chosen.name
        return chosen

    def problem_for(self, input_shape, batch: int = 1, dtype="float32", device="cpu:0") -> ConvProblem:
        """The convolution a batch of ``batch`` inputs of per-sample shape (C, H, W) makes (for summaries)."""
        w = self.window
        w_shape = (self.out_channels, input_shape[0] // self.groups, w.kh, w.kw)
        return ConvProblem.make((batch,) + tuple(input_shape), w_shape, w.stride, w.padding, w.dilation,
                                self.groups, dtype, device)

    def forward(self, x, activation: str | None = None):
        """The convolution of x (N, C, H, W), with :attr:`activation` applied, or ``activation`` when given
        (the builder passes the relu layer that follows it)."""
        if self.weight is None:
            self.build(x.shape[1:], x.device, x.dtype)
        w = self.window
        x, weight, bias = cast_operands("conv2d", x, self.weight, self.bias)  # the dtypes conv2d will compute in
        algorithm = None
        if x.ndim == 4 and x.shape[1] == weight.shape[1] * self.groups:  # else conv2d names the shapes
            algorithm = self.choose_algorithm(ConvProblem.of(x, weight, w, self.groups))
        return F.conv2d(x, weight, bias, stride=(w.sy, w.sx), padding=(w.ph, w.pw), dilation=(w.dy, w.dx),
                        groups=self.groups, algorithm=algorithm, activation=activation or self.activation)

    def extra_repr(self):
        w = self.window
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({w.kh}, {w.kw}), stride=({w.sy}, {w.sx}), "
                f"padding=({w.ph}, {w.pw}), groups={self.groups}"
                + (f", algorithm={self.algorithm!r}" if self.algorithm is not None else "")
                + (f", activation={self.activation!r}" if self.activation is not None else ""))
