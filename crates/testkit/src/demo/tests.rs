//! Unit tests of locating and starting the demo app (the integration tests cover its behaviour).

use super::*;

/// `cargo test -p testkit --lib` does not build the `demo-app` binary, so this also exercises the
/// `cargo build` fallback when run on a clean target directory.
#[test]
fn demo_app_path_yields_an_existing_binary() {
    let path = demo_app_path();
    assert!(path.is_file(), "`{}` is not a file", path.display());
    assert_eq!(demo_app_path(), path);
}
