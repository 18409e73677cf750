"""The convolution-algorithm interface, and how one algorithm is chosen for each convolution.

An algorithm (:class:`ConvAlgorithm`) computes a convolution's forward pass,
input gradient and weight gradient for the problems (:class:`ConvProblem`)
it supports. Plugins register them with ``minidl_register_conv_algorithms``;
minidl's own are in ``plugins/minidl_conv``. For each problem, :func:`select`
settles the algorithm once and caches it:

1. A forced choice -- ``algorithm=`` on ``F.conv2d``, ``algorithm:`` on a
   conv2d layer in YAML, ``train: {conv_algorithm: NAME}``, or
   :func:`set_conv_algorithm` -- is used as given; a problem it cannot
   compute is an error saying why.
2. ``"auto"`` times every supporting algorithm once (forward, input and
   weight gradient on random data of the problem's shape) and keeps the
   fastest (:func:`autotune`).
3. Otherwise the default rule: among the registered algorithms that support
   the problem, the one whose ``priority(problem)`` is highest (ties: the
   name first in alphabetical order). minidl's own rank:

   ==============  ====  ===============================================================
   algorithm       CPU   when
   ==============  ====  ===============================================================
   fft             4     stride 1, images up to 32x32, >= 8 input channels per group, and
                         kernels of 25 taps or more, or 3x3 with <= 96 channels per group
                         in and out (on a GPU: never by default; not yet measured there)
   winograd        3     stride 1, 3x3 or 5x5, float32/64, >= 32 channels per group in
                         and out, output >= 2x2 (on a GPU: never by default; its
                         per-point GEMM loop is launch-bound there)
   im2col_flip     2     stride 1, at most twice as many output as input channels per group
   im2col_tapfold  1     fewer than 16 input channels per group, or stride 1
   im2col_gemm     0     every convolution (the reference)
   ==============  ====  ===============================================================

   The optional ``cudnn`` algorithm (``plugins/minidl_cudnn``, ``pip install 'minidl[cudnn]'``)
   ranks 10 on CUDA devices for every convolution cuDNN builds, and is never used on the CPU.

``use_deterministic_algorithms(True)`` limits every choice to algorithms
that give bit-identical results run to run (``ConvAlgorithm.deterministic``);
forcing another is then an error.
"""
from __future__ import annotations

import difflib
import threading
import time
import warnings
from dataclasses import dataclass

import numpy

from ..backend import as_device, as_dtype, synchronize, transfer
from .window import Window

__all__ = [
    "ConvProblem", "ConvAlgorithm", "select", "autotune", "conv_algorithms", "get_algorithm",
    "use_deterministic_algorithms", "are_deterministic_algorithms_enabled", "set_conv_algorithm",
    "get_conv_algorithm", "autotune_timings", "AUTO",
]

AUTO = "auto"


