//! Proxies that follow the agent (`rollway proxy --follow`, issue 17 item 4): a real follower
//! process against a real agent (process driver), on 127.0.0.1 only. The routing follows deploys
//! and rollbacks; a follower serves nothing before it has the agent's routing; its counters are in
//! the canary analysis; only a proxy token may follow, and that token is in no argv or log.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent, TestApp, files_containing};
use testkit::load::{Load, Report};

use crate::agent::Setup;

const ENV: &str = "production";
/// Bound of every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(60);
/// Bound of every load loop; tests stop theirs long before.
const LOAD_BOUND: Duration = Duration::from_secs(120);

/// A `rollway proxy --follow` process, killed when dropped.
struct Follower {
    child: tokio::process::Child,
    listen: SocketAddr,
    state: PathBuf,
    log: PathBuf,
}

impl Follower {
    /// Starts a follower of `agent` on a free loopback port with the token in `token_file`.
    fn start(agent: &TestAgent, dir: &Path, name: &str, token_file: &Path) -> Follower {
        let listen = free_port();
        Follower::start_on(agent, dir, name, token_file, listen)
    }

    fn start_on(
        agent: &TestAgent,
        dir: &Path,
        name: &str,
        token_file: &Path,
        listen: SocketAddr,
    ) -> Follower {
        Follower::start_with(agent, dir, name, token_file, listen, &[])
    }

