#!/usr/bin/env bash
# Counts user-space instructions and malloc calls per small keep-alive request in Rollway's proxy and in
# an nginx worker, each under `valgrind --tool=callgrind`, with the same bounded wrk load. Callgrind counts
# instructions, so other load on the machine does not change the figures (only how long the run takes).
# Instrumentation is switched on only while wrk runs (after a warm-up), so start-up is not counted.
# Usage: bench/proxy/callgrind.sh [DURATION_S] [CONNECTIONS]   (defaults 10 s, 8 connections)
# MODES (default "static deployed") picks the routes measured, each beside an nginx configured alike:
#   static    `bench_proxy proxy` with one route for any host to one upstream (nginx: one server)
#   deployed  `bench_proxy proxy ... deployed`: the route as the agent configures a deployed app (Host
#             route, two instances, a rate limit taking a token per request, an allow list, max_body);
#             two upstream processes; wrk sends `Host: bench.localhost` (nginx: least_conn over the two
#             servers, a server_name and a default 404 server, as bench/proxy/deployed.sh's)
#
# CALLGRIND_ARGS adds valgrind options (e.g. "--cache-sim=yes --branch-sim=yes": the D1/LL miss columns are then
# kept with CALLGRIND_KEEP for callgrind_annotate). WITH_NGINX=0 measures Rollway only. WARMUP_S (3) is the
# unmeasured wrk run before (longer at many connections, so that pools have grown before counting).
# STEADY=1 (HTTP/1): one wrk run, instrumentation on for DURATION_S in its middle, so that no connection
# (client or upstream) is opened in the window (each wrk run opens its own: with few requests per connection
# under callgrind, their set-up weighs on the figures); requests are then counted by the proxy in the window
# (calls to Rollway's `ProxyBody::upstream`, nginx's `ngx_http_create_request`), not by wrk.
# CALLGRIND_MODE=h2: HTTP/2 to the client instead (h2c, prior knowledge, HTTP/1.1 upstream), Rollway only
# (nginx's h2c is not what is compared, and HAProxy does not run well under callgrind): a bounded h2load
# run of H2_REQUESTS (20000) requests over H2_CONNECTIONS (4) connections x H2_STREAMS (50) streams, after
# a warm-up of a tenth of that. Figures are per request, as for HTTP/1. MODES picks the routes as for
# HTTP/1 (default "static" here); `deployed` sends `:authority: bench.localhost`.
# DEMO_APP=path/to/demo-app: the upstreams are the testkit demo app, as bench/proxy/deployed.sh deploys it
# (`/bytes/20`, whose answer carries `x-version` besides), instead of `bench_proxy upstream` (`/small`).
set -euo pipefail

MODE="${CALLGRIND_MODE:-http1}"
read -r -a EXTRA_VALGRIND <<< "${CALLGRIND_ARGS:-}"
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
UPSTREAM_B=127.0.0.1:$((PORT_BASE + 3))
ROLLWAY_DEPLOYED=127.0.0.1:$((PORT_BASE + 4))
NGINX_DEPLOYED=127.0.0.1:$((PORT_BASE + 5))
DEPLOYED_HOST=bench.localhost
if [ "$MODE" = h2 ]; then MODES="${MODES:-static}"; else MODES="${MODES:-static deployed}"; fi
# BROWSER_FIELDS=1: wrk's requests carry 11 more fields, as a browser's do (12 with Host), so that a change
# to head handling is measured on a real request too, not only on wrk's one field.
EXTRA_FIELDS=()
if [ -n "${BROWSER_FIELDS:-}" ]; then
    EXTRA_FIELDS=(
        -H "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
        -H "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
        -H "Accept-Language: en-GB,en;q=0.5"
        -H "Accept-Encoding: gzip, deflate, br, zstd"
        -H "Referer: http://bench.localhost/index.html"
        -H "Cookie: session=7f3a9c2e1b4d5f6a8b9c0d1e2f3a4b5c; theme=dark; consent=1"
        -H "Upgrade-Insecure-Requests: 1"
        -H "Sec-Fetch-Dest: document"
        -H "Sec-Fetch-Mode: navigate"
        -H "Sec-Fetch-Site: same-origin"
        -H "Priority: u=0, i"
    )
fi

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null || ! command -v valgrind >/dev/null \
    || ! command -v h2load >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q nginx wrk valgrind nghttp2-client
fi

URL_PATH=/small
if [ -n "${DEMO_APP:-}" ]; then URL_PATH=/bytes/20; fi

# BENCH_PROXY_BIN measures another build (e.g. a copy of an earlier commit's) instead.
. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    # valgrind writes its last dump as it exits: let it finish before the directory goes.
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

