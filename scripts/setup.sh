#!/usr/bin/env bash
# Create ./.venv and install rootzone with its dev tools.
# Without an NVIDIA GPU, a CPU build of torch is installed first so pip does not pull a multi-GB CUDA build;
# with a GPU, the normal torch wheel (CUDA) is installed by pip as usual.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
VPY=.venv/bin/python
"$VPY" -m pip install --quiet --upgrade pip
if ! "$VPY" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the default (CUDA) torch build"
    "$VPY" -m pip install --quiet "torch>=2.4"
  else
    echo "setup: no GPU: installing a CPU build of torch"
    # A local CPU wheel (torch==2.13.0+cpu) is preferred; otherwise PyTorch's CPU-only index.
    "$VPY" -m pip install --quiet "torch==2.13.0+cpu" 2>/dev/null \
      || "$VPY" -m pip install --quiet torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"$VPY" -m pip install --quiet -e ".[dev]"
echo "setup: done ($("$VPY" -c 'import torch; print("torch", torch.__version__)'))"
