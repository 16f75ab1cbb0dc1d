//! The load loop against the demo app: exact counts, versions, injected errors, kill -9, timeouts.

use std::collections::BTreeMap;
use std::time::Duration;

use testkit::demo::DemoApp;
use testkit::load::{Load, Outcome, Record, Report};

/// Generous bound for polling loops; tests never assert on how fast things happen.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_bound_sends_exactly_count_requests_all_ok() {
    let app = DemoApp::new().version("v1").spawn().unwrap();

    let report = Load::new(app.addr())
        .host("demo.test")
        .concurrency(4)
        .count(300)
        .start()
        .wait()
        .await;

    report.assert_no_failures();
    assert_eq!(report.total, 300);
    assert_eq!(report.ok, 300);
    assert_eq!(report.failed, 0);
    assert_eq!(report.records.len(), 300);
    assert_eq!(
        report.outcomes,
        BTreeMap::from([(Outcome::Status(200), 300)])
    );
    assert_eq!(report.versions, BTreeMap::from([("v1".to_owned(), 300)]));
    assert!(report.records.is_sorted_by_key(|record| record.started));
    assert!(report.latency.p50 <= report.latency.p90);
    assert!(report.latency.p99 <= report.latency.max);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_rate_is_exact_over_a_counted_run() {
    let app = DemoApp::new()
        .version("v1")
        .env("ERROR_RATE", "0.1")
        .spawn()
        .unwrap();

    let report = Load::new(app.addr())
        .concurrency(4)
        .count(200)
        .start()
        .wait()
        .await;

    assert_eq!(report.total, 200);
    assert_eq!(
        report.outcomes,
        BTreeMap::from([(Outcome::Status(200), 180), (Outcome::Status(500), 20)]),
        "{report}"
    );
    assert_eq!(report.failed, 20);
    // Injected errors still come from the app, so they carry its version.
    assert_eq!(report.versions, BTreeMap::from([("v1".to_owned(), 200)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_counts_connect_errors_and_resets() {
    let mut app = DemoApp::new().version("v1").spawn().unwrap();
    let load = Load::new(app.addr())
        .concurrency(4)
        .path("/sleep?ms=5")
        .duration(Duration::from_secs(60))
        .timeout(Duration::from_secs(2))
        .start();
    wait_for(&load, |report| report.ok >= 20).await;

    app.kill9().unwrap();
    wait_for(&load, |report| report.failed >= 8).await;
    let report = load.stop().await;

    assert!(report.ok >= 20, "{report}");
    assert!(report.failed >= 8, "{report}");
    assert_eq!(report.ok + report.failed, report.total);
    for record in report.failures() {
        assert!(
            matches!(record.outcome, Outcome::ConnectError | Outcome::Reset),
            "unexpected failure {record}; {report}"
        );
    }
    // Once a connect error is seen the app is gone: no success starts after it.
    let first_connect_error = report
        .records
        .iter()
        .find(|record| record.outcome == Outcome::ConnectError)
        .expect("connect errors after kill -9")
        .started;
    assert!(
        report
            .records
            .iter()
            .filter(|record| record.started > first_connect_error)
            .all(|record| !record.outcome.is_success()),
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_answers_count_as_timeouts() {
    let app = DemoApp::new().spawn().unwrap();

    let report = Load::new(app.addr())
        .path("/sleep?ms=10000")
        .concurrency(2)
        .count(2)
        .timeout(Duration::from_millis(100))
        .start()
        .wait()
        .await;

    assert_eq!(report.outcomes, BTreeMap::from([(Outcome::Timeout, 2)]));
    assert_eq!(report.failed, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_long_run_and_keeps_what_was_recorded() {
    let app = DemoApp::new().version("v2").spawn().unwrap();
    let load = Load::new(app.addr())
        .concurrency(2)
        .duration(Duration::from_secs(120))
        .start();
    wait_for(&load, |report| report.total >= 10).await;

    let report = load.stop().await;

    report.assert_no_failures();
    assert!(report.total >= 10);
    assert_eq!(report.versions.keys().collect::<Vec<_>>(), ["v2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_bound_ends_the_run_by_itself() {
    let app = DemoApp::new().spawn().unwrap();

    let report = Load::new(app.addr())
        .duration(Duration::from_millis(200))
        .start()
        .wait()
        .await;

    report.assert_no_failures();
    assert!(report.total > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_a_connect_error() {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], testkit::demo::free_port().unwrap()));

    let report = Load::new(addr).count(3).start().wait().await;

    assert_eq!(
        report.outcomes,
        BTreeMap::from([(Outcome::ConnectError, 3)])
    );
}

#[test]
fn assert_no_failures_names_the_failed_requests() {
    let record = |started_ms, outcome| Record {
        started: Duration::from_millis(started_ms),
        latency: Duration::from_millis(1),
        outcome,
        version: Some("v1".to_owned()),
    };
    let report = Report::from_records(vec![
        record(2, Outcome::Status(500)),
        record(1, Outcome::Status(200)),
        record(3, Outcome::Reset),
    ]);
    assert_eq!((report.total, report.ok, report.failed), (3, 1, 2));

    let panic = std::panic::catch_unwind(|| report.assert_no_failures()).unwrap_err();
    let message = panic.downcast_ref::<String>().unwrap();

    assert!(message.starts_with("2 of 3 requests failed\n"), "{message}");
    assert!(message.contains("200×1, 500×1, reset×1"), "{message}");
    assert!(
        message.contains("started at 2ms: 500 after 1ms, version v1"),
        "{message}"
    );
    assert!(
        message.contains("started at 3ms: reset after 1ms, version v1"),
        "{message}"
    );
    Report::from_records(vec![record(1, Outcome::Status(204))]).assert_no_failures();
}

/// Polls the running load's counters until `done` holds; panics after [`PATIENCE`].
pub async fn wait_for(load: &testkit::load::LoadHandle, done: impl Fn(&Report) -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let report = load.snapshot();
        if done(&report) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within {PATIENCE:?}: {report}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
