"""Training steps of a model with and without its relu layers fused into the conv2d/linear layer before them.

    python benchmarks/bench_fusion.py [--model models/alexnet-mini.yaml] [--batch 128] [--steps 10]
                                      [--rounds 8] [--device cpu]

One process, one model: ``model.fuse_activations`` is switched between
rounds (fused, unfused, unfused, fused, ...: each pair in turn first), so
the machine's drift hits both alike. After ``--warmup`` untimed steps in
each mode, each round times ``--steps`` SGD steps (forward, cross-entropy,
backward, update) after the round's first, untimed, step. Prints every
round's ms/step, each mode's median and best, and the ratio unfused/fused
(> 1: fusion is faster) of the medians, of the bests, and the median of the
ratios of neighbouring rounds (the figure least moved by other work on a
shared machine); then the same in process CPU time (all threads), which
other processes' load moves less than wall time. This is the measurement behind
``minidl.builder.FUSE_ACTIVATIONS``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import machine  # noqa: E402

import minidl as mdl  # noqa: E402
import minidl.functions as F  # noqa: E402
from minidl.backend import synchronize  # noqa: E402
from minidl.plugins import registry  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(HERE.parent / "models" / "alexnet-mini.yaml"))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    mdl.cpu.tune_heap()  # as `minidl train` runs
    model = mdl.build_model(args.model, device=args.device)
    opt = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    x = mdl.tensor(rng.random((args.batch,) + model.input_shape, dtype=np.float32), device=args.device)
    y = mdl.tensor(rng.integers(0, model.nodes[-1].output_shape[0], args.batch), device=args.device)

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for fused in (True, False):
        object.__setattr__(model, "fuse_activations", fused)
        for _ in range(args.warmup):
            step()
    times, cpu = {True: [], False: []}, {True: [], False: []}
    pairs, cpu_pairs = [], []
    for r in range(2 * args.rounds):
        fused = (r % 2 == 0) == (r % 4 < 2)  # fused, unfused, unfused, fused, ...
        object.__setattr__(model, "fuse_activations", fused)
        step()
        synchronize(x.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(args.steps):
            step()
        synchronize(x.device)
        times[fused].append(1000 * (time.perf_counter() - start) / args.steps)
        cpu[fused].append(1000 * (time.process_time() - start_cpu) / args.steps)
        if r % 2:
            pairs.append(times[False][-1] / times[True][-1])
            cpu_pairs.append(cpu[False][-1] / cpu[True][-1])

    print(f"machine: {machine()}; {model.name} on {args.device}, batch {args.batch}, {args.steps} steps a round, "
          f"{args.rounds} rounds each, alternating")
    for clock, table, ratios in (("wall", times, pairs), ("CPU", cpu, cpu_pairs)):
        for fused in (True, False):
            runs = table[fused]
            print(f"{'fused' if fused else 'unfused':8s} {clock} ms/step: " + " ".join(f"{t:.1f}" for t in runs)
                  + f"; median {statistics.median(runs):.1f}, best {min(runs):.1f}")
        medians = statistics.median(table[False]) / statistics.median(table[True])
        print(f"unfused/fused ({clock}): median {medians:.3f}, best {min(table[False]) / min(table[True]):.3f}, "
              f"neighbouring rounds {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
