#!/usr/bin/env bash
# gpu_check.sh - ONE command for a GPU machine: build minimoe._C with its CUDA kernels, test them, race them.
#
#   bash scripts/gpu_check.sh            # results in $OUT if set, else benchmarks/results/gpu/
#
# Made for the H200 machine (python3 3.12, torch 2.11+cu130 preinstalled, no internet, nothing installable):
#   1. build the extension in place for this GPU's architecture only (fast; the CI build does sm_80 + sm_90);
#   2. run tests/test_cuda_kernels.py with pytest if pytest and hypothesis import, else scripts/check_cuda_op.py;
#   3. benchmark the experiments and the op at the real layer shapes (4096x14336, 14336x4096, M = 1 and 2048,
#      G = 128) against cuBLAS fp16 and the measured copy bandwidth, then the M sweep that sets the threshold;
#   4. print a short table last. Budget: about 6 minutes.
# Every step runs even if an earlier one failed; the exit status is non-zero if any did.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results/gpu}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
status=0
step() { echo "== $*" | tee -a "$LOG"; }

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee -a "$LOG" | tee "$RESULTS/machine.txt"

step "build (in place, this GPU's arch only)"
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
start=$(date +%s)
if TORCH_CUDA_ARCH_LIST="$ARCH" MINIMOE_CUDA=1 MAX_JOBS=$(nproc) $PY setup.py build_ext --inplace >> "$LOG" 2>&1; then
  echo "build ok for sm_$ARCH in $(( $(date +%s) - start )) s" | tee -a "$LOG"
else
  echo "BUILD FAILED (see $LOG)" | tee -a "$LOG"; tail -40 "$LOG"; status=1
fi

step "CUDA tests"
if $PY -c "import pytest, hypothesis" 2>/dev/null; then
  timeout 150 $PY -m pytest -q -x tests/test_cuda_kernels.py tests/test_dequant_host.py 2>&1 | tail -25 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
else
  echo "pytest/hypothesis not importable: running scripts/check_cuda_op.py" | tee -a "$LOG"
  timeout 150 $PY scripts/check_cuda_op.py 2>&1 | tail -25 | tee -a "$LOG"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

step "benchmark: experiments + op at real shapes (fp16)"
timeout 150 $PY benchmarks/kernel_cuda.py --out "$RESULTS" > "$RESULTS/bench.txt" 2>&1 || status=1
step "benchmark: op gemv vs mma over M (dispatch threshold)"
timeout 60 $PY benchmarks/kernel_cuda.py --sweep --no-op --variant none --out "$RESULTS" > "$RESULTS/sweep.txt" 2>&1 || status=1
cat "$RESULTS/sweep.txt" >> "$LOG"; cat "$RESULTS/bench.txt" >> "$LOG"

step "summary (status $status; full log $LOG)"
echo "-- M sweep, 4096 x 14336, G = 128 --"; tail -20 "$RESULTS/sweep.txt"
echo "-- real shapes --"; tail -32 "$RESULTS/bench.txt"
exit $status
