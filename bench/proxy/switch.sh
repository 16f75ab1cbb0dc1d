#!/usr/bin/env bash
# Issue 20, the switch goal, the proxy's own share: a traffic switch under keep-alive load with nothing
# else of a deploy running (no instance starting, no health checks, no agent). `bench_proxy switch`
# serves a Host route on release 1 (instances A, A'), and switches it to the next release on the other
# pair of instances (B, B') on each SIGUSR1, through the same `apply` the agent's `PUT /v1/state` runs
# (the old instances drain), then reads the release statistics every second as the agent's analysis does.
# Each round: a keep-alive wrk run (CONNECTIONS connections, DURATION_S seconds), one switch at SWITCH_AT_S.
# Per wall-clock second: 2xx answers, others, the proxy's CPU (user+system from /proc/PID/stat, all its
# threads) and the CPU per answer. Summary per round: steady (median of the whole seconds before the
# switch) against the lowest whole second from the switch on, and the CPU per answer before and after.
#
# Usage: bench/proxy/switch.sh [DURATION_S] [SWITCH_AT_S] [ROUNDS]   (defaults 12, 5, 3)
#        bench/proxy/switch.sh callgrind [WINDOW_S] [PAIRS]          (defaults 6, 2)
# The callgrind form counts the proxy's user-space instructions, which other load does not change: the
# proxy (one worker) runs under `valgrind --tool=callgrind`, and alternating windows of a keep-alive wrk
# run (64 connections) are measured, without a switch and with one in their middle; the switch's own
# cost is the difference of instructions per answer, times the answers of a window.
# Environment: CONNECTIONS (default 64), BENCH_PORT_BASE (default 24100; uses +0..+3 and +10),
#   BENCH_PROXY_BIN (measure another build), OUT (keep the per-second files here),
#   PROXY_PRIORITY (`raised`, the default: the proxy leads a session of its own at nice -5, its
#   session's autogroup too, as the agent starts it where no cgroup weights it; `agent`: the same
#   session of its own at this script's priority, as before that fallback),
#   APP_HOGS (default 0: this many busy loops run in the upstreams' session, as busy apps in the
#   agent's session do, during each wrk run; bounded by the run).
# The upstreams (the apps), wrk and the hogs stay in this script's session; wrk in a session of its own.
# Every server binds 127.0.0.1; every run is bounded in time; on exit every process this script started
# is killed by pid.
set -euo pipefail

MODE=wrk
if [ "${1:-}" = callgrind ]; then
    MODE=callgrind
    shift
    WINDOW="${1:-6}"
    PAIRS="${2:-2}"
fi
DURATION="${1:-12}"
SWITCH_AT="${2:-5}"
ROUNDS="${3:-3}"
CONNECTIONS="${CONNECTIONS:-64}"
HOST=bench.localhost
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
PORT_BASE="${BENCH_PORT_BASE:-24100}"
A="127.0.0.1:$((PORT_BASE + 0)),127.0.0.1:$((PORT_BASE + 1))"
B="127.0.0.1:$((PORT_BASE + 2)),127.0.0.1:$((PORT_BASE + 3))"
PROXY="127.0.0.1:$((PORT_BASE + 10))"

