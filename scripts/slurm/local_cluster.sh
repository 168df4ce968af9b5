#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, in one folder: try the sbatch scripts, preemption,
# requeues and the submitit sweeps without a cluster (the test suite's `slurm` tests use it too).
#
#   sudo scripts/slurm/local_cluster.sh start DIR [CPUS]   # installs slurm-wlm + munge when missing
#   export SLURM_CONF=DIR/slurm.conf                        # sbatch, squeue, scontrol, scancel use it
#   sbatch --gpus-per-node=0 --ntasks-per-node=1 --cpus-per-task=1 scripts/slurm/train_imagenet.sbatch ...
#   sudo scripts/slurm/local_cluster.sh stop DIR            # stops exactly the daemons `start` started
#
# Everything lives in DIR: slurm.conf, the munge key and socket, state, spool, pid and log files;
# nothing under /etc is changed. Needs root (slurmd runs jobs as their users) and no systemd.
# CPUS (default: this machine's core count) is what the node offers; more than the machine has is
# allowed (SlurmdParameters=config_overrides), so that several small jobs can run side by side.
# No accounting database: `sacct` answers nothing; `scontrol show job ID` shows every job for a day
# (MinJobAge). JobRequeue=1: jobs may requeue. SLURM holds a requeued job about 2 minutes before it
# can start again.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR [CPUS]" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1
dir=$(realpath -m "$2")
cpus=${3:-$(nproc)}

daemon_pids() { cat "$dir"/munged.pid "$dir"/slurmctld.pid "$dir"/slurmd.pid 2>/dev/null || true; }

install_packages() {
    command -v slurmctld >/dev/null && command -v munged >/dev/null && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "error: slurm-wlm and munge are not installed, and installing them needs root and apt-get" >&2
        exit 3
    fi
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
    local host mem_mb
    host=$(hostname -s)
    # 85% of the machine's memory, in MB: what jobs may ask for with --mem
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool"
    cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
SlurmctldPort=${SLURMCTLD_PORT:-6817}
SlurmdPort=${SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# short scheduling passes: a requeued job starts soon after its hold ends
SchedulerParameters=sched_interval=5,bf_interval=5
JobRequeue=1
MinJobAge=86400
KillWait=30
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
    install_packages
    if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        echo "a cluster from $dir is already running" >&2
        exit 1
    fi
    mkdir -p "$dir"
    chmod 700 "$dir"
    write_config
    [ -s "$dir/munge.key" ] || { dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$dir/munge.key"
    # --force: munged otherwise refuses a socket in a folder below a world-writable one (/tmp)
    munged --force --key-file="$dir/munge.key" --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" \
        --log-file="$dir/munged.log" --seed-file="$dir/munged.seed" 2>>"$dir/munged.log"
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    slurmd -f "$SLURM_CONF"
    # the node reports in within seconds; it is usable once sinfo shows it idle
    for _ in $(seq 1 120); do
        if sinfo -h -o %T 2>/dev/null | grep -qx idle; then
            echo "SLURM is up: export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "error: the node did not become idle within 60 s; logs in $dir" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    local pids
    pids=$(daemon_pids)
    [ -n "$pids" ] || { echo "no daemons recorded in $dir" >&2; return 0; }
    # shellcheck disable=SC2086
    kill $pids 2>/dev/null || true
    for _ in $(seq 1 40); do
        # shellcheck disable=SC2086
        kill -0 $pids 2>/dev/null || { rm -f "$dir"/*.pid; return 0; }
        sleep 0.25
    done
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    rm -f "$dir"/*.pid
}

case "$action" in
start) start ;;
stop) stop ;;
status) SLURM_CONF="$dir/slurm.conf" sinfo ;;
*) usage ;;
esac
