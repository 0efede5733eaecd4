#!/usr/bin/env bash
# The flash configuration sweep on a GPU, in one call (no network needed):
#
#   bash scripts/flash_sweep.sh OUTDIR
#
# 1. build   python3 setup.py build_ext --inplace with ITNET_FLASH_SWEEP=all for the GPU found
#            (incremental: after scripts/gpu_check.sh only the sweep instances compile)
# 2. tests   pytest tests/test_flash_sweep.py: every configuration against the float64
#            reference on the GPU                                      -> OUTDIR/sweep_tests.xml
# 3. timing  python3 -m itnet_ext.bench.flash_sweep: every configuration vs SDPA-flash
#            (ITNET_SWEEP_BUDGET_S of timing, default 240)  -> OUTDIR/results/flash_sweep_*.{json,md}
# Each step logs to OUTDIR/<step>.log; the exit status is 1 if any step failed.
# Environment: PYTHON (default python3), CUDA_HOME (default: the toolkit of the nvcc on PATH, else
# /usr/local/cuda), ITNET_ARCH_LIST (overrides the detected TORCH_CUDA_ARCH_LIST).
set -u
if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1/results" || exit 2
OUT="$(cd "$1" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec </dev/null
T0=$SECONDS
FAILED=0
log() { echo "[flash_sweep $(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }
step() {  # name timeout cmd...
  local name=$1 t=$2 start=$SECONDS rc
  shift 2
  log "step $name (timeout ${t} s): $*"
  timeout -s INT -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  log "step $name: exit $rc after $((SECONDS - start)) s"
  ((rc == 0)) || FAILED=1
  tail -n 5 "$OUT/$name.log"
  return "$rc"
}

CAP="$(timeout 60 "$PY" -c 'import torch; c = torch.cuda.get_device_capability(); print("%d.%d" % c)' 2>/dev/null)"
if [[ -z "$CAP" ]]; then
  log "no GPU visible to torch: nothing to sweep"
  exit 1
fi
CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(readlink -f "$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)")")")}"
step build 420 env CUDA_HOME="$CUDA_HOME" PATH="$CUDA_HOME/bin:$PATH" \
  TORCH_CUDA_ARCH_LIST="${ITNET_ARCH_LIST:-$CAP}" ITNET_FORCE_CUDA=1 ITNET_FLASH_SWEEP=all \
  MAX_JOBS="$(nproc)" "$PY" setup.py build_ext --inplace || exit 1
ITNET_REQUIRE_CUDA=1 step sweep_tests 180 "$PY" -m pytest tests/test_flash_sweep.py -q \
  -p no:cacheprovider -rfE --junitxml="$OUT/sweep_tests.xml"
CARD="$(timeout 30 nvidia-smi --query-gpu=name --format=csv,noheader | head -1 | xargs | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//')"
JSON="$OUT/results/flash_sweep_${CARD:-gpu}_$(date -u +%Y-%m-%d_%H%M%S).json"
BUDGET="${ITNET_SWEEP_BUDGET_S:-240}"
step timing $((BUDGET + 120)) "$PY" -m itnet_ext.bench.flash_sweep --time-budget-s "$BUDGET" \
  --out "$JSON"
[[ -f "${JSON%.json}.md" ]] && head -n 40 "${JSON%.json}.md"
log "done in $((SECONDS - T0)) s; results in $OUT/results"
exit "$FAILED"
