"""Receptive fields as columns (im2col), their adjoint (col2im), and the GEMM layout of a convolution.

Public building blocks for convolution algorithms (``plugins/minidl_conv``)
and pooling:

* :func:`im2col` / :func:`col2im` -- every window of an (N, C, H, W) array as
  (N, C, oh, ow, kh, kw), copied through one strided view (no Python loop
  over pixels), and the sum back.
* :class:`ConvGeometry` -- a grouped convolution as one GEMM per group over
  channels-last columns, and the two folds of column gradients back into
  an input gradient. On a GPU the columns and the folds are one gather
  kernel each.
"""
from __future__ import annotations

import numpy

from ..backend import elementwise_kernel, get_array_module
from ..gemm import matmul_into
from ..cpu import scratch
from .window import Window, pad_hw

__all__ = ["im2col", "col2im", "ConvGeometry", "padded_channels_last", "per_group_matmul"]


def im2col(x, win: Window, oh: int, ow: int, pad_value=0.0):
    """Every window of x (N, C, H, W) for an (oh, ow) output grid, as a contiguous (N, C, oh, ow, kh, kw) array.

    Padding (and whatever ceil_mode adds past it) reads ``pad_value``.
    """
    xp = get_array_module(x)
    x = pad_hw(x, win, oh, ow, pad_value)
    sn, sc, sh, sw = x.strides
    n, c = x.shape[:2]
    shape = (n, c, oh, ow, win.kh, win.kw)
    view = xp.lib.stride_tricks.as_strided(
        x, shape=shape, strides=(sn, sc, sh * win.sy, sw * win.sx, sh * win.dy, sw * win.dx))
    col = scratch.empty(shape, x.dtype, xp)
    col[...] = view
    return col


