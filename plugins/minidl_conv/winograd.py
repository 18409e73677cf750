"""Winograd minimal filtering F(m x m, r x r) for stride-1 convolutions: the ``winograd`` algorithm.

A stride-1, dilation-1 r x r convolution is computed over m x m output
tiles, each read from an n x n input tile (n = m + r - 1), as

    Y = A^T [ sum_c (G g G^T) * (B^T d B) ] A        (* elementwise, per tile)

so the channel sums become one GEMM per transform point xi (n*n of them):
(tiles, C) @ (C, O) instead of the direct (pixels, r*r*C) @ (r*r*C, O),
about r*r*m*m / (n*n) times fewer multiply-adds (4x for F(4x4, 3x3),
6.25x for F(4x4, 5x5)). Every transform is one GEMM over all tiles at
once, with the 2-D transform written as a Kronecker product
(kron(B^T, B^T) is (n*n, n*n)); the only Python loops are over m*m output
offsets and over groups.

The weight gradient has the same shape of computation: with dM = A dY A^T
per tile, dU[xi] = V[xi]^T @ dM[xi] (one GEMM per point, summing over
batch and tiles) and dg = G^T dU G. The input gradient is a forward
Winograd convolution of dY with the flipped kernels.

Transform matrices come from Toom-Cook at the points 0, 1, -1, 2, -2, 1/2,
-1/2 (the first n - 1 of them, plus infinity), built exactly with fractions:
A^T = V_m^T, G = V_r, B^T = V_n^-T with V_k the (n, k) evaluation matrix;
each row of B^T is then scaled to integers (the inverse scale moves to G),
so the data transforms round as little as possible. float32 results stay
within about 1e-5 of float64 (relative to the output's scale).

Layouts: tiles are (n*n, N*th*tw, C) -- point-major, channels innermost, so
each point's slice is a ready GEMM operand and a group is a column block.
"""
from __future__ import annotations

import functools
from fractions import Fraction
from math import lcm

import numpy

from minidl.backend import as_device, get_array_module, transfer
from minidl.cpu import scratch
from minidl.functions import ConvAlgorithm, ConvProblem

from minidl.functions.im2col import padded_channels_last

from .im2col_gemm import flip_unsupported, flipped_kernels, flipped_problem

_POINTS = (0, 1, -1, 2, -2, Fraction(1, 2), Fraction(-1, 2))
# Output tiles m tried for each kernel size r (n = m + r - 1 <= 8 points keeps float32 within
# about 2e-5); winograd_tile() picks the one with the fewest multiplies for the output size.
TILES = {3: (2, 3, 4, 5), 5: (2, 3, 4)}


def _evaluation(points, size):
    """(len(points) + 1, size): p**k for each finite point, then infinity (the leading coefficient)."""
    rows = [[Fraction(p) ** k for k in range(size)] for p in points]
    rows.append([Fraction(int(k == size - 1)) for k in range(size)])
    return rows


def _inverse(rows):
    """Exact inverse of a square matrix of Fractions (Gauss-Jordan)."""
    n = len(rows)
    a = [list(row) + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(rows)]
    for c in range(n):
        p = next(r for r in range(c, n) if a[r][c] != 0)
        a[c], a[p] = a[p], a[c]
        a[c] = [v / a[c][c] for v in a[c]]
        for r in range(n):
            if r != c and a[r][c] != 0:
                f = a[r][c]
                a[r] = [u - f * v for u, v in zip(a[r], a[c])]
    return [row[n:] for row in a]


@functools.lru_cache(maxsize=None)
def matrices(m: int, r: int):
    """(A^T (m, n), G (n, r), B^T (n, n)) of F(m, r) as float64 NumPy arrays."""
    n = m + r - 1
    if n - 1 > len(_POINTS):
        raise ValueError(f"F({m}, {r}) needs {n - 1} interpolation points, only {len(_POINTS)} are defined")
    points = _POINTS[:n - 1]
    vm, g, vn = _evaluation(points, m), _evaluation(points, r), _evaluation(points, n)
    at = [[vm[j][i] for j in range(n)] for i in range(m)]
    bt = [list(col) for col in zip(*_inverse(vn))]  # (V_n^-1)^T
    for j, row in enumerate(bt):  # integer rows in B^T, the scale moved to G
        scale = lcm(*(v.denominator for v in row))
        bt[j] = [v * scale for v in row]
        g[j] = [v / scale for v in g[j]]
    return tuple(numpy.array([[float(v) for v in row] for row in a]) for a in (at, g, bt))


@functools.lru_cache(maxsize=None)
def _kron(m: int, r: int, dtype, device: str):
    """Kronecker forms (A2 (m*m, n*n), G2 (n*n, r*r), B2 (n*n, n*n)) in ``dtype``, C-contiguous, on ``device``
    (copied there once)."""
    return tuple(transfer(numpy.ascontiguousarray(numpy.kron(a, a).astype(dtype)), as_device(device))
                 for a in matrices(m, r))


