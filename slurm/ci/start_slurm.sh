#!/usr/bin/env bash
# Start a real one-node Slurm (slurmctld + slurmd) on this machine, for CI and local tests.
#
# Installs Debian's slurmctld/slurmd/slurm-client when missing, writes a one-node
# configuration to $SLURM_CONF (default /etc/slurm/slurm.conf, where sbatch looks without any
# environment), starts both daemons and waits until the node accepts jobs.
#
#   bash slurm/ci/start_slurm.sh        # then: sbatch ..., squeue, scontrol show job N
#   bash slurm/ci/stop_slurm.sh
#
# SLURM_CI_CPUS sets the CPUs the node advertises (default: max(nproc, 8)); more than the
# machine has lets several ranks (e.g. a TP2 x PP2 x DP2 job) share the cores.
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STATE_DIR=${SLURM_CI_STATE:-/var/tmp/gpt-slurm-ci}
CPUS=${SLURM_CI_CPUS:-$(( $(nproc) > 8 ? $(nproc) : 8 ))}

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null; then
    echo "start_slurm: installing slurmctld slurmd slurm-client"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurmctld slurmd slurm-client >/dev/null
fi

if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "start_slurm: Slurm already running and answering; keeping it (stop_slurm.sh stops it)"
        exit 0
    fi
    echo "start_slurm: Slurm daemons are running but the node does not answer; run slurm/ci/stop_slurm.sh" >&2
    exit 1
fi

mkdir -p "$(dirname "$SLURM_CONF")" "$STATE_DIR"/{ctld,d,log}
cat > "$SLURM_CONF" <<CONF
# Written by slurm/ci/start_slurm.sh: a one-node cluster for tests.
ClusterName=gptci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/none
CredType=cred/none
# A requeued job may start again after cred_expire seconds (default 120).
AuthInfo=cred_expire=10
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
MailProg=/bin/true
ReturnToService=2
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/d
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=30
MinJobAge=600
KillWait=10
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF
export SLURM_CONF

slurmctld
slurmd
for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
        echo "start_slurm: one-node Slurm ready ($CPUS CPUs, config $SLURM_CONF, logs $STATE_DIR/log)"
        exit 0
    fi
    sleep 1
done
echo "start_slurm: node did not become idle; see $STATE_DIR/log" >&2
sinfo >&2 || true
exit 1
