#!/usr/bin/env bash
# Start a real single-node SLURM on this machine for the cluster test (tests/workflow/test_slurm.py).
#
#   bash .ci/slurm/start.sh        # idempotent: a second call finds it running and returns
#   bash .ci/slurm/stop.sh         # stops only what this script started, by recorded pid
#
# Installs Debian's munge/slurmctld/slurmd/slurm-client when missing (root, apt, quiet), then
# runs a private munged (own key and socket), slurmctld and slurmd from a generated slurm.conf
# in the state folder, and waits until the node is idle. No accounting (no slurmdbd): the
# profile's `slurm-status-command: squeue` plus MinJobAge=300 avoid the plugin's sacct hang;
# finished jobs are also written to $STATE/jobcomp.log (jobcomp/filetxt). The node advertises
# one pretend GPU (gres gpu:fake on /dev/null) so profiles/slurm-gpu's `--gpus=1` is accepted.
# From scratch (apt install) about 30 s; with the packages present about 1 s.
#
# Environment:
#   MEDMIX_SLURM_STATE      state folder (default /tmp/medmix-slurm)
#   MEDMIX_SLURM_PORT       slurmctld port; slurmd uses PORT+1 (default 16817)
#   MEDMIX_SLURM_PARTITION  partition name (default medmix)
#   MEDMIX_SLURM_TIMEOUT    seconds to wait for the node to become idle (default 60)
#   MEDMIX_SLURM_CPUS       CPUs the node advertises, at least (default 4; more if present)
#   MEDMIX_SLURM_MEM_MB     memory the node advertises, at least (default 64000)
# Prints `export SLURM_CONF=...` as its last line; /etc/slurm/slurm.conf is linked to the
# generated file when no slurm.conf exists there (removed again by stop.sh), so plain `sinfo`
# works too.
set -euo pipefail

STATE=${MEDMIX_SLURM_STATE:-/tmp/medmix-slurm}
PORT=${MEDMIX_SLURM_PORT:-16817}
PARTITION=${MEDMIX_SLURM_PARTITION:-medmix}
WAIT=${MEDMIX_SLURM_TIMEOUT:-60}
CONF=$STATE/slurm.conf
MUNGE_DIR=$STATE/munge
SOCKET=$MUNGE_DIR/munge.socket.2
ETC_CONF=/etc/slurm/slurm.conf

log() { echo "[slurm/start] $*" >&2; }
die() {
    log "ERROR: $*"
    for f in "$STATE/slurmctld.log" "$STATE/slurmd.log" "$MUNGE_DIR/munged.log"; do
        [[ -s $f ]] && { log "--- tail $f"; tail -n 15 "$f" >&2; }
    done
    # leave nothing half-started behind
    [[ -d $STATE/pids ]] && MEDMIX_SLURM_STATE=$STATE bash "$(dirname "$0")/stop.sh" >&2
    exit 1
}

# A pid is "ours and alive" when the process exists, is not a zombie, and runs the program
# we recorded (guards against pid reuse).
alive() {
    local pid=$1 name=$2 stat comm
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    stat=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat != Z && $stat != X ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}
recorded() { [[ -s $STATE/pids/$1 ]] && cat "$STATE/pids/$1"; }

node_state() {
    SLURM_CONF=$CONF timeout 10 sinfo -h -N -o %t 2>/dev/null | head -n 1 | tr -d ' *~#'
}

# ---- packages ---------------------------------------------------------------------------
need=()
for bin in munged:munge slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client; do
    command -v "${bin%%:*}" >/dev/null 2>&1 || need+=("${bin##*:}")
