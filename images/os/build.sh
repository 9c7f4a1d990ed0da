#!/usr/bin/env bash
# Build the local base OS image (Debian bookworm + Python 3.11) without any registry:
# debootstrap a minimal root file system, then `docker import` it. Cached twice: the image in the
# engine (skip everything), and the root file system tarball (skip debootstrap).
#   images/os/build.sh [TAG]      default TAG: robo-runner/os:bookworm
set -euo pipefail
tag="${1:-robo-runner/os:bookworm}"
mirror="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
cache="${ROBO_RUNNER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/robo-runner}"
tarball="$cache/bookworm-python-rootfs.tar"

if docker image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: present"
  exit 0
fi
if [ ! -s "$tarball" ]; then
  command -v debootstrap >/dev/null || { echo "debootstrap is missing: apt-get install -y debootstrap" >&2; exit 1; }
  [ "$(id -u)" = 0 ] || { echo "debootstrap needs root (or a prebuilt $tarball)" >&2; exit 1; }
  mkdir -p "$cache"
  root="$(mktemp -d "$cache/rootfs.XXXXXX")"
  trap 'rm -rf "$root"' EXIT
  echo "debootstrap bookworm (minbase + python3) from $mirror ..."
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror" \
    > "$cache/debootstrap.log" 2>&1 || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -cf "$tarball.tmp" . && mv "$tarball.tmp" "$tarball"
fi
docker import --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' "$tarball" "$tag" >/dev/null
echo "base image $tag: imported from $tarball"
