#!/usr/bin/env bash
# Benchmarks the same upstream three ways with wrk (HTTP/1.1 keep-alive): direct, through nginx, through
# Rollway's proxy; small and 64 KiB answers. Installs nginx and wrk from Debian when missing.
# Usage: bench/proxy/run.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail

DURATION="${1:-10}"
CONNECTIONS="${2:-64}"
THREADS=2
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
UPSTREAM=127.0.0.1:18080
ROLLWAY=127.0.0.1:18081
NGINX=127.0.0.1:18082

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nginx wrk
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

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$ROLLWAY" "$UPSTREAM" & pids+=($!)

# nginx as its users configure a keep-alive reverse proxy.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server $UPSTREAM; keepalive 64; }
    server {
        listen $NGINX;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
}
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK"

for addr in "$UPSTREAM" "$ROLLWAY" "$NGINX"; do
    for _ in $(seq 1 100); do
        curl -sf "http://$addr/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

printf "%-8s %-6s %12s %10s %10s\n" target size "req/s" p50 p99
for size in small 64k; do
    for target in direct nginx rollway; do
        case $target in
            direct) addr=$UPSTREAM ;;
            nginx) addr=$NGINX ;;
            rollway) addr=$ROLLWAY ;;
        esac
        # Warm up connections and pools, then measure.
        wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://$addr/$size" >/dev/null
        out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://$addr/$size")"
        rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
        p50="$(echo "$out" | awk '$1 == "50%" {print $2}')"
        p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
        errors="$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
        printf "%-8s %-6s %12s %10s %10s %s\n" "$target" "$size" "$rps" "$p50" "$p99" "$errors"
    done
done
