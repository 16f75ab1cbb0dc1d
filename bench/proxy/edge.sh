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
"$BIN" proxy "$OPEN" "$UPSTREAM" 0 http1 open & pids+=($!)
"$BIN" proxy "$LIMITED" "$UPSTREAM" 0 http1 limited & pids+=($!)
for addr in "$UPSTREAM" "$OPEN" "$LIMITED"; do
    for _ in $(seq 1 100); do
        curl -sf "http://$addr/small" >/dev/null 2>&1 && break
        sleep 0.1
    done
done

printf "%-6s %-8s %12s %10s %10s\n" round route "req/s" p50 p99
for round in $(seq 1 "$ROUNDS"); do
    for target in open limited; do
        case $target in
            open) addr=$OPEN ;;
            limited) addr=$LIMITED ;;
        esac
        wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://$addr/small" >/dev/null
        out="$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://$addr/small")"
        rps="$(echo "$out" | awk '/Requests\/sec/ {print $2}')"
        p50="$(echo "$out" | awk '$1 == "50%" {print $2}')"
        p99="$(echo "$out" | awk '$1 == "99%" {print $2}')"
        non2xx="$(echo "$out" | awk '/Non-2xx/ {print $4}')"
        printf "%-6s %-8s %12s %10s %10s %s\n" "$round" "$target" "$rps" "$p50" "$p99" "${non2xx:+non-2xx: $non2xx}"
    done
done
