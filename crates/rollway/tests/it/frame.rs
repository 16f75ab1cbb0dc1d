//! `--help`, `--version` and usage errors.

use crate::{rollway, transcript};

#[test]
fn help_lists_the_commands() {
    let dir = tempfile::tempdir().expect("temp dir");
    insta::assert_snapshot!(transcript(&rollway(dir.path(), &["--help"]), dir.path()));
}

#[test]
fn version() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = rollway(dir.path(), &["--version"]);
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("rollway {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_command_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = rollway(dir.path(), &["chek"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("similar subcommand exists: 'check'"));
}
