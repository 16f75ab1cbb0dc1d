#!/usr/bin/env bash
# Issue 20: Rollway's proxy as users run it (a real `rollway agent`, an app of two instances deployed
# with `rollway deploy`, a Host route with every per-release feature on) beside nginx and HAProxy in
# front of the SAME two instance ports. Each proxy runs in its own session; targets are alternated
# (the order rotates every round) over ROUNDS rounds; every row records the 1-minute load average.
#
# Scenarios (HTTP/1.1 with wrk, the Host header set; h2c with h2load):
#   ka64, ka512   keep-alive, 20-byte answers, 64 and 512 connections
#   close         a new connection per request (Connection: close), 64 connections
#   64k, 1m       keep-alive, 64 KiB and 1 MiB answers, 64 connections
#   post1m        keep-alive, 1 MiB request bodies (20-byte answers), 64 connections
#   h2c           HTTP/2 prior knowledge, H2C_CONNECTIONS connections x 100 streams each
#   idle          5,000 idle keep-alive connections (each made one request), the proxy's RSS
#   switch        per-second req/s of a keep-alive wrk run (64 connections) while the traffic switches:
#                 Rollway: `rollway deploy` of a new release; nginx: a reload (SIGHUP); HAProxy: a
#                 reload (SIGUSR2 to its master)
#   still         the switch run with nothing done at the trigger: the same "lowest second after the
#                 trigger over the median second before it" of a steady load, i.e. how low that ratio goes
#                 on this machine when nothing switches (the floor the switch goal is measured against)
#   pswitch, pstill   the same two under an open-loop load instead of wrk's closed loop: PACED_RATE
#                 requests a second (default 10000) over 64 keep-alive connections, each request sent
#                 when it is due whatever happened to the one before (`bench_proxy paced-clients`,
#                 bench/proxy/paced.py), latency counted from when it was due. At a rate the machine
#                 serves with room, fewer answers in a second means requests held up, not CPU taken
#                 by the deploy's own work; the p99 and max columns say how long they were held
# For each run: req/s, p99, the proxy's CPU per request (user and system apart, from /proc/PID/stat of
# the proxy and its child processes) and its RSS (VmRSS summed the same way).
#
# Usage: bench/proxy/deployed.sh [DURATION_S] [ROUNDS]   (defaults 8 and 3)
# Environment: SCENARIOS (default all but pswitch/pstill, e.g. "ka64 h2c idle"), H2C_CONNECTIONS (default 8),
#   PACED_RATE (pswitch/pstill: requests a second, default 10000), PACED_CLIENT (a built `bench_proxy` for
#   them; unset: built here),
#   IDLE_CONNECTIONS (default 5000), SMAPS (set: the idle run also keeps /proc/PID/smaps of each of
#   the proxy's processes before, 3 s after and 6 s after, in OUT as smaps-ROUND-TARGET-WHEN-PID), OUT (keep the results here; default a temp dir, printed),
#   CARGO_TARGET_DIR (as cargo reads it), ROLLWAY_BIN (a built `rollway` to measure, `demo-app` beside
#   it), RW_PROXY_PRIORITY (`raised`, the default: as the agent
#   starts it; `agent`: reset to the agent's priority after start, the proxy as before the priority
#   fallback of docs/proxy.md), NEW_ARTIFACT (set: each deploy ships a new artifact, unpacked by the
#   agent, as a code change does; unset: only the env changes and the unpacked release is reused),
#   TARGETS (default "rollway nginx haproxy"; e.g. "rollway" alone), SLOW_START (the route's
#   `slow_start`, e.g. "0s" for a switch at once; unset: the manifest's default), HEALTH_PATH (the
#   service's health path, default /health; the agent's warm GETs it too: /bytes/1 makes each new
#   instance fill the demo app's 16 MiB answer buffer at its first health check, before the switch).
# The switch run also writes the answers per 100 ms (OUT/per100-ROUND-TARGET.txt, bench/proxy/per100.py):
#   a dip shorter than a second shows there, not in the per-second rate.
# Priority: where no cgroup weights it (this machine: no systemd, cpu controller on cgroup v1), the
# agent starts its proxy at nice -5, its session's autogroup too; nginx and HAProxy get the same
# priority as Rollway's proxy has (their processes and their sessions' autogroups), so all three
# compete on the same terms. The switch run's wrk leads a session of its own, so that the deploy's
# own work (CLI, agent, new instances, all in this script's session) does not slow the load generator
# (a client on another machine would not share it) and the dip measured is the proxy's and the apps'.
# Installs nginx, haproxy, wrk, nghttp2-client (h2load), jq, curl, python3 from Debian when missing.
# Every server binds 127.0.0.1; every loop is bounded in count and time; on exit every process this
# run started is killed by pid (never by name).
set -euo pipefail

