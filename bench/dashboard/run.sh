#!/usr/bin/env bash
# Dashboard benchmark (issue 18): the overview of 20 apps x 3 environments rendered by the agent's
# own router over 127.0.0.1 (time per request and page weight with every asset), and the memory that
# 10 signed-in followers of the event stream add. Runs the ignored test
# `dashboard::tests::bench_overview_20_apps_3_environments` of crates/agent in a release build.
#
# Usage: bench/dashboard/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$ROOT"
cargo test --release -p agent --lib dashboard::tests::bench_overview_20_apps_3_environments \
    -- --ignored --nocapture --test-threads 1 2>&1 | grep -E '^(overview|page weight|10 followers)'
