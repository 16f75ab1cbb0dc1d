//! Edge controls end to end (issue 16): per-route rate limit and allow list from the manifest, the
//! client address believed only from trusted proxies, maintenance mode and pause under load.
//!
//! Clients are told apart by their loopback source address (127.0.0.1, .2, .3): the whole 127/8 is
//! local on Linux, so one test plays a trusted proxy, an untrusted peer and two separate clients.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent};
use testkit::load::{Load, Outcome};
use testkit::source::{FullAnswer, get_from};

use crate::agent::rollway_bin;

const ENV: &str = "production";
const HOST: &str = "demo.test";

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

async fn get(agent: &TestAgent, source: u8, path: &str, headers: &[(&str, &str)]) -> FullAnswer {
    get_from(
        loopback(source),
        agent.proxy_addr(),
        HOST,
        path,
        headers,
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|| panic!("`GET {path}` from 127.0.0.{source}: no answer"))
}

/// Sends `count` requests from 127.0.0.`source` at once (each on its own connection, all started
/// before any is awaited) with `X-Forwarded-For: forwarded`; their statuses, 0 for no answer.
async fn at_once(agent: &TestAgent, source: u8, forwarded: &str, count: usize) -> Vec<u16> {
    let addr = agent.proxy_addr();
    let requests: Vec<_> = (0..count)
        .map(|_| {
            let forwarded = forwarded.to_owned();
            tokio::spawn(async move {
                let headers = [("x-forwarded-for", forwarded.as_str())];
                get_from(
                    loopback(source),
                    addr,
                    HOST,
                    "/",
                    &headers,
                    Duration::from_secs(10),
                )
                .await
                .map_or(0, |answer| answer.status)
            })
        })
        .collect();
    let mut statuses = Vec::with_capacity(count);
    for request in requests {
        statuses.push(request.await.expect("request task"));
    }
    statuses
}

fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|event| event["kind"] == kind)
        .collect()
}

