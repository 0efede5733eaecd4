#!/usr/bin/env bash
# GPU check of itnet_ext on a machine with an NVIDIA GPU and a preinstalled CUDA build of
# torch (no network needed). Run from anywhere:
#
#   bash scripts/gpu_check.sh OUTDIR
#
# Steps (each logged to OUTDIR/<step>.log, each under its own timeout; a failed step is
# recorded and the script goes on):
#   env        card, driver, python / torch / nvcc versions, date      -> env.txt, env.kv
#   build      python3 setup.py build_ext --inplace for the GPU found (TORCH_CUDA_ARCH_LIST
#              from torch.cuda.get_device_capability(), ITNET_FORCE_CUDA=1, MAX_JOBS=nproc)
#              and torch.ops.itnet.cuda_kernels_compiled()
#   diag       scripts/flash_diag.py: per-case error table, flash vs exact vs torch  -> diag.json
#   tests      pytest tests/test_dense_cuda*.py tests/test_scan_cuda.py tests/test_sparse_cuda.py
#              tests/test_lowrank_cuda.py
#              (+ test_lowp_reference.py, the half tests' yardstick)    -> tests.xml (junit)
#   memcheck   compute-sanitizer --tool memcheck  on scripts/sanitize_cases.py --set all
#   racecheck  compute-sanitizer --tool racecheck on scripts/sanitize_cases.py --set race
#   bench      python3 -m itnet_ext.bench --cuda                        -> bench_cuda.json
#   bench_scan python3 -m itnet_ext.bench --scan --device cuda (T = 1024, 4096)
#                                                                       -> bench_scan_cuda.json
#   bench_sparse python3 -m itnet_ext.bench --sparse --device cuda --sparse-part gno (the GNO
#              layer: fused sparse op vs the per-edge MLP + segment_reduce baseline)
#                                                                       -> bench_sparse_cuda.json
#   bench_lowrank python3 -m itnet_ext.bench --lowrank --device cuda (the fitted low-rank layer
#              vs its dense teacher, N = 4096..65536)                   -> bench_lowrank_cuda.json
# then OUTDIR/summary.md (scripts/gpu_check_summary.py), printed at the end, and copies
# ready for bench/results/ in OUTDIR/results/ (cuda_<card>_<date>.json, gpu_check_<card>_<date>.md).
#
# The whole run stays within about 9 minutes (ITNET_GPU_CHECK_DEADLINE_S, default 520 s):
# every step's timeout is its budget, shortened so that the steps after it keep a minimum.
# Environment: PYTHON (default python3), CUDA_HOME (default: the toolkit of the nvcc on PATH,
# else /usr/local/cuda), ITNET_ARCH_LIST (overrides the detected TORCH_CUDA_ARCH_LIST),
# ITNET_GPU_CHECK_SKIP_BUILD=1 (use the extension already built in place), ITNET_GIT_COMMIT
# (the commit to report where the tree has no .git).
set -u

