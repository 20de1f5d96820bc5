#!/usr/bin/env bash
# Fuzzy (MinHash LSH) dedup of a whole corpus as one MPI job: every rank hashes its share of
# the shards, LSH band keys are exchanged between ranks (alltoallv), and the ranks remove the
# duplicates of their shards. The result does not depend on the number of ranks.
#
#   INPUT=/shared/cc/kept OUTPUT=/shared/cc/unique sbatch --nodes=4 slurm/data_dedup_mpi.sh
#   METHOD=exact ... sbatch slurm/data_dedup_mpi.sh          # exact dedup instead of minhash
#
# Environment: INPUT, OUTPUT (required); METHOD [minhash]; DEDUP_ARGS (more options, e.g.
# "--priority wikipedia,books,common-crawl"); MPIEXEC [mpiexec from the venv];
# GPT_REPO [$SLURM_SUBMIT_DIR]; VENV [$GPT_REPO/.venv].
#SBATCH --job-name=gpt-dedup
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --cpus-per-task=4
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

JOB_KIND=data_dedup_mpi
# shellcheck source=slurm/common.sh
source "${GPT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"
: "${INPUT:?set INPUT to the directory of document shards}"
: "${OUTPUT:?set OUTPUT to the output directory}"
MPIEXEC=${MPIEXEC:-mpiexec}
command -v "$MPIEXEC" >/dev/null || die "$MPIEXEC not found (pip install mpich, or point MPIEXEC at your MPI)"
RANKS=${SLURM_NTASKS:?submit with --ntasks or --ntasks-per-node}

echo "[data_dedup_mpi] ${METHOD:-minhash} dedup of $INPUT on $RANKS MPI ranks ($SLURM_JOB_NUM_NODES nodes)"
# mpiexec finds the allocation's nodes through Slurm; --executor mpi makes every rank take its
# share by MPI rank rather than by the (shared) Slurm task id of the batch step.
# shellcheck disable=SC2086
exec "$MPIEXEC" -n "$RANKS" gpt-data dedup "${METHOD:-minhash}" --input "$INPUT" --output "$OUTPUT" \
    --workers 1 --executor mpi ${DEDUP_ARGS:-}
