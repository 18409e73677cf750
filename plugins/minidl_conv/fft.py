"""Convolution through the discrete Fourier transform of whole images: the ``fft`` algorithm.

A stride-1, undilated convolution is a circular one over a period P = size +
padding per axis: just long enough that every wrap-around lands on zero
padding, so the kept outputs are exact. Each image and each kernel is
transformed once; the sum over input channels becomes one complex GEMM per
frequency, (N, C/G) @ (C/G, O/G); an inverse transform gives the output:

    y = Inv( sum_c X_c * Wt_c )      X = Fx(x), Wt = Fw(W), * elementwise

All three maps are linear, so the two gradients are the same steps run
backwards through each map's adjoint (with respect to the real inner product
Re sum conj(a) b): gx = Fx*( Inv*(gy) * conj(Wt) ) summed over output channels,
and gW = Fw*( sum_n conj(X) * Inv*(gy) ). Every pass is exact up to rounding;
no flipped kernels, no tiles.

The transforms are dense DFT matrices applied one axis at a time: a real GEMM
along the width, keeping the P//2 + 1 frequencies a real image needs (real
and imaginary parts interleaved, so its result is a complex array as it
stands), then a complex GEMM along the height. For small images with large
kernels this is cheap: alexnet-mini's conv2 (13x13 input, 5x5 kernels) has
15 x 8 = 120 frequencies, each a complex multiply-add (4 real) per pair of
channels, against 169 x 25 = 4225 multiply-adds for im2col + GEMM.

Frequency-domain layout: (Fh, Fw, G, N, C/G), frequency-major, so each
frequency's slice is a ready GEMM operand.
"""
from __future__ import annotations

import functools
import threading

import numpy

from minidl.backend import as_device, get_array_module, transfer
from minidl.functions import ConvAlgorithm, ConvProblem


