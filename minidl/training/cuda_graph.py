"""Whole-step CUDA graphs: forward, loss, backward and the optimizer's update, captured once and replayed.

On a GPU a small model's step is mostly launch and Python overhead: hundreds
of kernels of a few microseconds each. :class:`StepGraph` runs the first
steps eagerly (they choose convolution algorithms, compile kernels and make
the optimizer's buffers), then captures one step on a side stream into a
CUDA graph and from then on replays it, one launch per step:

- the batch is copied into static input buffers that the graph reads;
- the optimizer's host half (:meth:`~minidl.optim.Optimizer.prepare_step`:
  step counts, the learning rate) runs before each replay and writes the
  values the captured kernels read from device memory, so a schedule needs no
  new capture;
- dropout's counter-based stream is moved on through a device value
  (:func:`minidl.random.counter_shift`), so each replay draws the numbers the
  eager step would have drawn;
- everything allocated while capturing comes from a private memory pool
  kept with the graph (the replays write to the same addresses);
- GEMMs go through minidl's own cuBLAS handle (:mod:`minidl.gemm`).

Eager and captured training reach the same weights for the same seed, to
float round-off. Where a step cannot be captured (no GPU, fp16 loss scaling,
data-parallel processes, an optimizer that computes on the host, an op that
synchronises or refuses capture) the trainer says why once and runs eagerly;
a batch of another shape than the captured one runs eagerly too. Python code
inside the model (hooks, prints) runs while capturing and not on replays.
"""
from __future__ import annotations

import numpy

from .. import random
from ..backend import get_array_module
from ..gemm import capture_refusal as gemm_capture_refusal
from ..tensor import Tensor

__all__ = ["StepGraph", "MODES", "WARMUP_STEPS"]

MODES = ("auto", "on", "off")
WARMUP_STEPS = 3  # eager steps before the capture: algorithm choices, kernel compilation, optimizer state