wait_for() { # ADDR [HOST]
    for _ in $(seq 1 300); do
        curl -sf -H "Host: ${2:-bench}" "http://$1$URL_PATH" >/dev/null 2>&1 && return 0
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

# start_upstream ADDR: bench_proxy's upstream (`/small`: 20 bytes, `content-length` and `date`), or with
# DEMO_APP the testkit demo app that bench/proxy/deployed.sh deploys (`/bytes/20`: the same body, and
# `x-version` besides).
start_upstream() {
    if [ -n "${DEMO_APP:-}" ]; then
        PORT="${1##*:}" VERSION=v0 "$DEMO_APP" >/dev/null & pids+=($!)
    else
        "$BIN" upstream "$1" & pids+=($!)
    fi
    wait_for "$1"
}

# measure NAME PID ADDR [HOST]: toggles collection on for one wrk (or h2load) run, prints the figures.
measure() {
    local name=$1 pid=$2 addr=$3 host=${4:-bench}
    local out requests
    if [ "$MODE" = h2 ]; then
        local authority=()
        if [ "$host" != bench ]; then authority=(-H ":authority: $host"); fi
        h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -n"$((H2_REQUESTS / 10))" "${authority[@]}" "http://$addr$URL_PATH" >/dev/null
        callgrind_control -i on "$pid" >/dev/null 2>&1
        out="$(h2load -c"$H2_CONNECTIONS" -m"$H2_STREAMS" -n"$H2_REQUESTS" "${authority[@]}" "http://$addr$URL_PATH")"
        requests="$(echo "$out" | awk '/^requests:/ {print $8}')"
        echo "$out" | grep -E '^(requests|status codes):' >&2
        name="$name-h2"
    else
        if [ -n "${STEADY:-}" ]; then
            # One wrk run, counted in its middle: the same connections (client and upstream) throughout.
            wrk -t1 -c"$CONNECTIONS" -d"$((${WARMUP_S:-3} + DURATION + 3))s" -H "Host: $host" "${EXTRA_FIELDS[@]}" \
                "http://$addr$URL_PATH" >/dev/null &
            local wrk_pid=$!
            sleep "${WARMUP_S:-3}"
            callgrind_control -i on "$pid" >/dev/null 2>&1
            sleep "$DURATION"
        else
            wrk -t1 -c"$CONNECTIONS" -d"${WARMUP_S:-3}s" -H "Host: $host" "${EXTRA_FIELDS[@]}" "http://$addr$URL_PATH" >/dev/null
            callgrind_control -i on "$pid" >/dev/null 2>&1
            out="$(wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -H "Host: $host" "${EXTRA_FIELDS[@]}" "http://$addr$URL_PATH")"
            requests="$(echo "$out" | awk '/requests in/ {print $1}')"
        fi
    fi
    callgrind_control -i off "$pid" >/dev/null 2>&1
    callgrind_control -d "$pid" >/dev/null 2>&1
    sleep 1
    local file
    file="$(ls -t "$WORK"/callgrind."${name%-h2}".* | head -1)"
    if [ -n "${STEADY:-}" ] && [ "$MODE" != h2 ]; then
        wait "$wrk_pid" || true
        # Requests counted by the proxy itself in the window: Rollway's answers taken from an upstream,
        # nginx's requests made (one per request, keep-alive or not).
        requests="$(calls_to "$file" proxy::body::ProxyBody::upstream,ngx_http_create_request)"
    fi
    if [ -n "${CALLGRIND_KEEP:-}" ]; then
        cp "$file" "$CALLGRIND_KEEP/callgrind.$name.out"
    fi
    local instructions
    instructions="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')"
    local mallocs
    # C's allocator entry points (nginx) and mimalloc's (Rollway's allocator, `proxy::memory`). Not Rust's
    # `__rust_alloc`: a release build with LTO inlines it into its callers.
    mallocs="$(calls_to "$file" malloc,calloc,realloc,mi_malloc,mi_zalloc,mi_realloc,mi_malloc_aligned,mi_zalloc_aligned,mi_realloc_aligned)"
    local frees
    frees="$(calls_to "$file" free,mi_free)"
    local memcpys
    memcpys="$(calls_to "$file" "__memcpy_avx_unaligned_erms,__memmove_avx_unaligned_erms,memcpy,memmove,__memcpy_sse2_unaligned_erms,__memmove_sse2_unaligned_erms")"
    printf "%-16s requests %8s  instr/req %8.0f  allocations/req %5.2f  frees/req %5.2f  memcpy/req %5.1f\n" \
        "$name" "$requests" "$(echo "$instructions / $requests" | bc -l)" \
        "$(echo "$mallocs / $requests" | bc -l)" "$(echo "$frees / $requests" | bc -l)" \
        "$(echo "$memcpys / $requests" | bc -l)"
}

start_upstream "$UPSTREAM"

if [ "$MODE" = h2 ]; then
    for mode in $MODES; do
        case "$mode" in
            static) suffix="" addr=$ROLLWAY host=bench args=("$ROLLWAY" "$UPSTREAM" 1) ;;
            deployed)
                start_upstream "$UPSTREAM_B"
                suffix="-deployed" addr=$ROLLWAY_DEPLOYED host=$DEPLOYED_HOST
                args=("$ROLLWAY_DEPLOYED" "$UPSTREAM,$UPSTREAM_B" 1 http1 deployed)
                ;;
            *) echo "unknown mode $mode" >&2; exit 2 ;;
        esac
        valgrind --tool=callgrind "${EXTRA_VALGRIND[@]}" --instr-atstart=no --callgrind-out-file="$WORK/callgrind.rollway$suffix.%p" \
            "$BIN" proxy "${args[@]}" 2>"$WORK/valgrind-rollway$suffix.log" & pids+=($!)
        rollway_pid=$!
        wait_for "$addr" "$host"
        measure "rollway$suffix" "$rollway_pid" "$addr" "$host"
    done
    exit 0
