#!/usr/bin/env bash
# Cluster benchmark (issue 17): on a two-node swarm made by scripts/swarm-nodes (two dockerd, each
# in a network namespace of its own; the agent on the host talks to the manager), with the demo
# app's image already on the manager:
#   - deploy -> traffic switched: `rollway deploy` of a new release (2 replicas, blue-green, only
#     `[env] VERSION` changes) until the proxy routes to it, from the event log, and the wall time;
#   - the warm rollback's switch (`deployment.weights` - `Verifying -> Shifting`) and wall time;
#   - requests lost while a node is drained (`docker node update --availability drain`) under
#     wrk's load through the agent's proxy (non-2xx answers and socket errors), also a node that
#     has every task of a one-replica release (the proxy holds requests until the replacement
#     passes a health check: lost, and wrk's max latency), and once while
#     node b loses power (scripts/swarm-nodes kill), with the time until its task runs elsewhere
#     and serves.
# The peer, measured in the same run by the same agent: the same app as processes on this host
# (the process driver), deploy and warm rollback.
#
# Usage (root): bench/cluster/run.sh [N]   N deploys, rollbacks and drains each (default 5)
# Environment: PROFILE (release, default, or debug), CONNECTIONS (wrk, default 8), DRAIN_S (wrk
#   duration around each drain, default 30; the drain starts 2 s in and must be over 1 s before
#   the end, else the run fails), BENCH_SRC / CARGO_TARGET_DIR as bench/deploy.
# It kills every process it started by pid and removes the nodes (scripts/swarm-nodes down).
set -euo pipefail

N="${1:-${N:-5}}"
PROFILE="${PROFILE:-release}"
CONNECTIONS="${CONNECTIONS:-8}"
DRAIN_S="${DRAIN_S:-30}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="${BENCH_SRC:-$ROOT}"
NODES_SCRIPT="$ROOT/scripts/swarm-nodes"

[ "$(id -u)" -eq 0 ] || { echo "bench/cluster: needs root (scripts/swarm-nodes)" >&2; exit 1; }
for tool in wrk jq curl docker; do
    command -v "$tool" >/dev/null || { echo "bench/cluster: \`$tool\` not found" >&2; exit 1; }
done

# --workspace --bins, as scripts/test builds them: the debug build reuses that one.
if [ "$PROFILE" = release ]; then
    cargo build --release --workspace --bins --manifest-path "$SRC/Cargo.toml"
else
    cargo build --workspace --bins --manifest-path "$SRC/Cargo.toml"
fi
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$SRC/Cargo.toml" | jq -r .target_directory)"
PROFILE_DIR="$([ "$PROFILE" = release ] && echo release || echo debug)"
RW="$TARGET_DIR/$PROFILE_DIR/rollway"
DEMO="$TARGET_DIR/$PROFILE_DIR/demo-app"

WORK="$(mktemp -d /tmp/rollway-bench-cluster.XXXXXX)"
# Run as root, the agent runs each app as a user of its own, which must reach its release folder.
chmod 711 "$WORK"
NODES="$(mktemp -d /tmp/rollway-nodes-XXXXXX)"
STATE="$WORK/state"
OUT="$WORK/out"
# The agent keeps env files on a tmpfs only.
RUNTIME="$(mktemp -d /dev/shm/rollway-bench-cluster.XXXXXX)"
mkdir -p "$STATE" "$OUT" "$WORK/swarm" "$WORK/peer"
AGENT_PID=""
BG_PIDS=()

