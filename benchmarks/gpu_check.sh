#!/usr/bin/env bash
# The GPU session's one prepared run (issue 13): environment, the cuda test selection, the AlexNet benchmark
# against PyTorch + cuDNN with a profile, all logged under $OUT. From the repository root on the lent machine:
#   bash benchmarks/gpu_check.sh [quick]      (quick: tests and batch 128 only)
#   bash benchmarks/gpu_check.sh graphs       (issue 15: alexnet-mini and AlexNet steps with and without CUDA graphs,
#                                              then the main job on the GPU if Fashion-MNIST travelled in .data/)
set -uo pipefail
export PYTHONPATH=$PWD:$PWD/plugins PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# wheels the machine's image lacks, downloaded beforehand into .whl (ignored by git; carry it: run(carry=[".whl"])):
# nvmath-python and its cuda-* needs (minidl's own cuBLAS handle, CUDA graphs), and nvidia-cudnn-frontend (the optional
# cudnn conv algorithm; libcudnn itself comes with PyTorch's nvidia-cudnn package there), e.g.
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 -d .whl \
#     nvmath-python==1.0.0 cuda-bindings==13.5.0 cuda-core==1.2.2 cuda-pathfinder==1.9.1 nvidia-cudnn-frontend==1.32.0
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import cudnn; print('cudnn frontend', cudnn.__version__, 'library', cudnn.backend_version())" 2>/dev/null || echo "cudnn frontend: not installed, or libcudnn not found"
  python -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
  git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
if [ "${1:-}" = graphs ]; then
  graph_bench() { timeout 240 python benchmarks/bench_gpu.py --steps 50 "$@" 2>&1 | tee -a "$OUT/graphs.log"; }
  graph_bench --models alexnet-mini --batches 128 --modes fp32 --json "$OUT/mini-eager.json"
  graph_bench --models alexnet-mini --batches 128 --modes fp32 --frameworks minidl --cuda-graph --json "$OUT/mini-graph.json"
  graph_bench --models alexnet --batches 128 --modes fp32 --frameworks minidl --cuda-graph --json "$OUT/alexnet-graph.json"
  # the main job on the GPU: Fashion-MNIST's four IDX files copied beforehand into .data/fashion-mnist (carry .data)
  if [ -f .data/fashion-mnist/train-images-idx3-ubyte.gz ]; then
    /usr/bin/time -v timeout 400 python -m minidl.cli train models/alexnet-mini.yaml --device cuda:0 \
      --data .data/fashion-mnist --out /tmp/mainjob --no-progress 2>&1 | tee "$OUT/mainjob.log" | grep -v "^\s" | tail -30
  fi
  exit 0
fi
# every test that has a cuda:0 case, plus the kernel-vs-NumPy and no-host-read checks (named cuda or gpu)
timeout 300 python -m pytest -q -n 12 -p no:cacheprovider -k "cuda or gpu" tests 2>&1 | tail -60 > "$OUT/tests.log"
tail -5 "$OUT/tests.log"
batches=128,256
[ "${1:-}" = quick ] && batches=128
bench() { timeout 300 python benchmarks/bench_gpu.py --steps 10 --profile "$@" 2>&1 | tee -a "$OUT/bench.log"; }
# issue 13's goals are measured without the cudnn plugin, and torchvision AlexNet also with it
export MINIDL_DISABLE_PLUGINS=minidl_cudnn
bench --models alexnet --batches "$batches" --modes fp32,tf32 --json "$OUT/bench-alexnet.json"
bench --models alexnet-torchvision --batches 128 --modes fp32,tf32 --json "$OUT/bench-torchvision.json"
bench --models alexnet --batches 128 --modes bf16 --json "$OUT/bench-bf16.json"
unset MINIDL_DISABLE_PLUGINS
bench --models alexnet-torchvision --batches 128 --modes fp32,tf32 --frameworks minidl --json "$OUT/bench-torchvision-cudnn.json"