@dataclass(frozen=True)
class ConvProblem:
    """One convolution as an algorithm sees it; hashable, so choices can be cached by it.

    Attributes:
        x_shape: input (N, C, H, W).
        w_shape: kernels (O, C/groups, kh, kw).
        window: stride, padding and dilation (and the kernel size) as a :class:`~minidl.functions.Window`.
        groups: channel groups (AlexNet's columns are 2).
        dtype: the dtype the convolution computes in (a NumPy dtype).
        device: where it runs, ``"cpu:0"`` or ``"cuda:0"``.
    """

    x_shape: tuple
    w_shape: tuple
    window: Window
    groups: int
    dtype: numpy.dtype
    device: str

    @classmethod
    def of(cls, x, W, window: Window, groups: int) -> "ConvProblem":
        """The problem of convolving Tensor ``x`` with Tensor ``W``."""
        return cls(tuple(x.shape), tuple(W.shape), window, groups,
                   numpy.result_type(x.dtype, W.dtype), str(x.device))

    @classmethod
    def make(cls, x_shape, w_shape, stride=1, padding=0, dilation=1, groups: int = 1, dtype="float32",
             device="cpu:0") -> "ConvProblem":
        """From shapes and PyTorch-style arguments (ints or pairs; dtype and device as names)."""
        window = Window.make(tuple(w_shape)[2:], stride, padding, dilation)
        device = str(device).strip().lower()  # named, not opened: a GPU's rule can be asked about anywhere
        return cls(tuple(x_shape), tuple(w_shape), window, groups, as_dtype(dtype),
                   device if ":" in device else device + ":0")

    @property
    def device_type(self) -> str:
        """``"cpu"`` or ``"cuda"``."""
        return self.device.partition(":")[0]

    @property
    def output_hw(self) -> tuple:
        return self.window.output_hw(*self.x_shape[2:])

    @property
    def y_shape(self) -> tuple:
        return (self.x_shape[0], self.w_shape[0]) + self.output_hw

    @property
    def channels_per_group(self) -> tuple:
        """(input, output) channels per group."""
        return self.w_shape[1], self.w_shape[0] // self.groups

    def as_dict(self) -> dict:
        """JSON-able form (checkpoints record algorithm choices by it)."""
        w = self.window
        return {"x_shape": list(self.x_shape), "w_shape": list(self.w_shape), "stride": [w.sy, w.sx],
                "padding": [w.ph, w.pw], "dilation": [w.dy, w.dx], "groups": self.groups,
                "dtype": self.dtype.name, "device": self.device}

    @classmethod
    def from_dict(cls, d: dict) -> "ConvProblem":
        """The inverse of :meth:`as_dict`."""
        return cls.make(d["x_shape"], d["w_shape"], d["stride"], d["padding"], d["dilation"], int(d["groups"]),
                        d["dtype"], d["device"])

    def __str__(self):
        w = self.window
        return (f"x {'x'.join(map(str, self.x_shape))}, W {'x'.join(map(str, self.w_shape))}, stride {w.sy}x{w.sx}, "
                f"padding {w.ph}x{w.pw}, dilation {w.dy}x{w.dx}, groups {self.groups}, {self.dtype.name} on {self.device}")


class ConvAlgorithm:
    """How a convolution's three passes are computed. Subclass it and register the class::

        @minidl.hookimpl
        def minidl_register_conv_algorithms(register):
            register("direct", Direct)        # Direct() is made once, when first needed

    Arrays in and out are NumPy or CuPy arrays indexed (N, C, H, W) in any
    storage order; results must equal the reference ``im2col_gemm`` to
    rounding (the conformance suite checks it in float64 on every shape the
    algorithm claims). Methods receive the :class:`ConvProblem` of the
    *forward* convolution in every pass.

    Attributes:
        name: set to the registered name when the registry is built.
        deterministic: True when results are bit-identical run to run (on a
            GPU: no atomics, no run-dependent reduction order).
            ``mdl.use_deterministic_algorithms(True)`` chooses only these.
    """

    name = None
    deterministic = True

    def unsupported(self, problem: ConvProblem) -> str | None:
        """None when this algorithm computes ``problem``, else a short reason ("stride 4: needs 1")."""
        return None

    def unavailable(self) -> str | None:
        """Optional: why this algorithm computes nothing at all in this environment (a package, a library or
        a device missing), or None. ``minidl plugins`` shows it; :meth:`unsupported` must refuse every
        problem while it is not None."""
        return None

    def priority(self, problem: ConvProblem) -> float | None:
        """Rank under the default rule (higher wins among supporting algorithms), or None: never by default."""
        return None

    def workspace_bytes(self, problem: ConvProblem) -> int:
        """Temporary memory a forward pass takes beyond its output (what ``minidl summary`` reports)."""
        return 0

    def forward(self, x, W, problem: ConvProblem):
        """(y, saved): y (N, O, oh, ow) and whatever the weight gradient may reuse (or None)."""
        raise NotImplementedError

    def grad_input(self, gy, W, problem: ConvProblem):
        """gx (N, C, H, W): the transposed convolution of gy (N, O, oh, ow) with W."""
        raise NotImplementedError

    def grad_weight(self, x, gy, problem: ConvProblem, saved=None):
        """gW (O, C/G, kh, kw), C-contiguous; ``saved`` is what :meth:`forward` returned for x, or None."""
        raise NotImplementedError

    def release(self, saved) -> None:
        """Hand back what forward saved, once nothing will read it."""

    def __repr__(self):
        return f"<conv algorithm {self.name or type(self).__name__}>"


