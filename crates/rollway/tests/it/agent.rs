//! End-to-end tests of the agent: the real `rollway agent`, its proxy and the demo app, with a load
//! loop counting every failed request while deploys, rollbacks, failed releases and kill -9 happen.
//!
//! Each test has its own state directory and loopback ports; assertions are about counts, states
//! and orderings, never about how long anything took.

use std::path::Path;
use std::time::Duration;

use testkit::agent::{APP, Driver, Ran, TestAgent, TestApp};
use testkit::load::{Load, LoadHandle};

use crate::containers::{self, Ends, Shape, wait_answers_while_down};

const ENV: &str = "production";
const CRASH_BEFORE: &str = "ROLLWAY_TEST_CRASH_BEFORE";
/// Bound of every load loop; tests stop theirs long before.
const LOAD_BOUND: Duration = Duration::from_secs(240);
/// Bound of waits for a deployment to end.
const PATIENCE: Duration = Duration::from_secs(60);

/// An agent in a fresh temporary directory. `agent` is declared first so it is dropped (and kills
/// everything it started) before the directory is removed.
pub(crate) struct Setup {
    pub(crate) agent: TestAgent,
    pub(crate) dir: tempfile::TempDir,
}

impl Setup {
    pub(crate) async fn start() -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let agent = TestAgent::start(rollway_bin(), &dir.path().join("state")).await;
        Setup { agent, dir }
    }

    /// A folder of the test directory that apps may write to (a database, a build's log), as an
    /// operator would give one to them: apps run as their own users (agent as root) and cannot
    /// enter the test directory otherwise. Sticky and world-writable, like `/tmp`.
    pub(crate) fn shared_dir(&self, name: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).expect("shared dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        // Crossable, not listable.
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod the test dir");
        dir
    }

    /// The demo app in folder `name` of the test directory.
    pub(crate) fn app(&self, name: &str, version: &str) -> TestApp {
        TestApp::new(self.dir.path().join(name)).version(version)
    }

    /// A webhook receiver whose URL is the secret `secret` of the demo app in `env`.
    pub(crate) async fn webhook(&self, env: &str, secret: &str) -> testkit::webhook::Receiver {
        let receiver = testkit::webhook::Receiver::start().await;
        self.agent
            .set_secret(APP, env, secret, &receiver.url("/hook"))
            .await
            .assert_code(0);
        receiver
    }

    /// Four clients through the proxy until stopped.
    pub(crate) fn load(&self) -> LoadHandle {
        Load::new(self.agent.proxy_addr())
            .concurrency(4)
            .duration(LOAD_BOUND)
            .start()
    }
}

pub(crate) fn rollway_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_rollway"))
}

#[track_caller]
pub(crate) fn assert_contains(ran: &Ran, needle: &str) {
    assert!(
        ran.stderr.contains(needle) || ran.stdout.contains(needle),
        "expected `{needle}` in the output:\n{ran}"
    );
}

/// After a switch only the release that served just before stays warm: every instance is
/// `current`'s (serving) or of one earlier release (warm).
#[track_caller]
pub(crate) fn assert_current_and_one_warm(
    instances: &std::collections::BTreeMap<String, String>,
    current: u64,
) {
    let release_of = |id: &str| {
        id.split('-')
            .find_map(|part| part.strip_prefix('r')?.parse::<u64>().ok())
    };
    let mut warm_releases = std::collections::BTreeSet::new();
    for (id, state) in instances {
        let release = release_of(id).unwrap_or_else(|| panic!("no release in `{id}`"));
        if release == current {
            assert_eq!(state, "serving", "{instances:?}");
        } else {
            assert_eq!(state, "warm", "{instances:?}");
            warm_releases.insert(release);
        }
    }
    assert_eq!(
        warm_releases.len(),
        1,
        "one earlier release stays warm: {instances:?}"
    );
}