DURATION="${1:-8}"
ROUNDS="${2:-3}"
SCENARIOS="${SCENARIOS:-ka64 ka512 close 64k 1m post1m h2c idle switch}"
H2C_CONNECTIONS="${H2C_CONNECTIONS:-8}"
IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-5000}"
HOST=bench.localhost
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"

missing=()
for tool in nginx:nginx haproxy:haproxy wrk:wrk h2load:nghttp2-client jq:jq curl:curl python3:python3; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi
# The packages start their own services on some systems; this run never uses them.

# ROLLWAY_BIN measures another build of `rollway` (e.g. a copy of an earlier commit's, for a before and
# after in one session); the demo app is then taken from beside it (`demo-app`).
if [ -n "${ROLLWAY_BIN:-}" ]; then
    RW="$ROLLWAY_BIN"
    DEMO="$(dirname "$ROLLWAY_BIN")/demo-app"
else
    cargo build --release -p rollway -p testkit --manifest-path "$ROOT/Cargo.toml"
    TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | jq -r .target_directory)"
    RW="$TARGET_DIR/release/rollway"
    DEMO="$TARGET_DIR/release/demo-app"
fi
# The open-loop client of pswitch/pstill: PACED_CLIENT, or bench_proxy built here.
PACED_RATE="${PACED_RATE:-10000}"
case " ${SCENARIOS:-} " in
    *" pswitch "* | *" pstill "*)
        if [ -z "${PACED_CLIENT:-}" ]; then
            cargo build --release -p proxy --example bench_proxy --manifest-path "$ROOT/Cargo.toml"
            PACED_CLIENT="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | jq -r .target_directory)/release/examples/bench_proxy"
        fi
        ;;
esac

# 5,000 client sockets plus as many on the proxy's side: as many descriptors as this shell may have
# (the hard limit; HAProxy's maxconn below is sized to fit 20,000).
ulimit -n "$(ulimit -Hn)"
FD_LIMIT="$(ulimit -n)"

WORK="$(mktemp -d /tmp/rollway-bench-deployed.XXXXXX)"
STATE="$WORK/state"
APP="$WORK/app"
OUT="${OUT:-$WORK/out}"
mkdir -p "$STATE" "$APP" "$OUT"
chmod 755 "$WORK"

# ---------------------------------------------------------------------------------------------
# Cleanup, as bench/deploy/run.sh: the agent, then the proxy and the instances (which outlive an
# agent on purpose), each only after checking that it runs inside this run's state directory or the
# apps' folder beside it (where instances run); then
# nginx and HAProxy by the pids this script started.

AGENT_PID=""
NGINX_PID=""
HAPROXY_PID=""
BG_PIDS=()

