"""The ``cudnn`` convolution algorithm: forward, input gradient and weight gradient as cuDNN graphs.

Each pass of a problem is one cuDNN frontend graph (conv fprop, dgrad, wgrad),
built once -- heuristics, engine choice and plan compilation included -- and
cached with its workspace size; a call then only binds device pointers and
queues the plan on the current CuPy stream, through this thread's cuDNN handle
for the device, with its workspace taken from CuPy's memory pool.

Storage: float16, bfloat16 and float32 graphs take NHWC activations and KRSC
kernels (cuDNN's tensor-core layout, and minidl's channels-last storage, so a
conv -> relu -> pool chain passes its arrays as they lie); float64 graphs take
NCHW ones. An operand stored otherwise is copied once per call (the network's
input; the kernels, which parameters keep C-contiguous, in the channels-last
graphs); outputs are written in the graph's order, and the weight gradient is
handed back C-contiguous as the interface asks.

Precision: float16 and bfloat16 accumulate in float32 (engines that sum in
half precision are refused); float32 runs on TF32 tensor cores only when
``minidl.gemm.tf32_allowed()``; engines with run-to-run differences are
refused, so the algorithm is deterministic.

Availability: on a machine without nvidia-cudnn-frontend, without CuPy or a
GPU, or without the cuDNN library, every problem is refused with the reason
(``minidl plugins`` shows it) and nothing else changes. A CUDA problem is
claimed only once all three of its graphs have built, so one cuDNN cannot
run is refused with cuDNN's own message and the default rule passes over it.
"""
from __future__ import annotations

import threading

from minidl.backend import get_array_module
from minidl.gemm import tf32_allowed
from minidl.functions import ConvAlgorithm, ConvProblem
from minidl.functions.window import empty_nchw

from . import graphs

__all__ = ["CUDA_PRIORITY", "Cudnn"]

# Rank under the default rule on CUDA devices: above every minidl algorithm, for every problem cuDNN builds
# (not yet measured shape by shape; "auto" times it against the others).
CUDA_PRIORITY = 10
PASSES = ("fprop", "dgrad", "wgrad")


class Cudnn(ConvAlgorithm):
    """Convolutions through NVIDIA cuDNN's graph API (nvidia-cudnn-frontend), on CUDA devices."""

    deterministic = True  # engines noted NONDETERMINISTIC are refused

    def __init__(self):
        self._plans = {}  # (problem, tf32, pass) -> graphs.Plan
        self._refused = {}  # (problem, tf32) -> cuDNN's reason
        self._lock = threading.Lock()

    # ------------------------------------------------------------ what it computes
    def unavailable(self):
        return graphs.unavailable()

    def unsupported(self, problem: ConvProblem):
        if problem.device_type != "cuda":
            if graphs.installed():
                return "cuDNN runs on CUDA devices only"
            return f"cuDNN runs on CUDA devices only (and nvidia-cudnn-frontend is not installed: {graphs.INSTALL_HINT})"
        reason = graphs.unavailable()
        if reason is not None:
            return reason
        if problem.dtype.name not in graphs.DTYPES:
            return f"{problem.dtype.name}: needs float16, bfloat16, float32 or float64"
        return self._build_all(problem)

    def priority(self, problem: ConvProblem):
        return CUDA_PRIORITY if problem.device_type == "cuda" else None

    def workspace_bytes(self, problem: ConvProblem) -> int:
        if self.unsupported(problem) is not None:
            return 0
        copies = 0
        if graphs.channels_last_for(problem.dtype):  # the kernels' KRSC copy
            o, cg, kh, kw = problem.w_shape
            copies = o * cg * kh * kw * problem.dtype.itemsize
        return self._plan(problem, "fprop").workspace + copies

    # ------------------------------------------------------------ graphs, built once
    def _key(self, problem):
        return problem, problem.dtype.name == "float32" and tf32_allowed()

    def _build_all(self, problem):
        """None when all three graphs of ``problem`` are built (building them now if needed), else cuDNN's reason."""
        key = self._key(problem)
        if key in self._refused:
            return self._refused[key]
        try:
            for kind in PASSES:
                self._plan(problem, kind)
        except Exception as e:  # cuDNN has no engine for it, or refuses the geometry
            message = " ".join(str(e).split())[:300] or type(e).__name__
            self._refused[key] = reason = f"cuDNN cannot build its {kind} graph: {message}"
            return reason
        return None

    def _plan(self, problem, kind):
        key = self._key(problem)
        plan = self._plans.get(key + (kind,))
        if plan is None:
            with self._lock:
                plan = self._plans.get(key + (kind,))
                if plan is None:
                    cudnn = graphs.frontend()
                    device_id = int(problem.device.partition(":")[2] or 0)
                    xp = _cupy()
                    with xp.cuda.Device(device_id):
                        handle = graphs.handle_for(device_id)
                        plan = graphs.build_plan(cudnn, handle, problem, kind, key[1])
                    self._plans[key + (kind,)] = plan
        return plan

    def _run(self, problem, kind, a, b, out, xp):
        plan = self._plan(problem, kind)
        device = out.device
        with device:
            handle = graphs.handle_for(device.id, xp.cuda.get_current_stream().ptr)
            plan.run(handle, a, b, out, xp)
        return out

    # ------------------------------------------------------------ the three passes
    def forward(self, x, W, problem):
        xp = get_array_module(x, W)
        last, dtype = graphs.channels_last_for(problem.dtype), problem.dtype
        y = empty_nchw(xp, problem.y_shape, dtype, last)  # (N, O, oh, ow)
        self._run(problem, "fprop", graphs.dense(x, dtype, last, xp), graphs.dense(W, dtype, last, xp), y, xp)
        return y, None

    def grad_input(self, gy, W, problem):
        xp = get_array_module(gy, W)
        last, dtype = graphs.channels_last_for(problem.dtype), problem.dtype
        gx = empty_nchw(xp, problem.x_shape, dtype, last)  # (N, C, H, W)
        return self._run(problem, "dgrad", graphs.dense(gy, dtype, last, xp), graphs.dense(W, dtype, last, xp), gx, xp)

    def grad_weight(self, x, gy, problem, saved=None):
        xp = get_array_module(x, gy)
        last, dtype = graphs.channels_last_for(problem.dtype), problem.dtype
        gW = empty_nchw(xp, problem.w_shape, dtype, last)  # (O, C/G, kh, kw), KRSC when channels-last
        self._run(problem, "wgrad", graphs.dense(x, dtype, last, xp), graphs.dense(gy, dtype, last, xp), gW, xp)
        return xp.ascontiguousarray(gW)


def _cupy():
    """CuPy, through minidl's backend (the one module that imports it)."""
    from minidl.backend import as_device

    return as_device("cuda:0").xp
