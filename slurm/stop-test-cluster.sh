#!/usr/bin/env bash
# Stop the test cluster started by start-test-cluster.sh, by the PIDs in its state directory.
#   slurm/stop-test-cluster.sh STATE_DIR [--keep]     (--keep leaves the directory for post-mortems)
set -uo pipefail
state="${1:?usage: stop-test-cluster.sh STATE_DIR [--keep]}"
for name in slurmd slurmctld slurmdbd mysqld; do
  pidfile="$state/$name.pid"
  [ -s "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  kill "$pid" 2>/dev/null || continue
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
done
# munged is shared by the machine; it is left running (cheap, and other users may rely on it).
if [ "${2:-}" != "--keep" ]; then
  rm -rf "$state"
fi