class _Settings:
    deterministic = False
    request = None  # the process-wide default request (set_conv_algorithm)


_settings = _Settings()


def use_deterministic_algorithms(mode: bool) -> None:
    """Choose only algorithms whose results are bit-identical run to run (as ``torch.use_deterministic_algorithms``).

    Process-wide, like PyTorch's. Forcing a non-deterministic algorithm while it is on raises.
    """
    _settings.deterministic = bool(mode)


def are_deterministic_algorithms_enabled() -> bool:
    return _settings.deterministic


def set_conv_algorithm(request: str | None) -> None:
    """The algorithm every convolution without its own choice uses: a registered name, ``"auto"``,
    or None for the default rule (process-wide, until changed)."""
    if request is not None and request != AUTO:
        get_algorithm(request)  # unknown names fail here, not at the first convolution
    _settings.request = request


def get_conv_algorithm() -> str | None:
    """What :func:`set_conv_algorithm` set (None: the default rule)."""
    return _settings.request


class _Catalogue:
    """The registered algorithms (one instance each) and the choices made, for one plugin registry."""

    def __init__(self, registry):
        from ..plugins import PluginWarning

        self.registry = registry
        self.algorithms = {}
        for entry in registry:
            try:
                algorithm = entry.create()
                missing = [m for m in ("unsupported", "priority", "workspace_bytes", "forward", "grad_input",
                                       "grad_weight", "release") if not callable(getattr(algorithm, m, None))]
                if missing:
                    raise TypeError(f"it has no {', '.join(missing)} (subclass minidl.functions.ConvAlgorithm)")
                algorithm.name = entry.name
            except Exception as e:  # a broken plugin must not break every convolution
                warnings.warn(f"conv algorithm {entry.name!r} from {entry.plugin.provider} cannot be used: "
                              f"{type(e).__name__}: {e}; continuing without it", PluginWarning, stacklevel=3)
                continue
            self.algorithms[entry.name] = algorithm
        self.choices = {}  # (problem, request, deterministic) -> algorithm
        self.timings = {}  # (problem, deterministic) -> {name: seconds}, from autotune


_catalogue = None
_catalogue_lock = threading.Lock()


def _current() -> _Catalogue:
    from ..plugins import registry  # the one upward reference: plugins load when a convolution first asks

    reg = registry("conv_algorithms")
    global _catalogue
    if _catalogue is None or _catalogue.registry is not reg:
        with _catalogue_lock:
            if _catalogue is None or _catalogue.registry is not reg:
                _catalogue = _Catalogue(reg)
    return _catalogue


def conv_algorithms() -> dict:
    """name -> :class:`ConvAlgorithm` for every registered algorithm."""
    return dict(_current().algorithms)