in_state_dir() { # PID
    local cwd
    cwd="$(readlink "/proc/$1/cwd" 2>/dev/null)" || return 1
    [[ "$cwd" == "$STATE" || "$cwd" == "$STATE"/* ]]
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
    # The proxy and the peer's instances outlive the agent on purpose: by pid, each only after
    # checking that it runs inside this run's state directory.
    for dir in /proc/[0-9]*; do
        pid="${dir#/proc/}"
        in_state_dir "$pid" && kill -KILL "$pid" 2>/dev/null
    done
    "$NODES_SCRIPT" down "$NODES"
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status); agent log tail:" >&2
        tail -n 30 "$WORK/agent.log" >&2 2>/dev/null
    fi
    rm -rf "$WORK" "$RUNTIME"
}
trap cleanup EXIT

echo "== the nodes (scripts/swarm-nodes up)"
SWARM_NODES_OWNER=$$ "$NODES_SCRIPT" up "$NODES" >"$WORK/nodes.env"
cat "$WORK/nodes.env"
# shellcheck disable=SC1091
. "$WORK/nodes.env"
MANAGER=(docker -H "$MANAGER_SOCKET")

# The demo app's image on the manager: its binary, /bin/sh and the libraries they need.
IMG="$WORK/image"
mkdir -p "$IMG/usr/local/bin" "$IMG/bin" "$IMG/etc" "$IMG/tmp" "$IMG/run"
cp "$DEMO" "$IMG/usr/local/bin/demo-app"
cp "$(readlink -f /bin/sh)" "$IMG/bin/sh"
for lib in $(ldd "$DEMO" /bin/sh | grep -o '/[^ ]*' | grep -v ':$' | sort -u); do
    mkdir -p "$IMG$(dirname "$lib")"
    cp -L "$lib" "$IMG$lib"
done
tar -C "$IMG" -cf "$WORK/image.tar" .
"${MANAGER[@]}" import --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin HOST=0.0.0.0' \
    --change 'CMD ["demo-app"]' "$WORK/image.tar" bench-demo:1 >/dev/null

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
API_PORT="$(free_port)"
PROXY_PORT="$(free_port)"
while [ "$PROXY_PORT" = "$API_PORT" ]; do PROXY_PORT="$(free_port)"; done
API="http://127.0.0.1:$API_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"

common_toml() { # NAME
    cat <<TOML
[app]
name = "$1"

[env]
VERSION = "v0"

[strategy]
kind = "blue-green"

# The watch after the switch (default 1m) is not part of what is measured.
[analysis]
observe = "0s"

[routes.web]
hosts = ["$1.test"]
TOML
}
{
    common_toml swarm
    cat <<TOML

[services.web]
image = "bench-demo:1"
replicas = 2
health = { path = "/health", interval = "100ms", healthy = 2 }
drain = "1s"

[environments.production]
driver = "swarm"
TOML
} >"$WORK/swarm/rollway.toml"
cp "$DEMO" "$WORK/peer/demo-app"
{
    common_toml peer
    cat <<TOML

[services.web]
run = "./demo-app"
replicas = 2
health = { path = "/health", interval = "100ms", healthy = 2 }
drain = "1s"
TOML
} >"$WORK/peer/rollway.toml"

(cd "$STATE" && DOCKER_HOST="$MANAGER_SOCKET" ROLLWAY_SWARM_REGISTRY="$REGISTRY" \
    RUNTIME_DIRECTORY="$RUNTIME" \
    exec "$RW" agent --state "$STATE" --api "127.0.0.1:$API_PORT" --proxy "127.0.0.1:$PROXY_PORT") \
    >"$WORK/agent.log" 2>&1 &
AGENT_PID=$!
for _ in $(seq 1 100); do
    [ -s "$STATE/admin.token" ] && curl -sf "$API/healthz" >/dev/null 2>&1 && break
    kill -0 "$AGENT_PID" 2>/dev/null || { echo "the agent exited" >&2; exit 1; }
    sleep 0.1
done
ROLLWAY_TOKEN="$(cat "$STATE/admin.token")"
export ROLLWAY_TOKEN NO_COLOR=1

expect_answer() { # APP VERSION
    local got
    got="$(curl -sf -H "Host: $1.test" "$PROXY/" || true)"
    [ "$got" = "$2" ] || { echo "expected $1 to answer $2, got '$got'" >&2; exit 1; }
}
now_ns() { date +%s%N; }
bump() { # DIR: the next VERSION, printed
    local n
    n=$(( $(sed -n 's/^VERSION = "v\([0-9]*\)"/\1/p' "$1/rollway.toml") + 1 ))
    sed -i "s/^VERSION = .*/VERSION = \"v$n\"/" "$1/rollway.toml"
    echo "v$n"
}
# The deployment's `at` (ms) of its first event, of `Verifying -> Shifting` and of its first
# `deployment.weights`, from the event log: "start verifying weights".
marks() { # DEPLOYMENT_ID
    "$RW" events --json -n 2000 --agent "$API" 2>/dev/null | jq -r -s --arg id "$1" '
        [ .[] | select(.deployment_id == $id) ] | sort_by(.id)
        | "\(first.at) \(map(select(.kind == "deployment.state" and .message == "Verifying → Shifting")) | first.at) \(map(select(.kind == "deployment.weights")) | first.at)"'
}
# One timed operation: "wall_ms start->switched_ms switch_ms" appended to FILE.
timed() { # FILE, then the command (which prints the deployment as JSON with --json)
    local file="$1" t0 t1 id start verifying weights
    shift
    t0="$(now_ns)"
    "$@" --json >"$OUT/last.json" 2>>"$WORK/cli.log"
    t1="$(now_ns)"
    id="$(jq -r .id "$OUT/last.json")"
    read -r start verifying weights <<<"$(marks "$id")"
    echo "$(( (t1 - t0) / 1000000 )) $((weights - start)) $((weights - verifying))" >>"$file"
}

stats() { # column of numbers on stdin: median p90 max n
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR == 0) { printf "%8s %8s %8s %4s", "-", "-", "-", 0; exit }
        med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
        r = int(0.9 * NR); if (r < 0.9 * NR) r++
        printf "%8.1f %8.1f %8.1f %4d", med, v[r], v[NR], NR }'
}
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
rows() { # TITLE FILE
    printf "\n%-46s %8s %8s %8s %4s\n" "$1" median p90 max n | tee -a "$SUMMARY"
    printf "%-46s %s\n" "  wall time of the command" "$(awk '{print $1}' "$2" | stats)" | tee -a "$SUMMARY"
    printf "%-46s %s\n" "  start event -> traffic switched (weights)" "$(awk '{print $2}' "$2" | stats)" | tee -a "$SUMMARY"
    printf "%-46s %s\n" "  switch: weights - (Verifying->Shifting)" "$(awk '{print $3}' "$2" | stats)" | tee -a "$SUMMARY"
}

