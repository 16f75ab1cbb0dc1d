#!/usr/bin/env bash
# Counts user-space instructions and malloc calls per small keep-alive request in Rollway's proxy and in
# an nginx worker, each under `valgrind --tool=callgrind`, with the same bounded wrk load. Callgrind counts
# instructions, so other load on the machine does not change the figures (only how long the run takes).
# Instrumentation is switched on only while wrk runs (after a warm-up), so start-up is not counted.
# Usage: bench/proxy/callgrind.sh [DURATION_S] [CONNECTIONS]   (defaults 10 s, 8 connections)
#
# CALLGRIND_MODE=h2: HTTP/2 to the client instead (h2c, prior knowledge, HTTP/1.1 upstream), Rollway only
# (nginx's h2c is not what is compared, and HAProxy does not run well under callgrind): a bounded h2load
# run of H2_REQUESTS (20000) requests over H2_CONNECTIONS (4) connections x H2_STREAMS (50) streams,
# after a warm-up of a tenth of that. Figures are per request, as for HTTP/1.
set -euo pipefail

MODE="${CALLGRIND_MODE:-http1}"
H2_REQUESTS="${H2_REQUESTS:-20000}"
H2_CONNECTIONS="${H2_CONNECTIONS:-4}"
H2_STREAMS="${H2_STREAMS:-50}"

DURATION="${1:-10}"
CONNECTIONS="${2:-8}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
# BENCH_PORT_BASE moves every port of this script (two benches at once need apart ranges).
PORT_BASE="${BENCH_PORT_BASE:-18680}"
UPSTREAM=127.0.0.1:$((PORT_BASE + 0))
ROLLWAY=127.0.0.1:$((PORT_BASE + 1))
NGINX=127.0.0.1:$((PORT_BASE + 2))

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null \
    || ! command -v h2load >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nginx wrk valgrind nghttp2-client
fi

# BENCH_PROXY_BIN measures another build (e.g. a copy of an earlier commit's) instead.
if [ -n "${BENCH_PROXY_BIN:-}" ]; then
    BIN="$BENCH_PROXY_BIN"
else
    cargo build --release -p proxy --example bench_proxy --manifest-path "$ROOT/Cargo.toml"
    TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
    BIN="$TARGET_DIR/release/examples/bench_proxy"
fi

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # valgrind writes its last dump as it exits: let it finish before the directory goes.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() {
    for _ in $(seq 1 300); do
        curl -sf "http://$1/small" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "$1 did not answer" >&2
    exit 1
}

# Sums the calls to the named functions in a callgrind output file (`calls=` lines under `cfn=`).
calls_to() {
    python3 - "$1" "$2" <<'PY'
import re, sys
path, wanted = sys.argv[1], set(sys.argv[2].split(','))
names, current, total = {}, None, 0
for line in open(path, errors='replace'):
    if line.startswith('cfn='):
        m = re.match(r'cfn=\((\d+)\)(?: (.*))?', line.strip())
        if m:
            if m.group(2):
                names[m.group(1)] = m.group(2)
            current = names.get(m.group(1))
        else:
            current = line.strip()[4:]
    elif line.startswith('fn='):
        m = re.match(r'fn=\((\d+)\)(?: (.*))?', line.strip())
        if m and m.group(2):
            names[m.group(1)] = m.group(2)
    elif line.startswith('calls=') and current in wanted:
        total += int(line.split('=')[1].split()[0])
print(total)
PY
}

# measure NAME PID OUTFILE_PREFIX ADDR: toggles collection on for one wrk (or h2load) run, prints the
# figures.
measure() {
    local name=$1 pid=$2 addr=$3
    local out requests
    if [ "$MODE" = h2 ]; then
        h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -n"$((H2_REQUESTS / 10))" "http://$addr/small" >/dev/null
        callgrind_control -i on "$pid" >/dev/null 2>&1
        out="$(h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -n"$H2_REQUESTS" "http://$addr/small")"
        requests="$(echo "$out" | awk '/^requests:/ {print $8}')"
        echo "$out" | grep -E '^(requests|status codes):' >&2
    else
        wrk -t1 -c"$CONNECTIONS" -d3s "http://$addr/small" >/dev/null
        callgrind_control -i on "$pid" >/dev/null 2>&1
        out="$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" "http://$addr/small")"
        requests="$(echo "$out" | awk '/requests in/ {print $1}')"
    fi
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    local file
    file="$(ls -t "$WORK"/callgrind."$name".* | head -1)"
    if [ -n "${CALLGRIND_KEEP:-}" ]; then
        cp "$file" "$CALLGRIND_KEEP/callgrind.$name.out"
    fi
    local instructions
    instructions="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')"
    local mallocs
    # mimalloc (Rollway's allocator) or the C library's.
    mallocs="$(calls_to "$file" malloc,calloc,realloc,mi_malloc,mi_malloc_aligned,mi_zalloc_aligned,mi_realloc_aligned)"
    local frees
    frees="$(calls_to "$file" free,mi_free)"
    local memcpys
    memcpys="$(calls_to "$file" "__memcpy_avx_unaligned_erms,__memmove_avx_unaligned_erms,memcpy,memmove,__memcpy_sse2_unaligned_erms,__memmove_sse2_unaligned_erms")"
    local label=$name
    [ "$MODE" = h2 ] && label="$name-h2"
    printf "%-10s requests %8s  instr/req %8.0f  malloc+calloc+realloc/req %5.2f  free/req %5.2f  memcpy/req %5.1f\n" \
        "$label" "$requests" "$(echo "$instructions / $requests" | bc -l)" \
        "$(echo "$mallocs / $requests" | bc -l)" "$(echo "$frees / $requests" | bc -l)" \
        "$(echo "$memcpys / $requests" | bc -l)"
}

"$BIN" upstream "$UPSTREAM" & pids+=($!)
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.rollway.%p" \
    "$BIN" proxy "$ROLLWAY" "$UPSTREAM" 1 2>"$WORK/valgrind-rollway.log" & pids+=($!)
rollway_pid=$!

if [ "$MODE" = h2 ]; then
    wait_for "$UPSTREAM"
    wait_for "$ROLLWAY"
    measure rollway "$rollway_pid" "$ROLLWAY"
    exit 0
fi

# nginx: one worker, no master, so the measured process is the one serving.
cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
master_process off;
daemon off;
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
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.nginx.%p" \
    nginx -c "$WORK/nginx.conf" -p "$WORK" 2>"$WORK/valgrind-nginx.log" & pids+=($!)
nginx_pid=$!

wait_for "$UPSTREAM"
wait_for "$ROLLWAY"
wait_for "$NGINX"

measure nginx "$nginx_pid" "$NGINX"
measure rollway "$rollway_pid" "$ROLLWAY"
