//! The control API over TLS and the CLI's pin (issue 15, item 3): a pinned CLI deploys, a wrong or
//! changed certificate is refused during the handshake (the agent's request log shows nothing
//! arrived), a CLI without a terminal and without a fingerprint says how to give one, plain
//! `http://` beyond loopback is refused by the CLI, and an agent listening beyond loopback (in a
//! network namespace of the test's own, on the address of a veth interface) answers no plain HTTP.
//!
//! Loopback agents here are started with `--api-tls`; the terminal test runs the CLI under `script` (a
//! pty, util-linux); the namespace test needs root, `unshare` and
//! `ip` (it fails when `ROLLWAY_E2E` is set without them, and skips with one printed line otherwise).

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use testkit::agent::{Ran, TestAgent, TestApp, random_hex};
use tokio::process::Command;

use crate::agent::assert_contains;

const ENV: &str = "production";

fn rollway_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rollway"))
}

async fn run(mut command: Command) -> Ran {
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the command ends within 120 s")
        .expect("the command runs");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The lines of the agent's log with `message` (its JSON log lines).
fn log_lines(agent: &TestAgent, message: &str) -> Vec<String> {
    let needle = format!("\"message\":\"{message}\"");
    agent
        .log()
        .lines()
        .filter(|line| line.contains(&needle))
        .map(str::to_owned)
        .collect()
}

/// How long a wait for the agent's log lines lasts before failing: a deadline, not a count of
/// polls (100 polls of 50 ms are 5 s, a bound a loaded machine crosses).
const LOG_PATIENCE: Duration = Duration::from_secs(30);

/// Waits (bounded) until the agent logged `message` more than `before` times.
async fn wait_for_log(agent: &TestAgent, message: &str, before: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + LOG_PATIENCE;
    loop {
        let lines = log_lines(agent, message);
        if lines.len() > before {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the agent never logged `{message}`:\n{}",
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A different valid fingerprint than `fingerprint`.
fn other_fingerprint(fingerprint: &str) -> String {
    let other = if fingerprint.ends_with('0') { "1" } else { "0" };
    format!("{}{other}", &fingerprint[..fingerprint.len() - 1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cli_with_the_agents_fingerprint_deploys_and_pins_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    assert!(
        agent.api_url().starts_with("https://"),
        "{}",
        agent.api_url()
    );
    let fingerprint = agent.fingerprint().to_owned();
    assert!(
        agent
            .log()
            .contains(&format!("api certificate: {fingerprint}")),
        "`rollway agent` prints the fingerprint it pins by:\n{}",
        agent.log()
    );

    let app = TestApp::new(dir.path().join("app")).version("v1");
    let ran = agent.deploy(&app, ENV).await;
    ran.assert_code(0);
    assert_contains(&ran, "is live");
    assert!(!log_lines(&agent, "API request.").is_empty());

    // The pin given through ROLLWAY_AGENT_FINGERPRINT is remembered like ssh's known_hosts.
    let known = std::fs::read_to_string(agent.cli_config_dir().join("rollway/known_agents"))
        .expect("known_agents written");
    let authority = agent.api_addr().to_string();
    assert!(
        known.contains(&format!("{authority} {fingerprint}")),
        "{known}"
    );
    let mut without_flag = agent.command(Some(agent.admin_token()), &["tokens", "list"]);
    without_flag.env_remove("ROLLWAY_AGENT_FINGERPRINT");
    run(without_flag).await.assert_code(0);

    // GET /v1/agent tells the same fingerprint.
    let output = std::process::Command::new("curl")
        .args(["-sk", "--max-time", "10", "-H"])
        .arg(format!("Authorization: Bearer {}", agent.admin_token()))
        .arg(format!("{}/v1/agent", agent.api_url()))
        .output()
        .expect("curl runs");
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("GET /v1/agent answers JSON");
    assert_eq!(info["api_fingerprint"], fingerprint.as_str(), "{info}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_fingerprint_is_refused_before_any_request_or_token_is_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    let wrong = other_fingerprint(agent.fingerprint());
    let canary = format!("rwy_{}", random_hex(32));
    let requests_before = log_lines(&agent, "API request.").len();
    let handshakes_before = log_lines(&agent, "API TLS handshake failed.").len();

    let mut command = agent.command(Some(&canary), &["tokens", "list"]);
    command.env("ROLLWAY_AGENT_FINGERPRINT", &wrong);
    let ran = run(command).await;
    ran.assert_code(3);
    assert_contains(&ran, &format!("not the pinned `{wrong}`; nothing was sent"));
    assert_contains(&ran, agent.fingerprint());

    // Server side: the handshake failed, no request reached the router, the token never arrived.
    let failed = wait_for_log(&agent, "API TLS handshake failed.", handshakes_before).await;
    assert!(
        failed.last().is_some_and(|line| line.contains("alert")),
        "{failed:?}"
    );
    assert_eq!(
        log_lines(&agent, "API request.").len(),
        requests_before,
        "a request arrived:\n{}",
        agent.log()
    );
    assert!(!agent.log().contains(&canary));

    // The same command with the right pin does reach the agent (so the count above can move).
    let ran = run(agent.command(Some(&canary), &["tokens", "list"])).await;
    ran.assert_code(3);
    assert_contains(&ran, "refused the token");
    wait_for_log(&agent, "API request.", requests_before).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_certificate_is_refused_with_what_to_check_and_how_to_update_the_pin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    let first = agent.fingerprint().to_owned();
    run(agent.command(Some(agent.admin_token()), &["tokens", "list"]))
        .await
        .assert_code(0);

    // The operator gives the API another certificate.
    let cert = dir.path().join("api-cert.pem");
    let key = dir.path().join("api-key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args([
            "-nodes",
            "-days",
            "30",
            "-subj",
            "/CN=rollway-test-agent",
            "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl runs");
    assert!(made.success());
    let (cert_arg, key_arg) = (cert.display().to_string(), key.display().to_string());
    agent
        .restart_tls(&["--api-cert", &cert_arg, "--api-key", &key_arg])
        .await;
    let second = agent.fingerprint().to_owned();
    assert_ne!(first, second);
    let der = std::process::Command::new("openssl")
        .args(["x509", "-outform", "der", "-in"])
        .arg(&cert)
        .output()
        .expect("openssl runs");
    assert_eq!(
        second,
        format!("sha256:{}", testkit::agent::sha256_hex(&der.stdout))
    );

    // The CLI has the first one pinned: refused, saying what to check and how to update.
    let mut pinned = agent.command(Some(agent.admin_token()), &["tokens", "list"]);
    pinned.env_remove("ROLLWAY_AGENT_FINGERPRINT");
    let ran = run(pinned).await;
    ran.assert_code(3);
    assert_contains(
        &ran,
        &format!("presented the certificate `{second}`, not the pinned `{first}`"),
    );
    assert_contains(
        &ran,
        "check on the agent's server which certificate it serves",
    );
    assert_contains(&ran, "known_agents");
    assert_contains(&ran, "--agent-fingerprint");
    assert_contains(&ran, "intercepting");

    // The new fingerprint given explicitly is accepted.
    run(agent.command(Some(agent.admin_token()), &["tokens", "list"]))
        .await
        .assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_or_a_fingerprint_the_cli_says_how_to_give_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    let requests_before = log_lines(&agent, "API request.").len();
    let mut command = agent.command(Some(agent.admin_token()), &["tokens", "list"]);
    command.env_remove("ROLLWAY_AGENT_FINGERPRINT");
    let ran = run(command).await;
    ran.assert_code(3);
    assert_contains(&ran, "is not known yet");
    assert_contains(&ran, "--agent-fingerprint sha256:");
    assert_contains(&ran, "ROLLWAY_AGENT_FINGERPRINT");
    assert!(!agent.cli_config_dir().join("rollway/known_agents").exists());

    // A malformed fingerprint is named as such.
    let mut command = agent.command(Some(agent.admin_token()), &["tokens", "list"]);
    command.env("ROLLWAY_AGENT_FINGERPRINT", "sha256:abc");
    let ran = run(command).await;
    ran.assert_code(3);
    assert_contains(&ran, "invalid certificate fingerprint `sha256:abc`");
    assert_eq!(log_lines(&agent, "API request.").len(), requests_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_beyond_loopback_is_refused_by_the_cli() {
    let dir = tempfile::tempdir().expect("tempdir");
    for url in [
        "http://10.0.0.5:7440",
        "http://agent.example.com:7440",
        "http://[2001:db8::1]:7440",
    ] {
        let output = Command::new(rollway_bin())
            .args(["tokens", "list", "--agent", url, "--token", "rwy_x"])
            .env("NO_COLOR", "1")
            .env("ROLLWAY_STATE_DIR", dir.path().join("none"))
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env_remove("ROLLWAY_AGENT_FINGERPRINT")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("rollway runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(3), "{url}: {stderr}");
        assert!(
            stderr.contains("plain `http://` is accepted for a loopback address only"),
            "{url}: {stderr}"
        );
        assert!(stderr.contains("use `--agent https://"), "{url}: {stderr}");
    }
}

/// An agent in a network namespace of the test's own, its API on 10.77.0.1 (a veth interface).
struct NamespacedAgent {
    child: std::process::Child,
    state_dir: std::path::PathBuf,
}

impl NamespacedAgent {
    fn netns(&self) -> String {
        format!("--net=/proc/{}/ns/net", self.child.id())
    }

    /// `nsenter --net=... PROGRAM ARGS` inside the agent's namespace.
    fn inside(&self, program: &Path, args: &[&str]) -> std::process::Output {
        std::process::Command::new("nsenter")
            .arg(self.netns())
            .arg("--")
            .arg(program)
            .args(args)
            .env("NO_COLOR", "1")
            .env("ROLLWAY_STATE_DIR", self.state_dir.join("no-local-agent"))
            .env("XDG_CONFIG_HOME", self.state_dir.join("cli-config"))
            .env_remove("ROLLWAY_AGENT_FINGERPRINT")
            .stdin(Stdio::null())
            .output()
            .expect("nsenter runs")
    }
}

impl Drop for NamespacedAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(text) = std::fs::read_to_string(self.state_dir.join("proxy/proxy.pid"))
            && let Some(pid) = text.split_whitespace().next()
        {
            let _ = std::process::Command::new("kill")
                .args(["-9", pid])
                .status();
        }
    }
}

fn can_make_namespaces() -> bool {
    rustix_is_root()
        && ["unshare", "nsenter", "ip"].iter().all(|program| {
            std::process::Command::new(program)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok()
        })
}

fn rustix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find(|line| line.starts_with("Uid:"))
            .is_some_and(|line| line.split_whitespace().nth(1) == Some("0"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_beyond_loopback_answers_no_plain_http() {
    if !can_make_namespaces() {
        assert!(
            std::env::var_os("ROLLWAY_E2E").is_none(),
            "ROLLWAY_E2E is set but this test needs root, unshare, nsenter and ip"
        );
        println!("skipped: needs root, unshare, nsenter and ip (a network namespace of its own)");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let state_dir = dir.path().join("state");
    std::fs::create_dir_all(&state_dir).expect("state dir");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
    // The namespace has only its own loopback and a veth pair of its own: nothing it listens on is
    // reachable from the machine's network, and 10.77.0.1 (on the veth) is not a loopback address.
    let script = "ip link set lo up && ip link add rw0 type veth peer name rw1 \
        && ip addr add 10.77.0.1/24 dev rw0 && ip link set rw1 up && ip link set rw0 up && exec \"$0\" agent --state \"$1\" --api 10.77.0.1:7443 \
        --proxy 127.0.0.1:7480 --master-key \"$2\"";
    let child = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c", script])
        .arg(rollway_bin())
        .arg(&state_dir)
        .arg(dir.path().join("master.key"))
        .current_dir(&state_dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log)
        .spawn()
        .expect("unshare runs");
    let agent = NamespacedAgent {
        child,
        state_dir: state_dir.clone(),
    };
    let mut written = None;
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(state_dir.join("agent.json"))
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&text)
        {
            written = Some(value);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log_text = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let written = written.unwrap_or_else(|| panic!("the agent did not start:\n{}", log_text()));
    assert_eq!(written["api"], "https://10.77.0.1:7443", "{written}");
    let fingerprint = written["fingerprint"]
        .as_str()
        .expect("a fingerprint")
        .to_owned();

    // A plain HTTP request gets no HTTP answer (a TLS alert at most).
    let answer = agent.inside(
        Path::new("bash"),
        &[
            "-c",
            "exec 3<>/dev/tcp/10.77.0.1/7443 && printf 'GET /healthz HTTP/1.1\\r\\nHost: a\\r\\nConnection: close\\r\\n\\r\\n' >&3 && timeout 10 head -c 64 <&3 | od -An -c",
        ],
    );
    let first_bytes = String::from_utf8_lossy(&answer.stdout);
    assert!(
        !first_bytes.replace(' ', "").starts_with("HTTP"),
        "plain HTTP got an HTTP answer: {first_bytes}"
    );
    // ... because the agent took it for a TLS handshake and refused it.
    let mut refused_plain = false;
    let deadline = tokio::time::Instant::now() + LOG_PATIENCE;
    while tokio::time::Instant::now() < deadline {
        refused_plain = log_text().lines().any(|line| {
            line.contains("\"message\":\"API TLS handshake failed.\"")
                && line.contains("InvalidContentType")
        });
        if refused_plain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        refused_plain,
        "no refused handshake logged:\n{}",
        log_text()
    );
    assert!(!log_text().contains("\"message\":\"API request.\""));
    let token = std::fs::read_to_string(state_dir.join("admin.token")).expect("admin token");
    // The CLI does not even try plain HTTP there.
    let refused = agent.inside(
        rollway_bin(),
        &[
            "tokens",
            "list",
            "--agent",
            "http://10.77.0.1:7443",
            "--token",
            token.trim(),
        ],
    );
    assert_eq!(refused.status.code(), Some(3));
    // Over TLS with the pin, the same agent answers.
    let listed = agent.inside(
        rollway_bin(),
        &[
            "tokens",
            "list",
            "--agent",
            "https://10.77.0.1:7443",
            "--agent-fingerprint",
            &fingerprint,
            "--token",
            token.trim(),
        ],
    );
    assert!(
        listed.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&listed.stderr),
        log_text()
    );
    assert!(String::from_utf8_lossy(&listed.stdout).contains("admin"));
    drop(agent);
}

/// `rollway ARGS` on a terminal (`script` gives it a pty) with `answer` typed in, for `agent`.
async fn on_a_terminal(agent: &TestAgent, args: &str, answer: &str) -> Ran {
    let line = format!(
        "{} {args} --agent {} --token {}",
        rollway_bin().display(),
        agent.api_url(),
        agent.admin_token()
    );
    let mut command = Command::new("script");
    command
        .args(["-qec", &line, "/dev/null"])
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", agent.cli_config_dir())
        .env(
            "ROLLWAY_STATE_DIR",
            agent.state_dir().join("no-local-agent"),
        )
        .env_remove("ROLLWAY_AGENT_FINGERPRINT")
        .env_remove("ROLLWAY_AGENT")
        .env_remove("ROLLWAY_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = command.spawn().expect("script runs");
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin
            .write_all(answer.as_bytes())
            .await
            .expect("answer typed");
    }
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command ends within 60 s")
        .expect("script runs");
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_terminal_the_cli_shows_the_fingerprint_and_pins_it_only_when_accepted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    let known_agents = agent.cli_config_dir().join("rollway/known_agents");
    let requests_before = log_lines(&agent, "API request.").len();

    // Refused: nothing pinned, nothing sent (the fingerprint came from a refused handshake).
    let ran = on_a_terminal(&agent, "tokens list", "n\n").await;
    ran.assert_code(3);
    assert_contains(&ran, agent.fingerprint());
    assert_contains(&ran, "Trust it and remember it");
    assert_contains(&ran, "was not trusted");
    assert!(!known_agents.exists());
    assert_eq!(log_lines(&agent, "API request.").len(), requests_before);

    // Accepted: pinned, and the command goes through.
    let ran = on_a_terminal(&agent, "tokens list", "y\n").await;
    ran.assert_code(0);
    assert_contains(&ran, "admin");
    let known = std::fs::read_to_string(&known_agents).expect("pinned");
    assert!(
        known.contains(&format!("{} {}", agent.api_addr(), agent.fingerprint())),
        "{known}"
    );
    // Next time, no question.
    let ran = on_a_terminal(&agent, "tokens list", "").await;
    ran.assert_code(0);
    assert!(!ran.stdout.contains("Trust it"), "{ran}");
}

/// `rollway registry ca` prints the API's certificate (what the nodes' engines trust for the
/// agent's registry) only through a pinned connection: the PEM on stdout is the state directory's
/// `api-tls/cert.pem`, the hint names the `certs.d` folder of the agent's address; with a wrong
/// fingerprint nothing is printed; an agent on plain loopback HTTP says no certificate is needed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_ca_prints_the_pinned_certificate_for_the_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_tls(rollway_bin(), &dir.path().join("state"), &[]).await;
    let ran = agent.cli(&["registry", "ca"]).await;
    ran.assert_code(0);
    let pem = std::fs::read_to_string(agent.state_dir().join("api-tls/cert.pem")).expect("cert");
    assert_eq!(ran.stdout.trim_end(), pem.trim_end(), "{ran}");
    assert!(
        ran.stderr
            .contains(&format!("/etc/docker/certs.d/{}/ca.crt", agent.api_addr())),
        "{ran}"
    );

    let mut command = agent.command(None, &["registry", "ca"]);
    command.env(
        "ROLLWAY_AGENT_FINGERPRINT",
        other_fingerprint(agent.fingerprint()),
    );
    let refused = run(command).await;
    refused.assert_code(3);
    assert!(!refused.stdout.contains("BEGIN CERTIFICATE"), "{refused}");

    let plain = TestAgent::start(rollway_bin(), &dir.path().join("plain")).await;
    let ran = plain.cli(&["registry", "ca"]).await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert_contains(&ran, "plain HTTP on loopback");
}
