#!/usr/bin/env bash
# Router benchmark: wrk against our router, nginx and HAProxy, each proxying
# to the same two Go backends with keep-alive upstream connections, in one
# run; then wrk over TLS (HTTP/1.1 keep-alive) and h2load over h2 against
# our router's HTTPS listener and nginx's. Prints req/s, p50 and p99 per
# proxy and the ratios to the nginx row of the same protocol.
#
# Usage: bench/router/bench.sh            (run from the repository root)
# Environment:
#   DURATION=10s CONNS=64 THREADS=2 REPEAT=1 BODY=2
#   PIN=1       wrk on CPU 0, proxies and backends on CPU 1 (as in
#               /work/shared/reference/perf-anchors.md); PIN=0 disables.
#   PORT_BASE=62080  loopback ports PORT_BASE..PORT_BASE+11 are used.
#   TLS=1       also the router-tls, nginx-tls (wrk over TLS) and router-h2,
#               nginx-h2 (h2load over TLS with ALPN h2) rows; TLS=0 skips them.
#   H2_STREAMS=1  concurrent streams per h2 connection (h2load -m).
#   ROWS="router-h2 nginx-h2"  run only these rows (each with its nginx
#               row, for the ratios); TLS=1 is needed for the TLS ones.
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
REPEAT=${REPEAT:-1}
BODY=${BODY:-2}
PIN=${PIN:-1}
PORT_BASE=${PORT_BASE:-62080}
TLS=${TLS:-1}
H2_STREAMS=${H2_STREAMS:-1}
ROWS=${ROWS:-}

ROUTER_PORT=$PORT_BASE
BACKEND1=$((PORT_BASE + 1))
BACKEND2=$((PORT_BASE + 2))
NGINX_PORT=$((PORT_BASE + 10))
HAPROXY_PORT=$((PORT_BASE + 11))
API_PORT=$((PORT_BASE + 9))
ROUTER_TLS_PORT=$((PORT_BASE + 3))
NGINX_TLS_PORT=$((PORT_BASE + 4))
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
if [ "$TLS" = 1 ]; then
	command -v h2load >/dev/null || need+=(nghttp2-client)
	command -v openssl >/dev/null || need+=(openssl)
fi
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
# One self-signed ECDSA P-256 certificate for the router's and nginx's
# HTTPS listeners.
router_tls=()
nginx_tls=
if [ "$TLS" = 1 ]; then
	openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj "/CN=$HOST" \
		-addext "subjectAltName=DNS:$HOST" -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
	router_tls=(-tls-addr 127.0.0.1:$ROUTER_TLS_PORT -cert "$work/cert.pem" -key "$work/key.pem")
	nginx_tls="server {
		listen 127.0.0.1:$NGINX_TLS_PORT ssl http2;
		ssl_certificate $work/cert.pem;
		ssl_certificate_key $work/key.pem;
		ssl_protocols TLSv1.2 TLSv1.3;
		location / {
			proxy_pass http://backends;
			proxy_http_version 1.1;
			proxy_set_header Connection \"\";
			proxy_set_header Host \$host;
			proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
		}
	}"
fi

"${pin_proxy[@]}" "$work/routerbench" -addr 127.0.0.1:$ROUTER_PORT -api-addr 127.0.0.1:$API_PORT -domain $HOST \
	-backends 127.0.0.1:$BACKEND1,127.0.0.1:$BACKEND2 "${router_tls[@]}" &
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
	# The router closes no connection after a number of requests: nor does
	# nginx here (its default, 1000, has wrk reconnect and ends h2load's
	# h2 connections, which it does not reopen, after 1000 requests each).
	keepalive_requests 1000000;
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
	$nginx_tls
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
if [ "$TLS" = 1 ]; then
	for p in $ROUTER_TLS_PORT $NGINX_TLS_PORT; do
		wait_port "$p"
		for v in --http1.1 --http2; do
			out=$(curl -sk $v --resolve "$HOST:$p:127.0.0.1" "https://$HOST:$p/")
			[ "${#out}" = "$BODY" ] || { echo "proxy on port $p ($v) answered '$out'" >&2; exit 1; }
		done
	done
fi

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

# load name port: runs the row's load generator against port: wrk over
# plain HTTP or TLS (HTTP/1.1, keep-alive), or h2load over h2 for the -h2
# rows.
load() {
	case $1 in
	*-h2)
		# h2load has no percentiles: they come from its per-request log
		# (start µs, status, duration µs).
		"${pin_wrk[@]}" h2load -c"$CONNS" -t"$THREADS" -m"$H2_STREAMS" -D "${DURATION%s}" --log-file="$work/h2log.$1" \
			-H ":authority: $HOST" "https://127.0.0.1:$2/" >"$work/load.$1" 2>&1 ;;
	*-tls)
		"${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: $HOST" "https://127.0.0.1:$2/" >"$work/load.$1" 2>&1 ;;
	*)
		"${pin_wrk[@]}" wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -H "Host: $HOST" "http://127.0.0.1:$2/" >"$work/load.$1" 2>&1 ;;
	esac
}

