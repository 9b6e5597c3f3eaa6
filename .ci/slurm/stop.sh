#!/usr/bin/env bash
# Stop the single-node SLURM that .ci/slurm/start.sh started: only the pids it recorded
# (munged, slurmctld, slurmd), after cancelling the jobs still queued on it. Idempotent: with
# nothing recorded it says so and exits 0. Logs stay in the state folder.
set -uo pipefail

STATE=${MEDMIX_SLURM_STATE:-/tmp/medmix-slurm}
CONF=$STATE/slurm.conf
log() { echo "[slurm/stop] $*" >&2; }

# alive PID NAME: exists, not a zombie, and still the program we recorded (see lib.sh)
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
recorded() { [[ -s $STATE/pids/$1 ]] && tr -dc '0-9' <"$STATE/pids/$1"; }

if [[ ! -d $STATE/pids ]]; then
    log "nothing recorded in $STATE/pids: nothing to stop"
    exit 0
fi

# Cancel what is still queued or running, so no job step outlives its slurmd.
if alive "$(recorded slurmctld)" slurmctld && [[ -r $CONF ]]; then
    SLURM_CONF=$CONF timeout 10 scancel --quiet --partition="$(awk -F'[= ]' '/^PartitionName=/{print $2; exit}' "$CONF")" \
        >/dev/null 2>&1 || true
    for _ in $(seq 1 20); do
        [[ -z $(SLURM_CONF=$CONF timeout 5 squeue -h -t PD,R,CG -o %i 2>/dev/null) ]] && break
        sleep 0.5
    done
fi

rc=0
for name in slurmd slurmctld munged; do
    pid=$(recorded $name) || true
    if ! alive "$pid" $name; then
        log "$name: not running (recorded pid ${pid:-none})"
        continue
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        alive "$pid" $name || break
        sleep 0.2
    done
    if alive "$pid" $name; then
        log "$name ($pid) ignored SIGTERM for 10 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    if alive "$pid" $name; then
        log "$name ($pid) still alive"
        rc=1
    else
        log "$name ($pid) stopped"
    fi
done

if [[ -s $STATE/pids/etc_link ]]; then
    link=$(cat "$STATE/pids/etc_link")
    if [[ -L $link && $(readlink "$link") == "$CONF" ]]; then
        rm -f "$link"
        log "removed $link"
    fi
fi
((rc == 0)) && rm -rf "$STATE/pids"
exit $rc
