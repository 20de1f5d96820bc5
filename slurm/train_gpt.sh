#!/usr/bin/env bash
# Launch training.pretrain on a Slurm allocation: one task per GPU (or per CPU rank), started
# by srun, which hands each task its rank and the world through SLURM_PROCID/SLURM_NTASKS.
#
# The per-size scripts (slurm/gpt3_*.sh) carry the #SBATCH header and the layout, then run this
# file. Everything is overridable from the environment, so the same script runs on a GPU
# cluster and on a one-node CPU Slurm with a tiny config:
#
#   sbatch slurm/gpt3_175b.sh                                   # 128 nodes x 8 A100, TP8 x PP8 x DP16
#   CONFIG=configs/tiny/gpt3_tiny.yaml TP=2 PP=2 RUN_DIR=/shared/runs/tiny \
#     sbatch --nodes=1 --ntasks-per-node=8 --gpus-per-node=0 --cpus-per-task=1 slurm/gpt3_175b.sh
#
# Environment (defaults in brackets):
#   CONFIG       trainer YAML config [set by the wrapper]
#   TP, PP       tensor / pipeline parallel sizes [1, 1]; DP = ranks / (TP x PP)
#   ZERO         parallel.zero_stage [config's]      MICRO_BATCH  train.micro_batch_size [config's]
#   ACT_CKPT     parallel.activation_checkpointing, true|false [config's]
#   BLEND        data.blend JSON [config's]
#   RUN_DIR      metrics, config, TensorBoard and logs, on a shared filesystem
#                [$RUNS_ROOT/$SLURM_JOB_NAME, RUNS_ROOT=<repo>/runs]; stable across requeues
#   CKPT_DIR     checkpoint.dir [$RUN_DIR/checkpoints]; a requeued or resubmitted job resumes
#                from its `latest`
#   CKPT_INTERVAL checkpoint.interval in steps [config's]
#   EXTRA_ARGS   more trainer overrides, e.g. "train.steps=40 logging.interval=5"
#   GPT_REPO     repository root [$SLURM_SUBMIT_DIR]; VENV: virtualenv to activate [$GPT_REPO/.venv]
#   MASTER_PORT  rendezvous port [29500]
set -euo pipefail

JOB_KIND=train_gpt
log() { echo "[train_gpt $(date -u +%H:%M:%S)] $*"; }
# shellcheck source=slurm/common.sh
source "${GPT_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}/slurm/common.sh"

: "${CONFIG:?set CONFIG to a trainer config, e.g. configs/gpt3/175b.yaml}"
[[ -f $CONFIG ]] || die "CONFIG=$CONFIG does not exist"
TP=${TP:-1}
PP=${PP:-1}
RUN_DIR=${RUN_DIR:-${RUNS_ROOT:-$GPT_REPO/runs}/${SLURM_JOB_NAME:-gpt}}
CKPT_DIR=${CKPT_DIR:-$RUN_DIR/checkpoints}
mkdir -p "$RUN_DIR" "$CKPT_DIR"

# ---- the allocation must match the requested layout ----------------------------------------
NODES=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
WORLD=${SLURM_NTASKS:-}
[[ -n $WORLD ]] || die "the job has no task count: submit with --ntasks-per-node (one task per GPU)"
(( WORLD % (TP * PP) == 0 )) \
    || die "allocation has $WORLD tasks ($NODES nodes), not divisible by TP x PP = $TP x $PP"
TASKS_PER_NODE=$(( WORLD / NODES ))
GPUS_PER_NODE=0
if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    GPUS_PER_NODE=$(nvidia-smi -L | wc -l)
fi
if (( GPUS_PER_NODE > 0 )); then
    (( TASKS_PER_NODE == GPUS_PER_NODE )) \
        || die "$TASKS_PER_NODE tasks per node but $GPUS_PER_NODE GPUs per node: use --ntasks-per-node=$GPUS_PER_NODE"
    (( TP <= GPUS_PER_NODE )) || die "TP=$TP spans nodes ($GPUS_PER_NODE GPUs per node): keep TP within a node"
    GPU_MEMORY_GB=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print $1 / 1024}')
    BACKEND=nccl
    export NCCL_ASYNC_ERROR_HANDLING=1 TORCH_NCCL_ASYNC_ERROR_HANDLING=1
    export NCCL_IB_TIMEOUT=${NCCL_IB_TIMEOUT:-22}
    export CUDA_DEVICE_MAX_CONNECTIONS=${CUDA_DEVICE_MAX_CONNECTIONS:-1}
    [[ -n ${NCCL_SOCKET_IFNAME:-} ]] && export NCCL_SOCKET_IFNAME
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
else
    BACKEND=gloo
    GPU_MEMORY_GB=
