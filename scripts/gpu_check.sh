#!/usr/bin/env bash
# gpu_check.sh - ONE command for a GPU machine: build minimoe._C with its CUDA kernels, test it, race it.
#
#   bash scripts/gpu_check.sh            # results in $OUT if set, else benchmarks/results/gpu/
#   SKIP="bench sweep" bash scripts/gpu_check.sh    # leave steps out (names: tests probe e2e bench sweep sanitize)
#
# Made for the H200 machine (python3 3.12, torch 2.11+cu130 preinstalled, no internet, nothing installable):
#   1. build the extension in place for this GPU's architecture only (the CI build does sm_80 + sm_90);
#   2. every CUDA-marked test of the suite, one pytest process per file (kernels against the spec with NaN-poisoned outputs, the model on
#      the GPU, CUDA-graph decode against eager decode);
#   2b. scripts/probe_error_path.py: each kind of failing argument check in its own process (raise or crash?);
#   3. the end-to-end benchmark at real shape (benchmarks/e2e.py --device cuda: random AWQ weights made on the
#      GPU, fp16, batch 1, CUDA graph and eager decode against the bandwidth ceiling);
#   4. the kernel benchmark at the real layer shapes (4096x14336, 14336x4096, M = 1 and 2048, G = 128) against
#      cuBLAS fp16 and the measured copy bandwidth;
#   5. the M sweep of the op's gemv vs mma kernels that sets the dispatch threshold;
#   6. compute-sanitizer memcheck over the op's kernels on small shapes (out-of-bounds and misaligned accesses);
#   7. a short summary last. Budget: about 6 minutes with the build; each step has its own time limit.
# Every step runs even if an earlier one failed; the exit status is non-zero if any did. Files written:
# gpu_check.log (everything printed), e2e_gpu.json, kernel_cuda.json, kernel_cuda_sweep.json.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
RESULTS=${OUT:-benchmarks/results/gpu}
SKIP=${SKIP:-}
mkdir -p "$RESULTS"
LOG="$RESULTS/gpu_check.log"
: > "$LOG"
STEPS=$(mktemp -d)  # each step's own output, for the summary
export PYTHONUNBUFFERED=1
status=0
failed=""
step() { echo "== $* ($(date +%H:%M:%S))" | tee -a "$LOG"; }
wanted() { case " $SKIP " in *" $1 "*) echo "(skipped: SKIP=$SKIP)" | tee -a "$LOG"; return 1;; esac; return 0; }
# run NAME SECONDS CMD...: the command's output goes to the log; a failure or timeout is recorded, never fatal.
run() {
  local name=$1 limit=$2; shift 2
  local start=$(date +%s)
  timeout "$limit" "$@" > "$STEPS/$name.txt" 2>&1
  local rc=$?
  cat "$STEPS/$name.txt" >> "$LOG"
  [[ $name == tests:* ]] && cat "$STEPS/$name.txt" >> "$STEPS/tests.txt"
  echo "-- $name: exit $rc after $(( $(date +%s) - start )) s$([ $rc -eq 124 ] && echo " (TIMED OUT at $limit s)")" \
    | tee -a "$LOG"
  if [ $rc -ne 0 ]; then status=1; failed="$failed $name"; fi
}

step "machine"
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem --format=csv 2>&1
  $PY -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"
  nproc; lscpu 2>/dev/null | grep -m1 'Model name'
} 2>&1 | tee -a "$LOG"

step "build (in place, this GPU's arch only)"
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
TORCH_CUDA_ARCH_LIST="$ARCH" MINIMOE_CUDA=1 MAX_JOBS=$(nproc) run build 240 $PY setup.py build_ext --inplace
$PY -c "from minimoe import ops; import json; print(json.dumps(ops.build_info()))" 2>&1 | tail -3 | tee -a "$LOG"

step "CUDA tests (pytest -m cuda, one process per file so that a crash loses one file only)"
if wanted tests; then
  # DESELECT: pytest -k expression for tests to leave out of this run (they still run in CI's CPU cases)
  # TEST_FILES: which test files to run (default: every file with CUDA-marked tests)
  for file in ${TEST_FILES:-$(grep -l "mark.cuda\|devices()" tests/test_*.py)}; do
    run "tests:$(basename $file .py)" 120 $PY -m pytest -q -m cuda -p no:cacheprovider --tb=short -rfE \
      ${DESELECT:+-k "$DESELECT"} "$file"
  done
fi

step "the error path: does a failed argument check raise or crash? (scripts/probe_error_path.py)"
if wanted probe; then
  run probe 150 $PY scripts/probe_error_path.py --gdb
fi

step "end-to-end, real shape, GPU"
if wanted e2e; then
  run e2e 150 $PY benchmarks/e2e.py --device cuda --rounds 3 --out "$RESULTS/e2e_gpu.json"
fi

step "kernel benchmark: experiments + op at real shapes (fp16)"
if wanted bench; then
  run bench 150 $PY benchmarks/kernel_cuda.py --out "$RESULTS"
fi

step "kernel benchmark: op gemv vs mma over M (dispatch threshold)"
if wanted sweep; then
  run sweep 60 $PY benchmarks/kernel_cuda.py --sweep --no-op --variant none --out "$RESULTS"
fi

step "compute-sanitizer memcheck on the op's kernels (small shapes)"
if wanted sanitize; then
  if command -v compute-sanitizer > /dev/null; then
    run sanitize 90 compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
      $PY scripts/check_cuda_op.py --quick
  else
    echo "compute-sanitizer not found: skipped" | tee -a "$LOG"
  fi
fi

step "summary (status $status; failed:${failed:- none}; full log $LOG)"
touch "$STEPS"/{build,tests,probe,e2e,bench,sweep,sanitize}.txt
echo "-- build:"; grep -E "error|Error" "$STEPS/build.txt" | head -10
echo "-- tests:"; grep -E "^(FAILED|ERROR)|[0-9]+ (passed|failed|skipped|error|deselected)|Fatal Python|^  File .*tests/" "$STEPS/tests.txt" | tail -30
echo "-- probe:"; cat "$STEPS/probe.txt" | tail -45
echo "-- e2e:"; grep -A12 "^Real shape" "$STEPS/e2e.txt"; grep -E "Error|error" "$STEPS/e2e.txt" | tail -5
echo "-- M sweep, 4096 x 14336, G = 128:"; tail -18 "$STEPS/sweep.txt"
echo "-- sanitizer:"; grep -E "ERROR SUMMARY|check_cuda_op:|^FAIL" "$STEPS/sanitize.txt" | tail -5
echo "-- real shapes:"; grep -E "^(CHECK|BUILD FAILED|checks:|measured)" "$STEPS/bench.txt" | head -12; tail -34 "$STEPS/bench.txt"
exit $status
