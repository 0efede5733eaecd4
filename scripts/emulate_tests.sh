#!/usr/bin/env bash
# Build the emulated CUDA library (ITNET_EMULATE=1: csrc/emulate/, every CUDA kernel compiled
# for the CPU with the emulator's race and shared-bounds instrumentation) in place, and run the
# emulator's own tests and every CUDA test file against it (CI's `emulate` stage).
# Usage: scripts/emulate_tests.sh PYTHON [pytest args]
#   PYTHON: an interpreter with CPU torch, pytest and hypothesis installed.
# The build goes to build/ like any other (an unchanged object is not compiled again, so the
# CPU library the test stage built is reused).
set -euo pipefail
py="$1"; shift
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$src"
# the interpreter's environment first on PATH: its ninja, the one that built the objects in
# build/ (another ninja version does not read their log and compiles everything again)
PATH="$(dirname "$py"):$PATH"
mkdir -p build
t0=$SECONDS
# (the flash configuration sweep too: each of its instances is checked by test_flash_sweep.py)
ITNET_EMULATE=1 ITNET_FLASH_SWEEP=all ITNET_FORCE_CUDA=0 "$py" -m pip install -q --no-build-isolation --no-deps -e . \
  >build/emulate-build.log 2>&1 || { tail -60 build/emulate-build.log; exit 1; }
echo "[emulate] build: $((SECONDS - t0)) s"
(cd / && "$py" - "$src" <<'PY'
import os, sys
import torch
from itnet_ext import emulate
emulate.load()
import itnet_ext._C_emu as m
assert os.path.realpath(m.__file__).startswith(os.path.realpath(sys.argv[1])), m.__file__
assert emulate.instrumented(), "the emulated kernels were built without the access instrumentation"
print("[emulate] library:", m.__file__, "| controls:", len(emulate.control_names()))
PY
)
tests=(tests/test_emulate.py tests/test_scan_cuda.py tests/test_lowrank_cuda.py
       tests/test_sparse_cuda.py tests/test_dense_cuda.py tests/test_dense_cuda_half.py
       tests/test_flash_sweep.py tests/test_reliability_cuda.py)
ITNET_REQUIRE_EMULATION=1 "$py" -m pytest -q -p no:cacheprovider --durations=5 "${tests[@]}" "$@"