fi
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}

# ---- trainer overrides -----------------------------------------------------------------------
OVERRIDES=("parallel.tp=$TP" "parallel.pp=$PP" "checkpoint.dir=$CKPT_DIR")
[[ -n ${ZERO:-} ]] && OVERRIDES+=("parallel.zero_stage=$ZERO")
[[ -n ${MICRO_BATCH:-} ]] && OVERRIDES+=("train.micro_batch_size=$MICRO_BATCH")
[[ -n ${ACT_CKPT:-} ]] && OVERRIDES+=("parallel.activation_checkpointing=$ACT_CKPT")
[[ -n ${BLEND:-} ]] && OVERRIDES+=("data.blend=$BLEND")
[[ -n ${CKPT_INTERVAL:-} ]] && OVERRIDES+=("checkpoint.interval=$CKPT_INTERVAL")
# The trainer checks memory again with the same figure, so the pre-flight and the ranks agree.
[[ -n $GPU_MEMORY_GB ]] && OVERRIDES+=("parallel.device_memory_gb=$GPU_MEMORY_GB")
# shellcheck disable=SC2206
[[ -n ${EXTRA_ARGS:-} ]] && OVERRIDES+=($EXTRA_ARGS)

# Validate the config for this world (and memory, on GPUs) before any rank starts.
python -m tools.plan_check --config "$CONFIG" --world-size "$WORLD" \
    ${GPU_MEMORY_GB:+--gpu-memory-gb "$GPU_MEMORY_GB"} --set "${OVERRIDES[@]}" \
    || die "the layout does not fit this allocation (see above)"

# ---- rendezvous ------------------------------------------------------------------------------
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500}
# Ranks come from SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID in each task; drop launcher leftovers.
unset RANK WORLD_SIZE LOCAL_RANK

log "job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}): $NODES nodes x $TASKS_PER_NODE tasks," \
    "TP $TP x PP $PP x DP $(( WORLD / (TP * PP) )), backend $BACKEND, master $MASTER_ADDR:$MASTER_PORT"
log "config $CONFIG, run dir $RUN_DIR, checkpoints $CKPT_DIR"

# ---- stopping: the trainer treats SIGUSR1/SIGTERM as "finish this step, save, exit 0" -------
# USR1 to this shell (pre-emption: --signal=B:USR1@... before the time limit): the tasks save,
# then the job is requeued under the same id and resumes from $CKPT_DIR/latest.
# TERM to this shell (`scancel --signal=TERM --batch JOB`): the tasks save and the job ends, 0.
# Both reach the tasks as USR1 through srun: srun turns a SIGTERM into SIGKILL for its tasks.
PREEMPTED=
stop() {
    if [[ $1 == USR1 ]]; then
        log "USR1: time limit near: asking the trainer to checkpoint, then requeueing job $SLURM_JOB_ID"
        PREEMPTED=1
    else
        log "TERM: asking the trainer to checkpoint and stop"
    fi
    kill -USR1 "$SRUN_PID" 2>/dev/null || true
}
trap 'stop USR1' USR1
trap 'stop TERM' TERM

srun --kill-on-bad-exit=1 \
    python -m training.pretrain --config "$CONFIG" --run-dir "$RUN_DIR" --set "${OVERRIDES[@]}" &
SRUN_PID=$!
while true; do  # `wait` also returns when the trap runs; keep waiting for srun itself
    wait "$SRUN_PID" && status=0 || status=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break
done
log "training exited with status $status"
if [[ -n $PREEMPTED ]]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
exit "$status"