in_state_dir() { # PID: runs in the state directory or in the apps' folder beside it (`<state>-apps`)
    local cwd
    cwd="$(readlink "/proc/$1/cwd" 2>/dev/null)" || return 1
    cwd="${cwd% (deleted)}"
    [[ "$cwd" == "$STATE" || "$cwd" == "$STATE"/* || "$cwd" == "$STATE-apps"/* ]]
}

kill_in_state_dir() { # PID: its process group if it leads one, and itself
    local pid="$1" pgid
    in_state_dir "$pid" || return 0
    pgid="$(awk '{print $5}' "/proc/$pid/stat" 2>/dev/null || true)"
    if [ "$pgid" = "$pid" ] && [ "$pgid" != "$(ps -o pgid= $$ | tr -d ' ')" ]; then
        kill -KILL -- "-$pgid" 2>/dev/null || true
    fi
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    set +e
    for pid in "${BG_PIDS[@]}"; do kill "$pid" 2>/dev/null; done
    [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null
    [ -n "$HAPROXY_PID" ] && kill -USR1 "$HAPROXY_PID" 2>/dev/null
    if [ -n "$AGENT_PID" ]; then
        kill -TERM "$AGENT_PID" 2>/dev/null
        for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$AGENT_PID" 2>/dev/null
        wait "$AGENT_PID" 2>/dev/null
    fi
    for file in "$STATE"/instances/*/pid "$STATE"/proxy/proxy.pid; do
        [ -f "$file" ] || continue
        kill_in_state_dir "$(awk '{print $1; exit}' "$file")"
    done
    for dir in /proc/[0-9]*; do
        kill_in_state_dir "${dir#/proc/}"
    done
    sleep 0.5
    [ -n "$NGINX_PID" ] && kill -KILL "$NGINX_PID" 2>/dev/null
    [ -n "$HAPROXY_PID" ] && kill -KILL "$HAPROXY_PID" 2>/dev/null
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status); agent log tail:" >&2
        tail -n 30 "$WORK/agent.log" >&2 2>/dev/null
    fi
    cp "$WORK/agent.log" "$OUT/agent.log" 2>/dev/null
    [ "$OUT" = "$WORK/out" ] && cp -r "$OUT" "/tmp/rollway-bench-deployed-last" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
API_PORT="$(free_port)"
ports=()
while [ "${#ports[@]}" -lt 6 ]; do
    p="$(free_port)"
    [[ " $API_PORT ${ports[*]} " == *" $p "* ]] || ports+=("$p")
done
RW_PORT="${ports[0]}"
NGINX_PORT="${ports[1]}"
NGINX_H2C_PORT="${ports[2]}"
HAPROXY_PORT="${ports[3]}"
# Rollway's proxy's /metrics (not on the data path): the client connections of each worker, read
# halfway through every Rollway run (the note column, e.g. `workers 32/32`).
RW_METRICS_PORT="${ports[5]}"
HAPROXY_H2C_PORT="${ports[4]}"
API="http://127.0.0.1:$API_PORT"

# ---------------------------------------------------------------------------------------------
# The app: the testkit demo app (HTTP/1.1 + h2c; `/bytes/N` answers N bytes after reading any
# request body), two instances, a Host route with every per-release feature on: the route's edge
# controls (a rate limit that is never reached and an allow list, so each request goes through
# both), analysis armed after each switch, per-release statistics (always kept by the proxy).

cp "$DEMO" "$APP/demo-app"
cat > "$APP/rollway.toml" <<TOML
[app]
name = "bench"

[services.web]
run = "./demo-app"
replicas = 2
health = { path = "${HEALTH_PATH:-/health}", interval = "200ms", healthy = 2 }
drain = "5s"

[env]
VERSION = "v0"

[strategy]
kind = "blue-green"

[routes.web]
hosts = ["$HOST"]
max_body = "2MiB"
rate_limit = { per_ip = "1000000/s", burst = 1000000 }
allow = ["127.0.0.0/8"]
${SLOW_START:+slow_start = \"$SLOW_START\"}

[analysis]
observe = "10s"
TOML

(cd "$STATE" && exec "$RW" agent --state "$STATE" --api "127.0.0.1:$API_PORT" --proxy "127.0.0.1:$RW_PORT" \
    --proxy-metrics "127.0.0.1:$RW_METRICS_PORT") \
    >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
    [ -s "$STATE/admin.token" ] && curl -sf "$API/healthz" >/dev/null 2>&1 && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited" >&2; exit 1; }
    sleep 0.1
done
ROLLWAY_TOKEN="$(cat "$STATE/admin.token")"
export ROLLWAY_TOKEN NO_COLOR=1
RW_PID="$(awk '{print $1; exit}' "$STATE/proxy/proxy.pid")"

VERSION_N=0
deploy() {
    sed -i "s/^VERSION = .*/VERSION = \"v$VERSION_N\"/" "$APP/rollway.toml"
    # NEW_ARTIFACT=1: every deploy ships a new artifact (as a code change does), which the agent
    # stores and unpacks; without it only the env changes and the unpacked release is reused.
    if [ -n "${NEW_ARTIFACT:-}" ]; then echo "$VERSION_N" >"$APP/release.txt"; fi
    "$RW" deploy --env production --dir "$APP" --agent "$API" >>"$WORK/deploy.log" 2>&1
}
deploy
got="$(curl -sf -H "Host: $HOST" "http://127.0.0.1:$RW_PORT/" || true)"
[ "$got" = "v0" ] || { echo "expected the deployed app to answer v0 through the proxy, got '$got'" >&2; exit 1; }

serving_ports() {
    "$RW" status --env production --app bench --agent "$API" --json |
        jq -r '.instances[] | select(.state == "serving") | .port' | sort -n
}

# ---------------------------------------------------------------------------------------------
# nginx and HAProxy, configured the way their users configure a keep-alive reverse proxy in front of
# two instances: least connections, a keep-alive pool to the instances, the Host route, X-Forwarded-*
# set, no access log; streaming both ways (no request or answer buffering), as Rollway and HAProxy
# do. Each in its own session (setsid), in the foreground so this script holds its master's pid.

write_configs() { # PORT_A PORT_B
    cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
worker_rlimit_nofile $FD_LIMIT;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-body;
    proxy_temp_path $WORK/nginx-proxy;
    keepalive_timeout 75s;
    keepalive_requests 1000000;
    upstream app {
        least_conn;
        server 127.0.0.1:$1;
        server 127.0.0.1:$2;
        keepalive 512;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        listen 127.0.0.1:$NGINX_H2C_PORT http2;
        server_name $HOST;
        client_max_body_size 2m;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
    server {
        listen 127.0.0.1:$NGINX_PORT default_server;
        listen 127.0.0.1:$NGINX_H2C_PORT http2 default_server;
        return 404;
    }
}
NGINX
    cat > "$WORK/haproxy.cfg" <<HAPROXY
global
    maxconn 8000
    pidfile $WORK/haproxy.pid
defaults
    mode http
    timeout connect 2s
    timeout client 75s
    timeout server 60s
    timeout http-keep-alive 75s
    option forwardfor
frontend web
    bind 127.0.0.1:$HAPROXY_PORT
    bind 127.0.0.1:$HAPROXY_H2C_PORT proto h2
    http-request set-header X-Forwarded-Proto http
    use_backend app if { hdr(host),field(1,:) -i $HOST }
backend app
    balance leastconn
    server a 127.0.0.1:$1
    server b 127.0.0.1:$2
HAPROXY
}

read -r PORT_A PORT_B < <(serving_ports | tr '\n' ' '; echo)
write_configs "$PORT_A" "$PORT_B"
setsid nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
NGINX_PID=$!
# Master-worker mode (-W), so that a reload is one signal, as systemd's unit does it.
setsid haproxy -W -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
HAPROXY_PID=$!

for addr in "$RW_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
    for _ in $(seq 1 100); do
        curl -sf -H "Host: $HOST" "http://127.0.0.1:$addr/bytes/20" >/dev/null 2>&1 && break
        sleep 0.1
    done
    curl -sf -H "Host: $HOST" "http://127.0.0.1:$addr/bytes/20" >/dev/null ||
        { echo "nothing answers on 127.0.0.1:$addr" >&2; exit 1; }
done
for pid in "$RW_PID" "$NGINX_PID" "$HAPROXY_PID"; do
    [ "$(ps -o sid= -p "$pid" | tr -d ' ')" = "$pid" ] ||
        { echo "pid $pid does not lead its own session" >&2; exit 1; }
done

# The scheduling priority of every process of session SID (each leads its own) and of the session's
# autogroup, when the kernel has them.
set_priority() { # SID NICE
    local pid
    for pid in $(ps -o pid= -s "$1"); do
        for task in /proc/"$pid"/task/*; do renice -n "$2" -p "${task##*/}" >/dev/null 2>&1 || true; done
    done
    [ -w "/proc/$1/autogroup" ] && { echo "$2" >"/proc/$1/autogroup" 2>/dev/null || true; }
}
autogroup_nice() { awk '{print $NF}' "/proc/$1/autogroup" 2>/dev/null || echo "-"; }
if [ "${RW_PROXY_PRIORITY:-raised}" = agent ]; then
    set_priority "$RW_PID" "$(ps -o ni= -p "$$" | tr -d ' ')"
fi
RW_NICE="$(ps -o ni= -p "$RW_PID" | tr -d ' ')"
set_priority "$NGINX_PID" "$RW_NICE"
set_priority "$HAPROXY_PID" "$RW_NICE"
for pid in "$RW_PID" "$NGINX_PID" "$HAPROXY_PID"; do
    echo "pid $pid: nice $(ps -o ni= -p "$pid" | tr -d ' '), autogroup nice $(autogroup_nice "$pid")"
done

reload_peers() { # after a Rollway switch: nginx and HAProxy follow the serving instances
    read -r PORT_A PORT_B < <(serving_ports | tr '\n' ' '; echo)
    write_configs "$PORT_A" "$PORT_B"
    kill -HUP "$NGINX_PID"
    kill -USR2 "$HAPROXY_PID"
    sleep 2
}

# ---------------------------------------------------------------------------------------------
# Measuring.

# The proxy's processes: the pid and its children (nginx and HAProxy workers).
procs() { echo "$1"; ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' '; }
# user and system CPU ticks summed over the processes (fields 14 and 15 of /proc/PID/stat).
cpu_ticks() {
    local pid
    for pid in $(procs "$1"); do
        sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}'
    done | awk '{u += $1; s += $2} END {print u + 0, s + 0}'
}
rss_kb() {
    local pid
    for pid in $(procs "$1"); do awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null; done |
        awk '{k += $1} END {print k + 0}'
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))
load1() { cut -d' ' -f1 /proc/loadavg; }
to_ms() { # wrk latency (123.45us, 1.23ms, 1.02s) -> ms
    awk -v v="$1" 'BEGIN {
        if (v ~ /us$/) { sub(/us$/, "", v); print v / 1000 }
        else if (v ~ /ms$/) { sub(/ms$/, "", v); print v + 0 }
        else if (v ~ /m$/) { sub(/m$/, "", v); print v * 60000 }
        else if (v ~ /s$/) { sub(/s$/, "", v); print v * 1000 }
        else print "nan" }'
}

