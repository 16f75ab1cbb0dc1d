//! End-to-end tests of HTTPS (issue 15) against a real ACME server: Debian's `pebble`, with
//! `pebble-challtestsrv` as its DNS (every test host resolves to 127.0.0.1 unless a test says
//! otherwise), both on loopback ports, and Pebble's own HTTPS certificate made here (rcgen) and
//! trusted through `--acme-ca`. `scripts/test` installs them; without them these tests fail and say
//! so (nothing is mocked).
//!
//! HTTPS requests go through `curl --cacert <Pebble's root>` (fetched from Pebble's management
//! endpoint) with `--resolve`, as a user would check a site.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{TestAgent, TestApp, files_containing};
use tokio::process::{Child, Command};

use crate::agent::{assert_contains, rollway_bin};

const ENV: &str = "production";
/// Bound of the load loops; the test stops them long before.
const LOAD_BOUND: Duration = Duration::from_secs(120);

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// Pebble and its DNS, on loopback ports, killed on drop.
pub(crate) struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: SocketAddr,
    dns_management: SocketAddr,
    /// The CA that signed Pebble's own HTTPS certificate (for `--acme-ca`).
    ca_file: PathBuf,
}

impl Pebble {
    /// Starts challtestsrv (DNS: every name is 127.0.0.1, no AAAA) and Pebble validating on the
    /// proxy's ports (`http_port` for HTTP-01, `tls_port` for TLS-ALPN-01), without its random sleeps.
    pub(crate) async fn start(dir: &Path, acme_port: u16, http_port: u16, tls_port: u16) -> Pebble {
        for binary in ["pebble", "pebble-challtestsrv"] {
            assert!(
                std::process::Command::new("sh")
                    .args(["-c", &format!("command -v {binary}")])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success()),
                "`{binary}` is not installed: scripts/test installs Debian's `pebble` package (apt-get install pebble)"
            );
        }
        std::fs::create_dir_all(dir).expect("pebble dir");
        // Pebble's own HTTPS: a CA and a leaf for 127.0.0.1, made here.
        let ca_key = rcgen::KeyPair::generate().expect("ca key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "rollway test ACME CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let mut leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
        leaf_params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress([127, 0, 0, 1].into()));
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        let ca_file = dir.join("acme-ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("ca file");
        std::fs::write(dir.join("pebble.pem"), leaf.pem()).expect("leaf file");
        std::fs::write(dir.join("pebble.key"), leaf_key.serialize_pem()).expect("key file");

        let dns = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dns_management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{acme_port}"),
                "managementListenAddress": management.to_string(),
                "certificate": dir.join("pebble.pem"),
                "privateKey": dir.join("pebble.key"),
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false
            }
        });
        std::fs::write(dir.join("pebble.json"), config.to_string()).expect("config");
        let log = |name: &str| std::fs::File::create(dir.join(name)).expect("log file");
        let challtestsrv = Command::new("pebble-challtestsrv")
            .args(["-dns01", &dns.to_string(), "-http01", "", "-https01", ""])
            .args(["-tlsalpn01", "", "-defaultIPv6", ""])
            .args(["-management", &dns_management.to_string()])
            .stdout(log("challtestsrv.log"))
            .stderr(log("challtestsrv.err.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble-challtestsrv");
        let pebble = Command::new("pebble")
            .arg("-config")
            .arg(dir.join("pebble.json"))
            .args(["-dnsserver", &dns.to_string()])
            .env("PEBBLE_VA_NOSLEEP", "1")
            // Every order validates anew (no reuse of an earlier authorization).
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(log("pebble.log"))
            .stderr(log("pebble.err.log"))
            .kill_on_drop(true)
            .spawn()
            .expect("start pebble");
        let pebble = Pebble {
            children: vec![challtestsrv, pebble],
            directory: format!("https://127.0.0.1:{acme_port}/dir"),
            management,
            dns_management,
            ca_file,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let up = curl(&[
                "--cacert",
                &pebble.ca_file.display().to_string(),
                &pebble.directory,
            ])
            .await;
            if up.0 == "200" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Pebble did not answer on {}: {up:?}\n{}",
                pebble.directory,
                std::fs::read_to_string(dir.join("pebble.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        pebble
    }

    /// Pebble's root (from its management endpoint), written to `path` for `curl --cacert`.
    pub(crate) async fn root(&self, path: &Path) -> PathBuf {
        let output = Command::new("curl")
            .args(["-sk", "--fail"])
            .arg(format!("https://{}/roots/0", self.management))
            .output()
            .await
            .expect("curl");
        assert!(output.status.success(), "no root from Pebble: {output:?}");
        std::fs::write(path, &output.stdout).expect("root file");
        path.to_owned()
    }

    /// Makes challtestsrv resolve `host` to `address` (so Pebble validates somewhere else).
    async fn resolve(&self, host: &str, address: &str) {
        let body = serde_json::json!({"host": host, "addresses": [address]}).to_string();
        let output = Command::new("curl")
            .args(["-s", "--fail", "-X", "POST", "-d", &body])
            .arg(format!("http://{}/add-a", self.dns_management))
            .output()
            .await
            .expect("curl");
        assert!(output.status.success(), "challtestsrv refused: {output:?}");
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.start_kill();
        }
    }
}

/// `curl -s -o BODY -w CODE ARGS`: (status code, body).
async fn curl(args: &[&str]) -> (String, String) {
    let output = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.trim_end().to_owned())
}

