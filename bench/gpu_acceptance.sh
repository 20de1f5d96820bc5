#!/usr/bin/env bash
# GPU acceptance, one GPU, under 10 minutes: (1) the tests marked `gpu` (CUDA/NCCL training, bf16 on
# the GPU against fp32 on the CPU, generation on CUDA equal to the CPU), (2) tokens/s, TFLOP/s and
# MFU of GPT-3 125M and 350M at sequence 2048 in bf16, (3) one summary table. Goal: MFU >= 45% at 350M.
#
#   bash bench/gpu_acceptance.sh              # in an environment where the project is installed
#
# On a machine with PyTorch but without the project's other packages (e.g. a lent GPU machine with
# no network), `bash tools/gpu_wheels.sh` here first collects them into .whl/, which this script
# installs with --no-index when it finds it. Results go to $OUT (default: bench/gpu_results/).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
OUT=${OUT:-bench/gpu_results}
mkdir -p "$OUT"
if [ -d .whl ]; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/torch_extensions}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.csv"
"$PYTHON" -c 'import torch, deepspeed, megatron.core; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "deepspeed", deepspeed.__version__, "megatron-core", megatron.core.__version__)' | tee "$OUT/versions.txt"

status=0
timeout 300 "$PYTHON" -m pytest tests/gpu -m gpu -q -p no:cacheprovider -rs 2>&1 | tee "$OUT/gpu_tests.log" || status=1
timeout 270 "$PYTHON" bench/gpu_throughput.py --sizes 125m 350m --output "$OUT/gpu_throughput.json" 2>&1 \
    | tee "$OUT/gpu_throughput.log" || status=1

echo
echo "== GPU acceptance summary =="
grep -E "passed|failed|error" "$OUT/gpu_tests.log" | tail -1 || echo "gpu tests: no result"
sed -n '/^model /,$p' "$OUT/gpu_throughput.log"
exit "$status"