deploys_and_rollbacks() { # APP DIR
    local app="$1" dir="$2" version before
    echo "== $app: first deploy"
    "$RW" deploy --env production --dir "$dir" --agent "$API" >>"$WORK/cli.log" 2>&1
    expect_answer "$app" v0
    echo "== $app: $N deploys (only [env] VERSION changes)"
    for _ in $(seq 1 "$N"); do
        version="$(bump "$dir")"
        timed "$OUT/$app.deploy" "$RW" deploy --env production --dir "$dir" --agent "$API"
        expect_answer "$app" "$version"
    done
    echo "== $app: $N warm rollbacks (each after an untimed deploy)"
    for _ in $(seq 1 "$N"); do
        before="$(curl -sf -H "Host: $app.test" "$PROXY/")"
        bump "$dir" >/dev/null
        "$RW" deploy --env production --dir "$dir" --agent "$API" >>"$WORK/cli.log" 2>&1
        timed "$OUT/$app.rollback" "$RW" rollback --env production --app "$app" --agent "$API"
        expect_answer "$app" "$before"
    done
}

deploys_and_rollbacks swarm "$WORK/swarm"
deploys_and_rollbacks peer "$WORK/peer"

# Drains under load: each drain first deploys a new release (untimed), whose two tasks Swarm
# spreads over the two nodes (a drained node gets no tasks back by itself, so without it every
# task would be on one node), then drains one of the nodes, alternately, while wrk drives GET /
# through the proxy; once its task runs on the other node and both instances serve, it is made
# active again.
running_nodes() { # SERVICE: the node ids of its running tasks, sorted
    "${MANAGER[@]}" service ps --filter desired-state=running --format '{{.ID}}' "$1" |
        while read -r task; do
            "${MANAGER[@]}" inspect "$task" --format '{{if eq .Status.State "running"}}{{.NodeID}}{{end}}'
        done | sed '/^$/d' | sort
}
serving() { "$RW" status --env production --app "${1:-swarm}" --json --agent "$API" 2>/dev/null |
    jq '[.instances[] | select(.state == "serving")] | length'; }