/// An HTTPS GET of `host` through the proxy's TLS listener, trusting `root`: (code, body, headers).
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

/// The serial of the certificate a new TLS connection to `host` gets.
async fn served_serial(https: SocketAddr, host: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "echo | openssl s_client -connect {https} -servername {host} 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .await
        .expect("openssl");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

async fn certs(agent: &TestAgent) -> Vec<Value> {
    let ran = agent.cli(&["certs", "--json"]).await;
    ran.assert_code(0);
    serde_json::from_str(&ran.stdout).unwrap_or_else(|error| panic!("{error}:\n{ran}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_through_pebble_issue_renew_refuse_and_given_certificates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let acme_port = free_port();
    let directory = format!("https://127.0.0.1:{acme_port}/dir");
    let ca_file = dir.path().join("pebble").join("acme-ca.pem");
    // Renewal window far longer than any certificate's life: the agent renews at every check.
    let agent = TestAgent::start_with_args(
        rollway_bin(),
        &dir.path().join("state"),
        &[
            "--https".to_owned(),
            https.to_string(),
            "--acme-directory".to_owned(),
            directory.clone(),
            "--acme-email".to_owned(),
            "ops@example.com".to_owned(),
            "--acme-ca".to_owned(),
            ca_file.display().to_string(),
        ],
        &[
            ("ROLLWAY_CERT_RENEW_BEFORE", "36500days"),
            ("ROLLWAY_CERT_CHECK_INTERVAL", "3s"),
        ],
    )
    .await;
    let pebble = Pebble::start(
        &dir.path().join("pebble"),
        acme_port,
        agent.proxy_addr().port(),
        https.port(),
    )
    .await;
    assert_eq!(pebble.ca_file, ca_file);
    let root = pebble.root(&dir.path().join("pebble-root.pem")).await;

    // 1. Two new hosts with `tls = "auto"`: both certificates from Pebble before traffic moves.
    let app = TestApp::new(dir.path().join("web"))
        .version("v1")
        .hosts(&["a.test", "b.test"])
        .route_line(r#"tls = "auto""#)
        .route_line(r#"hsts = "1y""#);
    agent.deploy(&app, ENV).await.assert_code(0);
    let listed = certs(&agent).await;
    let hosts: Vec<&str> = listed
        .iter()
        .filter_map(|cert| cert["host"].as_str())
        .collect();
    assert_eq!(hosts, ["a.test", "b.test"], "{listed:#?}");
    for cert in &listed {
        assert_eq!(cert["source"], "acme", "{cert:#}");
        assert!(
            cert["issuer"]
                .as_str()
                .is_some_and(|issuer| issuer.contains("Pebble")),
            "{cert:#}"
        );
    }

    // 2. HTTPS through the proxy answers from the app for each host, with HSTS; plain HTTP is 308.
    for host in ["a.test", "b.test"] {
        let (code, body) = https_get(https, host, &root).await;
        assert_eq!((code.as_str(), body.as_str()), ("200", "v1"), "{host}");
        let headers = Command::new("curl")
            .args(["-s", "-D", "-", "-o", "/dev/null", "--cacert"])
            .arg(&root)
            .arg("--resolve")
            .arg(format!("{host}:{}:127.0.0.1", https.port()))
            .arg(format!("https://{host}:{}/", https.port()))
            .output()
            .await
            .expect("curl");
        let headers = String::from_utf8_lossy(&headers.stdout).to_ascii_lowercase();
        assert!(
            headers.contains("strict-transport-security: max-age=31557600"),
            "{headers}"
        );
        let proxy = agent.proxy_addr();
        let plain = curl(&[
            "-D",
            "-",
            "-o",
            "/dev/null",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{proxy}/orders?page=2"),
        ])
        .await;
        assert_eq!(plain.0, "308", "{host}: {plain:?}");
        assert!(
            plain.1.to_ascii_lowercase().contains(&format!(
                "location: https://{host}:{}/orders?page=2",
                https.port()
            )),
            "{plain:?}"
        );
        // ACME challenges are never redirected (an unknown token reaches the app).
        let challenge = curl(&[
            "-o",
            "/dev/null",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{proxy}/.well-known/acme-challenge/unknown"),
        ])
        .await;
        assert_ne!(challenge.0, "308", "{challenge:?}");
    }

    // 2b. The HTTPS listener and the certificates survive a hot upgrade of the proxy (the successor
    //     takes them from its predecessor) and a kill -9 of it (the agent holds the listeners and
    //     gives the new proxy the certificates again).
    agent.cli(&["proxy", "upgrade"]).await.assert_code(0);
    assert_eq!(
        https_get(https, "a.test", &root).await,
        ("200".to_owned(), "v1".to_owned()),
        "HTTPS right after `rollway proxy upgrade`"
    );
    let pid = std::fs::read_to_string(agent.state_dir().join("proxy/proxy.pid"))
        .expect("proxy.pid")
        .trim()
        .to_owned();
    let killed = Command::new("kill")
        .args(["-9", &pid])
        .status()
        .await
        .expect("kill");
    assert!(killed.success(), "kill -9 {pid}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let answer = https_get(https, "b.test", &root).await;
        if answer == ("200".to_owned(), "v1".to_owned()) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HTTPS did not come back after the proxy's kill -9: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // 3. Forced renewal under continuous load: no failed request; new connections get the new
    //    certificate. Load: a new connection (a new handshake) per request, and one keep-alive
    //    connection that lives across the renewals.
    let stop = tokio_util::sync::CancellationToken::new();
    let fresh = {
        let (stop, root) = (stop.clone(), root.clone());
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = tokio::time::Instant::now() + LOAD_BOUND;
            while !stop.is_cancelled() && tokio::time::Instant::now() < deadline {
                let answer = https_get(https, "a.test", &root).await;
                if answer == ("200".to_owned(), "v1".to_owned()) {
                    ok += 1;
                } else {
                    failed.push(answer);
                }
            }
            (ok, failed)
        })
    };
    let url = format!("https://a.test:{}/", https.port());
    // `-o` applies to one URL each.
    let urls: Vec<&str> = std::iter::repeat_n(["-o", "/dev/null", url.as_str()], 300)
        .flatten()
        .collect();
    let kept = Command::new("curl")
        .args([
            "-s",
            "--rate",
            "30/s",
            "-w",
            "%{http_code} %{num_connects}\n",
        ])
        .arg("--cacert")
        .arg(&root)
        .arg("--resolve")
        .arg(format!("a.test:{}:127.0.0.1", https.port()))
        .args(&urls)
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("curl keep-alive");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = served_serial(https, "a.test").await;
    let renewed = agent.cli(&["certs", "renew", "a.test"]).await;
    renewed.assert_code(0);
    assert_contains(&renewed, "Renewed");
    let after = served_serial(https, "a.test").await;
    assert!(before.starts_with("serial="), "{before}");
    assert_ne!(
        before, after,
        "a new connection gets the renewed certificate"
    );
    // And the renewal loop (window longer than the life) renews on its own meanwhile.
    let issued_before = count_events(&agent, "cert.issued").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count_events(&agent, "cert.issued").await < issued_before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewal loop renewed nothing"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let kept = kept.wait_with_output().await.expect("keep-alive curl");
    stop.cancel();
    let (ok, failed) = fresh.await.expect("load task");
    assert!(
        failed.is_empty(),
        "failed requests during renewal: {failed:?}"
    );
    assert!(ok >= 5, "only {ok} requests on new connections");
    let kept = String::from_utf8_lossy(&kept.stdout);
    let codes: Vec<&str> = kept.lines().collect();
    assert_eq!(codes.len(), 300, "{kept}");
    assert!(
        codes.iter().all(|line| line.starts_with("200 ")),
        "keep-alive requests failed: {kept}"
    );
    let connects: u32 = codes
        .iter()
        .filter_map(|line| line.split(' ').nth(1)?.parse::<u32>().ok())
        .sum();
    assert_eq!(connects, 1, "the keep-alive connection was dropped: {kept}");

    // 4. Pebble refuses a host (its DNS points elsewhere): the deploy fails naming the host and
    //    Pebble's reason; nothing moved.
    pebble.resolve("refused.test", "127.0.0.2").await;
    let refused = TestApp::new(dir.path().join("refused"))
        .named("refused")
        .hosts(&["refused.test"])
        .route_line(r#"tls = "auto""#);
    let ran = agent.deploy(&refused, ENV).await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert_contains(&ran, "refused.test");
    assert_contains(&ran, "127.0.0.2");
    assert_eq!(agent.status("refused", ENV).await.current_release(), None);
    assert_eq!(https_get(https, "a.test", &root).await.0, "200");
    assert!(
        !certs(&agent)
            .await
            .iter()
            .any(|cert| cert["host"] == "refused.test"),
        "no certificate for a refused host"
    );

    // 5. A given certificate (secrets, PEM): a wrong key is refused naming the secrets, before
    //    anything moves; the right one serves.
    let given_key = rcgen::KeyPair::generate().expect("key");
    let given = rcgen::CertificateParams::new(vec!["given.test".to_owned()])
        .expect("params")
        .self_signed(&given_key)
        .expect("cert");
    let other_key = rcgen::KeyPair::generate().expect("key");
    let given_app = TestApp::new(dir.path().join("given"))
        .named("given")
        .hosts(&["given.test"])
        .route_line(r#"tls = { cert = "WEB_CERT", key = "WEB_KEY" }"#);
    agent
        .set_secret("given", ENV, "WEB_CERT", &given.pem())
        .await
        .assert_code(0);
    agent
        .set_secret("given", ENV, "WEB_KEY", &other_key.serialize_pem())
        .await
        .assert_code(0);
    let ran = agent.deploy(&given_app, ENV).await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert_contains(&ran, "WEB_CERT");
    assert_contains(&ran, "WEB_KEY");
    assert_eq!(agent.status("given", ENV).await.current_release(), None);
    agent
        .set_secret("given", ENV, "WEB_KEY", &given_key.serialize_pem())
        .await
        .assert_code(0);
    agent.deploy(&given_app, ENV).await.assert_code(0);
    let given_ca = dir.path().join("given.pem");
    std::fs::write(&given_ca, given.pem()).expect("given cert file");
    assert_eq!(
        https_get(https, "given.test", &given_ca).await,
        ("200".to_owned(), "v1".to_owned())
    );

    // 6. Canary: no private key in PEM form in any file under the state directory, nor the given
    //    key's body anywhere (files, log, events, API answers); the account's key neither.
    let state = agent.state_dir().to_owned();
    let key_body: String = given_key
        .serialize_pem()
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    for needle in ["PRIVATE KEY-----", "key_pkcs8", key_body.as_str()] {
        assert_eq!(
            files_containing(&state, needle),
            Vec::<PathBuf>::new(),
            "`{needle}` found under the state directory"
        );
        assert_eq!(
            files_containing(&agent.apps_dir(), needle),
            Vec::<PathBuf>::new()
        );
    }
    let events = agent.cli(&["events", "--json", "--app", "given"]).await;
    let all_events = serde_json::to_string(&agent.events().await).expect("events");
    let certs_answer = agent.cli(&["certs", "--json"]).await;
    for text in [
        &events.stdout,
        &all_events,
        &certs_answer.stdout,
        &agent.log(),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains(&key_body), "{text}");
    }

    // 7. The route drops `tls`: its certificate is retired at the next check (an event), neither
    //    renewed nor served any more; the other app's certificates stay.
    let plain_app = TestApp::new(dir.path().join("given-plain"))
        .named("given")
        .hosts(&["given.test"]);
    agent.deploy(&plain_app, ENV).await.assert_code(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while certs(&agent)
        .await
        .iter()
        .any(|cert| cert["host"] == "given.test")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the certificate of a route without `tls` was not retired"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count_events(&agent, "cert.retired").await, 1);
    let hosts: Vec<String> = certs(&agent)
        .await
        .iter()
        .filter_map(|cert| cert["host"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(hosts, ["a.test", "b.test"]);
    let (code, _) = https_get(https, "given.test", &given_ca).await;
    assert_eq!(code, "000", "a retired certificate is not served");
    let plain = curl(&[
        "-H",
        "Host: given.test",
        &format!("http://{}/", agent.proxy_addr()),
    ])
    .await;
    assert_eq!(
        plain,
        ("200".to_owned(), "v1".to_owned()),
        "plain HTTP serves it, no 308"
    );
}

async fn count_events(agent: &TestAgent, kind: &str) -> usize {
    agent
        .events()
        .await
        .iter()
        .filter(|event| event["kind"] == kind)
        .count()
}

/// HTTP-01 (on the plain listener) instead of TLS-ALPN-01: one host, issued and served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http01_challenge_on_the_plain_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let https = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let acme_port = free_port();
    let ca_file = dir.path().join("pebble").join("acme-ca.pem");
    let agent = TestAgent::start_with_args(
        rollway_bin(),
        &dir.path().join("state"),
        &[
            "--https".to_owned(),
            https.to_string(),
            "--acme-directory".to_owned(),
            format!("https://127.0.0.1:{acme_port}/dir"),
            "--acme-ca".to_owned(),
            ca_file.display().to_string(),
        ],
        &[("ROLLWAY_ACME_CHALLENGE", "http-01")],
    )
    .await;
    // Pebble's TLS-ALPN-01 port is a closed one: only HTTP-01 can succeed.
    let pebble = Pebble::start(
        &dir.path().join("pebble"),
        acme_port,
        agent.proxy_addr().port(),
        free_port(),
    )
    .await;
    let root = pebble.root(&dir.path().join("pebble-root.pem")).await;
    let app = TestApp::new(dir.path().join("web"))
        .version("v7")
        .hosts(&["plain.test"])
        .route_line(r#"tls = "auto""#);
    agent.deploy(&app, ENV).await.assert_code(0);
    assert_eq!(
        https_get(https, "plain.test", &root).await,
        ("200".to_owned(), "v7".to_owned())
    );
}
