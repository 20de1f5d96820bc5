#!/usr/bin/env bash
# The test suite, as CI runs it: install, start a one-node Slurm (for the sbatch tests),
# run pytest, stop Slurm. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
# Ops DeepSpeed JIT-compiles stay with the venv (the trainer skips the CPU shared-memory one).
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.venv/torch_extensions}
export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    if bash slurm/ci/start_slurm.sh; then
        trap 'bash slurm/ci/stop_slurm.sh' EXIT
    elif [ "${GPT_STACK_REQUIRE_SLURM:-0}" = 1 ]; then
        echo "error: Slurm did not start and GPT_STACK_REQUIRE_SLURM=1 (as in CI)" >&2
        exit 1
    else
        echo "warning: Slurm did not start; the sbatch tests will be skipped" >&2
    fi
fi
# Two pytest workers, one test module each at a time (module fixtures such as a shared reference
# run are built once): most tests wait on process start-up or Slurm, so two keep both cores busy.
python -m pytest -n "${PYTEST_WORKERS:-2}" --dist loadscope "$@"
