#!/usr/bin/env bash
# Router benchmark: wrk against our router, nginx and HAProxy, each proxying
# to the same two Go backends with keep-alive upstream connections, in one
# run. Prints req/s, p50 and p99 per proxy and the ratios to nginx.
#
# Usage: bench/router/bench.sh            (run from the repository root)
# Environment:
#   DURATION=10s CONNS=64 THREADS=2 REPEAT=1 BODY=2
#   PIN=1       wrk on CPU 0, proxies and backends on CPU 1 (as in
#               /work/shared/reference/perf-anchors.md); PIN=0 disables.
#   PORT_BASE=18080  loopback ports PORT_BASE..PORT_BASE+11 are used.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-1}
BODY=${BODY:-2}
PIN=${PIN:-1}
PORT_BASE=${PORT_BASE:-18080}

ROUTER_PORT=$PORT_BASE
BACKEND1=$((PORT_BASE + 1))
BACKEND2=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 10))
HAPROXY_PORT=$((PORT_BASE + 11))
API_PORT=$((PORT_BASE + 9))
HOST=bench.test

cd "$(dirname "$0")/../.."
work=$(mktemp -d /tmp/flt-routerbench.XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

# Install the peers if missing, without letting their services start.
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
if ((${#need[@]})); then
	echo "installing ${need[*]}" >&2
	created_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		created_policy=1
	fi
	apt_ok=0
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2 ||
		{ apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2; } || apt_ok=$?
	if ((created_policy)); then rm -f /usr/sbin/policy-rc.d; fi
	if ((apt_ok)); then echo "apt-get install failed" >&2; exit 1; fi
fi

pin_proxy=()
pin_wrk=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then
	pin_wrk=(taskset -c 0)
	pin_proxy=(taskset -c 1)
fi

echo "building the backend and the router" >&2
go build -o "$work/backend" ./bench/router/backend
go build -o "$work/routerbench" ./bench/router/routerbench

wait_port() {
	for _ in $(seq 100); do
		if (echo >/dev/tcp/127.0.0.1/"$1") 2>/dev/null; then return 0; fi
		sleep 0.1
	done
	echo "nothing listens on port $1" >&2
	exit 1
}

"${pin_proxy[@]}" "$work/backend" -addr 127.0.0.1:$BACKEND1 -size "$BODY" &
pids+=($!)
"${pin_proxy[@]}" "$work/backend" -addr 127.0.0.1:$BACKEND2 -size "$BODY" &
pids+=($!)
"${pin_proxy[@]}" "$work/routerbench" -addr 127.0.0.1:$ROUTER_PORT -api-addr 127.0.0.1:$API_PORT -domain $HOST \
	-backends 127.0.0.1:$BACKEND1,127.0.0.1:$BACKEND2 &
pids+=($!)
router_pid=$!

mkdir -p "$work/nginx"
cat >"$work/nginx.conf" <<CONF
worker_processes 1;
daemon off;
user root;
pid $work/nginx.pid;
error_log stderr warn;
events { worker_connections 4096; }
http {
	access_log off;
	client_body_temp_path $work/nginx/body;
	proxy_temp_path $work/nginx/proxy;
	fastcgi_temp_path $work/nginx/fastcgi;
	uwsgi_temp_path $work/nginx/uwsgi;
	scgi_temp_path $work/nginx/scgi;
	upstream backends {
		server 127.0.0.1:$BACKEND1;
		server 127.0.0.1:$BACKEND2;
		keepalive 128;
	}
	server {
		listen 127.0.0.1:$NGINX_PORT;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Connection "";
			proxy_set_header Host \$host;
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
		}
	}
}
CONF
"${pin_proxy[@]}" nginx -c "$work/nginx.conf" -p "$work/nginx" &
pids+=($!)
nginx_pid=$!

cat >"$work/haproxy.cfg" <<CONF
global
	nbthread 1
	maxconn 4096
defaults
	mode http
	timeout connect 1s
	timeout client 60s
	timeout server 60s
	option forwardfor
	http-reuse always
frontend fe
	bind 127.0.0.1:$HAPROXY_PORT
	default_backend be
backend be
	balance roundrobin
	server b1 127.0.0.1:$BACKEND1
	server b2 127.0.0.1:$BACKEND2
CONF
"${pin_proxy[@]}" haproxy -db -f "$work/haproxy.cfg" &
pids+=($!)
haproxy_pid=$!

for p in $BACKEND1 $BACKEND2 $ROUTER_PORT $NGINX_PORT $HAPROXY_PORT; do wait_port "$p"; done
for p in $ROUTER_PORT $NGINX_PORT $HAPROXY_PORT; do
	out=$(curl -s -H "Host: $HOST" "http://127.0.0.1:$p/")
	[ "${#out}" = "$BODY" ] || { echo "proxy on port $p answered '$out'" >&2; exit 1; }
done

# to_ms converts a wrk latency like 812.00us, 1.59ms or 1.02s to ms.
to_ms() {
	awk -v v="$1" 'BEGIN {
		if (v ~ /us$/) { sub(/us$/, "", v); printf "%.3f", v / 1000 }
		else if (v ~ /ms$/) { sub(/ms$/, "", v); printf "%.3f", v }
		else if (v ~ /s$/) { sub(/s$/, "", v); printf "%.3f", v * 1000 }
		else printf "%s", v
	}'
}

# cpu_ticks prints the user+system CPU ticks of a process and its children
# (nginx workers).
cpu_ticks() {
	local total=0 p
	for p in "$1" $(pgrep -P "$1" || true); do
		[ -r "/proc/$p/stat" ] && total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
	done
	echo "$total"
}
CLK_TCK=$(getconf CLK_TCK)

run() { # name port → "rps p50 p99 cpu_us_per_request"
	local pid_var="${1}_pid" before after
	before=$(cpu_ticks "${!pid_var}")
	"${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: $HOST" "http://127.0.0.1:$2/" >"$work/wrk.$1" 2>&1
	after=$(cpu_ticks "${!pid_var}")
	local rps p50 p99 reqs cpu
	reqs=$(awk '/requests in/ {print $1}' "$work/wrk.$1")
	cpu=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
	rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk.$1")
	p50=$(awk '$1 == "50%" {print $2}' "$work/wrk.$1")
	p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.$1")
	if grep -q "Non-2xx\|Socket errors" "$work/wrk.$1"; then
		grep "Non-2xx\|Socket errors" "$work/wrk.$1" | sed "s/^/$1: /" >&2
	fi
	echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu"
}

declare -A RPS P50 P99 CPU
names=(router nginx haproxy)
declare -A PORT=([router]=$ROUTER_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT)
# Warm up every proxy's upstream pool.
for n in "${names[@]}"; do "${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNS" -d2s -H "Host: $HOST" "http://127.0.0.1:${PORT[$n]}/" >/dev/null; done
for rep in $(seq "$REPEAT"); do
	for n in "${names[@]}"; do
		read -r rps p50 p99 cpu < <(run "$n" "${PORT[$n]}")
		echo "rep $rep $n: $rps req/s p50 ${p50}ms p99 ${p99}ms, proxy CPU ${cpu}us/request" >&2
		CPU[$n]="${CPU[$n]:-} $cpu"
		RPS[$n]="${RPS[$n]:-} $rps"
		P50[$n]="${P50[$n]:-} $p50"
		P99[$n]="${P99[$n]:-} $p99"
	done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, body $BODY B, 2 keep-alive backends, pinned=$PIN, median of $REPEAT"
echo "(CPU us/req: the proxy's own user+system CPU per request, which other load on the machine disturbs least)"
printf "%-8s %12s %9s %9s %14s %11s %14s\n" proxy "req/s" "p50 ms" "p99 ms" "req/s vs nginx" "CPU us/req" "CPU vs nginx"
nginx_rps=$(echo "${RPS[nginx]}" | median)
nginx_cpu=$(echo "${CPU[nginx]}" | median)
for n in "${names[@]}"; do
	rps=$(echo "${RPS[$n]}" | median)
	p50=$(echo "${P50[$n]}" | median)
	p99=$(echo "${P99[$n]}" | median)
	cpu=$(echo "${CPU[$n]}" | median)
	printf "%-8s %12.0f %9.2f %9.2f %14.2f %11.1f %14.2f\n" "$n" "$rps" "$p50" "$p99" \
		"$(awk -v a="$rps" -v b="$nginx_rps" 'BEGIN {print a / b}')" "$cpu" "$(awk -v a="$cpu" -v b="$nginx_cpu" 'BEGIN {print a / b}')"
done
