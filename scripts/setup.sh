#!/usr/bin/env bash
# Create .venv and install the project with its test tools. Idempotent: a second run only checks.
# torch is pinned here (not in requirements.txt) so that one command works everywhere: on Linux with a GPU, PyPI's
# torch 2.13.0 wheel is the CUDA build; on machines that carry a local CPU wheel of 2.13.0 pip takes that one.
# Override with TORCH_SPEC, e.g. TORCH_SPEC="torch==2.13.0+cu128 --index-url ..." if you need another build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v -i "warning" || true
# shellcheck disable=SC2086
.venv/bin/python -m pip install -q ${TORCH_SPEC:-torch==2.13.0} 2>&1 | grep -v -i "warning" || true
.venv/bin/python -m pip install -q -e ".[dev]" 2>&1 | grep -v -i "warning" || true
.venv/bin/python -c "import torch, diffusers, transformers, pybullet; print('environment ready: torch', torch.__version__)"
