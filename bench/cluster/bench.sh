#!/bin/bash
# The cluster benchmarks, on a single-node cluster of their own (state dir,
# bridge, subnet, cgroup and ports that neither `make up` nor the tests
# use; taken down at the end):
#   - idle memory: the sum of RSS (and PSS) of every process of the
#     cluster, 30 s after `flynn-host up`, every system app running;
#   - git push of the Go and Node.js samples, from `git push` to the new
#     version served through the router: cold (first push of the app) and
#     warm (one line changed), with the push's own timings line; and a
#     second Go app's first push, once the platform has built Go;
#   - flynn scale web=20 on the Go sample, until 20 different jobs have
#     answered through the router.
# Prints "name value unit" lines on stdout (bench/run.sh tabulates them)
# and progress on stderr. Run as root from anywhere in the repository,
# after `make build`.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/bin
[ -x "$bin/flynn-host" ] && [ -x "$bin/flynn" ] || { echo "bench/cluster: run make build first" >&2; exit 1; }

work=$(mktemp -d /tmp/flynn-bench.XXXXXX)
state=$work/state
cgroup=flynn-bench
HTTP=61080
export FLYNNRC=$work/flynnrc HOME=$work/home PATH=$bin:$PATH
export GIT_AUTHOR_NAME=bench GIT_AUTHOR_EMAIL=bench@example.com GIT_COMMITTER_NAME=bench GIT_COMMITTER_EMAIL=bench@example.com
mkdir -p "$HOME"
cleanup() {
	"$bin/flynn-host" down --state-dir "$state" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN {printf "%.2f", b - a}'; }
log() { echo "bench/cluster: $*" >&2; }

# Ports above the kernel's ephemeral range (net.ipv4.ip_local_port_range),
# which the tests' ports (10000-29999) and make up's do not use.
log "flynn-host up (state $state)"
start=$(now)
"$bin/flynn-host" up --state-dir "$state" --listen-ip 127.0.0.1 \
	--bridge flynnbench0 --subnet 100.120.0.0/24 --cgroup-parent "$cgroup" \
	--port-range 61100-61399 --etcd-client-port 61001 --etcd-peer-port 61002 \
	--discoverd-port 61003 --dns-port -1 --host-port 61004 \
	--domain bench.flynn.localhost --http-port $HTTP --https-port 61443 \
	--router-api-port 61005 --blobstore-port 61006 --logaggregator-port 61007 \
	--git-http-port 61008 --git-ssh-port 61009 \
	--postgres-port 3490 --mysql-port 3491 --redis-port 3492 \
	--cluster-name bench --flynn "$bin/flynn" >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
echo "up $(since "$start") s"

log "idle memory (after 30 s)"
sleep 30
"$root/bench/cluster/idle-memory.sh" "$state" "$cgroup" >"$work/mem" 2>&1
echo "idle_rss $(awk '/sum of RSS/ {print $4}' "$work/mem") MiB"
echo "idle_pss $(awk '/sum of PSS/ {print $4}' "$work/mem") MiB"
echo "idle_processes $(awk '/processes/ {print $2}' "$work/mem") processes"

get() { curl -s -m 5 "http://$1.bench.flynn.localhost:$HTTP/" || true; }

# push NAME SAMPLE KIND WANT: push the app's repo and wait for WANT in its
# answer; prints "push_<name>_<kind> seconds" and the push's timings line.
push() {
	local name=$1 kind=$2 want=$3 start out
	start=$(now)
	out=$(cd "$work/$name" && git push flynn main 2>&1) || { echo "$out" >&2; exit 1; }
	until get "$name" | grep -q "$want"; do
		if awk -v s="$(since "$start")" 'BEGIN {exit !(s > 300)}'; then
			log "$name did not serve $want within 300 s"
			exit 1
		fi
		sleep 0.05
	done
	echo "push_${name}_$kind $(since "$start") s"
	echo "$out" | grep -E "remote: -----> Done in" | sed "s/^remote: -----> /push_${name}_${kind}_timings /" || true
}

for sample in go nodejs; do
	name=bench$sample
	cp -r "$root/test/apps/$sample" "$work/$name"
	(cd "$work/$name" && git init -q -b main && git add -A && git commit -qm sample && flynn create "$name" >/dev/null)
	log "push $name (cold)"
	push "$name" cold "hello"
	# One line changed (the greeting): the warm build reuses the app's
	# build cache; the push counts until the new greeting is served.
	(cd "$work/$name" && for f in main.go server.js; do if [ -f "$f" ]; then sed -i 's/hello from the \(go\|node\) app/hello from the \1 app v2/' "$f"; fi; done && git commit -qam change)
	log "push $name (warm)"
	push "$name" warm "app v2"
done

# Another Go app's first push, once the platform has built Go 1.22.12 and
# its standard library (gitreceive's job after benchgo's first push): it
# restores them instead of fetching and compiling.
log "wait for the platform's build of Go"
start=$(now)
until flynn -a gitreceive log 2>/dev/null | grep -q "made the shared build of Go"; do
	if awk -v s="$(since "$start")" 'BEGIN {exit !(s > 300)}'; then
		log "gitreceive made no shared build of Go within 300 s"
		exit 1
	fi
	sleep 1
done
cp -r "$root/test/apps/go" "$work/benchgotwo"
(cd "$work/benchgotwo" && git init -q -b main && git add -A && git commit -qm sample && flynn create benchgotwo >/dev/null)
log "push benchgotwo (cold, Go built by the platform)"
push benchgotwo cold "hello"

log "scale web=20"
start=$(now)
flynn -a benchgo scale web=20 >/dev/null
declare -A seen=()
while [ "${#seen[@]}" -lt 20 ]; do
	job=$(get benchgo | awk -F= '/^job=/ {print $2}')
	[ -n "$job" ] && seen[$job]=1
	if awk -v s="$(since "$start")" 'BEGIN {exit !(s > 300)}'; then
		log "only ${#seen[@]} of 20 jobs answered within 300 s"
		exit 1
	fi
done
echo "scale20 $(since "$start") s"
