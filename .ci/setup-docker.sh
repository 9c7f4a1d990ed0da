#!/usr/bin/env bash
# Make a Docker engine answer on this machine: install it (Debian's docker.io) when missing, start dockerd
# when it is not running, and build the local base image. Needs root for the install and the daemon.
set -euo pipefail
if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null || ! command -v debootstrap >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
      echo "No Docker engine answers and this is not root. Install Docker (https://docs.docker.com/engine/install/)" >&2
      echo "and add yourself to the docker group, or use the local executor: runner run JOB --executor local" >&2
      exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io debootstrap >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    echo "starting dockerd (log: /tmp/dockerd.log)"
    (setsid dockerd >/tmp/dockerd.log 2>&1 &)
    for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
    docker info >/dev/null 2>&1 || { tail -20 /tmp/dockerd.log >&2; exit 1; }
  fi
fi
if ! command -v debootstrap >/dev/null && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi
"$(dirname "$0")/../images/os/build.sh"
