#!/usr/bin/env bash
# Memory per idle keep-alive connection: Rollway's proxy, nginx and HAProxy in front of the same upstream.
# For each, `bench_proxy idle-clients` opens COUNT connections, sends one small request on each, holds
# them idle; the script reads the proxy's RSS (VmRSS, all its processes) before, while they are idle, and
# a few seconds after they all closed.
# Usage: bench/proxy/idle.sh [COUNT] [HOLD_S]   (defaults 5000 connections, 8 s)
# IDLE_MODE=burst opens all COUNT connections first and then sends every request at once, as
# deployed.sh's idle scenario does (the proxy then opens many upstream connections); the default,
# sequential, uses one connection after another. The script also counts the proxy's established
# connections to the upstream when it reads the idle RSS.
set -euo pipefail

COUNT="${1:-5000}"
HOLD="${2:-8}"
MODE="${IDLE_MODE:-sequential}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
# BENCH_PORT_BASE moves every port of this script (two benches at once need apart ranges).
PORT_BASE="${BENCH_PORT_BASE:-18690}"
UPSTREAM=127.0.0.1:$((PORT_BASE + 0))
ROLLWAY=127.0.0.1:$((PORT_BASE + 1))
NGINX=127.0.0.1:$((PORT_BASE + 2))
HAPROXY=127.0.0.1:$((PORT_BASE + 3))

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nginx haproxy
fi
ulimit -n 20000

# BENCH_PROXY_BIN measures another build (e.g. a copy of an earlier commit's) instead.
. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$ROLLWAY" "$UPSTREAM" & pids+=($!)
rollway_pid=$!

cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 12000; }
http {
    access_log off;
    keepalive_timeout 120s;
    upstream app { server $UPSTREAM; keepalive 64; }
    server {
        listen $NGINX;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

cat > "$WORK/haproxy.cfg" <<HAPROXY
global
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 120s
    timeout server 120s
    timeout http-keep-alive 120s
frontend front
    bind $HAPROXY
    default_backend app
backend app
    http-reuse always
    server app $UPSTREAM
HAPROXY
haproxy -f "$WORK/haproxy.cfg" & pids+=($!)
haproxy_pid=$!

for addr in "$UPSTREAM" "$ROLLWAY" "$NGINX" "$HAPROXY"; do
    for _ in $(seq 1 100); do
        curl -sf "http://$addr/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# RSS in KiB of the given processes together.
rss() {
    local total=0
    for pid in "$@"; do
        total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")))
    done
    echo "$total"
}

echo "mode: $MODE; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
printf "%-8s %12s %14s %16s %14s %10s\n" target "before KiB" "idle KiB" "per conn bytes" "after KiB" "upstream"
for target in rollway nginx haproxy; do
    case $target in
        rollway) addr=$ROLLWAY; procs=("$rollway_pid") ;;
        nginx)
            addr=$NGINX
            master="$(cat "$WORK/nginx.pid")"
            mapfile -t procs < <(echo "$master"; pgrep -P "$master")
            ;;
        haproxy) addr=$HAPROXY; procs=("$haproxy_pid") ;;
    esac
    before="$(rss "${procs[@]}")"
    "$BIN" idle-clients "$addr" "$COUNT" "$HOLD" "$MODE" > "$WORK/clients.out" &
    clients=$!
    for _ in $(seq 1 600); do grep -q ready "$WORK/clients.out" && break; sleep 0.1; done
    # Rollway frees an idle connection's buffers after 1 s.
    sleep 3
    idle="$(rss "${procs[@]}")"
    upstream="$(ss -Htn state established "( dport = :${UPSTREAM##*:} )" | wc -l)"
    wait "$clients"
    sleep 3
    after="$(rss "${procs[@]}")"
    printf "%-8s %12s %14s %16s %14s %10s\n" "$target" "$before" "$idle" "$(((idle - before) * 1024 / COUNT))" "$after" "$upstream"
done
