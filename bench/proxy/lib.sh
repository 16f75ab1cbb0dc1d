# Shared by the bench/proxy scripts (sourced; ROOT is the repository's root).

# Sets BIN to the bench_proxy binary: BENCH_PROXY_BIN when set (another build, e.g. a copy of an earlier
# commit's, for a before and after in one session), otherwise this tree's, built in release.
bench_proxy_bin() {
    if [ -n "${BENCH_PROXY_BIN:-}" ]; then
        BIN="$BENCH_PROXY_BIN"
    else
        cargo build --release -p proxy --example bench_proxy --manifest-path "$ROOT/Cargo.toml"
        local target_dir
        target_dir="$(cargo metadata --format-version 1 --no-deps --manifest-path "$ROOT/Cargo.toml" | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
        BIN="$target_dir/release/examples/bench_proxy"
    fi
}
