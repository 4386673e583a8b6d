#!/usr/bin/env bash
# Install what the local test cluster needs (Debian packages; run as root). Idempotent.
set -euo pipefail
need=()
for pkg in slurm-wlm slurmdbd munge mariadb-server; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "install-test-cluster: installing ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
