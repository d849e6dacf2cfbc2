#!/usr/bin/env bash
# Install (if needed) and start a real single-node SLURM (Debian slurm-wlm + munge) on this machine,
# for the launch tests. Needs root. Idempotent: a running cluster with this configuration is left
# alone; a changed configuration restarts the daemons.
# ProctrackType=proctrack/linuxproc and TaskPlugin=task/none: no cgroups needed in a container.
set -euo pipefail

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))

mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge
chmod 0700 /etc/munge /var/log/munge /var/lib/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! pgrep -x munged >/dev/null; then
    runuser -u munge -- /usr/sbin/munged
fi

mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
cat > /etc/slurm/slurm.conf.a2p <<CONF
ClusterName=a2plocal
SlurmctldHost=${host}
AuthType=auth/munge
AuthInfo=cred_expire=10
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
MpiDefault=none
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmdSpoolDir=/var/spool/slurmd
StateSaveLocation=/var/spool/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerParameters=sched_interval=1
MinJobAge=600
NodeName=${host} CPUs=${cpus} RealMemory=${mem_mb} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
CONF

if ! cmp -s /etc/slurm/slurm.conf.a2p /etc/slurm/slurm.conf; then
    # A new or changed configuration: (re)start the daemons with it.
    mv /etc/slurm/slurm.conf.a2p /etc/slurm/slurm.conf
    pkill -x slurmctld || true
    pkill -x slurmd || true
    while pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; do sleep 0.2; done
else
    rm -f /etc/slurm/slurm.conf.a2p
fi
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 1 30); do
    if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then
        exit 0
    fi
    sleep 1
done
echo "SLURM did not come up; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