    fn start_with(
        agent: &TestAgent,
        dir: &Path,
        name: &str,
        token_file: &Path,
        listen: SocketAddr,
        extra: &[String],
    ) -> Follower {
        let state = dir.join(format!("{name}-state"));
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("follower log");
        let child = tokio::process::Command::new(crate::agent::rollway_bin())
            .args(["proxy", "--follow", &agent.api_url(), "--state"])
            .arg(&state)
            .args([
                "--listen",
                &listen.to_string(),
                "--id",
                name,
                "--token-file",
            ])
            .arg(token_file)
            .args(extra)
            .env_remove("ROLLWAY_TOKEN")
            .stdout(std::process::Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("start rollway proxy --follow");
        Follower {
            child,
            listen,
            state,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.id().expect("the follower runs")
    }

    /// `n` requests, one at a time, through the follower.
    async fn sample(&self, n: u64) -> Report {
        Load::new(self.listen)
            .concurrency(1)
            .count(n)
            .start()
            .wait()
            .await
    }

    /// Polls until five requests in a row answer `version`.
    async fn wait_serves(&self, version: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let report = self.sample(5).await;
            if report.failed == 0
                && report
                    .records
                    .iter()
                    .all(|record| record.version.as_deref() == Some(version))
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the follower does not serve `{version}`: {report}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// A token of `role` in a 0600 file of `dir`, and its value.
async fn token_file(agent: &TestAgent, dir: &Path, role: &str) -> (PathBuf, String) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let ran = agent
        .cli(&["tokens", "create", "--role", role, "--name", role, "--json"])
        .await;
    ran.assert_code(0);
    let created: Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    let token = created["token"].as_str().expect("token value").to_owned();
    let path = dir.join(format!("{role}.token"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .expect("token file");
    writeln!(file, "{token}").expect("write the token");
    (path, token)
}

/// Whether something accepts connections on `addr` now.
async fn accepts(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

fn blue_green(setup: &Setup, version: &str) -> TestApp {
    setup.app("app", version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_the_agents_routing_through_deploys_and_rollbacks_and_only_once_it_has_it()
 {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let dir = setup.dir.path();
    agent
        .deploy(&blue_green(&setup, "v1"), ENV)
        .await
        .assert_code(0);
    let (proxy_token_file, proxy_token) = token_file(agent, dir, "proxy").await;
    let (viewer_token_file, viewer_token) = token_file(agent, dir, "viewer").await;

    // Unhappy first: with a viewer's token the agent refuses the stream, so the follower has no
    // routing and binds nothing: every connection for 3 s is refused, and no routes.json exists.
    // At least 10 attempts however long each takes: asserting 10 within the 3 s was a bound that
    // a stalled test process crosses (300 ms per attempt).
    let refused = Follower::start(agent, dir, "refused", &viewer_token_file);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut attempts = 0;
    while tokio::time::Instant::now() < deadline || attempts <= 10 {
        assert!(
            !accepts(refused.listen).await,
            "a follower without a routing accepted a connection:\n{}",
            refused.log()
        );
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!refused.state.join("routes.json").exists());
    let refused_log = refused.log();
    assert!(
        refused_log.contains("needs role `proxy`"),
        "the refusal should name the role it needs:\n{refused_log}"
    );
    assert!(
        !refused_log.contains(&viewer_token),
        "the token is in the log"
    );
    refused.stop().await;

    // A follower started after the deploy: the first connection it accepts is already routed to
    // v1 (never a 404 or 502 from an empty routing table).
    let follower = Follower::start(agent, dir, "node-1", &proxy_token_file);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !accepts(follower.listen).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower never served:\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = follower.sample(20).await;
    assert_eq!(first.failed, 0, "{first}\n{}", follower.log());
    assert!(
        first
            .records
            .iter()
            .all(|record| record.version.as_deref() == Some("v1")),
        "{first}"
    );

    // Load through the follower only, across a deploy and a warm rollback: no request fails.
    let load = Load::new(follower.listen)
        .concurrency(4)
        .rate(200)
        .duration(LOAD_BOUND)
        .start();
    agent
        .deploy(&blue_green(&setup, "v2"), ENV)
        .await
        .assert_code(0);
    follower.wait_serves("v2").await;
    // Long enough for the paced load (200/s) to meet v2 too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    agent.rollback(APP, ENV, None).await.assert_code(0);
    follower.wait_serves("v1").await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report}\n{}", follower.log());
    let versions: std::collections::BTreeSet<&str> = report
        .records
        .iter()
        .filter_map(|record| record.version.as_deref())
        .collect();
    assert_eq!(
        versions,
        ["v1", "v2"].into_iter().collect(),
        "the load saw both releases"
    );
    assert!(follower.state.join("routes.json").exists());

    // The agent lists the follower once it reported (every second).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let followers = loop {
        let info = agent.api("GET", "/v1/agent", "").await;
        let info: Value = serde_json::from_str(&info.body).expect("agent JSON");
        let followers = info["followers"].as_array().cloned().unwrap_or_default();
        if !followers.is_empty() {
            break followers;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent lists no follower: {info:#}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(followers.len(), 1, "{followers:#?}");
    assert_eq!(followers[0]["proxy"], "node-1", "{followers:#?}");
    assert!(
        followers[0]["seen_ms_ago"].as_u64() < Some(30_000),
        "{followers:#?}"
    );

    // The token is in no argv and no log.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", follower.pid())).expect("cmdline");
    assert!(
        !String::from_utf8_lossy(&cmdline).contains(&proxy_token),
        "the token is in argv"
    );
    assert!(
        !follower.log().contains(&proxy_token),
        "the token is in the follower's log"
    );
    assert!(
        !agent.log().contains(&proxy_token),
        "the token is in the agent's log"
    );

    // The agent gone: the follower keeps serving its last routing.
    let listen = follower.listen;
    let mut agent_process = setup;
    agent_process.agent.kill9().await;
    let still = follower.sample(20).await;
    assert_eq!(still.failed, 0, "{still}\n{}", follower.log());
    assert!(
        still
            .records
            .iter()
            .all(|record| record.version.as_deref() == Some("v1"))
    );
    // And a follower restarted while the agent is away serves the routing it saved.
    follower.stop().await;
    let restarted = Follower::start_on(
        &agent_process.agent,
        agent_process.dir.path(),
        "node-1",
        &proxy_token_file,
        listen,
    );
    restarted.wait_serves("v1").await;
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_failing_only_through_a_follower_is_rolled_back_on_the_followers_counters() {
    const STEPS: &str = r#"[{ weight = 20, pause = "60s" }, { weight = 100 }]"#;
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let dir = setup.dir.path();
    let canary = |version: &str| {
        setup
            .app("app", version)
            .canary(STEPS)
            .analysis(r#"interval = "200ms""#)
            .analysis("min_requests = 50")
    };
    agent.deploy(&canary("v1"), ENV).await.assert_code(0);
    let (token_file, _) = token_file(agent, dir, "proxy").await;
    let follower = Follower::start(agent, dir, "node-1", &token_file);
    follower.wait_serves("v1").await;

    // Every request goes through the follower: the agent's own proxy sees none of them.
    let load = Load::new(follower.listen)
        .concurrency(4)
        .rate(250)
        .duration(LOAD_BOUND)
        .start();
    let bad = canary("v2").env("ERROR_RATE", "0.05");
    let ran = agent.deploy(&bad, ENV).await;
    let report = load.stop().await;
    ran.assert_code(1);

    let status = agent.status(APP, ENV).await;
    assert_eq!(status.deployment_state(), Some("RolledBack"), "{status}");
    let reason = status.deployment_reason().unwrap_or_default();
    assert!(
        reason.contains("the canary analysis failed: 5xx share"),
        "{reason}"
    );
    assert_eq!(status.current_release(), Some(1), "{status}");
    assert!(report.failed > 0, "the canary failed nothing: {report}");
    follower.wait_serves("v1").await;

    // The agent's own proxy answered none of the canary's requests, so the verdict's sample is the
    // follower's counters.
    let events = agent.events().await;
    let fail = events
        .iter()
        .find(|event| {
            event["kind"] == "analysis.verdict" && event["data"]["verdict"]["verdict"] == "fail"
        })
        .unwrap_or_else(|| panic!("no failing verdict in {events:#?}"));
    let sample = &fail["data"]["sample"];
    assert!(
        sample["requests"].as_u64() >= Some(50) && sample["errors"].as_u64() > Some(0),
        "{fail:#}"
    );
    // `/v1/metrics` counts the follower's requests of the canary too.
    let metrics = agent.api("GET", "/v1/metrics", "").await;
    let canary_5xx = metrics
        .body
        .lines()
        .find(|line| {
            line.starts_with("rollway_requests_total")
                && line.contains("release=\"2\"")
                && line.contains("5xx")
        })
        .unwrap_or_else(|| panic!("no 5xx line of release 2 in:\n{}", metrics.body));
    assert!(!canary_5xx.ends_with(" 0"), "{canary_5xx}");
    follower.stop().await;
}

/// `curl -s -w CODE ARGS`: (status code, body and headers as curl printed them).
async fn curl(args: &[&str]) -> (String, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.trim_end().to_owned())
}

/// An HTTPS GET of `host` through `https`, trusting only `root`: (code, body).
async fn https_get(https: SocketAddr, host: &str, root: &Path) -> (String, String) {
    curl(&[
        "--cacert",
        &root.display().to_string(),
        "--resolve",
        &format!("{host}:{}:127.0.0.1", https.port()),
        &format!("https://{host}:{}/", https.port()),
    ])
    .await
}

/// A self-signed certificate for `host`: (certificate PEM, key PEM).
fn self_signed(host: &str) -> (String, String) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec![host.to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    (cert.pem(), key.serialize_pem())
}

/// The base64 body of a PEM block: what a canary looks for, whatever the line breaks around it.
fn pem_body(pem: &str) -> String {
    pem.lines()
        .filter(|line| !line.starts_with("-----"))
        .collect()
}

/// An open TLS connection (`openssl s_client`) that sends HTTP/1.1 requests one at a time.
struct OpenConnection {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    seen: String,
}

impl OpenConnection {
    fn open(https: SocketAddr, host: &str, root: &Path) -> OpenConnection {
        let mut child = tokio::process::Command::new("openssl")
            .args(["s_client", "-quiet", "-verify_return_error", "-connect"])
            .arg(https.to_string())
            .args(["-servername", host, "-CAfile"])
            .arg(root)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("openssl s_client");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        OpenConnection {
            child,
            stdin,
            stdout,
            seen: String::new(),
        }
    }

    /// Sends one GET on this connection and waits for the `n`th `200` answer on it.
    async fn get(&mut self, host: &str, n: usize) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.stdin
            .write_all(request.as_bytes())
            .await
            .expect("send on the open connection");
        self.stdin.flush().await.expect("flush");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let mut buffer = [0_u8; 4096];
        while self.seen.matches("HTTP/1.1 200").count() < n {
            let read = tokio::time::timeout_at(deadline, self.stdout.read(&mut buffer))
                .await
                .unwrap_or_else(|_| panic!("no answer {n} on the open connection: {}", self.seen))
                .expect("read the open connection");
            assert!(read > 0, "the open connection was closed: {}", self.seen);
            self.seen
                .push_str(&String::from_utf8_lossy(&buffer[..read]));
        }
    }

    async fn close(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_serves_https_with_the_agents_certificates_redirects_plain_http_and_swaps_without_dropping()
 {
    const HOST: &str = "given.test";
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let agent_https = free_port();
    let mut agent = TestAgent::start_with_args(
        crate::agent::rollway_bin(),
        &dir.join("state"),
        &["--https".to_owned(), agent_https.to_string()],
        &[],
    )
    .await;
    let (cert, key) = self_signed(HOST);
    let app = TestApp::new(dir.join("given"))
        .named("given")
        .hosts(&[HOST])
        .route_line(r#"tls = { cert = "WEB_CERT", key = "WEB_KEY" }"#)
        .route_line(r#"hsts = "1y""#);
    agent
        .set_secret("given", ENV, "WEB_CERT", &cert)
        .await
        .assert_code(0);
    agent
        .set_secret("given", ENV, "WEB_KEY", &key)
        .await
        .assert_code(0);
    agent.deploy(&app, ENV).await.assert_code(0);
    let root = dir.join("given.pem");
    std::fs::write(&root, &cert).expect("root file");
    let (proxy_token_file, _) = token_file(&agent, dir, "proxy").await;
    let (viewer_token_file, viewer_token) = token_file(&agent, dir, "viewer").await;

    // Unhappy first: a viewer's token reads no part of the stream (403), so no key either.
    let header = dir.join("viewer.header");
    std::fs::write(&header, format!("Authorization: Bearer {viewer_token}\n")).expect("header");
    let (code, body) = curl(&[
        "-H",
        &format!("@{}", header.display()),
        &format!("{}/v1/proxy/state", agent.api_url()),
    ])
    .await;
    assert_eq!(code, "403", "{body}");
    assert!(!body.contains(&pem_body(&key)), "{body}");
    let refused = Follower::start_with(
        &agent,
        dir,
        "refused",
        &viewer_token_file,
        free_port(),
        &["--https".to_owned(), free_port().to_string()],
    );

    // The follower, with its own HTTPS listener, serves the route with the agent's certificate.
    let https = free_port();
    let follower = Follower::start_with(
        &agent,
        dir,
        "node-1",
        &proxy_token_file,
        free_port(),
        &["--https".to_owned(), https.to_string()],
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = https_get(https, HOST, &root).await;
        if answer == ("200".to_owned(), "v1".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower does not serve {HOST} over HTTPS: {answer:?}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The route's hsts on its HTTPS answers.
    let (code, headers) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "--cacert",
        &root.display().to_string(),
        "--resolve",
        &format!("{HOST}:{}:127.0.0.1", https.port()),
        &format!("https://{HOST}:{}/", https.port()),
    ])
    .await;
    assert_eq!(code, "200", "{headers}");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age=31557600"),
        "{headers}"
    );
    // Over HTTP/2 too (ALPN), as the agent's proxy does.
    let (code, _) = curl(&[
        "--http2",
        "-o",
        "/dev/null",
        "-w",
        "%{http_version}",
        "--cacert",
        &root.display().to_string(),
        "--resolve",
        &format!("{HOST}:{}:127.0.0.1", https.port()),
        &format!("https://{HOST}:{}/", https.port()),
    ])
    .await;
    assert!(code.ends_with('2'), "not HTTP/2 through ALPN: {code}");
    // Plain HTTP to the route answers 308 to its HTTPS address, on the follower's port.
    let (code, headers) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        &format!("Host: {HOST}"),
        &format!("http://{}/orders?page=2", follower.listen),
    ])
    .await;
    assert_eq!(code, "308", "{headers}");
    assert!(
        headers.to_ascii_lowercase().contains(&format!(
            "location: https://{HOST}:{}/orders?page=2",
            https.port()
        )),
        "{headers}"
    );

    // A replaced certificate: new connections get it, an open one keeps working.
    let mut open = OpenConnection::open(https, HOST, &root);
    open.get(HOST, 1).await;
    let (new_cert, new_key) = self_signed(HOST);
    agent
        .set_secret("given", ENV, "WEB_CERT", &new_cert)
        .await
        .assert_code(0);
    agent
        .set_secret("given", ENV, "WEB_KEY", &new_key)
        .await
        .assert_code(0);
    agent.deploy(&app, ENV).await.assert_code(0);
    let new_root = dir.join("given-new.pem");
    std::fs::write(&new_root, &new_cert).expect("new root file");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = https_get(https, HOST, &new_root).await;
        if answer == ("200".to_owned(), "v1".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower does not serve the new certificate: {answer:?}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        https_get(https, HOST, &root).await.0,
        "000",
        "a new connection still gets the old certificate"
    );
    open.get(HOST, 2).await;
    open.close().await;

    // A follower restarted while the agent is away (killed, started again on its saved routing)
    // binds nothing until it has the agent's certificates: the first connection its HTTPS port
    // accepts gets them.
    let listen = follower.listen;
    follower.stop().await;
    agent.kill9().await;
    let follower = Follower::start_with(
        &agent,
        dir,
        "node-1",
        &proxy_token_file,
        listen,
        &["--https".to_owned(), https.to_string()],
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !accepts(https).await,
        "the follower serves HTTPS without certificates:\n{}",
        follower.log()
    );
    agent.restart_with_env(&[]).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !accepts(https).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the restarted follower does not listen on {https}:\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        https_get(https, HOST, &new_root).await,
        ("200".to_owned(), "v1".to_owned()),
        "the first HTTPS connection to the restarted follower:\n{}",
        follower.log()
    );

    // The follower with a viewer token never got a key.
    assert!(!refused.log().contains(&pem_body(&key)));
    refused.stop().await;

    // Canary: neither key in the follower's log, argv or state directory, nor in the agent's log.
    let argv = std::fs::read(format!("/proc/{}/cmdline", follower.pid())).expect("argv");
    let argv = String::from_utf8_lossy(&argv).into_owned();
    for secret in [&key, &new_key] {
        let body = pem_body(secret);
        assert!(
            !follower.log().contains(&body),
            "a key is in the follower's log"
        );
        assert!(!agent.log().contains(&body), "a key is in the agent's log");
        assert!(!argv.contains(&body), "a key is in the follower's argv");
        assert_eq!(
            files_containing(&follower.state, &body),
            Vec::<PathBuf>::new()
        );
        assert_eq!(
            files_containing(&follower.state, "PRIVATE KEY"),
            Vec::<PathBuf>::new()
        );
    }
    follower.stop().await;
}

/// With the HTTP-01 challenge and Pebble validating on the follower's plain port only (its
/// TLS-ALPN-01 port closed, the agent's proxy never asked), the certificate is issued: the agent
/// waits until the follower serves the challenge's answer, then the follower serves the
/// certificate on its HTTPS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http01_challenge_validated_against_a_follower_succeeds() {
    const HOST: &str = "follow.test";
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let acme_port = crate::tls::free_port();
    let ca_file = dir.join("pebble").join("acme-ca.pem");
    let agent = TestAgent::start_with_args(
        crate::agent::rollway_bin(),
        &dir.join("state"),
        &[
            "--https".to_owned(),
            free_port().to_string(),
            "--acme-directory".to_owned(),
            format!("https://127.0.0.1:{acme_port}/dir"),
            "--acme-ca".to_owned(),
            ca_file.display().to_string(),
        ],
        &[("ROLLWAY_ACME_CHALLENGE", "http-01")],
    )
    .await;
    // A first app without TLS gives the follower a routing to start on.
    agent
        .deploy(&TestApp::new(dir.join("plain")).named("plain"), ENV)
        .await
        .assert_code(0);
    let (token_file, _) = token_file(&agent, dir, "proxy").await;
    let https = free_port();
    let follower = Follower::start_with(
        &agent,
        dir,
        "node-1",
        &token_file,
        free_port(),
        &["--https".to_owned(), https.to_string()],
    );
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let info = agent.api("GET", "/v1/agent", "").await;
        let info: Value = serde_json::from_str(&info.body).expect("agent JSON");
        if info["followers"]
            .as_array()
            .is_some_and(|list| !list.is_empty())
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent lists no follower: {info:#}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pebble = crate::tls::Pebble::start(
        &dir.join("pebble"),
        acme_port,
        follower.listen.port(),
        crate::tls::free_port(),
    )
    .await;
    let root = pebble.root(&dir.join("pebble-root.pem")).await;
    let app = TestApp::new(dir.join("web"))
        .named("web")
        .version("v7")
        .hosts(&[HOST])
        .route_line(r#"tls = "auto""#);
    let ran = agent.deploy(&app, ENV).await;
    assert_eq!(ran.code, Some(0), "{ran}\n{}", follower.log());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = https_get(https, HOST, &root).await;
        if answer == ("200".to_owned(), "v7".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower does not serve {HOST} over HTTPS: {answer:?}\n{}",
            follower.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    follower.stop().await;
}
