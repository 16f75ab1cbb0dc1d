#!/usr/bin/env bash
# System calls and CPU time per small keep-alive request in Rollway's proxy (`bench_proxy proxy ...
# deployed`, the route the agent configures for a deployed app), nginx and HAProxy, in front of the same
# two `bench_proxy upstream` instances, configured as bench/proxy/deployed.sh configures them. Counted
# with `perf stat` on the syscall tracepoints of the proxy's processes only, while a bounded wrk run goes;
# a system call is a system call whatever the load on the machine, so the counts are load-independent
# (CPU time is not, and is reported beside them with the load average).
# Usage: bench/proxy/syscalls.sh [DURATION_S] [CONNECTIONS...]   (defaults 6 s, 64 and 512)
# Environment: BENCH_PROXY_BIN (another build of bench_proxy, e.g. a copy of an earlier commit's),
#   BENCH_PORT_BASE (moves every port, default 18780), TARGETS (default "rollway nginx haproxy"),
#   ROUNDS (default 1; targets alternate within each round), H2C_STREAMS (set, e.g. 100: HTTP/2 to the
#   proxies instead, h2c with prior knowledge, h2load -t2 with CONNECTIONS connections x H2C_STREAMS streams,
#   `:authority` the route's host; nginx listens for h2c on its port then, and p99 is not measured),
#   DEMO_APP (path to a built testkit `demo-app`: the two instances are demo apps, as deployed.sh deploys,
#   and the path `/bytes/20`, instead of `bench_proxy upstream` and `/small`).
# Every server binds 127.0.0.1; every process this script starts is killed by pid on exit.
set -euo pipefail

DURATION="${1:-6}"
shift || true
if [ "$#" -gt 0 ]; then CONNS=("$@"); else CONNS=(64 512); fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
PORT_BASE="${BENCH_PORT_BASE:-18780}"
UP_A=127.0.0.1:$((PORT_BASE + 10))
UP_B=127.0.0.1:$((PORT_BASE + 11))
RW_PORT=$((PORT_BASE + 12))
NGINX_PORT=$((PORT_BASE + 13))
HAPROXY_PORT=$((PORT_BASE + 14))
HOST=bench.localhost
TARGETS="${TARGETS:-rollway nginx haproxy}"
ROUNDS="${ROUNDS:-1}"
TICK_US=$((1000000 / $(getconf CLK_TCK)))

. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
NGINX_PID=""
HAPROXY_PID=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null
    [ -n "$HAPROXY_PID" ] && kill -USR1 "$HAPROXY_PID" 2>/dev/null
    sleep 0.3
    [ -n "$NGINX_PID" ] && kill -KILL "$NGINX_PID" 2>/dev/null
    [ -n "$HAPROXY_PID" ] && kill -KILL "$HAPROXY_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

URL_PATH=/small
if [ -n "${DEMO_APP:-}" ]; then
    URL_PATH=/bytes/20
    PORT="${UP_A##*:}" VERSION=v0 "$DEMO_APP" >/dev/null & pids+=($!)
    PORT="${UP_B##*:}" VERSION=v0 "$DEMO_APP" >/dev/null & pids+=($!)
else
    "$BIN" upstream "$UP_A" & pids+=($!)
    "$BIN" upstream "$UP_B" & pids+=($!)
fi
"$BIN" proxy "127.0.0.1:$RW_PORT" "$UP_A,$UP_B" 0 http1 deployed & RW_PID=$!
pids+=("$RW_PID")