class WinogradPlan:
    """F(m x m, r x r) for one (N, C, H, W) input, r x r kernels, padding (ph, pw) and groups, computing in dtype."""

    def __init__(self, x_shape, r: int, padding, groups: int, m: int, dtype, device: str = "cpu:0"):
        self.dtype = numpy.dtype(dtype)
        self.device = device
        self.n_img, self.c, self.h, self.w = x_shape
        self.r, self.m, self.n = r, m, m + r - 1
        self.ph, self.pw = padding
        self.groups = groups
        self.oh = self.h + 2 * self.ph - r + 1
        self.ow = self.w + 2 * self.pw - r + 1
        self.th, self.tw = -(-self.oh // m), -(-self.ow // m)
        self.tiles = self.n_img * self.th * self.tw

    def _kron(self, xp):
        return _kron(self.m, self.r, self.dtype, self.device)

    def input_tiles(self, x):
        """x (N, C, H, W), any storage order -> V = B^T d B for every tile, (n*n, tiles, C)."""
        xp = get_array_module(x)
        n_img, c, h, w, m, n = self.n_img, self.c, self.h, self.w, self.m, self.n
        hp, wp = self.th * m + n - m, self.tw * m + n - m
        ph, pw = self.ph, self.pw
        padded = padded_channels_last(x.astype(self.dtype, copy=False), (ph, hp - h - ph), (pw, wp - w - pw))[0]
        s = padded.strides
        view = xp.lib.stride_tricks.as_strided(
            padded, (n, n, n_img, self.th, self.tw, c), (s[1], s[2], s[0], s[1] * m, s[2] * m, s[3]))
        d = scratch.empty((n * n, self.tiles, c), self.dtype, xp)
        d.reshape(view.shape)[...] = view
        scratch.release(padded)
        v = scratch.empty(d.shape, self.dtype, xp)
        b2 = self._kron(xp)[2]
        xp.matmul(b2, d.reshape(n * n, -1), out=v.reshape(n * n, -1))
        scratch.release(d)
        return v

    def kernels(self, W):
        """(O, C/G, r, r) -> U = G g G^T, (n*n, G, C/G, O/G)."""
        xp = get_array_module(W)
        o, cg = W.shape[:2]
        g = self.groups
        wt = W.reshape(g, o // g, cg, self.r * self.r).transpose(3, 0, 2, 1).reshape(self.r * self.r, -1)
        g2 = self._kron(xp)[1]
        wt = wt.astype(self.dtype, copy=False)
        return xp.matmul(g2, wt).reshape(self.n * self.n, g, cg, o // g)

    def products(self, v, u):
        """sum over channels per point and group: (n*n, tiles, C) x (n*n, G, C/G, O/G) -> (n*n, tiles, O)."""
        xp = get_array_module(v, u)
        nn, g, cg, og = u.shape
        out = scratch.empty((nn, self.tiles, g * og), self.dtype, xp)
        for k in range(g):  # a group is a column block of v and of out (the whole arrays when g == 1)
            xp.matmul(v[:, :, k * cg:(k + 1) * cg], u[:, k], out=out[:, :, k * og:(k + 1) * og])
        return out

    def output(self, mm):
        """(n*n, tiles, O) products -> Y = A^T M A cropped to (N, O, oh, ow), channels-last storage."""
        xp = get_array_module(mm)
        m, o = self.m, mm.shape[2]
        a2 = self._kron(xp)[0]
        tiles = scratch.empty((m, m, self.n_img, self.th, self.tw, o), self.dtype, xp)
        xp.matmul(a2, mm.reshape(self.n * self.n, -1), out=tiles.reshape(m * m, -1))
        y = xp.empty((self.n_img, self.oh, self.ow, o), dtype=self.dtype)
        for i in range(m):
            for j in range(m):
                y[:, i::m, j::m] = tiles[i, j, :, :-(-(self.oh - i) // m), :-(-(self.ow - j) // m)]
        scratch.release(tiles)
        return y.transpose(0, 3, 1, 2)

    def output_grad_tiles(self, gy):
        """gy (N, O, oh, ow), any storage order -> dM = A dY A^T per tile, (n*n, tiles, O) (the adjoint of output)."""
        xp = get_array_module(gy)
        m, o = self.m, gy.shape[1]
        gyl = gy.transpose(0, 2, 3, 1)  # (N, oh, ow, O)
        tiles = scratch.empty((m, m, self.n_img, self.th, self.tw, o), self.dtype, xp)
        for i in range(m):
            for j in range(m):
                rows, cols = -(-(self.oh - i) // m), -(-(self.ow - j) // m)
                tiles[i, j, :, :rows, :cols] = gyl[:, i::m, j::m]
                tiles[i, j, :, rows:] = 0  # outputs past the edge (tiles overhang it) get no gradient
                tiles[i, j, :, :rows, cols:] = 0
        a2 = self._kron(xp)[0]
        dm = scratch.empty((self.n * self.n, self.tiles, o), self.dtype, xp)
        xp.matmul(a2.T, tiles.reshape(m * m, -1), out=dm.reshape(self.n * self.n, -1))
        scratch.release(tiles)
        return dm

    def kernel_grad(self, v, dm, w_shape):
        """dW (O, C/G, r, r) from input tiles V (n*n, tiles, C) and dM (n*n, tiles, O): the adjoint of kernels."""
        xp = get_array_module(v, dm)
        o, cg = w_shape[:2]
        g, og, nn = self.groups, o // self.groups, self.n * self.n
        du = xp.empty((nn, g, cg, og), dtype=self.dtype)
        for k in range(g):
            xp.matmul(v[:, :, k * cg:(k + 1) * cg].transpose(0, 2, 1), dm[:, :, k * og:(k + 1) * og], out=du[:, k])
        g2 = self._kron(xp)[1]
        gw = xp.matmul(g2.T, du.reshape(nn, -1))  # (r*r, G*C/G*O/G)
        gw = gw.reshape(self.r * self.r, g, cg, og).transpose(1, 3, 2, 0)  # (G, O/G, C/G, r*r)
        return xp.ascontiguousarray(gw).reshape(w_shape)


WINOGRAD_MIN_CHANNELS = 32  # per group, in and out, for the CPU default rule


def winograd_tile(problem: ConvProblem) -> int:
    """The output tile m for ``problem``: the one in TILES[r] with the fewest multiplies, (m + r - 1)**2 per
    tile times the tiles covering the output (the smaller m on a tie): 5 for 13x13 outputs of 3x3 kernels,
    4 for 27x27 outputs of 5x5 kernels, 3 for 6x6 outputs of 3x3 kernels."""
    r = problem.w_shape[2]
    oh, ow = problem.output_hw
    return min(TILES[r], key=lambda m: ((m + r - 1) ** 2 * -(-oh // m) * -(-ow // m), m))


@functools.lru_cache(maxsize=512)
def plan_for(problem: ConvProblem) -> WinogradPlan:
    """The Winograd plan of ``problem`` (made once per problem)."""
    w = problem.window
    return WinogradPlan(problem.x_shape, problem.w_shape[2], (w.ph, w.pw), problem.groups, winograd_tile(problem),
                        problem.dtype, problem.device)


class Winograd(ConvAlgorithm):
    """Winograd F(m x m, r x r) for stride-1, undilated 3x3 and 5x5 convolutions in float32 or float64, in all
    three passes (the input gradient is the Winograd convolution of gy with the flipped kernels).

    3-6x fewer multiply-adds than im2col + GEMM; float32 results within about 2e-5 of float64 (relative to
    the output's scale) against 3-8e-7 for im2col. Default on the CPU at 32 or more channels per group in
    and out (thinner per-point GEMMs do not pay for the transforms: alexnet-mini's 16-channel 5x5 was 15 %
    slower) and outputs of at least 2x2. Not a GPU default: one GEMM launch per transform point and group.
    """

    def unsupported(self, problem):
        o, cg, kh, kw = problem.w_shape
        win = problem.window
        if kh != kw or kh not in TILES:
            return f"{kh}x{kw} kernels: needs {' or '.join(f'{r}x{r}' for r in TILES)}"
        if win.dilation != (1, 1):
            return f"dilation {win.dy}x{win.dx}: needs 1"
        if problem.dtype not in (numpy.float32, numpy.float64):
            return f"{problem.dtype.name}: needs float32 or float64"
        return flip_unsupported(problem)  # stride 1, and padding the flipped convolution can undo

    def priority(self, problem):
        cg, og = problem.channels_per_group
        if problem.device_type != "cpu" or min(cg, og) < WINOGRAD_MIN_CHANNELS or min(problem.output_hw) < 2:
            return None
        return 3

    def workspace_bytes(self, problem):
        plan = plan_for(problem)
        c, o = problem.x_shape[1], problem.w_shape[0]
        return plan.n * plan.n * plan.tiles * (c + o) * problem.dtype.itemsize  # input tiles (kept) and products

    def forward(self, x, W, problem):
        plan = plan_for(problem)
        v = plan.input_tiles(x)
        products = plan.products(v, plan.kernels(W))
        y = plan.output(products)
        scratch.release(products)
        return y, v

    def grad_input(self, gy, W, problem):
        gx, v = self.forward(gy, flipped_kernels(W, problem.groups), flipped_problem(problem))
        scratch.release(v)
        return gx

    def grad_weight(self, x, gy, problem, saved=None):
        plan = plan_for(problem)
        v = plan.input_tiles(x) if saved is None else saved
        dm = plan.output_grad_tiles(gy)
        gW = plan.kernel_grad(v, dm, problem.w_shape)
        scratch.release(dm)
        if saved is None:
            scratch.release(v)
        return gW

    def release(self, saved):
        scratch.release(saved)
