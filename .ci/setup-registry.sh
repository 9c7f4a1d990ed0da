#!/usr/bin/env bash
# A container registry on this machine for the tests of slurm.registry: Debian's docker-registry (the CNCF
# distribution), no auth, storage under ${RUNNER_REGISTRY_DIR:-/tmp/rr-registry}, on port 5000 (plain HTTP, which
# Docker allows for localhost). Idempotent.
set -euo pipefail
dir="${RUNNER_REGISTRY_DIR:-/tmp/rr-registry}"
port="${RUNNER_REGISTRY_PORT:-5000}"
up() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/v2/', timeout=2)" 2>/dev/null; }
up && { echo "registry: localhost:$port up"; exit 0; }
if ! command -v docker-registry >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >/dev/null 2>&1 \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry >/dev/null; }
fi
mkdir -p "$dir/data"
cat > "$dir/config.yml" <<CONF
version: 0.1
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
http:
  addr: :$port
CONF
(setsid docker-registry serve "$dir/config.yml" >"$dir/registry.log" 2>&1 &)
for _ in $(seq 1 30); do up && { echo "registry: localhost:$port up"; exit 0; }; sleep 1; done
tail -20 "$dir/registry.log" >&2
exit 1
