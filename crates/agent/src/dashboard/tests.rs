//! The dashboard over a real socket: sign-in and sessions, CSRF, roles as on the API, the pages'
//! content, the canary chart against its verdict events.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use client::wire::{
    DeploymentEvent, DeploymentState, Figures, ReleaseNumber, Strategy, Verdict, VerdictBounds,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::session::{hash_for_tests, session_cookie};
use super::trends::{TrendPoint, Trends};
use crate::api::Limits;
use crate::api::router::tests::{Answer, parse, test_engine};
use crate::deploy::executor::{DeploymentData, Reading};
use crate::engine::Engine;
use crate::store::{Deployment, NewDeployment, NewEvent, NewRelease};
use crate::tokens::{self, Role};

/// The API and dashboard on a temporary state directory, one token per role.
struct Dash {
    addr: SocketAddr,
    engine: Arc<Engine>,
    tokens: BTreeMap<Role, (String, String)>,
    trends: Arc<Trends>,
    _dir: tempfile::TempDir,
}

impl Drop for Dash {
    fn drop(&mut self) {
        self.engine.shutdown.cancel();
    }
}

impl Dash {
    async fn start() -> Dash {
        let dir = tempfile::tempdir().expect("temp dir");
        let engine = test_engine(dir.path());
        let mut tokens = BTreeMap::new();
        for role in Role::ALL {
            let (record, plain) =
                tokens::create(&engine.store, role.as_str(), role).expect("token");
            tokens.insert(role, (record.id, plain.expose().to_owned()));
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("address");
        let trends = Arc::new(Trends::default());
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            ..Limits::from_fd_limit()
        };
        tokio::spawn(crate::api::serve_router(
            listener,
            crate::api::router::router_with_trends(engine.clone(), trends.clone()),
            limits,
            engine.shutdown.clone(),
        ));
        Dash {
            addr,
            engine,
            tokens,
            trends,
            _dir: dir,
        }
    }

    fn token(&self, role: Role) -> &str {
        &self.tokens[&role].1
    }

    async fn get(&self, path: &str, session: Option<&str>) -> Answer {
        request(self.addr, "GET", path, session, None).await
    }

    async fn post(&self, path: &str, session: Option<&str>, form: &[(&str, &str)]) -> Answer {
        let body = serde_urlencoded::to_string(form).expect("form");
        request(self.addr, "POST", path, session, Some(&body)).await
    }

    /// Signs in with `role`'s token; the session id from the cookie.
    async fn sign_in(&self, role: Role) -> String {
        let answer = self
            .post("/login", None, &[("token", self.token(role))])
            .await;
        assert_eq!(answer.status, 303, "{answer:?}");
        assert_eq!(header(&answer, "location").as_deref(), Some("/"));
        let cookie = header(&answer, "set-cookie").expect("a session cookie");
        let value = cookie
            .strip_prefix("rollway_session=")
            .and_then(|rest| rest.split(';').next())
            .expect("the session id");
        value.to_owned()
    }
}

async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    session: Option<&str>,
    form: Option<&str>,
) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let body = form.unwrap_or("");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    if form.is_some() {
        head.push_str("content-type: application/x-www-form-urlencoded\r\n");
    }
    if let Some(session) = session {
        head.push_str(&format!("cookie: other=1; rollway_session={session}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    tcp.write_all(body.as_bytes()).await.expect("write body");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw).await;
    parse(&raw)
}

fn header(answer: &Answer, name: &str) -> Option<String> {
    answer.head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case(name)
            .then(|| value.trim().to_owned())
    })
}

