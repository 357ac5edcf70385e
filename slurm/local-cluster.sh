#!/usr/bin/env bash
# A real SLURM cluster on one machine, for tests and for trying the sbatch scripts: one slurmctld and two
# slurmd daemons that act as two nodes (n1, n2), all on this host, with their own ports and state folder.
#
#   slurm/local-cluster.sh start [DIR]    install SLURM (Debian, root) if needed, start it, print how to use it
#   slurm/local-cluster.sh stop [DIR]     cancel all jobs, stop the daemons it started (by their pid files)
#   slurm/local-cluster.sh status [DIR]   sinfo and squeue
#   slurm/local-cluster.sh env [DIR]      the export line every SLURM command needs (eval "$(... env)")
#
# DIR (default $LOCAL_SLURM_DIR or /tmp/lightning-gan-slurm) holds slurm.conf, state, logs and pid files.
# Environment: LOCAL_SLURM_PORT (default 16817; uses PORT, PORT+1 and PORT+184..PORT+185),
# LOCAL_SLURM_CPUS (CPUs per node, default: all of this host's), LOCAL_SLURM_TIMEOUT (seconds to wait, default 60).
# Exit codes: 0 ok, 1 failure, 3 SLURM is not installed and cannot be installed here (no apt-get, not root).
set -euo pipefail

ACTION=${1:-}
DIR=${2:-${LOCAL_SLURM_DIR:-/tmp/lightning-gan-slurm}}
PORT=${LOCAL_SLURM_PORT:-16817}
CPUS=${LOCAL_SLURM_CPUS:-$(nproc)}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
NODES=(n1 n2)
CONF=$DIR/slurm.conf

die() { echo "local-cluster.sh: error: $*" >&2; exit "${2:-1}"; }
log() { echo "local-cluster.sh: $*" >&2; }

# Run with a deadline so that a stuck command never hangs a test.
t() { timeout "$TIMEOUT" "$@"; }

install_slurm() {
    # Debian packages, without recommends: 8 packages, seconds. Only root with apt-get can do it.
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "SLURM is not installed and there is no apt-get to install it" 3
    [ "$(id -u)" = 0 ] || die "SLURM is not installed and installing it needs root (uid $(id -u))" 3
    log "installing slurmctld slurmd slurm-client munge (apt-get)"
    # The packages' own services must not start: we run the daemons ourselves, on our own ports.
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 apt-get update -qq || die "apt-get update failed" 3
    timeout 600 apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
        || die "apt-get install slurmctld slurmd slurm-client munge failed" 3
}

start_munge() {
    # SLURM authenticates every message through munged. Reuse a running one; else start ours, as the munge
    # user (munged refuses root), and remember its pid so that `stop` ends only what we started.
    if t munge -n </dev/null 2>/dev/null | t unmunge >/dev/null 2>&1; then
        log "munged already running: reusing it"
        return
    fi
    [ -s /etc/munge/munge.key ] || { t mungekey --create >/dev/null 2>&1 || t create-munge-key -f; \
        chown munge:munge /etc/munge/munge.key; chmod 600 /etc/munge/munge.key; }
    mkdir -p /run/munge /var/log/munge /var/lib/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    chmod 755 /run/munge
    su -s /bin/sh munge -c "/usr/sbin/munged --pid-file=/run/munge/munged.pid" \
        || die "munged did not start (see /var/log/munge/munged.log)"
    cp /run/munge/munged.pid "$DIR/pids/munged.pid"
    for _ in $(seq "$TIMEOUT"); do
        if t munge -n </dev/null 2>/dev/null | t unmunge >/dev/null 2>&1; then return; fi
        sleep 1
    done
    die "munged started but 'munge -n | unmunge' still fails"
}

