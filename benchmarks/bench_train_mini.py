"""Training throughput of alexnet-mini: minidl vs the same network in PyTorch (CPU), same machine.

    python benchmarks/bench_train_mini.py [--steps 40] [--batch 128] [--rounds 3]

Each framework trains in its own subprocess (so peak memory is its own) on
the same random Fashion-MNIST-shaped batches: SGD momentum 0.9, weight decay
5e-4, dropout on. PyTorch uses its stock nn.LocalResponseNorm (with alpha
scaled by the size so both compute the paper's LRN). The two alternate for
``--rounds`` rounds, so a burst of other work on the machine hits both;
each framework's best round counts. Prints images/s, the ratio minidl /
PyTorch (>= 1.0 means minidl is faster) and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

CHILD = r"""
import json, resource, sys, time
import numpy as np
framework, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
x = rng.random((batch, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, batch)
if framework == "minidl":
    import minidl as mdl
    import minidl.functions as F
    from minidl.plugins import registry
    mdl.cpu.tune_heap()  # as `minidl train` runs
    model = mdl.build_model(sys.argv[4])
    opt = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    def step():
        loss = F.cross_entropy(model(mdl.tensor(x)), y)
        opt.zero_grad(); loss.backward(); opt.step()
else:
    import torch
    from torch import nn
    torch.manual_seed(0)
    sys.path.insert(0, sys.argv[5])
    from _torch_models import alexnet_mini
    model = alexnet_mini(nn)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    def step():
        loss = nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad(); loss.backward(); opt.step()
for _ in range(3):
    step()
start = time.perf_counter()
for _ in range(steps):
    step()
seconds = time.perf_counter() - start
print(json.dumps({"images_per_s": steps * batch / seconds, "step_ms": 1000 * seconds / steps,
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run(framework, steps, batch):
    model = str(HERE.parent / "models" / "alexnet-mini.yaml")
    out = subprocess.run([sys.executable, "-c", CHILD, framework, str(steps), str(batch), model, str(HERE)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from _timing import machine

    print(f"machine: {machine()}; alexnet-mini training steps, batch {args.batch}, {args.steps} timed steps, "
          f"best of {args.rounds} alternating rounds")
    ours, theirs = [], []
    for _ in range(args.rounds):
        ours.append(run("minidl", args.steps, args.batch))
        try:
            theirs.append(run("torch", args.steps, args.batch))
        except subprocess.CalledProcessError as e:
            print(f"PyTorch run failed (installed? pip install torch==2.13.0): {e.stderr[-300:]}")
    print("rounds, images/s: minidl " + " ".join(f"{r['images_per_s']:.0f}" for r in ours)
          + "; pytorch " + " ".join(f"{r['images_per_s']:.0f}" for r in theirs))
    ours = max(ours, key=lambda r: r["images_per_s"])
    theirs = max(theirs, key=lambda r: r["images_per_s"]) if theirs else None
    for name, r in (("minidl", ours), ("pytorch", theirs)):
        if r:
            print(f"{name:8s} {r['images_per_s']:8.0f} images/s  {r['step_ms']:7.1f} ms/step  "
                  f"peak RSS {r['peak_rss_mib']:7.0f} MiB")
    if theirs:
        print(f"throughput minidl/pytorch: {ours['images_per_s'] / theirs['images_per_s']:.2f}x; "
              f"peak memory minidl/pytorch: {ours['peak_rss_mib'] / theirs['peak_rss_mib']:.2f}x")


if __name__ == "__main__":
    main()
