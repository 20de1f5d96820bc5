#!/usr/bin/env bash
# Collect, into .whl/, the wheels that a GPU machine with PyTorch but no network lacks to run
# bench/gpu_acceptance.sh (DeepSpeed, megatron-core and their small pure-Python needs), for
# CPython 3.12 on x86-64 Linux by default. DeepSpeed ships an sdist only: its wheel is built here
# (pure Python; its ops JIT-compile on the GPU machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER=${PYVER:-3.12}
mkdir -p .whl
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
. .venv/bin/activate
pinned() {  # name==version as in this venv (a combination known to work)
    for name in "$@"; do
        python -c "from importlib.metadata import version; print('$name==' + version('$name'))"
    done
}
DS_BUILD_OPS=0 pip wheel -q --no-deps --no-build-isolation -w .whl "$(pinned deepspeed)"
# shellcheck disable=SC2046
pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl $(pinned megatron-core hjson pydantic pydantic-core annotated-types typing-inspection)
ls -l .whl
