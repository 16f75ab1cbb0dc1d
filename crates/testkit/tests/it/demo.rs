//! The demo app's behaviour as end-to-end tests see it: endpoints, health delay, faults, signals, bad env.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::Method;
use testkit::demo::{DemoApp, demo_app_path};
use testkit::load::{Load, Outcome};
use tokio_tungstenite::tungstenite::Message;

use crate::{get, get_h2, send};

/// Generous bound for waits; tests never assert on how fast things happen.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn answers_its_version_over_http1_and_h2c() {
    let app = DemoApp::new().version("v1").spawn().unwrap();

    let http1 = get(app.addr(), "/").await;
    let h2c = get_h2(app.addr(), "/").await;
    let not_found = get(app.addr(), "/nope").await;

    assert_eq!((http1.status, http1.body.as_str()), (200, "v1\n"));
    assert_eq!(http1.version.as_deref(), Some("v1"));
    assert_eq!((h2c.status, h2c.body.as_str()), (200, "v1\n"));
    assert_eq!(h2c.version.as_deref(), Some("v1"));
    assert_eq!(not_found.status, 404);
    assert_eq!(not_found.version.as_deref(), Some("v1"));
}

#[tokio::test]
async fn health_answers_503_during_the_health_delay_then_200() {
    let app = DemoApp::new()
        .env("HEALTH_DELAY_S", "3")
        .env("HEALTH_PATH", "/ready")
        .spawn()
        .unwrap();

    let mut statuses = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while statuses.last() != Some(&200) {
        assert!(tokio::time::Instant::now() < deadline, "{statuses:?}");
        statuses.push(get(app.addr(), "/ready").await.status);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    statuses.push(get(app.addr(), "/ready").await.status);
    statuses.dedup();

    assert_eq!(statuses, [503, 200]);
    let healthy = get(app.addr(), "/ready").await;
    assert_eq!(healthy.body, "ok");
    // The configured path replaces the default one.
    assert_eq!(get(app.addr(), "/health").await.status, 404);
}

#[tokio::test]
async fn env_endpoint_shows_the_config_that_reached_the_app() {
    let app = DemoApp::new()
        .env("DATABASE_URL", "postgres://db.test/app")
        .spawn()
        .unwrap();

    let set = get(app.addr(), "/env/DATABASE_URL").await;
    let unset = get(app.addr(), "/env/ROLLWAY_TESTKIT_SURELY_UNSET").await;

    assert_eq!(
        (set.status, set.body.as_str()),
        (200, "postgres://db.test/app")
    );
    assert_eq!(unset.status, 404);
}

#[tokio::test]
async fn echo_sends_the_request_body_back() {
    let app = DemoApp::new().spawn().unwrap();
    let body: String = (0..20_000).map(|i| format!("line {i}\n")).collect();

    let answer = send(app.addr(), Method::POST, "/echo", &body).await;

    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, body);
}

#[tokio::test]
async fn bytes_answers_n_bytes_after_reading_a_post_body() {
    let app = DemoApp::new().spawn().unwrap();
    let upload = "y".repeat(300_000);

    let too_big = get(app.addr(), "/bytes/16777217").await;
    let not_a_number = get(app.addr(), "/bytes/many").await;
    let put = send(app.addr(), Method::PUT, "/bytes/3", "").await;
    let empty = get(app.addr(), "/bytes/0").await;
    let got = get(app.addr(), "/bytes/65536").await;
    let posted = send(app.addr(), Method::POST, "/bytes/5", &upload).await;

    assert_eq!(too_big.status, 400);
    assert!(too_big.body.contains("0 to 16777216"), "{}", too_big.body);
    assert_eq!(not_a_number.status, 400);
    assert_eq!(put.status, 404);
    assert_eq!((empty.status, empty.body.as_str()), (200, ""));
    assert_eq!(got.status, 200);
    assert_eq!(got.body, "x".repeat(65_536));
    assert_eq!((posted.status, posted.body.as_str()), (200, "xxxxx"));
}

