#!/usr/bin/env bash
# GPT-3 175B (configs/gpt3/175b.yaml) on 128 node(s) x 8 GPUs: TP 8 x PP 8 x DP 16, the
# `gpt-plan --config configs/gpt3/175b.yaml --nodes 128` choice for A100-80GB (estimate). Submit from the
# repository root; every variable below (and sbatch options on the command line) can be overridden,
# see slurm/train_gpt.sh.
#SBATCH --job-name=gpt3-175b
#SBATCH --nodes=128
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=12
#SBATCH --exclusive
#SBATCH --mem=0
#SBATCH --time=48:00:00
#SBATCH --signal=B:USR1@900
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=slurm-%x-%j.out

export CONFIG=${CONFIG:-configs/gpt3/175b.yaml}
export TP=${TP:-8} PP=${PP:-8} ACT_CKPT=${ACT_CKPT:-false} MICRO_BATCH=${MICRO_BATCH:-1}
export CKPT_INTERVAL=${CKPT_INTERVAL:-200}
exec bash "${GPT_REPO:-${SLURM_SUBMIT_DIR:-.}}/slurm/train_gpt.sh"