current_service() { # the newest release's service (the serving one right after a deploy)
    "${MANAGER[@]}" service ls --format '{{.Name}}' |
        sed -n 's/^rollway-swarm-production-r\([0-9]*\)-web$/\1 &/p' | sort -n | tail -n 1 | cut -d' ' -f2
}
echo "== swarm: $N drains under wrk -c$CONNECTIONS, ${DRAIN_S}s each"
for i in $(seq 1 "$N"); do
    bump "$WORK/swarm" >/dev/null
    "$RW" deploy --env production --dir "$WORK/swarm" --agent "$API" >>"$WORK/cli.log" 2>&1
    service="$(current_service)"
    [ "$(running_nodes "$service" | uniq | wc -l)" -eq 2 ] || { echo "drain $i: $service's tasks are not on both nodes" >&2; exit 1; }
    node="$([ $((i % 2)) -eq 1 ] && echo "$WORKER_NODE" || echo "$MANAGER_NODE")"
    wrk -t2 -c"$CONNECTIONS" -d"${DRAIN_S}s" -H "Host: swarm.test" "$PROXY/" >"$OUT/wrk.$i" 2>&1 &
    wrk_pid=$!
    BG_PIDS+=("$wrk_pid")
    sleep 2
    t0="$(now_ns)"
    "${MANAGER[@]}" node update --availability drain "$node" >/dev/null
    moved=""
    for _ in $(seq 1 300); do
        if ! running_nodes "$service" | grep -qx "$node" && [ "$(running_nodes "$service" | wc -l)" -eq 2 ] \
            && [ "$(serving)" -eq 2 ]; then
            moved="$(( ($(now_ns) - t0) / 1000000 ))"
            break
        fi
        sleep 0.1
    done
    [ -n "$moved" ] || { echo "drain $i: the tasks did not move back into routing" >&2; exit 1; }
    if [ "$moved" -gt $(( (DRAIN_S - 3) * 1000 )) ]; then
        echo "drain $i: the move took ${moved} ms, longer than wrk's load covers; raise DRAIN_S" >&2
        exit 1
    fi
    wait "$wrk_pid"
    "${MANAGER[@]}" node update --availability active "$node" >/dev/null
    total="$(awk '/requests in/ {print $1}' "$OUT/wrk.$i")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.$i")"
    errors="$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$OUT/wrk.$i")"
    echo "${total:-0} ${non2xx:-0} ${errors:-0} $moved" >>"$OUT/drains"
    echo "   drain $i of node ${node:0:12}: ${total:-0} requests, non-2xx ${non2xx:-0}, socket errors ${errors:-0}, tasks moved and serving after ${moved} ms"
done

# Drains of the node that has every task of the release (issue 17's hold): app `solo`, one replica.
# The node its task runs on is drained under wrk (the task then moves to the other node, so the
# drains alternate); the agent takes the stopping task out of routing at once and the proxy holds
# the requests it cannot send until the replacement passes a health check. The drains above, with a
# task left on the other node, are the peer.
mkdir -p "$WORK/solo"
{
    common_toml solo
    cat <<TOML

[services.web]
image = "bench-demo:1"
replicas = 1
health = { path = "/health", interval = "100ms", healthy = 2 }
drain = "1s"

[environments.production]
driver = "swarm"
TOML
} >"$WORK/solo/rollway.toml"
"$RW" deploy --env production --dir "$WORK/solo" --agent "$API" >>"$WORK/cli.log" 2>&1
expect_answer solo v0
echo "== solo (1 replica): $N drains of the node with its task under wrk -c$CONNECTIONS, ${DRAIN_S}s each"
: >"$OUT/solo"
for i in $(seq 1 "$N"); do
    node="$(running_nodes rollway-solo-production-r1-web)"
    [ "$(echo "$node" | wc -w)" -eq 1 ] || { echo "solo drain $i: not one running task: $node" >&2; exit 1; }
    # wrk's own answer timeout (2 s by default) would count a held request as lost: a client
    # that waits less than the hold does lose it, so the timeout is the load's whole duration.
    wrk -t2 -c"$CONNECTIONS" -d"${DRAIN_S}s" --timeout "${DRAIN_S}s" -H "Host: solo.test" "$PROXY/" >"$OUT/wrk.solo.$i" 2>&1 &
    wrk_pid=$!
    BG_PIDS+=("$wrk_pid")
    sleep 2
    t0="$(now_ns)"
    "${MANAGER[@]}" node update --availability drain "$node" >/dev/null
    moved=""
    for _ in $(seq 1 300); do
        now_on="$(running_nodes rollway-solo-production-r1-web)"
        if [ -n "$now_on" ] && [ "$now_on" != "$node" ] && [ "$(serving solo)" -eq 1 ]; then
            moved="$(( ($(now_ns) - t0) / 1000000 ))"
            break
        fi
        sleep 0.1
    done
    [ -n "$moved" ] || { echo "solo drain $i: the task did not move back into routing" >&2; exit 1; }
    [ "$moved" -le $(( (DRAIN_S - 3) * 1000 )) ] || { echo "solo drain $i: the move took ${moved} ms; raise DRAIN_S" >&2; exit 1; }
    wait "$wrk_pid"
    "${MANAGER[@]}" node update --availability active "$node" >/dev/null
    total="$(awk '/requests in/ {print $1}' "$OUT/wrk.solo.$i")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.solo.$i")"
    errors="$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$OUT/wrk.solo.$i")"
    latency_max="$(awk '$1 == "Latency" {print $4; exit}' "$OUT/wrk.solo.$i")"
    echo "${total:-0} ${non2xx:-0} ${errors:-0} $moved $latency_max" >>"$OUT/solo"
    echo "   solo drain $i of node ${node:0:12}: ${total:-0} requests, non-2xx ${non2xx:-0}, socket errors ${errors:-0}, max latency $latency_max, moved and serving after ${moved} ms"
