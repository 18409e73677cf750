"""Pooling layers: max (overlapping windows as in AlexNet), average, adaptive average."""
from __future__ import annotations

import minidl as mdl
import minidl.functions as F
from minidl.functions import Window

from .basic import same_channels


class MaxPool2d(mdl.nn.Module):
    """Max over windows; AlexNet's overlapping pooling is ``kernel_size: 3, stride: 2``.

    ``stride`` defaults to ``kernel_size`` (non-overlapping). Positional
    arguments follow PyTorch (kernel_size, stride, padding, dilation);
    ``ceil_mode`` is keyword-only (PyTorch's fifth is ``return_indices``).
    """

    channel_map = same_channels

    def __init__(self, kernel_size: int | tuple, stride: int | tuple | None = None, padding: int | tuple = 0,
                 dilation: int | tuple = 1, *, ceil_mode: bool = False):
        super().__init__()
        self.window = Window.make(kernel_size, kernel_size if stride is None else stride, padding, dilation)
        if 2 * self.window.ph > self.window.kh or 2 * self.window.pw > self.window.kw:
            # as in PyTorch: else a window can hold only padding (no maximum; a 0/0 mean)
            raise ValueError(f"padding {padding} must be at most half the kernel size {kernel_size}")
        self.args = dict(kernel_size=kernel_size, stride=stride, padding=padding, dilation=dilation,
                         ceil_mode=ceil_mode)
        self.ceil_mode = ceil_mode

    def output_shape(self, input_shape) -> tuple:
        if len(input_shape) != 3:
            raise ValueError(f"pooling expects (C, H, W) inputs, got per-sample shape {tuple(input_shape)}")
        c, h, w = input_shape
        return (c,) + self.window.output_hw(h, w, self.ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, **self.args)

    def extra_repr(self):
        return ", ".join(f"{k}={v}" for k, v in self.args.items())


class AvgPool2d(MaxPool2d):
    """Mean over windows (padding zeros counted unless ``count_include_pad: false``)."""

    def __init__(self, kernel_size: int | tuple, stride: int | tuple | None = None, padding: int | tuple = 0,
                 ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, 1, ceil_mode=ceil_mode)
        self.args = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                         count_include_pad=count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, **self.args)


class AdaptiveAvgPool2d(mdl.nn.Module):
    """Average-pool to a fixed ``output_size`` (torchvision's AlexNet uses 6)."""

    channel_map = same_channels

    def __init__(self, output_size: int | tuple):
        super().__init__()
        self.output_size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        if len(self.output_size) != 2 or not all(
                isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in self.output_size):
            raise ValueError(f"adaptive_avgpool2d: output_size must be a positive int or a pair of them, "
                             f"got {output_size!r}")

    def output_shape(self, input_shape) -> tuple:
        if len(input_shape) != 3:
            raise ValueError(f"adaptive_avgpool2d expects (C, H, W) inputs, got per-sample shape {tuple(input_shape)}")
        return (input_shape[0],) + self.output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"
