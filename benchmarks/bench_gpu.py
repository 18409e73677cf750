"""AlexNet training steps on a GPU: minidl (CuPy, cuBLAS GEMMs) vs PyTorch (cuDNN), same device, same run.

    python benchmarks/bench_gpu.py [--models alexnet,alexnet-torchvision,alexnet-mini] [--batches 128,256]
                                   [--modes fp32,tf32] [--steps 20] [--profile] [--cuda-graph]

Each (framework, model, batch, mode) runs in its own process, so each one's
peak GPU memory is its own. A step is forward, cross-entropy, backward and an
SGD update (momentum 0.9, weight decay 5e-4) on random images and labels that
already sit on the GPU. Modes: ``fp32`` (TF32 off in both), ``tf32`` (TF32
allowed: ``minidl.gemm.allow_tf32`` and ``CUPY_TF32=1`` for minidl,
``allow_tf32`` for PyTorch),
``bf16``/``fp16`` (autocast in both: ``mdl.autocast`` and ``mdl.amp.LossScaler``
for minidl, ``torch.autocast`` and ``GradScaler`` for PyTorch). Prints images/s, minidl / PyTorch throughput (>= 1.0 means
minidl is faster), and peak memory: minidl's CuPy pool high-water mark of
bytes in use and bytes held, PyTorch's max allocated and max reserved.

``--profile`` also prints, for minidl, where one step's time goes by op
(each op synchronised and timed on its own, so the total exceeds a real step).
``--cuda-graph`` replays minidl's step from a CUDA graph
(:class:`minidl.training.cuda_graph.StepGraph`, as ``minidl train`` does);
PyTorch stays eager. ``alexnet-mini`` is the Fashion-MNIST model (1x28x28,
10 classes).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODELS = HERE.parent / "models"

CHILD = r"""
import json, sys, time
import numpy as np
framework, model_name, batch, mode, steps, profile = sys.argv[1:7]
batch, steps, profile, graphed = int(batch), int(steps), profile == "1", sys.argv[8] == "1"
sys.path.insert(0, sys.argv[9])
channels, size, classes = {"alexnet": (3, 227, 1000), "alexnet-mini": (1, 28, 10)}.get(model_name, (3, 224, 1000))
rng = np.random.default_rng(0)
x_host = rng.random((batch, channels, size, size), dtype=np.float32)
y_host = rng.integers(0, classes, batch)
result = {}
if framework == "minidl":
    import cupy
    import minidl as mdl
    import minidl.functions as F
    from minidl.plugins import registry
    from minidl.gemm import allow_tf32
    allow_tf32(mode == "tf32")  # minidl's own cuBLAS calls (CUPY_TF32 below covers CuPy's)
    model = mdl.build_model(sys.argv[7]).to("cuda:0")
    model.train()
    opt = registry("optimizers").create("sgd", list(model.parameters()), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = mdl.tensor(cupy.asarray(x_host))
    y = cupy.asarray(y_host)
    pool = cupy.get_default_memory_pool()
    low = {"bf16": "bfloat16", "fp16": "float16"}.get(mode)
    scaler = mdl.amp.LossScaler(enabled=mode == "fp16")
    def forward_backward(x, y):
        with mdl.autocast(low or "bfloat16", enabled=low is not None):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(); scaler.scale(loss).backward()
        return loss, loss
    def eager_step(x, y):
        loss, _ = forward_backward(x, y)
        scaler.step(opt); scaler.update()
        return loss, loss
    if graphed:
        from minidl.training.cuda_graph import StepGraph
        stepper = StepGraph("on", forward_backward, opt, mdl.Device("cuda:0"), print)
        step = lambda: stepper.step(x, y, eager_step)
    else:
        step = lambda: eager_step(x, y)
    sync = cupy.cuda.Device(0).synchronize
    class Peak(cupy.cuda.MemoryHook):
        name = "peak"
        used = 0
        def malloc_postprocess(self, **kw):
            self.used = max(self.used, pool.used_bytes())
        def alloc_postprocess(self, **kw):
            self.used = max(self.used, pool.used_bytes())
    for _ in range(5):  # with --cuda-graph: three eager steps, the capture, and a replay
        step()
    sync()
    if graphed:
        result["replays"] = stepper.replays
    peak = Peak()
    with peak:
        step()
        sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    result.update(peak_used=peak.used, peak_held=pool.total_bytes())
    if profile:
        from collections import defaultdict
        from minidl.function import Function
        spent = defaultdict(float)
        def subclasses(cls):
            for sub in cls.__subclasses__():
                yield sub
                yield from subclasses(sub)
        for cls in set(subclasses(Function)):
            if "forward" not in cls.__dict__:
                continue
            def timed(self, *arrays, _original=cls.forward, _name=cls.__name__):
                sync(); t = time.perf_counter()
                try:
                    return _original(self, *arrays)
                finally:
                    sync(); spent[_name] += time.perf_counter() - t
            cls.forward = timed
        sync(); t = time.perf_counter(); step(); sync()
        total = time.perf_counter() - t
        result["profile"] = dict(sorted(((k, v / total) for k, v in spent.items()), key=lambda kv: -kv[1])[:14])
        result["profile_step_ms"] = total * 1000
        result["conv_algorithms"] = {n: sorted(set(m.algorithm_choices.values()))
                                     for n, m in model.named_modules() if getattr(m, "algorithm_choices", None)}
else:
    import torch
    from torch import nn
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    torch.backends.cudnn.allow_tf32 = mode == "tf32"
    from _torch_models import alexnet_mini, alexnet_paper
    if model_name in ("alexnet", "alexnet-mini"):
        model = alexnet_paper(nn) if model_name == "alexnet" else alexnet_mini(nn)
    else:
        import torchvision
        model = torchvision.models.alexnet()
    model = model.cuda().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = torch.from_numpy(x_host).cuda(), torch.from_numpy(y_host).cuda()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mode)
    scaler = torch.amp.GradScaler("cuda", enabled=mode == "fp16")
    def step():
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward(); scaler.step(opt); scaler.update()
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    result.update(peak_used=torch.cuda.max_memory_allocated(), peak_held=torch.cuda.max_memory_reserved())
result["seconds"] = seconds
print("RESULT " + json.dumps(result))
"""


def run_case(framework, model, batch, mode, steps, profile, graphed=False):
    env = dict(os.environ)
    if mode == "tf32":
        env["CUPY_TF32"] = "1"
    else:
        env.pop("CUPY_TF32", None)
    cmd = [sys.executable, "-c", CHILD, framework, model, str(batch), mode, str(steps), "1" if profile else "0",
           str(MODELS / f"{model}.yaml"), "1" if graphed else "0", str(HERE)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    print(f"{framework} {model} b{batch} {mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return None


def describe_gpu():
    try:
        import cupy
        props = cupy.cuda.runtime.getDeviceProperties(0)
        return (f"{props['name'].decode()}, driver {cupy.cuda.runtime.driverGetVersion()}, "
                f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, CuPy {cupy.__version__}")
    except Exception as e:  # no GPU here: the children will say so
        return f"no GPU description ({e})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="alexnet,alexnet-torchvision")
    parser.add_argument("--batches", default="128,256")
    parser.add_argument("--modes", default="fp32,tf32")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--frameworks", default="minidl,pytorch")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--cuda-graph", action="store_true", help="replay minidl's step from a CUDA graph")
    parser.add_argument("--json", help="also write every result to this file")
    args = parser.parse_args()
    print(describe_gpu())
    rows = []
    for model in args.models.split(","):
        for batch in map(int, args.batches.split(",")):
            for mode in args.modes.split(","):
                got = {}
                for framework in args.frameworks.split(","):
                    got[framework] = run_case(framework, model, batch, mode, args.steps, args.profile,
                                              args.cuda_graph)
                rows.append((model, batch, mode, got))
                mine, ref = got.get("minidl"), got.get("pytorch")
                line = f"{model:20s} b{batch:<4d} {mode:5s}" + (" graph" if args.cuda_graph else "")
                for name, r in (("minidl", mine), ("pytorch", ref)):
                    if r:
                        line += (f" | {name} {batch / r['seconds']:8.0f} img/s, peak {r['peak_used'] / 2**20:7.0f} MiB used"
                                 f" / {r['peak_held'] / 2**20:7.0f} MiB held")
                    else:
                        line += f" | {name} n/a"
                if mine and ref:
                    line += (f" | ratio {ref['seconds'] / mine['seconds']:.2f}x speed,"
                             f" {mine['peak_used'] / ref['peak_used']:.2f}x memory")
                print(line, flush=True)
                if mine and mine.get("profile"):
                    print(f"    profile ({mine['profile_step_ms']:.0f} ms synchronised step): " + ", ".join(
                        f"{k} {v:.0%}" for k, v in mine["profile"].items()))
                    print(f"    conv algorithms: {mine['conv_algorithms']}")
    if args.json:
        Path(args.json).write_text(json.dumps([[m, b, mo, g] for m, b, mo, g in rows], indent=1))


if __name__ == "__main__":
    main()
