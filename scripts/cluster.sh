#!/usr/bin/env bash
# make cluster / make cluster-stop: a one-node SLURM cluster (munge, slurmctld, slurmd) and a
# PostgreSQL server with a database for optuna, on this Debian machine, as root. For trying the
# cluster path and for the tests (tests/test_cluster.py): not a production set-up.
#
#   scripts/cluster.sh start   install what is missing (apt), start what is not running, print
#                              the partition and the storage URL; safe to run again
#   scripts/cluster.sh stop    stop what `start` started (a server that ran before is left)
#
# Facts that cost time to find: without systemd's cgroups, SLURM needs
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none; the node's NodeHostname must be
# `hostname`'s; munged wants /run/munge owned by munge. A requeued job waits AuthInfo's
# cred_expire (120 s by default) before SLURM starts it again: 5 s here (measured in
# docs/cluster.md), so a requeue test takes seconds, not minutes.
set -euo pipefail

STATE=${CLUSTER_STATE:-/var/lib/fmnist-lab-cluster}   # SLURM's state, logs, what we started
PARTITION=${CLUSTER_PARTITION:-local}
# CPUs the node offers, whatever the machine has (SlurmdParameters=config_overrides): the
# tests' jobs run side by side instead of queueing behind each other on a 2-core machine.
CPUS=${CLUSTER_CPUS:-8}
DB_USER=fmnist
DB_PASSWORD=fmnist   # the server listens on localhost only
DB_NAME=optuna
STORAGE_URL="postgresql://$DB_USER:$DB_PASSWORD@localhost:5432/$DB_NAME"
SLURM_CONF=/etc/slurm/slurm.conf
MARK="# written by fmnist-lab's scripts/cluster.sh (make cluster)"

say() { echo "cluster: $*"; }
die() { echo "error: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------- install

install_missing() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
  [ ${#missing[@]} -eq 0 ] && return
  command -v apt-get >/dev/null || die "make cluster installs ${missing[*]} with apt-get, which this machine lacks"
  say "installing ${missing[*]} (apt)"
  # A package's postinst may try to start its service: we start them ourselves, below.
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
    > "$STATE/apt.log" 2>&1 || die "apt-get could not install ${missing[*]}: see $STATE/apt.log"
}

# -------------------------------------------------------------------------------- munge

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || { mungekey --create --keyfile=/etc/munge/munge.key; chown munge:munge /etc/munge/munge.key; }
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return; fi
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/started.munged"
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
  die "munged did not start (see /var/log/munge/munged.log)"
}

# -------------------------------------------------------------------------------- SLURM

slurm_conf() {
  local host mem
  host=$(hostname)
  # The node's memory as slurmd counts it, less 1 GiB for the system.
  mem=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  cat <<EOF
$MARK
ClusterName=fmnist-lab
SlurmctldHost=$host
SlurmUser=slurm
AuthType=auth/munge
# A requeued job starts again after cred_expire seconds (SLURM's default: 120).
AuthInfo=cred_expire=5
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No accounting (no slurmdbd): sacct answers with an error; the project's launcher reads job
# states from squeue instead (hydra_plugins/fmnist_lab_launchers).
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
# Memory is a consumable resource: a job asking more than the node has is refused at submission.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
# The scheduler's passes every 2 s (default 60 and 30): a requeued job starts again within
# seconds of its begin time.
SchedulerParameters=sched_interval=2,bf_interval=2
# SIGTERM to SIGKILL at a time limit, scancel or scontrol requeue (default 30 s).
KillWait=5
# Finished jobs stay visible to squeue this long (what the launcher reads their end from).
MinJobAge=600
SlurmdParameters=config_overrides
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/slurmctld.log
SlurmdLogFile=$STATE/slurmd.log
NodeName=$host NodeHostname=$host CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_slurm() {
  local wanted changed=0
  wanted=$(slurm_conf)
  if [ -f "$SLURM_CONF" ] && ! head -1 "$SLURM_CONF" | grep -qF "$MARK"; then
    die "$SLURM_CONF exists and was not written by make cluster: this machine has a SLURM of its own; use it (hydra.launcher.partition=...)"
  fi
  if [ "$(cat "$SLURM_CONF" 2>/dev/null)" != "$wanted" ]; then
    install -d /etc/slurm
    printf '%s\n' "$wanted" > "$SLURM_CONF"
    changed=1
  fi
  install -d -o slurm -g slurm "$STATE/slurmctld"
  install -d "$STATE/slurmd"
  touch "$STATE/slurmctld.log" && chown slurm:slurm "$STATE/slurmctld.log"
  if [ $changed = 1 ]; then  # a new configuration: restart what runs on the old one
    stop_daemon slurmd; stop_daemon slurmctld
  fi
  running "$STATE/slurmctld.pid" || { slurmctld; touch "$STATE/started.slurmctld"; }
  running "$STATE/slurmd.pid" || { slurmd; touch "$STATE/started.slurmd"; }
  # Up when the node takes jobs: idle or busy, not down or still unknown.
  for _ in $(seq 150); do
    case $(sinfo -h -n "$(hostname)" -o %T 2>/dev/null) in
      idle*|mixed*|allocated*|completing*) return ;;
      down*|drain*) scontrol update nodename="$(hostname)" state=resume 2>/dev/null || true ;;
    esac
    sleep 0.2
  done
  die "SLURM did not come up (see $STATE/slurmctld.log and $STATE/slurmd.log)"
}

