#!/usr/bin/env bash
# HTTPS through Rollway's proxy vs nginx, same certificate (ECDSA P-256, made here with openssl),
# same upstream, same protocol versions (TLS 1.2 and 1.3 on both). Modes:
#   keepalive  req/s and p99 over 64 kept-alive connections;
#   full       a new connection per request (`Connection: close`) and a full TLS 1.3 handshake on each:
#              a new client every time (wrk reconnects with SSL_clear, which keeps the session, so
#              fresh_session.c, preloaded, drops it);
#   resumed    a new connection per request, resuming the session of the last one (PSK with X25519,
#              no certificate): what wrk does by itself, a returning client;
#   full12, resumed12  the same with wrk's OpenSSL limited to TLS 1.2 (OPENSSL_CONF).
# wrk is HTTP/1.1 over TLS, SNI `localhost`. Installs nginx and wrk from Debian when missing.
# Each run also reports CPU time per request (= per handshake in `handshake` mode) of the server
# (Rollway's proxy process; nginx's workers), of the shared upstream and of wrk (the client shares the
# cores: a server that makes the client work harder costs throughput), read from /proc/PID/stat and
# bash's `times`: a per-handshake cost that other load on the machine changes far less than req/s.
# Rounds alternate which target runs first.
# Usage: bench/proxy/https.sh [DURATION_S] [CONNECTIONS] [ROUNDS] [MODES]
set -euo pipefail

DURATION="${1:-10}"
CONNECTIONS="${2:-64}"
ROUNDS="${3:-1}"
MODES="${4:-keepalive full resumed full12 resumed12}"
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
UPSTREAM_PID=$!
"$BIN" proxy-https "127.0.0.1:$ROLLWAY_PORT" "$UPSTREAM" localhost "$WORK/cert.pem" "$WORK/key.pem" & pids+=($!)
ROLLWAY_PID=$!

# nginx as its users configure a TLS-terminating keep-alive reverse proxy: its TLS defaults (session
# tickets on, no shared session cache, its cipher order) except `ssl_protocols`, set to what Rollway
# offers. nginx 1.22's built-in default is TLS 1.0 to 1.2, without 1.3 (1.3 joined the default in
# 1.23.4; Debian's packaged nginx.conf turns it on): left at that, wrk would negotiate TLS 1.2 with
# nginx and TLS 1.3 with Rollway, and compare two protocols rather than two servers.
# TLS 1.2 only for wrk's OpenSSL, for `full12` and `resumed12`.
cat > "$WORK/tls12.cnf" <<'CNF'
openssl_conf = default_conf
[default_conf]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
CNF
cc -O2 -shared -fPIC -o "$WORK/fresh_session.so" "$ROOT/bench/proxy/fresh_session.c"
cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
pid $WORK/nginx.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    upstream app { server $UPSTREAM; keepalive 64; }
    server {
        listen 127.0.0.1:$NGINX_PORT ssl http2;
        server_name localhost;
        ssl_certificate $WORK/cert.pem;
        ssl_certificate_key $WORK/key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
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

cpu_ticks() { # PIDs -> their user + system CPU time, in clock ticks
    local total=0 pid stat fields
    for pid in "$@"; do
        stat="$(cat "/proc/$pid/stat")"
        read -r -a fields <<<"${stat##*) }" # after the command name: field 3 is state
        total=$((total + fields[11] + fields[12]))
    done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
per_request_us() { echo $(( $1 * TICK_US / ($2 > 0 ? $2 : 1) )); }

run() { # target port mode
    local extra=() server_pids client_env=()
    case $3 in
        full) extra=(-H "Connection: close") client_env=(LD_PRELOAD="$WORK/fresh_session.so") ;;
        resumed) extra=(-H "Connection: close") ;;
        full12) extra=(-H "Connection: close")
            client_env=(LD_PRELOAD="$WORK/fresh_session.so" OPENSSL_CONF="$WORK/tls12.cnf") ;;
        resumed12) extra=(-H "Connection: close") client_env=(OPENSSL_CONF="$WORK/tls12.cnf") ;;
    esac
    case $1 in
        nginx) read -r -a server_pids <<<"$(pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ' ')" ;;
        rollway) server_pids=("$ROLLWAY_PID") ;;
    esac
    env "${client_env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "${extra[@]}" "https://localhost:$2/small" >/dev/null
    local out rps p99 errors requests server0 upstream0 server1 upstream1 client load
    load="$(cut -d' ' -f1 /proc/loadavg)"
    server0="$(cpu_ticks "${server_pids[@]}")"
    upstream0="$(cpu_ticks "$UPSTREAM_PID")"
    # `times` in the subshell: the CPU time of its children, i.e. wrk's.
    out="$(env "${client_env[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "${extra[@]}" "https://localhost:$2/small"; times)"
    server1="$(cpu_ticks "${server_pids[@]}")"
    upstream1="$(cpu_ticks "$UPSTREAM_PID")"
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
    requests="$(echo "$out" | awk '/requests in/ {print $1}')"
    client_us="$(echo "$out" | tail -1 | awk '{
        split($1, u, /[ms]/); split($2, s, /[ms]/);
        printf "%d", (u[1] * 60 + u[2] + s[1] * 60 + s[2]) * 1000000 }')"
    errors="$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)"
    printf "%-6s %-8s %-10s %10s %10s %10s %10s %10s %6s %s\n" "$round" "$1" "$3" "$rps" "$p99" \
        "$(per_request_us $((server1 - server0)) "$requests")" \
        "$(( client_us / (requests > 0 ? requests : 1) ))" \
        "$(per_request_us $((upstream1 - upstream0)) "$requests")" "$load" "$errors"
}

printf "%-6s %-8s %-10s %10s %10s %10s %10s %10s %6s\n" round target mode "req/s" p99 \
    "server_us" "client_us" "upstr_us" load1
for round in $(seq 1 "$ROUNDS"); do
    # Alternate which target goes first, so a drift in the machine's load does not favour one.
    if [ $((round % 2)) = 1 ]; then targets="nginx rollway"; else targets="rollway nginx"; fi
    for mode in $MODES; do
        for target in $targets; do
            case $target in
                nginx) port=$NGINX_PORT ;;
                rollway) port=$ROLLWAY_PORT ;;
            esac
            run "$target" "$port" "$mode"
        done
    done
done
