#!/usr/bin/env bash
# CPU per request of `bench_proxy proxy` with its static route and with the route as the agent configures
# a deployed app (`deployed`: Host route, two instances, rate limit, allow list, max_body), same binary,
# same two upstream processes, alternated over ROUNDS rounds: what the deployed configuration adds, apart
# from the agent's process. Each proxy runs with its default worker count (one per core, as `rollway
# proxy`), in its own session. Per run: req/s, user and system CPU per request of the proxy process (from
# /proc/PID/stat over the measured run) and the 1-minute load average.
# Usage: bench/proxy/modes_cpu.sh [DURATION_S] [ROUNDS] [CONNECTIONS]   (defaults 6 s, 3, 64)
# Environment: BENCH_PROXY_BIN (another build), BENCH_PORT_BASE (default 18690; ports BASE to BASE+3).
# Every server binds 127.0.0.1; every loop is bounded; on exit the processes it started are killed by pid.
set -euo pipefail

DURATION="${1:-6}"
ROUNDS="${2:-3}"
CONNECTIONS="${3:-64}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PORT_BASE="${BENCH_PORT_BASE:-18690}"
UPSTREAM_A=127.0.0.1:$((PORT_BASE + 0))
UPSTREAM_B=127.0.0.1:$((PORT_BASE + 1))
STATIC=127.0.0.1:$((PORT_BASE + 2))
DEPLOYED=127.0.0.1:$((PORT_BASE + 3))

command -v wrk >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -q; apt-get install -y -q wrk; }
. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

setsid "$BIN" upstream "$UPSTREAM_A" & pids+=($!)
setsid "$BIN" upstream "$UPSTREAM_B" & pids+=($!)
setsid "$BIN" proxy "$STATIC" "$UPSTREAM_A" & pids+=($!)
static_pid=$!
setsid "$BIN" proxy "$DEPLOYED" "$UPSTREAM_A,$UPSTREAM_B" 0 http1 deployed & pids+=($!)
deployed_pid=$!
for addr in "$STATIC" "$DEPLOYED"; do
    for _ in $(seq 1 100); do
        curl -sf -H "Host: bench.localhost" "http://$addr/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

TICK_US=$((1000000 / $(getconf CLK_TCK)))
ticks() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13}'; }
run() { # NAME PID ADDR
    local name=$1 pid=$2 addr=$3 before after out requests load
    wrk -t2 -c"$CONNECTIONS" -d2s -H "Host: bench.localhost" "http://$addr/small" >/dev/null 2>&1 || true
    load="$(cut -d' ' -f1 /proc/loadavg)"
    before="$(ticks "$pid")"
    out="$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" -H "Host: bench.localhost" "http://$addr/small" 2>&1)" || true
    after="$(ticks "$pid")"
    requests="$(echo "$out" | awk '/requests in/ {print $1}')"
    read -r u0 s0 <<<"$before"
    read -r u1 s1 <<<"$after"
    awk -v n="$name" -v r="$requests" -v d="$DURATION" -v u=$(( (u1 - u0) * TICK_US )) -v s=$(( (s1 - s0) * TICK_US )) -v l="$load" \
        'BEGIN {printf "%-9s req/s %8.0f  user us/req %6.1f  sys us/req %6.1f  load1 %s\n", n, r / d, u / r, s / r, l}'
}
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) -eq 1 ]; then
        run static "$static_pid" "$STATIC"; run deployed "$deployed_pid" "$DEPLOYED"
    else
        run deployed "$deployed_pid" "$DEPLOYED"; run static "$static_pid" "$STATIC"
    fi
done
