"""minidl's built-in layers, registered through the public plugin API like any third-party layer."""
import minidl

from .basic import Add, Concat, Dropout, Flatten, Linear, LogSoftmax, ReLU, Softmax
from .conv import Conv2d
from .normalization import LRN, BatchNorm2d
from .pooling import AdaptiveAvgPool2d, AvgPool2d, MaxPool2d

__all__ = [
    "Add", "AdaptiveAvgPool2d", "AvgPool2d", "Concat", "BatchNorm2d", "Conv2d", "Dropout", "Flatten", "LRN", "Linear",
    "LogSoftmax", "MaxPool2d", "ReLU", "Softmax",
]

IMAGE = (2, 3, 7, 7)  # (N, C, H, W) used by the examples below


@minidl.hookimpl
def minidl_register_layers(register):
    # required: keys a model file must give, though the signature defaults them to None for PyTorch's
    # positional order (Conv2d(in_channels, out_channels, kernel_size), Linear(in_features, out_features))
    register("conv2d", Conv2d, required=("out_channels", "kernel_size"), examples=[
        {"params": {"out_channels": 4, "kernel_size": 3, "padding": 1}, "input_shape": IMAGE},
        {"params": {"out_channels": 4, "kernel_size": 3, "stride": 2, "dilation": 2, "groups": 2},
         "input_shape": (2, 4, 9, 9)},
        {"params": {"out_channels": 4, "kernel_size": 3, "padding": 1, "activation": "relu"}, "input_shape": IMAGE},
    ])
    register("maxpool2d", MaxPool2d, aliases=("max_pool2d",), examples=[
        {"params": {"kernel_size": 3, "stride": 2}, "input_shape": IMAGE},
        {"params": {"kernel_size": 2, "padding": 1, "ceil_mode": True}, "input_shape": IMAGE},
    ])
    register("avgpool2d", AvgPool2d, aliases=("avg_pool2d",), examples=[
        {"params": {"kernel_size": 3, "stride": 2, "padding": 1}, "input_shape": IMAGE},
    ])
    register("adaptive_avgpool2d", AdaptiveAvgPool2d, aliases=("adaptive_avg_pool2d",), examples=[
        {"params": {"output_size": 3}, "input_shape": IMAGE},
    ])
    register("lrn", LRN, aliases=("local_response_norm",), examples=[
        {"params": {"size": 3, "alpha": 0.1, "beta": 0.75, "k": 2.0}, "input_shape": (2, 6, 3, 3)},
        {"params": {"size": 4, "alpha": 0.5, "convention": "pytorch"}, "input_shape": (2, 6, 3, 3)},
    ])
    register("batchnorm2d", BatchNorm2d, aliases=("batch_norm2d",), examples=[
        {"params": {}, "input_shape": (4, 3, 3, 3)},
    ])
    register("linear", Linear, aliases=("fc", "dense"), required=("out_features",), examples=[
        {"params": {"out_features": 3}, "input_shape": (2, 5)},
        {"params": {"out_features": 3, "activation": "relu"}, "input_shape": (2, 5)},
    ])
    register("relu", ReLU, examples=[{"params": {}, "input_shape": IMAGE}])
    register("dropout", Dropout, examples=[{"params": {"p": 0.5}, "input_shape": (4, 6)}])
    register("flatten", Flatten, examples=[{"params": {}, "input_shape": IMAGE}])
    register("softmax", Softmax, examples=[{"params": {}, "input_shape": (3, 5)}])
    register("log_softmax", LogSoftmax, examples=[{"params": {}, "input_shape": (3, 5)}])
    # merge layers take several inputs (graph models); checked as one-input layers here
    register("concat", Concat, inputs="many", examples=[{"params": {}, "input_shape": (2, 3, 2, 2)}])
    register("add", Add, inputs="many", examples=[{"params": {}, "input_shape": (2, 3, 2, 2)}])
