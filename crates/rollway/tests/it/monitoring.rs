//! deploy/monitoring: the alert rules, their unit tests, the Prometheus configuration and the
//! Grafana dashboard's expressions, all through Prometheus's own `promtool` (deploy/monitoring/check.sh).
//!
//! Runs when `promtool` is on PATH (Debian: `apt-get install prometheus`) or `ROLLWAY_E2E` is set
//! (then a missing promtool fails the test); skips with one printed line otherwise.

use std::process::Command;

use crate::repo_root;

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

#[test]
fn monitoring_files_pass_promtool_and_the_dashboard_check() {
    if !on_path("promtool") && std::env::var_os("ROLLWAY_E2E").is_none() {
        println!("skipped: no promtool on PATH (apt-get install prometheus, or set ROLLWAY_E2E)");
        return;
    }
    let script = repo_root().join("deploy/monitoring/check.sh");
    let output = Command::new("bash")
        .arg(&script)
        .current_dir(repo_root())
        .output()
        .expect("bash runs deploy/monitoring/check.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "deploy/monitoring/check.sh failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("check.sh: all monitoring files pass"),
        "check.sh ended without its success line:\n{stdout}\n{stderr}"
    );
}
