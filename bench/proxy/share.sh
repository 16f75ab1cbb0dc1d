#!/usr/bin/env bash
# The workers' share: how many client connections each of Rollway's worker threads accepted, and how
# much CPU each used, while wrk keeps N keep-alive connections on the deployed route (`bench_proxy proxy
# ... deployed`, two `bench_proxy upstream` instances, as bench/proxy/syscalls.sh). Accepts are counted
# per thread from the accept4 exit tracepoint (`perf stat --per-thread`, successful returns only): a
# count, so load-independent. nginx (TARGETS="rollway nginx") is counted per worker process with `ss -tnp`.
# Usage: bench/proxy/share.sh [DURATION_S] [CONNECTIONS...]   (defaults 5 s, 64 and 512)
# Environment: BENCH_PROXY_BIN (another build), BENCH_PORT_BASE (default 18800; uses +10..+13),
#   ROUNDS (default 3), TARGETS (default "rollway").
# Prints one line per run: target, connections, req/s, p50 and p99 (wrk), the per-worker accepted
# connections, the per-worker served ones mid-run (builds with the balance print them, BENCH_SHARES;
# "-" otherwise: then they are the accepted ones), the per-worker user+system ticks during the run, and
# the requests each worker served (perf stat: 2 writevs per request), its epoll_waits per request,
# and the load average. In a closed loop (wrk keeps one request per connection outstanding) a worker's
# connections wait DURATION * connections / requests on average: the share's cost, from counts.
# Every server binds 127.0.0.1; every process this script starts is killed by pid on exit.
set -euo pipefail

DURATION="${1:-5}"
shift || true
if [ "$#" -gt 0 ]; then CONNS=("$@"); else CONNS=(64 512); fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
PORT_BASE="${BENCH_PORT_BASE:-18800}"
UP_A=127.0.0.1:$((PORT_BASE + 10))
UP_B=127.0.0.1:$((PORT_BASE + 11))
RW_PORT=$((PORT_BASE + 12))
NGINX_PORT=$((PORT_BASE + 13))
HOST=bench.localhost
ROUNDS="${ROUNDS:-3}"
TARGETS="${TARGETS:-rollway}"

. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
NGINX_PID=""
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    [ -n "$NGINX_PID" ] && kill -QUIT "$NGINX_PID" 2>/dev/null
    sleep 0.3
    [ -n "$NGINX_PID" ] && kill -KILL "$NGINX_PID" 2>/dev/null
    rm -rf "$WORK"
}
trap cleanup EXIT
ulimit -n "$(ulimit -Hn)"

"$BIN" upstream "$UP_A" >/dev/null & pids+=($!)
"$BIN" upstream "$UP_B" >/dev/null & pids+=($!)
BENCH_SHARES=1 "$BIN" proxy "127.0.0.1:$RW_PORT" "$UP_A,$UP_B" 0 http1 deployed >"$WORK/proxy.out" & RW_PID=$!
pids+=("$RW_PID")
if [[ " $TARGETS " == *" nginx "* ]]; then
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
        listen 127.0.0.1:$NGINX_PORT;
        server_name $HOST;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
        }
    }
}
NGINX
    setsid nginx -c "$WORK/nginx.conf" -p "$WORK" >"$WORK/nginx.out" 2>&1 &
    NGINX_PID=$!
fi
for port in "$RW_PORT" "$NGINX_PORT"; do
    [ "$port" = "$NGINX_PORT" ] && [ -z "$NGINX_PID" ] && continue
    for _ in $(seq 1 100); do
        curl -sf -o /dev/null -H "Host: $HOST" "http://127.0.0.1:$port/small" && break
        sleep 0.1
    done
done

worker_tids() { # the proxy's worker threads, in worker order
    local task
    for task in /proc/"$RW_PID"/task/*; do
        case "$(cat "$task/comm")" in proxy-worker-*) echo "$(cat "$task/comm") ${task##*/}" ;; esac
    done | sort -t- -k3 -n | awk '{print $2}'
}
ticks() { awk '{print $14 + $15}' "/proc/$RW_PID/task/$1/stat"; }