target_port() { # TARGET [h2c]
    case "$1:${2:-}" in
        rollway:*) echo "$RW_PORT" ;;
        nginx:h2c) echo "$NGINX_H2C_PORT" ;;
        nginx:) echo "$NGINX_PORT" ;;
        haproxy:h2c) echo "$HAPROXY_H2C_PORT" ;;
        haproxy:) echo "$HAPROXY_PORT" ;;
    esac
}
target_pid() {
    case "$1" in rollway) echo "$RW_PID" ;; nginx) echo "$NGINX_PID" ;; haproxy) echo "$HAPROXY_PID" ;; esac
}

cat > "$WORK/post1m.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("y", 1048576)
wrk.headers["Content-Type"] = "application/octet-stream"
LUA
# Per-second count of 2xx answers and of others, per thread, merged at the end.
# Per wall-clock second (PERSEC_FILE: "second ok bad") and per 100 ms (PERSEC_FILE.100ms: "tenth ok
# bad", tenths of a second since the epoch, from clock_gettime through LuaJIT's ffi): the per-second rate
# cannot show the shape of a dip shorter than a second.
cat > "$WORK/persec.lua" <<'LUA'
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } persec_timespec;
int clock_gettime(int clk_id, persec_timespec *tp);
]]
local ts = ffi.new("persec_timespec")
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = {}; bad = {}; ok100 = {}; bad100 = {} end
function response(status, headers, body)
    ffi.C.clock_gettime(0, ts)
    local s = tonumber(ts.tv_sec)
    local t = s * 10 + math.floor(tonumber(ts.tv_nsec) / 100000000)
    if status >= 200 and status < 300 then
        ok[s] = (ok[s] or 0) + 1; ok100[t] = (ok100[t] or 0) + 1
    else
        bad[s] = (bad[s] or 0) + 1; bad100[t] = (bad100[t] or 0) + 1
    end