if ! command -v wrk >/dev/null || { [ "$MODE" = callgrind ] && ! command -v valgrind >/dev/null; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q wrk valgrind
fi

. "$ROOT/bench/proxy/lib.sh"
bench_proxy_bin

WORK="$(mktemp -d)"
OUT="${OUT:-$WORK}"
mkdir -p "$OUT"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

for addr in ${A//,/ } ${B//,/ }; do
    "$BIN" upstream "$addr" &
    pids+=($!)
done

if [ "$MODE" = callgrind ]; then
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.%p" \
        "$BIN" switch "$PROXY" "$A" "$B" 1 >"$OUT/switches.txt" 2>"$WORK/valgrind.log" &
    proxy_pid=$!
    pids+=("$proxy_pid")
    for _ in $(seq 1 300); do
        curl -sf -H "Host: $HOST" "http://$PROXY/small" >/dev/null 2>&1 && break
        sleep 0.2
    done
    # Warm-up, with a first switch: the analysis reads run from then on, in every window alike.
    wrk -t1 -c64 -d3s -H "Host: $HOST" "http://$PROXY/small" >/dev/null &
    sleep 1.5
    kill -USR1 "$proxy_pid"
    wait $!
    sleep 2
    window() { # NAME SWITCH(0|1)
        callgrind_control -i on "$proxy_pid" >/dev/null 2>&1
        wrk -t1 -c64 -d"${WINDOW}s" -H "Host: $HOST" "http://$PROXY/small" >"$WORK/wrk.out" &
        local wrk_pid=$!
        if [ "$2" = 1 ]; then
            sleep "$(echo "$WINDOW / 2" | bc -l)"
            kill -USR1 "$proxy_pid"
        fi
        wait "$wrk_pid"
        # The old pair's drain and removal finish inside the window (no request is in flight then).
        sleep 1
        callgrind_control -i off "$proxy_pid" >/dev/null 2>&1
        callgrind_control -d "$proxy_pid" >/dev/null 2>&1
        sleep 1
        local file requests instructions
        file="$(ls -t "$WORK"/callgrind.* | head -1)"
        requests="$(awk '/requests in/ {print $1}' "$WORK/wrk.out")"
        instructions="$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ && !done {gsub(",", "", $1); print $1; done = 1}')"
        rm -f "$file"
        printf "%-9s requests %7s  instructions %13s  per answer %7.0f\n" "$1" "$requests" "$instructions" \
            "$(echo "$instructions / $requests" | bc -l)" | tee -a "$OUT/callgrind.txt"
        sleep 2
    }
    for _ in $(seq 1 "$PAIRS"); do
        window steady 0
        window switch 1
    done
    exit 0
fi
setsid "$BIN" switch "$PROXY" "$A" "$B" >"$OUT/switches.txt" &
proxy_pid=$!
pids+=("$proxy_pid")
# As `driver::priority::raise_proxy` does in the proxy's pre_exec: its threads (renice per thread, as
# it started them already) and its session's autogroup.
if [ "${PROXY_PRIORITY:-raised}" = raised ]; then
    sleep 0.2
    for task in /proc/"$proxy_pid"/task/*; do renice -n -5 -p "${task##*/}" >/dev/null; done
    [ -w "/proc/$proxy_pid/autogroup" ] && echo -5 >"/proc/$proxy_pid/autogroup"
fi
echo "proxy pid $proxy_pid: nice $(ps -o ni= -p "$proxy_pid" | tr -d ' '), autogroup: $(cat "/proc/$proxy_pid/autogroup" 2>/dev/null || echo none), app hogs ${APP_HOGS:-0}"
for _ in $(seq 1 100); do
    curl -sf -H "Host: $HOST" "http://$PROXY/small" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -sf -H "Host: $HOST" "http://$PROXY/small" >/dev/null

# Per-second count of 2xx answers and of others, per thread, merged at the end (as deployed.sh).
cat >"$WORK/persec.lua" <<'LUA'
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = {}; bad = {} end
function response(status, headers, body)
    local s = os.time()
    if status >= 200 and status < 300 then ok[s] = (ok[s] or 0) + 1 else bad[s] = (bad[s] or 0) + 1 end
end
function done(summary, latency, requests)
    local all_ok, all_bad = {}, {}
    for _, t in ipairs(threads) do
        for s, n in pairs(t:get("ok")) do all_ok[s] = (all_ok[s] or 0) + n end
        for s, n in pairs(t:get("bad")) do all_bad[s] = (all_bad[s] or 0) + n end
    end
    local f = io.open(os.getenv("PERSEC_FILE"), "w")
    for s, n in pairs(all_ok) do f:write(s, " ", n, " ", all_bad[s] or 0, "\n") end
    for s, n in pairs(all_bad) do if not all_ok[s] then f:write(s, " 0 ", n, "\n") end end
    f:close()
end
LUA

# The proxy's CPU ticks (user, system) at every wall-clock second boundary, for SECONDS seconds.
cat >"$WORK/sample.py" <<'PY'
import os, sys, time
pid, seconds, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(out, "w") as f:
    for _ in range(seconds):
        time.sleep(1 - time.time() % 1)
        now = round(time.time())
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        f.write(f"{now} {fields[11]} {fields[12]}\n")
        f.flush()
PY

cat >"$WORK/summary.py" <<'PY'
import os, sys
persec, ticks, switches, round_no, load = sys.argv[1:6]
hz = os.sysconf("SC_CLK_TCK")
answers = {}
for line in open(persec):
    if line.strip():
        s, ok, bad = map(int, line.split())
        answers[s] = (ok, bad)
cpu = {}
samples = [tuple(map(int, line.split())) for line in open(ticks) if line.strip()]
# Ticks sampled at the boundary s+1 minus those at s: the CPU of second s.
for (s0, u0, y0), (s1, u1, y1) in zip(samples, samples[1:]):
    if s1 == s0 + 1:
        cpu[s0] = ((u1 - u0) * 1e6 / hz, (y1 - y0) * 1e6 / hz)
lines = [line.split() for line in open(switches) if line.startswith("switched")]
trigger = int(lines[-1][2]) // 1000
apply_us = lines[-1][3]
seconds = sorted(answers)[1:-1]  # the first and last seconds are partial
before = sorted(answers[s][0] for s in seconds if s < trigger)
n = len(before)
steady = (before[n // 2] if n % 2 else (before[n // 2 - 1] + before[n // 2]) / 2) if n else 0
def per_answer(s):
    if s not in cpu or not answers.get(s, (0, 0))[0]:
        return None
    return sum(cpu[s]) / answers[s][0]
print(f"round {round_no}: load {load}; second, 2xx, other, proxy CPU ms (user+sys), CPU us per answer")
for s in seconds:
    ok, bad = answers[s]
    user, system = cpu.get(s, (0, 0))
    mark = " <- switch (apply %s us)" % apply_us if s == trigger else ""
    pa = per_answer(s)
    print(f"  {s - trigger:+d} {ok} {bad} {(user + system) / 1000:.0f} {pa:.1f}{mark}" if pa else f"  {s - trigger:+d} {ok} {bad} -{mark}")
after = [(answers[s][0], s) for s in seconds if s >= trigger]
low, low_s = min(after) if after else (0, trigger)
cpu_before = sorted(x for x in (per_answer(s) for s in seconds if s < trigger) if x)
cpu_after = [per_answer(s) for s in (trigger, trigger + 1)]
median = cpu_before[len(cpu_before) // 2] if cpu_before else 0
nbad = sum(answers[s][1] for s in answers)
fmt = lambda x: f"{x:.1f}" if x else "-"
print(f"SUMMARY round {round_no} load {load}: steady {steady:.0f}/s, lowest second from the switch {low}/s "
      f"(+{low_s - trigger}), ratio {low / steady if steady else 0:.3f}; CPU us per answer: steady {median:.1f}, "
      f"switch second {fmt(cpu_after[0])}, next {fmt(cpu_after[1])}; non-2xx {nbad}")
PY

for round in $(seq 1 "$ROUNDS"); do
    load="$(cut -d' ' -f1 /proc/loadavg)"
    persec="$OUT/persec-$round.txt"
    ticks="$OUT/ticks-$round.txt"
    python3 "$WORK/sample.py" "$proxy_pid" $((DURATION + 2)) "$ticks" &
    sampler=$!
    pids+=("$sampler")
    PERSEC_FILE="$persec" setsid wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -H "Host: $HOST" \
        -s "$WORK/persec.lua" "http://$PROXY/small" >"$OUT/wrk-$round.txt" 2>&1 &
    wrk_pid=$!
    pids+=("$wrk_pid")
    for _ in $(seq 1 "${APP_HOGS:-0}"); do
        timeout "$DURATION" sh -c 'while :; do :; done' &
        pids+=($!)
    done
    sleep "$SWITCH_AT"
    kill -USR1 "$proxy_pid"
    wait "$wrk_pid" || true
    wait "$sampler" || true
    python3 "$WORK/summary.py" "$persec" "$ticks" "$OUT/switches.txt" "$round" "$load" | tee "$OUT/summary-$round.txt"
    sleep 6 # the old pair's drain (5 s bound) ends before the next round
done