printf "target\tconns\treq_s\tp50_ms\tp99_ms\taccepted_per_worker\tserving_per_worker\tticks_per_worker\trequests_per_worker\tepoll_waits_per_req\tload1\n"
for round in $(seq 1 "$ROUNDS"); do
    for conns in "${CONNS[@]}"; do
        for target in $TARGETS; do
            case "$target" in rollway) port=$RW_PORT ;; nginx) port=$NGINX_PORT ;; esac
            if [ "$target" = rollway ]; then
                mapfile -t tids < <(worker_tids)
                before=(); for tid in "${tids[@]}"; do before+=("$(ticks "$tid")"); done
                perf stat --per-thread -x, -e syscalls:sys_exit_accept4 --filter 'ret >= 0' \
                    -e syscalls:sys_enter_writev,syscalls:sys_enter_epoll_wait \
                    -p "$RW_PID" -o "$WORK/stat.csv" >/dev/null 2>&1 & STAT_PID=$!
                sleep 1
            fi
            wrk -t2 -c"$conns" -d"${DURATION}s" --latency -H "Host: $HOST" \
                "http://127.0.0.1:$port/small" >"$WORK/wrk.out" 2>&1 &
            WRK_PID=$!
            serving="-"; served=""; waits=""
            if [ "$target" = rollway ]; then
                sleep $((DURATION / 2))
                # Builds with the balance print what each worker serves (BENCH_SHARES).
                serving="$(awk '$1 == "workers" {last = $2} END {print last ? last : "-"}' "$WORK/proxy.out")"
            fi
            if [ "$target" = nginx ]; then
                sleep $((DURATION / 2))
                # Established client connections per nginx worker process.
                shares="$(ss -tnpH state established "( sport = :$NGINX_PORT )" |
                    grep -o 'pid=[0-9]*' | sort | uniq -c | awk '{print $1}' | sort -rn | paste -sd/ -)"
                spent="-"
            fi
            wait "$WRK_PID"
            if [ "$target" = rollway ]; then
                after=(); for tid in "${tids[@]}"; do after+=("$(ticks "$tid")"); done
                kill -INT "$STAT_PID"; wait "$STAT_PID" 2>/dev/null || true
                shares=""
                for tid in "${tids[@]}"; do
                    n="$(awk -F, -v tid="$tid" '$1 ~ "-" tid "$" && $4 ~ /accept4/ {print $2}' "$WORK/stat.csv")"
                    shares="${shares:+$shares/}${n:-0}"
                done
                spent=""
                for i in "${!tids[@]}"; do spent="${spent:+$spent/}$((after[i] - before[i]))"; done
                # Requests per worker: 2 writevs each (one to the instance, one to the client); and
                # epoll_waits per request (the inverse of the events handled per wake).
                served=""; waits=""
                for tid in "${tids[@]}"; do
                    w="$(awk -F, -v tid="$tid" '$1 ~ "-" tid "$" && $4 ~ /writev/ {print $2}' "$WORK/stat.csv")"
                    e="$(awk -F, -v tid="$tid" '$1 ~ "-" tid "$" && $4 ~ /epoll_wait/ {print $2}' "$WORK/stat.csv")"
                    served="${served:+$served/}$(( ${w:-0} / 2 ))"
                    waits="${waits:+$waits/}$(awk -v w="${w:-0}" -v e="${e:-0}" 'BEGIN {printf "%.3f", w ? 2 * e / w : 0}')"
                done
            fi
            rate="$(awk '/Requests\/sec/ {print $2}' "$WORK/wrk.out")"
            p50="$(awk '$1 == "50%" {print $2}' "$WORK/wrk.out")"
            p99="$(awk '$1 == "99%" {print $2}' "$WORK/wrk.out")"
            printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n" "$target" "$conns" "$rate" "$p50" "$p99" \
                "$shares" "$serving" "$spent" "${served:--}" "${waits:--}" "$(cut -d' ' -f1 /proc/loadavg)"
            sleep 1
        done
    done
done
