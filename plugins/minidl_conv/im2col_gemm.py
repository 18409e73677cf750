"""im2col + GEMM convolutions: the reference, and two faster routes to the input gradient.

All three share the forward pass and the weight gradient: the receptive
fields are copied into channels-last columns (:class:`~minidl.functions.im2col.ConvGeometry`)
and each group is one GEMM; the weight gradient reuses the forward's columns.
On the CPU the forward's columns are kept for the weight gradient; on a GPU
they are not (they are kh*kw times the input: AlexNet's would hold about
2 GB at batch 128), and the weight gradient gathers them again, one kernel.

They differ in the input gradient:

* ``im2col_gemm`` (the reference; every convolution): one GEMM per group to
  column gradients, folded back tap by tap along channels.
* ``im2col_tapfold``: the GEMM transposed, so each tap's fold runs along
  output rows, and strided convolutions fold phase by phase -- faster when
  there are few input channels per group (AlexNet conv1's 3).
* ``im2col_flip`` (stride 1): the transposed convolution computed as a
  convolution of the output gradient with the flipped, transposed kernels,
  whose columns are at most twice the forward's when a group has at most
  twice as many output as input channels.
"""
from __future__ import annotations

import functools

import numpy

from minidl.backend import get_array_module
from minidl.cpu import scratch
from minidl.functions import ConvAlgorithm, ConvProblem, Window
from minidl.functions.im2col import ConvGeometry, per_group_matmul

__all__ = ["Im2colGemm", "Im2colTapFold", "Im2colFlip", "flipped_problem", "flipped_kernels", "keeps_columns"]


def keeps_columns(xp) -> bool:
    """Whether the forward keeps its columns for the weight gradient: on the CPU (time), not on a GPU (memory)."""
    return xp is numpy


@functools.lru_cache(maxsize=512)
def _geometry(problem: ConvProblem) -> ConvGeometry:
    return ConvGeometry(problem.x_shape, problem.window, problem.groups)


class Im2colGemm(ConvAlgorithm):
    """im2col + one GEMM per group in all three passes; the reference every other algorithm is checked against."""

    def priority(self, problem):
        return 0

    def workspace_bytes(self, problem):
        n, c, h, w = problem.x_shape
        (oh, ow), (kh, kw) = problem.output_hw, problem.w_shape[2:]
        return n * oh * ow * kh * kw * c * problem.dtype.itemsize  # the columns (kept for the weight gradient on a CPU)

    def forward(self, x, W, problem):
        xp = get_array_module(x, W)
        geo = _geometry(problem)
        col = geo.columns(x)  # (G, N*oh*ow, kh*kw*C/G)
        y = geo.empty_output(W.shape[0], problem.dtype, xp)  # (N*oh*ow, G, O/G)
        per_group_matmul(col, geo.weight_matrix(W), y.transpose(1, 0, 2), transpose_b=True)
        return geo.output(y), col if keeps_columns(xp) else None

    def grad_input(self, gy, W, problem):
        xp = get_array_module(gy, W)
        geo = _geometry(problem)
        wm, gym = geo.weight_matrix(W), geo.gy_matrix(gy)  # (G, O/G, kh*kw*C/G), (G, N*oh*ow, O/G)
        gcol = scratch.empty((geo.groups, geo.rows, wm.shape[2]), problem.dtype, xp)
        per_group_matmul(gym, wm, gcol)  # (G, N*oh*ow, kh*kw*C/G)
        gx = geo.fold(gcol)
        scratch.release(gcol)
        return gx

    def grad_weight(self, x, gy, problem, saved=None):
        xp = get_array_module(x, gy)
        geo = _geometry(problem)
        col = geo.columns(x) if saved is None else saved
        o, g = problem.w_shape[0], problem.groups
        gWm = xp.empty((g, o // g, col.shape[2]), dtype=problem.dtype)
        per_group_matmul(geo.gy_matrix(gy), col, gWm, transpose_a=True)  # (G, O/G, kh*kw*C/G)
        if saved is None:
            scratch.release(col)
        return geo.weight_from_matrix(gWm, problem.w_shape)

    def release(self, saved):
        scratch.release(saved)


class Im2colTapFold(Im2colGemm):
    """im2col + GEMM; the input gradient folds tap by tap along output rows, strided ones phase by phase."""

    def priority(self, problem):
        cg = problem.channels_per_group[0]
        return 1 if cg < 16 or problem.window.stride == (1, 1) else None

    def grad_input(self, gy, W, problem):
        xp = get_array_module(gy, W)
        geo = _geometry(problem)
        wm, gym = geo.weight_matrix(W), geo.gy_matrix(gy)
        gcol = scratch.empty((geo.groups, wm.shape[2], geo.rows), problem.dtype, xp)
        per_group_matmul(wm, gym, gcol, transpose_a=True, transpose_b=True)  # (G, kh*kw*C/G, N*oh*ow)
        gx = geo.fold_tap_major(gcol)
        scratch.release(gcol)
        return gx


def flipped_padding(window: Window) -> tuple:
    """Padding of the stride-1 convolution that computes a convolution's input gradient."""
    return window.dy * (window.kh - 1) - window.ph, window.dx * (window.kw - 1) - window.pw


@functools.lru_cache(maxsize=512)
def flipped_problem(problem: ConvProblem) -> ConvProblem:
    """The stride-1 convolution of gy (N, O, oh, ow) with flipped, transposed kernels (C, O/G, kh, kw) that
    gives the input gradient of ``problem``."""
    win = problem.window
    (ph, pw), (o, cg, kh, kw), g = flipped_padding(win), problem.w_shape, problem.groups
    back = Window(kh, kw, 1, 1, ph, pw, win.dy, win.dx)
    return ConvProblem(problem.y_shape, (g * cg, o // g, kh, kw), back, g, problem.dtype, problem.device)


def flipped_kernels(W, groups: int):
    """(O, C/G, kh, kw) -> (C, O/G, kh, kw): each group's kernels transposed and turned 180 degrees."""
    o, cg, kh, kw = W.shape
    g = groups
    return W.reshape(g, o // g, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4).reshape(g * cg, o // g, kh, kw)


def flip_unsupported(problem: ConvProblem) -> str | None:
    """Why the input gradient cannot be a stride-1 convolution with flipped kernels, or None."""
    if problem.window.stride != (1, 1):
        return f"stride {problem.window.sy}x{problem.window.sx}: needs 1"
    if min(flipped_padding(problem.window)) < 0:
        return f"padding {problem.window.ph}x{problem.window.pw} wider than the kernel's reach"
    return None


class Im2colFlip(Im2colGemm):
    """im2col + GEMM; the input gradient is a convolution of gy with the flipped kernels (stride 1)."""

    def unsupported(self, problem):
        return flip_unsupported(problem)

    def priority(self, problem):
        cg, og = problem.channels_per_group
        return 2 if og <= 2 * cg else None

    def workspace_bytes(self, problem):
        return max(super().workspace_bytes(problem), super().workspace_bytes(flipped_problem(problem)))

    def grad_input(self, gy, W, problem):
        back = flipped_problem(problem)
        gx, col = Im2colGemm.forward(self, gy, flipped_kernels(W, problem.groups), back)
        scratch.release(col)
        return gx

