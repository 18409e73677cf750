"""Where a full AlexNet training step goes: the share of pooling and LRN, measured inside a real step.

    python benchmarks/bench_step_share.py [--model models/alexnet.yaml] [--batch 32] [--steps 3]

Runs real SGD steps of the model file (forward, cross-entropy, backward,
update) and times every pooling and LRN op -- forward and backward -- while
they run, so the share is of the whole step as it happens (conv, fc, loss,
optimizer and framework overhead included), not of an approximation built
from separate layer timings. (``bench_parallel.py`` times the same step in
PyTorch.)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import machine  # noqa: E402

import minidl as mdl  # noqa: E402
import minidl.functions as F  # noqa: E402
from minidl.functions import normalization, pooling  # noqa: E402
from minidl.plugins import registry  # noqa: E402

TIMED = {
    "pooling": (pooling.MaxPool2d, pooling.MaxPool2dGrad),
    "LRN": (normalization.LocalResponseNorm, normalization.LocalResponseNormGrad),
}


def instrument(spent):
    """Wrap forward of the timed ops (their backward is the *Grad op's forward)."""
    for kind, classes in TIMED.items():
        for cls in classes:
            original = cls.forward

            def timed(self, *arrays, _original=original, _kind=kind):
                start = time.perf_counter()
                try:
                    return _original(self, *arrays)
                finally:
                    spent[_kind] += time.perf_counter() - start

            cls.forward = timed


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE.parent / "models" / "alexnet.yaml"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    mdl.cpu.tune_heap()  # as `minidl train` runs
    spent = defaultdict(float)
    instrument(spent)
    model = mdl.build_model(args.model)
    optimizer = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9,
                                              weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.random((args.batch,) + model.input_shape, dtype=np.float32))
    labels = rng.integers(0, model.nodes[-1].output_shape[0], args.batch)

    def step():
        loss = F.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    steps, shares = [], defaultdict(list)
    for _ in range(args.steps):
        spent.clear()
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        steps.append(seconds)
        for kind in TIMED:
            shares[kind].append(spent[kind] / seconds)
    print(f"machine: {machine()}; {Path(args.model).name}, batch {args.batch}, median of {args.steps} steps")
    print(f"training step: {statistics.median(steps) * 1000:.0f} ms")
    for kind in TIMED:
        print(f"{kind} (forward + backward): {statistics.median(shares[kind]):.1%} of the step")
    print(f"pooling + LRN: {statistics.median([a + b for a, b in zip(*shares.values())]):.1%} of the step")


if __name__ == "__main__":
    main()
