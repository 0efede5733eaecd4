#!/usr/bin/env bash
# Build the CPU library and the emulated CUDA library (ITNET_EMULATE=1) with ASan + UBSan in a
# copy of the tree and run the CPU op tests and the emulator's tests against them (CI's
# `sanitize` stage; the emulated kernels run without the race checks there: ASan and the
# -fsanitize=thread instrumentation they use exclude each other, and the emulate stage runs
# them). Usage: scripts/sanitize_tests.sh PYTHON [pytest args]
#   PYTHON: an interpreter with CPU torch, pytest and hypothesis installed.
# Leak checking is off: CPython and torch keep allocations until exit by design.
set -euo pipefail
py="$1"; shift
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
tar -C "$src" --exclude=.git --exclude=.venv --exclude=build --exclude='*.so' -cf - . \
  | tar -C "$work" -xf -
cd "$work"
ITNET_SANITIZE=1 ITNET_EMULATE=1 ITNET_FORCE_CUDA=0 "$py" setup.py -q build_ext --inplace >build.log 2>&1 \
  || { tail -40 build.log; exit 1; }
for lib in itnet_ext/_C.*so itnet_ext/_C_emu.*so; do
  ldd "$lib" | grep -q libasan || { echo "$lib is not linked to libasan" >&2; exit 1; }
  ldd "$lib" | grep -q libubsan || { echo "$lib is not linked to libubsan" >&2; exit 1; }
done
asan="$(gcc -print-file-name=libasan.so)"; ubsan="$(gcc -print-file-name=libubsan.so)"
tests=(tests/test_dense_ops.py tests/test_dense_grad.py tests/test_dense_errors.py
       tests/test_sparse_op.py tests/test_sparse_pair_major.py tests/test_lowrank_op.py
       tests/test_scan_op.py
       tests/test_neighbors.py tests/test_thread_safety.py
       # the emulated CUDA kernels (memory errors of the kernels and of the emulator)
       tests/test_emulate.py tests/test_scan_cuda.py tests/test_lowrank_cuda.py)
LD_PRELOAD="$asan:$ubsan" ASAN_OPTIONS=detect_leaks=0 PYTHONPATH="$work" "$py" -c "
import torch, itnet_ext, os
import itnet_ext._C_emu as emu
for m in (itnet_ext._C, emu):
    assert os.path.realpath(m.__file__).startswith(os.path.realpath('$work')), m.__file__
    print('sanitized library:', m.__file__)"
LD_PRELOAD="$asan:$ubsan" \
ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=1" \
UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
PYTHONPATH="$work" "$py" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
