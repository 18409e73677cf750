"""Convolution and pooling over (N, C, H, W) tensors, vectorized with im2col and GEMM.

A convolution copies every receptive field into a column through a strided
view (no Python loop over pixels or images) and is then one GEMM per group
(:class:`ConvGeometry`); folding column gradients back is one strided add per
kernel offset. ``im2col``/``col2im`` are the same operations in plain
(N, C, H, W) layouts, used by the pools. Stride-1 3x3 and 5x5 convolutions
with enough channels use Winograd's minimal filtering instead, in all three
passes (:func:`winograd_tile` is the rule; :mod:`.winograd` the algorithm):
3-6x fewer multiply-adds, with float32 results within about 2e-5 of float64.

The gradient of a convolution is itself made of convolutions, so each piece
is a Function whose backward uses the others, and double backward works
(see :class:`ConvGeometry` for the memory layout):

    y  = conv2d(x, W)             gx = conv2d_grad_input(gy, W)   gW = conv2d_grad_weight(x, gy)

Layout: arrays are always indexed (N, C, H, W), but convolutions return
(and pools and LRN keep) channels-last *storage* -- an (N, H, W, C) array
seen through a transposed view -- since that is what a GEMM produces. A
conv -> relu -> lrn -> pool -> conv chain then never transposes its
activations or gradients; C-contiguous inputs work the same, only slower.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy

from ..backend import array_matmul, get_array_module, host_blocks, scratch
from ..function import Function
from ..tensor import Tensor, _wrap
from .linalg import matmul
from .winograd import TILES, WinogradPlan

__all__ = [
    "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "conv_output_size", "im2col", "col2im", "Window",
]


def _pair(value, name) -> tuple:
    if isinstance(value, (int, numpy.integer)):
        pair = (value, value)
    else:
        pair = tuple(value) if isinstance(value, (tuple, list)) else ()  # a float or None: not a pair
    if len(pair) != 2 or any(not isinstance(v, (int, numpy.integer)) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return int(pair[0]), int(pair[1])


def is_channels_last(a) -> bool:
    """True when an (N, C, H, W) array is stored (N, H, W, C): C-contiguous once C is moved last."""
    return a.ndim == 4 and a.shape[1] > 1 and a.transpose(0, 2, 3, 1).flags.c_contiguous


def empty_nchw(xp, shape, dtype, channels_last: bool):
    """An uninitialised (N, C, H, W) array, stored (N, H, W, C) when ``channels_last``."""
    if not channels_last:
        return xp.empty(shape, dtype=dtype)
    n, c, h, w = shape
    return xp.empty((n, h, w, c), dtype=dtype).transpose(0, 3, 1, 2)


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int = 1,
                     ceil_mode: bool = False) -> int:
    """Output length of a convolution or pooling window along one axis."""
    span = size + 2 * padding - dilation * (kernel - 1) - 1
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= size + padding:  # the last window must start inside the input
            out -= 1
        return out
    return span // stride + 1


@dataclass(frozen=True)
class Window:
    """Geometry of a sliding window over H and W: kernel, stride, padding, dilation."""

    kh: int
    kw: int
    sy: int = 1
    sx: int = 1
    ph: int = 0
    pw: int = 0
    dy: int = 1
    dx: int = 1

    @classmethod
    def make(cls, kernel_size, stride, padding, dilation=1):
        kh, kw = _pair(kernel_size, "kernel_size")
        sy, sx = _pair(stride, "stride")
        ph, pw = _pair(padding, "padding")
        dy, dx = _pair(dilation, "dilation")
        if min(kh, kw, sy, sx, dy, dx) < 1 or min(ph, pw) < 0:
            raise ValueError(
                f"kernel_size, stride and dilation must be >= 1 and padding >= 0, got kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, dilation={dilation}"
            )
        return cls(kh, kw, sy, sx, ph, pw, dy, dx)

    def padded_hw(self, h: int, w: int, oh: int, ow: int) -> tuple:
        """(Hp, Wp) of the zero-padded input that holds every window of an (oh, ow) output grid
        (ceil_mode may reach past the padding)."""
        hp = max((oh - 1) * self.sy + self.dy * (self.kh - 1) + 1, h + 2 * self.ph)
        wp = max((ow - 1) * self.sx + self.dx * (self.kw - 1) + 1, w + 2 * self.pw)
        return hp, wp

    def taps(self, oh: int, ow: int):
        """For each kernel offset k = (i, j): k and the (rows, cols) slices of the padded input it reads."""
        for k in range(self.kh * self.kw):
            i, j = divmod(k, self.kw)
            yield k, (slice(i * self.dy, i * self.dy + self.sy * (oh - 1) + 1, self.sy),
                      slice(j * self.dx, j * self.dx + self.sx * (ow - 1) + 1, self.sx))

    def output_hw(self, h: int, w: int, ceil_mode: bool = False) -> tuple:
        oh = conv_output_size(h, self.kh, self.sy, self.ph, self.dy, ceil_mode)
        ow = conv_output_size(w, self.kw, self.sx, self.pw, self.dx, ceil_mode)
        if oh < 1 or ow < 1:
            raise ValueError(
                f"input of height x width {h}x{w} is too small for a {self.kh}x{self.kw} window "
                f"(stride {self.sy}x{self.sx}, padding {self.ph}x{self.pw}, dilation {self.dy}x{self.dx})"
            )
        return oh, ow


# ------------------------------------------------------------ im2col kernels
def _padded(x, win: Window, oh: int, ow: int, value=0.0):
    """Pad H and W so every window of the (oh, ow) output grid lies inside."""
    xp = get_array_module(x)
    h, w = x.shape[2:]
    hp, wp = win.padded_hw(h, w, oh, ow)
    if (hp, wp) != (h, w):
        x = xp.pad(x, ((0, 0), (0, 0), (win.ph, hp - h - win.ph), (win.pw, wp - w - win.pw)),
                   constant_values=value)
    return x


def im2col(x, win: Window, oh: int, ow: int, layout: str = "ckn", pad_value=0.0):
    """Receptive fields of x (N, C, H, W) as a contiguous array.

    layout "ckn": (C, kh, kw, N, oh, ow) -- rows of a GEMM, for convolutions.
    layout "nck": (N, C, oh, ow, kh, kw) -- windows last, for pooling.
    """
    xp = get_array_module(x)
    x = _padded(x, win, oh, ow, pad_value)
    sn, sc, sh, sw = x.strides
    n, c = x.shape[:2]
    if layout == "ckn":
        shape = (c, win.kh, win.kw, n, oh, ow)
        strides = (sc, sh * win.dy, sw * win.dx, sn, sh * win.sy, sw * win.sx)
    else:
        shape = (n, c, oh, ow, win.kh, win.kw)
        strides = (sn, sc, sh * win.sy, sw * win.sx, sh * win.dy, sw * win.dx)
    view = xp.lib.stride_tricks.as_strided(x, shape=shape, strides=strides)
    col = scratch.empty(shape, x.dtype, xp)
    col[...] = view
    return col


def col2im(col, win: Window, x_shape, layout: str = "ckn"):
    """Sum columns back into an (N, C, H, W) array: the adjoint of :func:`im2col`."""
    xp = get_array_module(col)
    n, c, h, w = x_shape
    if layout == "ckn":
        _, _, _, _, oh, ow = col.shape
    else:
        _, _, oh, ow, _, _ = col.shape
    out = xp.zeros((n, c) + win.padded_hw(h, w, oh, ow), dtype=col.dtype)
    for k, (rows, cols) in win.taps(oh, ow):
        i, j = divmod(k, win.kw)
        patch = col[:, i, j].transpose(1, 0, 2, 3) if layout == "ckn" else col[:, :, :, :, i, j]
        out[:, :, rows, cols] += patch
    return out[:, :, win.ph:win.ph + h, win.pw:win.pw + w]


# --------------------------------------------------------------- convolution
class ConvGeometry:
    """The GEMM layout of a grouped convolution for one input shape.

    Activations are regrouped channels-last per group, (G, N, H, W, C/G), so
    that one receptive field row -- kw neighbouring pixels times C/G
    channels -- is a single contiguous run: im2col is then a copy of long
    runs, and each group's convolution is one GEMM of the shape BLAS likes
    best, (N*oh*ow, kh*kw*C/G) @ (kh*kw*C/G, O/G). Columns are
    (G, N*oh*ow, kh*kw*C/G) with the kernel axis ordered (i, j, c).
    """

    def __init__(self, x_shape, win: Window, groups: int):
        self.x_shape = tuple(x_shape)
        self.win = win
        self.groups = groups
        n, c, h, w = self.x_shape
        self.oh, self.ow = win.output_hw(h, w)
        self.rows = n * self.oh * self.ow

    def _channels_last(self, x, pad_h, pad_w):
        """x (N, C, H, W) -> zero-padded (G, N, H + pads, W + pads, C/G), contiguous."""
        xp = get_array_module(x)
        n, c, h, w = x.shape
        g = self.groups
        shape = (g, n, h + pad_h[0] + pad_h[1], w + pad_w[0] + pad_w[1], c // g)
        out = scratch.empty(shape, x.dtype, xp)
        if pad_h != (0, 0) or pad_w != (0, 0):
            out[...] = 0
        out[:, :, pad_h[0]:pad_h[0] + h, pad_w[0]:pad_w[0] + w, :] = x.reshape(n, g, c // g, h, w).transpose(
            1, 0, 3, 4, 2)
        return out

    def columns(self, x):
        xp = get_array_module(x)
        win = self.win
        t = self._channels_last(x, (win.ph, win.ph), (win.pw, win.pw))
        g, n, _, _, cg = t.shape
        s = t.strides
        shape = (g, n, self.oh, self.ow, win.kh, win.kw, cg)
        view = xp.lib.stride_tricks.as_strided(
            t, shape, (s[0], s[1], s[2] * win.sy, s[3] * win.sx, s[2] * win.dy, s[3] * win.dx, s[4]))
        col = scratch.empty((g, self.rows, win.kh * win.kw * cg), x.dtype, xp)
        col.reshape(shape)[...] = view
        scratch.release(t)
        return col

    def weight_matrix(self, W):
        """(O, C/G, kh, kw) -> (G, O/G, kh*kw*C/G) in the columns' (i, j, c) order."""
        g = self.groups
        o, cg, kh, kw = W.shape
        return W.reshape(g, o // g, cg, kh, kw).transpose(0, 1, 3, 4, 2).reshape(g, o // g, -1)

    def weight_from_matrix(self, m, w_shape):
        o, cg, kh, kw = w_shape
        return m.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2)

    def empty_output(self, o: int, dtype, xp):
        """The (N*oh*ow, G, O/G) buffer the GEMMs write into: (N, oh, ow, O) storage."""
        return xp.empty((self.rows, self.groups, o // self.groups), dtype=dtype)

    def output(self, y):
        """(N*oh*ow, G, O/G) GEMM results -> (N, O, oh, ow), a view of the channels-last storage."""
        n = self.x_shape[0]
        return y.reshape(n, self.oh, self.ow, -1).transpose(0, 3, 1, 2)

    def gy_matrix(self, gy):
        """(N, O, oh, ow) -> (G, N*oh*ow, O/G): a view when gy is channels-last, else one copy."""
        n, o = gy.shape[:2]
        m = gy.transpose(0, 2, 3, 1).reshape(self.rows, self.groups, o // self.groups)  # copies only if needed
        return m.transpose(1, 0, 2)

    def fold(self, gcol):
        """(G, N*oh*ow, kh*kw*C/G) column gradients -> (N, C, H, W), channels-last: the adjoint of columns()."""
        xp = get_array_module(gcol)
        win, (n, c, h, w) = self.win, self.x_shape
        g, cg = self.groups, c // self.groups
        out = xp.zeros((g, n) + win.padded_hw(h, w, self.oh, self.ow) + (cg,), dtype=gcol.dtype)
        cols = gcol.reshape(g, n, self.oh, self.ow, win.kh * win.kw, cg)
        for k, tap in win.taps(self.oh, self.ow):
            out[(slice(None), slice(None)) + tap] += cols[:, :, :, :, k]
        out = out[:, :, win.ph:win.ph + h, win.pw:win.pw + w].transpose(1, 2, 3, 0, 4)  # (N, H, W, G, C/G)
        return xp.ascontiguousarray(out).reshape(n, h, w, c).transpose(0, 3, 1, 2)

    def fold_tap_major(self, gcol_t):
        """The same from (G, kh*kw*C/G, N*oh*ow) column gradients: each tap's adds then run along
        output rows instead of C/G channels (the faster order when C/G is small, as for conv1's 3).

        With stride s the padded input is folded as s*s phases (rows and columns i, i + s, ...
        apart), so each tap adds into one phase through unit-stride rows rather than touching
        every s-th element (2-3x faster for conv1's stride 4); the phases are interleaved at the end.
        """
        xp = get_array_module(gcol_t)
        win, (n, c, h, w) = self.win, self.x_shape
        g, cg, sy, sx = self.groups, c // self.groups, win.sy, win.sx
        hp, wp = win.padded_hw(h, w, self.oh, self.ow)
        phases = xp.zeros((sy, sx, g, cg, n, -(-hp // sy), -(-wp // sx)), dtype=gcol_t.dtype)
        cols = gcol_t.reshape(g, win.kh * win.kw, cg, n, self.oh, self.ow)
        taps = [(divmod(i * win.dy, sy), divmod(j * win.dx, sx), i * win.kw + j)
                for i in range(win.kh) for j in range(win.kw)]
        for (qi, a), (qj, b), k in sorted(taps, key=lambda tap: (tap[0][1], tap[1][1])):  # phase by phase
            phases[a, b, :, :, :, qi:qi + self.oh, qj:qj + self.ow] += cols[:, k]
        gx = xp.empty((n, h, w, g, cg), dtype=gcol_t.dtype)  # channels-last
        for a in range(sy):
            top = (a - win.ph) % sy  # first unpadded row in phase a, and its index in the phase
            rows, q = len(range(top, h, sy)), (top + win.ph) // sy
            for b in range(sx):
                left = (b - win.pw) % sx
                cols_, p = len(range(left, w, sx)), (left + win.pw) // sx
                gx[:, top::sy, left::sx] = phases[a, b, :, :, :, q:q + rows, p:p + cols_].transpose(2, 3, 4, 0, 1)
        return gx.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def _per_group(xp, a, b, out, transpose_a=False, transpose_b=False):
    """out[g] = a[g] @ b[g] (each optionally transposed) for every group; ``out`` (G, ., .) may be a strided view."""
    for g in range(a.shape[0]):
        array_matmul(a[g].T if transpose_a else a[g], b[g].T if transpose_b else b[g], out=out[g])
    return out


WINOGRAD_MIN_CHANNELS = 32  # per group, in and out


def winograd_tile(x_shape, w_shape, win: Window, groups: int, dtype) -> int:
    """The output tile m of the Winograd algorithm for this convolution, or 0 for im2col + GEMM.

    Winograd F(m x m, r x r) (see :mod:`minidl.functions.winograd`) is used when all hold:
    float32 or float64; stride 1 and dilation 1; square 3x3 or 5x5 kernels (r in TILES); at
    least 32 channels per group in and out (thinner per-point GEMMs do not pay for the
    transforms: alexnet-mini's 16-channel 5x5 was 15 % slower); an output of at least 2x2.
    m is the tile in TILES[r] with the fewest multiplies, (m + r - 1)**2 per tile times the
    tiles covering the output (the smaller m on a tie): 5 for 13x13 outputs of 3x3 kernels,
    4 for 27x27 outputs of 5x5 kernels, 3 for 6x6 outputs of 3x3 kernels. The same rule picks
    the algorithm of all three passes; the input gradient applies it to the flipped convolution.
    """
    o, cg, kh, kw = w_shape
    tiles = TILES.get(kh, ()) if kh == kw else ()
    if (not tiles or numpy.dtype(dtype) not in (numpy.float32, numpy.float64)
            or (win.sy, win.sx, win.dy, win.dx) != (1, 1, 1, 1) or min(cg, o // groups) < WINOGRAD_MIN_CHANNELS):
        return 0
    oh, ow = win.output_hw(*x_shape[2:])
    if min(oh, ow) < 2:
        return 0
    return min(tiles, key=lambda m: ((m + kh - 1) ** 2 * -(-oh // m) * -(-ow // m), m))


def _winograd_plan(x_shape, w_shape, win: Window, groups: int, dtype):
    m = winograd_tile(x_shape, w_shape, win, groups, dtype)
    return WinogradPlan(x_shape, win.kh, (win.ph, win.pw), groups, m, dtype) if m else None


def _conv_forward(x, W, geo: ConvGeometry):
    """y and what the weight gradient reuses: (y, plan, saved) with saved = transformed input tiles
    under a Winograd plan, else the im2col columns (plan None)."""
    xp = get_array_module(x, W)
    plan = _winograd_plan(x.shape, W.shape, geo.win, geo.groups, xp.result_type(x, W))
    if plan is not None:
        v = plan.input_tiles(x)
        products = plan.products(v, plan.kernels(W))
        y = plan.output(products)
        scratch.release(products)
        return y, plan, v
    col = geo.columns(x)
    y = geo.empty_output(W.shape[0], xp.result_type(x, W), xp)  # (N*oh*ow, G, O/G)
    _per_group(xp, col, geo.weight_matrix(W), y.transpose(1, 0, 2), transpose_b=True)
    return geo.output(y), None, col


def _conv_grad_input(gy, W, geo: ConvGeometry):
    """The transposed convolution, by whichever of three equivalent routes moves the least memory.

    Stride 1 with a Winograd plan for the flipped convolution, or with at most
    twice as many output as input channels (per group): a convolution of gy
    with the flipped, transposed kernels (its im2col is at most twice the
    forward's). Otherwise one GEMM to column gradients and a
    fold, tap by tap along output rows when channels per group are few (conv1's
    3) or the flipped convolution's columns would be large (AlexNet conv2's
    64 -> 192), along channels otherwise.
    """
    xp = get_array_module(gy, W)
    win = geo.win
    o, cg, kh, kw = W.shape
    g = geo.groups
    flipped_padding = (win.dy * (kh - 1) - win.ph, win.dx * (kw - 1) - win.pw)
    stride_1 = win.sy == win.sx == 1 and min(flipped_padding) >= 0
    back = Window(kh, kw, 1, 1, flipped_padding[0], flipped_padding[1], win.dy, win.dx)
    if stride_1 and (o // g <= 2 * cg or winograd_tile(gy.shape, (g * cg, o // g, kh, kw), back, g,
                                                       xp.result_type(gy, W))):
        W_t = W.reshape(g, o // g, cg, kh, kw)[:, :, :, ::-1, ::-1].transpose(0, 2, 1, 3, 4).reshape(g * cg, o // g,
                                                                                                       kh, kw)
        gx, _, saved = _conv_forward(gy, W_t, ConvGeometry(gy.shape, back, g))
        scratch.release(saved)
        return gx
    wm, gym = geo.weight_matrix(W), geo.gy_matrix(gy)  # (G, O/G, kh*kw*C/G), (G, N*oh*ow, O/G)
    dtype = xp.result_type(gy, W)
    if cg < 16 or stride_1:
        gcol = scratch.empty((g, wm.shape[2], geo.rows), dtype, xp)
        _per_group(xp, wm, gym, gcol, transpose_a=True, transpose_b=True)  # (G, kh*kw*C/G, N*oh*ow)
        gx = geo.fold_tap_major(gcol)
    else:
        gcol = scratch.empty((g, geo.rows, wm.shape[2]), dtype, xp)
        _per_group(xp, gym, wm, gcol)  # (G, N*oh*ow, kh*kw*C/G)
        gx = geo.fold(gcol)
    scratch.release(gcol)
    return gx


def _conv_grad_weight(gy, geo: ConvGeometry, w_shape, col, plan=None):
    """The weight gradient from gy and the forward's im2col columns, or its Winograd input tiles under ``plan``."""
    xp = get_array_module(gy)
    if plan is not None:
        dm = plan.output_grad_tiles(gy)
        gW = plan.kernel_grad(col, dm, w_shape)
        scratch.release(dm)
        return gW
    g, o = geo.groups, w_shape[0]
    gWm = xp.empty((g, o // g, col.shape[2]), dtype=xp.result_type(gy, col))
    _per_group(xp, geo.gy_matrix(gy), col, gWm, transpose_a=True)  # (G, O/G, kh*kw*C/G)
    return xp.ascontiguousarray(geo.weight_from_matrix(gWm, w_shape))


class Conv2d(Function):
    def __init__(self, win: Window, groups: int):
        self.win = win
        self.groups = groups
        self.col = self.plan = None

    def forward(self, x, W, b=None):
        # col (im2col columns, or Winograd input tiles under plan): kept for the weight gradient
        y, self.plan, self.col = _conv_forward(x, W, ConvGeometry(x.shape, self.win, self.groups))
        if b is not None:
            y += b.reshape(1, -1, 1, 1)
        return y

    def backward(self, gy):
        x, W = self.inputs[:2]
        gx = Conv2dGradInput(self.win, self.groups, x.shape)(gy, W) if x.requires_grad else None
        gW = Conv2dGradWeight(self.win, self.groups, W.shape, self.col, self.plan)(x, gy) if W.requires_grad else None
        if len(self.inputs) == 2:
            return gx, gW
        return gx, gW, gy.sum(axis=(0, 2, 3))

    def release(self):
        scratch.release(self.col)  # the graph is freed: nothing else holds the columns
        self.col = self.plan = None


class Conv2dGradInput(Function):
    """gx = conv2d_grad_input(gy, W): the transposed convolution."""

    def __init__(self, win: Window, groups: int, x_shape):
        self.win = win
        self.groups = groups
        self.x_shape = x_shape

    def forward(self, gy, W):
        return _conv_grad_input(gy, W, ConvGeometry(self.x_shape, self.win, self.groups))

    def backward(self, ggx):
        gy, W = self.inputs
        g_gy = Conv2d(self.win, self.groups)(ggx, W) if gy.requires_grad else None
        g_W = Conv2dGradWeight(self.win, self.groups, W.shape)(ggx, gy) if W.requires_grad else None
        return g_gy, g_W


class Conv2dGradWeight(Function):
    """gW = conv2d_grad_weight(x, gy): correlation of the input with the output gradient."""

    def __init__(self, win: Window, groups: int, w_shape, col=None, plan=None):
        self.win = win
        self.groups = groups
        self.w_shape = w_shape
        self.col, self.plan = col, plan  # the forward's columns or Winograd input tiles (plan), if kept

    def forward(self, x, gy):
        geo = ConvGeometry(x.shape, self.win, self.groups)
        col, plan, self.col = self.col, self.plan, None
        owned = col is None  # computed here, so it can be recycled here
        if owned:
            xp = get_array_module(x, gy)
            plan = _winograd_plan(x.shape, self.w_shape, self.win, self.groups, xp.result_type(x, gy))
            col = plan.input_tiles(x) if plan is not None else geo.columns(x)
        gW = _conv_grad_weight(gy, geo, self.w_shape, col, plan)
        if owned:
            scratch.release(col)
        return gW

    def backward(self, ggW):
        x, gy = self.inputs
        g_x = Conv2dGradInput(self.win, self.groups, x.shape)(gy, ggW) if x.requires_grad else None
        g_gy = Conv2d(self.win, self.groups)(x, ggW) if gy.requires_grad else None
        return g_x, g_gy


def conv2d(x, W, b=None, stride=1, padding=0, dilation=1, groups: int = 1) -> Tensor:
    """2-D convolution (cross-correlation, as in PyTorch).

    Args:
        x: (N, C, H, W) input.
        W: (O, C/groups, kh, kw) kernels.
        b: optional (O,) bias.
        stride, padding, dilation: ints or (h, w) pairs.
        groups: split channels into this many independent convolutions
            (AlexNet's two columns are groups=2).

    Returns (N, O, oh, ow).
    """
    if x.ndim != 4 or W.ndim != 4:
        raise ValueError(f"conv2d: expected x (N, C, H, W) and W (O, C/groups, kh, kw), got {x.shape} and {W.shape}")
    c, o = x.shape[1], W.shape[0]
    if c % groups or o % groups or W.shape[1] * groups != c:
        raise ValueError(
            f"conv2d: input with {c} channels and weight of shape {W.shape} do not fit groups={groups} "
            f"(need in_channels = W.shape[1] * groups and out_channels divisible by groups)"
        )
    if b is not None and tuple(b.shape) != (o,):
        raise ValueError(f"conv2d: bias of shape {tuple(b.shape)} does not match {o} output channels")
    win = Window.make((W.shape[2], W.shape[3]), stride, padding, dilation)
    win.output_hw(x.shape[2], x.shape[3])  # fail early on too-small inputs
    inputs = (x, W) if b is None else (x, W, b)
    return Conv2d(win, groups)(*inputs)


# ------------------------------------------------------------------- pooling
def _padded_like(x, win: Window, oh: int, ow: int, value):
    """Pad H and W with ``value`` so every window of the (oh, ow) grid fits, in x's storage order (x itself if none)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    hp, wp = win.padded_hw(h, w, oh, ow)
    if (hp, wp) == (h, w):
        return x
    out = empty_nchw(xp, (n, c, hp, wp), x.dtype, is_channels_last(x))
    out[...] = value
    out[:, :, win.ph:win.ph + h, win.pw:win.pw + w] = x
    return out


def _storage_flat(a, channels_last: bool):
    """The elements of an (N, C, H, W) array in storage order, (N, H, W, C) or (N, C, H, W): a view if stored so."""
    return (a.transpose(0, 2, 3, 1) if channels_last else a).reshape(-1)


def _from_storage(flat, shape, channels_last: bool):
    """Inverse of :func:`_storage_flat`: a flat array in storage order seen as (N, C, H, W)."""
    n, c, h, w = shape
    return flat.reshape(n, h, w, c).transpose(0, 3, 1, 2) if channels_last else flat.reshape(shape)


def _window_sources(win: Window, padded_shape, channels_last: bool, winner, first_image: int = 0):
    """Flat storage index, into the padded input, of the element that won each window (winner: its tap k).

    Returned flat, in the storage order of the output; winner may be a block of images from ``first_image`` on.
    """
    xp = get_array_module(winner)
    _, c, hp, wp = padded_shape
    n = winner.shape[0]
    sn, sc, sh, sw = (hp * wp * c, 1, wp * c, c) if channels_last else (c * hp * wp, hp * wp, wp, 1)
    oh, ow = winner.shape[2:]
    offsets = xp.asarray([i * win.dy * sh + j * win.dx * sw for i in range(win.kh) for j in range(win.kw)],
                         dtype=numpy.int64)
    rows = xp.arange(oh, dtype=numpy.int64)[:, None] * (win.sy * sh)  # (oh, 1)
    cols = xp.arange(ow, dtype=numpy.int64) * (win.sx * sw)  # (ow,)
    channels = xp.arange(c, dtype=numpy.int64) * sc  # (C,)
    if channels_last:
        origin = (rows[:, :, None] + cols[:, None] + channels)  # window origins, (oh, ow, C)
    else:
        origin = channels[:, None, None] + rows + cols  # (C, oh, ow)
    source = offsets[_storage_flat(winner, channels_last)].reshape((n,) + origin.shape)
    source += xp.arange(first_image, first_image + n, dtype=numpy.int64)[:, None, None, None] * sn
    source += origin
    return source.reshape(-1)


class MaxPool2d(Function):
    """Max over windows as kh*kw elementwise maxima of strided views (no window copies).

    Works in whatever storage order x has (channels-last storage makes each
    view runs of C contiguous values) and remembers where the first maximum
    of each window was (as PyTorch) for the backward, as a flat index into
    the (padded) input's storage. Runs a few images at a time, so that the
    maxima, comparisons and counts find their block in cache.
    """

    def __init__(self, win: Window, ceil_mode: bool):
        self.win = win
        self.ceil_mode = ceil_mode

    def forward(self, x):
        xp = get_array_module(x)
        n, c, h, w = x.shape
        oh, ow = self.win.output_hw(h, w, self.ceil_mode)
        low = -numpy.inf if x.dtype.kind in "fV" else numpy.iinfo(x.dtype).min
        self.channels_last = is_channels_last(x)
        if not (self.channels_last or x.flags.c_contiguous):
            x = xp.ascontiguousarray(x)  # flat indices need one of the two storage orders
        padded = _padded_like(x, self.win, oh, ow, low)
        best = empty_nchw(xp, (n, c, oh, ow), x.dtype, self.channels_last)
        self.source = xp.empty(best.size, dtype=numpy.int64)  # in the output's storage order
        per_image = c * oh * ow
        taps = [tap for _, tap in self.win.taps(oh, ow)]

        def block(a, b):  # images a:b
            views = [padded[a:b, :, rows, cols] for rows, cols in taps]
            out = best[a:b]
            out[...] = views[0]
            for view in views[1:]:
                xp.maximum(out, view, out=out)
            # which offset won: the first one equal to the maximum, i.e. the number of leading taps that are not
            behind = views[0] != out
            winner = behind.astype(numpy.int8 if len(views) < 128 else numpy.int32)
            differs = xp.empty_like(behind)
            for view in views[1:-1]:
                behind &= xp.not_equal(view, out, out=differs)
                winner += behind
            self.source[a * per_image:b * per_image] = _window_sources(
                self.win, padded.shape, self.channels_last, winner, first_image=a)

        for a, b in host_blocks(xp, n, best.size * len(taps)):  # a few images at a time, in cache
            block(a, b)
        self.padded_shape = padded.shape
        return best

    def backward(self, gy):
        return MaxPool2dGrad(self.win, self.source, self.padded_shape, self.inputs[0].shape, self.channels_last)(gy)

    def release(self):
        self.source = None


def _unpad(a, win: Window, padded_shape, h: int, w: int):
    return a if padded_shape[2:] == (h, w) else a[:, :, win.ph:win.ph + h, win.pw:win.pw + w]


class MaxPool2dGrad(Function):
    """Route each output gradient to the input element that won its window (adding where windows overlap)."""

    def __init__(self, win: Window, source, padded_shape, x_shape, channels_last: bool):
        self.win = win
        self.source = source  # flat storage index of each output's winner in the padded input
        self.padded_shape = padded_shape
        self.x_shape = x_shape
        self.channels_last = channels_last

    def forward(self, gy):
        xp = get_array_module(gy)
        n, c, hp, wp = self.padded_shape
        # scatter-add (several windows may share a winner); in float32 at least, which every backend can add atomically
        wide = numpy.promote_types(gy.dtype, numpy.float32)
        gx = xp.zeros(n * c * hp * wp, dtype=wide)
        xp.add.at(gx, self.source, _storage_flat(gy, self.channels_last).astype(wide, copy=False))
        gx = _from_storage(gx.astype(gy.dtype, copy=False), self.padded_shape, self.channels_last)
        return _unpad(gx, self.win, self.padded_shape, *self.x_shape[2:])

    def backward(self, ggx):
        return _MaxPool2dSelect(self.win, self.source, self.padded_shape, self.inputs[0].shape[2:],
                                self.channels_last)(ggx)


class _MaxPool2dSelect(Function):
    """Pick, for every output, the element of ggx where the forward max was (double backward)."""

    def __init__(self, win: Window, source, padded_shape, out_hw, channels_last: bool):
        self.win = win
        self.source = source
        self.padded_shape = padded_shape
        self.out_hw = tuple(out_hw)
        self.channels_last = channels_last

    def forward(self, x):
        xp = get_array_module(x)
        n, c, hp, wp = self.padded_shape
        padded = empty_nchw(xp, self.padded_shape, x.dtype, self.channels_last)
        padded[...] = 0
        _unpad(padded, self.win, self.padded_shape, *x.shape[2:])[...] = x
        self.x_shape = x.shape
        picked = xp.take(_storage_flat(padded, self.channels_last), self.source)
        return _from_storage(picked, (n, c) + self.out_hw, self.channels_last)

    def backward(self, gy):
        return MaxPool2dGrad(self.win, self.source, self.padded_shape, self.x_shape, self.channels_last)(gy)


def max_pool2d(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max over sliding windows; ``stride < kernel_size`` gives AlexNet's overlapping pooling.

    ``stride`` defaults to ``kernel_size``. Padding counts as -inf.
    """
    win = Window.make(kernel_size, kernel_size if stride is None else stride, padding, dilation)
    if 2 * win.ph > win.kh or 2 * win.pw > win.kw:
        raise ValueError(f"max_pool2d: padding {padding} must be at most half the kernel size {kernel_size}")
    return MaxPool2d(win, ceil_mode)(x)


class _WindowSum(Function):
    """Sum over each window (zero padding); linear, so its adjoint is its gradient."""

    def __init__(self, win: Window, out_hw):
        self.win = win
        self.out_hw = out_hw

    def forward(self, x):
        self.x_shape = x.shape
        return im2col(x, self.win, *self.out_hw, layout="nck").sum(axis=(4, 5))

    def backward(self, gy):
        return _WindowSumAdjoint(self.win, self.x_shape)(gy)


class _WindowSumAdjoint(Function):
    def __init__(self, win: Window, x_shape):
        self.win = win
        self.x_shape = x_shape

    def forward(self, gy):
        xp = get_array_module(gy)
        gcol = xp.broadcast_to(gy[..., None, None], gy.shape + (self.win.kh, self.win.kw))
        return xp.ascontiguousarray(col2im(gcol, self.win, self.x_shape, layout="nck"))

    def backward(self, ggx):
        return _WindowSum(self.win, self.inputs[0].shape[2:])(ggx)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Mean over sliding windows (PyTorch's defaults: padding zeros count in the mean)."""
    win = Window.make(kernel_size, kernel_size if stride is None else stride, padding)
    oh, ow = win.output_hw(x.shape[2], x.shape[3], ceil_mode)
    sums = _WindowSum(win, (oh, ow))(x)
    xp = x.device.xp
    if count_include_pad and not ceil_mode:
        return sums * (1.0 / (win.kh * win.kw))
    # The divisor varies by position: count the elements each window covers.
    ones = xp.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    if count_include_pad:
        ones = xp.pad(ones, ((0, 0), (0, 0), (win.ph, win.ph), (win.pw, win.pw)), constant_values=1)
        unpadded = Window(win.kh, win.kw, win.sy, win.sx, 0, 0, win.dy, win.dx)
        counts = im2col(ones, unpadded, oh, ow, layout="nck").sum(axis=(4, 5))
    else:
        counts = im2col(ones, win, oh, ow, layout="nck").sum(axis=(4, 5))
    return sums / _wrap(counts, x.device)


def _adaptive_matrix(xp, size: int, out: int, dtype):
    """(out, size) averaging matrix of adaptive pooling: bin i covers [floor(i*size/out), ceil((i+1)*size/out))."""
    m = numpy.zeros((out, size))
    for i in range(out):
        start, stop = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, start:stop] = 1.0 / (stop - start)
    return xp.asarray(m.astype(dtype))


def adaptive_avg_pool2d(x, output_size) -> Tensor:
    """Average-pool to a fixed (oh, ow) whatever the input size (torchvision AlexNet's 6x6).

    Computed as P_h @ x @ P_w^T with constant averaging matrices, so it is
    two matmuls and its gradient comes for free.
    """
    oh, ow = _pair(output_size, "output_size")
    h, w = x.shape[2], x.shape[3]
    if (oh, ow) == (h, w):
        return x
    xp = x.device.xp
    ph = _wrap(_adaptive_matrix(xp, h, oh, x.dtype), x.device)
    pw = _wrap(_adaptive_matrix(xp, w, ow, x.dtype).T.copy(), x.device)
    return matmul(matmul(ph, x), pw)