cat > "$WORK/nginx.conf" <<NGINX
worker_processes auto;
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
    upstream app { least_conn; server $UP_A; server $UP_B; keepalive 512; }
    server {
        listen 127.0.0.1:$NGINX_PORT${H2C_STREAMS:+ http2};
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
    server { listen 127.0.0.1:$NGINX_PORT${H2C_STREAMS:+ http2} default_server; return 404; }
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
    bind 127.0.0.1:$HAPROXY_PORT${H2C_STREAMS:+ proto h2}
    http-request set-header X-Forwarded-Proto http
    use_backend app if { hdr(host),field(1,:) -i $HOST }
backend app
    balance leastconn
    server a $UP_A
    server b $UP_B
HAPROXY
if [[ " $TARGETS " == *" nginx "* ]]; then
    setsid nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
    NGINX_PID=$!
fi
if [[ " $TARGETS " == *" haproxy "* ]]; then
    setsid haproxy -W -f "$WORK/haproxy.cfg" >"$WORK/haproxy.out" 2>&1 &
    HAPROXY_PID=$!
fi
CURL_H2=()
if [ -n "${H2C_STREAMS:-}" ]; then CURL_H2=(--http2-prior-knowledge); fi
for port in "$RW_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do
    for _ in $(seq 1 100); do
        curl -sf -o /dev/null "${CURL_H2[@]}" -H "Host: $HOST" "http://127.0.0.1:$port$URL_PATH" && break
        sleep 0.1
    done
done

# The proxy's processes: Rollway's one, nginx's and HAProxy's masters and workers.
target_pids() {
    local root
    case "$1" in rollway) root="$RW_PID" ;; nginx) root="$NGINX_PID" ;; haproxy) root="$HAPROXY_PID" ;; esac
    { echo "$root"; pgrep -P "$root" || true; } | paste -sd, -
}
cpu_ticks() { # PIDS (comma-separated): user and system ticks summed
    local u=0 s=0 pid
    for pid in ${1//,/ }; do
        read -r pu ps < <(awk '{print $14, $15}' "/proc/$pid/stat")
        u=$((u + pu)); s=$((s + ps))
    done
    echo "$u $s"
}

SYSCALLS="read write readv writev recvfrom sendto recvmsg sendmsg epoll_wait epoll_pwait epoll_ctl futex sched_yield accept4 close setsockopt getsockopt ioctl"
EVENTS="raw_syscalls:sys_enter"
for name in $SYSCALLS; do EVENTS="$EVENTS,syscalls:sys_enter_$name"; done

printf "round\ttarget\tconns\treq_s\tp99\tuser_us_req\tsys_us_req\tload1\tupstream_conns\tsyscalls_req\tbreakdown_per_req\n"
for round in $(seq 1 "$ROUNDS"); do
    for conns in "${CONNS[@]}"; do
        for target in $TARGETS; do
            case "$target" in rollway) port=$RW_PORT ;; nginx) port=$NGINX_PORT ;; haproxy) port=$HAPROXY_PORT ;; esac
            url="http://127.0.0.1:$port$URL_PATH"
            if [ -n "${H2C_STREAMS:-}" ]; then
                load_cmd=(h2load -t2 -c"$conns" -m"$H2C_STREAMS" -H ":authority: $HOST")
                timeout 30 "${load_cmd[@]}" -D 2 "$url" >/dev/null 2>&1 || true
            else
                wrk -t2 -c"$conns" -d2s -H "Host: $HOST" "$url" >/dev/null 2>&1 || true
            fi
            tpids="$(target_pids "$target")"
            load="$(awk '{print $1}' /proc/loadavg)"
            before="$(cpu_ticks "$tpids")"
            # Connections open to the instances halfway through the run.
            (sleep "$((DURATION / 2))"; ss -tnH state established "( dport = :${UP_A##*:} or dport = :${UP_B##*:} )" \
                | wc -l >"$WORK/upstream_conns") & counter=$!
            if [ -n "${H2C_STREAMS:-}" ]; then
                perf stat -x, -o "$WORK/perf.csv" -e "$EVENTS" -p "$tpids" -- \
                    timeout $((DURATION + 30)) "${load_cmd[@]}" -D "$DURATION" "$url" >"$WORK/wrk.txt" 2>&1 || true
                after="$(cpu_ticks "$tpids")"
                wait "$counter" || true
                requests="$(awk '/^requests:/ {print $8; exit}' "$WORK/wrk.txt")"
                rps="$(awk '/^finished in/ {gsub(",", "", $4); print $4; exit}' "$WORK/wrk.txt")"
                p99="-"
            else
                perf stat -x, -o "$WORK/perf.csv" -e "$EVENTS" -p "$tpids" -- \
                    wrk -t2 -c"$conns" -d"${DURATION}s" --timeout 10s --latency -H "Host: $HOST" "$url" \
                    >"$WORK/wrk.txt" 2>&1 || true
                after="$(cpu_ticks "$tpids")"
                wait "$counter" || true
                requests="$(awk '/requests in/ {print $1; exit}' "$WORK/wrk.txt")"
                rps="$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.txt")"
                p99="$(awk '$1 == "99%" {print $2}' "$WORK/wrk.txt")"
            fi
            read -r bu bs <<<"$before"
            read -r au as <<<"$after"
            total="$(awk -F, -v n="$requests" '$3 == "raw_syscalls:sys_enter" {printf "%.2f", $1 / n}' "$WORK/perf.csv")"
            breakdown="$(awk -F, -v n="$requests" '$3 ~ /^syscalls:sys_enter_/ && $1 > 0 {
                name = substr($3, 20); if ($1 / n >= 0.01) printf "%s %.2f ", name, $1 / n }' "$WORK/perf.csv")"
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$round" "$target" "$conns" "$rps" "$p99" \
                "$(awk -v d="$((au - bu))" -v n="$requests" -v t="$TICK_US" 'BEGIN {printf "%.1f", d * t / n}')" \
                "$(awk -v d="$((as - bs))" -v n="$requests" -v t="$TICK_US" 'BEGIN {printf "%.1f", d * t / n}')" \
                "$load" "$(cat "$WORK/upstream_conns")" "$total" "$breakdown"
        done
    done
done
