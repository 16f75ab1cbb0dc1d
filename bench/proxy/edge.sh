#!/usr/bin/env bash
# Cost of a per-client rate limit that is never hit: the same upstream through two Rollway proxies, one
# route without edge controls and one with `rate_limit` (a million a second), wrk runs alternated in the
# same run. Installs wrk from Debian when missing.
# Usage: bench/proxy/edge.sh [DURATION_S] [CONNECTIONS] [ROUNDS]
set -euo pipefail

DURATION="${1:-8}"
CONNECTIONS="${2:-64}"
ROUNDS="${3:-3}"
THREADS=2
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
UPSTREAM=127.0.0.1:18090
OPEN=127.0.0.1:18091
LIMITED=127.0.0.1:18092

if ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q wrk curl
fi

cargo build --release -p proxy --example bench_proxy --manifest-path "$ROOT/Cargo.toml"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
BIN="$TARGET_DIR/release/examples/bench_proxy"

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup EXIT

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$OPEN" "$UPSTREAM" 0 http1 open & pids+=($!); open_pid=$!
"$BIN" proxy "$LIMITED" "$UPSTREAM" 0 http1 limited & pids+=($!); limited_pid=$!
for addr in "$UPSTREAM" "$OPEN" "$LIMITED"; do
    for _ in $(seq 1 100); do
        curl -sf "http://$addr/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

# Both proxies are measured at the same time, each by its own wrk with half the connections: on a shared
# machine whatever else runs slows both alike, so the ratio of a round holds where sequential runs drift
# by more than the effect measured. Targets swap wrk order every round.
HALF=$((CONNECTIONS / 2))
run_wrk() { wrk -t1 -c"$HALF" -d"${DURATION}s" --latency "http://$1/small"; }
rps_of() { awk '/Requests\/sec/ {print $2}' "$1"; }
p99_of() { awk '$1 == "99%" {print $2}' "$1"; }
non2xx_of() { awk '/Non-2xx/ {print $4}' "$1"; }
requests_of() { awk '/requests in/ {print $1}' "$1"; }
# CPU time (user + system, clock ticks) a process used so far: proc(5) stat fields 14 and 15.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
TICK_US=$((1000000 / $(getconf CLK_TCK)))
WORK="$(mktemp -d)"
# Besides req/s, each proxy's CPU time per request (from /proc, so other processes' load matters less):
# the cost of the bucket is what the limited proxy spends more per request.
printf "%-6s %12s %10s %12s %10s %8s %12s %12s %8s\n" round "open req/s" p99 "limited" p99 ratio "open us/req" "lim. us/req" ratio
for round in $(seq 1 "$ROUNDS"); do
    # `wait PID` only: a bare `wait` would also wait for the proxies.
    wrk -t1 -c"$HALF" -d2s "http://$OPEN/small" >/dev/null & warm=$!
    wrk -t1 -c"$HALF" -d2s "http://$LIMITED/small" >/dev/null
    wait "$warm"
    open_before="$(cpu_ticks "$open_pid")"
    limited_before="$(cpu_ticks "$limited_pid")"
    if [ $((round % 2)) -eq 1 ]; then
        run_wrk "$OPEN" >"$WORK/open" & first=$!
        run_wrk "$LIMITED" >"$WORK/limited"
    else
        run_wrk "$LIMITED" >"$WORK/limited" & first=$!
        run_wrk "$OPEN" >"$WORK/open"
    fi
    wait "$first"
    open_cpu=$(( ($(cpu_ticks "$open_pid") - open_before) * TICK_US ))
    limited_cpu=$(( ($(cpu_ticks "$limited_pid") - limited_before) * TICK_US ))
    open_us="$(awk -v c="$open_cpu" -v n="$(requests_of "$WORK/open")" 'BEGIN { printf "%.1f", c / n }')"
    limited_us="$(awk -v c="$limited_cpu" -v n="$(requests_of "$WORK/limited")" 'BEGIN { printf "%.1f", c / n }')"
    cpu_ratio="$(awk -v a="$limited_us" -v b="$open_us" 'BEGIN { printf "%.3f", a / b }')"
    open="$(rps_of "$WORK/open")"
    limited="$(rps_of "$WORK/limited")"
    ratio="$(awk -v a="$limited" -v b="$open" 'BEGIN { printf "%.3f", a / b }')"
    printf "%-6s %12s %10s %12s %10s %8s %12s %12s %8s %s\n" "$round" "$open" "$(p99_of "$WORK/open")" "$limited" "$(p99_of "$WORK/limited")" "$ratio" "$open_us" "$limited_us" "$cpu_ratio" "$(non2xx_of "$WORK/limited")"
done
rm -rf "$WORK"