write_config() {
    local host
    host=$(hostname)
    mkdir -p "$DIR"/{state,log,pids,cgroup} "$DIR"/spool/{n1,n2}
    # slurmd refuses to start where no cgroup filesystem is mounted, even with proctrack/linuxproc and
    # task/none; pointing the v1 plugin at an empty folder satisfies it (cgroups are not used).
    cat >"$DIR/cgroup.conf" <<EOF
CgroupPlugin=cgroup/v1
CgroupMountpoint=$DIR/cgroup
CgroupAutomount=no
EOF
    cat >"$CONF" <<EOF
# Written by slurm/local-cluster.sh: two nodes on one host ($host).
ClusterName=lgan
SlurmctldHost=$host
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A requeued job waits cred_expire seconds (default 120) before it may start again: keep tests fast.
AuthInfo=cred_expire=10
SchedulerParameters=sched_interval=5,bf_interval=5
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/pids/slurmctld.pid
SlurmdPidFile=$DIR/pids/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
# Finished jobs stay visible to scontrol for 10 minutes (there is no accounting database for sacct).
MinJobAge=600
KillWait=10
# Both nodes are this host; slurmctld reaches them on their own ports, jobs reach each other on 127.0.0.1.
NodeName=n[1-2] NodeHostname=$host NodeAddr=127.0.0.1 Port=$((PORT + 184))-$((PORT + 185)) CPUs=$CPUS RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n[1-2] Default=YES OverSubscribe=YES MaxTime=INFINITE State=UP
EOF
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_idle() {
    # Both nodes answer (idle, or mixed/allocated if jobs are already running) within TIMEOUT seconds.
    local states=""
    for _ in $(seq "$TIMEOUT"); do
        states=$(SLURM_CONF=$CONF t sinfo -h -N -o "%N %t" 2>/dev/null | sort -u || true)
        if [ "$(grep -cE '^n[12] (idle|mix|alloc)$' <<<"$states")" = 2 ]; then return; fi
        sleep 1
    done
    die "nodes not idle after ${TIMEOUT}s: ${states:-no answer}; logs in $DIR/log"
}

start() {
    install_slurm
    if pid_alive "$DIR/pids/slurmctld.pid"; then
        log "already running in $DIR"
        usage_hint
        return
    fi
    mkdir -p "$DIR/pids"
    # Half-started daemons must not outlive a failed start.
    trap 'log "start failed; stopping what was started"; stop_daemons' EXIT
    start_munge
    write_config
    export SLURM_CONF=$CONF
    # -c: a clean start, without jobs of an earlier cluster in this folder.
    t slurmctld -f "$CONF" -c || die "slurmctld did not start; see $DIR/log/slurmctld.log"
    for node in "${NODES[@]}"; do
        t slurmd -f "$CONF" -N "$node" || die "slurmd -N $node did not start; see $DIR/log/slurmd-$node.log"
    done
    wait_idle
    trap - EXIT
    usage_hint
}

usage_hint() {
    cat <<EOF
Local SLURM cluster up: nodes n1 n2 (partition debug), state in $DIR.
  export SLURM_CONF=$CONF
  sinfo; sbatch --nodes=2 --ntasks-per-node=1 slurm/train.sbatch; squeue
  slurm/local-cluster.sh stop $DIR
EOF
}

stop_daemons() {
    # By pid files only: never by process name, which could hit another cluster or another user's jobs.
    local pidfile pid
    for pidfile in "$DIR"/pids/slurmd-*.pid "$DIR/pids/slurmctld.pid" "$DIR/pids/munged.pid"; do
        [ -s "$pidfile" ] || continue
        pid=$(cat "$pidfile")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
            if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
        fi
        rm -f "$pidfile"
    done
}

stop() {
    [ -d "$DIR" ] || { log "nothing to stop in $DIR"; return; }
    if pid_alive "$DIR/pids/slurmctld.pid"; then
        # Jobs first, so that slurmd ends their steps (slurmstepd and the tasks) before it stops.
        SLURM_CONF=$CONF t scancel --full --partition=debug 2>/dev/null || true
        for _ in $(seq 20); do
            [ -z "$(SLURM_CONF=$CONF t squeue -h -t RUNNING,COMPLETING -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
    stop_daemons
    log "stopped ($DIR)"
}

status() {
    export SLURM_CONF=$CONF
    t sinfo
    t squeue
}

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    env) echo "export SLURM_CONF=$CONF" ;;
    *) sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