done
if ((${#need[@]})); then
    [[ $(id -u) == 0 ]] || die "missing ${need[*]} and not root: apt-get install ${need[*]}"
    log "installing ${need[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    timeout 180 apt-get update -qq >/dev/null 2>&1 || log "apt-get update failed or timed out; trying install anyway"
    timeout 300 apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
        die "apt-get install ${need[*]} failed"
fi
[[ $(id -u) == 0 ]] || die "must run as root (slurmd runs jobs as their submitting user)"

# ---- state folder, munge key ------------------------------------------------------------
t0=$(date +%s.%N)
mkdir -p "$STATE" "$MUNGE_DIR"
chown munge:munge "$MUNGE_DIR"
chmod 0755 "$STATE" "$MUNGE_DIR"
if [[ ! -s $MUNGE_DIR/munge.key ]]; then
    dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
fi
chown munge:munge "$MUNGE_DIR/munge.key"
chmod 0400 "$MUNGE_DIR/munge.key"

# ---- slurm.conf -------------------------------------------------------------------------
HOST=$(hostname -s)
NODE=$(timeout 20 slurmd -C 2>/dev/null | head -n 1) || die "slurmd -C failed"
[[ $NODE == NodeName=* ]] || die "unexpected slurmd -C output: $NODE"
MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$NODE")
[[ -n $MEM ]] || die "no RealMemory in: $NODE"
# At least 4 CPUs and 64 GB, so every request of the profiles (4-core train groups, GPU
# extraction with cpus_per_gpu=4 and 16 GB, retries with 2x/3x memory) can be scheduled on a
# small CI machine (config_overrides: slurmd trusts slurm.conf over the hardware it sees;
# nothing enforces the limits here: no cgroups).
REAL_CPUS=$(nproc)
MIN_CPUS=${MEDMIX_SLURM_CPUS:-4}
MIN_MEM=${MEDMIX_SLURM_MEM_MB:-64000}
CPUS=$((REAL_CPUS > MIN_CPUS ? REAL_CPUS : MIN_CPUS))
MEM=$((MEM > MIN_MEM ? MEM : MIN_MEM))
# One pretend GPU (a gres on /dev/null), so `--gpus=1` requests from
# profiles/slurm-gpu are accepted and scheduled here; nothing uses it (device: cpu).
NODE="NodeName=$HOST CPUs=$CPUS RealMemory=$MEM Gres=gpu:fake:1"
cat >"$CONF.new" <<EOF
# Generated by .ci/slurm/start.sh: a single-node test cluster (no accounting).
ClusterName=medmix
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
AuthType=auth/munge
AuthInfo=socket=$SOCKET
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$STATE/jobcomp.log
MpiDefault=none
GresTypes=gpu
MailProg=/bin/true
ReturnToService=2
MinJobAge=300
DefMemPerCPU=1000
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
SlurmdParameters=config_overrides
MessageTimeout=10
$NODE State=UNKNOWN NodeAddr=127.0.0.1
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

cat >"$STATE/gres.conf.new" <<EOF
NodeName=$HOST Name=gpu Type=fake File=/dev/null
EOF

# ---- already running? -------------------------------------------------------------------
if cmp -s "$CONF.new" "$CONF" && cmp -s "$STATE/gres.conf.new" "$STATE/gres.conf" && alive "$(recorded munged)" munged && alive "$(recorded slurmctld)" slurmctld &&
    alive "$(recorded slurmd)" slurmd && [[ $(node_state) =~ ^(idle|mix|alloc)$ ]]; then
    log "already running (state $STATE, node $(node_state))"
    rm -f "$CONF.new" "$STATE/gres.conf.new"
    echo "export SLURM_CONF=$CONF"
    exit 0
fi
if [[ -d $STATE/pids ]]; then
    log "stale or changed state in $STATE: stopping what it recorded first"
    MEDMIX_SLURM_STATE=$STATE bash "$(dirname "$0")/stop.sh" || true
fi

# A fresh cluster each start: no recovered jobs, no stale pid files or socket.
rm -rf "$STATE/spool" "$STATE"/*.pid "$STATE/jobcomp.log" "$MUNGE_DIR/munged.pid" "$SOCKET" "$SOCKET.lock"
mkdir -p "$STATE"/{pids,spool/ctld,spool/slurmd}
mv "$CONF.new" "$CONF"
mv "$STATE/gres.conf.new" "$STATE/gres.conf"

# ---- daemons ----------------------------------------------------------------------------
wait_pidfile() { # file seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        [[ -s $1 ]] && return 0
        sleep 0.1
    done
    return 1
}

timeout 20 runuser -u munge -- munged --socket="$SOCKET" --key-file="$MUNGE_DIR/munge.key" \
    --pid-file="$MUNGE_DIR/munged.pid" --log-file="$MUNGE_DIR/munged.log" \
    --seed-file="$MUNGE_DIR/munged.seed" || die "munged failed to start"
wait_pidfile "$MUNGE_DIR/munged.pid" 10 || die "munged wrote no pid file"
cp "$MUNGE_DIR/munged.pid" "$STATE/pids/munged"
timeout 10 munge --socket="$SOCKET" -n </dev/null | timeout 10 unmunge --socket="$SOCKET" >/dev/null ||
    die "munge round trip failed"

SLURM_CONF=$CONF timeout 20 slurmctld -c -f "$CONF" || die "slurmctld failed to start"
wait_pidfile "$STATE/slurmctld.pid" 15 || die "slurmctld wrote no pid file"
cp "$STATE/slurmctld.pid" "$STATE/pids/slurmctld"

SLURM_CONF=$CONF timeout 20 slurmd -f "$CONF" -N "$HOST" || die "slurmd failed to start"
wait_pidfile "$STATE/slurmd.pid" 15 || die "slurmd wrote no pid file"
cp "$STATE/slurmd.pid" "$STATE/pids/slurmd"

if [[ ! -e $ETC_CONF && ! -L $ETC_CONF ]]; then
    mkdir -p "$(dirname "$ETC_CONF")"
    ln -s "$CONF" "$ETC_CONF"
    echo "$ETC_CONF" >"$STATE/pids/etc_link"
fi

# ---- wait for the node ------------------------------------------------------------------
deadline=$(($(date +%s) + WAIT))
state=""
while (($(date +%s) < deadline)); do
    state=$(node_state)
    [[ $state == idle ]] && break
    if [[ $state =~ ^(down|drain|drng|fail)$ ]]; then
        SLURM_CONF=$CONF timeout 10 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    fi
    sleep 0.5
done
[[ $state == idle ]] || die "node $HOST not idle after ${WAIT}s (state: ${state:-none})"
for d in munged slurmctld slurmd; do alive "$(recorded $d)" $d || die "$d died"; done

log "up in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b-a}')s: node $HOST idle," \
    "partition $PARTITION, pids munged=$(recorded munged) slurmctld=$(recorded slurmctld) slurmd=$(recorded slurmd)"
echo "export SLURM_CONF=$CONF"
