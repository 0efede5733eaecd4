#!/usr/bin/env bash
# Install PyTorch (pinned) and the build/test dependencies of itnet_ext into
# the environment of the *current* python (activate your venv first).
#
#   bash scripts/install_torch.sh cpu    # torch==2.13.0 (CPU build)
#   bash scripts/install_torch.sh cuda   # torch==2.14.1 (CUDA 13.0 build)
#
# torch is installed only when it is not importable already; an existing torch
# is left untouched (whatever its version). An unpinned torch is never pulled.
# Environment:
#   PYTHON            interpreter to use (default: python, else python3)
#   ITNET_PIP_ARGS    extra arguments for every pip install (e.g. an index URL)
set -euo pipefail

flavor="${1:-cpu}"
case "$flavor" in
  cpu)  torch_spec="torch==2.13.0" ;;
  cuda) torch_spec="torch==2.14.1" ;;
  *) echo "usage: $0 [cpu|cuda]" >&2; exit 2 ;;
esac

if [[ -n "${PYTHON:-}" ]]; then
  py="$PYTHON"
elif command -v python >/dev/null 2>&1; then
  py=python
else
  py=python3
fi

# shellcheck disable=SC2206
extra=( ${ITNET_PIP_ARGS:-} )
pip_install() { "$py" -m pip install --disable-pip-version-check "${extra[@]}" "$@"; }

echo "[install_torch] python: $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
"$py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else "itnet_ext needs Python >= 3.10")'

if have=$("$py" -c 'import torch; print(torch.__version__, "cuda=" + str(torch.version.cuda))' 2>/dev/null); then
  echo "[install_torch] torch already installed ($have): leaving it as is"
  if [[ "$flavor" == cuda && "$have" == *"cuda=None" ]]; then
    echo "[install_torch] WARNING: the installed torch is a CPU build; the CUDA kernels will not be built" >&2
  fi
else
  echo "[install_torch] installing $torch_spec"
  pip_install "$torch_spec"
fi

# Build and test dependencies (setuptools >= 64 for PEP 660 editable installs).
pip_install "setuptools>=64" wheel ninja numpy pytest hypothesis expecttest
"$py" -c 'import torch; print("[install_torch] torch", torch.__version__, "| CUDA", torch.version.cuda)'
