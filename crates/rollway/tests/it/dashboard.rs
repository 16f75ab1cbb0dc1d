//! The web dashboard in a real browser (issue 18): Debian's chromium, headless, driven through
//! chromedriver (WebDriver) with fantoccini, against the real agent, proxy and demo app, all on
//! 127.0.0.1. A deployer signs in, watches a canary deployed from the CLI appear, chart its
//! verdicts and finish without a reload, rolls back with a click and a confirmation (and the proxy
//! answers the earlier version); a viewer sees no action and a forged POST of theirs is refused.
//!
//! Needs `chromium` and `chromedriver` (scripts/test installs Debian's `chromium` and
//! `chromium-driver`): without them it fails when `ROLLWAY_E2E` or `CI` is set and skips with one
//! printed line otherwise. Screenshots go to `$CARGO_TARGET_TMPDIR/dashboard/`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use testkit::agent::{APP, TestAgent};
use testkit::load::Load;

use crate::agent::Setup;

const ENV: &str = "production";
/// Bound of every wait for the page or the agent.
const PATIENCE: Duration = Duration::from_secs(60);
/// Bound of the load loop; the test stops it long before.
const LOAD_BOUND: Duration = Duration::from_secs(180);
const STEPS: &str = r#"[{ weight = 20, pause = "1s" }, { weight = 50 }, { weight = 100 }]"#;

/// chromedriver on a loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn find(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|path| path.is_file())
}

/// chromium and chromedriver, or `None` (skip) when they are missing outside CI.
fn browser() -> Option<(PathBuf, PathBuf)> {
    let chromium = find("chromium").or_else(|| find("chromium-browser"));
    let driver = find("chromedriver");
    match (chromium, driver) {
        (Some(chromium), Some(driver)) => Some((chromium, driver)),
        _ => {
            assert!(
                std::env::var_os("ROLLWAY_E2E").is_none() && std::env::var_os("CI").is_none(),
                "ROLLWAY_E2E or CI is set but chromium or chromedriver is missing (Debian packages chromium, chromium-driver)"
            );
            eprintln!("skipping: chromium and chromedriver are not installed");
            None
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free loopback port")
}

/// chromedriver listening on loopback only (127.0.0.1 and ::1: its default; `--allowed-ips` would
/// make it listen on every interface), and a headless chromium session through it.
async fn start_browser(chromium: &Path, chromedriver: &Path) -> (Driver, Client) {
    let port = free_port();
    let profile = tempfile::tempdir().expect("profile dir");
    let child = Command::new(chromedriver)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromedriver");
    let driver = Driver {
        child,
        port,
        _profile: profile,
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "chromedriver did not listen on {port}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium.display().to_string(),
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--no-first-run", "--disable-extensions",
                format!("--user-data-dir={}", driver._profile.path().display()),
            ],
        }),
    );
    let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a chromium session through chromedriver");
    (driver, client)
}

fn screenshots_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("dashboard");
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    dir
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    let path = screenshots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).expect("write screenshot");
    eprintln!("screenshot: {}", path.display());
}

/// Signs in at `/login` with `token`, as a person would: type it, submit.
async fn sign_in(client: &Client, agent: &TestAgent, token: &str) {
    client
        .goto(&format!("{}/login", agent.api_url()))
        .await
        .expect("open /login");
    let field = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("token"))
        .await
        .expect("the token field");
    field.send_keys(token).await.expect("type the token");
    client
        .find(Locator::Css("form.login button[type=submit]"))
        .await
        .expect("the sign-in button")
        .click()
        .await
        .expect("sign in");
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Css("form.signout"))
        .await
        .expect("signed in: the sign-out form");
}

/// The page's `#deployment-state` text, if there is one now.
async fn page_state(client: &Client) -> Option<String> {
    let value = client
        .execute(
            "var e = document.getElementById('deployment-state'); return e ? e.textContent : null;",
            vec![],
        )
        .await
        .ok()?;
    value.as_str().map(str::to_owned)
}

