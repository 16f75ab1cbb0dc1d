//! The API as a client sees it, over a real socket: every route of [`routes`] answers errors in
//! the envelope, with the role it needs; names, values and sizes are refused before a handler
//! acts; approval follows its rules.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::wire::ErrorBody;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::api::Limits;
use crate::deploy::executor::DeploymentData;
use crate::engine::Paths;
use crate::store::{NewDeployment, NewRelease, Store};
use crate::tokens;

/// An API on a temporary state directory, with one token per role.
struct TestApi {
    addr: SocketAddr,
    engine: Arc<Engine>,
    tokens: BTreeMap<Role, (String, String)>,
    _dir: tempfile::TempDir,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl TestApi {
    async fn start() -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let state = dir.path().to_path_buf();
        let engine = test_engine(&state);
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
        let limits = Limits {
            header_timeout: Duration::from_secs(5),
            ..Limits::from_fd_limit()
        };
        let shutdown = engine.shutdown.clone();
        tokio::spawn(crate::api::serve_router(
            listener,
            router(engine.clone()),
            limits,
            shutdown.clone(),
        ));
        TestApi {
            addr,
            engine,
            tokens,
            _dir: dir,
            shutdown,
        }
    }

    fn token(&self, role: Role) -> &str {
        &self.tokens[&role].1
    }

    fn another_token(&self, role: Role) -> String {
        let (_, plain) = tokens::create(&self.engine.store, "another", role).expect("token");
        plain.expose().to_owned()
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: &[u8]) -> Answer {
        call(self.addr, method, path, token, body).await
    }
}

/// An engine on `state` with an in-memory store, no proxy and no app: what API tests (and the
/// dashboard's) serve.
pub(crate) fn test_engine(state: &std::path::Path) -> Arc<Engine> {
    let state = state.to_path_buf();
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let (events, _) = tokio::sync::broadcast::channel(16);
    let process =
        driver::process::ProcessDriver::new(state.join("instances")).expect("process driver");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let master_key = crate::secrets::MasterKey::generate();
    let registry = crate::registry::Registry::for_test(&state, &store, &master_key);
    Arc::new(Engine {
        store,
        drivers: crate::drivers::Drivers::new(Arc::new(process)),
        proxy: crate::proxy_link::ProxyLink::new(
            state.join("proxy"),
            SocketAddr::from(([127, 0, 0, 1], 9)),
        ),
        proxy_addr: SocketAddr::from(([127, 0, 0, 1], 9)),
        artifacts: crate::artifact::ArtifactStore::new(state.join("artifacts")),
        master_key,
        registry,
        placement: driver::cgroup::Placement::Off {
            reason: "a test".to_owned(),
        },
        isolation: driver::Isolation::None {
            user: "test".to_owned(),
            reason: "tests start no app".to_owned(),
        },
        paths: Paths::new(state.clone()),
        events,
        runtimes: Mutex::new(BTreeMap::new()),
        proxy_push: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        signalled: tokio::sync::Notify::new(),
        counters: Mutex::new(crate::metrics::Counters::default()),
        certs: crate::certs::Certs::new(crate::certs::CertsConfig::new(
            "production",
            None,
            None,
            false,
        )),
        api_fingerprint: None,
        api_certificate: None,
        edge: Mutex::new(BTreeMap::new()),
        cron: crate::cron::CronRuns::default(),
    })
}

#[derive(Debug)]
pub(crate) struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    /// The envelope of an error answer, checked: status 4xx or 5xx, JSON, a code and a message.
    #[track_caller]
    pub fn envelope(&self, context: &str) -> ErrorBody {
        assert!(self.status >= 400, "{context}: {self:?}");
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/json"),
            "{context}: {self:?}"
        );
        let body: ErrorBody = serde_json::from_str(&self.body)
            .unwrap_or_else(|error| panic!("{context}: {error}: {self:?}"));
        assert!(!body.error.code.is_empty(), "{context}: {self:?}");
        assert!(!body.error.message.is_empty(), "{context}: {self:?}");
        body
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub(crate) async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> Answer {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(bearer) = &bearer {
        headers.push(("authorization", bearer.as_str()));
    }
    call_with(addr, method, path, &headers, body).await
}

