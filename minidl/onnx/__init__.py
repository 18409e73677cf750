"""ONNX export and import (needs the ``onnx`` package: ``pip install 'minidl[onnx]'``).

    import minidl as mdl
    model = mdl.load("runs/alexnet-mini/checkpoints/ckpt-000006552.safetensors").model
    mdl.onnx.export(model, "alexnet-mini.onnx")          # any batch size; input_shape=(1, 1, 28, 28) fixes it
    imported = mdl.onnx.load("alexnet-torchvision.onnx")  # a minidl Model, in evaluation mode

``onnx`` is imported when one of these runs, not by ``import minidl``.
"""
from .common import DEFAULT_OPSET, OnnxError
from .exporter import OnnxGraph, export, to_model_proto
from .importer import load

__all__ = ["export", "load", "to_model_proto", "OnnxError", "OnnxGraph", "DEFAULT_OPSET"]