done

# Node b's power cut under load (once: the node stays dead): a new release first, spread over
# both nodes, then every process of node b killed while wrk drives the proxy.
echo "== swarm: node b's power cut under wrk -c$CONNECTIONS, ${DRAIN_S}s"
bump "$WORK/swarm" >/dev/null
"$RW" deploy --env production --dir "$WORK/swarm" --agent "$API" >>"$WORK/cli.log" 2>&1
service="$(current_service)"
running_nodes "$service" | grep -qx "$WORKER_NODE" || { echo "no task of $service on node b" >&2; exit 1; }
wrk -t2 -c"$CONNECTIONS" -d"${DRAIN_S}s" -H "Host: swarm.test" "$PROXY/" >"$OUT/wrk.kill" 2>&1 &
wrk_pid=$!
BG_PIDS+=("$wrk_pid")
sleep 2
t0="$(now_ns)"
"$NODES_SCRIPT" kill "$NODES" b
moved=""
for _ in $(seq 1 600); do
    if [ "$(running_nodes "$service" | grep -cx "$MANAGER_NODE")" -eq 2 ] && [ "$(serving)" -eq 2 ]; then
        moved="$(( ($(now_ns) - t0) / 1000000 ))"
        break
    fi
    sleep 0.1
done
[ -n "$moved" ] || { echo "node loss: the tasks were not rescheduled back into routing" >&2; exit 1; }
[ "$moved" -le $(( (DRAIN_S - 3) * 1000 )) ] || { echo "node loss: the move took ${moved} ms; raise DRAIN_S" >&2; exit 1; }
wait "$wrk_pid"
total="$(awk '/requests in/ {print $1}' "$OUT/wrk.kill")"
non2xx="$(awk '/Non-2xx/ {print $NF}' "$OUT/wrk.kill")"
errors="$(awk '/Socket errors/ { n = 0; for (i = 1; i <= NF; i++) if ($i ~ /^[0-9]+,?$/) n += $i; print n }' "$OUT/wrk.kill")"
latency_max="$(awk '$1 == "Latency" {print $4; exit}' "$OUT/wrk.kill")"
echo "   node b killed: ${total:-0} requests, non-2xx ${non2xx:-0}, socket errors ${errors:-0}, max latency $latency_max, rescheduled and serving after ${moved} ms"

echo
echo "== summary (ms; event rows from the event log, 1 ms resolution)" | tee -a "$SUMMARY"
rows "swarm (2 nodes): deploy" "$OUT/swarm.deploy"
rows "swarm (2 nodes): warm rollback" "$OUT/swarm.rollback"
rows "peer, processes on this host: deploy" "$OUT/peer.deploy"
rows "peer, processes on this host: warm rollback" "$OUT/peer.rollback"
printf "\n%-46s %s\n" "drains under load: requests, lost (non-2xx + socket errors)" \
    "$(awk '{ t += $1; l += $2 + $3 } END { print t ", " l }' "$OUT/drains")" | tee -a "$SUMMARY"
printf "%-46s %s\n" "  drain -> tasks moved and serving (ms)" "$(awk '{print $4}' "$OUT/drains" | stats)" | tee -a "$SUMMARY"
printf "%-46s %s\n" "drains of the node with every task (1 replica): requests, lost" \
    "$(awk '{ t += $1; l += $2 + $3 } END { print t ", " l }' "$OUT/solo")" | tee -a "$SUMMARY"
printf "%-46s %s\n" "  drain -> task moved and serving (ms)" "$(awk '{print $4}' "$OUT/solo" | stats)" | tee -a "$SUMMARY"
printf "%-46s %s\n" "  wrk's max latency per drain (the longest hold)" "$(awk '{print $5}' "$OUT/solo" | tr '\n' ' ')" | tee -a "$SUMMARY"
printf "%-46s %s requests, %s lost; rescheduled and serving after %s ms; max latency %s\n" \
    "node b's power cut under load:" "${total:-0}" "$(( ${non2xx:-0} + ${errors:-0} ))" "$moved" "$latency_max" | tee -a "$SUMMARY"
printf "load average at the end: %s\n" "$(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$SUMMARY"
