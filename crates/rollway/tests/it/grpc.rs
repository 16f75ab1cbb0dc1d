//! A gRPC service deployed behind Rollway end to end: `protocol = "grpc"` in the manifest, health checked
//! with `grpc.health.v1.Health/Check`, and a real grpcio client calling through the agent's proxy with no
//! failed call across blue-green deploys.
//!
//! The server and client are the proxy's test scripts (`crates/proxy/tests/it/grpc/*.py`). Needs python3
//! with grpcio; `scripts/test` installs it. Outside it the test skips with a notice; inside it
//! (`ROLLWAY_E2E`) a missing grpcio fails it.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::agent::Setup;
use crate::repo_root;

const ENV: &str = "production";
const HOST: &str = "grpc.test";

fn grpc_available() -> bool {
    let imports = |python: &str| {
        Command::new(python)
            .args(["-c", "import grpc"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    // The client runs as the test; the server as its app's own user when the agent is root,
    // which finds the system's python3 (a python3 in root's home is out of its reach).
    let as_root = std::fs::read_to_string("/proc/self/status")
        .is_ok_and(|status| status.lines().any(|line| line.starts_with("Uid:\t0\t")));
    let found = imports("python3") && (!as_root || imports("/usr/bin/python3"));
    if !found {
        assert!(
            std::env::var_os("ROLLWAY_E2E").is_none(),
            "python3 with grpcio is missing (also the system's, for apps running as their own users); scripts/test installs it"
        );
        eprintln!("notice: skipped, python3 with grpcio not found (scripts/test installs it)");
    }
    found
}

/// The gRPC app in `dir`, answering as `version`.
fn write_app(dir: &Path, version: &str) {
    std::fs::create_dir_all(dir).expect("app dir");
    let scripts = repo_root().join("crates/proxy/tests/it/grpc");
    std::fs::copy(scripts.join("server.py"), dir.join("server.py")).expect("copy server.py");
    let manifest = format!(
        r#"[app]
name = "grpcdemo"

[services.web]
run = "python3 server.py {version}"
protocol = "grpc"
health = {{ path = "/grpc.health.v1.Health/Check" }}

[routes.web]
hosts = ["{HOST}"]

[analysis]
observe = "5s"
"#
    );
    std::fs::write(dir.join("rollway.toml"), manifest).expect("write rollway.toml");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_service_is_deployed_and_switched_with_no_failed_call() {
    if !grpc_available() {
        return;
    }
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app_dir = setup.dir.path().join("grpc-app");
    write_app(&app_dir, "A");
    agent.deploy_dir(&app_dir, ENV).await.assert_code(0);

    let stop_file = setup.dir.path().join("stop-client");
    let mut command = Command::new("python3");
    command
        .arg(repo_root().join("crates/proxy/tests/it/grpc/client.py"))
        .arg(agent.proxy_addr().to_string())
        .arg(HOST)
        .arg(&stop_file)
        .arg("200")
        .arg("1000000")
        // No call fails on purpose here: the analysis would rightly roll the deploy back.
        .arg("0")
        .stderr(Stdio::inherit());
    let client = tokio::task::spawn_blocking(move || command.output());

    for version in ["B", "A"] {
        write_app(&app_dir, version);
        agent.deploy_dir(&app_dir, ENV).await.assert_code(0);
    }
    std::fs::write(&stop_file, b"").expect("stop the client");
    let output = client.await.expect("join").expect("run the gRPC client");
    assert!(output.status.success(), "client failed: {output:?}");
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the client's report");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["errors"], serde_json::json!([]), "{report}");
    assert!(report["ok"].as_u64().is_some_and(|ok| ok > 0), "{report}");
    let versions: Vec<&String> = report["versions"]
        .as_object()
        .map(|versions| versions.keys().collect())
        .unwrap_or_default();
    assert_eq!(versions, ["A", "B"], "{report}");
}
