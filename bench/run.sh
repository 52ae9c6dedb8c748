#!/bin/bash
# make bench: every benchmark of the speed goals in one run, each beside
# its anchor measured in the same run where there is one, in one table:
#   - the router against nginx and HAProxy (bench/router/bench.sh, pinned,
#     median of REPEAT), and against nginx over HTTPS (TLS 1.3) and h2;
#   - job start through the host agent against bare `runc run`
#     (internal/host's BenchmarkStart*: 50 one by one, alternating with
#     runc's, and 20 at once);
#   - git push to serving, cold and warm, of the Go and Node.js samples;
#     scale web=20 until every job answered through the router; the idle
#     cluster's memory (bench/cluster/bench.sh, on a cluster of its own).
# Run as root on a quiet machine: other load moves every figure. Knobs:
# REPEAT (router, default 3), ONLY (router, start or cluster: one part).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
GO=${GO:-go}
work=$(mktemp -d /tmp/flynn-benchrun.XXXXXX)
trap 'rm -rf "$work"' EXIT
part() { [ -z "${ONLY:-}" ] || [ "$ONLY" = "$1" ]; }

if part router; then
	echo "== router (bench/router/bench.sh)" >&2
	REPEAT=${REPEAT:-3} PIN=${PIN:-1} bash bench/router/bench.sh >"$work/router" 2>"$work/router.err" || { cat "$work/router.err" >&2; exit 1; }
	cat "$work/router" >&2
fi
if part start; then
	echo "== job start (internal/host BenchmarkStart*)" >&2
	$GO test -count=1 -run - -bench 'BenchmarkStart(Sequential|AgentConcurrent|BareRuncConcurrent)' -benchtime 1x ./internal/host/ >"$work/start" 2>&1 || { cat "$work/start" >&2; exit 1; }
	grep '^Benchmark' "$work/start" >&2
fi
if part cluster; then
	echo "== cluster (bench/cluster/bench.sh)" >&2
	bash bench/cluster/bench.sh >"$work/cluster"
	cat "$work/cluster" >&2
fi

# The table: what, us, the anchor, us/anchor (for times and memory lower
# is better; for req/s higher is).
row() { printf "%-34s %14s %22s %8s\n" "$1" "$2" "$3" "$4"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b > 0) printf "%.2f", a / b; else print "-"}'; }
echo
row "benchmark" "us" "anchor (same run)" "ratio"
if part router; then
	# proxy req/s p50 p99 vs-nginx cpu cpu-vs-nginx
	r() { awk -v n="$1" -v f="$2" '$1 == n {print $f}' "$work/router"; }
	row "router req/s" "$(r router 2)" "nginx $(r nginx 2)" "$(ratio "$(r router 2)" "$(r nginx 2)")"
	row "router req/s vs HAProxy" "$(r router 2)" "haproxy $(r haproxy 2)" "$(ratio "$(r router 2)" "$(r haproxy 2)")"
	row "router p99 ms" "$(r router 4)" "nginx $(r nginx 4)" "$(ratio "$(r router 4)" "$(r nginx 4)")"
	row "router CPU us/request" "$(r router 6)" "nginx $(r nginx 6)" "$(ratio "$(r router 6)" "$(r nginx 6)")"
	# The HTTPS rows (TLS 1.3 keep-alive, and h2), when bench.sh ran them.
	for p in tls h2; do
		[ -n "$(r "router-$p" 2)" ] || continue
		row "router $p req/s" "$(r "router-$p" 2)" "nginx $(r "nginx-$p" 2)" "$(ratio "$(r "router-$p" 2)" "$(r "nginx-$p" 2)")"
		row "router $p p99 ms" "$(r "router-$p" 4)" "nginx $(r "nginx-$p" 4)" "$(ratio "$(r "router-$p" 4)" "$(r "nginx-$p" 4)")"
		row "router $p CPU us/request" "$(r "router-$p" 6)" "nginx $(r "nginx-$p" 6)" "$(ratio "$(r "router-$p" 6)" "$(r "nginx-$p" 6)")"
	done
fi
if part start; then
	# BenchmarkName-N 1 ns/op X ms/job [Y runc-ms/job Z x-runc | Y ms/20jobs]
	m() { awk -v b="$1" -v u="$2" '$1 ~ "^"b"(-[0-9]+)?$" {for (i = 3; i < NF; i++) if ($(i + 1) == u) print $i}' "$work/start"; }
	row "job start ms/job, one by one" "$(m BenchmarkStartSequential ms/job)" "runc $(m BenchmarkStartSequential runc-ms/job)" \
		"$(ratio "$(m BenchmarkStartSequential ms/job)" "$(m BenchmarkStartSequential runc-ms/job)")"
	row "job start ms, 20 at once" "$(m BenchmarkStartAgentConcurrent ms/20jobs)" "runc $(m BenchmarkStartBareRuncConcurrent ms/20jobs)" \
		"$(ratio "$(m BenchmarkStartAgentConcurrent ms/20jobs)" "$(m BenchmarkStartBareRuncConcurrent ms/20jobs)")"
	# Where the agent's starts spent their time, one block per benchmark.
	echo
	awk '/^--- BENCH: BenchmarkStart(Sequential|Agent)/ {name = $3; next}
		/phases of/ {sub(/^ *bench_test.go:[0-9]+: /, ""); print name ": " $0; p = 1; next}
		p && /^       *[a-z]/ {print; next}
		{p = 0}' "$work/start"
fi
if part cluster; then
	c() { awk -v n="$1" '$1 == n {print $2}' "$work/cluster"; }
	row "flynn-host up s" "$(c up)" "-" "-"
	row "idle cluster RSS MiB" "$(c idle_rss)" "goal 200" "$(ratio "$(c idle_rss)" 200)"
	row "idle cluster PSS MiB ($(c idle_processes) procs)" "$(c idle_pss)" "-" "-"
	row "push Go cold s" "$(c push_benchgo_cold)" "goal 15; Heroku 30-60" "$(ratio "$(c push_benchgo_cold)" 15)"
	row "push Go warm s" "$(c push_benchgo_warm)" "goal 3" "$(ratio "$(c push_benchgo_warm)" 3)"
	row "push Go cold s, Go built before" "$(c push_benchgotwo_cold)" "goal 15; Heroku 30-60" "$(ratio "$(c push_benchgotwo_cold)" 15)"
	row "push Node cold s" "$(c push_benchnodejs_cold)" "goal 15; Heroku 30-60" "$(ratio "$(c push_benchnodejs_cold)" 15)"
	row "push Node warm s" "$(c push_benchnodejs_warm)" "goal 3" "$(ratio "$(c push_benchnodejs_warm)" 3)"
	row "scale web=20 to routed s" "$(c scale20)" "-" "-"
	echo
	grep '_timings ' "$work/cluster" | sed 's/^push_bench\([a-z]*\)_\([a-z]*\)_timings /\1 \2: /' || true
fi
