"""Normalization layers: local response normalization (AlexNet) and batch normalization."""
from __future__ import annotations

import numpy as np

import minidl as mdl
import minidl.functions as F
from minidl.plugins import make_initializer


class LRN(mdl.nn.Module):
    """Local response normalization across channels.

    ``convention: paper`` (default, Krizhevsky et al.): divide by
    (k + alpha * sum a^2)^beta. ``convention: pytorch`` (PyTorch, Caffe):
    divide by (k + alpha/size * sum a^2)^beta. The paper's settings are
    size 5, alpha 1e-4, beta 0.75, k 2.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0, *,
                 convention: str = "paper"):
        super().__init__()
        if convention not in F.normalization.LRN_CONVENTIONS:
            raise ValueError(f"lrn: convention must be one of {F.normalization.LRN_CONVENTIONS}, got {convention!r}")
        if size < 1:
            raise ValueError(f"lrn: size must be >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k, self.convention = size, alpha, beta, k, convention

    def output_shape(self, input_shape) -> tuple:
        return tuple(input_shape)

    def channel_halo(self):
        """For device strategies: output channel c reads input channels c - size//2 .. c + (size-1)//2."""
        return self.size // 2, (self.size - 1) // 2

    def forward(self, x):
        return F.local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.convention)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, convention={self.convention}"


class BatchNorm2d(mdl.nn.Module):
    """Batch normalization over (N, C, H, W) with learned scale and shift (PyTorch semantics).

    Uses batch statistics in training and running statistics in evaluation.
    """

    def __init__(self, num_features: int | None = None, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True, *, weight_init=1.0, bias_init=0.0):
        super().__init__()
        self.eps, self.momentum, self.affine = eps, momentum, affine
        self.num_features = None
        self.weight_init = make_initializer(weight_init)
        self.bias_init = make_initializer(bias_init)
        self.register_parameter("weight", None)
        self.register_parameter("bias", None)
        if num_features is not None:
            if num_features < 1:
                raise ValueError(f"batchnorm2d: num_features must be positive, got {num_features}")
            self.build((num_features,))

    def build(self, input_shape, device=None, dtype="float32") -> None:
        c = input_shape[0]
        self.num_features = c
        if self.affine:
            self.weight = mdl.Parameter(self.weight_init((c,), dtype, device), device=device)
            self.bias = mdl.Parameter(self.bias_init((c,), dtype, device), device=device)
        xp = mdl.Device(device or "cpu").xp
        self.register_buffer("running_mean", xp.zeros(c, dtype=np.dtype(dtype)))
        self.register_buffer("running_var", xp.ones(c, dtype=np.dtype(dtype)))

    def output_shape(self, input_shape) -> tuple:
        if self.num_features is not None and input_shape[0] != self.num_features:
            raise ValueError(f"batchnorm2d expects {self.num_features} channels, got {input_shape[0]}")
        return tuple(input_shape)

    def forward(self, x):
        if self.num_features is None:
            self.build(x.shape[1:], x.device, x.dtype)
        return F.batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                            training=self.training,
                            momentum=self.momentum, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"
