#!/usr/bin/env bash
# A two-node Slurm cluster on this host for the multi-node tests, each node with its own network address:
#   rrnode1  10.77.0.1 on bridge rrbr0, in this host's network (its Docker engine is this host's: it has the images);
#   rrnode2  10.77.0.2 in network namespace rrn2, joined to rrbr0 by a veth pair, with its own Docker engine
#            (empty data root: it gets images only through slurm.image_cache).
# (nsenter, not `ip netns exec`, which remounts /sys and hides the cgroups from dockerd.) Each slurmd runs in its own UTS namespace (its own hostname), so a job sees two real hosts. Files are shared, as
# on a cluster with shared storage. Own slurmctld (cluster rr2, ports 6827/6828) and state under
# ${RUNNER_SLURM2_DIR:-/tmp/rr-slurm2}; clients use it with SLURM_CONF=$dir/slurm.conf. Needs root. Idempotent.
# `--down` stops the daemons and removes the namespace and the bridge.
set -euo pipefail
dir="${RUNNER_SLURM2_DIR:-/tmp/rr-slurm2}"
net=10.77.0
conf="$dir/slurm.conf"
dock2="/run/rr-docker2"

down() {
  local pids=()
  for f in "$dir"/slurmd-rrnode1.pid "$dir"/slurmd-rrnode2.pid "$dir"/slurmctld.pid "$dock2.pid"; do
    pid="$(cat "$f" 2>/dev/null || true)"  # read once: a daemon removes its pid file as it exits
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then pids+=("$pid"); fi
  done
  for _ in $(seq 1 30); do  # a namespace lives on while a process is in it (dockerd stops in a few seconds)
    alive_any=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive_any=1; done
    [ "$alive_any" = 0 ] && break
    sleep 1
  done
  ip netns del rrn2 2>/dev/null || true
  ip link del rrv2 2>/dev/null || true
  ip link del rrbr0 2>/dev/null || true
}
if [ "${1:-}" = "--down" ]; then down; exit 0; fi
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

if [ "$(id -u)" != 0 ]; then echo "the two-node test cluster needs root (network namespaces)" >&2; exit 1; fi
command -v slurmctld >/dev/null || { echo "run .ci/setup-slurm.sh first (Slurm and munge)" >&2; exit 1; }
for tool in ip:iproute2 iptables:iptables nsenter:util-linux; do
  command -v "${tool%%:*}" >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${tool#*:}" >/dev/null
done
mkdir -p "$dir"/{state,log} "$dir/docker2"

# The network: a bridge on the host, a namespace for the second node.
if ! ip link show rrbr0 >/dev/null 2>&1; then
  ip link add rrbr0 type bridge
  ip addr add "$net.1/24" dev rrbr0
  ip link set rrbr0 up
fi
if ! ip netns list | grep -qw rrn2 || ! nsenter --net=/run/netns/rrn2 ip link show eth0 >/dev/null 2>&1; then
  ip netns del rrn2 2>/dev/null || true
  ip link del rrv2 2>/dev/null || true  # left by a namespace that outlived its name
  ip netns add rrn2
  ip link add rrv2 type veth peer name eth0 netns rrn2
  ip link set rrv2 master rrbr0 up
  ip netns exec rrn2 ip addr add "$net.2/24" dev eth0
  ip netns exec rrn2 ip link set eth0 up
  ip netns exec rrn2 ip link set lo up
fi
# Bridged frames pass the host's FORWARD chain when br_netfilter is loaded (Docker loads it, with policy DROP).
iptables -C FORWARD -i rrbr0 -o rrbr0 -j ACCEPT 2>/dev/null || iptables -I FORWARD -i rrbr0 -o rrbr0 -j ACCEPT
for n in 1 2; do
  grep -q "^$net.$n rrnode$n\$" /etc/hosts || echo "$net.$n rrnode$n" >> /etc/hosts
done

mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 / 2 - 512 ))"
cat > "$dir/taskprolog.sh" <<PROLOG
#!/bin/sh
# The second node's tasks talk to its own Docker engine (a real second machine has its own).
[ "\$(hostname)" = rrnode2 ] && echo "export DOCKER_HOST=unix://$dock2.sock"
exit 0
PROLOG
chmod +x "$dir/taskprolog.sh"
cp "$(dirname "$0")/slurm-common.conf" "$dir/common.conf"
cat > "$conf.tmp" <<CONF
Include $dir/common.conf
ClusterName=rr2
SlurmctldHost=$(hostname -s)($net.1)
SlurmctldPort=6827
SlurmdPort=6828
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd-%n.pid
SlurmdSpoolDir=$dir/spool-%n
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd-%n.log
TaskProlog=$dir/taskprolog.sh
NodeName=rrnode1 NodeAddr=$net.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
NodeName=rrnode2 NodeAddr=$net.2 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=two Nodes=rrnode1,rrnode2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
mv "$conf.tmp" "$conf"
pgrep -x munged >/dev/null || munged --force

if ! alive "$dock2.pid"; then
  echo "starting rrnode2's Docker engine (log: $dir/log/dockerd2.log)"
  # No bridge or iptables of its own: multi-node steps use the node's (host) network.
  (setsid nsenter --net=/run/netns/rrn2 unshare --uts sh -c "hostname rrnode2; exec dockerd -H unix://$dock2.sock \
     --data-root $dir/docker2 --exec-root $dock2 --pidfile $dock2.pid --bridge=none --iptables=false \
     --ip6tables=false" >"$dir/log/dockerd2.log" 2>&1 &)
  for _ in $(seq 1 60); do DOCKER_HOST="unix://$dock2.sock" docker info >/dev/null 2>&1 && break; sleep 1; done
  DOCKER_HOST="unix://$dock2.sock" docker info >/dev/null 2>&1 || { tail -20 "$dir/log/dockerd2.log" >&2; exit 1; }
fi
alive "$dir/slurmctld.pid" || slurmctld -f "$conf"
alive "$dir/slurmd-rrnode1.pid" || unshare --uts sh -c "hostname rrnode1; exec slurmd -f $conf"
alive "$dir/slurmd-rrnode2.pid" || nsenter --net=/run/netns/rrn2 unshare --uts sh -c "hostname rrnode2; exec slurmd -f $conf"
export SLURM_CONF="$conf"
for _ in $(seq 1 30); do
  if [ "$(sinfo -h -o %T 2>/dev/null | grep -cE 'idle|mixed|allocated')" = 1 ] \
     && [ "$(sinfo -h -N -o '%N %T' | grep -cE 'idle|mixed|allocated')" = 2 ]; then
    echo "slurm (2 nodes): rrnode1 $net.1, rrnode2 $net.2 up; SLURM_CONF=$conf"; exit 0
  fi
  scontrol update nodename=rrnode1,rrnode2 state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "the two-node Slurm did not come up; logs in $dir/log" >&2
sinfo -N >&2 || true
exit 1