def col2im(col, win: Window, x_shape):
    """Sum (N, C, oh, ow, kh, kw) windows back into an (N, C, H, W) array: the adjoint of :func:`im2col`."""
    xp = get_array_module(col)
    n, c, h, w = x_shape
    oh, ow = col.shape[2:4]
    out = xp.zeros((n, c) + win.padded_hw(h, w, oh, ow), dtype=col.dtype)
    for k, (rows, cols) in win.taps(oh, ow):
        out[:, :, rows, cols] += col[:, :, :, :, k // win.kw, k % win.kw]
    return out[:, :, win.ph:win.ph + h, win.pw:win.pw + w]


def padded_channels_last(x, pad_h: tuple, pad_w: tuple, groups: int = 1):
    """x (N, C, H, W), any storage order -> (G, N, H + pads, W + pads, C/G), zero borders, C-contiguous.

    One copy that regroups, moves channels last and pads; only the borders are zeroed.
    The array comes from the scratch pool (hand it back with ``scratch.release``).
    """
    xp = get_array_module(x)
    n, c, h, w = x.shape
    (top, bottom), (left, right) = pad_h, pad_w
    out = scratch.empty((groups, n, top + h + bottom, left + w + right, c // groups), x.dtype, xp)
    out[:, :, :top] = 0
    out[:, :, top + h:] = 0
    out[:, :, top:top + h, :left] = 0
    out[:, :, top:top + h, left + w:] = 0
    out[:, :, top:top + h, left:left + w] = x.reshape(n, groups, c // groups, h, w).transpose(1, 0, 3, 4, 2)
    return out


def per_group_matmul(a, b, out, transpose_a=False, transpose_b=False):
    """out[g] = a[g] @ b[g] (each optionally transposed) for every group g; ``out`` (G, ., .) may be a strided view.

    One strided-batched cuBLAS call on a GPU, with transposed operands read in place (:func:`minidl.gemm.matmul_into`).
    """
    return matmul_into(a.swapaxes(1, 2) if transpose_a else a, b.swapaxes(1, 2) if transpose_b else b, out)


# CUDA: the columns and their fold back are one gather kernel each (a thread per column element, or per
# input-gradient element summing the taps that read it: no atomics), beside the strided NumPy copies they match.
_GEOMETRY_PARAMS = ("int32 N, int32 C, int32 H, int32 W, int32 OH, int32 OW, int32 KH, int32 KW, int32 SY, "
                    "int32 SX, int32 PH, int32 PW, int32 DY, int32 DX, int32 G")
_COLUMNS = """
    int CG = C / G, K = KH * KW * CG, R = N * OH * OW;
    int q = i % K, rest = i / K, r = rest % R, g = rest / R;
    int cc = q % CG, tap = q / CG, b = tap % KW, a = tap / KW;
    int ox = r % OW, rest2 = r / OW, oy = rest2 % OH, n = rest2 / OH;
    int yy = oy * SY - PH + a * DY, xx = ox * SX - PW + b * DX;
    if (yy >= 0 && yy < H && xx >= 0 && xx < W) {
        ptrdiff_t at[] = {n, g * CG + cc, yy, xx};
        col = x[at];
    } else {
        col = (T)0;
    }
"""
_FOLD = """
    int xx = i % W, rest = i / W, yy = rest % H; rest /= H;
    int c = rest % C, n = rest / C;
    int CG = C / G, g = c / CG, cc = c % CG;
    double total = 0.0;
    for (int a = 0; a < KH; ++a) {
        int r0 = yy + PH - a * DY;
        if (r0 < 0 || r0 % SY) continue;
        int oy = r0 / SY;
        if (oy >= OH) continue;
        for (int b = 0; b < KW; ++b) {
            int q0 = xx + PW - b * DX;
            if (q0 < 0 || q0 % SX) continue;
            int ox = q0 / SX;
            if (ox >= OW) continue;
            ptrdiff_t row = ((ptrdiff_t)n * OH + oy) * OW + ox, k = (a * KW + b) * CG + cc;
            ptrdiff_t at[] = {g, TAP_MAJOR ? k : row, TAP_MAJOR ? row : k};
            total += (double)gcol[at];
        }
    }
    gx = (T)total;
"""


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

    def _args(self):
        win = self.win
        return tuple(numpy.int32(v) for v in (*self.x_shape, self.oh, self.ow, win.kh, win.kw, win.sy, win.sx,
                                              win.ph, win.pw, win.dy, win.dx, self.groups))

    def columns(self, x):
        """x (N, C, H, W) -> (G, N*oh*ow, kh*kw*C/G) columns, from the scratch pool."""
        xp = get_array_module(x)
        win = self.win
        if xp is not numpy:
            col = xp.empty((self.groups, self.rows, win.kh * win.kw * (x.shape[1] // self.groups)), dtype=x.dtype)
            elementwise_kernel("raw T x, " + _GEOMETRY_PARAMS, "T col", _COLUMNS, "minidl_im2col")(
                x, *self._args(), col)
            return col
        t = padded_channels_last(x, (win.ph, win.ph), (win.pw, win.pw), self.groups)
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
        """(G, O/G, kh*kw*C/G) -> (O, C/G, kh, kw): the inverse of :meth:`weight_matrix`, contiguous."""
        o, cg, kh, kw = w_shape
        return get_array_module(m).ascontiguousarray(m.reshape(o, kh, kw, cg).transpose(0, 3, 1, 2))

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

    def _fold_cuda(self, gcol, tap_major: bool):
        xp = get_array_module(gcol)
        n, c, h, w = self.x_shape
        gx = xp.empty((n, h, w, c), dtype=gcol.dtype).transpose(0, 3, 1, 2)  # channels-last
        elementwise_kernel("raw T gcol, " + _GEOMETRY_PARAMS + ", bool TAP_MAJOR", "T gx", _FOLD, "minidl_col2im")(
            gcol, *self._args(), numpy.bool_(tap_major), gx)
        return gx

    def fold(self, gcol):
        """(G, N*oh*ow, kh*kw*C/G) column gradients -> (N, C, H, W), channels-last: the adjoint of columns()."""
        xp = get_array_module(gcol)
        if xp is not numpy:
            return self._fold_cuda(gcol, tap_major=False)
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
        if xp is not numpy:
            return self._fold_cuda(gcol_t, tap_major=True)
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
