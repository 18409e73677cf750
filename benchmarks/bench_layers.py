"""AlexNet layer shapes, forward + backward: minidl vs PyTorch (CPU), same run, same inputs.

    python benchmarks/bench_layers.py [--batch 32] [--repeat 3] [--algorithms] [--mini]

Conv layers use torchvision's AlexNet widths at 224x224 input (conv1 3->64
11x11/4 pad 2 ... conv5 256->256 3x3), plus fc6 (9216 -> 4096). Also a full
AlexNet-style step split by layer kind, to show what share pooling and LRN
take (their inputs stored channels-last, as minidl's convolutions leave
activations in a network, and, for comparison, C-contiguous). Prints times
and minidl's throughput as a fraction of PyTorch's (>= 1.0 means minidl is
faster). Goal (issue 3): >= 0.8x on every conv
shape; pooling + LRN under 15% of the full step. ``--algorithms`` also times
every convolution algorithm that supports each shape (what the default rule
in minidl.functions.conv_algorithm is tuned by). Heap tuning is on, as in
``minidl train`` (``mdl.cpu.tune_heap()``; it applies to the whole process,
PyTorch included). ``--mini`` times alexnet-mini's five convolutions instead (grouped as
in its model file; use ``--batch 128``, the main job's).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import minidl as mdl
import minidl.functions as F
from _timing import machine, try_import_torch

CONVS = [  # name, in, out, input size, kernel, stride, padding, groups
    ("conv1", 3, 64, 224, 11, 4, 2, 1),
    ("conv2", 64, 192, 27, 5, 1, 2, 1),
    ("conv3", 192, 384, 13, 3, 1, 1, 1),
    ("conv4", 384, 256, 13, 3, 1, 1, 1),
    ("conv5", 256, 256, 13, 3, 1, 1, 1),
]
MINI_CONVS = [  # models/alexnet-mini.yaml on 1x28x28, the same columns
    ("conv1", 1, 32, 28, 5, 1, 2, 1),
    ("conv2", 32, 64, 13, 5, 1, 2, 2),
    ("conv3", 64, 96, 6, 3, 1, 1, 1),
    ("conv4", 96, 96, 6, 3, 1, 1, 2),
    ("conv5", 96, 64, 6, 3, 1, 1, 2),
]


def timed(fn, repeat):
    fn()  # warm-up (allocations, BLAS threads)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_case(torch, batch, spec, repeat, algorithm=None):
    name, cin, cout, size, k, s, p, g = spec
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, cin, size, size)).astype(np.float32)
    w = (rng.standard_normal((cout, cin // g, k, k)) * 0.01).astype(np.float32)
    b = np.zeros(cout, np.float32)
    X, W, B = (mdl.tensor(a, requires_grad=True) for a in (x, w, b))
    out = F.conv2d(X, W, B, s, p, groups=g, algorithm=algorithm)
    G = mdl.tensor(np.ones(out.shape, np.float32))

    def ours():
        X.grad = W.grad = B.grad = None
        F.conv2d(X, W, B, s, p, groups=g, algorithm=algorithm).backward(G)

    result = {"minidl": timed(ours, repeat), "algorithm": out.creator.algorithm.name}
    if torch is not None and algorithm is None:
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        tg = torch.ones(out.shape)

        def theirs():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.conv2d(tx, tw, tb, s, p, groups=g).backward(tg)

        result["torch"] = timed(theirs, repeat)
    return result


def fc_case(torch, batch, repeat):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 9216)).astype(np.float32)
    w = (rng.standard_normal((4096, 9216)) * 0.01).astype(np.float32)
    b = np.zeros(4096, np.float32)
    X, W, B = (mdl.tensor(a, requires_grad=True) for a in (x, w, b))
    G = mdl.tensor(np.ones((batch, 4096), np.float32))

    def ours():
        X.grad = W.grad = B.grad = None
        F.linear(X, W, B).backward(G)

    result = {"minidl": timed(ours, repeat)}
    if torch is not None:
        tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
        tg = torch.ones(batch, 4096)

        def theirs():
            tx.grad = tw.grad = tb.grad = None
            torch.nn.functional.linear(tx, tw, tb).backward(tg)

        result["torch"] = timed(theirs, repeat)
    return result


def pool_lrn_share(batch, repeat, channels_last=True):
    """Seconds of pooling+LRN (forward+backward) on AlexNet shapes (paper LRN).

    With ``channels_last`` the inputs and output gradients are stored as minidl's conv + relu leave
    them in a network ((N, H, W, C) storage seen as (N, C, H, W)); otherwise C-contiguous.
    """
    rng = np.random.default_rng(0)

    def stored(shape):
        a = rng.standard_normal(shape).astype(np.float32)
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2) if channels_last else a

    c1, c2, c5 = stored((batch, 64, 55, 55)), stored((batch, 192, 27, 27)), stored((batch, 256, 13, 13))
    grads = [stored((batch, 64, 27, 27)), stored((batch, 192, 13, 13)), stored((batch, 256, 6, 6))]

    def pool_and_lrn():
        for a, lrn, g in ((c1, True, grads[0]), (c2, True, grads[1]), (c5, False, grads[2])):
            t = mdl.tensor(a, requires_grad=True)
            y = F.local_response_norm(t, 5, 1e-4, 0.75, 2.0) if lrn else t
            y = F.max_pool2d(y, 3, 2)
            y.backward(mdl.tensor(g))

    return timed(pool_and_lrn, repeat)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--algorithms", action="store_true", help="also time every supporting conv algorithm")
    parser.add_argument("--mini", action="store_true", help="alexnet-mini's convolutions (only)")
    args = parser.parse_args(argv)
    mdl.cpu.tune_heap()
    torch = try_import_torch()
    print(f"machine: {machine()}; numpy {np.__version__}; torch {getattr(torch, '__version__', '-')}; "
          f"batch {args.batch}, float32, forward+backward, best of {args.repeat}")
    print(f"{'layer':8s} {'minidl':>10s} {'torch':>10s} {'throughput vs torch':>20s}  algorithm")
    total = {"minidl": 0.0, "torch": 0.0}
    for spec in MINI_CONVS if args.mini else CONVS:
        r = conv_case(torch, args.batch, spec, args.repeat)
        _row(spec[0], r)
        for k in total:
            total[k] += r.get(k, 0.0)
        if args.algorithms:
            for name in _supporting(args.batch, spec):
                if name != r["algorithm"]:
                    _row("", conv_case(torch, args.batch, spec, args.repeat, algorithm=name), r)
    if args.mini:
        print(f"conv1-5 forward+backward: minidl {total['minidl'] * 1e3:.1f} ms, torch {total['torch'] * 1e3:.1f} ms")
        return
    r = fc_case(torch, args.batch, args.repeat)
    _row("fc6", r)
    for k in total:
        total[k] += r.get(k, 0.0)
    for channels_last, stored in ((True, "channels-last, as conv+relu leave them"), (False, "C-contiguous")):
        share = pool_lrn_share(args.batch, args.repeat, channels_last)
        print(f"pool+LRN forward+backward ({stored}): {share * 1e3:.1f} ms = "
              f"{share / (total['minidl'] + share):.1%} of (conv1-5 + fc6 + pool + LRN) in minidl")


def _supporting(batch, spec):
    """The registered conv algorithms that compute this layer's convolution."""
    from minidl.functions import ConvProblem
    from minidl.functions.conv_algorithm import conv_algorithms

    _, cin, cout, size, k, s, p, g = spec
    problem = ConvProblem.make((batch, cin, size, size), (cout, cin // g, k, k), s, p, groups=g)
    return [name for name, a in conv_algorithms().items() if a.unsupported(problem) is None]


def _row(name, r, reference=None):
    """One line; ``reference`` (the default algorithm's result) gives an alternative's ratio to PyTorch."""
    torch_s = r.get("torch", (reference or {}).get("torch"))
    ratio = f"{torch_s / r['minidl']:19.2f}x" if torch_s else f"{'-':>20s}"
    torch_ms = f"{torch_s * 1e3:8.1f}ms" if torch_s else f"{'-':>10s}"
    print(f"{name:8s} {r['minidl'] * 1e3:8.1f}ms {torch_ms} {ratio}  {r.get('algorithm', '')}")


if __name__ == "__main__":
    main()
