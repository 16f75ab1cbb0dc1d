//! The proxy as its own process (`proxy::process::run`), driven over its control socket: swaps by
//! desired state under load, new instances warmed before they are weighted in, the saved routing after a
//! restart, the socket's mode and the single-proxy lock.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use proxy::control_client::{ControlClient, ControlClientError};
use proxy::control_socket::SOCKET_FILE_NAME;
use proxy::process::{ProcessConfig, ProcessError};
use proxy::{
    DesiredInstance, DesiredPool, DesiredRoute, DesiredState, ObservedInstanceState,
    ROUTES_FILE_NAME,
};
use testkit::load::Load;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::assert_eventually;
use crate::support::{HOST, demo, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_state_swaps_releases_under_load_with_no_failed_request() {
    let process_a = demo("A");
    let process_b = demo("B");
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;

    let observed = running
        .client
        .put_state(&one_release("r-a", "a", process_a.addr()))
        .await
        .expect("put A");
    assert_eq!(
        instance_state(&observed, "a"),
        Some(ObservedInstanceState::Ready)
    );
    let answer = get(running.addr, HOST, "/").await;
    assert_eq!(
        answer.headers().get("x-version").map(|v| v.as_bytes()),
        Some(&b"A"[..])
    );

    let load = Load::new(running.addr)
        .host(HOST)
        .concurrency(4)
        .duration(Duration::from_secs(30))
        .start();
    assert_eventually!(
        load.snapshot().versions.get("A").copied().unwrap_or(0) > 20,
        "A got no traffic: {}",
        load.snapshot()
    );
    // B in, A out, in one desired state.
    let observed = running
        .client
        .put_state(&one_release("r-b", "b", process_b.addr()))
        .await
        .expect("put B");
    assert_eq!(
        instance_state(&observed, "b"),
        Some(ObservedInstanceState::Ready)
    );
    assert!(
        matches!(
            instance_state(&observed, "a"),
            Some(ObservedInstanceState::Draining | ObservedInstanceState::Drained) | None
        ),
        "A still takes requests: {observed:?}"
    );
    assert_eventually!(
        instance_state(&running.client.state().await.expect("state"), "a").is_none(),
        "A was never removed"
    );
    let b_before = load.snapshot().versions.get("B").copied().unwrap_or(0);
    assert_eventually!(
        load.snapshot().versions.get("B").copied().unwrap_or(0) > b_before + 20,
        "B got no traffic after the swap: {}",
        load.snapshot()
    );
    let report = load.stop().await;

    report.assert_no_failures();
    assert!(
        report.versions.get("A").copied().unwrap_or(0) > 20,
        "{report}"
    );
    assert!(
        report.versions.get("B").copied().unwrap_or(0) > 20,
        "{report}"
    );
    let stats = running.client.stats().await.expect("stats");
    let release_a = stats
        .iter()
        .find(|stats| stats.release == "r-a")
        .expect("r-a stats");
    assert_eq!(release_a.in_flight, 0);
    assert_eq!(release_a.requests.server_error, 0);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_is_warmed_from_every_worker_before_it_takes_traffic() {
    let process_a = demo("A");
    let app_b = RecordingApp::start().await;
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    running
        .client
        .put_state(&warmed(one_release("r-a", "a", process_a.addr())))
        .await
        .expect("put A");
    let load = Load::new(running.addr)
        .host(HOST)
        .concurrency(8)
        .duration(Duration::from_secs(30))
        .start();
    assert_eventually!(
        load.snapshot().versions.get("A").copied().unwrap_or(0) > 50,
        "A got no traffic: {}",
        load.snapshot()
    );

    running
        .client
        .put_state(&warmed(one_release("r-b", "b", app_b.addr)))
        .await
        .expect("put B");
    assert_eventually!(
        load.snapshot().versions.get("B").copied().unwrap_or(0) > 50,
        "B got no traffic after the switch: {}",
        load.snapshot()
    );
    let report = load.stop().await;
    report.assert_no_failures();

    let seen = app_b.seen();
    let first_routed = seen
        .iter()
        .position(|request| request.path == "/")
        .expect("B got a routed request");
    let warm: Vec<&Seen> = seen
        .iter()
        .filter(|request| request.path == "/health")
        .collect();
    // Two rounds of at least two connections from each worker (one or more workers).
    assert!(warm.len() >= 4, "too few warm requests: {seen:?}");
    assert!(
        seen[..first_routed]
            .iter()
            .all(|request| request.path == "/health"),
        "B was weighted in before its warm ended: {seen:?}"
    );
    assert!(
        seen[first_routed..]
            .iter()
            .all(|request| request.path != "/health"),
        "a warm request came after B took traffic: {seen:?}"
    );
    let warm_connections: std::collections::BTreeSet<usize> =
        warm.iter().map(|request| request.connection).collect();
    assert!(
        warm_connections.len() >= 2,
        "the warm opened fewer than two connections: {seen:?}"
    );
    // The traffic found the warm connections open and went on them (a burst larger than the warm may
    // open more beside them).
    assert!(
        seen[first_routed..]
            .iter()
            .any(|request| warm_connections.contains(&request.connection)),
        "B's routed requests all came on new connections: {seen:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_without_a_warm_path_switches_to_a_new_instance_cold() {
    let process_a = demo("A");
    let app_b = RecordingApp::start().await;
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    running
        .client
        .put_state(&one_release("r-a", "a", process_a.addr()))
        .await
        .expect("put A");
    assert_eq!(get(running.addr, HOST, "/").await.status(), 200);
    running
        .client
        .put_state(&one_release("r-b", "b", app_b.addr))
        .await
        .expect("put B");
    assert_eq!(get(running.addr, HOST, "/").await.status(), 200);
    let seen = app_b.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|request| request.path == "/"),
        "{seen:?}"
    );
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_release_of_a_route_is_not_warmed() {
    // Nothing serves the route yet, so nothing waits for a warm: the instance is routed at once.
    let app_a = RecordingApp::start().await;
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    running
        .client
        .put_state(&warmed(one_release("r-a", "a", app_a.addr)))
        .await
        .expect("put A");
    assert_eq!(get(running.addr, HOST, "/").await.status(), 200);
    let seen = app_a.seen();
    assert!(
        !seen.is_empty() && seen.iter().all(|request| request.path == "/"),
        "{seen:?}"
    );
    running.stop().await;
}

/// `state` with a slow start of `ms` on every route.
fn slow(mut state: DesiredState, ms: u64) -> DesiredState {
    for route in &mut state.routes {
        route.slow_start_ms = ms;
    }
    state
}

/// The route's weights now, as `release:weight` sorted by release.
fn weights_of(observed: &proxy::ObservedState) -> Vec<String> {
    let mut weights: Vec<String> = observed
        .routes
        .iter()
        .flat_map(|route| route.weights.iter())
        .map(|weight| format!("{}:{}", weight.release, weight.weight))
        .collect();
    weights.sort();
    weights
}

/// Samples the weights every 20 ms until `done` holds for them or `bound` passed since `start`.
async fn weights_until(
    running: &RunningProxy,
    start: std::time::Instant,
    bound: Duration,
    done: impl Fn(&proxy::ObservedState) -> bool,
) -> Vec<(Duration, Vec<String>, Option<ObservedInstanceState>)> {
    let mut seen = Vec::new();
    while start.elapsed() < bound {
        let observed = running.client.state().await.expect("state");
        seen.push((
            start.elapsed(),
            weights_of(&observed),
            instance_state(&observed, "a"),
        ));
        if done(&observed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_release_takes_its_share_in_steps_and_the_old_one_drains_only_at_the_end() {
    // Ten steps of 500 ms. The test sees a step only when one of its looks lands in it, and a look
    // can take up to the control client's 2 s timeout on a loaded machine (a stalled look fails the
    // test anyway): the put's answer shows step 1, some look lands in steps 2-5 ([0.5 s, 2.5 s)), another
    // in steps 6-9 ([2.5 s, 4.5 s)), and the last shows the end. With 100 ms steps, one stall of a
    // second hid every middle step.
    const RAMP_MS: u64 = 5_000;
    let step = Duration::from_millis(RAMP_MS / 10);
    let process_a = demo("A");
    let process_b = demo("B");
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    running
        .client
        .put_state(&slow(one_release("r-a", "a", process_a.addr()), RAMP_MS))
        .await
        .expect("put A");
    let load = Load::new(running.addr)
        .host(HOST)
        .concurrency(4)
        .duration(Duration::from_secs(30))
        .start();
    assert_eventually!(
        load.snapshot().versions.get("A").copied().unwrap_or(0) > 20,
        "A got no traffic: {}",
        load.snapshot()
    );

    // B in, A out, in one state; nobody sends another (as when the agent is killed mid-ramp): the
    // proxy steps the ramp on its own.
    let b = slow(warmed(one_release("r-b", "b", process_b.addr())), RAMP_MS);
    let put_at = std::time::Instant::now();
    let observed = running.client.put_state(&b).await.expect("put B");
    assert_eq!(weights_of(&observed), ["r-a:90", "r-b:10"]);
    assert_eq!(
        instance_state(&observed, "a"),
        Some(ObservedInstanceState::Ready)
    );
    // The ramp's length, then the patience of every other wait.
    let seen = weights_until(
        &running,
        put_at,
        Duration::from_millis(RAMP_MS) + Duration::from_secs(10),
        |observed| instance_state(observed, "a").is_none(),
    )
    .await;
    // The share of B only grows, in steps, and A takes requests until B has them all.
    let b_weight = |weights: &[String]| -> Option<u8> {
        weights
            .iter()
            .find_map(|w| w.strip_prefix("r-b:"))
            .and_then(|w| w.parse().ok())
    };
    let b_weights: Vec<u8> = std::iter::once(10)
        .chain(seen.iter().filter_map(|(_, weights, _)| b_weight(weights)))
        .collect();
    assert!(
        b_weights.windows(2).all(|pair| pair[0] <= pair[1]),
        "{seen:?}"
    );
    let steps: std::collections::BTreeSet<u8> = b_weights.iter().copied().collect();
    assert!(steps.len() >= 4, "too few steps seen: {seen:?}");
    // And never ahead of its time: a look that ended `at` after the put was sent (the ramp started
    // later) shows at most step `at / step + 1`, a tenth of the way each.
    for (at, weights, _) in &seen {
        let due = u32::try_from(at.as_millis() / step.as_millis() + 1).unwrap_or(u32::MAX);
        let most = u8::try_from(due.min(10) * 10).unwrap_or(100);
        assert!(
            b_weight(weights).is_some_and(|weight| weight <= most),
            "B's share ahead of the ramp at {at:?}: {seen:?}"
        );
    }
    for (_, weights, a) in &seen {
        if weights
            .iter()
            .any(|w| w.starts_with("r-b:") && w != "r-b:100")
        {
            assert_eq!(*a, Some(ObservedInstanceState::Ready), "{seen:?}");
        }
    }
    let (took, last, a) = seen.last().expect("sampled");
    assert_eq!(*last, ["r-b:100"], "{seen:?}");
    assert_eq!(*a, None, "{seen:?}");
    // The last step (the state as sent) comes 9 steps after the first.
    assert!(
        *took >= step * 9,
        "the ramp ended {took:?} after the state was sent"
    );
    // What is saved is the state as sent: a restart applies it at once.
    let saved: serde_json::Value = serde_json::from_slice(
        &std::fs::read(state_dir.path().join(ROUTES_FILE_NAME)).expect("routes.json"),
    )
    .expect("routes.json is JSON");
    assert_eq!(
        saved["state"],
        serde_json::to_value(&b).expect("state as JSON")
    );
    let b_before = load.snapshot().versions.get("B").copied().unwrap_or(0);
    assert_eventually!(
        load.snapshot().versions.get("B").copied().unwrap_or(0) > b_before + 20,
        "B got no traffic after the ramp: {}",
        load.snapshot()
    );
    let report = load.stop().await;
    report.assert_no_failures();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_during_the_ramp_gives_all_traffic_back_at_once() {
    let process_a = demo("A");
    let process_b = demo("B");
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    let a = slow(one_release("r-a", "a", process_a.addr()), 2_000);
    running.client.put_state(&a).await.expect("put A");
    let load = Load::new(running.addr)
        .host(HOST)
        .concurrency(4)
        .duration(Duration::from_secs(30))
        .start();
    assert_eventually!(
        load.snapshot().versions.get("A").copied().unwrap_or(0) > 20,
        "A got no traffic: {}",
        load.snapshot()
    );
    let b = slow(one_release("r-b", "b", process_b.addr()), 2_000);
    running.client.put_state(&b).await.expect("put B");
    assert_eventually!(
        load.snapshot().versions.get("B").copied().unwrap_or(0) > 5,
        "B got no traffic in its ramp: {}",
        load.snapshot()
    );
    let observed = running.client.state().await.expect("state");
    assert!(
        weights_of(&observed)
            .iter()
            .any(|w| w.starts_with("r-a:") && w != "r-a:0"),
        "A lost its share before the ramp's end: {observed:?}"
    );

    // Back to A, mid-ramp: at once, B drains.
    let observed = running.client.put_state(&a).await.expect("put A again");
    // B's pool is listed while its instance drains (it takes no new request).
    assert!(
        weights_of(&observed).contains(&"r-a:100".to_owned()),
        "{observed:?}"
    );
    assert!(
        matches!(
            instance_state(&observed, "b"),
            Some(ObservedInstanceState::Draining | ObservedInstanceState::Drained) | None
        ),
        "B still takes requests: {observed:?}"
    );
    // And it stays so: no step of the ended ramp comes after.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let observed = running.client.state().await.expect("state");
    assert_eq!(weights_of(&observed), ["r-a:100"]);
    assert_eq!(instance_state(&observed, "b"), None);
    let report = load.stop().await;
    report.assert_no_failures();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_restarted_mid_ramp_serves_the_ramps_end_at_once() {
    let process_a = demo("A");
    let process_b = demo("B");
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let first = RunningProxy::start(state_dir.path()).await;
    first
        .client
        .put_state(&slow(one_release("r-a", "a", process_a.addr()), 5_000))
        .await
        .expect("put A");
    let observed = first
        .client
        .put_state(&slow(one_release("r-b", "b", process_b.addr()), 5_000))
        .await
        .expect("put B");
    assert_eq!(weights_of(&observed), ["r-a:90", "r-b:10"]);
    first.stop().await;

    let second = RunningProxy::start(state_dir.path()).await;
    let observed = second.client.state().await.expect("state");
    assert_eq!(weights_of(&observed), ["r-b:100"]);
    assert_eq!(instance_state(&observed, "a"), None);
    let report = Load::new(second.addr)
        .host(HOST)
        .concurrency(4)
        .count(100)
        .start()
        .wait()
        .await;
    report.assert_no_failures();
    assert_eq!(report.versions.get("B").copied(), Some(100), "{report}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_proxy_serves_its_saved_routing_at_once() {
    let process_a = demo("A");
    let state_dir = tempfile::tempdir().expect("temporary state dir");

    let first = RunningProxy::start(state_dir.path()).await;
    first
        .client
        .put_state(&one_release("r-a", "a", process_a.addr()))
        .await
        .expect("put A");
    first.stop().await;
    assert!(state_dir.path().join(ROUTES_FILE_NAME).is_file());
    assert!(
        !state_dir.path().join(SOCKET_FILE_NAME).exists(),
        "a stopped proxy leaves no socket behind"
    );

    // No put: the routing comes from routes.json, ready instances ready before the first request.
    let second = RunningProxy::start(state_dir.path()).await;
    let report = Load::new(second.addr)
        .host(HOST)
        .concurrency(4)
        .count(200)
        .start()
        .wait()
        .await;
    report.assert_no_failures();
    assert_eq!(report.versions.get("A").copied(), Some(200), "{report}");
    let observed = second.client.state().await.expect("state");
    assert_eq!(
        instance_state(&observed, "a"),
        Some(ObservedInstanceState::Ready)
    );
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_socket_is_private_and_a_second_proxy_is_refused() {
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;

    let socket = state_dir.path().join(SOCKET_FILE_NAME);
    let mode = std::fs::metadata(&socket)
        .expect("socket metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "socket mode {mode:o}");

    let second = tokio::time::timeout(
        Duration::from_secs(10),
        proxy::process::run(config(state_dir.path()), CancellationToken::new()),
    )
    .await
    .expect("a refused start returns at once");
    assert!(
        matches!(second, Err(ProcessError::AlreadyRunning { pid: Some(pid), .. }) if pid == std::process::id()),
        "{second:?}"
    );
    // The refused start touched nothing: the first proxy still answers on its socket.
    let health = running
        .client
        .healthz()
        .await
        .expect("first proxy still answers");
    assert_eq!(health.listen, Some(running.addr));
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_socket_is_replaced_and_a_refused_state_is_not_saved() {
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    // A socket file nobody listens on, as a proxy killed with -9 leaves it.
    drop(
        std::os::unix::net::UnixListener::bind(state_dir.path().join(SOCKET_FILE_NAME))
            .expect("bind stale socket"),
    );
    let running = RunningProxy::start(state_dir.path()).await;

    let mut invalid = one_release("r-a", "a", SocketAddr::from(([127, 0, 0, 1], 1)));
    invalid.routes[0].pools[0].weight = 101;
    let error = running
        .client
        .put_state(&invalid)
        .await
        .expect_err("refused");
    assert!(
        matches!(&error, ControlClientError::Refused { status, code, .. } if status.as_u16() == 422 && code == "invalid_state"),
        "{error}"
    );
    assert!(
        !state_dir.path().join(ROUTES_FILE_NAME).exists(),
        "a refused state was saved"
    );
    let observed = running.client.state().await.expect("state");
    assert!(observed.routes.is_empty(), "{observed:?}");
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_refuses_new_connections_at_once_while_a_request_in_flight_finishes() {
    let process_a = demo("A");
    let state_dir = tempfile::tempdir().expect("temporary state dir");
    let running = RunningProxy::start(state_dir.path()).await;
    running
        .client
        .put_state(&one_release("r-a", "a", process_a.addr()))
        .await
        .expect("put A");
    let addr = running.addr;
    let slow = tokio::spawn(async move { get(addr, HOST, "/sleep?ms=3000").await });
    assert_eventually!(
        running
            .client
            .state()
            .await
            .expect("state")
            .instance("a")
            .is_some_and(|instance| instance.in_flight == 1),
        "the slow request never reached A"
    );
    // The stop signal: from now on, a proxy that bound its own listeners refuses new connections,
    // though it still drains the slow request (process.rs's module documentation). Before, its
    // listening sockets stayed open through the drain, and new connections waited in a backlog that
    // nothing would accept.
    running.shutdown.cancel();
    assert_eventually!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "a stopping proxy still accepts new connections"
    );
    assert!(
        !slow.is_finished(),
        "the slow request ended before the check: the drain was not observed"
    );
    running.stop().await;

    let answer = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the slow request ends")
        .expect("the slow request task");
    assert_eq!(answer.status(), 200);
    assert_eq!(&answer.body()[..], b"slept 3000ms\n");
}

/// `proxy::process::run` in a task, on 127.0.0.1:0 with `state_dir`, and a client of its socket.
struct RunningProxy {
    addr: SocketAddr,
    client: ControlClient,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), ProcessError>>>,
}

impl RunningProxy {
    async fn start(state_dir: &Path) -> RunningProxy {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(proxy::process::run(config(state_dir), shutdown.clone()));
        let client =
            ControlClient::new(socket_path(state_dir)).with_timeout(Duration::from_secs(2));
        // Bounded: the socket answers once everything is bound, or the task ends with its error.
        let mut addr = None;
        for _ in 0..500 {
            if task.is_finished() {
                let ended = task.await;
                panic!("proxy process ended early: {ended:?}");
            }
            if let Ok(health) = client.healthz().await {
                addr = health.listen;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        RunningProxy {
            addr: addr.expect("proxy process answered on its socket within 10 s"),
            client,
            shutdown,
            task: Some(task),
        }
    }

    /// Stops it as SIGTERM would and waits, bounded, for a clean exit.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(20), task).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "proxy process did not stop cleanly: {stopped:?}"
            );
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn config(state_dir: &Path) -> ProcessConfig {
    let mut config = ProcessConfig::new(state_dir, SocketAddr::from(([127, 0, 0, 1], 0)));
    config.shutdown_timeout = Duration::from_secs(10);
    config
}

fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_FILE_NAME)
}

/// Route `web` for `demo.test` with one ready instance of one release.
fn one_release(release: &str, instance: &str, addr: SocketAddr) -> DesiredState {
    DesiredState {
        routes: vec![DesiredRoute {
            name: "web".to_owned(),
            hosts: vec![HOST.to_owned()],
            paths: vec!["/".to_owned()],
            drain_timeout_ms: 5_000,
            pools: vec![DesiredPool {
                release: release.to_owned(),
                weight: 100,
                instances: vec![DesiredInstance {
                    id: instance.to_owned(),
                    addr,
                    ready: true,
                }],
            }],
            ..DesiredRoute::new("web")
        }],
    }
}

/// `state` with `/health` as the warm path of every route.
fn warmed(mut state: DesiredState) -> DesiredState {
    for route in &mut state.routes {
        route.warm_path = Some("/health".to_owned());
    }
    state
}

/// One request an app got: its path and the connection it came on (numbered by accept order), in the
/// order they came.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    connection: usize,
}

/// An HTTP/1.1 app on 127.0.0.1 that answers every request 200 (`x-version: B`) and records it.
struct RecordingApp {
    addr: SocketAddr,
    seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    task: JoinHandle<()>,
}

impl RecordingApp {
    async fn start() -> RecordingApp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let recorded = std::sync::Arc::clone(&seen);
        let task = tokio::spawn(async move {
            for connection in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let recorded = std::sync::Arc::clone(&recorded);
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |request: hyper::Request<hyper::body::Incoming>| {
                            recorded.lock().expect("seen").push(Seen {
                                path: request.uri().path().to_owned(),
                                connection,
                            });
                            async {
                                hyper::Response::builder().header("x-version", "B").body(
                                    http_body_util::Full::new(bytes::Bytes::from_static(b"ok\n")),
                                )
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RecordingApp { addr, seen, task }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

impl Drop for RecordingApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn instance_state(observed: &proxy::ObservedState, id: &str) -> Option<ObservedInstanceState> {
    observed.instance(id).map(|instance| instance.state)
}
