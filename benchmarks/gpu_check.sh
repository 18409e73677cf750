#!/usr/bin/env bash
# The GPU session's one prepared run (issue 13): environment, the cuda test selection, the AlexNet benchmark
# against PyTorch + cuDNN with a profile, all logged under $OUT. From the repository root on the lent machine:
#   bash benchmarks/gpu_check.sh [quick]      (quick: tests and batch 128 only)
set -uo pipefail
export PYTHONPATH=$PWD:$PWD/plugins PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
# the optional cudnn conv algorithm: nvidia-cudnn-frontend from a wheel carried in wheels/ (libcudnn itself comes
# with PyTorch's nvidia-cudnn package there); without one its cuda tests skip
ls wheels/nvidia_cudnn_frontend-*.whl >/dev/null 2>&1 && pip install -q --no-deps wheels/nvidia_cudnn_frontend-*.whl
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python -c "import cudnn; print('cudnn frontend', cudnn.__version__, 'library', cudnn.backend_version())" 2>/dev/null || echo "cudnn frontend: not installed, or libcudnn not found"
  python -c "import cupy, numpy, torch; print('cupy', cupy.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__, 'cuda runtime', cupy.cuda.runtime.runtimeGetVersion())"
  git log -1 --format='commit %H %s' 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
# every test that has a cuda:0 case, plus the kernel-vs-NumPy and no-host-read checks (named cuda or gpu)
timeout 300 python -m pytest -q -n 12 -p no:cacheprovider -k "cuda or gpu" tests 2>&1 | tail -60 > "$OUT/tests.log"
tail -5 "$OUT/tests.log"
batches=128,256
[ "${1:-}" = quick ] && batches=128
bench() { timeout 300 python benchmarks/bench_gpu.py --steps 10 --profile "$@" 2>&1 | tee -a "$OUT/bench.log"; }
bench --models alexnet --batches "$batches" --modes fp32,tf32 --json "$OUT/bench-alexnet.json"
bench --models alexnet-torchvision --batches 128 --modes fp32,tf32 --json "$OUT/bench-torchvision.json"
bench --models alexnet --batches 128 --modes bf16 --json "$OUT/bench-bf16.json"