fi

# nginx_conf FILE LISTEN SERVERS...: one worker, no master, so the measured process is the one serving.
# With one server it is the static setup; with more, the deployed one (least_conn, a server_name and a
# default 404 server).
nginx_conf() {
    local file=$1 listen=$2
    shift 2
    local servers="" server
    for server in "$@"; do servers="$servers server $server;"; done
    local balance="" name="" default=""
    if [ "$#" -gt 1 ]; then
        balance="least_conn;"
        name="server_name $DEPLOYED_HOST;"
        default="server { listen $listen default_server; return 404; }"
    fi
    cat > "$file" <<NGINX
worker_processes 1;
master_process off;
daemon off;
pid $file.pid;
error_log $WORK/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    upstream app { $balance $servers keepalive 64; }
    server {
        listen $listen;
        $name
        client_max_body_size 2m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
        }
    }
    $default
}
NGINX
}

# measure_mode MODE: starts Rollway's proxy and nginx for MODE under callgrind, measures both.
measure_mode() {
    local mode=$1 rollway_addr nginx_addr host suffix args
    case "$mode" in
        static)
            rollway_addr=$ROLLWAY nginx_addr=$NGINX host=bench suffix=""
            args=("$ROLLWAY" "$UPSTREAM" 1)
            nginx_conf "$WORK/nginx-$mode.conf" "$NGINX" "$UPSTREAM"
            ;;
        deployed)
            rollway_addr=$ROLLWAY_DEPLOYED nginx_addr=$NGINX_DEPLOYED host=$DEPLOYED_HOST suffix="-deployed"
            args=("$ROLLWAY_DEPLOYED" "$UPSTREAM,$UPSTREAM_B" 1 http1 deployed)
            nginx_conf "$WORK/nginx-$mode.conf" "$NGINX_DEPLOYED" "$UPSTREAM" "$UPSTREAM_B"
            ;;
        *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    valgrind --tool=callgrind "${EXTRA_VALGRIND[@]}" --instr-atstart=no --callgrind-out-file="$WORK/callgrind.rollway$suffix.%p" \
        "$BIN" proxy "${args[@]}" 2>"$WORK/valgrind-rollway$suffix.log" & pids+=($!)
    local rollway_pid=$!
    wait_for "$rollway_addr" "$host"
    if [ "${WITH_NGINX:-1}" != 0 ]; then
        valgrind --tool=callgrind "${EXTRA_VALGRIND[@]}" --instr-atstart=no --callgrind-out-file="$WORK/callgrind.nginx$suffix.%p" \
            nginx -c "$WORK/nginx-$mode.conf" -p "$WORK" 2>"$WORK/valgrind-nginx$suffix.log" & pids+=($!)
        local nginx_pid=$!
        wait_for "$nginx_addr" "$host"
        measure "nginx$suffix" "$nginx_pid" "$nginx_addr" "$host"
    fi
    measure "rollway$suffix" "$rollway_pid" "$rollway_addr" "$host"
}

for mode in $MODES; do
    if [ "$mode" = deployed ] && [ -z "${upstream_b_started:-}" ]; then
        start_upstream "$UPSTREAM_B"
        upstream_b_started=1
    fi
    measure_mode "$mode"
done
