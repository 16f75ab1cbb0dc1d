//! End-to-end tests of progressive delivery (issue 7): canaries judged on their real traffic and
//! taken out by the agent itself, the watch after a blue-green switch, the approval and smoke
//! gates, alerts to a webhook, and the agent's `/v1/metrics`.
//!
//! Real binary, real demo app, a paced load loop through the proxy, 127.0.0.1 only. Assertions are
//! about counts, states, versions and the order of events; the detection times are printed (the
//! wall-clock claims live in `bench/analysis`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use testkit::agent::{APP, Ran, TestAgent, TestApp, random_hex};
use testkit::load::{Load, LoadHandle, Outcome, Record, Report};

use crate::agent::Setup;

const ENV: &str = "production";
/// Bound of every load loop; tests stop theirs long before.
const LOAD_BOUND: Duration = Duration::from_secs(120);
/// Bound of waits for the agent to reach a state.
const PATIENCE: Duration = Duration::from_secs(60);
/// Requests per second of the load loop: enough for `min_requests` within a second at 20%,
/// little enough for tests running side by side on a small machine.
const RATE: u32 = 250;
const MIN_REQUESTS: u64 = 50;

/// The app deployed as a canary: analysis every 200 ms, a verdict after 50 requests.
fn canary(setup: &Setup, version: &str, steps: &str) -> TestApp {
    setup
        .app("app", version)
        .canary(steps)
        .analysis(r#"interval = "200ms""#)
        .analysis(format!("min_requests = {MIN_REQUESTS}"))
}

/// A paced load loop through the proxy, and the wall-clock time it started (to put its records
/// and the agent's events on one time line).
struct TimedLoad {
    handle: LoadHandle,
    started_at_ms: f64,
}

impl TimedLoad {
    fn start(agent: &TestAgent, concurrency: usize) -> TimedLoad {
        let handle = Load::new(agent.proxy_addr())
            .concurrency(concurrency)
            .rate(RATE)
            .duration(LOAD_BOUND)
            .start();
        let started_at_ms = unix_ms(handle.started_at());
        TimedLoad {
            handle,
            started_at_ms,
        }
    }

    async fn stop(self) -> (Report, f64) {
        (self.handle.stop().await, self.started_at_ms)
    }
}

fn unix_ms(time: SystemTime) -> f64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}

/// Unix milliseconds at which `record` started and finished.
fn wall(started_at_ms: f64, record: &Record) -> (f64, f64) {
    let start = started_at_ms + record.started.as_secs_f64() * 1000.0;
    (start, start + record.latency.as_secs_f64() * 1000.0)
}

/// The events of one deployment, oldest first.
async fn deployment_events(agent: &TestAgent, id: &str) -> Vec<Value> {
    agent
        .events()
        .await
        .into_iter()
        .filter(|event| event["deployment_id"] == id)
        .collect()
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .collect()
}

fn message(event: &Value) -> &str {
    event["message"].as_str().unwrap_or("")
}

fn at_ms(event: &Value) -> f64 {
    event["at"].as_i64().expect("event time") as f64
}