#[tokio::test]
async fn sleep_answers_after_at_least_the_requested_time() {
    let app = DemoApp::new().env("LATENCY_MS", "50").spawn().unwrap();

    let report = Load::new(app.addr())
        .path("/sleep?ms=100")
        .count(3)
        .start()
        .wait()
        .await;
    let bad = get(app.addr(), "/sleep?ms=soon").await;

    report.assert_no_failures();
    // A lower bound is behaviour (the app waited), not a speed claim.
    assert!(
        report
            .records
            .iter()
            .all(|record| record.latency >= Duration::from_millis(150)),
        "{report}"
    );
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn websocket_echoes_text_and_binary_and_answers_close() {
    let app = DemoApp::new().spawn().unwrap();
    let stream = tokio::net::TcpStream::connect(app.addr()).await.unwrap();
    let (mut websocket, response) = tokio_tungstenite::client_async("ws://demo.test/ws", stream)
        .await
        .unwrap();
    assert_eq!(response.status(), 101);

    websocket.send(Message::text("hello")).await.unwrap();
    assert_eq!(
        websocket.next().await.unwrap().unwrap(),
        Message::text("hello")
    );
    websocket
        .send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        websocket.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    websocket.close(None).await.unwrap();
    let mut after_close = Vec::new();
    while let Some(message) = websocket.next().await {
        after_close.push(message.unwrap());
    }

    assert!(
        matches!(after_close.as_slice(), [Message::Close(_)]),
        "{after_close:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_graceful_shutdown_that_finishes_in_flight_requests() {
    let mut app = DemoApp::new().spawn().unwrap();
    let load = Load::new(app.addr())
        .path("/sleep?ms=300")
        .concurrency(3)
        .duration(Duration::from_secs(60))
        .start();
    crate::load::wait_for(&load, |report| report.ok >= 3).await;

    app.terminate().unwrap();
    let status = app.wait_exit(PATIENCE).unwrap();
    let report = load.stop().await;

    assert_eq!(status.code(), Some(0), "{:?}", app.events());
    // In-flight requests got their answer; later ones found the port closed.
    assert!(
        report
            .failures()
            .all(|record| record.outcome == Outcome::ConnectError),
        "{report}"
    );
    let events = app.events();
    assert!(
        events
            .iter()
            .any(|event| event.contains(r#""event":"sigterm""#)),
        "{events:?}"
    );
    assert!(
        events.last().unwrap().contains(r#""event":"stopped""#),
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_ignore_keeps_serving_then_exits() {
    let mut app = DemoApp::new()
        .version("v1")
        .env("IGNORE_SIGTERM_S", "5")
        .spawn()
        .unwrap();

    app.terminate().unwrap();
    wait_for_event(&app, "ignored_for_s").await;
    let report = Load::new(app.addr()).count(20).start().wait().await;
    let status = app.wait_exit(PATIENCE).unwrap();

    report.assert_no_failures();
    assert_eq!(report.versions.get("v1"), Some(&20));
    assert_eq!(status.code(), Some(0), "{:?}", app.events());
}

#[tokio::test]
async fn crash_after_exits_with_code_1() {
    let mut app = DemoApp::new().env("CRASH_AFTER_S", "0.5").spawn().unwrap();

    let status = app.wait_exit(PATIENCE).unwrap();

    assert_eq!(status.code(), Some(1));
    assert!(app.events().last().unwrap().contains(r#""event":"crash""#));
}

#[tokio::test]
async fn start_delay_spawns_without_waiting_and_listens_later() {
    let mut app = DemoApp::new().env("START_DELAY_S", "0.5").spawn().unwrap();

    app.wait_ready(PATIENCE).unwrap();

    assert_eq!(get(app.addr(), "/").await.body, "dev\n");
}

#[test]
fn spawn_fails_with_the_reason_when_the_app_exits_before_listening() {
    let error = DemoApp::new()
        .env("ERROR_RATE", "lots")
        .spawn()
        .unwrap_err();

    assert!(error.to_string().contains("exited"), "{error}");
}

#[test]
fn bad_env_exits_2_naming_the_variable_and_what_is_accepted() {
    check_bad_env(&[], "`PORT` is not set; expected a TCP port number 1-65535");
    check_bad_env(
        &[("PORT", "0")],
        "invalid `PORT`=`0`; expected a TCP port number 1-65535",
    );
    check_bad_env(
        &[("PORT", "http")],
        "invalid `PORT`=`http`; expected a TCP port number",
    );
    check_bad_env(
        &[("ERROR_RATE", "1.5")],
        "invalid `ERROR_RATE`=`1.5`; expected a share between 0.0 and 1.0",
    );
    check_bad_env(
        &[("LATENCY_MS", "-1")],
        "invalid `LATENCY_MS`=`-1`; expected milliseconds",
    );
    check_bad_env(
        &[("HEALTH_DELAY_S", "soon")],
        "invalid `HEALTH_DELAY_S`=`soon`; expected seconds",
    );
    check_bad_env(
        &[("START_DELAY_S", "-2")],
        "invalid `START_DELAY_S`=`-2`; expected seconds",
    );
    check_bad_env(
        &[("CRASH_AFTER_S", "NaN")],
        "invalid `CRASH_AFTER_S`=`NaN`; expected seconds",
    );
    check_bad_env(
        &[("IGNORE_SIGTERM_S", "x")],
        "invalid `IGNORE_SIGTERM_S`=`x`; expected seconds",
    );
    check_bad_env(
        &[("HEALTH_PATH", "health")],
        "invalid `HEALTH_PATH`=`health`; expected a path starting with `/`",
    );
    check_bad_env(&[("VERSION", "v 1\u{7f}")], "invalid `VERSION`");
}

/// Runs the binary with `PORT=1` plus `vars` (an empty list means no `PORT` either).
fn check_bad_env(vars: &[(&str, &str)], expected_stderr: &str) {
    let mut command = std::process::Command::new(demo_app_path());
    for name in [
        "PORT",
        "VERSION",
        "HEALTH_PATH",
        "ERROR_RATE",
        "LATENCY_MS",
        "START_DELAY_S",
        "HEALTH_DELAY_S",
        "CRASH_AFTER_S",
        "IGNORE_SIGTERM_S",
    ] {
        command.env_remove(name);
    }
    if !vars.is_empty() {
        command.env("PORT", "1");
    }
    command.envs(vars.iter().copied());

    let output = command.output().unwrap();

    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{vars:?}: {stderr}");
    assert!(stderr.contains(expected_stderr), "{vars:?}: {stderr}");
    assert!(output.stdout.is_empty(), "{vars:?}");
}

async fn wait_for_event(app: &testkit::demo::DemoProcess, needle: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !app.events().iter().any(|event| event.contains(needle)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no event with `{needle}` within {PATIENCE:?}: {:?}",
            app.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