/// Waits until `check` of the page's state holds, bounded by [`PATIENCE`].
async fn wait_page<F: Fn(&Value) -> bool>(
    client: &Client,
    script: &str,
    what: &str,
    check: F,
) -> Value {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let value = client.execute(script, vec![]).await.unwrap_or(Value::Null);
        if check(&value) {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the page never showed {what}; last: {value}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Marks this page load: a reload or a navigation forgets the mark.
async fn mark(client: &Client) {
    client
        .execute(
            "window.rollwayMark = 'same page load'; return null;",
            vec![],
        )
        .await
        .expect("mark the page");
}

async fn marked(client: &Client) -> bool {
    client
        .execute("return window.rollwayMark || null;", vec![])
        .await
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .as_deref()
        == Some("same page load")
}

/// Clicks the first element matching `css`, again if the live update replaced it meanwhile.
async fn click(client: &Client, css: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let clicked = match client.find(Locator::Css(css)).await {
            Ok(element) => element.click().await.is_ok(),
            Err(_) => false,
        };
        if clicked {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing to click at `{css}`"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token of `role`, made by the admin.
async fn token(agent: &TestAgent, role: &str) -> String {
    let ran = agent
        .cli(&[
            "tokens",
            "create",
            "--role",
            role,
            "--name",
            &format!("{role}-person"),
            "--json",
        ])
        .await;
    ran.assert_code(0);
    let created: Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    created["token"].as_str().expect("token value").to_owned()
}

/// One verdict as the chart marks it and as its event carries it: requests, errors, p99 (µs),
/// and the bounds applied (5xx share, p99 in µs when one applied).
type Mark = (u64, u64, u64, f64, Option<u64>);

/// The figures and bounds of each `analysis.verdict` event of deployment `id`, oldest first.
async fn verdict_figures(agent: &TestAgent, id: &str) -> Vec<Mark> {
    agent
        .events()
        .await
        .into_iter()
        .filter(|event| event["deployment_id"] == id && event["kind"] == "analysis.verdict")
        .map(|event| {
            let sample = &event["data"]["sample"];
            let bounds = &event["data"]["bounds"];
            (
                sample["requests"].as_u64().unwrap_or(u64::MAX),
                sample["errors"].as_u64().unwrap_or(u64::MAX),
                sample["p99_us"].as_u64().unwrap_or(u64::MAX),
                bounds["max_error_share"].as_f64().unwrap_or(f64::NAN),
                bounds["max_p99_us"].as_u64(),
            )
        })
        .collect()
}

const MARKS: &str = "return Array.from(document.querySelectorAll('figure[data-metric=error_share] circle')).map(function (c) { var d = c.dataset; return [Number(d.requests), Number(d.errors), Number(d.p99Us), Number(d.boundErrorShare), d.boundP99Us === undefined ? null : Number(d.boundP99Us)]; });";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_watched_and_a_rollback_clicked_in_a_real_browser() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    // The overview's sparklines read the proxy's counters every half second here (a minute in use).
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_with_env(
        crate::agent::rollway_bin(),
        &dir.path().join("state"),
        &[("ROLLWAY_TEST_TREND_INTERVAL_MS", "500")],
    )
    .await;
    let setup = Setup { agent, dir };
    let agent = &setup.agent;
    let app = |version: &str| {
        setup
            .app("app", version)
            .canary(STEPS)
            .analysis(r#"interval = "200ms""#)
            .analysis("min_requests = 50")
            // Only errors fail this canary: on a machine shared with other tests, latency is noise.
            .analysis("latency_margin = 100")
            .observe("1s")
    };
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    let deployer = token(agent, "deployer").await;
    let viewer = token(agent, "viewer").await;
    let (_driver, client) = start_browser(&chromium, &chromedriver).await;

    // Sign in as deployer: the overview lists the app.
    sign_in(&client, agent, &deployer).await;
    let row = client
        .find(Locator::Css(&format!(
            "tr[data-app='{APP}'][data-env='{ENV}']"
        )))
        .await
        .expect("the app's row on the overview");
    let text = row.text().await.expect("row text");
    assert!(text.contains("r1") && text.contains("1/1"), "{text}");

    // The environment page, left open from here on: the deploy appears and ends without reload.
    client
        .goto(&format!("{}/apps/{APP}/{ENV}", agent.api_url()))
        .await
        .expect("open the environment");
    assert_eq!(page_state(&client).await.as_deref(), Some("Succeeded"));
    mark(&client).await;
    let load = Load::new(agent.proxy_addr())
        .concurrency(4)
        .rate(250)
        .duration(LOAD_BOUND)
        .start();
    let mut deploy = agent
        .deploy_command(&app("v2"), ENV, Some(&deployer))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("rollway deploy");
    // The canary holds at its second step (no pause): the page shows it shifting, with verdicts.
    wait_page(
        &client,
        "var s = document.getElementById('deployment-state'); var p = document.querySelector('a[href*=\"action=promote\"]'); var d = document.querySelector('#deployment p'); return [s ? s.textContent : null, document.querySelectorAll('figure[data-metric=error_share] circle').length, !!p, document.body.textContent.indexOf('takes 50% of traffic') >= 0, d ? d.textContent : null];",
        "the canary at 50% with verdicts and a promote button",
        |v| v[0] == "Shifting" && v[1].as_u64() >= Some(2) && v[2] == true && v[3] == true,
    )
    .await;
    assert!(
        marked(&client).await,
        "the page was reloaded to show the deployment"
    );
    screenshot(&client, "environment-canary").await;

    // The chart's points are the verdict events' figures, in order.
    let marks: Vec<Mark> =
        serde_json::from_value(client.execute(MARKS, vec![]).await.expect("marks"))
            .expect("mark figures");
    let id = agent.status(APP, ENV).await.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let events = verdict_figures(agent, &id).await;
    assert!(
        !marks.is_empty() && marks.len() <= events.len(),
        "{marks:?} vs {events:?}"
    );
    assert_eq!(
        marks,
        events[..marks.len()],
        "chart points and bounds against the verdict events"
    );
    // Every verdict carries the bounds it applied (the p99's only once both sides had enough
    // measured requests), and the marks above carry exactly those.
    assert!(
        events.iter().all(|e| e.3 == 0.01),
        "the error bound is max_error_rate's default: {events:?}"
    );
    // Both charts mark the same verdicts (read at once: the page is updated live meanwhile).
    let counts = client
        .execute(
            "return ['error_share', 'p99'].map(function (m) { return document.querySelectorAll('figure[data-metric=' + m + '] circle').length; });",
            vec![],
        )
        .await
        .expect("mark counts");
    assert!(
        counts[0] == counts[1] && counts[0].as_u64() >= Some(marks.len() as u64),
        "{counts}"
    );
    assert!(
        client
            .find(Locator::Css("figure[data-metric=error_share] line.bound"))
            .await
            .is_ok(),
        "the error-rate bound is drawn"
    );

    // Promoted from the CLI: the same page shows the deployment finish.
    agent
        .cli(&["promote", "--env", ENV, "--app", APP])
        .await
        .assert_code(0);
    wait_page(
        &client,
        "var s = document.getElementById('deployment-state'); return s ? s.textContent : null;",
        "the deployment succeeded",
        |v| v == "Succeeded",
    )
    .await;
    assert!(
        marked(&client).await,
        "the page was reloaded to show the end"
    );
    let ended = tokio::time::timeout(PATIENCE, deploy.wait())
        .await
        .expect("the deploy ended")
        .expect("rollway deploy");
    assert_eq!(ended.code(), Some(0));
    agent.assert_serves("v2").await;

    // Keyboard and history: the logs link and back again.
    click(&client, "p.links a[href$='/logs']").await;
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("log"))
        .await
        .expect("the logs page");
    client.back().await.expect("back");
    client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("releases-h"))
        .await
        .expect("back on the environment");

    // Roll back to r1: click, the confirmation names it, confirm; traffic switches.
    click(&client, "tr[data-release='1'] a.button").await;
    let question = client
        .wait()
        .at_most(PATIENCE)
        .for_element(Locator::Id("question"))
        .await
        .expect("the confirmation")
        .text()
        .await
        .expect("question");
    assert_eq!(question, format!("Roll back {APP} in {ENV} to release r1?"));
    // By keyboard: the confirmation's button has the focus, Enter confirms.
    let focused = client.active_element().await.expect("the focused element");
    assert_eq!(
        focused.attr("id").await.expect("its id").as_deref(),
        Some("confirm"),
        "the confirm button has the focus"
    );
    focused.send_keys("\u{E007}").await.expect("press Enter");
    wait_page(
        &client,
        "var s = document.getElementById('deployment-state'); return [s ? s.textContent : null, document.querySelector('p.summary strong').textContent];",
        "the rollback to r1 succeeded",
        |v| v[0] == "Succeeded" && v[1] == "r1",
    )
    .await;
    agent.assert_serves("v1").await;
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.0["deployment"]["kind"], "rollback", "{status}");
    assert_eq!(
        status.0["deployment"]["created_by"], "deployer-person",
        "{status}"
    );
    let report = load.stop().await;
    report.assert_no_failures();

    // The overview: the row's sparklines drew the load's minutes (here half-seconds).
    client
        .goto(&format!("{}/", agent.api_url()))
        .await
        .expect("overview");
    let sparks = client
        .execute(
            &format!("return Array.from(document.querySelectorAll(\"tr[data-app='{APP}'] svg.spark polyline\")).map(function (p) {{ return p.getAttribute('points').split(' ').length; }});"),
            vec![],
        )
        .await
        .expect("sparklines");
    let sparks: Vec<usize> = serde_json::from_value(sparks).expect("sparkline points");
    assert_eq!(sparks.len(), 2, "a 5xx and a p99 sparkline");
    assert!(sparks.iter().all(|points| *points >= 2), "{sparks:?}");
    screenshot(&client, "overview").await;

    // At phone width every page fits the screen: nothing wider than the window but the tables'
    // own scrolling boxes.
    client.set_window_size(390, 844).await.expect("phone width");
    for path in [
        "/".to_owned(),
        format!("/apps/{APP}/{ENV}"),
        "/events".to_owned(),
    ] {
        client
            .goto(&format!("{}{path}", agent.api_url()))
            .await
            .expect("page");
        // The elements that stick out of the window, outside the tables' scrolling boxes.
        let wide = client
            .execute(
                "return Array.from(document.querySelectorAll('body *')).filter(function (e) { return !(e.parentElement && e.parentElement.closest('.scroll')) && e.getBoundingClientRect().right > document.documentElement.clientWidth + 1; }).map(function (e) { return e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right); });",
                vec![],
            )
            .await
            .expect("widths");
        let widths = client
            .execute(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth, Array.from(document.querySelectorAll('body *')).filter(function (e) { return e.getBoundingClientRect().right > document.documentElement.clientWidth + 1; }).map(function (e) { return e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right); }).slice(0, 12)];",
                vec![],
            )
            .await
            .expect("widths");
        assert_eq!(wide, json!([]), "{path} is wider than a phone: {widths}");
        assert!(
            widths[0].as_u64() <= widths[1].as_u64(),
            "{path} scrolls sideways: {widths}"
        );
        if path.starts_with("/apps/") {
            screenshot(&client, "environment-phone").await;
        }
    }
    client
        .set_window_size(1280, 1000)
        .await
        .expect("desktop width");

    // The events, filtered to the app.
    client
        .goto(&format!("{}/events?app={APP}", agent.api_url()))
        .await
        .expect("events");
    let kinds = client
        .execute("return Array.from(document.querySelectorAll('#events li')).map(function (li) { return li.dataset.kind; });", vec![])
        .await
        .expect("event kinds");
    let kinds: Vec<String> = serde_json::from_value(kinds).expect("kinds");
    assert!(kinds.iter().any(|k| k == "analysis.verdict"), "{kinds:?}");
    assert!(
        kinds.iter().all(|k| !k.starts_with("dashboard.")),
        "filtered to the app: {kinds:?}"
    );
    screenshot(&client, "events").await;

    // A viewer: no action anywhere, and a forged POST with their session and CSRF token is 403,
    // as is one without the token; nothing moved.
    client.delete_all_cookies().await.expect("sign out");
    sign_in(&client, agent, &viewer).await;
    client
        .goto(&format!("{}/apps/{APP}/{ENV}", agent.api_url()))
        .await
        .expect("open the environment");
    let buttons = client
        .execute(
            "return document.querySelectorAll('a.button, form.confirm').length;",
            vec![],
        )
        .await
        .expect("buttons");
    assert_eq!(buttons.as_u64(), Some(0), "a viewer sees no action");
    let forged = client
        .execute_async(
            "var done = arguments[arguments.length - 1];
             var csrf = document.querySelector('form.signout input[name=csrf]').value;
             function post(body) {
               return fetch(location.pathname + '/act', { method: 'POST', body: body,
                 headers: { 'Content-Type': 'application/x-www-form-urlencoded' } }).then(function (r) { return r.status; });
             }
             Promise.all([post('action=rollback&to=2&csrf=' + csrf), post('action=rollback&to=2')])
               .then(done, function (e) { done(String(e)); });",
            vec![],
        )
        .await
        .expect("forged posts");
    assert_eq!(forged, json!([403, 403]));
    assert_eq!(agent.status(APP, ENV).await.current_release(), Some(1));
    let _ = client.close().await;
}