end
local function write(path, okname, badname)
    local all_ok, all_bad = {}, {}
    for _, t in ipairs(threads) do
        for s, n in pairs(t:get(okname)) do all_ok[s] = (all_ok[s] or 0) + n end
        for s, n in pairs(t:get(badname)) do all_bad[s] = (all_bad[s] or 0) + n end
    end
    local f = io.open(path, "w")
    for s, n in pairs(all_ok) do f:write(s, " ", n, " ", all_bad[s] or 0, "\n") end
    for s, n in pairs(all_bad) do if not all_ok[s] then f:write(s, " 0 ", n, "\n") end end
    f:close()
end
function done(summary, latency, requests)
    write(os.getenv("PERSEC_FILE"), "ok", "bad")
    write(os.getenv("PERSEC_FILE") .. ".100ms", "ok100", "bad100")
end
LUA

RESULTS="$OUT/results.tsv"
printf "round\tscenario\ttarget\treq_s\tp99_ms\tcpu_user_us_req\tcpu_sys_us_req\trss_mb\tload1\terrors\tnote\n" >"$RESULTS"
record() { # ROUND SCENARIO TARGET RPS P99 USER_US SYS_US RSS_MB LOAD ERRORS NOTE
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$@" | tee -a "$RESULTS"
}

workers_at() { # TARGET DELAY_S FILE: Rollway's client connections per worker, DELAY_S into a run
    rm -f "$3"
    WORKERS_PID=""
    [ "$1" = rollway ] || return 0
    (sleep "$2"; curl -sf --max-time 2 "http://127.0.0.1:$RW_METRICS_PORT/metrics" |
        awk '/^rollway_proxy_worker_connections/ {printf "%s%s", sep, $2; sep = "/"}' >"$3") &
    WORKERS_PID="$!"
    BG_PIDS+=("$WORKERS_PID")
}
workers_note() { # FILE
    [ -s "$1" ] && echo "workers $(cat "$1")" || true
}

