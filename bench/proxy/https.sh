#!/usr/bin/env bash
# HTTPS through Rollway's proxy vs nginx, same certificate (ECDSA P-256, made here with openssl),
# same upstream: (1) keep-alive req/s and p99, (2) new TLS handshakes per second (a connection per
# request: `Connection: close`). wrk is HTTP/1.1 over TLS, SNI `localhost`. Installs nginx and wrk
# from Debian when missing.
# Usage: bench/proxy/https.sh [DURATION_S] [CONNECTIONS]
set -euo pipefail

DURATION="${1:-10}"
CONNECTIONS="${2:-64}"
THREADS=2
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
UPSTREAM=127.0.0.1:18180
ROLLWAY_PORT=18181
NGINX_PORT=18182

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

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj "/CN=localhost" \
    -addext "subjectAltName=DNS:localhost" -addext "basicConstraints=critical,CA:FALSE" 2>/dev/null

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy-https "127.0.0.1:$ROLLWAY_PORT" "$UPSTREAM" localhost "$WORK/cert.pem" "$WORK/key.pem" & pids+=($!)

# nginx as its users configure a TLS-terminating keep-alive reverse proxy (its defaults for TLS:
# TLS 1.2 and 1.3, session tickets on, no shared session cache).
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server $UPSTREAM; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl;
        http2 on;
        server_name localhost;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
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

for port in "$ROLLWAY_PORT" "$NGINX_PORT"; do
    for _ in $(seq 1 100); do
        curl -sf --cacert "$WORK/cert.pem" --resolve "localhost:$port:127.0.0.1" "https://localhost:$port/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

run() { # target port mode
    local extra=()
    [ "$3" = handshake ] && extra=(-H "Connection: close")
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${extra[@]}" "https://localhost:$2/small" >/dev/null
    local out rps p99 errors
    out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${extra[@]}" "https://localhost:$2/small")"
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
    errors="$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
    printf "%-8s %-10s %12s %10s %s\n" "$1" "$3" "$rps" "$p99" "$errors"
}

printf "%-8s %-10s %12s %10s\n" target mode "req/s" p99
for mode in keepalive handshake; do
    for target in nginx rollway; do
        case $target in
            nginx) port=$NGINX_PORT ;;
            rollway) port=$ROLLWAY_PORT ;;
        esac
        run "$target" "$port" "$mode"
    done
done