/// One HTTP/1.1 request on a fresh connection, with `headers`.
pub(crate) async fn call_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    tcp.write_all(head.as_bytes()).await.expect("write head");
    // The server may answer (413) before reading the whole body and close.
    let _ = tcp.write_all(body).await;
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw).await;
    parse(&raw)
}

pub(crate) fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// `path` under `/v1` with every `{param}` replaced by `value(param)`.
fn concrete(path: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::from("/v1");
    for segment in path.split('/').filter(|segment| !segment.is_empty()) {
        out.push('/');
        match segment
            .strip_prefix('{')
            .and_then(|rest| rest.strip_suffix('}'))
        {
            Some(param) => out.push_str(&value(param)),
            None => out.push_str(segment),
        }
    }
    out
}

fn valid(param: &str) -> String {
    match param {
        "app" => "shop".to_owned(),
        "env" => "production".to_owned(),
        "name" => "SOME_SECRET".to_owned(),
        "digest" => "0".repeat(64),
        _ => "nothing-here".to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_errors_in_the_envelope() {
    let api = TestApi::start().await;
    let routes = routes();
    assert!(routes.len() >= 30, "{} routes", routes.len());
    for route in &routes {
        let method = route.method.as_str();
        let path = concrete(route.path, valid);
        let context = format!("{method} {}", route.path);
        let is_head = route.method == Method::HEAD;
        let check = |answer: &Answer, what: &str| {
            if is_head {
                assert!(answer.status >= 400, "{context} {what}: {answer:?}");
                assert!(
                    answer
                        .head
                        .to_ascii_lowercase()
                        .contains("content-type: application/json"),
                    "{context} {what}: {answer:?}"
                );
                None
            } else {
                Some(answer.envelope(&format!("{context} {what}")))
            }
        };

        // No token, a wrong token: 401.
        for token in [None, Some("rwy_not-a-token")] {
            let answer = api.call(method, &path, token, b"").await;
            assert_eq!(answer.status, 401, "{context}: {answer:?}");
            check(&answer, "without a token");
        }
        // Every role that does not allow the route's (a lower one on the ladder, a proxy token
        // on a people's route, any people's token on a proxy route): 403, the message names both.
        for refused in Role::ALL
            .into_iter()
            .filter(|role| !role.allows(route.role))
        {
            let answer = api.call(method, &path, Some(api.token(refused)), b"").await;
            assert_eq!(answer.status, 403, "{context} as {refused}: {answer:?}");
            if let Some(body) = check(&answer, "below its role") {
                assert!(
                    body.error.message.contains(route.role.as_str()),
                    "{context}: {body:?}"
                );
            }
        }
        // Bad path parameters: refused before the handler, whatever the role.
        if route.path.contains('{') {
            let admin = api.token(Role::Admin);
            for (what, bad) in [
                ("too long", concrete(route.path, |_| "x".repeat(101))),
                (
                    "path traversal",
                    concrete(route.path, |param| match param {
                        "app" | "env" | "name" => "..%2F..%2Fetc".to_owned(),
                        other => valid(other),
                    }),
                ),
            ] {
                if bad == path {
                    continue;
                }
                let answer = api.call(method, &bad, Some(admin), b"").await;
                assert_eq!(answer.status, 422, "{context} {what}: {answer:?}");
                check(&answer, what);
            }
        }
        // A malformed body (or none where one is needed): an error in the envelope, never a 2xx.
        if matches!(route.method, Method::POST | Method::PUT) {
            for body in [&b"{not json"[..], b"", b"[]", b"{\"unexpected\": true}"] {
                let answer = api
                    .call(method, &path, Some(api.token(Role::Admin)), body)
                    .await;
                check(
                    &answer,
                    &format!("body {:?}", String::from_utf8_lossy(body)),
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_methods_answer_in_the_envelope() {
    let api = TestApi::start().await;
    let admin = api.token(Role::Admin);
    for path in ["/v1/nothing", "/nothing", "/v1/apps/shop"] {
        let answer = api.call("GET", path, None, b"").await;
        assert_eq!(answer.status, 401, "{path} without a token: {answer:?}");
        answer.envelope(path);
        let answer = api.call("GET", path, Some(admin), b"").await;
        assert_eq!(answer.status, 404, "{path}: {answer:?}");
        assert_eq!(answer.envelope(path).error.code, "not_found");
    }
    let answer = api.call("POST", "/v1/agent", Some(admin), b"{}").await;
    assert_eq!(answer.status, 405, "{answer:?}");
    let body = answer.envelope("POST /v1/agent");
    assert_eq!(body.error.code, "method_not_allowed");
    // A malformed query is an extractor rejection like a malformed body.
    let answer = api
        .call("GET", "/v1/events?after=yesterday", Some(admin), b"")
        .await;
    assert_eq!(answer.status, 400, "{answer:?}");
    assert_eq!(answer.envelope("bad query").error.code, "bad_request");
    let answer = api.call("GET", "/healthz", None, b"").await;
    assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_values_and_names_have_limits() {
    let api = TestApi::start().await;
    let admin = api.token(Role::Admin);
    let secret = |name: &str| format!("/v1/apps/shop/environments/production/secrets/{name}");
    let value = |value: &str| serde_json::json!({ "value": value }).to_string();

    let huge = format!(r#"{{"name": "{}", "role": "viewer"}}"#, "x".repeat(2 << 20));
    let answer = api
        .call("POST", "/v1/tokens", Some(admin), huge.as_bytes())
        .await;
    assert_eq!(answer.status, 413, "{answer:?}");
    assert_eq!(answer.envelope("2 MiB body").error.code, "too_large");

    let table: &[(&str, String, u16, &str)] = &[
        ("DATABASE_URL", value("postgres://db/shop"), 200, ""),
        ("SHORT", value("abc"), 422, "at least 4"),
        ("EMPTY", value(""), 422, "at least 4"),
        ("NUL", value("abc\0def"), 422, "NUL"),
        ("LARGE", value(&"x".repeat(64 * 1024 + 1)), 413, "64 KiB"),
        ("PATH", value("/usr/bin"), 422, "where commands are found"),
        ("PORT", value("8080"), 422, "Rollway sets it"),
        ("LD_PRELOAD", value("/tmp/evil.so"), 422, "`LD_*`"),
        ("ROLLWAY_TOKEN", value("whatever"), 422, "Rollway's own"),
        ("lower", value("whatever"), 422, "not a valid secret name"),
    ];
    for (name, body, status, says) in table {
        let answer = api
            .call("PUT", &secret(name), Some(admin), body.as_bytes())
            .await;
        assert_eq!(answer.status, *status, "{name}: {answer:?}");
        if *status >= 400 {
            let error = answer.envelope(name).error;
            assert!(error.message.contains(says), "{name}: {error:?}");
        }
    }
    let long = "A".repeat(5_000);
    let answer = api
        .call(
            "PUT",
            &secret(&long),
            Some(admin),
            value("long-name").as_bytes(),
        )
        .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(answer.body.len() < 1_000, "the refusal echoes the name");

    for (name, status) in [("x".repeat(101), 422), ("ci".to_owned(), 201)] {
        let body = serde_json::json!({ "name": name, "role": "approver" }).to_string();
        let answer = api
            .call("POST", "/v1/tokens", Some(admin), body.as_bytes())
            .await;
        assert_eq!(answer.status, status, "{answer:?}");
    }

    // Artifacts keep their own limit: 2 MiB is not too large there (it is refused for not
    // matching its digest).
    let answer = api
        .call(
            "PUT",
            &format!("/v1/artifacts/{}", "0".repeat(64)),
            Some(admin),
            &vec![7u8; 2 << 20],
        )
        .await;
    assert_ne!(answer.status, 413, "{answer:?}");
    answer.envelope("artifact");

    // A manifest just under 1 MiB is read (and found invalid); one over it is refused unread.
    for (size, status, code) in [
        ((1 << 20) - 1024, 422, "invalid_manifest"),
        ((1 << 20) + 1, 413, "too_large"),
    ] {
        let body = serde_json::json!({ "artifact": "0".repeat(64), "manifest": "#".repeat(size) });
        let answer = api
            .call(
                "POST",
                "/v1/apps/shop/environments/production/deployments",
                Some(admin),
                body.to_string().as_bytes(),
            )
            .await;
        assert_eq!(answer.status, status, "{size}: {answer:?}");
        assert_eq!(answer.envelope("manifest").error.code, code);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_another_approver_or_admin_approves() {
    let api = TestApi::start().await;
    let store = &api.engine.store;
    let release = store
        .create_release(NewRelease {
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            artifact: "ab".repeat(32),
            config_json: "{}".to_owned(),
            secrets_version: None,
            strategy: client::wire::Strategy::BlueGreen,
            created_by: "approver".to_owned(),
            message: None,
        })
        .expect("release");
    // Started by the approver's own token.
    let (starter_id, starter) = api.tokens[&Role::Approver].clone();
    let deployment = store
        .create_deployment(NewDeployment {
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            kind: client::wire::DeploymentKind::Deploy,
            from_release: None,
            to_release: release.number,
            strategy: client::wire::Strategy::BlueGreen,
            data_json: serde_json::to_string(&DeploymentData {
                started_by_token: Some(starter_id),
                approval: true,
                ..DeploymentData::default()
            })
            .expect("JSON"),
            created_by: "approver".to_owned(),
        })
        .expect("deployment");
    use client::wire::DeploymentState::{AwaitingApproval, Pending, Preparing};
    for (from, to) in [(Pending, Preparing), (Preparing, AwaitingApproval)] {
        store
            .transition(&deployment.id, from, to, None, None)
            .expect("transition");
    }
    let approve = format!("/v1/deployments/{}/approve", deployment.id);

    let answer = api.call("POST", &approve, Some(&starter), b"").await;
    assert_eq!(answer.status, 403, "{answer:?}");
    let error = answer.envelope("own token").error;
    assert_eq!(error.code, "own_deployment");
    assert!(
        error.message.contains("the token that started deployment"),
        "{error:?}"
    );
    let answer = api
        .call("POST", &approve, Some(api.token(Role::Deployer)), b"")
        .await;
    assert_eq!(answer.status, 403, "{answer:?}");
    assert!(
        answer
            .envelope("deployer")
            .error
            .message
            .contains("approver"),
        "{answer:?}"
    );
    assert!(api.engine.take_signals(&deployment.id).is_empty());

    let other = api.another_token(Role::Approver);
    let answer = api.call("POST", &approve, Some(&other), b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let admin = api
        .call("POST", &approve, Some(api.token(Role::Admin)), b"")
        .await;
    assert_eq!(admin.status, 200, "{admin:?}");
    assert_eq!(
        api.engine.take_signals(&deployment.id),
        [
            crate::engine::Signal::Approve {
                by: "another".to_owned()
            },
            crate::engine::Signal::Approve {
                by: "admin".to_owned()
            },
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_is_not_the_json_asked_for_is_refused_in_the_envelope() {
    let api = TestApi::start().await;
    let admin = api.token(Role::Admin);
    let too_big = format!(r#"{{"name": "{}", "role": "viewer"}}"#, "x".repeat(2 << 20));
    let table: &[(&str, &[u8], u16, &str, &str)] = &[
        (
            "malformed",
            b"{\"name\": \"ci\", ",
            400,
            "bad_request",
            "EOF",
        ),
        (
            "not an object",
            b"[]",
            422,
            "invalid_body",
            "expected struct",
        ),
        (
            "wrong type",
            b"{\"name\": 7, \"role\": \"viewer\"}",
            422,
            "invalid_body",
            "invalid type: integer `7`",
        ),
        (
            "missing field",
            b"{\"name\": \"ci\"}",
            422,
            "invalid_body",
            "missing field `role`",
        ),
        (
            "too big",
            too_big.as_bytes(),
            413,
            "too_large",
            "length limit",
        ),
    ];
    for (what, body, status, code, says) in table {
        let answer = api.call("POST", "/v1/tokens", Some(admin), body).await;
        assert_eq!(answer.status, *status, "{what}: {answer:?}");
        let error = answer.envelope(what).error;
        assert_eq!(error.code, *code, "{what}: {error:?}");
        assert!(error.message.contains(says), "{what}: {error:?}");
    }
    // Nothing was created by any of them.
    let tokens = api.engine.store.tokens().expect("tokens");
    assert_eq!(tokens.len(), Role::ALL.len(), "{tokens:?}");
}
