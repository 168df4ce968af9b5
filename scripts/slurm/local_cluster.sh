#!/usr/bin/env bash
# A real SLURM cluster on this machine, in one folder: try the sbatch scripts, preemption, requeues,
# multi-node jobs and the submitit sweeps without a cluster (the test suite's `slurm` tests use it).
#
#   sudo scripts/slurm/local_cluster.sh start DIR [CPUS] [--nodes N]  # installs slurm-wlm + munge
#   export SLURM_CONF=DIR/slurm.conf                        # sbatch, squeue, scontrol, scancel use it
#   sbatch --gpus-per-node=0 --ntasks-per-node=1 --cpus-per-task=1 scripts/slurm/train_imagenet.sbatch ...
#   sbatch -p high ...                                      # preempts (requeues) jobs of partition local
#   sudo scripts/slurm/local_cluster.sh stop DIR            # stops exactly the daemons `start` started
#
# Everything lives in DIR: slurm.conf, the munge key and socket, state, spool, pid and log files;
# nothing under /etc is changed. Needs root (slurmd runs jobs as their users) and no systemd.
# CPUS (default: this machine's core count) is what each node offers; more than the machine has is
# allowed (SlurmdParameters=config_overrides), so that several small jobs can run side by side.
# No accounting database: `sacct` answers nothing; `scontrol show job ID` shows every job for a day
# (MinJobAge). JobRequeue=1: jobs may requeue. SLURM holds a requeued job about 2 minutes before it
# can start again: the job credential's lifetime, AuthInfo's cred_expire (120 s by default; the
# environment's CRED_EXPIRE=SECONDS, at least 5, sets it: the test suite's clusters use 60). Two partitions on the same nodes: `local` (the default) and `high`, whose jobs
# preempt `local` jobs when they need their CPUs (PreemptType=preempt/partition_prio,
# PreemptMode=REQUEUE: the preempted job gets SIGTERM, SIGKILL after KillWait, and is requeued),
# and two more on the same nodes for preemption with a grace time (GraceTime=30: SIGTERM at once,
# SIGKILL 30 s later): `gracecancel` (PreemptMode=CANCEL: the job ends) and `gracerequeue`
# (PreemptMode=REQUEUE: it is requeued), both preempted by `high` like `local`.
#
# --nodes N: N nodes node1..nodeN on this one machine instead of one. Each runs `slurmd -N nodeI`
# in a network namespace of its own, address 10.201.S.(10+I) on a bridge this script creates (S is
# picked per DIR; the controller listens on the bridge's 10.201.S.1), and in UTS and mount
# namespaces of its own, with its host name and a hosts file naming every node bind-mounted on
# /etc/hosts: a multi-node job resolves its nodes' names as on a real cluster. `stop` removes the
# namespaces and the bridge.
#
# SLURM versions: whichever slurmctld, slurmd and commands come first on PATH: Debian's 22.05
# (slurm-wlm, installed when missing) or another build, e.g. 25.11 from ../shared/slurm/ with
# PATH=/opt/slurm-25.11/bin:/opt/slurm-25.11/sbin:$PATH. For a build outside /usr, slurm.conf names
# its plugins (PluginDir=PREFIX/lib/slurm, PREFIX from the slurmctld on PATH). A SLURM newer than
# 22.x with --nodes: one munged per node (same key, socket DIR/munge-nodeI/munge.socket, bind-mounted
# over DIR/munge.socket in that node's mount namespace, pid file DIR/munged-nodeI.pid): with one munged
# shared by the nodes, 25.11's step launch forwarded to a second node fails (munged: "Replayed
# credential"). 22.05 keeps one munged for the whole cluster.
set -euo pipefail

usage() { echo "usage: $0 start|stop|status DIR [CPUS] [--nodes N]" >&2; exit 2; }
if [ -n "${CRED_EXPIRE:-}" ] && ! { [[ "$CRED_EXPIRE" =~ ^[1-9][0-9]*$ ]] && [ "$CRED_EXPIRE" -ge 5 ]; }; then
    echo "error: CRED_EXPIRE is the job credential's lifetime in seconds (at least 5), got '$CRED_EXPIRE'" >&2
    exit 2