def get_algorithm(name: str) -> ConvAlgorithm:
    """The registered algorithm ``name``; a ValueError listing the known ones (and the closest) if none."""
    algorithms = _current().algorithms
    if name not in algorithms:
        close = difflib.get_close_matches(str(name), algorithms, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown conv algorithm {name!r}.{hint} Known: {', '.join(sorted(algorithms))}, or 'auto'")
    return algorithms[name]


def _check(algorithm: ConvAlgorithm, problem: ConvProblem) -> ConvAlgorithm:
    reason = algorithm.unsupported(problem)
    if reason is not None:
        raise ValueError(f"conv algorithm {algorithm.name or algorithm!r} cannot compute this convolution "
                         f"({problem}): {reason}")
    if _settings.deterministic and not algorithm.deterministic:
        raise RuntimeError(f"conv algorithm {algorithm.name!r} is not deterministic, and "
                           "mdl.use_deterministic_algorithms(True) is set")
    return algorithm


def _supporting(catalogue: _Catalogue, problem: ConvProblem) -> list:
    found = [a for name, a in sorted(catalogue.algorithms.items())
             if a.unsupported(problem) is None and (a.deterministic or not _settings.deterministic)]
    if not found:
        reasons = "; ".join(f"{name}: {a.unsupported(problem) or 'not deterministic'}"
                            for name, a in sorted(catalogue.algorithms.items())) or "none is registered"
        raise ValueError(f"no conv algorithm computes this convolution ({problem}): {reasons}")
    return found


def select(problem: ConvProblem, request=None) -> ConvAlgorithm:
    """The algorithm that computes ``problem``: see the module docstring for the rule.

    ``request`` is None (the process-wide setting, else the default rule),
    ``"auto"``, a registered name, or a :class:`ConvAlgorithm` instance.
    Settled once per (problem, request) and cached.
    """
    if request is None:
        request = _settings.request
    catalogue = _current()
    key = (problem, request, _settings.deterministic)
    chosen = catalogue.choices.get(key)
    if chosen is not None:
        return chosen
    if isinstance(request, ConvAlgorithm):
        chosen = _check(request, problem)
    elif request == AUTO:
        chosen = autotune(problem)
    elif request is not None:
        chosen = _check(get_algorithm(request), problem)
    else:
        ranked = [(a.priority(problem), a.name, a) for a in _supporting(catalogue, problem)]
        ranked = [r for r in ranked if r[0] is not None]
        if not ranked:
            raise ValueError(f"no conv algorithm is chosen by default for this convolution ({problem}); "
                             "force one by name or use 'auto'")
        chosen = min(ranked, key=lambda r: (-r[0], r[1]))[2]
    catalogue.choices[key] = chosen
    return chosen


def autotune(problem: ConvProblem, repeats: int = 2) -> ConvAlgorithm:
    """Time every algorithm that supports ``problem`` on random data of its shape; return the fastest.

    Each is timed for a forward pass, an input gradient and a weight gradient
    together, ``repeats`` times after one warm-up run (kernel compilation,
    memory pools), taking the best. The seconds are kept in
    ``autotune_timings(problem)``. Uses its own random generator (global
    random state is untouched).
    """
    catalogue = _current()
    candidates = _supporting(catalogue, problem)
    device = as_device(problem.device)
    rng = numpy.random.default_rng(0)

    def sample(shape):
        return transfer(rng.standard_normal(shape).astype(problem.dtype), device)

    x, W, gy = sample(problem.x_shape), sample(problem.w_shape), sample(problem.y_shape)
    timings = {}
    with device.context():
        for algorithm in candidates:
            best = float("inf")
            for run in range(repeats + 1):
                start = time.perf_counter()
                _, saved = algorithm.forward(x, W, problem)
                algorithm.grad_input(gy, W, problem)
                algorithm.grad_weight(x, gy, problem, saved)
                algorithm.release(saved)
                synchronize(device)
                if run:
                    best = min(best, time.perf_counter() - start)
            timings[algorithm.name] = best
    catalogue.timings[(problem, _settings.deterministic)] = timings
    return min(candidates, key=lambda a: (timings[a.name], a.name))


def autotune_timings(problem: ConvProblem) -> dict:
    """{algorithm name: seconds} measured by the last :func:`autotune` of ``problem`` (empty if none)."""
    return dict(_current().timings.get((problem, _settings.deterministic), {}))
