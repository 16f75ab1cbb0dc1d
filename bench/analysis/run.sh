#!/usr/bin/env bash
# Analysis benchmark (issue 7): time from a bad canary's first bad answer to it holding 0 weight, at
# several request rates and 5xx shares, with the agent's real analysis, proxy and demo app on
# 127.0.0.1. Builds the release binaries and runs crates/testkit/examples/analysis_bench.rs, which
# starts one agent in a temp dir and kills it, its proxy and its instances (by pid, inside that
# directory) when it ends.
#
# Usage: bench/analysis/run.sh [RUNS] [RATES] [SHARES]
#   defaults: 3 runs each, rates 50,500,5000 req/s, shares 0.01,0.05,0.5
# Environment: INTERVAL (analysis.interval, default 1s), WINDOW (analysis.window, default 10m),
#   HEALTHY_RUNS (default 5), MIN_REQUESTS (default 50), WEIGHT (the
#   canary step, default 20), BENCH_SRC (the source tree to build, default this checkout),
#   CARGO_TARGET_DIR (as cargo reads it).
set -euo pipefail

RUNS="${1:-3}"
RATES="${2:-50,500,5000}"
SHARES="${3:-0.01,0.05,0.5}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SRC="${BENCH_SRC:-$ROOT}"

cargo build --release -p rollway --manifest-path "$SRC/Cargo.toml"
cargo build --release -p testkit --bin demo-app --example analysis_bench --manifest-path "$SRC/Cargo.toml"
TARGET_DIR="$(cargo metadata --format-version 1 --no-deps --manifest-path "$SRC/Cargo.toml" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"

env "CARGO_BIN_EXE_demo-app=$TARGET_DIR/release/demo-app" \
    "$TARGET_DIR/release/examples/analysis_bench" "$TARGET_DIR/release/rollway" "$RUNS" "$RATES" "$SHARES"
