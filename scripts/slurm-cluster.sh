#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine (Debian's SLURM 22.05 + munge), for the SLURM test
# (tests/test_slurm.py) and for trying workflow/profiles/slurm without a site cluster.
#   scripts/slurm-cluster.sh start    # install if missing, write slurm.conf, start daemons, wait for the node
#   scripts/slurm-cluster.sh status   # show the node and the queue; exit 1 when the cluster is not up
#   scripts/slurm-cluster.sh stop     # stop the daemons by their pid files
# Needs root (apt-get, daemons). No systemd: the daemons are started by hand. Facts and pitfalls behind
# these choices: ../shared/notes/slurm-single-node.md (no accounting database, so the profile polls with
# squeue; MinJobAge keeps finished jobs visible to `squeue --states=all` for 5 minutes).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"  # the daemons live in sbin, which a non-root PATH may lack

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
STATE=/var/lib/slurm
LOGS=/var/log/slurm
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
MUNGE_PID=/run/munge/munged.pid
NODE=localhost
WAIT_S=${SLURM_CLUSTER_WAIT_S:-60}
MEM_MARGIN_MB=512   # claiming more memory than slurmd measures drains the node

die() { echo "slurm-cluster: $*" >&2; exit 1; }
say() { echo "slurm-cluster: $*"; }

as_root() {
    if [[ $EUID -eq 0 ]]; then "$@"
    elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo "$@"
    else die "needs root (or passwordless sudo) to run: $*"; fi
}

alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo --noheader --nodes="$NODE" --format=%T 2>/dev/null | head -n1; }

install_packages() {
    local pkgs=(munge slurmctld slurmd slurm-client)
    if command -v munged >/dev/null && command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    say "installing ${pkgs[*]}"
    # apt-get update only when the package lists are missing or stale enough that the install fails
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" </dev/null; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" </dev/null
    fi
}

write_conf() {
    # The node line comes from what slurmd itself measures (CPUs, sockets, cores, threads, memory).
    local hw cpus boards sockets cores threads mem
    hw=$(slurmd -C | head -n1)
    field() { sed -n "s/.*\b$1=\([0-9]\+\).*/\1/p" <<<"$hw"; }
    cpus=$(field CPUs); boards=$(field Boards); sockets=$(field SocketsPerBoard)
    cores=$(field CoresPerSocket); threads=$(field ThreadsPerCore); mem=$(field RealMemory)
    [[ -n $cpus && -n $mem ]] || die "could not parse 'slurmd -C': $hw"
    mem=$((mem > 2 * MEM_MARGIN_MB ? mem - MEM_MARGIN_MB : mem))
    as_root mkdir -p "$CONF_DIR" "$STATE/slurmctld" "$STATE/slurmd" "$LOGS"
    local tmp
    tmp=$(mktemp)
    cat >"$tmp" <<EOF
# Written by scripts/slurm-cluster.sh: one node on localhost, no accounting database, no cgroups.
ClusterName=lens-local
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# jobs that ask for no memory get 1 GB per CPU, not the whole node (which would serialise them)
DefMemPerCPU=1024
ReturnToService=2
MinJobAge=300
KillWait=10
MailProg=/bin/true
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
# a plain-text record of every finished job, kept after squeue forgets it (MinJobAge)
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus Boards=${boards:-1} SocketsPerBoard=${sockets:-1} CoresPerSocket=${cores:-$cpus} ThreadsPerCore=${threads:-1} RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    as_root install -m 0644 "$tmp" "$CONF"
    rm -f "$tmp"
    say "wrote $CONF (CPUs=$cpus RealMemory=$mem MB)"
}

start_munge() {
    alive "$MUNGE_PID" && return
    as_root rm -f "$MUNGE_PID"
    as_root mkdir -p /run/munge
    as_root chown munge:munge /run/munge
    if [[ ! -s /etc/munge/munge.key ]]; then  # the package normally creates it
        as_root mungekey --create --keyfile=/etc/munge/munge.key
        as_root chown munge:munge /etc/munge/munge.key
        as_root chmod 0400 /etc/munge/munge.key
    fi
    as_root runuser -u munge -- munged --origin=127.0.0.1
}

start() {
    install_packages
    if alive "$CTLD_PID" && alive "$SLURMD_PID" && alive "$MUNGE_PID" && [[ $(node_state) == idle* ]]; then
        say "already running: node $NODE $(node_state)"
        return
    fi
    alive "$CTLD_PID" || alive "$SLURMD_PID" || write_conf
    start_munge
    if ! alive "$CTLD_PID"; then as_root rm -f "$CTLD_PID"; as_root slurmctld; fi
    if ! alive "$SLURMD_PID"; then as_root rm -f "$SLURMD_PID"; as_root slurmd -N "$NODE"; fi
    local t=0 state
    while true; do
        state=$(node_state || true)
        [[ $state == idle* || $state == mixed* || $state == allocated* ]] && break
        if ((t >= WAIT_S)); then
            sinfo -R 2>&1 || true
            tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" 2>/dev/null || true
            die "node $NODE not idle after ${WAIT_S}s (state: '${state:-no answer from slurmctld}'); logs in $LOGS"
        fi
        sleep 1
        t=$((t + 1))
    done
    say "up: node $NODE $state after ${t}s"
}

stop_pidfile() {
    local name=$1 pidfile=$2 i
    if alive "$pidfile"; then
        local pid
        pid=$(cat "$pidfile")
        as_root kill "$pid"
        for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -0 "$pid" 2>/dev/null && die "$name (pid $pid) did not stop"
        say "stopped $name"
    fi
    as_root rm -f "$pidfile"  # a stale pid file would hide a dead daemon from the next start
}

stop() {
    stop_pidfile slurmd "$SLURMD_PID"
    stop_pidfile slurmctld "$CTLD_PID"
    stop_pidfile munged "$MUNGE_PID"
}

status() {
    local ok=0
    for p in "$MUNGE_PID" "$CTLD_PID" "$SLURMD_PID"; do
        if alive "$p"; then echo "running: $p ($(cat "$p"))"; else echo "not running: $p"; ok=1; fi
    done
    if ((ok == 0)); then sinfo --Node --long && squeue --states=all; fi
    return $ok
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 start|stop|status" ;;
esac