/// Asserts that the instances the agent reports are exactly the ones running: one live pid file
/// and one process group per instance, and no other process inside the state directory.
#[track_caller]
fn assert_instances_match(agent: &TestAgent, reported: &[&str]) {
    let reported: Vec<String> = reported.iter().map(|id| (*id).to_owned()).collect();
    let pid_files: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert_eq!(
        pid_files, reported,
        "live pid files vs. the agent's instances"
    );
    let processes = agent.instance_processes();
    let running: Vec<String> = processes.keys().cloned().collect();
    assert_eq!(
        running, reported,
        "running instances vs. the agent's instances"
    );
    for (id, groups) in &processes {
        assert_eq!(groups.len(), 1, "instance `{id}` runs in {groups:?}");
    }
}

fn instance(release: u64) -> String {
    format!("{APP}-{ENV}-r{release}-web-1")
}

// a. Deploys and rollbacks under continuous load.

/// What the test expects of the releases: version and outcome per number (index + 1).
#[derive(Default)]
struct Model {
    releases: Vec<(&'static str, &'static str)>,
    current: Option<usize>,
}

impl Model {
    fn deployed(&mut self, version: &'static str) -> u64 {
        if let Some(current) = self.current {
            self.releases[current].1 = "superseded";
        }
        self.releases.push((version, "live"));
        self.current = Some(self.releases.len() - 1);
        self.releases.len() as u64
    }

    /// A rollback without `--to` goes to the newest release that was superseded by a deploy.
    fn default_target(&self) -> u64 {
        let index = self
            .releases
            .iter()
            .rposition(|(_, outcome)| *outcome == "superseded")
            .expect("a release to roll back to");
        index as u64 + 1
    }

    fn rolled_back_to(&mut self, number: u64) -> &'static str {
        if let Some(current) = self.current {
            self.releases[current].1 = "rolled back";
        }
        let index = number as usize - 1;
        self.releases[index].1 = "live";
        self.current = Some(index);
        self.releases[index].0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploys_and_rollbacks_under_load_fail_no_request() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let mut model = Model::default();
    let versions = ["v1", "v2"];
    let first = setup.app("app", versions[0]);
    agent.deploy(&first, ENV).await.assert_code(0);
    model.deployed(versions[0]);
    agent.assert_serves("v1").await;
    let load = setup.load();

    for step in 1..20 {
        let version = versions[step % 2];
        let app = if step < 10 {
            setup.app("app", version)
        } else {
            setup.app("app", version).strategy("rolling").replicas(2)
        };
        let ran = agent.deploy(&app, ENV).await;
        ran.assert_code(0);
        let number = model.deployed(version);
        assert_contains(&ran, &format!("{APP}@{number}"));
        agent.assert_serves(version).await;
    }

    for to in [None, None, None, None, Some(3)] {
        let target = to.unwrap_or_else(|| model.default_target());
        agent.rollback(APP, ENV, to).await.assert_code(0);
        let version = model.rolled_back_to(target);
        agent.assert_serves(version).await;
        let status = agent.status(APP, ENV).await;
        assert_eq!(status.current_release(), Some(target), "{status}");
        assert_eq!(status.weights(), vec![(target, 100)], "{status}");
    }

    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
    assert_eq!(
        report.versions.keys().collect::<Vec<_>>(),
        ["v1", "v2"],
        "{report}"
    );
    // Only the release that served before the last rollback stays warm (keep_warm keeps one
    // earlier release); every instance the agent reports runs exactly once.
    let instances = agent.status(APP, ENV).await.instances();
    assert_current_and_one_warm(&instances, 3);
    let ids: Vec<&str> = instances.keys().map(String::as_str).collect();
    assert_instances_match(agent, &ids);
}

// b. Releases that never become healthy, or crash, never receive traffic.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_that_never_becomes_healthy_or_crashes_never_gets_traffic() {
    // The scenario is written once, for both drivers, in `containers`.
    containers::unhealthy_releases_never_get_traffic(Driver::Process).await;
}

// c. kill -9 of the agent before each transition: on restart it finishes or undoes the deploy.

