#!/usr/bin/env bash
# One-node SLURM cluster on localhost for saflex-bench's SLURM tests (Debian 12, root, no systemd, no cgroups).
#
# Usage:  .ci/slurm_up.sh STATE_DIR        (stop it with .ci/slurm_down.sh STATE_DIR)
#   env:  SLURM_ACCOUNTING=1   (default) mariadb + slurmdbd, so sacct/submitit see CANCELLED/FAILED/TIMEOUT
#         SLURM_CPUS=N          CPUs the node advertises (default: nproc)
#
# Starts munged, mariadbd, slurmdbd, slurmctld, slurmd, each in its foreground mode behind `setsid ... &`,
# so "$!" is the daemon's own PID; every PID is appended to STATE_DIR/pids and slurm_down.sh stops exactly
# those. Writes /etc/slurm/slurm.conf (+ slurmdbd.conf) with a marker line and refuses to overwrite a
# slurm.conf it did not write. Idempotent: if the daemons of STATE_DIR are alive it only reports.
#
# Partitions: debug (default, PriorityTier=1, PreemptMode=REQUEUE, GraceTime=30) and urgent (PriorityTier=10):
# a job in urgent that needs the node preempts (requeues) debug jobs, which first get their --signal
# (USR2 for submitit's Checkpointable) thanks to SlurmctldParameters=preempt_send_user_signal.
set -euo pipefail
STATE=${1:?usage: $0 STATE_DIR}
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)
ACCT=${SLURM_ACCOUNTING:-1}
NCPU=${SLURM_CPUS:-$(nproc)}
MEM_MB=$(( $(awk '/MemTotal/{print $2}' /proc/meminfo) / 1024 - 2048 ))
MARKER="# written by saflex-bench .ci/slurm_up.sh"
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.1f", b-a}'; }
t0=$(now)

[ "$(id -u)" = 0 ] || { echo "slurm_up.sh: must run as root (installs packages, starts daemons)" >&2; exit 1; }

# ---- already up? ----
if [ -s "$STATE/pids" ]; then
  alive=0; total=0
  while read -r name pid; do
    total=$((total + 1)); kill -0 "$pid" 2>/dev/null && alive=$((alive + 1))
  done < "$STATE/pids"
  if [ "$alive" = "$total" ] && sinfo -h >/dev/null 2>&1; then
    echo "slurm_up.sh: cluster of $STATE already running ($alive daemons)"; sinfo; exit 0
  fi
  echo "slurm_up.sh: $STATE/pids lists $total daemons, $alive alive; run .ci/slurm_down.sh $STATE first" >&2
  exit 1
fi

