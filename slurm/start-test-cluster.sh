#!/usr/bin/env bash
# Start a real single-node Slurm on loopback, as root, without systemd:
# munge, MariaDB + slurmdbd (so that sacct answers), slurmctld and slurmd.
#
#   eval "$(slurm/start-test-cluster.sh [STATE_DIR])"     # exports SLURM_CONF and ASIARCH_SLURM_STATE
#   slurm/stop-test-cluster.sh "$ASIARCH_SLURM_STATE"
#
# Needs Debian's slurm-wlm, slurmdbd, munge and mariadb-server (slurm/install-test-cluster.sh).
# All state lives in STATE_DIR (a new temporary directory by default); every daemon's PID is
# written there so that the stop script can end them. Progress goes to stderr, the exports
# to stdout.
set -euo pipefail

state="${1:-$(mktemp -d /tmp/asiarch-slurm.XXXXXX)}"
mkdir -p "$state"
state="$(cd "$state" && pwd)"
node="$(hostname -s)"
cpus="${ASIARCH_SLURM_CPUS:-8}"          # the node may declare more CPUs than exist (config_overrides)
mem_mb="${ASIARCH_SLURM_MEM_MB:-16000}"
log() { echo "start-test-cluster: $*" >&2; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t="$1" what="$2"; shift 2
  for _ in $(seq 1 $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what"; return 1
}

for bin in munged mariadbd slurmdbd slurmctld slurmd sacctmgr; do
  command -v "$bin" >/dev/null || { log "$bin not found: run slurm/install-test-cluster.sh"; exit 3; }
done

# --- munge: the key from the package, a socket directory owned by munge -----------------
mkdir -p /run/munge /etc/munge
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
fi
if ! munge -n >/dev/null 2>&1; then
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1
  wait_for 10 munged munge -n
fi
cp /run/munge/munged.pid "$state/munged.pid" 2>/dev/null || true

# --- MariaDB: data, socket and pid in STATE_DIR, owned by mysql ---------------------------
db="$state/mysql"
sock="$state/mysqld.sock"
mkdir -p "$db"
chown -R mysql:mysql "$db"
chown mysql:mysql "$state"
chmod 0755 "$state"
if [ ! -d "$db/mysql" ]; then
  mariadb-install-db --user=mysql --datadir="$db" --skip-test-db >"$state/mariadb-install.log" 2>&1
fi
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if ! alive "$state/mysqld.pid"; then
  runuser -u mysql -- mariadbd --datadir="$db" --socket="$sock" --pid-file="$state/mysqld.pid" \
    --skip-networking=0 --bind-address=127.0.0.1 --port="${ASIARCH_SLURM_DB_PORT:-33061}" \
    --log-error="$state/mysqld.log" </dev/null >/dev/null 2>&1 &
fi
wait_for 60 mariadb mariadb --socket="$sock" -uroot -e "select 1"
mariadb --socket="$sock" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
SQL

# --- configs -------------------------------------------------------------------------------
mkdir -p "$state/ctld" "$state/spool" "$state/logs"
cat >"$state/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=${ASIARCH_SLURM_DBD_PORT:-16819}
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=${ASIARCH_SLURM_DB_PORT:-33061}
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$state/slurmdbd.pid
LogFile=$state/logs/slurmdbd.log
EOF
chmod 0600 "$state/slurmdbd.conf"

cat >"$state/slurm.conf" <<EOF
ClusterName=asiarch
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
SlurmctldPort=${ASIARCH_SLURM_CTLD_PORT:-16817}
SlurmdPort=${ASIARCH_SLURM_D_PORT:-16818}
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/logs/slurmctld.log
SlurmdLogFile=$state/logs/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=1,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=${ASIARCH_SLURM_DBD_PORT:-16819}
JobCompType=jobcomp/none
MinJobAge=300
DefMemPerCPU=1000
# seconds from a job's TERM (scancel, requeue, preemption, time limit) to its KILL: Slurm's default,
# as on real clusters. A requeued 2-rank job spends them finishing its step and checkpointing: 0.9-2.4 s
# measured here with the 2 cores loaded, too close to the 5 s this was for a machine busier still
KillWait=30
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
export SLURM_CONF="$state/slurm.conf"

# --- daemons -------------------------------------------------------------------------------
# daemons get no terminal and no inherited pipes: a caller reading our output must see EOF
alive "$state/slurmdbd.pid" || slurmdbd </dev/null >/dev/null 2>&1  # reads slurmdbd.conf from the directory of $SLURM_CONF
wait_for 30 slurmdbd sacctmgr -i list cluster
sacctmgr -i add cluster asiarch >/dev/null 2>&1 || true
alive "$state/slurmctld.pid" || slurmctld -f "$state/slurm.conf" </dev/null >/dev/null 2>&1
wait_for 30 slurmctld scontrol ping
alive "$state/slurmd.pid" || slurmd -f "$state/slurm.conf" -N "$node" </dev/null >/dev/null 2>&1
node_ready() { sinfo -h -N -o '%T' | grep -Eq '^(idle|mixed|allocated)'; }
wait_for 60 "node $node to be idle" node_ready
log "Slurm is up (state in $state)"
echo "export SLURM_CONF='$state/slurm.conf'"
echo "export ASIARCH_SLURM_STATE='$state'"
