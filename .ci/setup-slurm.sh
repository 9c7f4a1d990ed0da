#!/usr/bin/env bash
# A one-node Slurm cluster on this host for the slurm tests: munge + slurmctld + slurmd, state under
# ${RUNNER_SLURM_DIR:-/tmp/rr-slurm}, a generated slurm.conf (this host's name, CPUs and memory). Idempotent.
set -euo pipefail
dir="${RUNNER_SLURM_DIR:-/tmp/rr-slurm}"
if ! command -v slurmctld >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
mkdir -p "$dir"/{state,spool,log} /run/munge /etc/slurm
host="$(hostname -s)"
cpus="$(nproc)"
mem_mb="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))"
cp "$(dirname "$0")/slurm-common.conf" "$dir/common.conf"
cat > /etc/slurm/slurm.conf <<CONF
Include $dir/common.conf
ClusterName=rr
SlurmctldHost=$host
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmdSpoolDir=$dir/spool
StateSaveLocation=$dir/state
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown -R munge:munge /etc/munge /run/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || munged --force
# By pid file: the two-node test cluster (setup-slurm-2node.sh) runs its own slurmctld and slurmds beside these.
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
alive "$dir/slurmctld.pid" || slurmctld
alive "$dir/slurmd.pid" || slurmd
for _ in $(seq 1 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mixed|allocated'; then echo "slurm: $host up ($cpus CPUs)"; exit 0; fi
  scontrol update nodename="$host" state=resume >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; logs in $dir/log" >&2
sinfo >&2 || true
exit 1
