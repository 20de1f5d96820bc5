#!/usr/bin/env bash
# One per-shard data stage (extract, filter, tokenize, ...) as a Slurm array job: array task i of
# n takes every n-th input shard (gpt-data's executor reads SLURM_ARRAY_TASK_ID/COUNT) and runs
# it with --workers = CPUs per task. Finished shards carry completion markers, so resubmitting
# the same command (or a requeue after preemption) only does what is left.
#
#   STAGE=extract  INPUT=/shared/cc/warc  OUTPUT=/shared/cc/docs  sbatch --array=0-63 slurm/data_array.sh
#   STAGE=filter   INPUT=/shared/cc/docs  OUTPUT=/shared/cc/kept  sbatch --array=0-63 slurm/data_array.sh
#   (dedup across all shards: slurm/data_dedup_mpi.sh)
#   STAGE=tokenize INPUT=/shared/cc/unique OUTPUT=/shared/tokens/cc_gpt2_text_document \
#     STAGE_ARGS="--tokenizer gpt2" sbatch --array=0-31 slurm/data_array.sh
#
# Environment: STAGE, INPUT, OUTPUT (required); STAGE_ARGS (more gpt-data options);
# GPT_REPO [$SLURM_SUBMIT_DIR]; VENV [$GPT_REPO/.venv].
#SBATCH --job-name=gpt-data
#SBATCH --array=0-15
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

JOB_KIND=data_array
# shellcheck source=slurm/common.sh
source "${GPT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
[[ -n ${SLURM_ARRAY_TASK_ID:-} ]] || die "submit as an array job: sbatch --array=0-N slurm/data_array.sh"
: "${STAGE:?set STAGE to a gpt-data stage, e.g. extract, filter or tokenize}"
: "${INPUT:?set INPUT to the input file or directory of shards}"
: "${OUTPUT:?set OUTPUT to the output directory (prefix for tokenize)}"

echo "[data_array] $STAGE: array task $SLURM_ARRAY_TASK_ID of ${SLURM_ARRAY_TASK_COUNT:-?}, ${SLURM_CPUS_PER_TASK:-1} workers"
# shellcheck disable=SC2086
exec gpt-data $STAGE --input "$INPUT" --output "$OUTPUT" --workers "${SLURM_CPUS_PER_TASK:-1}" \
    --executor slurm ${STAGE_ARGS:-}