fi
[ $# -ge 2 ] || usage
action=$1
dir=$(realpath -m "$2")
shift 2
cpus=$(nproc)
nodes=0 # 0: one node, this machine itself, no namespaces
while [ $# -gt 0 ]; do
    case "$1" in
    --nodes)
        if [ $# -lt 2 ] || ! [[ "$2" =~ ^[1-9][0-9]?$ ]]; then
            echo "error: --nodes takes a number of nodes from 1 to 99, got '${2:-}'" >&2
            exit 2
        fi
        nodes=$2
        shift 2
        ;;
    *)
        [[ "$1" =~ ^[1-9][0-9]*$ ]] || { echo "error: CPUS must be a positive number, got '$1'" >&2; exit 2; }
        cpus=$1
        shift
        ;;
    esac
done
# this cluster's bridge and namespace names come from DIR, so that clusters side by side differ
tag=$(printf %s "$dir" | md5sum | cut -c1-6)
bridge="sbr$tag"
netns() { echo "slurm-$tag-node$1"; }
subnet=""

# the controller's munged, every node's munged (newer SLURM with --nodes), slurmctld, every slurmd
daemon_pids() { cat "$dir"/munged*.pid "$dir"/slurmctld.pid "$dir"/slurmd*.pid 2>/dev/null || true; }

install_packages() {
    local missing=""
    command -v slurmctld >/dev/null || missing+=" slurm-wlm"
    command -v munged >/dev/null || missing+=" munge"
    [ -n "$missing" ] || return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "error:$missing not installed, and installing needs root and apt-get" >&2
        exit 3
    fi
    apt-get update -qq >/dev/null
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
}

# the SLURM on PATH: its version (major.minor, e.g. 22.05 or 25.11) and its install prefix
slurm_major=0
slurm_prefix=/usr
detect_slurm() {
    local version
    # "slurm-wlm 22.05.8" (Debian), "slurm 25.11.7" (a build from SchedMD's sources)
    version=$(slurmctld -V | awk '{print $2}')
    [[ "$version" =~ ^([0-9]+)\.([0-9]+) ]] || { echo "error: cannot read slurmctld -V: '$version'" >&2; exit 1; }
    slurm_major=$((10#${BASH_REMATCH[1]}))
    slurm_prefix=$(dirname "$(dirname "$(realpath "$(command -v slurmctld)")")")
}

# one munged per node: a SLURM newer than 22.x with namespaced nodes (see the top)
node_munge() { [ "$nodes" -gt 0 ] && [ "$slurm_major" -ge 23 ]; }

write_config() {
    local host mem_mb ctld_host per_node i
    host=$(hostname -s)
    # 85% of the machine's memory, in MB: what jobs may ask for with --mem
    mem_mb=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.85}' /proc/meminfo)
    mkdir -p "$dir/state" "$dir/spool"
    ctld_host=$host
    nodes_conf="NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"
    per_node="" # one pid file, log file and spool folder per node (%n: the node's name)
    if [ "$nodes" -gt 0 ]; then
        ctld_host="$host($subnet.1)"
        per_node="-%n"
        nodes_conf=""
        for i in $(seq 1 "$nodes"); do
            nodes_conf+="NodeName=node$i NodeAddr=$subnet.$((10 + i)) CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN"$'\n'
        done
    fi
    plugin_conf=""
    if [ "$slurm_prefix" != /usr ] && [ -d "$slurm_prefix/lib/slurm" ]; then
        plugin_conf="PluginDir=$slurm_prefix/lib/slurm"$'\n'
    fi
    cat >"$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$ctld_host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket${CRED_EXPIRE:+,cred_expire=$CRED_EXPIRE}
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/slurmd$per_node
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd$per_node.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd$per_node.log
FirstJobId=${FIRST_JOB_ID:-1}
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
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
$plugin_conf$nodes_conf
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=high Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=OFF
PartitionName=gracecancel Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL GraceTime=30
PartitionName=gracerequeue Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
EOF
}

# a free 10.201.S.0/24 for this cluster's bridge (S from DIR's tag, the next free one if taken)
pick_subnet() {
    local s
    s=$((16#${tag:0:2} % 250 + 1))
    for _ in $(seq 1 250); do
        if ! ip -4 route show | grep -q "^10\.201\.$s\.0/24 "; then
            subnet="10.201.$s"
            return 0
        fi
        s=$((s % 250 + 1))
    done
    echo "error: no free 10.201.S.0/24 left for the bridge" >&2
    exit 1
}

# the bridge (with the controller's address), one network namespace per node on it, the hosts file
make_network() {
    local i ns
    pick_subnet
    ip link add "$bridge" type bridge
    ip addr add "$subnet.1/24" dev "$bridge"
    ip link set "$bridge" up
    {
        echo "127.0.0.1 localhost"
        echo "$subnet.1 $(hostname -s)"
        for i in $(seq 1 "$nodes"); do echo "$subnet.$((10 + i)) node$i"; done
    } >"$dir/hosts"
    for i in $(seq 1 "$nodes"); do
        ns=$(netns "$i")
        ip netns add "$ns"
        ip link add "sv$tag$i" type veth peer name eth0 netns "$ns"
        ip link set "sv$tag$i" master "$bridge" up
        ip -n "$ns" addr add "$subnet.$((10 + i))/24" dev eth0
        ip -n "$ns" link set eth0 up
        ip -n "$ns" link set lo up
    done
}

remove_network() {
    local i
    for i in $(seq 1 99); do
        [ -e "/run/netns/$(netns "$i")" ] || break
        ip netns del "$(netns "$i")" 2>/dev/null || true
    done
    ip link del "$bridge" 2>/dev/null || true
}

# a munged on SOCKET with the cluster's key; its pid, log and seed files named by NAME
start_munged() {
    local socket=$1 name=$2
    # --force: munged otherwise refuses a socket in a folder below a world-writable one (/tmp)
    munged --force --key-file="$dir/munge.key" --socket="$socket" --pid-file="$dir/$name.pid" \
        --log-file="$dir/$name.log" --seed-file="$dir/$name.seed" 2>>"$dir/$name.log"
}

start_slurmd() {
    local i
    if [ "$nodes" -eq 0 ]; then
        slurmd -f "$SLURM_CONF"
        return 0
    fi
    for i in $(seq 1 "$nodes"); do
        # not `ip netns exec`: it remounts /sys, where slurmd looks for its cgroups
        if node_munge; then
            # the node's own munged, seen by its slurmd (and its jobs) at the cluster's socket path
            mkdir -p "$dir/munge-node$i"
            start_munged "$dir/munge-node$i/munge.socket" "munged-node$i"
            nsenter --net="/run/netns/$(netns "$i")" unshare --uts --mount sh -c \
                'hostname "$1" && mount --bind "$2" /etc/hosts && mount --bind "$4" "$5" &&
                 exec slurmd -N "$1" -f "$3"' \
                sh "node$i" "$dir/hosts" "$SLURM_CONF" "$dir/munge-node$i/munge.socket" "$dir/munge.socket"
        else
            nsenter --net="/run/netns/$(netns "$i")" unshare --uts --mount sh -c \
                'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -N "$1" -f "$3"' \
                sh "node$i" "$dir/hosts" "$SLURM_CONF"
        fi
    done
}

start() {
    install_packages
    detect_slurm
    if [ -s "$dir/slurmctld.pid" ] && kill -0 "$(cat "$dir/slurmctld.pid")" 2>/dev/null; then
        echo "a cluster from $dir is already running" >&2
        exit 1
    fi
    mkdir -p "$dir"
    chmod 700 "$dir"
    [ "$nodes" -eq 0 ] || make_network
    write_config
    [ -s "$dir/munge.key" ] || { dd if=/dev/urandom of="$dir/munge.key" bs=1024 count=1 status=none; }
    chmod 400 "$dir/munge.key"
    start_munged "$dir/munge.socket" munged
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$SLURM_CONF"
    start_slurmd
    # the nodes report in within seconds; the cluster is usable once sinfo shows them all idle
    for _ in $(seq 1 120); do
        if [ "$(sinfo -h -N -p local -o %T 2>/dev/null | grep -cx idle)" -ge "$((nodes > 0 ? nodes : 1))" ]; then
            echo "SLURM is up: export SLURM_CONF=$SLURM_CONF"
            return 0
        fi
        sleep 0.5
    done
    echo "error: the nodes did not become idle within 60 s; logs in $dir" >&2
    sinfo >&2 || true
    exit 1
}

stop() {
    local pids
    pids=$(daemon_pids)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill $pids 2>/dev/null || true
        for _ in $(seq 1 40); do
            # shellcheck disable=SC2086
            kill -0 $pids 2>/dev/null || break
            sleep 0.25
        done
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
        rm -f "$dir"/*.pid
    else
        echo "no daemons recorded in $dir" >&2
    fi
    remove_network
}

case "$action" in
start) start ;;
stop) stop ;;
status) SLURM_CONF="$dir/slurm.conf" sinfo ;;
*) usage ;;
esac
