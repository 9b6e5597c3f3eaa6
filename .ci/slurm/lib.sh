#!/usr/bin/env bash
# Shared by .ci/slurm/start.sh and .ci/slurm/stop.sh (sourced, not run).

# alive PID NAME: the process exists, is not a zombie, and runs the program we recorded
# (guards against pid reuse).
alive() {
    local pid=$1 name=$2 stat comm
    [[ -n $pid && -r /proc/$pid/stat ]] || return 1
    stat=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
    [[ $stat != Z && $stat != X ]] || return 1
    comm=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
    [[ $comm == "$name" ]]
}