run() { # name port → "rps p50 p99 cpu_us_per_request"
	local pid_var="${1%%-*}_pid" before after
	before=$(cpu_ticks "${!pid_var}")
	load "$1" "$2"
	after=$(cpu_ticks "${!pid_var}")
	if [[ $1 == *-h2 ]]; then
		local out="$work/load.$1" reqs rps p50 p99 cpu
		reqs=$(awk '/^requests:/ {print $6}' "$out")
		rps=$(awk '/^finished in/ {print $4}' "$out")
		read -r p50 p99 < <(awk '{print $3}' "$work/h2log.$1" | sort -n |
			awk '{a[NR]=$1} END {printf "%.3f %.3f\n", a[int(NR*0.5)+1] / 1000, a[int(NR*0.99)+1] / 1000}')
		cpu=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
		if ! grep -q "^requests:.* 0 failed, 0 errored" "$out" || ! grep -q "^status codes: [0-9]* 2xx, 0 3xx, 0 4xx, 0 5xx" "$out"; then
			grep "^requests:\|^status codes:" "$out" | sed "s/^/$1: /" >&2
		fi
		echo "$rps $p50 $p99 $cpu"
		return
	fi
	local rps p50 p99 reqs cpu
	reqs=$(awk '/requests in/ {print $1}' "$work/load.$1")
	cpu=$(awk -v t=$((after - before)) -v n="$reqs" -v hz="$CLK_TCK" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')
	rps=$(awk '/^Requests\/sec:/ {print $2}' "$work/load.$1")
	p50=$(awk '$1 == "50%" {print $2}' "$work/load.$1")
	p99=$(awk '$1 == "99%" {print $2}' "$work/load.$1")
	if grep -q "Non-2xx\|Socket errors" "$work/load.$1"; then
		grep "Non-2xx\|Socket errors" "$work/load.$1" | sed "s/^/$1: /" >&2
	fi
	echo "$rps $(to_ms "$p50") $(to_ms "$p99") $cpu"
}

declare -A RPS P50 P99 CPU
names=(router nginx haproxy)
declare -A PORT=([router]=$ROUTER_PORT [nginx]=$NGINX_PORT [haproxy]=$HAPROXY_PORT
	[router-tls]=$ROUTER_TLS_PORT [nginx-tls]=$NGINX_TLS_PORT [router-h2]=$ROUTER_TLS_PORT [nginx-h2]=$NGINX_TLS_PORT)
if [ "$TLS" = 1 ]; then names+=(router-tls nginx-tls router-h2 nginx-h2); fi
if [ -n "$ROWS" ]; then read -r -a names <<<"$ROWS"; fi
# Warm up every proxy's upstream pool (and each load generator's path).
for n in "${names[@]}"; do DURATION=2s load "$n" "${PORT[$n]}"; done
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
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {print a / b}'; }

echo
echo "wrk -t$THREADS -c$CONNS -d$DURATION, body $BODY B, 2 keep-alive backends, pinned=$PIN, median of $REPEAT"
if [ "$TLS" = 1 ]; then
	echo "(-tls rows: wrk over TLS, HTTP/1.1 keep-alive; -h2 rows: h2load -c$CONNS -t$THREADS -m$H2_STREAMS over TLS with h2;"
	echo " each row's ratios are to the nginx row of its protocol)"
fi
echo "(CPU us/req: the proxy's own user+system CPU per request, which other load on the machine disturbs least)"
printf "%-10s %12s %9s %9s %14s %11s %14s\n" proxy "req/s" "p50 ms" "p99 ms" "req/s vs nginx" "CPU us/req" "CPU vs nginx"
for n in "${names[@]}"; do
	peer=nginx
	case $n in *-tls) peer=nginx-tls ;; *-h2) peer=nginx-h2 ;; esac
	rps=$(echo "${RPS[$n]}" | median)
	p50=$(echo "${P50[$n]}" | median)
	p99=$(echo "${P99[$n]}" | median)
	cpu=$(echo "${CPU[$n]}" | median)
	printf "%-10s %12.0f %9.2f %9.2f %14.2f %11.1f %14.2f\n" "$n" "$rps" "$p50" "$p99" \
		"$(ratio "$rps" "$(echo "${RPS[$peer]}" | median)")" "$cpu" "$(ratio "$cpu" "$(echo "${CPU[$peer]}" | median)")"
done
