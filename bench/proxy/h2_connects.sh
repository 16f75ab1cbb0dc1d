#!/usr/bin/env bash
# Upstream connections opened and closed by Rollway's proxy under a steady h2c load: h2load (prior
# knowledge, CONNECTIONS x STREAMS, 10 s) through the proxy to one HTTP/1.1 upstream; between seconds 3
# and 9, `ss` counts the proxy's established connections to the upstream that are new, and its
# TIME-WAIT ones (closed by the proxy). Each stream in flight needs its own upstream connection, so a
# steady load should open and close none once warm.
# Usage: bench/proxy/h2_connects.sh [CONNECTIONS] [STREAMS]   (defaults 16, 100)
set -euo pipefail

CONNECTIONS="${1:-16}"
STREAMS="${2:-100}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="$(mktemp -d)"
# BENCH_PORT_BASE moves every port of this script (two benches at once need apart ranges).
PORT_BASE="${BENCH_PORT_BASE:-18690}"
UPSTREAM_PORT=$((PORT_BASE + 0))
UPSTREAM=127.0.0.1:$UPSTREAM_PORT
ROLLWAY=127.0.0.1:$((PORT_BASE + 1))

. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

"$BIN" upstream "$UPSTREAM" & pids+=($!)
"$BIN" proxy "$ROLLWAY" "$UPSTREAM" & pids+=($!)
for addr in "$UPSTREAM" "$ROLLWAY"; do
    up=
    for _ in $(seq 1 100); do
        curl -sf --max-time 2 "http://$addr/small" >/dev/null 2>&1 && up=1 && break
        sleep 0.1
    done
    [ -n "$up" ] || { echo "$addr did not answer" >&2; exit 1; }
done

established() { ss -tnH state established "( dport = :$UPSTREAM_PORT )" | awk '{print $3}' | sort; }
time_wait() { ss -tanH state time-wait "( dport = :$UPSTREAM_PORT )" | wc -l; }

h2load -t2 -c"$CONNECTIONS" -m"$STREAMS" -D 10 "http://$ROLLWAY/small" > "$WORK/h2load.out" &
load_pid=$!
sleep 3
established > "$WORK/before"
tw_before="$(time_wait)"
sleep 6
established > "$WORK/after"
tw_after="$(time_wait)"
wait "$load_pid"
opened="$(comm -13 "$WORK/before" "$WORK/after" | wc -l)"
rps="$(awk '/^finished in/ {gsub(",", "", $4); print $4}' "$WORK/h2load.out")"
echo "established $(wc -l < "$WORK/before") -> $(wc -l < "$WORK/after"); in 6 s: $opened opened (still open), $((tw_after - tw_before)) closed by the proxy; req/s $rps; load1 $(cut -d' ' -f1 /proc/loadavg)"