/// Deploys v1, has the agent kill itself before writing `state` of a deploy of v2, restarts it
/// and checks where the deployment and the traffic ended (the scenario is written once, for both
/// drivers, in `containers`).
async fn check_agent_killed_before(state: &str, shape: Shape, ends: Ends) {
    containers::agent_killed_before(Driver::Process, state, shape, ends).await;
}

/// v1 then v2 deployed (v1 warm); the agent kills itself before writing `state` of a rollback
/// to v1 and is restarted.
async fn check_rollback_killed_before(state: &str, ends: Ends) {
    let mut setup = Setup::start().await;
    for version in ["v1", "v2"] {
        setup
            .agent
            .deploy(&setup.app(version, version), ENV)
            .await
            .assert_code(0);
    }
    let load = setup.load();

    setup.agent.restart_with_env(&[(CRASH_BEFORE, state)]).await;
    let token = setup.agent.admin_token().to_owned();
    let rollback = setup
        .agent
        .command(Some(&token), &["rollback", "--env", ENV, "--app", APP])
        .spawn()
        .expect("spawn rollway rollback");
    assert!(
        setup.agent.wait_exit(PATIENCE).await,
        "the agent did not kill itself before {state}:\n{}",
        setup.agent.log()
    );
    wait_answers_while_down(&load).await;
    setup.agent.restart_with_env(&[]).await;
    let agent = &setup.agent;
    let status = agent.wait_deployment_finished(APP, ENV, PATIENCE).await;
    let ran = tokio::time::timeout(PATIENCE, rollback.wait_with_output())
        .await
        .expect("rollway rollback ended")
        .expect("rollway rollback output");
    let ran = format!(
        "exit {:?}\n{}",
        ran.status.code(),
        String::from_utf8_lossy(&ran.stderr)
    );

    let (current, serves, instances) = match ends {
        Ends::Undone => {
            assert_eq!(status.deployment_state(), Some("Failed"), "{status}\n{ran}");
            (2, "v2", [(instance(1), "warm"), (instance(2), "serving")])
        }
        Ends::Finished => {
            assert_eq!(
                status.deployment_state(),
                Some("Succeeded"),
                "{status}\n{ran}"
            );
            (1, "v1", [(instance(1), "serving"), (instance(2), "warm")])
        }
    };
    assert_eq!(status.current_release(), Some(current), "{status}");
    assert_eq!(status.weights(), vec![(current, 100)], "{status}");
    agent.assert_serves(serves).await;
    let expected: Vec<(String, String)> = instances
        .iter()
        .map(|(id, state)| (id.clone(), (*state).to_owned()))
        .collect();
    assert_eq!(
        status.instances().into_iter().collect::<Vec<_>>(),
        expected,
        "{status}"
    );
    assert_instances_match(agent, &[&instance(1), &instance(2)]);
    // The release left warm is still a working rollback target.
    let target = if current == 1 { 2 } else { 1 };
    agent.rollback(APP, ENV, Some(target)).await.assert_code(0);
    agent
        .assert_serves(if target == 1 { "v1" } else { "v2" })
        .await;

    let report = load.stop().await;
    report.assert_no_failures();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_a_rollback_shifts_undoes_it() {
    check_rollback_killed_before("Shifting", Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_after_a_rollback_shifted_finishes_it() {
    check_rollback_killed_before("Succeeded", Ends::Finished).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_preparing_undoes_the_deploy() {
    check_agent_killed_before("Preparing", Shape::BlueGreen, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_releasing_undoes_the_deploy() {
    check_agent_killed_before("Releasing", Shape::BlueGreen, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_starting_undoes_the_deploy() {
    check_agent_killed_before("Starting", Shape::BlueGreen, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_verifying_undoes_the_deploy() {
    check_agent_killed_before("Verifying", Shape::BlueGreen, Ends::Undone).await;
}

/// `Verifying` is the last state written: traffic never moved, so the deploy is undone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_shifting_undoes_the_deploy() {
    check_agent_killed_before("Shifting", Shape::BlueGreen, Ends::Undone).await;
}

/// `Shifting` was written and traffic moved: the restarted agent finishes the shift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_succeeded_finishes_the_deploy() {
    check_agent_killed_before("Succeeded", Shape::BlueGreen, Ends::Finished).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_before_a_rolling_shift_undoes_the_deploy() {
    check_agent_killed_before("Shifting", Shape::Rolling, Ends::Undone).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_after_a_rolling_shift_finishes_the_deploy() {
    check_agent_killed_before("Succeeded", Shape::Rolling, Ends::Finished).await;
}

// d. Tokens: none, too weak, and never written or shown anywhere.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_have_roles_and_are_never_written_down() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = setup.app("app", "v1");
    agent.deploy(&app, ENV).await.assert_code(0);
    let deployments = format!("/v1/apps/{APP}/environments/{ENV}/deployments");

    let ran = agent.deploy_command(&app, ENV, None).output().await;
    let ran = ran.expect("rollway deploy");
    assert_eq!(ran.status.code(), Some(3), "{ran:?}");
    assert_eq!(agent.api_status("GET", "/v1/agent", None).await, 401);
    assert_eq!(
        agent
            .api_status("GET", "/v1/agent", Some("rw_not-a-token"))
            .await,
        401
    );
    assert_eq!(agent.api_status("POST", &deployments, None).await, 401);

    let created = agent
        .cli(&[
            "tokens", "create", "--role", "viewer", "--name", "x", "--json",
        ])
        .await;
    created.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&created.stdout).expect("token JSON");
    let viewer = created["token"].as_str().expect("token value").to_owned();
    assert_eq!(
        agent.api_status("GET", "/v1/agent", Some(&viewer)).await,
        200
    );
    assert_eq!(
        agent.api_status("POST", &deployments, Some(&viewer)).await,
        403
    );
    let ran =
        testkit::agent::run(agent.deploy_command(&app.clone().version("v2"), ENV, Some(&viewer)))
            .await;
    ran.assert_code(3);
    agent.assert_serves("v1").await;

    let state = agent.state_dir();
    let admin = agent.admin_token().to_owned();
    assert_eq!(
        testkit::agent::files_containing(state, &admin),
        [state.join("admin.token")],
        "the admin token is written outside admin.token"
    );
    assert_eq!(
        testkit::agent::files_containing(state, &viewer),
        Vec::<std::path::PathBuf>::new(),
        "the viewer token is written down"
    );
    assert_eq!(
        testkit::agent::processes_with_cmdline_containing(&admin),
        Vec::<u32>::new(),
        "a process shows the admin token in its command line"
    );
}

// e. One deployment at a time per app and environment.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_concurrent_deploy_is_refused_naming_the_lock_holder() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("v1", "v1"), ENV)
        .await
        .assert_code(0);

    let slow = setup.app("slow", "v2").health_delay(Duration::from_secs(3));
    let token = agent.admin_token().to_owned();
    let first = agent
        .deploy_command(&slow, ENV, Some(&token))
        .spawn()
        .expect("spawn rollway deploy");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(APP, ENV).await;
        if status.0["deployment"]["to_release"].as_u64() == Some(2) {
            assert!(
                !status.deployment_finished(),
                "the slow deploy ended: {status}"
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let second = agent.deploy(&setup.app("second", "v3"), ENV).await;
    second.assert_code(2);
    assert_contains(&second, "admin");
    assert_contains(&second, "since");

    let first = tokio::time::timeout(PATIENCE, first.wait_with_output())
        .await
        .expect("the first deploy ended")
        .expect("rollway deploy output");
    assert_eq!(first.status.code(), Some(0), "{first:?}");
    agent.assert_serves("v2").await;
}

// f. The API bounds what a client may hold: an oversized body, a head sent byte by byte past the
// header timeout and idle connections are refused, in the error envelope, while a deploy proceeds.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_idle_and_oversized_api_clients_are_refused_while_a_deploy_proceeds() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpStream;

    let setup = Setup::start().await;
    let agent = &setup.agent;
    agent
        .deploy(&setup.app("app", "v1"), ENV)
        .await
        .assert_code(0);
    let api = agent.api_addr();
    // Idle connections that never say a thing.
    let mut idle = Vec::new();
    for _ in 0..50 {
        idle.push(TcpStream::connect(api).await.expect("connect"));
    }
    // A head sent one byte every 300 ms: ~70 bytes take longer than the 10 s header timeout.
    let slow = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(api).await.expect("connect");
        let head = b"GET /v1/agent HTTP/1.1\r\nhost: agent\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in head {
            if tcp.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw).await;
        String::from_utf8_lossy(&raw).into_owned()
    });
    let mut deploy = agent
        .deploy_command(
            &setup.app("app", "v2").health_delay(Duration::from_secs(2)),
            ENV,
            Some(agent.admin_token()),
        )
        .spawn()
        .expect("rollway deploy");

    // A 2 MiB JSON body: 413 in the envelope, before it is read whole.
    let mut tcp = TcpStream::connect(api).await.expect("connect");
    let body = format!(r#"{{"name": "{}", "role": "viewer"}}"#, "x".repeat(2 << 20));
    let head = format!(
        "POST /v1/tokens HTTP/1.1\r\nhost: agent\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        agent.admin_token(),
        body.len()
    );
    tcp.write_all(head.as_bytes()).await.expect("write");
    let _ = tcp.write_all(body.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw).await;
    let answer = String::from_utf8_lossy(&raw).into_owned();
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_envelope(&answer, "too_large");

    let ended = tokio::time::timeout(PATIENCE, deploy.wait())
        .await
        .expect("the deploy ended")
        .expect("rollway deploy");
    assert_eq!(ended.code(), Some(0));
    agent.assert_serves("v2").await;

    let answer = tokio::time::timeout(PATIENCE, slow)
        .await
        .expect("the slow client was cut off")
        .expect("slow client");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_envelope(&answer, "timeout");
    for mut tcp in idle {
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut raw)).await;
        assert!(
            raw.starts_with(b"HTTP/1.1 408"),
            "an idle connection was kept"
        );
    }
    assert_eq!(
        agent
            .api_status("GET", "/v1/agent", Some(agent.admin_token()))
            .await,
        200
    );
}

/// The error envelope of a raw answer: `{ "error": { "code", "message" } }` with `code`.
#[track_caller]
fn assert_envelope(answer: &str, code: &str) {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((answer, ""));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let body: serde_json::Value = serde_json::from_str(body).expect("a JSON body");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|message| !message.is_empty()),
        "{body}"
    );
}

/// An artifact over the agent's limit is refused while it streams in: the CLI says what the
/// limit is and which variable raises it, nothing moved, and no byte of it is left on disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_artifact_over_the_agents_limit_is_refused_naming_the_limit_and_leaves_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = TestAgent::start_with_env(
        rollway_bin(),
        &dir.path().join("state"),
        &[("ROLLWAY_ARTIFACT_MAX_SIZE", "50000")],
    )
    .await;
    // 400 KB of random hex: about 200 KB once compressed, four times the limit.
    let filler: String = (0..12_500)
        .map(|_| testkit::agent::random_hex(16))
        .collect();
    let app = TestApp::new(dir.path().join("app"))
        .version("v1")
        .file("data/filler.txt", filler);
    let ran = agent.deploy(&app, ENV).await;
    assert_ne!(ran.code, Some(0), "{ran}");
    assert!(
        ran.stderr.contains("50000 bytes") && ran.stderr.contains("ROLLWAY_ARTIFACT_MAX_SIZE"),
        "the error names the limit and how to raise it:\n{ran}"
    );
    eprintln!("{ran}");
    // Nothing recorded: the agent knows no such app.
    agent
        .cli(&["status", "--app", APP, "--env", ENV])
        .await
        .assert_code(2);
    let stored: Vec<_> = walk(&agent.state_dir().join("artifacts"));
    assert_eq!(stored, Vec::<std::path::PathBuf>::new(), "left on disk");

    // Under the limit, the same agent takes it.
    let small = TestApp::new(dir.path().join("small")).version("v1");
    agent.deploy(&small, ENV).await.assert_code(0);
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