/// The latest deployment's id.
async fn deployment_id(agent: &TestAgent) -> String {
    let status = agent.status(APP, ENV).await;
    status.0["deployment"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no deployment in {status}"))
        .to_owned()
}

/// Polls `status` until the deployment of release `to_release` is in `state`, bounded by
/// [`PATIENCE`].
async fn wait_state(agent: &TestAgent, to_release: u64, state: &str) -> testkit::agent::Status {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(APP, ENV).await;
        let ours = status.0["deployment"]["to_release"].as_u64() == Some(to_release);
        if ours && status.deployment_state() == Some(state) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline && !(ours && status.deployment_finished()),
            "the deployment of release {to_release} did not reach {state}: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Polls the events until one of `kind` for deployment `id` is there, bounded by [`PATIENCE`].
async fn wait_event(agent: &TestAgent, id: &str, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(event) = of_kind(&deployment_events(agent, id).await, kind).first() {
            return (*event).clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{kind}` event for deployment {id} within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[track_caller]
fn assert_contains(text: &str, needle: &str) {
    assert!(text.contains(needle), "expected `{needle}` in:\n{text}");
}

/// Asserts that every failed request was a 500 answered by `version`.
#[track_caller]
fn assert_failures_all_from(report: &Report, version: &str) {
    for record in report.failures() {
        assert!(
            record.outcome == Outcome::Status(500) && record.version.as_deref() == Some(version),
            "a failed request not answered 500 by `{version}`: {record}\n{report}"
        );
    }
}

/// Time from the first request `version` failed to `traffic_back` (an event time), printed for
/// the record; `None` when no request failed.
fn print_detection(
    what: &str,
    report: &Report,
    started_at_ms: f64,
    version: &str,
    traffic_back: f64,
) {
    let Some(first_bad) = report
        .failures()
        .find(|record| record.version.as_deref() == Some(version))
    else {
        eprintln!("{what}: no failed request reached a client");
        return;
    };
    let (_, answered) = wall(started_at_ms, first_bad);
    eprintln!(
        "{what}: {:.0} ms from the first bad answer to weight 0 ({} failed of {} requests)",
        traffic_back - answered,
        report.failed,
        report.total
    );
}

// 1. A bad canary is taken out by the analysis, and clients see only what it answered meanwhile.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_answering_5_percent_errors_is_aborted_by_the_analysis() {
    const STEPS: &str = r#"[{ weight = 20, pause = "60s" }, { weight = 100 }]"#;
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&canary(&setup, "v1", STEPS), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);

    let bad = canary(&setup, "v2", STEPS).env("ERROR_RATE", "0.05");
    let ran = agent.deploy(&bad, ENV).await;
    ran.assert_code(1);
    agent.assert_serves("v1").await;
    let (report, started_at_ms) = load.stop().await;

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let reason = status.deployment_reason().unwrap_or_default();
    assert_contains(reason, "the canary analysis failed: 5xx share");
    assert_eq!(status.current_release(), Some(1), "{status}");
    assert_eq!(status.weights(), [(1, 100)], "{status}");

    let id = deployment_id(agent).await;
    let events = deployment_events(agent, &id).await;
    let weights = of_kind(&events, "deployment.weights");
    let messages: Vec<&str> = weights.iter().map(|event| message(event)).collect();
    assert_eq!(
        messages,
        [
            "canary step 1/2: release 2 takes 20% of traffic",
            "traffic is back on the earlier release"
        ],
        "the canary never went past 20%"
    );
    let traffic_back = at_ms(weights[1]);
    // The failing verdict carries its figures: at least min_requests, some of them 5xx.
    let verdicts = of_kind(&events, "analysis.verdict");
    let fail = verdicts
        .iter()
        .find(|event| event["data"]["verdict"]["verdict"] == "fail")
        .unwrap_or_else(|| panic!("no failing verdict in {verdicts:#?}"));
    let sample = &fail["data"]["sample"];
    assert!(
        sample["requests"].as_u64() >= Some(MIN_REQUESTS) && sample["errors"].as_u64() > Some(0),
        "{fail:#}"
    );
    assert_eq!(
        verdicts
            .last()
            .map(|event| event["data"]["verdict"]["verdict"].clone()),
        Some(Value::from("fail")),
        "no verdict after the failing one"
    );

    // Only the canary failed requests, and only while it held its 20%.
    assert!(
        report.failed > 0,
        "the bad canary answered nothing: {report}"
    );
    assert_failures_all_from(&report, "v2");
    let canary_records: Vec<&Record> = report
        .records
        .iter()
        .filter(|record| record.version.as_deref() == Some("v2"))
        .collect();
    let first = wall(started_at_ms, canary_records[0]).0;
    let last = canary_records
        .iter()
        .map(|record| wall(started_at_ms, record).0)
        .fold(0.0, f64::max);
    // Event times are whole milliseconds; 2 ms of slack for that and for the clock mapping.
    assert!(
        last <= traffic_back + 2.0,
        "a request started {:.1} ms after weight 0 still reached the canary",
        last - traffic_back
    );
    let during = report
        .records
        .iter()
        .filter(|record| (first..=last).contains(&wall(started_at_ms, record).0))
        .count() as u64;
    assert!(
        report.failed * 100 <= during * 20,
        "{} failed requests of {during} during the canary, above its 20% weight",
        report.failed
    );
    print_detection("5% canary", &report, started_at_ms, "v2", traffic_back);
    eprintln!(
        "5% canary: {} requests reached it, {} failed, {during} requests in all while it served; verdict after {} canary requests",
        canary_records.len(),
        report.failed,
        sample["requests"]
    );
}

// 2. A canary three times slower at p99 than the release it is compared with.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_3x_slower_at_p99_fails_on_latency() {
    const STEPS: &str = r#"[{ weight = 20, pause = "60s" }, { weight = 100 }]"#;
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&canary(&setup, "v1", STEPS).env("LATENCY_MS", "30"), ENV)
        .await
        .assert_code(0);
    // At 250 req/s, 100 ms answers need about 25 clients in flight.
    let load = TimedLoad::start(agent, 32);

    let slow = canary(&setup, "v2", STEPS).env("LATENCY_MS", "100");
    agent.deploy(&slow, ENV).await.assert_code(1);
    let (report, _) = load.stop().await;

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let reason = status.deployment_reason().unwrap_or_default();
    assert_contains(reason, "the canary analysis failed: p99");
    assert_contains(reason, "the baseline's");
    assert_eq!(status.weights(), [(1, 100)], "{status}");
    // Slow is not broken: no request failed.
    report.assert_no_failures();
    assert!(report.versions.get("v2").copied() > Some(0), "{report}");
    agent.assert_serves("v1").await;
}

// 3. A healthy canary goes through every step, a step without pause waits for `promote`; the
// agent's metrics count its requests by release and its verdicts.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_canary_goes_through_every_step_and_metrics_count_it() {
    const STEPS: &str = r#"[{ weight = 20, pause = "1s" }, { weight = 50 }, { weight = 100 }]"#;
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&canary(&setup, "v1", STEPS), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);

    let mut deploy = agent
        .deploy_command(&canary(&setup, "v2", STEPS), ENV, Some(agent.admin_token()))
        .spawn()
        .expect("rollway deploy");
    let id = wait_state(agent, 2, "Shifting").await.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let holding = wait_event(agent, &id, "deployment.holding").await;
    assert_contains(message(&holding), "rollway promote");
    assert_eq!(agent.status(APP, ENV).await.weights(), [(1, 50), (2, 50)]);
    agent
        .cli(&["promote", "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    let ended = tokio::time::timeout(PATIENCE, deploy.wait())
        .await
        .expect("the deploy ended")
        .expect("rollway deploy");
    assert_eq!(ended.code(), Some(0));
    agent.assert_serves("v2").await;
    let (report, _) = load.stop().await;
    report.assert_no_failures();
    assert!(
        report.versions.get("v1") > Some(&0) && report.versions.get("v2") > Some(&0),
        "{report}"
    );

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("Succeeded"), "{status}");
    assert_eq!(status.weights(), [(2, 100)], "{status}");
    let events = deployment_events(agent, &id).await;
    let weights: Vec<&str> = of_kind(&events, "deployment.weights")
        .into_iter()
        .map(message)
        .collect();
    assert_eq!(
        weights,
        [
            "canary step 1/3: release 2 takes 20% of traffic",
            "canary step 2/3: release 2 takes 50% of traffic",
            "canary step 3/3: release 2 takes 100% of traffic",
        ]
    );
    assert_eq!(of_kind(&events, "deployment.promoted").len(), 1);
    let verdicts = of_kind(&events, "analysis.verdict");
    assert!(
        verdicts
            .iter()
            .all(|event| event["data"]["verdict"]["verdict"] != "fail"),
        "{verdicts:#?}"
    );

    // /v1/metrics: a token is needed; requests by release and class, verdicts by kind.
    assert_eq!(agent.api_status("GET", "/v1/metrics", None).await, 401);
    let metrics = agent.api("GET", "/v1/metrics", "").await;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    let requests = |release: u64, class: &str| {
        metric(
            &metrics.body,
            &format!(
                r#"rollway_requests_total{{app="{APP}",environment="{ENV}",release="{release}",class="{class}"}}"#
            ),
        )
    };
    // The proxy saw at least what the load loop and the samples got from each release.
    assert!(
        requests(2, "2xx") >= report.versions["v2"] as f64 + 5.0,
        "{}",
        metrics.body
    );
    assert!(
        requests(1, "2xx") >= report.versions["v1"] as f64,
        "{}",
        metrics.body
    );
    assert_eq!(requests(2, "5xx"), 0.0, "{}", metrics.body);
    let all_verdicts = of_kind(&agent.events().await, "analysis.verdict").len();
    let counted: f64 = ["pass", "inconclusive", "fail"]
        .iter()
        .map(|verdict| {
            metric_or_zero(
                &metrics.body,
                &format!(
                    r#"rollway_analysis_verdicts_total{{app="{APP}",environment="{ENV}",verdict="{verdict}"}}"#
                ),
            )
        })
        .sum();
    assert_eq!(
        counted, all_verdicts as f64,
        "verdict counters vs. analysis.verdict events\n{}",
        metrics.body
    );
    assert!(counted > 0.0);
}

/// The value of the sample named exactly `series` (name and labels) in Prometheus text.
#[track_caller]
fn metric(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or_else(|| panic!("no `{series}` in:\n{text}"))
}

fn metric_or_zero(text: &str, series: &str) -> f64 {
    find_metric(text, series).unwrap_or(0.0)
}

fn find_metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

// 4. After a blue-green switch, the analysis stays armed: a release that turns bad is switched
// back by the agent within the observation window.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_turning_bad_after_the_switch_is_switched_back_within_the_window() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);

    let turning_bad = setup
        .app("app", "v2")
        .observe("30s")
        .analysis(r#"interval = "200ms""#)
        .analysis(format!("min_requests = {MIN_REQUESTS}"))
        .env("BAD_AFTER_S", "10")
        .env("ERROR_RATE", "0.05");
    let ran = agent.deploy(&turning_bad, ENV).await;
    ran.assert_code(1);
    agent.assert_serves("v1").await;
    let (report, started_at_ms) = load.stop().await;

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    assert_contains(
        status.deployment_reason().unwrap_or_default(),
        "the analysis failed after the switch: 5xx share",
    );
    assert_eq!(status.current_release(), Some(1), "{status}");
    assert_eq!(status.weights(), [(1, 100)], "{status}");

    let id = deployment_id(agent).await;
    let events = deployment_events(agent, &id).await;
    let weights = of_kind(&events, "deployment.weights");
    let messages: Vec<&str> = weights.iter().map(|event| message(event)).collect();
    assert_eq!(
        messages,
        [
            "release 2 takes 100% of traffic",
            "traffic is back on the earlier release"
        ]
    );
    let (switched, back) = (at_ms(weights[0]), at_ms(weights[1]));
    assert!(
        back - switched < 30_000.0,
        "switched back {:.0} ms after the switch, after the 30 s window",
        back - switched
    );
    // v2 answered well for a while, then failed; the last answers come from v1.
    assert_failures_all_from(&report, "v2");
    assert!(report.failed > 0, "{report}");
    let first_failure = report.failures().next().expect("a failure");
    assert!(
        report
            .records
            .iter()
            .any(|record| record.version.as_deref() == Some("v2")
                && record.outcome == Outcome::Status(200)
                && record.started < first_failure.started),
        "v2 failed from its first answer: {report}"
    );
    let last = report.records.last().expect("records");
    assert_eq!(last.version.as_deref(), Some("v1"), "{last}");
    print_detection(
        "turning bad after the switch",
        &report,
        started_at_ms,
        "v2",
        back,
    );
    eprintln!(
        "turning bad after the switch: switched back {:.0} ms after the switch",
        back - switched
    );
}

/// The analysis judges a sliding window (`analysis.window`), not everything since the switch: a
/// release that served well for 20 s and then fails 2% of its requests is switched back within a
/// 30 s window. Judged on every request since the switch, the 20 s of good answers outweigh the
/// bad ones for about 13 s more, past the end of the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_small_error_share_is_judged_over_the_window_not_since_the_switch() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);

    let turning_bad = setup
        .app("app", "v2")
        .observe("30s")
        .analysis(r#"interval = "200ms""#)
        .analysis(r#"window = "5s""#)
        .analysis(format!("min_requests = {MIN_REQUESTS}"))
        .env("BAD_AFTER_S", "20")
        .env("ERROR_RATE", "0.02");
    agent.deploy(&turning_bad, ENV).await.assert_code(1);
    agent.assert_serves("v1").await;
    let (report, started_at_ms) = load.stop().await;

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    assert_contains(
        status.deployment_reason().unwrap_or_default(),
        "the analysis failed after the switch: 5xx share",
    );
    assert_failures_all_from(&report, "v2");
    let id = deployment_id(agent).await;
    let events = deployment_events(agent, &id).await;
    let weights = of_kind(&events, "deployment.weights");
    assert_eq!(weights.len(), 2, "{events:#?}");
    print_detection(
        "2% after 20 s, 5 s window",
        &report,
        started_at_ms,
        "v2",
        at_ms(weights[1]),
    );
}

// 5. Gates: approval holds before the backup, the migrations and traffic; only another token with
// role approver or admin approves; a failing smoke command stops the deploy.

/// A token of `role`, made by the admin.
async fn token(agent: &TestAgent, role: &str) -> String {
    let ran = agent
        .cli(&["tokens", "create", "--role", role, "--name", role, "--json"])
        .await;
    ran.assert_code(0);
    let created: Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    created["token"].as_str().expect("token value").to_owned()
}

/// An app whose release command (its migration) appends `version` to `migrations`.
fn gated(setup: &Setup, version: &str, migrations: &std::path::Path) -> TestApp {
    setup
        .app("app", version)
        .approval(ENV)
        .env("MIGRATIONS", migrations.display().to_string())
        .release(format!(r#"echo {version} >> "$MIGRATIONS""#), None)
        .smoke(r#"curl -fsS "$ROLLWAY_SMOKE_URL/""#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_gate_holds_migrations_and_traffic_until_another_approver_approves() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);
    let migrations = setup.shared_dir("shared").join("migrations.log");
    // The admin's token starts the deploy.
    let mut deploy = agent
        .deploy_command(
            &gated(&setup, "v2", &migrations),
            ENV,
            Some(agent.admin_token()),
        )
        .spawn()
        .expect("rollway deploy");
    let status = wait_state(agent, 2, "AwaitingApproval").await;
    let id = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    assert_eq!(status.weights(), [(1, 100)], "{status}");

    let viewer = token(agent, "viewer").await;
    let deployer = token(agent, "deployer").await;
    let approver = token(agent, "approver").await;
    let approve = format!("/v1/deployments/{id}/approve");
    for refused in [&viewer, &deployer, agent.admin_token()] {
        assert_eq!(agent.api_status("POST", &approve, Some(refused)).await, 403);
    }
    agent
        .cli_as(Some(&deployer), &["approve", &id])
        .await
        .assert_code(3);
    // The token that started the deploy cannot approve it, admin or not.
    let own = agent
        .cli_as(Some(agent.admin_token()), &["approve", &id])
        .await;
    own.assert_code(3);
    assert_contains(&own.stderr, "the token that started deployment");
    // Still held: no migration ran, no request reached the new release.
    let held = agent.status(APP, ENV).await;
    assert_eq!(held.deployment_state(), Some("AwaitingApproval"), "{held}");
    assert_eq!(held.weights(), [(1, 100)], "{held}");
    assert!(
        !migrations.exists(),
        "the migration ran before the approval"
    );
    let so_far = load.handle.snapshot();
    assert!(so_far.total > 0, "{so_far}");
    assert_eq!(so_far.versions.get("v2"), None, "{so_far}");

    agent
        .cli_as(Some(&approver), &["approve", &id])
        .await
        .assert_code(0);
    let ended = tokio::time::timeout(PATIENCE, deploy.wait())
        .await
        .expect("the deploy ended")
        .expect("rollway deploy");
    assert_eq!(ended.code(), Some(0));
    agent.assert_serves("v2").await;
    let (report, started_at_ms) = load.stop().await;
    report.assert_no_failures();
    assert_eq!(
        std::fs::read_to_string(&migrations).expect("migrations ran"),
        "v2\n"
    );

    // The migration and the first v2 answer came after the approval.
    let events = deployment_events(agent, &id).await;
    let approved = of_kind(&events, "deployment.approved");
    assert_eq!(approved.len(), 1, "{events:#?}");
    assert_contains(message(approved[0]), "approver approved release 2");
    let position = |wanted: &dyn Fn(&Value) -> bool| events.iter().position(wanted);
    let approved_at = position(&|event| event["kind"] == "deployment.approved");
    let migrated_at = position(&|event| {
        event["kind"] == "deployment.command" && message(event).contains("the release command")
    });
    assert!(
        approved_at.is_some() && migrated_at > approved_at,
        "{events:#?}"
    );
    let first_v2 = report
        .records
        .iter()
        .find(|record| record.version.as_deref() == Some("v2"))
        .expect("a v2 answer");
    assert!(wall(started_at_ms, first_v2).0 >= at_ms(approved[0]) - 2.0);
    let waiting = of_kind(&events, "deployment.awaiting_approval");
    assert_eq!(waiting.len(), 1);
    assert_contains(
        message(waiting[0]),
        "nothing was backed up, migrated or started yet",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unapproved_deploy_aborted_leaves_the_database_untouched() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let migrations = setup.shared_dir("shared").join("migrations.log");
    let mut deploy = agent
        .deploy_command(
            &gated(&setup, "v2", &migrations),
            ENV,
            Some(agent.admin_token()),
        )
        .spawn()
        .expect("rollway deploy");
    let status = wait_state(agent, 2, "AwaitingApproval").await;
    let id = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    agent
        .cli(&["abort", "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    let ended = tokio::time::timeout(PATIENCE, deploy.wait())
        .await
        .expect("the deploy ended")
        .expect("rollway deploy");
    assert_eq!(ended.code(), Some(1));
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    agent.assert_serves("v1").await;
    assert!(!migrations.exists(), "the release command ran");
    let events = deployment_events(agent, &id).await;
    for kind in ["deployment.command", "backup.created", "instance.started"] {
        assert_eq!(of_kind(&events, kind), Vec::<&Value>::new(), "{kind}");
    }
    assert!(agent.backups(APP, ENV).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_smoke_command_stops_the_deploy_before_traffic() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let load = TimedLoad::start(agent, 4);

    for (version, smoke) in [
        ("v2", r#"curl -fsS "$ROLLWAY_SMOKE_URL/no-such-page""#),
        ("v3", "false"),
    ] {
        let ran = agent
            .deploy(&setup.app("app", version).smoke(smoke), ENV)
            .await;
        ran.assert_code(1);
        let status = agent.status(APP, ENV).await;
        assert_eq!(status.deployment_state(), Some("Failed"), "{status}\n{ran}");
        assert_contains(
            status.deployment_reason().unwrap_or_default(),
            "smoke command",
        );
        assert_eq!(status.current_release(), Some(1), "{status}");
        assert_eq!(status.weights(), [(1, 100)], "{status}");
        let id = deployment_id(agent).await;
        let events = deployment_events(agent, &id).await;
        assert_eq!(
            of_kind(&events, "deployment.weights").len(),
            0,
            "{events:#?}"
        );
    }
    agent.assert_serves("v1").await;
    let (report, _) = load.stop().await;
    report.assert_no_failures();
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1"],
        "{report}"
    );
}

// 6. Alerts: a deploy that failed and an automatic rollback each reach the webhook once, with no
// secret in them.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_gets_each_alert_once_without_secrets() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let receiver = testkit::webhook::Receiver::start().await;
    // The webhook URL is a secret too: its path must not travel in the alerts either.
    let hook_path = format!("/hook/{}", random_hex(16));
    let canary_secret = format!("canary-{}", random_hex(16));
    set_secret(agent, "ALERTS_URL", &receiver.url(&hook_path)).await;
    set_secret(agent, "CANARY_SECRET", &canary_secret).await;
    let app = |version: &str| {
        setup
            .app("app", version)
            .secrets(ENV, &["CANARY_SECRET"])
            .alerts_webhook("ALERTS_URL")
            .analysis(r#"interval = "200ms""#)
            .analysis(format!("min_requests = {MIN_REQUESTS}"))
    };
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    let load = TimedLoad::start(agent, 4);

    // A deploy that fails (its smoke command), then one the agent rolls back by itself.
    agent
        .deploy(&app("v2").smoke("false"), ENV)
        .await
        .assert_code(1);
    let bad = app("v3").observe("20s").env("ERROR_RATE", "0.5");
    agent.deploy(&bad, ENV).await.assert_code(1);
    assert_eq!(
        agent.status(APP, ENV).await.deployment_state(),
        Some("RolledBack")
    );
    let (report, _) = load.stop().await;
    assert_failures_all_from(&report, "v3");

    receiver.wait_for(2, PATIENCE).await;
    // Retries come within seconds; a duplicate would be there by now.
    let received = receiver.wait_for(3, Duration::from_secs(3)).await;
    let texts: Vec<String> = received
        .iter()
        .map(|request| {
            assert_eq!(request.method, "POST");
            assert_eq!(request.path, hook_path);
            let body: Value = serde_json::from_str(&request.body)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {}", request.body));
            body["text"].as_str().expect("a Slack `text`").to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert_contains(&texts[0], "[rollway] demo in production: deploy failed");
    assert_contains(&texts[0], "smoke command");
    assert_contains(
        &texts[1],
        "[rollway] demo in production: rolled back automatically",
    );
    for request in &received {
        assert!(
            !request.body.contains(&canary_secret),
            "an alert carries the canary secret: {}",
            request.body
        );
        assert!(
            !request.body.contains(&hook_path[6..]),
            "an alert carries the webhook URL: {}",
            request.body
        );
    }
    assert_eq!(of_kind(&agent.events().await, "alert.failed").len(), 0);
}

async fn set_secret(agent: &TestAgent, name: &str, value: &str) -> Ran {
    let ran = agent.set_secret(APP, ENV, name, value).await;
    ran.assert_code(0);
    ran
}

/// A kill -9 while a deploy waits for approval: the restarted agent keeps it waiting (nothing was
/// migrated or started to undo), and an approval then finishes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_waiting_for_approval_survives_a_kill_9_of_the_agent() {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let migrations = setup.shared_dir("shared").join("migrations.log");
    let app = gated(&setup, "v2", &migrations);
    let deploy = setup
        .agent
        .deploy_command(&app, ENV, Some(setup.agent.admin_token()))
        .spawn()
        .expect("rollway deploy");
    let status = wait_state(&setup.agent, 2, "AwaitingApproval").await;
    let id = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    setup.agent.kill9().await;
    drop(deploy);
    setup.agent.restart_with_env(&[]).await;
    let agent = &setup.agent;
    let held = wait_state(agent, 2, "AwaitingApproval").await;
    assert_eq!(held.weights(), [(1, 100)], "{held}");
    assert!(
        !migrations.exists(),
        "the migration ran before the approval"
    );
    let approver = token(agent, "approver").await;
    agent
        .cli_as(Some(&approver), &["approve", &id])
        .await
        .assert_code(0);
    let status = agent.wait_deployment_finished(APP, ENV, PATIENCE).await;
    assert_eq!(status.deployment_state(), Some("Succeeded"), "{status}");
    agent.assert_serves("v2").await;
    assert_eq!(
        std::fs::read_to_string(&migrations).expect("migrations ran"),
        "v2\n"
    );
}

/// A kill -9 right after the approval, before the next state is written: the restarted agent
/// finds the approval in the audit log and goes on, without asking again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approval_is_not_lost_when_the_agent_dies_right_after_it() {
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    setup
        .agent
        .restart_with_env(&[("ROLLWAY_TEST_CRASH_BEFORE", "BackingUp")])
        .await;
    let migrations = setup.shared_dir("shared").join("migrations.log");
    let app = gated(&setup, "v2", &migrations);
    let deploy = setup
        .agent
        .deploy_command(&app, ENV, Some(setup.agent.admin_token()))
        .spawn()
        .expect("rollway deploy");
    let status = wait_state(&setup.agent, 2, "AwaitingApproval").await;
    let id = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let approver = token(&setup.agent, "approver").await;
    setup
        .agent
        .cli_as(Some(&approver), &["approve", &id])
        .await
        .assert_code(0);
    assert!(
        setup.agent.wait_exit(PATIENCE).await,
        "the agent did not kill itself before BackingUp"
    );
    drop(deploy);
    setup.agent.restart_with_env(&[]).await;
    let agent = &setup.agent;
    let status = agent.wait_deployment_finished(APP, ENV, PATIENCE).await;
    assert_eq!(status.deployment_state(), Some("Succeeded"), "{status}");
    agent.assert_serves("v2").await;
    assert_eq!(
        std::fs::read_to_string(&migrations).expect("migrations ran"),
        "v2\n"
    );
}

/// A canary held at its first step (no pause) whose agent dies by SIGKILL right after
/// `rollway promote` was accepted, before the executor acted on it.
async fn canary_held_then_killed_after(signal: &str) -> (Setup, String) {
    const STEPS: &str = r#"[{ weight = 20 }, { weight = 50 }, { weight = 100 }]"#;
    let mut setup = Setup::start().await;
    setup
        .agent
        .deploy(&canary(&setup, "v1", STEPS), ENV)
        .await
        .assert_code(0);
    setup
        .agent
        .restart_with_env(&[("ROLLWAY_TEST_CRASH_ON_SIGNAL", signal)])
        .await;
    let deploy = setup
        .agent
        .deploy_command(
            &canary(&setup, "v2", STEPS),
            ENV,
            Some(setup.agent.admin_token()),
        )
        .spawn()
        .expect("rollway deploy");
    let id = deployment_id_of(&setup.agent, 2).await;
    wait_event(&setup.agent, &id, "deployment.holding").await;
    assert_eq!(
        setup.agent.status(APP, ENV).await.weights(),
        [(1, 80), (2, 20)]
    );
    setup
        .agent
        .cli(&[signal, "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    assert!(
        setup.agent.wait_exit(PATIENCE).await,
        "the agent did not kill itself before acting on `{signal}`"
    );
    drop(deploy);
    setup.agent.restart_with_env(&[]).await;
    (setup, id)
}

/// The id of the deployment of release `to_release`, once it shifts traffic.
async fn deployment_id_of(agent: &TestAgent, to_release: u64) -> String {
    wait_state(agent, to_release, "Shifting").await.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned()
}

/// A promote accepted before a kill -9 is not lost: the restarted agent goes on at the canary's
/// NEXT step (no step given twice), and the deployment finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promote_accepted_before_a_kill_9_moves_the_canary_to_its_next_step() {
    let (setup, id) = canary_held_then_killed_after("promote").await;
    let agent = &setup.agent;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while agent.status(APP, ENV).await.weights() != [(1, 50), (2, 50)] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the canary did not go on to its second step: {}",
            agent.status(APP, ENV).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent
        .cli(&["promote", "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    let status = agent.wait_deployment_finished(APP, ENV, PATIENCE).await;
    assert_eq!(status.deployment_state(), Some("Succeeded"), "{status}");
    assert_eq!(status.weights(), [(2, 100)], "{status}");
    agent.assert_serves("v2").await;
    let events = deployment_events(agent, &id).await;
    let weights: Vec<&str> = of_kind(&events, "deployment.weights")
        .into_iter()
        .map(message)
        .collect();
    assert_eq!(
        weights,
        [
            "canary step 1/3: release 2 takes 20% of traffic",
            "canary step 2/3: release 2 takes 50% of traffic",
            "canary step 3/3: release 2 takes 100% of traffic",
        ]
    );
    assert_eq!(of_kind(&events, "deployment.promoted").len(), 2);
}

/// An abort accepted before a kill -9 is not lost: the restarted agent rolls the canary back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abort_accepted_before_a_kill_9_rolls_the_canary_back() {
    let (setup, _) = canary_held_then_killed_after("abort").await;
    let agent = &setup.agent;
    let status = agent.wait_deployment_finished(APP, ENV, PATIENCE).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    assert_contains(
        status.0["deployment"]["reason"].as_str().unwrap_or(""),
        "the canary was aborted by",
    );
    assert_eq!(status.weights(), [(1, 100)], "{status}");
    agent.assert_serves("v1").await;
}
