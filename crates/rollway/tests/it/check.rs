//! `rollway check`: diagnostics with file:line:col and exit 2, the parity report, JSON.

use std::path::Path;

use crate::{repo_root, rollway, transcript};

fn write(dir: &Path, text: &str) {
    std::fs::write(dir.join("rollway.toml"), text).expect("write manifest");
}

#[test]
fn several_errors_are_reported_at_once_with_exit_2() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "[app]\nname = \"shop\"\n\n[services.web]\nrun = \"./server\"\nhealth = { path = \"/up\" }\nreplicas = \"two\"\ndrain = 30\n\n[strategy]\nkidn = \"rolling\"\n",
    );
    let output = rollway(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(2));
    insta::assert_snapshot!(transcript(&output, dir.path()));
}

#[test]
fn json_errors_carry_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "[app]\nname = \"shop\"\n\n[services.web]\nrun = \"./server\"\nhelth = { path = \"/up\" }\nhealth = { path = \"/up\" }\n",
    );
    let output = rollway(dir.path(), &["check", "--json"]);
    assert_eq!(output.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["ok"], false);
    assert_eq!(json["errors"][0]["line"], 6);
    assert_eq!(json["errors"][0]["column"], 1);
    assert_eq!(json["errors"][0]["help"], "did you mean `health`?");
}

#[test]
fn logistix_passes_with_a_parity_report() {
    let dir = repo_root().join("examples/logistix");
    let output = rollway(&dir, &["check"]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    insta::assert_snapshot!(transcript(&output, &dir));
}

#[test]
fn logistix_production_puts_production_first() {
    let dir = repo_root().join("examples/logistix");
    let output = rollway(&dir, &["check", "--env", "production"]);
    assert_eq!(output.status.code(), Some(0));
    insta::assert_snapshot!(transcript(&output, &dir));
}

#[test]
fn logistix_json_names_required_config() {
    let dir = repo_root().join("examples/logistix");
    let output = rollway(&dir, &["check", "--env", "production", "--json"]);
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).expect("stdout is JSON");
    assert_eq!(json["environments"][0]["name"], "production");
    assert_eq!(
        json["environments"][0]["required"]["secrets"],
        serde_json::json!(["DATABASE_URL", "JWT_SECRET"])
    );
    assert_eq!(json["parity"]["environments"][0], "production");
}

#[test]
fn unknown_environment_suggests_the_closest() {
    let dir = repo_root().join("examples/logistix");
    let output = rollway(&dir, &["check", "--env", "prodution"]);
    assert_eq!(output.status.code(), Some(2));
    insta::assert_snapshot!(transcript(&output, &dir));
}

#[test]
fn missing_manifest_points_at_init() {
    let dir = tempfile::tempdir().expect("temp dir");
    let output = rollway(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(2));
    insta::assert_snapshot!(transcript(&output, dir.path()));
}

#[test]
fn a_route_answering_every_host_is_a_warning() {
    let dir = tempfile::tempdir().expect("temp dir");
    write(
        dir.path(),
        "[app]\nname = \"shop\"\n\n[services.web]\nrun = \"./server\"\nhealth = { path = \"/up\" }\n",
    );
    let output = rollway(dir.path(), &["check"]);
    assert_eq!(output.status.code(), Some(0));
    insta::assert_snapshot!(transcript(&output, dir.path()));
}