wrk_run() { # ROUND SCENARIO TARGET CONNECTIONS PATH [wrk args...]
    local round="$1" scenario="$2" target="$3" conns="$4" path="$5"
    shift 5
    local port pid url out before after requests rps p99 errors load
    port="$(target_port "$target")"
    pid="$(target_pid "$target")"
    url="http://127.0.0.1:$port$path"
    wrk -t2 -c"$conns" -d2s -H "Host: $HOST" "$@" "$url" >/dev/null 2>&1 || true
    load="$(load1)"
    before="$(cpu_ticks "$pid")"
    workers_at "$target" "$((DURATION / 2))" "$WORK/workers"
    out="$(wrk -t2 -c"$conns" -d"${DURATION}s" --timeout 10s --latency -H "Host: $HOST" "$@" "$url" 2>&1)" || true
    after="$(cpu_ticks "$pid")"
    [ -z "$WORKERS_PID" ] || wait "$WORKERS_PID" 2>/dev/null || true
    echo "$out" >"$OUT/wrk-$round-$scenario-$target.txt"
    requests="$(echo "$out" | awk '/requests in/ {print $1; exit}')"
    rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
    p99="$(to_ms "$(echo "$out" | awk '$1 == "99%" {print $2}')")"
    errors="$(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i} END {print n + 0}')"
    read -r bu bs <<<"$before"
    read -r au as <<<"$after"
    record "$round" "$scenario" "$target" "${rps:-0}" "$p99" \
        "$(awk -v d="$((au - bu))" -v n="${requests:-0}" -v t="$TICK_US" 'BEGIN {printf "%.1f", n ? d * t / n : 0}')" \
        "$(awk -v d="$((as - bs))" -v n="${requests:-0}" -v t="$TICK_US" 'BEGIN {printf "%.1f", n ? d * t / n : 0}')" \
        "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')" "$load" "$errors" \
        "$(workers_note "$WORK/workers")"
}

h2c_run() { # ROUND TARGET
    local round="$1" target="$2" port pid before after load log requests rps p99 errors
    port="$(target_port "$target" h2c)"
    pid="$(target_pid "$target")"
    log="$WORK/h2load-$target.log"
    local args=(-c"$H2C_CONNECTIONS" -m100 -t2 -H ":authority: $HOST" "http://127.0.0.1:$port/bytes/20")
    timeout 30 h2load -D2 "${args[@]}" >/dev/null 2>&1 || true
    load="$(load1)"
    before="$(cpu_ticks "$pid")"
    workers_at "$target" "$((DURATION / 2))" "$WORK/workers"
    out="$(timeout $((DURATION + 30)) h2load -D"$DURATION" --log-file="$log" "${args[@]}" 2>&1)" || true
    after="$(cpu_ticks "$pid")"
    [ -z "$WORKERS_PID" ] || wait "$WORKERS_PID" 2>/dev/null || true
    echo "$out" >"$OUT/h2load-$round-$target.txt"
    requests="$(echo "$out" | awk '/^requests:/ {print $8; exit}')"   # succeeded
    rps="$(echo "$out" | awk '/^finished in/ {print $4; exit}')"
    errors="$(echo "$out" | awk '/^requests:/ {print $10 + $12; exit}')" # failed + errored
    p99="$(awk -F'\t' '{print $3}' "$log" | sort -n | awk '{v[NR] = $1} END {r = int(0.99 * NR); if (r < 0.99 * NR) r++; if (NR) printf "%.2f", v[r] / 1000; else print "nan"}')"
    rm -f "$log"
    read -r bu bs <<<"$before"
    read -r au as <<<"$after"
    record "$round" h2c "$target" "${rps:-0}" "$p99" \
        "$(awk -v d="$((au - bu))" -v n="${requests:-0}" -v t="$TICK_US" 'BEGIN {printf "%.1f", n ? d * t / n : 0}')" \
        "$(awk -v d="$((as - bs))" -v n="${requests:-0}" -v t="$TICK_US" 'BEGIN {printf "%.1f", n ? d * t / n : 0}')" \
        "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')" "$load" "${errors:-0}" \
        "$(workers_note "$WORK/workers")"
}

# IDLE_CONNECTIONS keep-alive connections, each makes one request and reads its answer, then all
# stay idle; the proxy's RSS (summed over its processes) is read before and 3 s after. Bounded: 60 s
# to open and use them all, then they are closed.
cat > "$WORK/idle.py" <<'PY'
import selectors, socket, sys, time
port, host, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
request = f"GET /bytes/20 HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
deadline = time.monotonic() + 60
sel = selectors.DefaultSelector()
socks, done = [], 0
for i in range(n):
    s = socket.socket()
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_WRITE, [b""])
    socks.append(s)
    if i % 200 == 199:  # do not flood the accept queue
        time.sleep(0.01)
while done < n and time.monotonic() < deadline:
    for key, events in sel.select(timeout=1):
        s = key.fileobj
        if events & selectors.EVENT_WRITE:
            try:
                s.send(request)
            except OSError:
                sel.unregister(s); done += 1; key.data.append("err")
                continue
            sel.modify(s, selectors.EVENT_READ, key.data)
        else:
            try:
                chunk = s.recv(4096)
            except OSError:
                chunk = b""
            key.data[0] += chunk
            if not chunk or key.data[0].endswith(b"x" * 20):
                if not chunk:
                    key.data.append("closed")
                sel.unregister(s); done += 1