/// The body of a chunked answer, joined (the pages are streamed by hyper when large).
fn html(answer: &Answer) -> String {
    if !header(answer, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return answer.body.clone();
    }
    let mut out = String::new();
    let mut rest = answer.body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// `shop` in `production`: releases r1 (current) and r2, a canary of r2 at `Shifting` with
/// verdict events whose figures the chart must show.
/// One seeded verdict: the canary's figures, the baseline's, the bounds its event carries.
type Seeded = (Figures, Option<Figures>, Option<VerdictBounds>);

fn seed(engine: &Engine, deployer_token_id: &str) -> (Deployment, Vec<Seeded>) {
    let store = &engine.store;
    let mut releases = Vec::new();
    for (artifact, message) in [("ab", "first <b>release</b>"), ("cd", "second")] {
        releases.push(
            store
                .create_release(NewRelease {
                    app: "shop".to_owned(),
                    environment: "production".to_owned(),
                    artifact: artifact.repeat(32),
                    config_json: "{}".to_owned(),
                    secrets_version: None,
                    strategy: Strategy::Canary,
                    created_by: "deployer".to_owned(),
                    message: Some(message.to_owned()),
                })
                .expect("release"),
        );
    }
    store
        .set_current("shop", "production", releases[0].number)
        .expect("current");
    let deployment = store
        .create_deployment(NewDeployment {
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            kind: client::wire::DeploymentKind::Deploy,
            from_release: Some(releases[0].number),
            to_release: releases[1].number,
            strategy: Strategy::Canary,
            data_json: serde_json::to_string(&DeploymentData {
                started_by_token: Some(deployer_token_id.to_owned()),
                ..DeploymentData::default()
            })
            .expect("JSON"),
            created_by: "deployer".to_owned(),
        })
        .expect("deployment");
    use DeploymentState::{Pending, Preparing, Shifting, Starting, Verifying};
    for (from, to) in [
        (Pending, Preparing),
        (Preparing, Starting),
        (Starting, Verifying),
        (Verifying, Shifting),
    ] {
        let deployment = store
            .transition(&deployment.id, from, to, None, None)
            .expect("transition");
        engine.record_progress(
            crate::engine::Subject::deployment(&deployment),
            &DeploymentEvent::State { from, to },
        );
    }
    let figures = vec![
        (
            Figures {
                requests: 120,
                errors: 0,
                p99_us: 8_000,
                latency_count: 120,
            },
            Some(Figures {
                requests: 1_080,
                errors: 1,
                p99_us: 9_000,
                latency_count: 1_080,
            }),
            // The baseline's p99 plus the noise allowance, under no `max_p99`.
            Some(VerdictBounds {
                max_error_share: 0.05,
                max_p99_us: Some(29_000),
            }),
        ),
        (
            Figures {
                requests: 240,
                errors: 12,
                p99_us: 45_000,
                latency_count: 240,
            },
            None,
            // No baseline, no `max_p99`: no latency bound applied.
            Some(VerdictBounds {
                max_error_share: 0.05,
                max_p99_us: None,
            }),
        ),
    ];
    for (i, (sample, baseline, bounds)) in figures.iter().enumerate() {
        let verdict = if i == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail {
                reason: "5% of requests failed".to_owned(),
            }
        };
        engine.record(
            NewEvent::for_deployment(&deployment, "analysis.verdict", format!("verdict {i}"))
                .with_data(&DeploymentEvent::Verdict {
                    release: releases[1].number,
                    verdict,
                    sample: *sample,
                    baseline: *baseline,
                    bounds: *bounds,
                }),
        );
    }
    let deployment = store
        .deployment(&deployment.id)
        .expect("read")
        .expect("deployment");
    (deployment, figures)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_session_every_page_and_action_sends_to_login() {
    let dash = Dash::start().await;
    for path in ["/", "/events", "/apps/shop/production", "/events/stream"] {
        let answer = dash.get(path, None).await;
        assert_eq!(answer.status, 303, "{path}: {answer:?}");
        assert_eq!(header(&answer, "location").as_deref(), Some("/login"));
    }
    // A made-up session and a bearer token are not sessions.
    let answer = dash.get("/", Some(&"ab".repeat(32))).await;
    assert_eq!(header(&answer, "location").as_deref(), Some("/login"));
    let answer = dash
        .post(
            "/apps/shop/production/act",
            Some("nope"),
            &[("action", "rollback"), ("to", "1"), ("csrf", "x")],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(header(&answer, "location").as_deref(), Some("/login"));
    // The login page itself is served, as HTML, with the headers every page has.
    let answer = dash.get("/login", None).await;
    assert_eq!(answer.status, 200);
    let body = html(&answer);
    assert!(body.contains(r#"name="token""#), "{body}");
    assert!(body.contains(r#"action="/login""#));
    assert!(
        header(&answer, "content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'none'"))
    );
    assert_eq!(
        header(&answer, "cache-control").as_deref(),
        Some("no-store")
    );
    // The API is unchanged beside it: `/v1` still wants a bearer token, in the envelope.
    let answer = dash.get("/v1/agent", None).await;
    assert_eq!(answer.status, 401);
    answer.envelope("/v1 without a token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_token_does_not_sign_in() {
    let dash = Dash::start().await;
    let token = dash.token(Role::Proxy);
    let answer = dash.post("/login", None, &[("token", token)]).await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(header(&answer, "set-cookie").is_none(), "{answer:?}");
    assert!(html(&answer).contains("proxy's token"), "{answer:?}");
    assert!(!html(&answer).contains(token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_does_not_sign_in() {
    let dash = Dash::start().await;
    let revoked = {
        let (record, plain) =
            tokens::create(&dash.engine.store, "gone", Role::Admin).expect("token");
        dash.engine.store.revoke_token(&record.id).expect("revoke");
        plain.expose().to_owned()
    };
    for token in ["", "hunter2", "rwy_0000", revoked.as_str()] {
        let answer = dash.post("/login", None, &[("token", token)]).await;
        assert_eq!(answer.status, 401, "{token:?}: {answer:?}");
        assert!(header(&answer, "set-cookie").is_none(), "{answer:?}");
        assert!(html(&answer).contains("not valid here"), "{answer:?}");
        // The presented token is never echoed back.
        if !token.is_empty() {
            assert!(!html(&answer).contains(token));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_ten_failed_sign_ins_an_address_waits_and_is_told_how_long() {
    let dash = Dash::start().await;
    let session = dash.sign_in(Role::Viewer).await;
    for attempt in 0..10 {
        let answer = dash.post("/login", None, &[("token", "rwy_guess")]).await;
        assert_eq!(answer.status, 401, "attempt {attempt}: {answer:?}");
    }
    // The eleventh is refused before its token is looked at: a right one does not get through.
    for token in ["rwy_guess", dash.token(Role::Admin)] {
        let answer = dash.post("/login", None, &[("token", token)]).await;
        assert_eq!(answer.status, 429, "{answer:?}");
        assert!(header(&answer, "set-cookie").is_none(), "{answer:?}");
        let retry_after: u64 = header(&answer, "retry-after")
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("a Retry-After in seconds: {answer:?}"));
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        let body = html(&answer);
        assert!(
            body.contains(&format!("try again in {retry_after} s")),
            "{body}"
        );
        assert!(
            body.contains(r#"action="/login""#),
            "the form stays: {body}"
        );
    }
    // A session from before is not signed out, and the form is still served.
    assert_eq!(dash.get("/", Some(&session)).await.status, 200);
    assert_eq!(dash.get("/login", None).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_sets_a_strict_http_only_cookie_and_stores_only_its_hash() {
    let dash = Dash::start().await;
    let answer = dash
        .post("/login", None, &[("token", dash.token(Role::Viewer))])
        .await;
    let cookie = header(&answer, "set-cookie").expect("cookie");
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    // Served in plain HTTP (loopback, no TLS): the cookie cannot be Secure, or it would never return.
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(session_cookie("x", 1, true).ends_with("; Secure"));
    let session = dash.sign_in(Role::Viewer).await;
    assert_eq!(session.len(), 64);
    let now = crate::engine::now_ms();
    let store = &dash.engine.store;
    assert!(
        store
            .session_token(&session, now)
            .expect("lookup")
            .is_none()
    );
    let (token, expires_at) = store
        .session_token(&hash_for_tests(&session), now)
        .expect("lookup")
        .expect("the session, under its hash");
    assert_eq!(token.role, Role::Viewer);
    assert!(expires_at > now + super::SESSION_TTL_MS - 60_000);
    // Two sign-ins are two sessions.
    assert_ne!(session, dash.sign_in(Role::Viewer).await);
    // A signed-in browser asking for /login goes to the overview.
    let answer = dash.get("/login", Some(&session)).await;
    assert_eq!(header(&answer, "location").as_deref(), Some("/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_and_revoked_sessions_go_back_to_login() {
    let dash = Dash::start().await;
    let store = &dash.engine.store;
    // Expired: a session whose end has passed.
    let expired = "11".repeat(32);
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let now = crate::engine::now_ms();
    store
        .insert_session(&hash_for_tests(&expired), &deployer_id, now + 50)
        .expect("session");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let answer = dash.get("/", Some(&expired)).await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(header(&answer, "location").as_deref(), Some("/login"));
    // Revoked: the token behind a working session is revoked; the session ends with it.
    let session = dash.sign_in(Role::Deployer).await;
    assert_eq!(dash.get("/", Some(&session)).await.status, 200);
    assert!(store.revoke_token(&deployer_id).expect("revoke"));
    let answer = dash.get("/", Some(&session)).await;
    assert_eq!(header(&answer, "location").as_deref(), Some("/login"));
    assert!(
        store
            .session_token(&hash_for_tests(&session), 0)
            .expect("lookup")
            .is_none(),
        "revoking the token deletes its sessions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_without_this_sessions_csrf_token_is_refused_and_changes_nothing() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let (deployment, _) = seed(&dash.engine, &deployer_id);
    let session = dash.sign_in(Role::Admin).await;
    let other = dash.sign_in(Role::Admin).await;
    let before = dash.engine.store.last_event_id().expect("events");
    let abort = [("action", "abort"), ("deployment", deployment.id.as_str())];
    // No token, an empty one, another session's.
    let other_csrf = super::csrf_token(&other);
    for csrf in [None, Some(""), Some(other_csrf.as_str())] {
        let mut form = abort.to_vec();
        if let Some(csrf) = csrf {
            form.push(("csrf", csrf));
        }
        let answer = dash
            .post("/apps/shop/production/act", Some(&session), &form)
            .await;
        assert_eq!(answer.status, 403, "{csrf:?}: {answer:?}");
        assert!(html(&answer).contains("CSRF"), "{answer:?}");
    }
    // Sign-out is state-changing too.
    let answer = dash.post("/logout", Some(&session), &[]).await;
    assert_eq!(answer.status, 403);
    assert_eq!(dash.get("/", Some(&session)).await.status, 200);
    // Nothing was signalled or recorded.
    assert!(
        dash.engine
            .store
            .pending_signals(&deployment.id)
            .expect("signals")
            .is_empty()
    );
    assert_eq!(dash.engine.store.last_event_id().expect("events"), before);
    // With it, sign-out works and the session is gone.
    let csrf = super::csrf_token(&session);
    let answer = dash
        .post("/logout", Some(&session), &[("csrf", &csrf)])
        .await;
    assert_eq!(answer.status, 303);
    assert!(header(&answer, "set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    assert_eq!(
        header(&dash.get("/", Some(&session)).await, "location").as_deref(),
        Some("/login")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_are_the_apis_buttons_follow_them_and_a_forged_viewer_post_is_403() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let (deployment, _) = seed(&dash.engine, &deployer_id);
    let page = "/apps/shop/production";

    let viewer = dash.sign_in(Role::Viewer).await;
    let answer = dash.get(page, Some(&viewer)).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = html(&answer);
    assert!(body.contains("Deployment in flight"), "{body}");
    assert!(
        !body.contains("/confirm?"),
        "a viewer sees no action: {body}"
    );
    let backups = html(&dash.get(&format!("{page}/backups"), Some(&viewer)).await);
    assert!(!backups.contains("/confirm?"), "{backups}");

    let deployer = dash.sign_in(Role::Deployer).await;
    let body = html(&dash.get(page, Some(&deployer)).await);
    assert!(body.contains("confirm?action=rollback&amp;to=2"), "{body}");
    assert!(
        !body.contains("confirm?action=rollback&amp;to=1"),
        "r1 is current: {body}"
    );
    assert!(body.contains("confirm?action=promote"), "{body}");
    assert!(body.contains("confirm?action=abort"), "{body}");
    let backups = html(&dash.get(&format!("{page}/backups"), Some(&deployer)).await);
    assert!(backups.contains("confirm?action=backup"), "{backups}");

    // Every forged action of a viewer, with a valid CSRF token: refused as the API refuses it.
    let csrf = super::csrf_token(&viewer);
    let before = dash.engine.store.last_event_id().expect("events");
    for form in [
        vec![("action", "rollback"), ("to", "2")],
        vec![
            ("action", "promote"),
            ("deployment", deployment.id.as_str()),
        ],
        vec![("action", "abort"), ("deployment", deployment.id.as_str())],
        vec![
            ("action", "approve"),
            ("deployment", deployment.id.as_str()),
        ],
        vec![("action", "backup")],
        vec![("action", "restore"), ("backup", "b-1")],
    ] {
        let mut form = form;
        form.push(("csrf", &csrf));
        let answer = dash
            .post(&format!("{page}/act"), Some(&viewer), &form)
            .await;
        assert_eq!(answer.status, 403, "{form:?}: {answer:?}");
        assert!(html(&answer).contains("this needs role"), "{answer:?}");
        let query = serde_urlencoded::to_string(&form[..form.len() - 1]).expect("query");
        let answer = dash
            .get(&format!("{page}/confirm?{query}"), Some(&viewer))
            .await;
        assert_eq!(answer.status, 403, "confirm {form:?}: {answer:?}");
    }
    // A deployer may not restore (admin) nor approve (approver).
    let deployer_csrf = super::csrf_token(&deployer);
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&deployer),
            &[
                ("action", "restore"),
                ("backup", "b-1"),
                ("csrf", &deployer_csrf),
            ],
        )
        .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(
        dash.engine
            .store
            .pending_signals(&deployment.id)
            .expect("signals")
            .is_empty()
    );
    assert_eq!(dash.engine.store.last_event_id().expect("events"), before);
    assert_eq!(
        dash.engine
            .store
            .deployments("shop", "production", 10)
            .expect("deployments")
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_call_the_apis_handlers_and_answer_what_the_api_answers() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let (deployment, _) = seed(&dash.engine, &deployer_id);
    let page = "/apps/shop/production";
    let deployer = dash.sign_in(Role::Deployer).await;
    let csrf = super::csrf_token(&deployer);

    // The confirmation names what will happen, and posts the action with the CSRF token.
    let answer = dash
        .get(
            &format!("{page}/confirm?action=promote&deployment={}", deployment.id),
            Some(&deployer),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = html(&answer);
    assert!(
        body.contains("Promote the deployment of r2 to shop in production?"),
        "{body}"
    );
    assert!(
        body.contains(&format!(r#"name="csrf" value="{csrf}""#)),
        "{body}"
    );
    assert!(body.contains(&format!(r#"action="{page}/act""#)), "{body}");

    // Promote: the API's handler records the signal; the browser goes back to the page.
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&deployer),
            &[
                ("action", "promote"),
                ("deployment", &deployment.id),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    assert_eq!(header(&answer, "location").as_deref(), Some(page));
    let signals = dash
        .engine
        .store
        .pending_signals(&deployment.id)
        .expect("signals");
    assert_eq!(signals.len(), 1, "{signals:?}");
    assert_eq!(signals[0].signal.kind(), "promote");
    assert_eq!(signals[0].signal.by(), "deployer");

    // Rolling back to the current release: the API's refusal, status and words, as a page.
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&deployer),
            &[("action", "rollback"), ("to", "1"), ("csrf", &csrf)],
        )
        .await;
    let api = request_api(
        &dash,
        "/v1/apps/shop/environments/production/rollback",
        dash.token(Role::Deployer),
        r#"{"to":1}"#,
    )
    .await;
    assert_eq!(answer.status, api.status, "{answer:?} vs {api:?}");
    assert_eq!(answer.status, 409);
    let message = api.envelope("rollback to current").error.message;
    assert!(html(&answer).contains(&message), "{message}: {answer:?}");

    // The approver cannot approve the deployer's deployment in the wrong state, as on the API.
    let approver = dash.sign_in(Role::Approver).await;
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&approver),
            &[
                ("action", "approve"),
                ("deployment", &deployment.id),
                ("csrf", &super::csrf_token(&approver)),
            ],
        )
        .await;
    assert_eq!(answer.status, 409, "{answer:?}");
    assert!(
        html(&answer).contains("it can be approved only while"),
        "{answer:?}"
    );

    // A deployment of another environment is not this page's to act on; unknown actions are named.
    let answer = dash
        .post(
            "/apps/shop/staging/act",
            Some(&deployer),
            &[
                ("action", "abort"),
                ("deployment", &deployment.id),
                ("csrf", &csrf),
            ],
        )
        .await;
    assert_eq!(answer.status, 404, "{answer:?}");
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&deployer),
            &[("action", "explode"), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert!(
        html(&answer).contains("expected rollback, promote, abort, approve, backup or restore")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_is_confirmed_by_naming_the_database_and_the_backups_time() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    seed(&dash.engine, &deployer_id);
    let taken_at = 1_780_000_000_000;
    dash.engine
        .store
        .insert_backup(&crate::store::BackupRecord {
            id: "b-0123456789abcdef".to_owned(),
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            release: Some(ReleaseNumber::from(1)),
            deployment_id: None,
            kind: crate::store::BackupKind::Sqlite,
            reason: crate::store::BackupReason::Manual,
            target: "/srv/shop/db.sqlite".to_owned(),
            path: "/var/lib/rollway/backups/b-0123456789abcdef".to_owned(),
            size: 4096,
            sha256: "00".repeat(32),
            created_at: taken_at,
        })
        .expect("backup");
    let admin = dash.sign_in(Role::Admin).await;
    let page = "/apps/shop/production/backups";
    let list = html(&dash.get(page, Some(&admin)).await);
    assert!(list.contains("/srv/shop/db.sqlite"), "{list}");
    assert!(
        list.contains("confirm?action=restore&amp;backup=b-0123456789abcdef"),
        "{list}"
    );
    let answer = dash
        .get(
            "/apps/shop/production/confirm?action=restore&backup=b-0123456789abcdef",
            Some(&admin),
        )
        .await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let body = html(&answer);
    let when = super::pages::when(taken_at);
    assert_eq!(when, "2026-05-28 20:26:40 UTC");
    assert!(
        body.contains(&format!(
            "Restore database /srv/shop/db.sqlite from the backup taken {when}?"
        )),
        "{body}"
    );
    // A backup of another environment is not offered through this one.
    let answer = dash
        .get(
            "/apps/shop/staging/confirm?action=restore&backup=b-0123456789abcdef",
            Some(&admin),
        )
        .await;
    assert_eq!(answer.status, 404, "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_is_offered_to_approvers_but_not_to_the_token_that_started_the_deploy() {
    let dash = Dash::start().await;
    let store = &dash.engine.store;
    let release = store
        .create_release(NewRelease {
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            artifact: "ab".repeat(32),
            config_json: "{}".to_owned(),
            secrets_version: None,
            strategy: Strategy::BlueGreen,
            created_by: "approver".to_owned(),
            message: None,
        })
        .expect("release");
    let (approver_id, _) = dash.tokens[&Role::Approver].clone();
    let deployment = store
        .create_deployment(NewDeployment {
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            kind: client::wire::DeploymentKind::Deploy,
            from_release: None,
            to_release: release.number,
            strategy: Strategy::BlueGreen,
            data_json: serde_json::to_string(&DeploymentData {
                started_by_token: Some(approver_id),
                approval: true,
                ..DeploymentData::default()
            })
            .expect("JSON"),
            created_by: "approver".to_owned(),
        })
        .expect("deployment");
    use DeploymentState::{AwaitingApproval, Pending, Preparing};
    for (from, to) in [(Pending, Preparing), (Preparing, AwaitingApproval)] {
        store
            .transition(&deployment.id, from, to, None, None)
            .expect("transition");
    }
    let page = "/apps/shop/production";
    for (role, offered) in [
        (Role::Viewer, false),
        (Role::Deployer, false),
        (Role::Approver, false),
        (Role::Admin, true),
    ] {
        let session = dash.sign_in(role).await;
        let body = html(&dash.get(page, Some(&session)).await);
        assert!(body.contains("AwaitingApproval"), "{body}");
        assert_eq!(
            body.contains("confirm?action=approve"),
            offered,
            "{role}: {body}"
        );
    }
    // The admin's approval goes through the API's handler: a signal for the executor.
    let admin = dash.sign_in(Role::Admin).await;
    let answer = dash
        .post(
            &format!("{page}/act"),
            Some(&admin),
            &[
                ("action", "approve"),
                ("deployment", &deployment.id),
                ("csrf", &super::csrf_token(&admin)),
            ],
        )
        .await;
    assert_eq!(answer.status, 303, "{answer:?}");
    let signals = store.pending_signals(&deployment.id).expect("signals");
    assert_eq!(signals.len(), 1);
    assert_eq!(signals[0].signal.kind(), "approve");
}

async fn request_api(dash: &Dash, path: &str, token: &str, body: &str) -> Answer {
    crate::api::router::tests::call(dash.addr, "POST", path, Some(token), body.as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_chart_shows_each_verdict_with_the_events_figures() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let (_, figures) = seed(&dash.engine, &deployer_id);
    let session = dash.sign_in(Role::Viewer).await;
    let body = html(&dash.get("/apps/shop/production", Some(&session)).await);
    for metric in ["error_share", "p99"] {
        let chart = body
            .split(&format!(r#"data-metric="{metric}""#))
            .nth(1)
            .and_then(|rest| rest.split("</figure>").next())
            .unwrap_or_else(|| panic!("no {metric} chart: {body}"));
        let marks: Vec<&str> = chart.split("<circle").skip(1).collect();
        assert_eq!(marks.len(), figures.len(), "{chart}");
        for (mark, (sample, baseline, bounds)) in marks.iter().zip(&figures) {
            // Each mark carries the bounds its verdict's event carries, no other.
            let bounds = bounds.expect("seeded with bounds");
            assert!(
                mark.contains(&format!(
                    r#"data-bound-error-share="{}""#,
                    bounds.max_error_share
                )),
                "{mark}"
            );
            match bounds.max_p99_us {
                Some(us) => assert!(
                    mark.contains(&format!(r#"data-bound-p99-us="{us}""#)),
                    "{mark}"
                ),
                None => assert!(!mark.contains("data-bound-p99-us"), "{mark}"),
            }
            assert!(
                mark.contains(&format!(r#"data-requests="{}""#, sample.requests)),
                "{mark}"
            );
            assert!(
                mark.contains(&format!(r#"data-errors="{}""#, sample.errors)),
                "{mark}"
            );
            assert!(
                mark.contains(&format!(r#"data-p99-us="{}""#, sample.p99_us)),
                "{mark}"
            );
            match baseline {
                Some(b) => assert!(
                    mark.contains(&format!(r#"data-baseline-errors="{}""#, b.errors)),
                    "{mark}"
                ),
                None => assert!(!mark.contains("data-baseline"), "{mark}"),
            }
        }
        assert!(marks[0].contains(r#"data-verdict="pass""#));
        assert!(marks[1].contains(r#"data-verdict="fail""#));
        assert!(chart.contains("polyline class=\"canary\""), "{chart}");
        assert!(chart.contains("polyline class=\"baseline\""), "{chart}");
        // The bound line is drawn from those bounds: the error share's is the same at both
        // verdicts (a level line at 5%), the p99's applied at the first verdict only (29 ms).
        match metric {
            "error_share" => assert!(
                chart.contains(r#"<line class="bound""#) && chart.contains("bound 5.00%"),
                "{chart}"
            ),
            _ => assert!(
                chart.contains(r#"<line class="bound""#) && chart.contains("bound 29 ms"),
                "{chart}"
            ),
        }
    }
    // The steps are the typed events, in order.
    let steps = body.split(r#"id="steps""#).nth(1).expect("steps");
    let shifting = steps.find("Verifying").expect("a state step");
    let verdict = steps.find("verdict 1").expect("a verdict step");
    assert!(shifting < verdict);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_show_the_state_escaped_and_the_events_filter() {
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    seed(&dash.engine, &deployer_id);
    dash.trends.set_points(
        "shop",
        "production",
        (0..5)
            .map(|i| TrendPoint {
                at: i * 60_000,
                requests: 100,
                errors: i as u64,
                p99_us: 10_000,
            })
            .collect(),
    );
    let session = dash.sign_in(Role::Viewer).await;
    let overview = html(&dash.get("/", Some(&session)).await);
    assert!(
        overview.contains(r#"<tr data-app="shop" data-env="production">"#),
        "{overview}"
    );
    assert!(overview.contains(r#"href="/apps/shop/production""#));
    assert!(overview.contains("r1"), "current release");
    assert!(overview.contains("Shifting"), "last deployment's state");
    assert_eq!(
        overview.matches("<svg class=\"spark\"").count(),
        2,
        "{overview}"
    );
    assert!(overview.contains(r#"data-live="all:"#));
    assert!(overview.contains("viewer (viewer)"));

    let page = html(&dash.get("/apps/shop/production", Some(&session)).await);
    // A release message is text, never markup.
    assert!(page.contains("first &lt;b&gt;release&lt;/b&gt;"), "{page}");
    assert!(!page.contains("<b>release"));
    assert!(page.contains(r#"data-live="shop/production:"#));
    // r2 reuses nothing: both releases are code changes.
    assert_eq!(page.matches(">code<").count(), 2, "{page}");

    let events = html(&dash.get("/events?kind=analysis.", Some(&session)).await);
    assert_eq!(
        events.matches(r#"data-kind="analysis.verdict""#).count(),
        2,
        "{events}"
    );
    assert!(!events.contains(r#"data-kind="deployment.state""#));
    let none = html(&dash.get("/events?env=staging", Some(&session)).await);
    assert!(!none.contains("data-kind=\"analysis"), "{none}");
    let by_deployer = html(&dash.get("/events?who=deployer", Some(&session)).await);
    assert!(
        by_deployer.matches("data-kind=").count() >= 6,
        "{by_deployer}"
    );
    let unknown = html(&dash.get("/apps/nope/production", Some(&session)).await);
    assert!(unknown.contains("no app `nope`"), "{unknown}");

    // The embedded assets.
    let script = dash.get("/assets/app.js", None).await;
    assert_eq!(script.status, 200);
    assert!(html(&script).contains("EventSource"));
}

#[test]
fn trends_count_each_minute_from_the_counters_difference() {
    let trends = Trends::default();
    let reading = |requests, errors| Reading {
        requests,
        errors,
        buckets: vec![(1_000, requests / 2), (10_000, requests)],
    };
    let mut readings = BTreeMap::new();
    readings.insert("shop/production@1".to_owned(), reading(100, 1));
    readings.insert("shop/production@2".to_owned(), reading(10, 0));
    readings.insert("blog/production@1".to_owned(), reading(5, 0));
    trends.record(1, &readings);
    assert!(
        trends.points("shop", "production").is_empty(),
        "the first reading is where counting starts"
    );
    readings.insert("shop/production@1".to_owned(), reading(300, 5));
    trends.record(2, &readings);
    let points = trends.points("shop", "production");
    assert_eq!(
        points,
        vec![TrendPoint {
            at: 2,
            requests: 200,
            errors: 4,
            p99_us: 10_000
        }]
    );
    // The proxy restarted: counters went down, and count from zero.
    readings.insert("shop/production@1".to_owned(), reading(40, 0));
    readings.insert("shop/production@2".to_owned(), reading(0, 0));
    trends.record(3, &readings);
    assert_eq!(trends.points("shop", "production")[1].requests, 40);
    for at in 4..200 {
        trends.record(at, &readings);
    }
    assert_eq!(
        trends.points("shop", "production").len(),
        super::trends::POINTS
    );
    assert_eq!(
        trends.points("blog", "production").len(),
        super::trends::POINTS
    );
}

#[test]
fn every_dashboard_action_is_an_api_route() {
    use super::actions::Action;
    for action in [
        Action::Rollback {
            to: ReleaseNumber::from(1),
        },
        Action::Promote {
            deployment: String::new(),
        },
        Action::Abort {
            deployment: String::new(),
        },
        Action::Approve {
            deployment: String::new(),
        },
        Action::Backup,
        Action::Restore {
            backup: String::new(),
        },
    ] {
        assert!(
            crate::api::router::role_for(&axum::http::Method::POST, action.route()).is_some(),
            "{action:?}"
        );
    }
    assert_eq!(
        crate::api::router::role_for(&axum::http::Method::POST, super::pages::RESTORE_ROUTE),
        Some(Role::Admin)
    );
}

/// `bench/dashboard/run.sh`: the overview of 20 apps x 3 environments (each with 5 releases, a
/// finished deployment and an hour of sparkline points), rendered over a real socket; and the RSS
/// that 10 signed-in followers of the event stream add while 1000 events go by. Ignored in the
/// test run; the script runs it in a release build.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: bench/dashboard/run.sh"]
async fn bench_overview_20_apps_3_environments() {
    const ROUNDS: usize = 200;
    let dash = Dash::start().await;
    let (deployer_id, _) = dash.tokens[&Role::Deployer].clone();
    let store = &dash.engine.store;
    for a in 0..20 {
        for env in ["development", "staging", "production"] {
            let app = format!("app-{a:02}");
            let mut last = None;
            for r in 0..5 {
                let release = store
                    .create_release(NewRelease {
                        app: app.clone(),
                        environment: env.to_owned(),
                        artifact: format!("{r:02x}").repeat(32),
                        config_json: "{}".to_owned(),
                        secrets_version: None,
                        strategy: Strategy::BlueGreen,
                        created_by: "deployer".to_owned(),
                        message: Some(format!("change {r}")),
                    })
                    .expect("release");
                last = Some(release.number);
            }
            let to = last.expect("a release");
            store.set_current(&app, env, to).expect("current");
            let deployment = store
                .create_deployment(NewDeployment {
                    app: app.clone(),
                    environment: env.to_owned(),
                    kind: client::wire::DeploymentKind::Deploy,
                    from_release: None,
                    to_release: to,
                    strategy: Strategy::BlueGreen,
                    data_json: serde_json::to_string(&DeploymentData {
                        started_by_token: Some(deployer_id.clone()),
                        ..DeploymentData::default()
                    })
                    .expect("JSON"),
                    created_by: "deployer".to_owned(),
                })
                .expect("deployment");
            store
                .transition(
                    &deployment.id,
                    DeploymentState::Pending,
                    DeploymentState::Succeeded,
                    None,
                    None,
                )
                .ok();
            dash.trends.set_points(
                &app,
                env,
                (0..60)
                    .map(|i| TrendPoint {
                        at: i * 60_000,
                        requests: 1_000 + (i as u64 % 7) * 50,
                        errors: i as u64 % 5,
                        p99_us: 8_000 + (i as u64 % 11) * 900,
                    })
                    .collect(),
            );
        }
    }
    let session = dash.sign_in(Role::Viewer).await;
    let first = dash.get("/", Some(&session)).await;
    let page = html(&first);
    assert_eq!(page.matches("<tr data-app=").count(), 60, "{page}");
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = std::time::Instant::now();
        let answer = dash.get("/", Some(&session)).await;
        times.push(started.elapsed());
        assert_eq!(answer.status, 200);
    }
    times.sort();
    let css = html(&dash.get("/assets/app.css", None).await).len();
    let js = html(&dash.get("/assets/app.js", None).await).len();
    println!(
        "overview, 20 apps x 3 environments, {ROUNDS} requests over 127.0.0.1: median {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        times[ROUNDS / 2].as_secs_f64() * 1e3,
        times[ROUNDS * 9 / 10].as_secs_f64() * 1e3,
        times[ROUNDS - 1].as_secs_f64() * 1e3,
    );
    println!(
        "page weight: HTML {} B + CSS {css} B + script {js} B = {:.1} KiB (uncompressed)",
        page.len(),
        (page.len() + css + js) as f64 / 1024.0
    );

    // 10 dashboards following the event stream while 1000 events are recorded.
    let rss = || {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|line| line.starts_with("VmRSS:"))
                    .and_then(|line| line.split_whitespace().nth(1)?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let before = rss();
    let mut followers = Vec::new();
    for _ in 0..10 {
        let mut tcp = tokio::net::TcpStream::connect(dash.addr)
            .await
            .expect("connect");
        let after = store.last_event_id().expect("events");
        let head = format!(
            "GET /events/stream?after={after} HTTP/1.1\r\nhost: test\r\ncookie: rollway_session={session}\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.expect("write");
        followers.push(tokio::spawn(async move {
            let mut seen = 0usize;
            let mut buffer = vec![0u8; 64 * 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buffer)).await {
                    Ok(Ok(n)) if n > 0 => {
                        seen += buffer[..n]
                            .windows(12)
                            .filter(|w| w == b"event: event")
                            .count();
                    }
                    _ => return seen,
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    for i in 0..1_000 {
        dash.engine.record(NewEvent {
            app: Some("app-00".to_owned()),
            environment: Some("production".to_owned()),
            deployment_id: None,
            kind: "bench.event".to_owned(),
            message: format!("event {i}"),
            data_json: "{}".to_owned(),
        });
        if i % 100 == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let during = rss();
    let mut seen = Vec::new();
    for follower in followers {
        seen.push(follower.await.expect("follower"));
    }
    println!(
        "10 followers of /events/stream, 1000 events: each saw {seen:?}; RSS of the test process {:.1} MiB before, {:.1} MiB with them (+{:.1} MiB)",
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        during.saturating_sub(before) as f64 / 1024.0
    );
}

/// The p99 bound moves with the baseline: drawn through each verdict's own bound, and each mark
/// carries the bound its event carried.
#[test]
fn a_bound_that_moves_between_verdicts_is_drawn_through_each_verdicts_own() {
    use super::charts::{CanaryPoint, Metric, canary_chart};
    let figures = |p99_us| Figures {
        requests: 100,
        errors: 0,
        p99_us,
        latency_count: 100,
    };
    let points: Vec<CanaryPoint> = [(0, 30_000), (1_000, 50_000), (2_000, 80_000)]
        .into_iter()
        .map(|(at, bound_us)| CanaryPoint {
            at,
            verdict: Verdict::Pass,
            sample: figures(10_000),
            baseline: Some(figures(bound_us / 2)),
            bounds: Some(VerdictBounds {
                max_error_share: 0.01,
                max_p99_us: Some(bound_us),
            }),
        })
        .collect();
    let chart = canary_chart(&points, Metric::P99).into_string();
    let bound = chart
        .split(r#"<polyline class="bound" points=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no moving bound: {chart}"));
    assert_eq!(bound.split(' ').count(), 3, "{bound}");
    for us in [30_000, 50_000, 80_000] {
        assert!(
            chart.contains(&format!(r#"data-bound-p99-us="{us}""#)),
            "{chart}"
        );
    }
    assert!(
        chart.contains("bound 80 ms"),
        "the caption says the last: {chart}"
    );
    // The error share's bound is the same at every verdict: one level line.
    let chart = canary_chart(&points, Metric::ErrorShare).into_string();
    assert!(chart.contains(r#"<line class="bound""#), "{chart}");
    assert!(!chart.contains(r#"<polyline class="bound""#), "{chart}");
}
