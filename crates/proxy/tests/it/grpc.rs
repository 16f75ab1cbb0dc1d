//! gRPC behind the proxy with real parts: a grpcio server and client (Python, `tests/it/grpc/*.py`),
//! unary and server-streaming calls over an h2c upstream, through blue-green switches, and `grpc-status`
//! counted in the per-release stats.
//!
//! Needs python3 with grpcio; `scripts/test` installs it. Outside it the tests skip with a notice; inside it
//! (`ROLLWAY_E2E`) a missing grpcio fails them.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use proxy::{DrainOutcome, InstanceId, ProxyConfig, ReleaseId, RouteSettings, UpstreamProtocol};

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, route};

/// Whether python3 with grpcio is there; panics inside `scripts/test` when it is not.
fn grpc_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import grpc"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !found {
        assert!(
            std::env::var_os("ROLLWAY_E2E").is_none(),
            "python3 with grpcio is missing; scripts/test installs it"
        );
        eprintln!("notice: skipped, python3 with grpcio not found (scripts/test installs it)");
    }
    found
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/grpc")
        .join(name)
}

/// A grpcio server answering as `version`; killed on drop.
struct GrpcServer {
    child: Child,
    addr: SocketAddr,
}

impl GrpcServer {
    fn start(version: &str) -> GrpcServer {
        let mut child = Command::new("python3")
            .arg(script("server.py"))
            .arg(version)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the gRPC server");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the gRPC server's port");
        let port: u16 = line.trim().parse().expect("a port on the first line");
        GrpcServer {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        }
    }
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the client loop counted.
#[derive(Debug, serde::Deserialize)]
struct ClientReport {
    ok: u64,
    failed: u64,
    errors: Vec<String>,
    versions: std::collections::BTreeMap<String, u64>,
    failed_as_asked: u64,
}

/// Runs the client loop against `proxy` until `stop_file` exists or the bounds pass.
async fn run_client(
    proxy: SocketAddr,
    stop_file: &Path,
    max_seconds: u64,
    max_calls: u64,
) -> ClientReport {
    let mut command = Command::new("python3");
    command
        .arg(script("client.py"))
        .arg(proxy.to_string())
        .arg(HOST)
        .arg(stop_file)
        .arg(max_seconds.to_string())
        .arg(max_calls.to_string())
        .stderr(Stdio::inherit());
    let output = tokio::task::spawn_blocking(move || command.output())
        .await
        .expect("join")
        .expect("run the gRPC client");
    assert!(output.status.success(), "client failed: {output:?}");
    serde_json::from_slice(&output.stdout).expect("the client's JSON report")
}

fn grpc_settings() -> RouteSettings {
    RouteSettings {
        protocol: UpstreamProtocol::Grpc,
        ..RouteSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_and_streaming_calls_pass_and_grpc_status_is_counted() {
    if !grpc_available() {
        return;
    }
    let server = GrpcServer::start("A");
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), grpc_settings()).await;
    test_proxy.add_ready("g-a", "A", server.addr);
    let scratch = tempfile::tempdir().expect("tempdir");
    let report = run_client(test_proxy.addr, &scratch.path().join("stop"), 60, 200).await;
    assert_eq!((report.failed, report.ok), (0, 180), "{report:?}");
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.failed_as_asked, 20, "{report:?}");
    assert_eq!(report.versions.get("A"), Some(&180), "{report:?}");
    let stats = test_proxy.proxy.stats(&ReleaseId::new("A")).expect("stats");
    // `Fail` ends in INTERNAL inside a 200 answer's trailers: counted as a server error, not a success.
    assert_eq!(
        (stats.requests.success, stats.requests.server_error),
        (180, 20),
        "{stats:?}"
    );
    assert_eventually!(
        test_proxy
            .proxy
            .stats(&ReleaseId::new("A"))
            .expect("stats")
            .in_flight
            == 0,
        "calls still count as in flight"
    );
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blue_green_switches_fail_no_grpc_call() {
    if !grpc_available() {
        return;
    }
    const N_SWITCHES: usize = 10;
    let servers = [GrpcServer::start("A"), GrpcServer::start("B")];
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), grpc_settings()).await;
    let proxy = &test_proxy.proxy;
    test_proxy.add_ready("g-0", "r-0", servers[0].addr);
    let scratch = tempfile::tempdir().expect("tempdir");
    let stop_file = scratch.path().join("stop");
    let client = tokio::spawn({
        let stop_file = stop_file.clone();
        let addr = test_proxy.addr;
        async move { run_client(addr, &stop_file, 120, 1_000_000).await }
    });
    for switch in 1..=N_SWITCHES {
        let old_instance = InstanceId::new(format!("g-{}", switch - 1));
        let old_release = ReleaseId::new(format!("r-{}", switch - 1));
        let new_release = ReleaseId::new(format!("r-{switch}"));
        test_proxy.add_ready(
            &format!("g-{switch}"),
            new_release.as_str(),
            servers[switch % 2].addr,
        );
        // Calls reach the old release on every switch, so each drain has something to wait for.
        let before = proxy.stats(&old_release).expect("stats").total_requests();
        assert_eventually!(
            proxy.stats(&old_release).expect("stats").total_requests() > before + 2,
            "release `{old_release}` got no calls"
        );
        proxy
            .set_weights(
                &route(),
                &[(new_release.clone(), 100), (old_release.clone(), 0)],
            )
            .expect("set weights");
        let outcome = proxy
            .drain(&old_instance, Duration::from_secs(5))
            .await
            .expect("drain");
        assert_eq!(outcome, DrainOutcome::Drained, "switch {switch}");
        proxy.remove(&old_instance).expect("remove");
    }
    std::fs::write(&stop_file, b"").expect("stop file");
    let report = client.await.expect("join");
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(report.ok > N_SWITCHES as u64 * 3, "{report:?}");
    assert!(
        report.versions.contains_key("A") && report.versions.contains_key("B"),
        "{report:?}"
    );
    test_proxy.stop().await;
}