print(f"answered {done} of {n}", flush=True)
sys.stdout.flush()
sys.stdin.readline()  # the caller reads the RSS, then tells us to close
for s in socks:
    s.close()
PY

keep_smaps() { # ROUND TARGET WHEN PID: with SMAPS set, each of the proxy's processes' mappings
    [ -n "${SMAPS:-}" ] || return 0
    local p
    for p in $(procs "$4"); do cat "/proc/$p/smaps" >"$OUT/smaps-$1-$2-$3-$p" 2>/dev/null || true; done
}

idle_run() { # ROUND TARGET
    local round="$1" target="$2" port pid before after load
    port="$(target_port "$target")"
    pid="$(target_pid "$target")"
    load="$(load1)"
    before="$(rss_kb "$pid")"
    keep_smaps "$round" "$target" before "$pid"
    coproc IDLE { timeout 90 python3 "$WORK/idle.py" "$port" "$HOST" "$IDLE_CONNECTIONS" 2>&1; }
    local line=""
    read -r -t 80 line <&"${IDLE[0]}" || true
    sleep 3
    after="$(rss_kb "$pid")"
    keep_smaps "$round" "$target" 3s "$pid"
    local established sockets later
    established="$(ss -Htn state established "( sport = :$port )" | wc -l)"
    # The proxy's other established connections (to the instances; for Rollway also the agent's).
    sockets="$(ss -Htnp state established | grep -cE "pid=($(procs "$pid" | paste -sd'|')),")" || true
    sleep 3
    later="$(rss_kb "$pid")"
    keep_smaps "$round" "$target" 6s "$pid"
    echo >&"${IDLE[1]}" || true
    wait "$IDLE_PID" 2>/dev/null || true
    record "$round" idle "$target" "" "" "" "" \
        "$(awk -v k="$after" 'BEGIN {printf "%.1f", k / 1024}')" "$load" "" \
        "$line; $established established at the proxy, $((sockets - established)) other connections of its pid; RSS before $(awk -v k="$before" 'BEGIN {printf "%.1f", k / 1024}') MB, 6 s after $(awk -v k="$later" 'BEGIN {printf "%.1f", k / 1024}') MB"
    sleep 2
}

switch_run() { # ROUND TARGET [SCENARIO: switch (default), still (nothing done at the trigger), pswitch, pstill]
    local round="$1" target="$2" scenario="${3:-switch}" port pid url load start trigger trigger_ms persec paced=""
    port="$(target_port "$target")"
    pid="$(target_pid "$target")"
    url="http://127.0.0.1:$port/bytes/20"
    persec="$OUT/persec-$round-$target.txt"
    [ "$scenario" = still ] && persec="$OUT/persec-still-$round-$target.txt"
    load="$(load1)"
    local seconds=$((DURATION + 8))
    if [ "$scenario" = pswitch ] || [ "$scenario" = pstill ]; then
        paced="$OUT/paced-$round-$scenario-$target.txt"
        setsid "$PACED_CLIENT" paced-clients "127.0.0.1:$port" "$HOST" /bytes/20 "$PACED_RATE" 64 "$seconds" "$paced" \
            >"$OUT/paced-client-$round-$scenario-$target.txt" 2>&1 &
    else
        PERSEC_FILE="$persec" setsid wrk -t2 -c64 -d"${seconds}s" --timeout 10s -H "Host: $HOST" -s "$WORK/persec.lua" "$url" \
            >"$OUT/wrk-$round-$scenario-$target.txt" 2>&1 &
    fi
    local wrk_pid=$!
    BG_PIDS+=("$wrk_pid")
    local trace_pid=""
    if [ "$target" = rollway ] && { [ "$scenario" = switch ] || [ "$scenario" = pswitch ]; }; then
        # Where the CPU goes around the deploy (cpu_trace.py): every process at 10 Hz, 5 s before
        # the trigger to 15 s after it, by role; load-independent CPU-seconds.
        python3 "$ROOT/bench/proxy/cpu_trace.py" "$OUT/cpu-${scenario#switch}$round" 20 5 "proxy=$RW_PID" \
            "agent=$AGENT_PID" "wrk=$wrk_pid" "apps=$STATE-apps" "rollway=$(readlink -f "$RW")" "sock=$STATE/proxy/proxy.sock" \
            >/dev/null 2>&1 &
        trace_pid=$!
        BG_PIDS+=("$trace_pid")
    fi
    sleep 5
    trigger_ms="$(date +%s%3N)"
    trigger=$((trigger_ms / 1000))
    case "$scenario:$target" in
        still:* | pstill:*) ;;
        *:rollway) VERSION_N=$((VERSION_N + 1)); deploy || echo "the deploy during the switch run failed" >&2 ;;
        *:nginx) kill -HUP "$NGINX_PID" ;;
        *:haproxy) kill -USR2 "$HAPROXY_PID" ;;
    esac
    wait "$wrk_pid" || true
    [ -n "$trace_pid" ] && { wait "$trace_pid" || true; }
    if [ -n "$paced" ]; then
        record "$round" "$scenario" "$target" "" "" "" "" "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')" \
            "$load" "" "$(python3 "$ROOT/bench/proxy/paced.py" "$paced" "$trigger_ms" || true)"
        if [ "$target" = rollway ] && [ "$scenario" = pswitch ]; then
            sleep 12
            reload_peers
        fi
        return
    fi
    # steady: median of the whole seconds before the trigger (first second dropped); dip: the
    # lowest whole second from the trigger to the end (last second dropped).
    local summary
    summary="$(python3 - "$persec" "$trigger" <<'PY'