stop_daemon() {  # stop_daemon NAME: SIGTERM, then wait for its pid to go
  local pidfile="$STATE/$1.pid"
  running "$pidfile" || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}

# --------------------------------------------------------------------------- PostgreSQL

pg_version() { ls /usr/lib/postgresql | sort -n | tail -1; }

start_postgres() {
  local version; version=$(pg_version)
  pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main"' | grep -q . \
    || pg_createcluster "$version" main >/dev/null
  if ! pg_lsclusters -h | awk -v v="$version" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    pg_ctlcluster "$version" main start
    touch "$STATE/started.postgres"
  fi
  psql_do() { runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qtAc "$1"; }
  [ "$(psql_do "SELECT 1 FROM pg_roles WHERE rolname = '$DB_USER'")" = 1 ] \
    || psql_do "CREATE ROLE $DB_USER LOGIN PASSWORD '$DB_PASSWORD' CREATEDB"
  [ "$(psql_do "SELECT 1 FROM pg_database WHERE datname = '$DB_NAME'")" = 1 ] \
    || psql_do "CREATE DATABASE $DB_NAME OWNER $DB_USER"
}

stop_postgres() {
  [ -f "$STATE/started.postgres" ] || return 0
  pg_ctlcluster "$(pg_version)" main stop 2>/dev/null || true
  rm -f "$STATE/started.postgres"
}

# ------------------------------------------------------------------------------ commands

start() {
  [ "$(id -u)" = 0 ] || die "make cluster starts system services: run it as root"
  install -d "$STATE"
  install_missing
  start_munge
  start_slurm
  start_postgres
  say "SLURM partition '$PARTITION' on node $(hostname) ($CPUS CPUs): hydra/launcher=slurm_cpu hydra.launcher.partition=$PARTITION"
  say "optuna storage: hydra.sweeper.storage=$STORAGE_URL"
}

stop() {
  [ "$(id -u)" = 0 ] || die "make cluster-stop stops system services: run it as root"
  if [ -f "$STATE/started.slurmd" ] || [ -f "$STATE/started.slurmctld" ]; then
    scancel --state=RUNNING --state=PENDING --full 2>/dev/null || true
  fi
  for name in slurmd slurmctld; do
    [ -f "$STATE/started.$name" ] && stop_daemon "$name" && rm -f "$STATE/started.$name"
  done
  if [ -f "$STATE/started.munged" ]; then
    kill "$(cat /run/munge/munged.pid 2>/dev/null)" 2>/dev/null || true
    rm -f "$STATE/started.munged"
  fi
  stop_postgres
  say "stopped"
}

case ${1:-} in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
