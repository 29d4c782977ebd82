#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for qtrain's tests and demos.
#
#   sudo slurm/local-cluster.sh up       install slurm-wlm + munge if missing, write the config,
#                                        start munged, slurmctld and slurmd, wait for the node
#   sudo slurm/local-cluster.sh down     stop the daemons
#   slurm/local-cluster.sh status        daemons and sinfo
#
# Idempotent: `up` on a running cluster only checks it. Run as root. The node offers
# QTRAIN_SLURM_CPUS task slots (default 16) whatever the real core count
# (SlurmdParameters=config_overrides), so a 2-core machine can run 1 server + several workers.
# Everything lives under /var/lib/qtrain-slurm; the config is /etc/slurm/slurm.conf.
set -euo pipefail

CPUS=${QTRAIN_SLURM_CPUS:-16}
STATE=/var/lib/qtrain-slurm
CONF=/etc/slurm/slurm.conf
HOST=$(hostname -s)

die() { echo "local-cluster: $*" >&2; exit 1; }
need_root() { [ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"; }
running() { pgrep -x "$1" >/dev/null; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null; then
    return
  fi
  command -v apt-get >/dev/null || die "slurm-wlm and munge are missing and this is not a Debian-like system"
  echo "local-cluster: installing slurm-wlm and munge"
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
}

write_config() {
  mkdir -p "$STATE/ctld" "$STATE/d" /etc/slurm
  local mem
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  cat > "$CONF.new" <<CONF
# Written by qtrain's slurm/local-cluster.sh: one node, for tests and demos.
ClusterName=qtrain-local
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
JobRequeue=1
KillWait=10
MinJobAge=600
InactiveLimit=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
  if ! cmp -s "$CONF.new" "$CONF" 2>/dev/null; then
    mv "$CONF.new" "$CONF"
    echo "local-cluster: wrote $CONF ($CPUS task slots on $HOST)"
    CONFIG_CHANGED=1
  else
    rm -f "$CONF.new"
  fi
}

start_munge() {
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    chown munge:munge /etc/munge/munge.key 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  running munged || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not come up"
}

wait_for_node() {
  for _ in $(seq 100); do
    state=$(sinfo -h -n "$HOST" -o %T 2>/dev/null | head -1 || true)
    case "$state" in
      idle*|mixed*|allocated*) echo "local-cluster: node $HOST is $state"; return ;;
      down*|drain*) scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.2
  done
  die "node $HOST did not become idle (state: ${state:-unknown}); see $STATE/slurmctld.log and $STATE/slurmd.log"
}

up() {
  need_root
  install_packages
  CONFIG_CHANGED=0
  write_config
  start_munge
  if [ "$CONFIG_CHANGED" = 1 ]; then
    pkill -x slurmd 2>/dev/null || true
    pkill -x slurmctld 2>/dev/null || true
    sleep 0.5
  fi
  running slurmctld || slurmctld -i
  running slurmd || slurmd
  wait_for_node
}

down() {
  need_root
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  echo "local-cluster: stopped"
}

status() {
  for d in munged slurmctld slurmd; do
    if running "$d"; then echo "$d: running"; else echo "$d: stopped"; fi
  done
  if running slurmctld; then sinfo; fi
}

case "${1:-status}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) die "usage: $0 up|down|status" ;;
esac