/// A secret's value never reaches a dashboard page: the app prints it, the logs page (first lines
/// and the live tail) shows `***`, and no page or stream of the session has it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_no_secret_value_even_when_the_app_prints_it() {
    let Some((chromium, chromedriver)) = browser() else {
        return;
    };
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let canary = format!("canary-{}", testkit::agent::random_hex(16));
    let app = setup
        .app("app", "v1")
        .replicas(2)
        .secrets(ENV, &["CANARY"])
        .run(format!(
            r#"echo "app starts with $CANARY"; (while sleep 0.2; do echo "app still has $CANARY"; done) & exec {}"#,
            testkit::demo::demo_app_path().display()
        ));
    agent
        .set_secret(APP, ENV, "CANARY", &canary)
        .await
        .assert_code(0);
    agent.deploy(&app, ENV).await.assert_code(0);
    let viewer = token(agent, "viewer").await;
    let (_driver, client) = start_browser(&chromium, &chromedriver).await;
    sign_in(&client, agent, &viewer).await;

    client
        .goto(&format!("{}/apps/{APP}/{ENV}/logs", agent.api_url()))
        .await
        .expect("the logs page");
    let first = client
        .execute(
            "return document.querySelectorAll('#log .line').length;",
            vec![],
        )
        .await
        .expect("lines")
        .as_u64()
        .unwrap_or(0);
    // The tail grows without a reload.
    mark(&client).await;
    wait_page(
        &client,
        "return document.querySelectorAll('#log .line').length;",
        "new log lines",
        |v| v.as_u64() > Some(first + 3),
    )
    .await;
    assert!(marked(&client).await, "the logs page was reloaded");
    let text = client
        .execute("return document.getElementById('log').textContent;", vec![])
        .await
        .expect("log text");
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("app still has ***"), "{text}");
    let owners_of_all: std::collections::BTreeSet<String> = serde_json::from_value(
        client
            .execute(
                "return Array.from(document.querySelectorAll('#log .line .instance')).map(function (e) { return e.textContent; });",
                vec![],
            )
            .await
            .expect("owners"),
    )
    .expect("instance ids");
    assert_eq!(owners_of_all.len(), 2, "{owners_of_all:?}");
    assert!(!text.contains(&canary), "the logs page shows the secret");

    // One instance's tail: its lines only, old and new.
    let instance = agent.status(APP, ENV).await.0["instances"][0]["id"]
        .as_str()
        .expect("an instance")
        .to_owned();
    client
        .goto(&format!(
            "{}/apps/{APP}/{ENV}/logs?instance={instance}",
            agent.api_url()
        ))
        .await
        .expect("one instance's logs");
    let first = client
        .execute(
            "return document.querySelectorAll('#log .line').length;",
            vec![],
        )
        .await
        .expect("lines")
        .as_u64()
        .unwrap_or(0);
    wait_page(
        &client,
        "return document.querySelectorAll('#log .line').length;",
        "new lines of the instance",
        |v| v.as_u64() > Some(first + 3),
    )
    .await;
    let owners: Vec<String> = serde_json::from_value(
        client
            .execute(
                "return Array.from(document.querySelectorAll('#log .line .instance')).map(function (e) { return e.textContent; });",
                vec![],
            )
            .await
            .expect("owners"),
    )
    .expect("instance ids");
    assert!(owners.iter().all(|owner| *owner == instance), "{owners:?}");
    // Two instances print: the page for all of them shows both.
    assert_eq!(
        agent.status(APP, ENV).await.0["instances"]
            .as_array()
            .map(Vec::len),
        Some(2)
    );

    // Every page and stream of the session, as the browser receives them.
    let bodies = client
        .execute_async(
            &format!(
                "var done = arguments[arguments.length - 1];
                 var paths = ['/', '/apps/{APP}/{ENV}', '/apps/{APP}/{ENV}/logs', '/apps/{APP}/{ENV}/backups', '/events'];
                 Promise.all(paths.map(function (p) {{ return fetch(p).then(function (r) {{ return r.text(); }}); }}))
                   .then(function (texts) {{ done(texts.join('\\n')); }}, function (e) {{ done(String(e)); }});"
            ),
            vec![],
        )
        .await
        .expect("pages");
    let bodies = bodies.as_str().unwrap_or_default();
    assert!(
        bodies.contains("app starts with ***") || bodies.contains("app still has ***"),
        "{bodies}"
    );
    assert!(
        !bodies.contains(&canary),
        "a dashboard page shows the secret"
    );
    let _ = client.close().await;
}