import sys
rows = sorted(tuple(map(int, line.split())) for line in open(sys.argv[1]) if line.strip())
trigger = int(sys.argv[2])
inner = rows[1:-1]  # the first and last seconds are partial
before = sorted(ok for s, ok, bad in inner if s < trigger)
after = [ok for s, ok, bad in inner if s >= trigger]
n = len(before)
steady = (before[n // 2] if n % 2 else (before[n // 2 - 1] + before[n // 2]) / 2) if n else 0
low = min(after) if after else 0
print(int(steady), low, f"{low / steady:.3f}" if steady else "0", sum(bad for s, ok, bad in rows))
PY
)"
    read -r steady min ratio nbad <<<"$summary"
    # The same at 100 ms (per100.py); the series from 1 s before the trigger in OUT/per100-ROUND-TARGET.txt.
    local tenths
    tenths="$(python3 "$ROOT/bench/proxy/per100.py" "$persec.100ms" "$trigger" "$OUT/per100-${persec#"$OUT/persec-"}" || true)"
    record "$round" "$scenario" "$target" "$steady" "" "" "" "$(awk -v k="$(rss_kb "$pid")" 'BEGIN {printf "%.1f", k / 1024}')" \
        "$load" "$nbad" "steady $steady/s, lowest second $min/s, ratio $ratio; $tenths"
    if [ "$target" = rollway ] && [ "$scenario" = switch ]; then
        # nginx and HAProxy follow the new serving instances before the next measurement.
        sleep 12 # the observe window of the release (10 s) ends
        reload_peers
    fi
}

run_scenario() { # ROUND SCENARIO TARGET
    case "$2" in
        ka64) wrk_run "$1" ka64 "$3" 64 /bytes/20 ;;
        ka512) wrk_run "$1" ka512 "$3" 512 /bytes/20 ;;
        close) wrk_run "$1" close "$3" 64 /bytes/20 -H "Connection: close" ;;
        64k) wrk_run "$1" 64k "$3" 64 /bytes/65536 ;;
        1m) wrk_run "$1" 1m "$3" 64 /bytes/1048576 ;;
        post1m) wrk_run "$1" post1m "$3" 64 /bytes/20 -s "$WORK/post1m.lua" ;;
        h2c) h2c_run "$1" "$3" ;;
        idle) idle_run "$1" "$3" ;;
        switch) switch_run "$1" "$3" switch ;;
        still) switch_run "$1" "$3" still ;;
        pswitch) switch_run "$1" "$3" pswitch ;;
        pstill) switch_run "$1" "$3" pstill ;;
        *) echo "unknown scenario $2" >&2; exit 2 ;;
    esac
}

echo "== agent $API, rollway proxy :$RW_PORT (pid $RW_PID), nginx :$NGINX_PORT (pid $NGINX_PID)," \
    "haproxy :$HAPROXY_PORT (pid $HAPROXY_PID), instances :$PORT_A :$PORT_B; results in $RESULTS"
# TARGETS (environment): a subset such as "rollway", to look at Rollway's switch alone.
read -r -a TARGETS <<<"${TARGETS:-rollway nginx haproxy}"
for round in $(seq 1 "$ROUNDS"); do
    # The order rotates every round, so that no target always runs first or last.
    order=()
    for i in "${!TARGETS[@]}"; do order+=("${TARGETS[$(((i + round - 1) % ${#TARGETS[@]}))]}"); done
    for scenario in $SCENARIOS; do
        for target in "${order[@]}"; do
            run_scenario "$round" "$scenario" "$target"
        done
    done
done

python3 "$ROOT/bench/proxy/deployed_summary.py" "$RESULTS" | tee "$OUT/summary.txt"
echo "results: $RESULTS"
