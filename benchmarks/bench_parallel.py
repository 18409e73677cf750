"""Device split and scale-out on the CPU: an AlexNet training step (batch 32, 3x227x227).

    python benchmarks/bench_parallel.py [--steps 4] [--batch 32] [--model models/alexnet.yaml]

Each case runs in its own process, on the same random batch: one SGD step
(forward, cross-entropy, backward, update) of the paper's AlexNet

- ``single``: one device, OpenBLAS using every core (what a user gets by default);
- ``single-1core``: one device, one BLAS thread: the one-core baseline;
- ``columns``, ``hybrid``, ``data_parallel``: split over the logical devices
  cpu:0 and cpu:1 (one thread and one BLAS thread each);
- ``mpi-1`` / ``mpi-2``: the data-parallel trainer's step under
  ``mpiexec -n 1`` and ``mpiexec -n 2`` (global batch 32, gradients summed
  with one Allreduce; one BLAS thread per process);
- ``pytorch``: the same network in PyTorch (CPU, its default threads), for scale.

Prints seconds per step (median) and speed-ups: from one core to two
(scaling efficiency = speed-up / 2), and against ``single`` on every core.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _timing import machine  # noqa: E402

CHILD = r"""
import json, statistics, sys, time
import numpy as np
case, steps, batch, model_path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
rng = np.random.default_rng(0)
times = []
if case == "pytorch":
    import torch
    from torch import nn
    torch.manual_seed(0)
    lrn = lambda: nn.LocalResponseNorm(5, alpha=5e-4, beta=0.75, k=2.0)
    model = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), lrn(), nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(), nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), nn.MaxPool2d(3, 2), nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Dropout(), nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(),
        nn.Linear(4096, 1000))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.from_numpy(rng.random((batch, 3, 227, 227), dtype=np.float32))
    y = torch.from_numpy(rng.integers(0, 1000, batch))
    def step():
        opt.zero_grad(); nn.functional.cross_entropy(model(x), y).backward(); opt.step()
else:
    import minidl as mdl
    import minidl.functions as F
    from minidl.plugins import registry
    mdl.random.manual_seed(0)
    world = None
    if case.startswith("mpi") or case == "single-1core":
        from threadpoolctl import threadpool_limits
        threadpool_limits(1, user_api="blas")  # one core per process
    if case.startswith("mpi"):
        from minidl.parallel.mpi import world as mpi_world
        world = mpi_world()
        model = mdl.build_model(model_path)
    elif case.startswith("single"):
        model = mdl.build_model(model_path)
    else:
        model = mdl.build_model(model_path, devices="cpu:0,cpu:1", strategy=case)
    params = list(model.parameters())
    opt = registry("optimizers").create("sgd", params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = rng.random((batch, 3, 227, 227), dtype=np.float32)
    y = rng.integers(0, 1000, batch)
    lo, hi = world.share(batch) if world is not None else (0, batch)
    def step():
        loss = F.cross_entropy(model(mdl.tensor(x[lo:hi])), y[lo:hi])
        opt.zero_grad(); loss.backward()
        if world is not None:
            world.allreduce_step(params, (hi - lo) / batch, loss.item(), False)
        opt.step()
step()  # warm-up
for _ in range(steps):
    start = time.perf_counter(); step(); times.append(time.perf_counter() - start)
if case != "pytorch" and case.startswith("mpi") and world is not None and not world.is_root:
    sys.exit(0)
print(json.dumps({"case": case, "seconds": statistics.median(times)}))
"""


def run_case(case, args):
    command = [sys.executable, "-c", CHILD, case, str(args.steps), str(args.batch), args.model]
    if case.startswith("mpi"):
        mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
        if mpiexec is None:
            print(f"{case}: skipped (no mpiexec: pip install 'minidl[mpi]')")
            return None
        command = [mpiexec, "-n", case[-1]] + command
    done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, MPIEXEC_TIMEOUT="900"))
    if done.returncode != 0:
        print(f"{case}: failed\n{done.stderr[-2000:]}")
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--model", default=str(HERE.parent / "models" / "alexnet.yaml"))
    parser.add_argument("--cases", default="single,single-1core,columns,hybrid,data_parallel,mpi-1,mpi-2,pytorch")
    args = parser.parse_args()
    print(f"machine: {machine()}; AlexNet training step, batch {args.batch}, median of {args.steps} steps")
    results = {}
    for case in args.cases.split(","):
        results[case] = seconds = run_case(case, args)
        if seconds is not None:
            print(f"{case:>14}: {seconds * 1000:8.0f} ms/step, {args.batch / seconds:6.1f} images/s", flush=True)
    single, one_core = results.get("single"), results.get("single-1core")
    mpi1, torch = results.get("mpi-1"), results.get("pytorch")
    print()
    for case in ("columns", "hybrid", "data_parallel"):
        if results.get(case) and one_core:
            speedup = one_core / results[case]
            print(f"{case} over cpu:0,cpu:1 vs single on one core: {speedup:.2f}x (efficiency {speedup / 2:.0%})")
        if results.get(case) and single:
            print(f"{case} over cpu:0,cpu:1 vs single with every core in BLAS: {single / results[case]:.2f}x")
    if mpi1 and results.get("mpi-2"):
        speedup = mpi1 / results["mpi-2"]
        print(f"data_parallel over 2 MPI processes vs 1 (one core each): {speedup:.2f}x (efficiency {speedup / 2:.0%})")
        if single:
            print(f"data_parallel over 2 MPI processes vs single with every core in BLAS: {single / results['mpi-2']:.2f}x")
    if torch:
        for case, seconds in results.items():
            if seconds and case != "pytorch":
                print(f"{case} vs PyTorch (throughput): {torch / seconds:.2f}x")


if __name__ == "__main__":
    main()
