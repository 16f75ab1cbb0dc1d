#!/usr/bin/env bash
# Deploy benchmark (issue 5): wall time of `rollway deploy` of the demo app with its artifact already
# on the agent and with a new one, of a warm `rollway rollback` (and its switch, from the event log),
# and the agent's RSS idle and under load. Builds the release binaries, runs one agent in a temp dir
# on 127.0.0.1, and kills every process it started (by pid) on exit.
#
# Usage: bench/deploy/run.sh [N]        N iterations of each measured operation (default 10)
# Environment: LOAD_S (wrk duration, default 10), CONNECTIONS (wrk, default 64),
#   BENCH_SRC (the source tree to build, default this checkout; e.g. a `git archive HEAD` snapshot
#   when the working tree is mid-edit), CARGO_TARGET_DIR (as cargo reads it).
set -euo pipefail

N="${1:-${N:-10}}"
LOAD_S="${LOAD_S:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="${BENCH_SRC:-$ROOT}"

missing=()
command -v hyperfine >/dev/null || missing+=(hyperfine)
command -v wrk >/dev/null || missing+=(wrk)
command -v jq >/dev/null || missing+=(jq)
command -v curl >/dev/null || missing+=(curl)
if [ "${#missing[@]}" -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q "${missing[@]}"
fi

cargo build --release -p rollway -p testkit --manifest-path "$SRC/Cargo.toml"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$SRC/Cargo.toml" | jq -r .target_directory)"
RW="$TARGET_DIR/release/rollway"
DEMO="$TARGET_DIR/release/demo-app"

WORK="$(mktemp -d /tmp/rollway-bench-deploy.XXXXXX)"
STATE="$WORK/state"
APP="$WORK/app"
OUT="$WORK/out"
mkdir -p "$STATE" "$APP" "$OUT"

# ---------------------------------------------------------------------------------------------
# Cleanup: the agent (our child), then what it started and what outlives it on purpose: the
# proxy and the app instances (each in its own process group). Every pid is checked to run inside
# this run's state directory before it is signalled, so nobody else's agent is ever touched.

AGENT_PID=""
BG_PIDS=()

in_state_dir() { # PID
    local cwd
    cwd="$(readlink "/proc/$1/cwd" 2>/dev/null)" || return 1
    [[ "$cwd" == "$STATE" || "$cwd" == "$STATE"/* ]]
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
    # Anything else still running inside the state directory (a child of an instance).
    for dir in /proc/[0-9]*; do
        kill_in_state_dir "${dir#/proc/}"
    done
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status); agent log tail:" >&2
        tail -n 30 "$WORK/agent.log" >&2 2>/dev/null
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

API_PORT="$(free_port)"
PROXY_PORT="$(free_port)"
while [ "$PROXY_PORT" = "$API_PORT" ]; do PROXY_PORT="$(free_port)"; done
API="http://127.0.0.1:$API_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"

now_ms() { date +%s%3N; }

# median / p90 (nearest rank) / max of the numbers on stdin, in ms with one decimal.
stats() {
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { printf "%8s %8s %8s %4s", "-", "-", "-", 0; exit }
        med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        r = int(0.9 * NR); if (r < 0.9 * NR) r++
        printf "%8.1f %8.1f %8.1f %4d", med, v[r], v[NR], NR }'
}

SUMMARY="$OUT/summary.txt"
row() { # LABEL, numbers on stdin
    printf "%-44s %s\n" "$1" "$(stats)" | tee -a "$SUMMARY"
}

# ---------------------------------------------------------------------------------------------
# The app: the demo app's binary inside the folder (so "new artifact" really packs, uploads and
# unpacks ~1 MiB compressed), a stamp file to change the artifact, VERSION to change only config.

cp "$DEMO" "$APP/demo-app"
echo 0 > "$APP/stamp.txt"
echo 0 > "$WORK/counter"
cat > "$APP/rollway.toml" <<TOML
[app]
name = "bench"

[services.web]
run = "./demo-app"
health = { path = "/health", interval = "100ms", healthy = 2 }
drain = "1s"

[env]
VERSION = "v0"

[strategy]
kind = "blue-green"

# The watch after the switch (default 1m) is not part of the deploy's cost being measured here.
[analysis]
observe = "0s"
TOML

# Prepare steps for hyperfine (run before each timed run, not timed).
cat > "$WORK/bump-version" <<SH
#!/usr/bin/env bash
set -euo pipefail
n=\$((\$(cat "$WORK/counter") + 1))
echo "\$n" > "$WORK/counter"
sed -i "s/^VERSION = .*/VERSION = \"v\$n\"/" "$APP/rollway.toml"
SH
cat > "$WORK/new-artifact" <<SH
#!/usr/bin/env bash
set -euo pipefail
"$WORK/bump-version"
cat "$WORK/counter" > "$APP/stamp.txt"
SH
cat > "$WORK/deploy-next" <<SH
#!/usr/bin/env bash
set -euo pipefail
"$WORK/bump-version"
"$RW" deploy --env production --dir "$APP" --agent "$API" >>"$WORK/prepare.log" 2>&1
SH
chmod +x "$WORK/bump-version" "$WORK/new-artifact" "$WORK/deploy-next"

# ---------------------------------------------------------------------------------------------
# The agent.

(cd "$STATE" && exec "$RW" agent --state "$STATE" --api "127.0.0.1:$API_PORT" --proxy "127.0.0.1:$PROXY_PORT") \
    >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
    [ -s "$STATE/admin.token" ] && curl -sf "$API/healthz" >/dev/null 2>&1 && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited" >&2; exit 1; }
    sleep 0.1
done
ROLLWAY_TOKEN="$(cat "$STATE/admin.token")"
export ROLLWAY_TOKEN NO_COLOR=1
PROXY_PID="$(awk '{print $1; exit}' "$STATE/proxy/proxy.pid")"

answer() { curl -sf "$PROXY/"; }
expect_answer() { # VERSION
    local got
    got="$(answer || true)"
    if [ "$got" != "$1" ]; then
        echo "expected the proxy to answer $1, got '$got'" >&2
        exit 1
    fi
}

echo "== first deploy (cold start of the agent's artifact store)"
"$RW" deploy --env production --dir "$APP" --agent "$API" >>"$WORK/prepare.log" 2>&1
expect_answer v0
echo "   demo-app binary $(du -h "$APP/demo-app" | cut -f1), agent api $API, proxy $PROXY"

HF=(hyperfine --runs "$N" --shell=none --style basic)

echo "== deploy, artifact already on the agent (only [env] VERSION changes), $N runs"
t0="$(now_ms)"
"${HF[@]}" --prepare "$WORK/bump-version" --export-json "$OUT/known.json" \
    "$RW deploy --env production --dir $APP --agent $API"
t1="$(now_ms)"
echo "$t0 $t1" > "$OUT/known.window"
expect_answer "v$(cat "$WORK/counter")"

echo "== deploy, new artifact (a file in the folder changes), $N runs"
t0="$(now_ms)"
"${HF[@]}" --prepare "$WORK/new-artifact" --export-json "$OUT/new.json" \
    "$RW deploy --env production --dir $APP --agent $API"
t1="$(now_ms)"
echo "$t0 $t1" > "$OUT/new.window"
expect_answer "v$(cat "$WORK/counter")"

echo "== warm rollback (each run: an untimed deploy first, then the timed rollback to it), $N runs"
before="$(answer)"
t0="$(now_ms)"
"${HF[@]}" --prepare "$WORK/deploy-next" --export-json "$OUT/rollback.json" \
    "$RW rollback --env production --app bench --agent $API"
t1="$(now_ms)"
echo "$t0 $t1" > "$OUT/rollback.window"
expect_answer "$before"

# One more of each, outside hyperfine, to print its event timeline.
timeline() { # LABEL, then the command
    local label="$1" start end id
    shift
    start="$(date +%s%N)"
    "$@" --json >"$OUT/timeline.json" 2>>"$WORK/prepare.log"
    end="$(date +%s%N)"
    id="$(jq -r .id "$OUT/timeline.json")"
    echo "-- $label: wall $(( (end - start) / 1000000 )) ms, deployment $id"
    "$RW" events --json -n 100 --agent "$API" 2>/dev/null | jq -r --arg id "$id" -s '
        [ .[] | select(.deployment_id == $id or (.deployment_id == null and (.kind | startswith("instance.")))) ]
        | (map(select(.deployment_id == $id)) | first.at) as $t0
        | (map(select(.deployment_id == $id)) | last.at) as $t9
        | .[] | select(.at >= $t0 and .at <= $t9)
        | "   +\(.at - $t0 | tostring | (" " * (5 - length)) + .) ms  \(.kind)  \(.message)"'
}
echo "== event timelines (one run each)"
"$WORK/bump-version"
timeline "deploy, artifact known" "$RW" deploy --env production --dir "$APP" --agent "$API"
"$WORK/new-artifact"
timeline "deploy, artifact new" "$RW" deploy --env production --dir "$APP" --agent "$API"
"$WORK/deploy-next"
timeline "warm rollback" "$RW" rollback --env production --app bench --agent "$API"

# ---------------------------------------------------------------------------------------------
# Agent-side numbers of every timed run, from the event log: each state's duration (from the
# event that entered it to the one that left it), the rollback switch (`deployment.weights` −
# `Verifying → Shifting`), and the agent's total (start event → `deployment.finished`).

"$RW" events --json -n 100000 --agent "$API" 2>/dev/null >"$OUT/events.jsonl"
per_state() { # WINDOW_FILE KIND (deploy|rollback): "label<TAB>ms" lines
    read -r w0 w1 <"$1"
    jq -r -s --argjson w0 "$w0" --argjson w1 "$w1" --arg kind "deployment.$2" '
        [ .[] | select(.deployment_id != null and .at >= $w0 and .at <= $w1) ]
        | group_by(.deployment_id)[]
        | sort_by(.id)
        | select(.[0].kind == $kind)
        | .[0].at as $start
        | (map(select(.kind == "deployment.state")) ) as $states
        | ( [range(0; $states | length)] | .[] as $i
            | ($states[$i].message | split(" → ")[0]) as $name
            | (if $i == 0 then $start else $states[$i - 1].at end) as $from
            | "state \($name)\t\($states[$i].at - $from)" ),
          ( (map(select(.kind == "deployment.weights")) | first.at) as $w
            | ($states | map(select(.message == "Verifying → Shifting")) | first.at) as $v
            | select($w != null and $v != null)
            | "switch: weights - (Verifying->Shifting)\t\($w - $v)" ),
          ( (map(select(.kind == "deployment.finished")) | first.at) as $f
            | select($f != null) | "agent total: start event -> finished\t\($f - $start)" )
    ' "$OUT/events.jsonl"
}

times_ms() { jq -r '.results[0].times[] * 1000' "$1"; }

section() { # TITLE HYPERFINE_JSON WINDOW KIND
    printf "\n%-44s %8s %8s %8s %4s\n" "$1" median p90 max n | tee -a "$SUMMARY"
    times_ms "$2" | row "  wall time of the command (hyperfine)"
    per_state "$3" "$4" >"$OUT/per_state.tsv"
    cut -f1 "$OUT/per_state.tsv" | awk '!seen[$0]++' | while IFS= read -r label; do
        awk -F'\t' -v l="$label" '$1 == l { print $2 }' "$OUT/per_state.tsv" | row "  $label"
    done
}

echo
echo "== summary (ms; agent-side rows from the event log, 1 ms resolution)"
: >"$SUMMARY"
section "deploy, artifact known" "$OUT/known.json" "$OUT/known.window" deploy
section "deploy, artifact new" "$OUT/new.json" "$OUT/new.window" deploy
section "warm rollback" "$OUT/rollback.json" "$OUT/rollback.window" rollback

# ---------------------------------------------------------------------------------------------
# RSS of the agent (and of the proxy, for scale), idle and while wrk drives the proxy.

mib() { awk -v kb="$1" 'BEGIN { print kb / 1024 }'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }
n_instances() {
    local n=0 file
    for file in "$STATE"/instances/*/pid; do
        [ -f "$file" ] && kill -0 "$(awk '{print $1; exit}' "$file")" 2>/dev/null && n=$((n + 1))
    done
    echo "$n"
}

load_phase() { # LABEL [with-deploys]
    local label="$1" deploys="${2:-}" samples="$OUT/rss.samples" n_deploys=0 loop_pid=""
    : >"$samples"
    wrk -t2 -c"$CONNECTIONS" -d"${LOAD_S}s" --latency "$PROXY/" >"$OUT/wrk.txt" 2>&1 &
    local wrk_pid=$!
    BG_PIDS+=("$wrk_pid")
    if [ -n "$deploys" ]; then
        rm -f "$OUT/stop" "$OUT/deploys.count"
        (
            while [ ! -f "$OUT/stop" ]; do
                "$WORK/deploy-next" || exit 1
                echo x >>"$OUT/deploys.count"
            done
        ) &
        loop_pid=$!
        BG_PIDS+=("$loop_pid")
    fi
    while kill -0 "$wrk_pid" 2>/dev/null; do
        echo "$(rss_kb "$AGENT_PID") $(rss_kb "$PROXY_PID")" >>"$samples"
        sleep 0.25
    done
    wait "$wrk_pid"
    if [ -n "$loop_pid" ]; then
        # The loop ends after the deploy it has in flight.
        touch "$OUT/stop"
        wait "$loop_pid"
        n_deploys="$(wc -l <"$OUT/deploys.count" 2>/dev/null || echo 0)"
    fi
    local rps non2xx errors p99
    rps="$(awk '/Requests\/sec/ {print $2}' "$OUT/wrk.txt")"
    p99="$(awk '$1 == "99%" {print $2}' "$OUT/wrk.txt")"
    max_latency="$(awk '$1 == "Latency" {print $4; exit}' "$OUT/wrk.txt")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.txt")"
    errors="$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$OUT/wrk.txt")"
    printf "%-44s agent %6.1f MiB max, proxy %6.1f MiB max; wrk %s req/s, p99 %s, max %s, non-2xx %s, socket errors %s%s\n" \
        "$label" \
        "$(awk '$1 > m {m = $1} END {print m / 1024}' "$samples")" \
        "$(awk '$2 > m {m = $2} END {print m / 1024}' "$samples")" \
        "$rps" "$p99" "$max_latency" "${non2xx:-0}" "${errors:-0}" \
        "$([ -n "$deploys" ] && echo ", $n_deploys deploys done meanwhile")" | tee -a "$SUMMARY"
}

echo
echo "== RSS" | tee -a "$SUMMARY"
sleep 3
printf "%-44s agent %6.1f MiB, proxy %6.1f MiB (%s instances running, warm ones included)\n" \
    "idle (after the runs above)" "$(mib "$(rss_kb "$AGENT_PID")")" \
    "$(mib "$(rss_kb "$PROXY_PID")")" "$(n_instances)" | tee -a "$SUMMARY"
load_phase "wrk ${LOAD_S}s, c=$CONNECTIONS through the proxy"
load_phase "same, with deploys back to back" with-deploys
sleep 2
printf "%-44s agent %6.1f MiB now, %6.1f MiB peak (VmHWM over the whole run)\n" \
    "idle again" "$(mib "$(rss_kb "$AGENT_PID")")" \
    "$(mib "$(hwm_kb "$AGENT_PID")")" | tee -a "$SUMMARY"

echo
echo "== summary again"
cat "$SUMMARY"