class StepGraph:
    """Runs a trainer's steps eagerly or as a replayed CUDA graph (see the module docstring).

    Args:
        mode: "auto" (capture on a GPU when possible; say why not once), "on" (the same, but also say so on
            a CPU), "off" (always eager).
        forward_backward: ``(inputs, labels) -> (loss, logits)``: forward, loss, zero_grad and backward, on the
            trainer's model (the optimizer's update is added here).
        optimizer: a :class:`~minidl.optim.Optimizer`.
        device: the batches' device.
        say: prints a line (the trainer's, which only rank 0 prints).
        refusal: ``() -> reason or None``: the trainer's own reason not to capture, asked when the run starts
            and again before the capture.
    """

    def __init__(self, mode: str, forward_backward, optimizer, device, say, refusal=lambda: None):
        if mode not in MODES:
            raise ValueError(f"cuda_graph must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode, self.forward_backward, self.optimizer, self.device = mode, forward_backward, optimizer, device
        self._say, self._trainer_refusal = say, refusal
        self.eager_steps = 0
        self.replays = 0
        self.graph = None
        self.reason = None if mode != "off" else "cuda_graph: off"
        if self.reason is None:
            self._refuse(self._static_refusal())

    # ------------------------------------------------------------------ deciding
    def _static_refusal(self):
        if self.device.type != "cuda":
            return None if self.mode == "auto" else f"CUDA graphs need a GPU; this run is on {self.device}"
        return self._trainer_refusal() or gemm_capture_refusal()

    def _refuse(self, reason) -> None:
        """Run eagerly from now on, saying why once (silently on a CPU under "auto")."""
        if self.device.type != "cuda" and self.mode == "auto":
            self.reason = "no GPU"
            return
        if reason is not None and self.reason is None:
            self.reason = reason
            self._say(f"cuda_graph {self.mode}: running eagerly: {reason}")

    @property
    def active(self) -> bool:
        """Whether steps are (or will be) replayed from a graph."""
        return self.reason is None

    # ------------------------------------------------------------------ running
    def step(self, inputs: Tensor, labels, eager_step):
        """One training step on a batch; returns (loss, logits). ``eager_step(inputs, labels)`` is the trainer's
        whole eager step (forward, backward, update), used while warming up and whenever capture is refused."""
        if not self.active:
            return eager_step(inputs, labels)
        if self.graph is None:
            if self.eager_steps < WARMUP_STEPS:
                self.eager_steps += 1
                return eager_step(inputs, labels)
            reason = self._trainer_refusal() or self.optimizer.capture_refusal() or self._capture(inputs, labels)
            if reason is not None:
                self._refuse(reason)
                return eager_step(inputs, labels)
            return self._replay(inputs, labels, first=True)
        if tuple(inputs.shape) != self.input_shape or inputs.dtype != self.input_dtype \
                or len(labels) != self.label_count:
            return eager_step(inputs, labels)  # a batch of another shape (a partial last batch): eagerly
        return self._replay(inputs, labels, first=False)

    def _capture(self, inputs: Tensor, labels):
        """Capture one step into a graph (nothing runs yet); returns None, or why it could not be captured."""
        cupy = self.device.xp
        self.input_shape, self.input_dtype, self.label_count = tuple(inputs.shape), inputs.dtype, len(labels)
        self.static_inputs = inputs.data.copy()  # from the usual pool: they outlive the capture
        self.static_labels = cupy.empty(len(labels), dtype=numpy.int64)
        _copy_labels(self.static_labels, labels)
        self.shift = cupy.zeros(1, dtype=numpy.uint64)
        self.pool = cupy.cuda.MemoryPool()  # everything the captured step allocates; kept with the graph
        current = cupy.cuda.get_current_stream()
        side = cupy.cuda.Stream(non_blocking=True)  # the legacy default stream cannot capture
        side.wait_event(current.record())
        self.counter_start = random.counter_position(self.device)
        error = graph = None
        with side, cupy.cuda.using_allocator(self.pool.malloc), random.shifted_counters(self.device, self.shift):
            side.begin_capture()
            try:
                loss, logits = self.forward_backward(Tensor(self.static_inputs, device=self.device),
                                                     self.static_labels)
                self.optimizer.apply_step()  # reads this step's values from the arrays prepare_step writes
            except Exception as raised:  # an op synchronised with the host, or refused capture
                error = raised
            try:
                graph = side.end_capture()
            except Exception as raised:
                error = error or raised
        if error is not None:
            random.skip_counters(self.device, self.counter_start - random.counter_position(self.device))
            return f"capturing the step failed: {type(error).__name__}: {error}"
        current.wait_event(side.record())
        self.graph = graph
        self.counters_per_step = random.counter_position(self.device) - self.counter_start
        self.loss, self.logits = loss.data, logits.data
        self.grads = [(p, p.grad) for group in self.optimizer.param_groups for p in group["params"]]
        self._say(f"cuda_graph {self.mode}: the training step is captured after {self.eager_steps} eager steps; "
                  "replaying it")
        return None

    def _replay(self, inputs: Tensor, labels, first: bool):
        cupy = self.device.xp
        self.static_inputs[...] = inputs.data
        _copy_labels(self.static_labels, labels)
        self.optimizer.prepare_step()  # step counts and this step's learning rate, into device memory
        if not first:  # the capture drew this step's counters already; later replays move the stream on
            self.shift.fill(random.counter_position(self.device) - self.counter_start)
            random.skip_counters(self.device, self.counters_per_step)
        self.graph.launch(stream=cupy.cuda.get_current_stream())
        for p, grad in self.grads:  # the gradients the graph wrote, for anyone who reads them after the step
            p.grad = grad
        self.replays += 1
        return Tensor(self.loss.copy(), device=self.device), Tensor(self.logits.copy(), device=self.device)


def _copy_labels(static, labels) -> None:
    """Labels (host integers, or already on the device) into the graph's static label buffer."""
    if get_array_module(labels) is numpy:
        static.set(numpy.asarray(labels, dtype=numpy.int64))
    else:
        static[...] = labels