/// Sends `per_second` requests a second for `seconds` from 127.0.0.`source`, each on its own
/// connection, spoofing `X-Forwarded-For` when `spoof` is set; counts answers by status.
async fn paced(
    agent: &TestAgent,
    source: u8,
    per_second: u32,
    seconds: u32,
    spoof: bool,
) -> std::collections::BTreeMap<u16, u64> {
    let addr = agent.proxy_addr();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / per_second);
    let mut requests = Vec::new();
    for n in 0..per_second * seconds {
        interval.tick().await;
        let spoofed = format!("198.51.100.{}", n % 250);
        requests.push(tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = if spoof {
                vec![("x-forwarded-for", spoofed.as_str())]
            } else {
                Vec::new()
            };
            get_from(
                loopback(source),
                addr,
                HOST,
                "/",
                &headers,
                Duration::from_secs(10),
            )
            .await
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for request in requests {
        let answer = request.await.expect("request task");
        let status = answer.map_or(0, |answer| answer.status);
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_counts_each_client_and_believes_forwarding_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Only 127.0.0.2 is a trusted proxy; 127.0.0.1 and 127.0.0.3 are clients like any other.
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("ROLLWAY_TRUSTED_PROXIES", "127.0.0.2")],
    )
    .await;
    let app = testkit::agent::TestApp::new(dir.path().join("app"))
        .route_line(r#"rate_limit = { per_ip = "20/s", burst = 20 }"#);
    agent.deploy(&app, ENV).await.assert_code(0);

    // 100 requests a second for 3 s from one address (each with a made-up X-Forwarded-For that must
    // not make it a new client), and 10 a second from another address at the same time.
    let (greedy, polite) = tokio::join!(
        paced(&agent, 1, 100, 3, true),
        paced(&agent, 3, 10, 3, false)
    );
    let passed = greedy.get(&200).copied().unwrap_or(0);
    let limited = greedy.get(&429).copied().unwrap_or(0);
    assert_eq!(passed + limited, 300, "only 200 or 429: {greedy:?}");
    // The burst (20) plus 20 a second for ~3 s: 80, with room for the pacing of a shared machine.
    assert!((60..=110).contains(&passed), "{greedy:?}");
    assert_eq!(polite.get(&200).copied(), Some(30), "{polite:?}");

    let limited = get(&agent, 1, "/", &[]).await;
    if limited.status == 429 {
        let retry_after: u64 = limited
            .header("retry-after")
            .and_then(|value| value.parse().ok())
            .expect("a numeric Retry-After on 429");
        assert!((1..=2).contains(&retry_after), "{limited:?}");
    }

    // Through the trusted proxy, the client is the address it forwards: one exhausted client does not
    // limit the next one behind the same proxy. Requests go in batches sent at once: 40 sent one
    // after the other meet a 429 only if each takes less than 25 ms (the burst of 20 refills at 20
    // a second), a bound a loaded machine can cross.
    let mut batches: Vec<Vec<u16>> = Vec::new();
    while !batches.iter().flatten().any(|status| *status == 429) {
        assert!(batches.len() < 5, "198.51.100.1 never limited: {batches:?}");
        let statuses = at_once(&agent, 2, "198.51.100.1", 40).await;
        assert!(
            statuses.iter().all(|status| [200, 429].contains(status)),
            "{statuses:?}"
        );
        batches.push(statuses);
    }
    let other = get(&agent, 2, "/", &[("x-forwarded-for", "198.51.100.2")]).await;
    assert_eq!(other.status, 200, "{other:?}");
    // A client that put its own header in front of the trusted proxy's entry is still the proxy's entry.
    // Believed, each made-up 203.0.113.x would be a fresh client with a burst of 20: a batch of 20
    // would all pass. Taken as the exhausted 198.51.100.1, a batch meets 429s (the batch also
    // empties what the bucket refilled meanwhile, so a next one does if a stall let this one pass).
    let mut spoofed: Vec<Vec<u16>> = Vec::new();
    while !spoofed.iter().flatten().any(|status| *status == 429) {
        assert!(
            spoofed.len() < 5,
            "the spoofed entry was believed: {spoofed:?}"
        );
        let forwarded = format!("203.0.113.{}, 198.51.100.1", 50 + spoofed.len());
        let statuses = at_once(&agent, 2, &forwarded, 20).await;
        assert!(
            statuses.iter().all(|status| [200, 429].contains(status)),
            "{statuses:?}"
        );
        spoofed.push(statuses);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allow_list_refuses_other_networks_and_cannot_be_passed_with_a_spoofed_header() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(rollway_bin(), &dir.path().join("state")).await;
    let app = testkit::agent::TestApp::new(dir.path().join("app"))
        .route_line(r#"allow = ["127.0.0.2/32", "10.0.0.0/8"]"#);
    agent.deploy(&app, ENV).await.assert_code(0);
    assert_eq!(get(&agent, 2, "/", &[]).await.status, 200);
    let refused = get(&agent, 1, "/", &[]).await;
    assert_eq!(refused.status, 403, "{refused:?}");
    // Nothing is trusted by default: an untrusted peer's X-Forwarded-For is ignored.
    let spoofed = get(&agent, 1, "/", &[("x-forwarded-for", "10.1.2.3")]).await;
    assert_eq!(spoofed.status, 403, "{spoofed:?}");
}

/// Load that must see only `allowed` statuses: no connection error, reset or timeout.
fn assert_only(report: &testkit::load::Report, allowed: &[u16]) {
    let unexpected: Vec<(&Outcome, &u64)> = report
        .outcomes
        .iter()
        .filter(
            |(outcome, _)| !matches!(outcome, Outcome::Status(status) if allowed.contains(status)),
        )
        .collect();
    assert!(
        unexpected.is_empty(),
        "outcomes other than {allowed:?}: {unexpected:?} (all: {:?})",
        report.outcomes
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_answers_its_page_under_load_lets_allowed_networks_and_health_through_and_survives_restarts()
 {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = TestAgent::start(rollway_bin(), &dir.path().join("state")).await;
    let app = testkit::agent::TestApp::new(dir.path().join("app"))
        .file("maintenance.html", "<h1>Our own page</h1>");
    let app_dir = app.write();
    agent.deploy(&app, ENV).await.assert_code(0);
    let load = Load::new(agent.proxy_addr())
        .host(HOST)
        .concurrency(4)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Day one mistakes: an unknown environment, a bad network, a page that is not there.
    let ran = agent
        .cli(&["maintenance", "on", "--app", APP, "--env", "nowhere"])
        .await;
    ran.assert_code(2);
    let ran = agent
        .cli(&["maintenance", "on", "--app", APP, "--allow", "office"])
        .await;
    ran.assert_code(2);
    assert!(
        ran.stderr.contains("`office` is not an IP address"),
        "{}",
        ran.stderr
    );
    let ran = agent
        .cli(&[
            "maintenance",
            "on",
            "--app",
            APP,
            "--page",
            "/nonexistent.html",
        ])
        .await;
    ran.assert_code(2);

    let ran = agent
        .cli(&[
            "maintenance",
            "on",
            "--app",
            APP,
            "--message",
            "Back at <b>3pm</b> & sooner",
            "--allow",
            "127.0.0.2/32",
        ])
        .await;
    ran.assert_code(0);
    let page = get(&agent, 1, "/", &[]).await;
    assert_eq!(page.status, 503, "{page:?}");
    assert_eq!(page.header("retry-after"), Some("60"), "{page:?}");
    assert!(
        page.header("content-type")
            .is_some_and(|value| value.starts_with("text/html"))
    );
    assert!(
        page.body
            .contains("Back at &lt;b&gt;3pm&lt;/b&gt; &amp; sooner"),
        "{}",
        page.body
    );
    assert_eq!(
        get(&agent, 2, "/", &[]).await.status,
        200,
        "the allowed network"
    );
    assert_eq!(
        get(&agent, 1, "/health", &[]).await.status,
        200,
        "the health path"
    );
    let status = agent.cli(&["status", "--app", APP]).await;
    assert!(
        status.stdout.contains("in maintenance since"),
        "{}",
        status.stdout
    );

    // The app's own page, from its folder; nothing outside it, nothing but HTML.
    let app_dir_text = app_dir.to_str().expect("utf-8");
    for outside in ["/etc/hostname", "../app/../../etc/hostname", "rollway.toml"] {
        let ran = agent
            .cli(&[
                "maintenance",
                "on",
                "--app",
                APP,
                "--dir",
                app_dir_text,
                "--page",
                outside,
            ])
            .await;
        ran.assert_code(2);
    }
    let ran = agent
        .cli(&[
            "maintenance",
            "on",
            "--app",
            APP,
            "--dir",
            app_dir_text,
            "--page",
            "maintenance.html",
        ])
        .await;
    ran.assert_code(0);
    assert_eq!(get(&agent, 1, "/", &[]).await.body, "<h1>Our own page</h1>");

    // It lives in the agent's store and the proxy's state: a proxy upgrade and an agent kill -9 keep it.
    agent.cli(&["proxy", "upgrade"]).await.assert_code(0);
    assert_eq!(get(&agent, 1, "/", &[]).await.status, 503);
    agent.kill9().await;
    agent.restart_with_env(&[]).await;
    assert_eq!(get(&agent, 1, "/", &[]).await.status, 503);
    let status = agent.status(APP, ENV).await;
    assert_eq!(
        status.0["edge"]["maintenance"]["custom_page"], true,
        "{}",
        status.0
    );

    agent
        .cli(&["maintenance", "off", "--app", APP])
        .await
        .assert_code(0);
    assert_eq!(get(&agent, 1, "/", &[]).await.status, 200);
    let report = load.stop().await;
    assert_only(&report, &[200, 503]);
    assert!(
        report
            .outcomes
            .get(&Outcome::Status(503))
            .copied()
            .unwrap_or(0)
            > 0,
        "{:?}",
        report.outcomes
    );
    let events = agent.events().await;
    assert_eq!(of_kind(&events, "maintenance.on").len(), 2, "{events:#?}");
    assert_eq!(of_kind(&events, "maintenance.off").len(), 1, "{events:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_holds_every_request_until_resume_and_ends_by_itself_at_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start(rollway_bin(), &dir.path().join("state")).await;
    let app = testkit::agent::TestApp::new(dir.path().join("app"));
    agent.deploy(&app, ENV).await.assert_code(0);
    let load = Load::new(agent.proxy_addr())
        .host(HOST)
        .concurrency(4)
        .timeout(Duration::from_secs(25))
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Bounds a pause must have, and who may pause: a viewer may not.
    for max in ["0s", "10m", "30"] {
        let ran = agent.cli(&["pause", "--app", APP, "--max", max]).await;
        ran.assert_code(2);
    }
    let ran = agent
        .cli(&[
            "tokens", "create", "--role", "viewer", "--name", "watcher", "--json",
        ])
        .await;
    ran.assert_code(0);
    let created: Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    let viewer = created["token"].as_str().expect("token value").to_owned();
    let ran = agent.cli_as(Some(&viewer), &["pause", "--app", APP]).await;
    ran.assert_code(3);
    assert!(ran.stderr.contains("deployer"), "{}", ran.stderr);
    let ran = agent
        .cli_as(Some(&viewer), &["maintenance", "on", "--app", APP])
        .await;
    ran.assert_code(3);
    assert!(of_kind(&agent.events().await, "pause.on").is_empty());

    agent
        .cli(&["pause", "--app", APP, "--max", "60s"])
        .await
        .assert_code(0);
    let status = agent.cli(&["status", "--app", APP]).await;
    assert!(status.stdout.contains("paused since"), "{}", status.stdout);
    // Requests that arrive during the pause are held, not answered and not refused.
    let (resumed_tx, resumed_rx) = tokio::sync::watch::channel(false);
    let mut held = Vec::new();
    for _ in 0..10 {
        let addr = agent.proxy_addr();
        let resumed = resumed_rx.clone();
        held.push(tokio::spawn(async move {
            let answer = get_from(loopback(1), addr, HOST, "/", &[], Duration::from_secs(25)).await;
            (answer.map(|answer| answer.status), *resumed.borrow())
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        held.iter().all(|request| !request.is_finished()),
        "a held request was answered during the pause"
    );
    resumed_tx.send(true).expect("watchers");
    agent.cli(&["resume", "--app", APP]).await.assert_code(0);
    for request in held {
        let (status, after_resume) = request.await.expect("request task");
        assert_eq!(status, Some(200));
        assert!(after_resume, "answered before the resume");
    }

    // A pause ends by itself at its bound.
    agent
        .cli(&["pause", "--app", APP, "--max", "2s"])
        .await
        .assert_code(0);
    let late = get(&agent, 1, "/", &[]).await;
    assert_eq!(late.status, 200);
    let report = load.stop().await;
    report.assert_no_failures();
    let events = agent.events().await;
    assert_eq!(of_kind(&events, "pause.on").len(), 2, "{events:#?}");
    assert_eq!(of_kind(&events, "pause.off").len(), 1, "{events:#?}");
    // A deadline, not a count of polls: 50 polls of 100 ms were a bound a loaded machine crosses.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if !of_kind(&agent.events().await, "pause.ended").is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no `pause.ended` event after the bound: {:#?}",
        agent.events().await
    );
}
