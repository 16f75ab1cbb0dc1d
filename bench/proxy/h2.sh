#!/usr/bin/env bash
# HTTP/2 to clients: h2load (h2c, prior knowledge) through Rollway's proxy and through HAProxy to the same
# HTTP/1.1 upstream, `/small` answers. Installs haproxy and h2load (nghttp2-client) when missing.
# Targets alternate; each round is a 2 s warm-up then one measured run per target. Besides req/s, the
# proxy's CPU time per request (user + system from /proc/PID/stat over the measured run): other load on
# the shared machine moves it far less than req/s.
# Usage: bench/proxy/h2.sh [DURATION_S] [CONNECTIONS] [STREAMS] [ROUNDS]   (defaults 8 s, 16, 100, 2)
set -euo pipefail

DURATION="${1:-8}"
CONNECTIONS="${2:-16}"
STREAMS="${3:-100}"
ROUNDS="${4:-2}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
# BENCH_PORT_BASE moves every port of this script (two benches at once need apart ranges).
PORT_BASE="${BENCH_PORT_BASE:-18670}"
UPSTREAM=127.0.0.1:$((PORT_BASE + 0))
ROLLWAY=127.0.0.1:$((PORT_BASE + 1))
HAPROXY=127.0.0.1:$((PORT_BASE + 3))

if ! command -v haproxy >/dev/null || ! command -v h2load >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q haproxy nghttp2-client
fi

# BENCH_PROXY_BIN measures another build (e.g. a copy of an earlier commit's) instead.
. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$ROLLWAY" "$UPSTREAM" & pids+=($!)
rollway_pid=$!

cat > "$WORK/haproxy.cfg" <<HAPROXY
global
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend front
    bind $HAPROXY proto h2
    default_backend app
backend app
    http-reuse always
    server app $UPSTREAM
HAPROXY
haproxy -f "$WORK/haproxy.cfg" & pids+=($!)
haproxy_pid=$!

# The upstream first: a proxy without it holds each request for an instance (the route's hold), so
# waiting on the proxy then would take 100 holds. `--max-time` bounds each try either way.
for addr in "$UPSTREAM" "$ROLLWAY"; do
    up=
    for _ in $(seq 1 100); do
        curl -sf --max-time 2 "http://$addr/small" >/dev/null 2>&1 && up=1 && break
        sleep 0.1
    done
    if [ -z "$up" ]; then
        echo "$addr did not answer (port taken? see BENCH_PORT_BASE)" >&2
        exit 1
    fi
done
sleep 1

# CPU ticks of a process: user and system.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
hz="$(getconf CLK_TCK)"
per_request() { # TICKS REQUESTS: microseconds per request
    awk -v t="$1" -v hz="$hz" -v n="$2" 'BEGIN {printf "%.1f", n ? t * 1e6 / hz / n : 0}'
}

printf "%-6s %-8s %12s %10s %12s %10s %8s %s\n" round target "req/s" mean "CPU us/req" "user+sys" "load1" failed
for round in $(seq 1 "$ROUNDS"); do
    for target in rollway haproxy; do
        case $target in
            rollway) addr=$ROLLWAY; pid=$rollway_pid ;;
            haproxy) addr=$HAPROXY; pid=$haproxy_pid ;;
        esac
        h2load -t2 -c"$CONNECTIONS" -m"$STREAMS" -D 2 "http://$addr/small" >/dev/null
        read -r user_before sys_before < <(ticks "$pid")
        out="$(h2load -t2 -c"$CONNECTIONS" -m"$STREAMS" -D "$DURATION" "http://$addr/small")"
        read -r user_after sys_after < <(ticks "$pid")
        done_n="$(echo "$out" | awk '/^requests:/ {print $8}')"
        user="$((user_after - user_before))"
        sys="$((sys_after - sys_before))"
        cpu="$(per_request "$((user + sys))" "$done_n")"
        split="$(per_request "$user" "$done_n")+$(per_request "$sys" "$done_n")"
        rps="$(echo "$out" | awk '/^finished in/ {gsub(",", "", $4); print $4}')"
        mean="$(echo "$out" | awk '/^time for request:/ {print $6}')"
        failed="$(echo "$out" | awk '/^requests:/ {print $10, $11} /^status codes:/ {print $9, $10}' | paste -sd' ')"
        load="$(cut -d' ' -f1 /proc/loadavg)"
        printf "%-6s %-8s %12s %10s %12s %10s %8s %s\n" "$round" "$target" "$rps" "$mean" "$cpu" "$split" "$load" "$failed"
    done
done