def axis_matrices(size: int, kernel: int, pad: int, half: bool):
    """The DFT matrices of one spatial axis, complex128 NumPy arrays.

    Returns (data (F, size), kernel (F, kernel), inverse (out, F)) for the
    period P = size + pad, with F = P frequencies, or P // 2 + 1 when ``half``
    (the width axis of a real image; ``inverse`` then weights the frequencies
    that stand for a conjugate pair by 2, and the caller takes the real part).
    """
    period = size + pad
    out = size + 2 * pad - kernel + 1
    freqs = numpy.arange(period // 2 + 1 if half else period)

    def phase(positions, sign):  # exp(sign * 2 pi i f p / P), the angle reduced mod P before scaling
        turns = numpy.mod(numpy.outer(freqs, positions), period) / period
        return numpy.exp(sign * 2j * numpy.pi * turns)

    data = phase(numpy.arange(size), -1)
    kern = phase(numpy.arange(kernel) - pad, +1)  # correlation: the tap k reads the input k - pad away
    weight = numpy.ones(len(freqs))
    if half:
        weight[1:] = 2
        if period % 2 == 0:
            weight[-1] = 1  # the Nyquist frequency is its own conjugate
    inverse = (phase(numpy.arange(out), +1) * (weight / period)[:, None]).T
    return data, kern, inverse


def _interleaved(m, dtype):
    """Complex (F, n) as the real (n, 2F) whose product with a real row vector gives re, im interleaved."""
    out = numpy.empty((m.shape[1], 2 * m.shape[0]))
    out[:, 0::2], out[:, 1::2] = m.real.T, m.imag.T
    return out.astype(dtype)


def _real_part(m, dtype):
    """Complex (n, F) as the real (2F, n) that maps an interleaved complex row z to Re(m @ z)."""
    out = numpy.empty((2 * m.shape[1], m.shape[0]))
    out[0::2], out[1::2] = m.real.T, -m.imag.T
    return out.astype(dtype)


class FFTPlan:
    """The transform matrices of one problem, on its device in its dtype (made once per problem).

    Each transform is a pair (height, width): an analysis (real image -> spectrum)
    has a complex (Fh, h) height matrix and a real (w, 2 Fw) width matrix; a
    synthesis (spectrum -> real image) a complex (h, Fh) and a real (2 Fw, w).
    """

    def __init__(self, problem: ConvProblem):
        n, c, h, w = problem.x_shape
        o, cg, kh, kw = problem.w_shape
        win = problem.window
        self.groups = problem.groups
        self.real = numpy.dtype(problem.dtype)
        self.complex = numpy.result_type(self.real, numpy.complex64)
        hd, hk, hi = axis_matrices(h, kh, win.ph, half=False)
        wd, wk, wi = axis_matrices(w, kw, win.pw, half=True)
        device = as_device(problem.device)

        def analysis(height, width):
            return (transfer(numpy.ascontiguousarray(height.astype(self.complex)), device),
                    transfer(_interleaved(width, self.real), device))

        def synthesis(height, width):
            return (transfer(numpy.ascontiguousarray(height.astype(self.complex)), device),
                    transfer(_real_part(width, self.real), device))

        self.x_in, self.w_in = analysis(hd, wd), analysis(hk, wk)
        self.y_out = synthesis(hi, wi)
        # the adjoints: of the output synthesis (gy -> spectrum) and of the two analyses
        self.gy_in = analysis(hi.conj().T, wi.conj().T)
        self.gx_out = synthesis(hd.conj().T, wd.conj().T)
        self.gw_out = synthesis(hk.conj().T, wk.conj().T)

    def analyse(self, a, matrices, order):
        """Real a (*lead, h, w) -> complex (Fh, Fw, *lead reordered by ``order``)."""
        xp = get_array_module(a)
        height, width = matrices
        *lead, h, w = a.shape
        fh, fw = height.shape[0], width.shape[1] // 2
        a = xp.ascontiguousarray(a, dtype=self.real)
        t = xp.matmul(a.reshape(-1, w), width).view(self.complex).reshape(*lead, h, fw)
        t = xp.ascontiguousarray(t.transpose(len(lead), len(lead) + 1, *order))  # (h, Fw, *lead')
        return xp.matmul(height, t.reshape(h, -1)).reshape(fh, fw, *(lead[i] for i in order))

    def synthesise(self, z, matrices, order):
        """Complex z (Fh, Fw, *lead) -> real (*lead reordered by ``order``, h, w)."""
        xp = get_array_module(z)
        height, width = matrices
        fh, fw, *lead = z.shape
        h = height.shape[0]
        t = xp.matmul(height, z.reshape(fh, -1)).reshape(h, fw, *lead)
        t = xp.ascontiguousarray(t.transpose(*(2 + i for i in order), 0, 1))  # (*lead', h, Fw)
        out = xp.matmul(t.view(self.real).reshape(-1, 2 * fw), width)
        return out.reshape(*(lead[i] for i in order), h, width.shape[1])

    def images(self, a, matrices):
        """(N, C, h, w) -> spectra (Fh, Fw, G, N, C/G)."""
        n, c, h, w = a.shape
        return self.analyse(a.reshape(n, self.groups, c // self.groups, h, w), matrices, (1, 0, 2))

    def from_spectra(self, z, matrices):
        """Spectra (Fh, Fw, G, N, C/G) -> (N, C, h, w), C-contiguous."""
        out = self.synthesise(z, matrices, (1, 0, 2))
        n, g, cg, h, w = out.shape
        return out.reshape(n, g * cg, h, w)

    def kernels(self, W):
        """(O, C/G, kh, kw) -> spectra (Fh, Fw, G, C/G, O/G)."""
        o, cg, kh, kw = W.shape
        return self.analyse(W.reshape(self.groups, o // self.groups, cg, kh, kw), self.w_in, (0, 2, 1))


@functools.lru_cache(maxsize=512)
def plan_for(problem: ConvProblem) -> FFTPlan:
    """The FFT plan of ``problem`` (made once per problem)."""
    return FFTPlan(problem)


class FFT(ConvAlgorithm):
    """Whole-image DFT convolution for stride-1, undilated convolutions in float32 or float64, all three passes.

    Pays where kernels are large against the image, or channels few: on the CPU it is the default on images up
    to 32x32 with at least 8 input channels per group, for kernels of 25 taps or more (5x5 and up), and for 3x3
    kernels with at most 96 channels per group in and out (see FFT_MAX_CHANNELS). For alexnet-mini's conv2 that
    is 480 real multiply-adds per pair of channels, against 1024 for Winograd F(4x4, 5x5) tiles and 4225 for
    im2col. float32 results are within 3e-7 of float64, relative to the output's scale, on the shapes of
    test_fft_float32_accuracy (which holds them to 5e-6). Not a GPU default: not yet measured there.

    A backward pass transforms gy once: :meth:`grad_input` keeps gy's spectra (per thread) and
    :meth:`grad_weight`, called next with the same gy array object, takes them instead of transforming gy
    again, as :class:`~minidl.functions.conv.Conv2d`'s backward does. (So gy must not be changed in place
    between the two calls.)
    """

    def __init__(self):
        self._last = threading.local()  # .gy: (gy, problem, its spectra) from this thread's last grad_input

    def _take_gy_spectra(self, gy, problem, plan):
        last, self._last.gy = getattr(self._last, "gy", None), None
        if last is not None and last[0] is gy and last[1] == problem:
            return last[2]
        return plan.images(gy, plan.gy_in)

    def unsupported(self, problem):
        win = problem.window
        if (win.sy, win.sx) != (1, 1):
            return f"stride {win.sy}x{win.sx}: needs 1"
        if win.dilation != (1, 1):
            return f"dilation {win.dy}x{win.dx}: needs 1"
        if problem.dtype not in (numpy.float32, numpy.float64):
            return f"{problem.dtype.name}: needs float32 or float64"
        return None

    def priority(self, problem):
        taps = problem.w_shape[2] * problem.w_shape[3]
        cg, og = problem.channels_per_group
        if problem.device_type != "cpu" or max(problem.x_shape[2:]) > FFT_MAX_SIZE or cg < FFT_MIN_CHANNELS:
            return None
        if taps >= FFT_LARGE_KERNEL or (taps >= FFT_SMALL_KERNEL and max(cg, og) <= FFT_MAX_CHANNELS):
            return 4
        return None

    def workspace_bytes(self, problem):
        n, c, h, w = problem.x_shape
        win = problem.window
        freqs = (h + win.ph) * ((w + win.pw) // 2 + 1)
        return freqs * n * (c + problem.w_shape[0]) * 2 * problem.dtype.itemsize  # input spectra (kept), products

    def forward(self, x, W, problem):
        plan = plan_for(problem)
        xp = get_array_module(x)
        spectra = plan.images(x, plan.x_in)
        y = plan.from_spectra(xp.matmul(spectra, plan.kernels(W)), plan.y_out)
        return y, spectra

    def grad_input(self, gy, W, problem):
        plan = plan_for(problem)
        xp = get_array_module(gy)
        kernels = xp.conj(plan.kernels(W)).swapaxes(-1, -2)  # (Fh, Fw, G, O/G, C/G)
        gy_spectra = plan.images(gy, plan.gy_in)
        self._last.gy = (gy, problem, gy_spectra)  # for the weight gradient, next
        return plan.from_spectra(xp.matmul(gy_spectra, kernels), plan.gx_out)

    def grad_weight(self, x, gy, problem, saved=None):
        plan = plan_for(problem)
        xp = get_array_module(gy)
        spectra = plan.images(x, plan.x_in) if saved is None else saved
        products = xp.matmul(xp.conj(spectra).swapaxes(-1, -2), self._take_gy_spectra(gy, problem, plan))
        gW = plan.synthesise(products, plan.gw_out, (0, 2, 1))  # (G, O/G, C/G, kh, kw) from (.., C/G, O/G)
        return gW.reshape(problem.w_shape)

    def release(self, saved):
        self._last.gy = None  # a weight gradient that never came: let gy and its spectra go


# The CPU default rule: images up to 32x32 with at least 8 input channels per group, and either kernels of
# 25 taps or more (5x5 and up), or of 9 or more (3x3) with at most 96 channels per group in and out (with
# more, the per-frequency complex GEMMs cost more than Winograd's real ones: `bench_layers.py --algorithms`
# timed fft at 1.45-1.87x Winograd's time on AlexNet's 192-384-channel 3x3 layers, and `--mini` at
# 0.66-0.98x on alexnet-mini's conv3-5, 48-96 channels).
FFT_MAX_SIZE = 32
FFT_MIN_CHANNELS = 8
FFT_LARGE_KERNEL = 25
FFT_SMALL_KERNEL = 9
FFT_MAX_CHANNELS = 96