if [[ $# -ne 1 ]]; then
  echo "usage: $0 OUTDIR" >&2
  exit 2
fi
mkdir -p "$1" || exit 2
OUT="$(cd "$1" && pwd)"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PY="${PYTHON:-python3}"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
exec </dev/null

T0=$SECONDS
DEADLINE="${ITNET_GPU_CHECK_DEADLINE_S:-520}"
: >"$OUT/steps.tsv"
: >"$OUT/env.kv"

log() { echo "[gpu_check $(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }
kv() { printf '%s=%s\n' "$1" "$2" >>"$OUT/env.kv"; }
record() {  # name status seconds note
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >>"$OUT/steps.tsv"
  log "step $1: $2 (${3} s)${4:+ - $4}"
}

# step_timeout BUDGET RESERVE: BUDGET, shortened to leave RESERVE seconds for later steps
step_timeout() {
  local left=$((DEADLINE - (SECONDS - T0) - $2))
  if ((left < $1)); then echo "$left"; else echo "$1"; fi
}

# run_step NAME BUDGET RESERVE CMD...: CMD under timeout, output to OUT/NAME.log.
# SIGINT first (pytest still writes its junit file), SIGKILL 10 s later.
run_step() {
  local name=$1 budget=$2 reserve=$3 t start rc status
  shift 3
  t=$(step_timeout "$budget" "$reserve")
  if ((t < 10)); then
    record "$name" "SKIPPED (deadline)" 0 "no time left in the ${DEADLINE} s budget"
    return 1
  fi
  log "step $name (timeout ${t} s): $*"
  start=$SECONDS
  timeout -s INT -k 10 "$t" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status="ok" ;;
    124 | 137) status="TIMEOUT after ${t} s" ;;
    *) status="FAILED (exit $rc)" ;;
  esac
  record "$name" "$status" "$((SECONDS - start))" "${STEP_NOTE:-}"
  STEP_NOTE=""
  return "$rc"
}
STEP_NOTE=""

q() { timeout 30 "$@" 2>/dev/null; }  # quick query that cannot hang the script

# ------------------------------------------------------------------------------------------
# a. environment
# ------------------------------------------------------------------------------------------
start=$SECONDS
{
  echo "date -u: $(date -u)"
  echo "host: $(uname -a)"
  echo "nproc: $(nproc)"
  echo
  echo "== nvidia-smi"
  q nvidia-smi || echo "nvidia-smi: not available"
  echo
  echo "== python / torch"
  q "$PY" - <<'EOF' || echo "$PY: could not import torch"
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    for i in range(torch.cuda.device_count()):
        print("device", i, torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
EOF
  echo
  echo "== nvcc"
  q nvcc --version || echo "nvcc: not on PATH"
  echo
  echo "== tools"
  echo "ninja: $(q ninja --version || q "$PY" -c 'import ninja; print(ninja.__version__)' || echo missing)"
  echo "pytest: $(q "$PY" -m pytest --version 2>&1 | head -1 || echo missing)"
  echo "hypothesis: $(q "$PY" -c 'import hypothesis; print(hypothesis.__version__)' || echo missing)"
} >"$OUT/env.txt" 2>&1

kv date_utc "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
if [[ -n "${ITNET_GIT_COMMIT:-}" ]]; then
  kv git_commit "$ITNET_GIT_COMMIT"
else
  kv git_commit "$(q git -C "$ROOT" rev-parse HEAD || echo unknown)$(q git -C "$ROOT" status --porcelain --untracked-files=no | grep -q . && echo ' (dirty)')"
fi
kv nproc "$(nproc)"
IFS=',' read -r GPU_NAME DRIVER GPU_MEM CAP_SMI < <(q nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader | head -1)
kv gpu_name "${GPU_NAME:-none}"
kv driver "$(echo "${DRIVER:-none}" | xargs)"
kv gpu_memory "$(echo "${GPU_MEM:-}" | xargs)"
kv python "$(q "$PY" -c 'import sys; print(sys.version.split()[0])' || echo "missing ($PY)")"
TORCH_INFO="$(q "$PY" -c 'import torch; c = torch.cuda.get_device_capability() if torch.cuda.is_available() else None; print(torch.__version__, torch.version.cuda or "none", "%d.%d" % c if c else "none")')"
read -r TORCH_VER TORCH_CUDA CAP <<<"${TORCH_INFO:-missing none none}"
kv torch "$TORCH_VER"
kv torch_cuda "$TORCH_CUDA"
kv compute_cap "${CAP:-$(echo "${CAP_SMI:-none}" | xargs)}"
kv nvcc "$(q nvcc --version | grep -o 'release [0-9.]*' || echo 'not on PATH')"
record env ok "$((SECONDS - start))"

# ------------------------------------------------------------------------------------------
# b. build for the GPU found
# ------------------------------------------------------------------------------------------
find_cuda_home() {
  local nvcc_path dir
  if [[ -n "${CUDA_HOME:-}" && -x "${CUDA_HOME}/bin/nvcc" ]]; then echo "$CUDA_HOME"; return 0; fi
  nvcc_path="$(command -v nvcc || true)"
  if [[ -n "$nvcc_path" ]]; then
    dir="$(dirname "$(dirname "$(readlink -f "$nvcc_path")")")"
    if [[ -f "$dir/include/cuda_runtime_api.h" ]]; then echo "$dir"; return 0; fi
  fi
  for dir in /usr/local/cuda /usr/local/cuda-*; do
    if [[ -x "$dir/bin/nvcc" ]]; then echo "$dir"; return 0; fi
  done
  return 1
}

CUDA_HOME_FOUND="$(find_cuda_home || true)"
kv cuda_home "${CUDA_HOME_FOUND:-not found}"
if [[ "${ITNET_GPU_CHECK_SKIP_BUILD:-0}" == 1 ]]; then
  record build skipped 0 "ITNET_GPU_CHECK_SKIP_BUILD=1: the extension built in place is used"
elif [[ "$TORCH_CUDA" == none || "$TORCH_CUDA" == missing ]]; then
  record build skipped 0 "torch is not a CUDA build (torch $TORCH_VER)"
elif [[ "$CAP" == none ]]; then
  record build skipped 0 "no GPU visible to torch"
elif [[ -z "$CUDA_HOME_FOUND" ]]; then
  record build FAILED 0 "nvcc / CUDA toolkit not found (set CUDA_HOME)"
else
  ARCH="${ITNET_ARCH_LIST:-$CAP}"
  kv arch_list "$ARCH"
  STEP_NOTE="TORCH_CUDA_ARCH_LIST=$ARCH, MAX_JOBS=$(nproc)"
  if ! q ninja --version >/dev/null && ! q "$PY" -c 'import ninja' >/dev/null; then
    STEP_NOTE="$STEP_NOTE; ninja missing: serial build"
  fi
  run_step build 190 200 env CUDA_HOME="$CUDA_HOME_FOUND" PATH="$CUDA_HOME_FOUND/bin:$PATH" \
    TORCH_CUDA_ARCH_LIST="$ARCH" ITNET_FORCE_CUDA=1 MAX_JOBS="$(nproc)" \
    "$PY" setup.py build_ext --inplace
fi
KERNELS="$(q "$PY" -c 'import torch, itnet_ext; print(torch.ops.itnet.cuda_kernels_compiled())' | tail -1)"
kv cuda_kernels_compiled "${KERNELS:-import failed}"
HAVE_KERNELS=0
if [[ "$KERNELS" == True && "$CAP" != none ]]; then
  HAVE_KERNELS=1
  record kernels ok 0 "torch.ops.itnet.cuda_kernels_compiled() = True"
elif [[ "$CAP" == none && -n "${GPU_NAME:-}" ]]; then
  # nvidia-smi sees a card that torch cannot use: a broken setup, not a machine without GPU
  record kernels FAILED 0 "nvidia-smi shows ${GPU_NAME} but torch sees no GPU (torch ${TORCH_VER}, CUDA ${TORCH_CUDA})"
elif [[ "$CAP" == none ]]; then
  record kernels skipped 0 "no GPU; cuda_kernels_compiled() = ${KERNELS:-import failed}"
else
  record kernels FAILED 0 "torch.ops.itnet.cuda_kernels_compiled() = ${KERNELS:-import failed}"
fi

# ------------------------------------------------------------------------------------------
# b2. per-case error table (scripts/flash_diag.py): flash vs exact vs torch in fp16 / bf16,
#     one line per case and path - localizes a wrong feature, pass or gradient at once
# ------------------------------------------------------------------------------------------
if [[ $HAVE_KERNELS == 1 ]]; then
  run_step diag 60 230 "$PY" scripts/flash_diag.py --json "$OUT/diag.json"
else
  record diag skipped 0 "no GPU or no CUDA kernels"
fi

# ------------------------------------------------------------------------------------------
# c. CUDA tests: the dense op, the decay scan and the sparse op (tests/test_dense_ops.py has
#    no CUDA part; test_lowp_reference.py checks the yardstick of the half-precision tests on
#    CPU in a few seconds)
# ------------------------------------------------------------------------------------------
if ! q "$PY" -c 'import pytest' >/dev/null; then
  record tests "FAILED" 0 "pytest is not installed for $PY: no tests run"
else
  [[ $HAVE_KERNELS == 1 ]] || STEP_NOTE="no GPU or no CUDA kernels: the CUDA tests skip"
  # with kernels present, a skipped CUDA test is a failure (tests/cuda_helpers.py)
  [[ $HAVE_KERNELS == 1 ]] && export ITNET_REQUIRE_CUDA=1
  run_step tests 200 180 "$PY" -m pytest tests/test_dense_cuda.py tests/test_dense_cuda_half.py \
    tests/test_scan_cuda.py tests/test_sparse_cuda.py tests/test_lowrank_cuda.py \
    tests/test_reliability_cuda.py tests/test_lowp_reference.py -q \
    -p no:cacheprovider -rfE \
    --durations=10 \
    --junitxml="$OUT/tests.xml"
fi

# ------------------------------------------------------------------------------------------
# d. compute-sanitizer: memcheck on every kernel path, racecheck on the flash, decay-scan and
#    sparse kernels
# ------------------------------------------------------------------------------------------
find_sanitizer() {
  local c
  for c in "${CUDA_HOME_FOUND:+$CUDA_HOME_FOUND/bin/compute-sanitizer}" \
      "$(command -v compute-sanitizer || true)" \
      "${CUDA_HOME_FOUND:+$CUDA_HOME_FOUND/compute-sanitizer/compute-sanitizer}" \
      /usr/local/cuda/bin/compute-sanitizer; do
    if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return 0; fi
  done
  return 1
}
SAN="$(find_sanitizer || true)"
kv sanitizer "${SAN:-not found}"
if [[ $HAVE_KERNELS != 1 ]]; then
  record memcheck skipped 0 "no GPU or no CUDA kernels"
  record racecheck skipped 0 "no GPU or no CUDA kernels"
elif [[ -z "$SAN" ]]; then
  record memcheck FAILED 0 "compute-sanitizer not found"
  record racecheck FAILED 0 "compute-sanitizer not found"
else
  # one allocation per tensor, so that an out-of-bounds access cannot hide in torch's pool
  export PYTORCH_NO_CUDA_MEMORY_CACHING=1
  run_step memcheck 70 100 "$SAN" --tool memcheck --error-exitcode 1 --print-limit 20 \
    "$PY" scripts/sanitize_cases.py --set all
  run_step racecheck 40 70 "$SAN" --tool racecheck --error-exitcode 1 --print-limit 20 \
    "$PY" scripts/sanitize_cases.py --set race
  unset PYTORCH_NO_CUDA_MEMORY_CACHING
fi

# ------------------------------------------------------------------------------------------
# e. GPU benchmark
# ------------------------------------------------------------------------------------------
BENCH_T=$(step_timeout 80 10)
BENCH_BUDGET=$((BENCH_T - 25))
((BENCH_BUDGET < 10)) && BENCH_BUDGET=10
[[ $HAVE_KERNELS == 1 ]] || STEP_NOTE="no GPU or no CUDA kernels"
run_step bench 80 10 "$PY" -m itnet_ext.bench --cuda --time-budget-s "$BENCH_BUDGET" \
  --out "$OUT/bench_cuda.json"
if grep -q "^CUDA section skipped" "$OUT/bench.log" 2>/dev/null; then
  sed -i '$ s/\tok\t/\tskipped\t/' "$OUT/steps.tsv"
fi
# the decay scan on the GPU: fused scan vs loop / chunked SSD / dense, T = 1024 and 4096
if [[ $HAVE_KERNELS == 1 ]]; then
  run_step bench_scan 45 40 "$PY" -m itnet_ext.bench --scan --device cuda \
    --scan-sizes 1024,4096 --budget-s 3 --scan-call-limit-s 5 --out "$OUT/bench_scan_cuda.json"
else
  record bench_scan "skipped" 0 "no GPU or no CUDA kernels"
fi
# the sparse op on the GPU: the GNO layer (issue 5's 10x time / 5x memory targets)
if [[ $HAVE_KERNELS == 1 ]]; then
  run_step bench_sparse 40 10 "$PY" -m itnet_ext.bench --sparse --device cuda --sparse-part gno \
    --out "$OUT/bench_sparse_cuda.json"
else
  record bench_sparse "skipped" 0 "no GPU or no CUDA kernels"
fi
# the low-rank op on the GPU: the fitted low-rank layer vs its dense teacher
if [[ $HAVE_KERNELS == 1 ]]; then
  run_step bench_lowrank 45 5 "$PY" -m itnet_ext.bench --lowrank --device cuda \
    --lowrank-sizes 4096,16384,65536 --lowrank-fit-steps 100 --budget-s 3 \
    --out "$OUT/bench_lowrank_cuda.json"
else
  record bench_lowrank "skipped" 0 "no GPU or no CUDA kernels"
fi

# ------------------------------------------------------------------------------------------
# f. summary
# ------------------------------------------------------------------------------------------
if ! timeout 30 "$PY" scripts/gpu_check_summary.py "$OUT" >/dev/null 2>"$OUT/summary.err"; then
  {
    echo "# GPU check (minimal summary: scripts/gpu_check_summary.py failed, see summary.err)"
    echo
    cat "$OUT/env.kv"
    echo
    echo '| step | status | seconds | note |'
    echo '|---|---|---|---|'
    while IFS=$'\t' read -r n s sec note; do echo "| $n | $s | $sec | $note |"; done <"$OUT/steps.tsv"
  } >"$OUT/summary.md"
fi
mkdir -p "$OUT/results"
CARD="$(echo "${GPU_NAME:-nogpu}" | xargs | tr -cs 'A-Za-z0-9' '_' | sed 's/_$//')"
STAMP="$(date -u +%Y-%m-%d_%H%M%S)"
[[ -f "$OUT/bench_cuda.json" ]] && cp "$OUT/bench_cuda.json" "$OUT/results/cuda_${CARD}_${STAMP}.json"
[[ -f "$OUT/bench_scan_cuda.json" ]] &&
  cp "$OUT/bench_scan_cuda.json" "$OUT/results/scan_cuda_${CARD}_${STAMP}.json"
[[ -f "$OUT/bench_sparse_cuda.json" ]] &&
  cp "$OUT/bench_sparse_cuda.json" "$OUT/results/sparse_cuda_${CARD}_${STAMP}.json"
[[ -f "$OUT/bench_lowrank_cuda.json" ]] &&
  cp "$OUT/bench_lowrank_cuda.json" "$OUT/results/lowrank_cuda_${CARD}_${STAMP}.json"
cp "$OUT/summary.md" "$OUT/results/gpu_check_${CARD}_${STAMP}.md"

if [[ -s "$OUT/diag.log" ]]; then
  { echo; echo "## Error table (scripts/flash_diag.py)"; echo; echo '```'; tail -n 80 "$OUT/diag.log"; echo '```'; } >>"$OUT/summary.md"
fi
cat "$OUT/summary.md"
log "done in $((SECONDS - T0)) s; logs in $OUT"
# a failed, timed-out or deadline-skipped step fails the check (awk: no PCRE grep needed)
if awk -F'\t' '$2 ~ /^(FAILED|TIMEOUT|SKIPPED)/ {f = 1} END {exit !f}' "$OUT/steps.tsv"; then exit 1; fi
exit 0
