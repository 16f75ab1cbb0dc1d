#!/usr/bin/env bash
# Dashboard benchmark (issue 18) against a real `rollway agent`: a release build with its proxy
# running, APPS apps x 3 environments deployed with the process driver (demo-app), 10 signed-in
# dashboards following /events/stream as the page's script does while redeploys make events flow.
# Prints the agent's VmRSS (/proc/PID/status) against the 30 MiB goal, the overview's render time
# and page weight, and the machine's load. Everything binds 127.0.0.1 in a temp dir, removed on
# exit with every process started there (by pid). Needs python3 (standard library only).
#
# Usage: bench/dashboard/run.sh [APPS]      APPS apps (default 20), each in 3 environments
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
cargo build --release -p rollway --bin rollway -p testkit --bin demo-app
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
exec python3 "$ROOT/bench/dashboard/bench.py" "$TARGET/release/rollway" "$TARGET/release/demo-app" "${1:-20}"
