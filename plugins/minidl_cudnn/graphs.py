"""cuDNN frontend graphs for the three passes of one convolution, and the handles that run them.

Only the classic graph API of NVIDIA's ``cudnn`` Python module (package
nvidia-cudnn-frontend) is used, the part its releases 1.x keep unchanged:
``pygraph(io_data_type=, intermediate_data_type=, compute_data_type=, handle=)``,
``tensor(name=, dim=, stride=, data_type=)``, ``conv_fprop(image=, weight=)``,
``conv_dgrad(loss=, filter=)``, ``conv_wgrad(image=, loss=)`` (each with
``padding=, stride=, dilation=, compute_data_type=``), then ``validate``,
``build_operation_graph``, ``create_execution_plans``, the numerical-note
filters, ``check_support``, ``build_plans``, ``get_workspace_size`` and
``execute({uid: device pointer}, workspace pointer, handle=)``.

Nothing here imports ``cudnn`` when the module is imported: :func:`unavailable`
does, once, and only where a CUDA GPU is present.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import numpy

from minidl.backend import StreamBoundHandles, cuda_available
from minidl.functions.window import empty_nchw, is_channels_last

__all__ = ["INSTALL_HINT", "Plan", "build_plan", "channels_last_for", "dense", "frontend", "handle_for",
           "installed", "unavailable"]

INSTALL_HINT = "pip install 'minidl[cudnn]'"
DTYPES = ("float16", "bfloat16", "float32", "float64")


def installed() -> bool:
    """True when a ``cudnn`` module can be imported here (found, not imported)."""
    return importlib.util.find_spec("cudnn") is not None


@functools.lru_cache(maxsize=None)
def unavailable() -> str | None:
    """Why no convolution can run through cuDNN in this process, or None. Settled once."""
    if not installed():
        return f"nvidia-cudnn-frontend is not installed ({INSTALL_HINT})"
    if not cuda_available():
        return "no CUDA GPU with CuPy here, and cuDNN runs on CUDA devices only"
    try:
        cudnn = importlib.import_module("cudnn")
    except Exception as e:  # a broken install must not break minidl
        return f"import cudnn failed ({type(e).__name__}: {e})"
    if not hasattr(cudnn, "pygraph"):
        return f"the 'cudnn' module at {getattr(cudnn, '__file__', '?')} is not NVIDIA's cuDNN frontend"
    try:
        version = int(cudnn.backend_version())
    except Exception as e:  # libcudnn was not found when cudnn was imported
        return f"the cuDNN library cannot be loaded ({e}); {INSTALL_HINT} brings nvidia-cudnn-cu13"
    if version < 90000:
        return f"cuDNN {version} is too old: needs 9 or newer ({INSTALL_HINT})"
    return None


def frontend():
    """The ``cudnn`` module; call only once :func:`unavailable` returned None."""
    return importlib.import_module("cudnn")


def channels_last_for(dtype) -> bool:
    """The storage the graphs of ``dtype`` use: NHWC activations with KRSC kernels (tensor-core friendly),
    except float64, whose cuDNN kernels are NCHW ones."""
    return numpy.dtype(dtype).name != "float64"


def strides(shape, channels_last: bool) -> list:
    """Element strides of a dense (N, C, H, W) array, stored (N, H, W, C) when ``channels_last``."""
    n, c, h, w = shape
    return [h * w * c, 1, w * c, c] if channels_last else [c * h * w, h * w, w, 1]


ALIGNMENT = 16  # bytes: what cuDNN frontend tensors promise by default (Tensor_attributes::alignment)


def dense(a, dtype, channels_last: bool, xp):
    """``a`` (N, C, H, W) in ``dtype``, dense in the given storage order and 16-byte aligned: itself when it
    already is, else a copy (from CuPy's pool, so aligned).

    A dense array starts at ``a.data.ptr``, so a graph declared with :func:`strides` reads it where it lies.
    """
    if a.dtype != dtype:
        a = a.astype(dtype)
    ordered = (is_channels_last(a) or a.flags.c_contiguous and a.shape[1] == 1) if channels_last \
        else a.flags.c_contiguous
    if ordered and a.data.ptr % ALIGNMENT == 0:  # a batch slice of a larger array may start anywhere
        return a
    out = empty_nchw(xp, a.shape, dtype, channels_last)
    out[...] = a
    return out


class Plan:
    """One built graph: its operands' uids (two inputs, then the output) and the workspace it needs in bytes."""

    __slots__ = ("graph", "uids", "workspace")

    def __init__(self, graph, uids, workspace: int):
        self.graph, self.uids, self.workspace = graph, tuple(uids), int(workspace)

    def run(self, handle, a, b, out, xp) -> None:
        """Queue the graph on ``handle``'s stream: inputs ``a``, ``b`` and output ``out``, dense as declared."""
        workspace = xp.empty(self.workspace, dtype=numpy.uint8) if self.workspace else None  # from CuPy's pool
        ua, ub, uo = self.uids
        self.graph.execute({ua: a.data.ptr, ub: b.data.ptr, uo: out.data.ptr},
                           0 if workspace is None else workspace.data.ptr, handle=handle)


def _types(cudnn, dtype):
    """(io, compute) cuDNN data types: float16 and bfloat16 accumulate in float32."""
    name = numpy.dtype(dtype).name
    io = {"float16": cudnn.data_type.HALF, "bfloat16": cudnn.data_type.BFLOAT16, "float32": cudnn.data_type.FLOAT,
          "float64": cudnn.data_type.DOUBLE}[name]
    return io, cudnn.data_type.DOUBLE if name == "float64" else cudnn.data_type.FLOAT


def _barred_notes(cudnn, dtype, tf32: bool) -> list:
    """Engine notes a graph refuses: run-to-run differences, inputs rounded to a narrower type, float32 on tensor
    cores (TF32) unless allowed, and float16/bfloat16 sums kept in float16/bfloat16."""
    note = cudnn.numerical_note
    name = numpy.dtype(dtype).name
    barred = [note.NONDETERMINISTIC, note.DOWN_CONVERT_INPUTS]
    if name == "float32" and not tf32:
        barred.append(note.TENSOR_CORE)
    elif name in ("float16", "bfloat16"):
        barred.append(note.REDUCED_PRECISION_REDUCTION)
    return barred


def build_plan(cudnn, handle, problem, kind: str, tf32: bool) -> Plan:
    """The built graph of one pass of ``problem``: ``"fprop"`` (x, W -> y), ``"dgrad"`` (gy, W -> gx) or
    ``"wgrad"`` (x, gy -> gW). Raises what cuDNN raises when it has no engine for it."""
    io, compute = _types(cudnn, problem.dtype)
    last = channels_last_for(problem.dtype)
    graph = cudnn.pygraph(io_data_type=io, intermediate_data_type=compute, compute_data_type=compute, handle=handle)
    win = problem.window
    geometry = dict(padding=[win.ph, win.pw], stride=[win.sy, win.sx], dilation=[win.dy, win.dx],
                    compute_data_type=compute)

    def operand(name, shape):
        return graph.tensor(name=name, dim=list(shape), stride=strides(shape, last), data_type=io)

    def output(tensor, shape):  # one call each: older releases' setters return copies, not the tensor
        tensor.set_output(True)
        tensor.set_dim(list(shape))
        tensor.set_stride(strides(shape, last))
        tensor.set_data_type(io)
        return tensor

    if kind == "fprop":
        a, b = operand("x", problem.x_shape), operand("w", problem.w_shape)
        out = output(graph.conv_fprop(image=a, weight=b, name="fprop", **geometry), problem.y_shape)
    elif kind == "dgrad":
        a, b = operand("dy", problem.y_shape), operand("w", problem.w_shape)
        out = output(graph.conv_dgrad(loss=a, filter=b, name="dgrad", **geometry), problem.x_shape)
    elif kind == "wgrad":
        a, b = operand("x", problem.x_shape), operand("dy", problem.y_shape)
        out = output(graph.conv_wgrad(image=a, loss=b, name="wgrad", **geometry), problem.w_shape)
    else:
        raise ValueError(f"unknown pass {kind!r}: fprop, dgrad or wgrad")
    graph.validate()
    graph.build_operation_graph()
    graph.create_execution_plans([cudnn.heur_mode.A, cudnn.heur_mode.FALLBACK])
    graph.deselect_numeric_notes(_barred_notes(cudnn, problem.dtype, tf32))  # after planning: it filters the plans
    graph.check_support()
    graph.build_plans()
    return Plan(graph, [t.get_uid() for t in (a, b, out)], graph.get_workspace_size())


_handles = StreamBoundHandles(  # cuDNN handles are not to be shared by threads running at once
    lambda: frontend().create_handle(), lambda handle, stream: frontend().set_stream(handle=handle, stream=stream))


def handle_for(device_id: int, stream_ptr: int | None = None):
    """This thread's handle for CUDA device ``device_id`` (made on first use, with that device current), bound to
    ``stream_ptr`` when given (``cudnnSetStream`` only when the stream changed)."""
    return _handles.get(device_id, stream_ptr)
