#!/usr/bin/env bash
# Benchmarks unary gRPC calls three ways with h2load (HTTP/2, prior knowledge): direct to a gRPC upstream,
# through nginx (`grpc_pass`), and through Rollway's proxy (`protocol = "grpc"`). Installs nginx and
# h2load (nghttp2-client) from Debian when missing.
# Usage: bench/proxy/grpc.sh [DURATION_S] [CONNECTIONS] [STREAMS_PER_CONNECTION]
set -euo pipefail

DURATION="${1:-10}"
CONNECTIONS="${2:-8}"
STREAMS="${3:-16}"
THREADS=2
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
UPSTREAM=127.0.0.1:18090
ROLLWAY=127.0.0.1:18091
NGINX=127.0.0.1:18092

if ! command -v nginx >/dev/null || ! command -v h2load >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nginx nghttp2-client
fi

cargo build --release -p proxy --example bench_proxy --manifest-path "$ROOT/Cargo.toml"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="$TARGET_DIR/release/examples/bench_proxy"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -f "$WORK/nginx.pid" ] && kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" grpc-upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$ROLLWAY" "$UPSTREAM" 0 grpc & pids+=($!)

# nginx as its users configure gRPC proxying: h2c listener, grpc_pass with keep-alive upstream connections.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream grpc_app { server $UPSTREAM; keepalive 64; }
    server {
        listen $NGINX http2;
        # The default (1000) ends each client connection after 1000 calls with a GOAWAY.
        keepalive_requests 1000000;
        location / {
            grpc_pass grpc://grpc_app;
            grpc_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

# One unary call: a gRPC message of 5 bytes (no compression flag, length 5).
printf '\0\0\0\0\5hello' > "$WORK/call.bin"
call() {
    h2load "$@" -d "$WORK/call.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://$addr/demo.Echo/Unary"
}

for addr in "$UPSTREAM" "$ROLLWAY" "$NGINX"; do
    for _ in $(seq 1 100); do
        call -n 1 -c 1 >/dev/null 2>&1 && break
        sleep 0.1
    done
done

printf "%-8s %12s %10s %10s %10s %10s\n" target "calls/s" min max mean failed
for target in direct nginx rollway; do
    case $target in
        direct) addr=$UPSTREAM ;;
        nginx) addr=$NGINX ;;
        rollway) addr=$ROLLWAY ;;
    esac
    call -t"$THREADS" -c"$CONNECTIONS" -m"$STREAMS" -D 2 >/dev/null
    out="$(call -t"$THREADS" -c"$CONNECTIONS" -m"$STREAMS" -D "$DURATION")"
    rps="$(echo "$out" | awk '/^finished in/ {print $4}')"
    # "time for request:  MIN  MAX  MEAN  SD  +/- SD"
    times="$(echo "$out" | awk '$1 == "time" && $2 == "for" && $3 == "request:" {print $4, $5, $6}')"
    failed="$(echo "$out" | awk '/^requests:/ {print $10}')"
    # shellcheck disable=SC2086
    printf "%-8s %12s %10s %10s %10s %10s\n" "$target" "$rps" $times "$failed"
done
