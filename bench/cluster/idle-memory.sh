#!/bin/bash
# Memory used by a running single-node cluster: the sum of RSS (and of PSS,
# which splits shared pages such as the flynn-host binary's between the
# processes mapping them) of the host daemon, job supervisors and every
# process in the jobs' cgroup.
#   bench/cluster/idle-memory.sh [STATE_DIR [CGROUP_PARENT]]
# Defaults: /var/lib/flynn and flynn, those of make up.
set -euo pipefail
state=${1:-/var/lib/flynn}
cgroup=${2:-flynn}
rss=0 pss=0 n=0
# This script's own processes (itself and its subshells) name the state
# dir on their command lines too: they are not the cluster's.
self=$(tr '\0' ' ' </proc/$$/cmdline)
for d in /proc/[0-9]*; do
	p=${d#/proc/}
	cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
	[[ $cmd == "$self" ]] && continue
	if grep -qE ":/$cgroup/" "$d/cgroup" 2>/dev/null || [[ $cmd == *"$state "* || $cmd == *"$state/"* ]]; then
		r=$(awk '/^Rss:/{print $2}' "$d/smaps_rollup" 2>/dev/null || echo 0)
		s=$(awk '/^Pss:/{print $2}' "$d/smaps_rollup" 2>/dev/null || echo 0)
		rss=$((rss + ${r:-0})) pss=$((pss + ${s:-0})) n=$((n + 1))
	fi
done
echo "processes: $n"
echo "sum of RSS: $((rss / 1024)) MiB"
echo "sum of PSS: $((pss / 1024)) MiB"
