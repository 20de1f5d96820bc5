#!/usr/bin/env bash
# Create .venv and install the project (idempotent). torch 2.13.0 goes first so that pip
# keeps the CPU wheel instead of pulling a multi-GB CUDA build for deepspeed/megatron-core.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
# shellcheck disable=SC1091
. .venv/bin/activate
python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
    || pip install -q torch==2.13.0
pip install -q -e '.[dev]' -c tools/constraints.txt
