"""Core autograd overhead and a large matmul: minidl vs PyTorch (CPU) vs raw NumPy, same run.

    python benchmarks/bench_core.py

Prints seconds per iteration and the ratios minidl / PyTorch and minidl / NumPy
(lower is better for minidl). Goals (issue 2): per-op overhead within 2x of
PyTorch eager; the 1024x1024 matmul forward + backward within 10% of NumPy.
"""
from __future__ import annotations

import argparse

import numpy as np

import minidl as mdl
from _timing import best_of, machine, try_import_torch


def tiny_op_case(torch):
    """y = (x * x).sum(); y.backward() on a 16-element float32 tensor: pure per-op overhead."""
    values = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    x = mdl.tensor(values, requires_grad=True)

    def minidl_step():
        x.grad = None
        (x * x).sum().backward()

    result = {"minidl": best_of(minidl_step, 2000)}
    if torch is not None:
        xt = torch.tensor(values, requires_grad=True)

        def torch_step():
            xt.grad = None
            (xt * xt).sum().backward()

        result["torch"] = best_of(torch_step, 2000)
    return result


def tiny_forward_case(torch):
    """One elementwise op with grad recording on, forward only."""
    values = np.random.default_rng(0).standard_normal(16).astype(np.float32)
    x = mdl.tensor(values, requires_grad=True)
    result = {"minidl": best_of(lambda: x * x, 20000)}
    if torch is not None:
        xt = torch.tensor(values, requires_grad=True)
        result["torch"] = best_of(lambda: xt * xt, 20000)
    return result


def matmul_case(torch, n=1024):
    """C = A @ B; C.backward(G): one forward and two backward GEMMs, float32."""
    rng = np.random.default_rng(0)
    a, b, g = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(3))
    ta, tb = mdl.tensor(a, requires_grad=True), mdl.tensor(b, requires_grad=True)
    tg = mdl.tensor(g)

    def minidl_step():
        ta.grad = tb.grad = None
        (ta @ tb).backward(tg)

    def numpy_step():
        a @ b
        g @ b.T
        a.T @ g

    result = {"minidl": best_of(minidl_step, 5, repeat=9), "numpy": best_of(numpy_step, 5, repeat=9)}
    if torch is not None:
        pa, pb = torch.tensor(a, requires_grad=True), torch.tensor(b, requires_grad=True)
        pg = torch.tensor(g)

        def torch_step():
            pa.grad = pb.grad = None
            (pa @ pb).backward(pg)

        result["torch"] = best_of(torch_step, 5, repeat=9)
    return result


def main(argv=None):
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    torch = try_import_torch()
    if torch is not None:
        torch.set_num_threads(max(1, torch.get_num_threads()))
    print(f"machine: {machine()}; numpy {np.__version__}; torch {getattr(torch, '__version__', '-')}")
    cases = [
        ("tiny op forward (x*x, 16 floats)", tiny_forward_case(torch)),
        ("tiny op forward+backward ((x*x).sum().backward())", tiny_op_case(torch)),
        ("matmul 1024x1024 float32 forward+backward", matmul_case(torch)),
    ]
    print(f"{'case':52s} {'minidl':>11s} {'torch':>11s} {'numpy':>11s} {'minidl/torch':>13s} {'minidl/numpy':>13s}")
    for name, r in cases:
        cells = [f"{r[k] * 1e6:9.1f}us" if k in r else f"{'-':>11s}" for k in ("minidl", "torch", "numpy")]
        ratios = [f"{r['minidl'] / r[k]:12.2f}x" if k in r else f"{'-':>13s}" for k in ("torch", "numpy")]
        print(f"{name:52s} {' '.join(cells)} {' '.join(ratios)}")


if __name__ == "__main__":
    main()