/// Over TLS (an agent's API beyond loopback always is), the session cookie is `Secure` too, and
/// the dashboard answers on the same listener with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_session_cookie_is_secure() {
    if find("curl").is_none() {
        assert!(
            std::env::var_os("ROLLWAY_E2E").is_none() && std::env::var_os("CI").is_none(),
            "ROLLWAY_E2E or CI is set but curl is missing"
        );
        eprintln!("skipping: curl is not installed");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent =
        TestAgent::start_tls(crate::agent::rollway_bin(), &dir.path().join("state"), &[]).await;
    assert!(agent.api_url().starts_with("https://"));
    let curl = |args: &[&str]| {
        let output = std::process::Command::new("curl")
            .args(["-sk", "--max-time", "10", "-D", "-", "-o", "/dev/null"])
            .args(args)
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let head = curl(&[
        "--data-urlencode",
        &format!("token={}", agent.admin_token()),
        &format!("{}/login", agent.api_url()),
    ]);
    let cookie = head
        .lines()
        .find(|line| line.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no session cookie: {head}"));
    for attribute in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let session = cookie
        .split_once("rollway_session=")
        .and_then(|(_, rest)| rest.split(';').next())
        .expect("session id")
        .trim()
        .to_owned();
    let head = curl(&[
        "-H",
        &format!("Cookie: rollway_session={session}"),
        &format!("{}/", agent.api_url()),
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}
