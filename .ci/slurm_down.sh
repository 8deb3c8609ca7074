#!/usr/bin/env bash
# Stop exactly the daemons .ci/slurm_up.sh STATE_DIR started (PIDs in STATE_DIR/pids), newest first:
# slurmd, slurmctld, slurmdbd, mariadbd, munged. SIGTERM, then SIGKILL after 10 s. Kills nothing else.
# Usage: .ci/slurm_down.sh STATE_DIR   (idempotent; leaves STATE_DIR's logs for inspection)
set -uo pipefail
STATE=${1:?usage: $0 STATE_DIR}
[ -f "$STATE/pids" ] || { echo "slurm_down.sh: no $STATE/pids, nothing to stop"; exit 0; }
rc=0
# alive = exists and is not a zombie (a zombie has exited; its parent just has not reaped it yet)
alive() { kill -0 "$1" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]; }
while read -r name pid; do
  [ -n "${pid:-}" ] || continue
  # only signal a PID that still runs the daemon we started (guards against PID reuse)
  comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
  if [ -z "$comm" ]; then echo "$name ($pid) not running"; continue; fi
  case "$comm" in "$name"*|"${name:0:15}") ;; *) echo "$name ($pid) is now '$comm', not ours; left alone"; continue;; esac
  kill "$pid"
  for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
  if alive "$pid"; then
    kill -KILL "$pid"; sleep 0.2
    if alive "$pid"; then echo "$name ($pid) still alive"; rc=1; else echo "killed $name ($pid) (SIGKILL after 10 s)"; fi
  else
    echo "stopped $name ($pid)"
  fi
done < <(tac "$STATE/pids")
[ "$rc" = 0 ] && mv "$STATE/pids" "$STATE/pids.stopped"
exit $rc
