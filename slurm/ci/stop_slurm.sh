#!/usr/bin/env bash
# Stop the one-node Slurm started by slurm/ci/start_slurm.sh (cancels remaining jobs first).
set -uo pipefail

STATE_DIR=${SLURM_CI_STATE:-/var/tmp/gpt-slurm-ci}
scancel --user="$(id -un)" 2>/dev/null || true
for daemon in slurmd slurmctld; do
    pidfile="$STATE_DIR/$daemon.pid"
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        pid=$(cat "$pidfile")
        kill "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    fi
    rm -f "$pidfile"
done
echo "stop_slurm: daemons stopped"