# ---- packages ----
export DEBIAN_FRONTEND=noninteractive
PKGS="slurmctld slurmd slurm-client munge"
[ "$ACCT" = 1 ] && PKGS="$PKGS slurmdbd mariadb-server"
missing=$(for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  # refresh the package lists only when they are missing or older than 10 h
  [ -n "$(find /var/lib/apt/lists -name '*_Packages*' -mmin -600 2>/dev/null | head -1)" ] || apt-get update -qq
  # "policy-rc.d denied execution" from postinst scripts is harmless: we start the daemons ourselves
  apt-get install -y -qq --no-install-recommends $missing > "$STATE/apt.log" 2>&1 \
    || { tail -20 "$STATE/apt.log" >&2; exit 1; }
fi
t_pkg=$(now)

if [ -f /etc/slurm/slurm.conf ] && ! grep -qF "$MARKER" /etc/slurm/slurm.conf; then
  echo "slurm_up.sh: /etc/slurm/slurm.conf exists and was not written by this script; refusing to overwrite" >&2
  exit 1
fi

mkdir -p "$STATE"/{spool/ctld,spool/d,log} /run/munge /etc/slurm
: > "$STATE/pids"
chown munge:munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then            # the munge postinst normally creates it
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  chown munge:munge /etc/munge/munge.key; chmod 0400 /etc/munge/munge.key
fi

wait_for() {  # wait_for SECONDS WHAT CMD...  (polls every 0.1 s)
  local n=$(( $1 * 10 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  echo "slurm_up.sh: $what did not come up; logs in $STATE/log" >&2; return 1
}

# ---- munge (authentication) ----
setsid setpriv --reuid=munge --regid=munge --init-groups /usr/sbin/munged -F \
  < /dev/null > "$STATE/log/munged.log" 2>&1 &
echo "munged $!" >> "$STATE/pids"
wait_for 10 munged sh -c 'munge -n | unmunge'

# ---- accounting: mariadb + slurmdbd ----
# Required for submitit: without it sacct fails, job states read UNKNOWN and result() of a cancelled job blocks.
ACCT_CONF="AccountingStorageType=accounting_storage/none"
if [ "$ACCT" = 1 ]; then
  mkdir -p "$STATE/mysql" /run/mysqld; chown mysql:mysql "$STATE/mysql" /run/mysqld
  [ -d "$STATE/mysql/mysql" ] || mariadb-install-db --user=mysql --datadir="$STATE/mysql" \
      --auth-root-authentication-method=socket --skip-test-db > "$STATE/log/mariadb-install.log" 2>&1
  # --log-error into a root-owned dir made mariadbd segfault; log to stdout with --console instead
  setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$STATE/mysql" \
      --socket=/run/mysqld/mysqld.sock --skip-networking --console \
      < /dev/null > "$STATE/log/mariadbd.log" 2>&1 &
  echo "mariadbd $!" >> "$STATE/pids"
  wait_for 20 mariadbd mariadb -uroot -e "select 1"
  # StorageHost=localhost + skip-networking: the client library uses the default unix socket
  mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmci';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
  cat > /etc/slurm/slurmdbd.conf <<CONF
$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StoragePort=3306
StorageUser=slurm
StoragePass=slurmci
StorageLoc=slurm_acct_db
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
DebugLevel=info
CONF
  chmod 600 /etc/slurm/slurmdbd.conf
  setsid /usr/sbin/slurmdbd -D < /dev/null > "$STATE/log/slurmdbd.out" 2>&1 &
  echo "slurmdbd $!" >> "$STATE/pids"
  wait_for 20 slurmdbd grep -q "slurmdbd version .* started" "$STATE/log/slurmdbd.log"
  # NB: never write an empty "AccountingStorageEnforce=" line (fatal for slurmctld)
  ACCT_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
fi

cat > /etc/slurm/slurm.conf <<CONF
$MARKER (state: $STATE)
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# a requeued job waits cred_expire+1 s before it may start again (default 120 s)
AuthInfo=cred_expire=10
MailProg=/bin/true
MpiDefault=none
# no cgroups in a container
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
$ACCT_CONF
JobCompType=jobcomp/none
SchedulerType=sched/backfill
# fast scheduling loops: pending / requeued jobs start within ~2 s (defaults 30 / 60 s)
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobRequeue=1
# preemption: jobs in 'debug' are requeued when 'urgent' needs their CPUs, after their --signal (USR2)
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmdSpoolDir=$STATE/spool/d
StateSaveLocation=$STATE/spool/ctld
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$NCPU RealMemory=$MEM_MB State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE GraceTime=30
PartitionName=urgent Nodes=localhost Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF

setsid /usr/sbin/slurmctld -D -i < /dev/null > "$STATE/log/slurmctld.out" 2>&1 &
echo "slurmctld $!" >> "$STATE/pids"
setsid /usr/sbin/slurmd -D -N localhost < /dev/null > "$STATE/log/slurmd.out" 2>&1 &
echo "slurmd $!" >> "$STATE/pids"
wait_for 30 "node localhost (idle)" sh -c 'sinfo -h -n localhost -o "%t" | grep -qE "^idle"'
t_end=$(now)
sinfo
echo "slurm_up.sh: packages $(elapsed "$t0" "$t_pkg") s, daemons $(elapsed "$t_pkg" "$t_end") s, total $(elapsed "$t0" "$t_end") s"
echo "slurm_up.sh: daemons (stop with .ci/slurm_down.sh $STATE):"; sed 's/^/  /' "$STATE/pids"
