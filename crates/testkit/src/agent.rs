//! Temporary agents for end-to-end tests: the real `rollway agent` on loopback with its own state
//! directory, the demo app as a deployable app, and the verbs tests use (`deploy`, `rollback`,
//! `status`, `kill9`, `restart_with_env`).
//!
//! Everything runs as real processes. Dropping a [`TestAgent`] kills the agent and everything it
//! started (its proxy and the app instances, which outlive an agent on purpose), so a test leaves
//! nothing running whatever way it ends.
//!
//! ```no_run
//! # async fn example(rollway: &std::path::Path, dir: &std::path::Path) {
//! use testkit::agent::{TestAgent, TestApp};
//! let agent = TestAgent::start(rollway, &dir.join("state")).await;
//! let app = TestApp::new(dir.join("app")).version("v1");
//! agent.deploy(&app, "production").await.assert_code(0);
//! agent.assert_serves("v1").await;
//! # }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::demo::{demo_app_path, free_port};
use crate::load::{Load, Report};

/// How long the agent may take to answer `/healthz` after it was started.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one `rollway` command may run before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);
/// The app name every [`TestApp`] uses unless told otherwise.
pub const APP: &str = "demo";

/// A running `rollway agent` with a temporary state directory.
pub struct TestAgent {
    rollway: PathBuf,
    state_dir: PathBuf,
    api: SocketAddr,
    proxy: SocketAddr,
    admin_token: String,
    child: Option<Child>,
    /// Run the agent as this uid and gid (no supplementary groups) instead of the test's user.
    run_as: Option<(u32, u32)>,
    /// More `rollway agent` arguments (`--https ADDR`, `--acme-directory URL`).
    extra_args: Vec<String>,
    /// `Some` for an agent serving its API over TLS (`--api-tls` and these extra arguments).
    tls: Option<TlsAgent>,
}

/// What a TLS agent was started with, and the fingerprint it printed in `agent.json`.
#[derive(Debug, Clone, Default)]
struct TlsAgent {
    extra_args: Vec<String>,
    fingerprint: String,
}

/// What one `rollway` command did.
#[derive(Debug, Clone)]
pub struct Ran {
    /// `None` when it was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// What runs the `web` service of a [`TestApp`]: the demo app as a process (`run = ...`), or a
/// container (`image = ...` when [`TestApp::image`] was given, else `dockerfile = "Dockerfile"`,
/// built by the agent from the app folder, which must then hold that file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Process,
    Container,
}

/// A deployable copy of the demo app: a folder with a `rollway.toml` whose `web` service runs
/// `demo-app`. The manifest is written when the app is deployed.
#[derive(Debug, Clone)]
pub struct TestApp {
    dir: PathBuf,
    name: String,
    version: String,
    run: Option<String>,
    driver: Driver,
    /// The image of a container `web` service (`{version}` allowed); `None`: its Dockerfile.
    image: Option<String>,
    env: Vec<(String, String)>,
    replicas: u32,
    strategy: String,
    start_timeout: String,
    keep_warm: String,
    /// `analysis.observe`; "0s" by default so tests that are not about the watch after the
    /// switch do not wait it out.
    observe: String,
    /// Environment name → the secrets it requires (`[environments.E] secrets`).
    secrets: BTreeMap<String, Vec<String>>,
    flags: Vec<(String, bool)>,
    build: Option<String>,
    release_command: Option<String>,
    release_backup: Option<String>,
    /// Extra files written into the folder: path relative to it → content.
    files: BTreeMap<String, String>,
    /// `strategy.steps` as TOML (`[{ weight = 20, pause = "3s" }, { weight = 100 }]`).
    steps: Option<String>,
    /// More `[analysis]` lines, as TOML (`interval = "200ms"`).
    analysis: Vec<String>,
    /// `[release] smoke`.
    smoke: Option<String>,
    /// Environments with `approval = true`.
    approval: BTreeSet<String>,
    /// `[alerts] webhook`: the name of the secret holding the URL.
    alerts_webhook: Option<String>,
    /// Lines of a `[backup]` section.
    backup_lines: Vec<String>,
    /// `[routes.web] hosts`; `None`: no `[routes]` (the web service answers every host).
    hosts: Option<Vec<String>>,
    /// Raw lines under `[routes.web]` (`rate_limit = …`, `allow = …`).
    route_lines: Vec<String>,
    /// Environment name → its own `routes.web.hosts` (`[environments.E] routes`).
    env_hosts: BTreeMap<String, Vec<String>>,
    /// A `worker` service (no route, no health check) running the same program as `web`.
    worker: bool,
    /// The `worker` service's own command (default: the `web` service's program).
    worker_run: Option<String>,
    /// Raw TOML appended to the manifest (`[cron.NAME]` tables and the like).
    extra: Vec<String>,
    /// Environments with `driver = "swarm"`.
    swarm: BTreeSet<String>,
}

/// One HTTP answer: status and body (lossy UTF-8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl TestAgent {
    /// Starts `rollway agent --state STATE_DIR` on free loopback ports, waits until `/healthz`
    /// answers and reads the admin token. Panics (with the agent's output) when it does not start.
    pub async fn start(rollway: &Path, state_dir: &Path) -> TestAgent {
        TestAgent::start_with_env(rollway, state_dir, &[]).await
    }

    /// [`TestAgent::start`] with extra variables for the agent process (`ROLLWAY_TEST_CRASH_BEFORE`).
    pub async fn start_with_env(
        rollway: &Path,
        state_dir: &Path,
        extra_env: &[(&str, &str)],
    ) -> TestAgent {
        TestAgent::start_inner(
            rollway,
            state_dir,
            extra_env,
            None,
            Vec::new(),
            None,
            Ipv4Addr::LOCALHOST,
        )
        .await
    }

    /// [`TestAgent::start_with_env`] with more `rollway agent` arguments.
    pub async fn start_with_args(
        rollway: &Path,
        state_dir: &Path,
        extra_args: &[String],
        extra_env: &[(&str, &str)],
    ) -> TestAgent {
        TestAgent::start_inner(
            rollway,
            state_dir,
            extra_env,
            None,
            extra_args.to_vec(),
            None,
            Ipv4Addr::LOCALHOST,
        )
        .await
    }

    /// [`TestAgent::start_with_args`] with the API over TLS on `api_ip` (a free port of it): an
    /// address beyond loopback, such as a bridge to network namespaces the test made, that
    /// processes in them reach. Its CLI commands trust the fingerprint the agent wrote.
    pub async fn start_tls_on(
        rollway: &Path,
        state_dir: &Path,
        api_ip: Ipv4Addr,
        extra_args: &[String],
        extra_env: &[(&str, &str)],
    ) -> TestAgent {
        TestAgent::start_inner(
            rollway,
            state_dir,
            extra_env,
            None,
            extra_args.to_vec(),
            Some(TlsAgent::default()),
            api_ip,
        )
        .await
    }

    /// [`TestAgent::start`] with the API over TLS on loopback (`--api-tls`, then `extra_args`,
    /// such as `--api-cert FILE --api-key FILE`). Its CLI commands trust the fingerprint the agent
    /// wrote in `agent.json` (`ROLLWAY_AGENT_FINGERPRINT`) and keep `known_agents` under the state
    /// directory (`XDG_CONFIG_HOME`).
    pub async fn start_tls(rollway: &Path, state_dir: &Path, extra_args: &[&str]) -> TestAgent {
        let tls = TlsAgent {
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            fingerprint: String::new(),
        };
        TestAgent::start_inner(
            rollway,
            state_dir,
            &[],
            None,
            Vec::new(),
            Some(tls),
            Ipv4Addr::LOCALHOST,
        )
        .await
    }

    /// [`TestAgent::start`] with the agent running as `uid`:`gid` (the test must be root). The
    /// state directory's parent must be writable by that user (the apps directory and the master
    /// key file are made beside the state directory).
    pub async fn start_as(rollway: &Path, state_dir: &Path, uid: u32, gid: u32) -> TestAgent {
        TestAgent::start_inner(
            rollway,
            state_dir,
            &[],
            Some((uid, gid)),
            Vec::new(),
            None,
            Ipv4Addr::LOCALHOST,
        )
        .await
    }

    async fn start_inner(
        rollway: &Path,
        state_dir: &Path,
        extra_env: &[(&str, &str)],
        run_as: Option<(u32, u32)>,
        extra_args: Vec<String>,
        tls: Option<TlsAgent>,
        api_ip: Ipv4Addr,
    ) -> TestAgent {
        std::fs::create_dir_all(state_dir)
            .unwrap_or_else(|error| panic!("cannot create `{}`: {error}", state_dir.display()));
        let port = || free_port().unwrap_or_else(|error| panic!("no free port: {error}"));
        let mut agent = TestAgent {
            rollway: rollway.to_owned(),
            state_dir: state_dir.to_owned(),
            api: SocketAddr::from((api_ip, port())),
            proxy: SocketAddr::from((Ipv4Addr::LOCALHOST, port())),
            admin_token: String::new(),
            child: None,
            run_as,
            extra_args,
            tls,
        };
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(state_dir, Some(uid), Some(gid)).unwrap_or_else(|error| {
                panic!(
                    "cannot give `{}` to uid {uid}: {error}",
                    state_dir.display()
                )
            });
        }
        // A free port can be taken again before the agent binds it (by another test, or as the source
        // port of some client's connection): the agent then exits saying so, and gets other ports.
        for attempt in 1.. {
            match agent.try_spawn(extra_env).await {
                Ok(()) => break,
                Err(exited) if attempt < 5 && exited.contains("already in use") => {
                    agent.api = SocketAddr::from((api_ip, port()));
                    agent.proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, port()));
                }
                Err(exited) => panic!("{exited}"),
            }
        }
        let token_path = state_dir.join("admin.token");
        agent.admin_token = std::fs::read_to_string(&token_path)
            .unwrap_or_else(|error| panic!("cannot read `{}`: {error}", token_path.display()))
            .trim()
            .to_owned();
        agent
    }

    pub fn api_url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.api),
            None => format!("http://{}", self.api),
        }
    }

    /// The API certificate's fingerprint (`sha256:HEX`) of a TLS agent, as it wrote it in
    /// `agent.json`; empty for a plain one.
    pub fn fingerprint(&self) -> &str {
        self.tls.as_ref().map_or("", |tls| tls.fingerprint.as_str())
    }

    /// Where the CLI commands of a TLS agent keep their pins (`XDG_CONFIG_HOME`).
    pub fn cli_config_dir(&self) -> PathBuf {
        self.state_dir.join("cli-config")
    }

    /// Kills the agent and starts it again with other extra arguments after `--api-tls` (another
    /// certificate); its fingerprint is read again.
    pub async fn restart_tls(&mut self, extra_args: &[&str]) {
        self.kill9().await;
        self.tls = Some(TlsAgent {
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            fingerprint: String::new(),
        });
        self.spawn(&[]).await;
    }

    pub fn api_addr(&self) -> SocketAddr {
        self.api
    }

    /// Where the apps answer.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy
    }

    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// What the agent gives apps, beside the state directory: `STATE-apps` (release folders,
    /// private temp folders).
    pub fn apps_dir(&self) -> PathBuf {
        let mut name = self.state_dir.as_os_str().to_owned();
        name.push("-apps");
        PathBuf::from(name)
    }

    /// The agent's master key file: `STATE.master.key`, a sibling of the state directory.
    pub fn master_key_file(&self) -> PathBuf {
        let mut name = self.state_dir.as_os_str().to_owned();
        name.push(".master.key");
        PathBuf::from(name)
    }

    /// Kills the agent process (SIGKILL) and reaps it; its proxy and instances keep running.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }

    /// Stops the agent the way `systemctl stop`/`restart` does (SIGTERM to the agent process only, as
    /// `KillMode=process`), then waits for it to exit, bounded by `timeout`. Returns whether it exited.
    pub async fn terminate(&mut self, timeout: Duration) -> bool {
        let pid = self
            .child
            .as_ref()
            .and_then(tokio::process::Child::id)
            .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        self.wait_exit(timeout).await
    }

    /// Waits until the agent process exits by itself (a test crash point), bounded by `timeout`.
    /// Returns whether it exited.
    pub async fn wait_exit(&mut self, timeout: Duration) -> bool {
        let Some(child) = self.child.as_mut() else {
            return true;
        };
        if tokio::time::timeout(timeout, child.wait()).await.is_ok() {
            self.child = None;
            return true;
        }
        false
    }

    /// Kills the agent (if it still runs) and starts it again on the same state directory and
    /// ports, with `extra_env` added to its environment (nothing else carries over).
    pub async fn restart_with_env(&mut self, extra_env: &[(&str, &str)]) {
        self.kill9().await;
        self.spawn(extra_env).await;
    }

    /// Kills the agent and starts it again from another `rollway` binary (an upgrade installed), on the
    /// same state directory and ports. CLI commands use that binary from now on too.
    pub async fn restart_with_binary(&mut self, rollway: &Path) {
        self.kill9().await;
        self.rollway = rollway.to_owned();
        self.spawn(&[]).await;
    }

    /// `rollway ARGS --agent URL` with the admin token (given through the environment, never argv).
    pub async fn cli(&self, args: &[&str]) -> Ran {
        self.cli_as(Some(&self.admin_token), args).await
    }

    /// `rollway ARGS --agent URL` with `token`, or with no token at all.
    pub async fn cli_as(&self, token: Option<&str>, args: &[&str]) -> Ran {
        run(self.command(token, args)).await
    }

    /// The command behind [`TestAgent::cli_as`], for tests that run it in the background.
    pub fn command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut command = Command::new(&self.rollway);
        // `--agent` goes before a `--` (`rollway run -- COMMAND`), where it is still an option.
        let split = args
            .iter()
            .position(|arg| *arg == "--")
            .unwrap_or(args.len());
        command
            .args(&args[..split])
            .arg("--agent")
            .arg(self.api_url())
            .args(&args[split..])
            .env("NO_COLOR", "1")
            .env_remove("ROLLWAY_AGENT")
            .env_remove("ROLLWAY_TOKEN")
            // No fallback to a local agent of the user running the tests.
            .env("ROLLWAY_STATE_DIR", self.state_dir.join("no-local-agent"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(token) = token {
            command.env("ROLLWAY_TOKEN", token);
        }
        if let Some(tls) = &self.tls {
            command
                .env("ROLLWAY_AGENT_FINGERPRINT", &tls.fingerprint)
                .env("XDG_CONFIG_HOME", self.cli_config_dir())
                .env_remove("ROLLWAY_KNOWN_AGENTS");
        }
        command
    }

    /// `rollway ARGS --agent URL` with the admin token and `stdin` as its standard input (the way
    /// `rollway secrets set` reads a value).
    pub async fn cli_with_stdin(&self, args: &[&str], stdin: &str) -> Ran {
        let mut command = self.command(Some(&self.admin_token), args);
        command.stdin(Stdio::piped());
        let described = format!("{:?}", command.as_std());
        let mut child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot run `{described}`: {error}"));
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin.as_bytes())
                .await
                .unwrap_or_else(|error| panic!("cannot write the stdin of `{described}`: {error}"));
        }
        let output = tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`{described}` ran longer than {COMMAND_TIMEOUT:?}"))
            .unwrap_or_else(|error| panic!("cannot run `{described}`: {error}"));
        Ran {
            code: output.status.code(),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }

    /// `rollway secrets set NAME --env ENV --app APP` with `value` on stdin (never in argv).
    pub async fn set_secret(&self, app: &str, env: &str, name: &str, value: &str) -> Ran {
        self.cli_with_stdin(&["secrets", "set", name, "--env", env, "--app", app], value)
            .await
    }

    /// `rollway deploy --env ENV --dir DIR` of a folder that already holds its `rollway.toml`.
    pub async fn deploy_dir(&self, dir: &Path, env: &str) -> Ran {
        let dir = dir.display().to_string();
        self.cli(&["deploy", "--env", env, "--dir", &dir]).await
    }

    /// Every event of the audit log (`rollway events --json`), oldest first.
    pub async fn events(&self) -> Vec<serde_json::Value> {
        let ran = self.cli(&["events", "--json", "-n", "1000000"]).await;
        ran.assert_code(0);
        ran.stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line).unwrap_or_else(|error| {
                    panic!(
                        "`rollway events --json` printed a line that is not JSON ({error}): {line}"
                    )
                })
            })
            .collect()
    }

    /// `rollway backups --json` of `app` in `env`, newest first.
    pub async fn backups(&self, app: &str, env: &str) -> Vec<serde_json::Value> {
        let ran = self
            .cli(&["backups", "--env", env, "--app", app, "--json"])
            .await;
        ran.assert_code(0);
        serde_json::from_str(&ran.stdout).unwrap_or_else(|error| {
            panic!("`rollway backups --json` printed no JSON ({error}):\n{ran}")
        })
    }

    /// `GET PATH` through the proxy with `Host: HOST` (the proxy's address when `None`).
    pub async fn get(&self, host: Option<&str>, path: &str) -> Answer {
        let host = host.map_or_else(|| self.proxy.to_string(), str::to_owned);
        http(self.proxy, "GET", &host, path, &[], "").await
    }

    /// One request to the control API with the admin token; `body` is sent as JSON when not empty.
    pub async fn api(&self, method: &str, path: &str, body: &str) -> Answer {
        let auth = format!("Bearer {}", self.admin_token);
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        http(
            self.api,
            method,
            &self.api.to_string(),
            path,
            &headers,
            body,
        )
        .await
    }

    /// Writes `app`'s manifest and runs `rollway deploy --env ENV --dir APP` until it ends.
    pub async fn deploy(&self, app: &TestApp, env: &str) -> Ran {
        run(self.deploy_command(app, env, Some(&self.admin_token))).await
    }

    /// The deploy command of [`TestAgent::deploy`], with `token`, to run in the background.
    pub fn deploy_command(&self, app: &TestApp, env: &str, token: Option<&str>) -> Command {
        let dir = app.write();
        let dir = dir.display().to_string();
        self.command(token, &["deploy", "--env", env, "--dir", &dir])
    }

    /// `rollway rollback --env ENV --app APP [--to N]`.
    pub async fn rollback(&self, app: &str, env: &str, to: Option<u64>) -> Ran {
        let to = to.map(|number| number.to_string());
        let mut args = vec!["rollback", "--env", env, "--app", app];
        if let Some(to) = &to {
            args.extend(["--to", to.as_str()]);
        }
        self.cli(&args).await
    }

    /// `rollway status --env ENV --app APP --json`, parsed.
    pub async fn status(&self, app: &str, env: &str) -> Status {
        let ran = self
            .cli(&["status", "--env", env, "--app", app, "--json"])
            .await;
        ran.assert_code(0);
        Status(serde_json::from_str(&ran.stdout).unwrap_or_else(|error| {
            panic!("`rollway status --json` printed no JSON ({error}):\n{ran}")
        }))
    }

    /// Polls `status` until the latest deployment is in a terminal state, bounded by `timeout`.
    pub async fn wait_deployment_finished(
        &self,
        app: &str,
        env: &str,
        timeout: Duration,
    ) -> Status {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.status(app, env).await;
            if status.deployment_finished() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the deployment did not finish within {timeout:?}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends `n` requests through the proxy, one at a time.
    pub async fn sample(&self, n: u64) -> Report {
        Load::new(self.proxy)
            .concurrency(1)
            .count(n)
            .start()
            .wait()
            .await
    }

    /// Panics unless five fresh requests through the proxy all answer `version`.
    #[track_caller]
    pub fn assert_serves(&self, version: &str) -> impl Future<Output = ()> + '_ {
        let caller = std::panic::Location::caller();
        let version = version.to_owned();
        async move {
            let report = self.sample(5).await;
            let answered: Vec<Option<&str>> = report
                .records
                .iter()
                .map(|record| record.version.as_deref())
                .collect();
            assert!(
                report.failed == 0 && answered.iter().all(|got| *got == Some(version.as_str())),
                "expected every answer from `{version}`, got {answered:?} ({report}) at {caller}"
            );
        }
    }

    /// The status code of one request to the control API, with `token` as a bearer token.
    pub async fn api_status(&self, method: &str, path: &str, token: Option<&str>) -> u16 {
        let auth = token.map_or_else(String::new, |token| {
            format!("Authorization: Bearer {token}\r\n")
        });
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}",
            self.api
        );
        http_status(self.api, &request)
            .await
            .unwrap_or_else(|error| panic!("`{method} {path}` to the agent failed: {error}"))
    }

    /// Instance id → pid, for every pid file under `STATE/instances/*/pid` whose process lives.
    pub fn instance_pid_files(&self) -> BTreeMap<String, u32> {
        let mut found = BTreeMap::new();
        for (id, pid) in pid_files(&self.state_dir.join("instances")) {
            if is_alive(pid) {
                found.insert(id, pid);
            }
        }
        found
    }

    /// Instance id → the process groups running it, found in `/proc` by working directory (under
    /// `STATE-apps`, where a release's artifact is unpacked and built) and `ROLLWAY_INSTANCE`.
    /// One group per instance means no duplicates.
    pub fn instance_processes(&self) -> BTreeMap<String, BTreeSet<i32>> {
        let mut found: BTreeMap<String, BTreeSet<i32>> = BTreeMap::new();
        for process in processes_under(&self.apps_dir()) {
            let id = process.instance.unwrap_or_else(|| "?".to_owned());
            found.entry(id).or_default().insert(process.pgid);
        }
        found
    }

    /// The agent's own output so far (stdout then stderr), for failure messages.
    pub fn log(&self) -> String {
        let read =
            |name: &str| std::fs::read_to_string(self.state_dir.join(name)).unwrap_or_default();
        format!("{}{}", read("agent.stdout.log"), read("agent.stderr.log"))
    }

    async fn spawn(&mut self, extra_env: &[(&str, &str)]) {
        if let Err(exited) = self.try_spawn(extra_env).await {
            panic!("{exited}");
        }
    }

    /// Starts the agent and waits until it serves; `Err` with its output when it exited first.
    async fn try_spawn(&mut self, extra_env: &[(&str, &str)]) -> Result<(), String> {
        let open = |name: &str| {
            let path = self.state_dir.join(name);
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .unwrap_or_else(|error| panic!("cannot open `{}`: {error}", path.display()))
        };
        let mut command = Command::new(&self.rollway);
        command
            .arg("agent")
            .arg("--state")
            .arg(&self.state_dir)
            .arg("--api")
            .arg(self.api.to_string())
            .arg("--proxy")
            .arg(self.proxy.to_string())
            // Beside the state directory, never in it, and never the host's own key file.
            .arg("--master-key")
            .arg(self.master_key_file())
            .args(&self.extra_args)
            .args(self.tls.iter().flat_map(|tls| {
                std::iter::once("--api-tls".to_owned()).chain(tls.extra_args.iter().cloned())
            }))
            // The proxy inherits this directory, which is how `Drop` recognises it.
            .current_dir(&self.state_dir)
            .env("NO_COLOR", "1")
            .env_remove("ROLLWAY_TOKEN")
            .env_remove("ROLLWAY_TEST_CRASH_BEFORE")
            .stdin(Stdio::null())
            .stdout(open("agent.stdout.log"))
            .stderr(open("agent.stderr.log"))
            // Its own group, so killing the groups of what runs in the state directory never
            // reaches the test process.
            .process_group(0)
            .kill_on_drop(true);
        for (key, value) in extra_env {
            command.env(key, value);
        }
        if let Some((uid, gid)) = self.run_as {
            // std drops root's supplementary groups when it switches users.
            command.uid(uid).gid(gid).env("HOME", "/nonexistent");
        }
        // A TLS agent is ready once it wrote `agent.json` (after binding; a connection waits in
        // the backlog): the probe below speaks plain HTTP.
        let agent_file = self.state_dir.join("agent.json");
        if self.tls.is_some() {
            let _ = std::fs::remove_file(&agent_file);
        }
        let child = command.spawn().unwrap_or_else(|error| {
            panic!("cannot start `{} agent`: {error}", self.rollway.display())
        });
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        let request = format!(
            "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.api
        );
        loop {
            if let Some(tls) = self.tls.as_mut() {
                let written = std::fs::read_to_string(&agent_file)
                    .ok()
                    .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
                    .and_then(|agent| agent["fingerprint"].as_str().map(str::to_owned));
                if let Some(fingerprint) = written {
                    tls.fingerprint = fingerprint;
                    return Ok(());
                }
            } else if matches!(http_status(self.api, &request).await, Ok(200)) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(format!(
                    "the agent exited ({status}) before serving:\n{}",
                    self.log()
                ));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the agent did not answer /healthz within {START_TIMEOUT:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            // A SIGKILLed child is reaped by tokio's orphan queue; no await is possible here.
        }
        // The proxy and the instances outlive an agent on purpose; a test must not leak them.
        // Pid files are checked against the working directory so a reused pid is never hit.
        let mut pids: Vec<u32> = pid_files(&self.state_dir.join("instances"))
            .into_values()
            .collect();
        if let Ok(text) = std::fs::read_to_string(self.state_dir.join("proxy/proxy.pid"))
            && let Some(pid) = first_number(&text)
        {
            pids.push(pid);
        }
        let apps_dir = self.apps_dir();
        for pid in pids {
            if cwd_of(pid)
                .is_some_and(|cwd| cwd.starts_with(&self.state_dir) || cwd.starts_with(&apps_dir))
            {
                kill_group_and_process(pid, process_group(pid));
            }
        }
        // Whatever else still runs inside the state or apps directory (an instance whose pid
        // file was not written yet, a build command).
        for dir in [&self.state_dir, &apps_dir] {
            for process in processes_under(dir) {
                kill_group_and_process(process.pid, Some(process.pgid));
            }
        }
    }
}

impl TestApp {
    /// The demo app in `dir` (created on deploy): app `demo`, version `v1`, one replica,
    /// blue-green, fast health checks.
    pub fn new(dir: impl Into<PathBuf>) -> TestApp {
        TestApp {
            dir: dir.into(),
            name: APP.to_owned(),
            version: "v1".to_owned(),
            run: None,
            driver: Driver::Process,
            image: None,
            env: Vec::new(),
            replicas: 1,
            strategy: "blue-green".to_owned(),
            start_timeout: "10s".to_owned(),
            keep_warm: "5m".to_owned(),
            observe: "0s".to_owned(),
            secrets: BTreeMap::new(),
            flags: Vec::new(),
            build: None,
            release_command: None,
            release_backup: None,
            files: BTreeMap::new(),
            steps: None,
            analysis: Vec::new(),
            smoke: None,
            approval: BTreeSet::new(),
            alerts_webhook: None,
            backup_lines: Vec::new(),
            hosts: None,
            route_lines: Vec::new(),
            env_hosts: BTreeMap::new(),
            worker: false,
            worker_run: None,
            extra: Vec::new(),
            swarm: BTreeSet::new(),
        }
    }

    /// Adds a `worker` service running `command` (no route, no health check).
    pub fn worker_run(mut self, command: impl Into<String>) -> TestApp {
        self.worker = true;
        self.worker_run = Some(command.into());
        self
    }

    /// Appends raw TOML to the manifest, such as a `[cron.NAME]` table.
    pub fn extra(mut self, toml: impl Into<String>) -> TestApp {
        self.extra.push(toml.into());
        self
    }

    /// `driver = "swarm"` in `[environments.ENV]`: the `web` service runs as a Swarm service
    /// (a container service: give it an image or a Dockerfile with [`TestApp::driver`]).
    pub fn on_swarm(mut self, env: &str) -> TestApp {
        self.swarm.insert(env.to_owned());
        self
    }

    /// Adds a `worker` service: no route, no health check, the demo app's program.
    pub fn worker(mut self) -> TestApp {
        self.worker = true;
        self
    }

    /// Adds a raw line under `[routes.web]` (after `hosts`), such as `tls = "auto"` or
    /// `rate_limit = { per_ip = "20/s" }`.
    pub fn route_line(mut self, line: impl Into<String>) -> TestApp {
        self.route_lines.push(line.into());
        self
    }

    /// `[routes.web] hosts = HOSTS`.
    pub fn hosts(mut self, hosts: &[&str]) -> TestApp {
        self.hosts = Some(hosts.iter().map(|host| (*host).to_owned()).collect());
        self
    }

    /// `[environments.ENV] routes = { web = { hosts = HOSTS } }` (declares `env`).
    pub fn env_hosts(mut self, env: &str, hosts: &[&str]) -> TestApp {
        self.env_hosts.insert(
            env.to_owned(),
            hosts.iter().map(|host| (*host).to_owned()).collect(),
        );
        self
    }

    /// `kind = "canary"` with `steps` as the manifest writes them:
    /// `[{ weight = 20, pause = "3s" }, { weight = 100 }]`.
    pub fn canary(mut self, steps: impl Into<String>) -> TestApp {
        self.strategy = "canary".to_owned();
        self.steps = Some(steps.into());
        self
    }

    /// One more line in `[analysis]`, as the manifest writes it (`min_requests = 50`).
    pub fn analysis(mut self, line: impl Into<String>) -> TestApp {
        self.analysis.push(line.into());
        self
    }

    /// `[release] smoke`: a command run against the new instances before any traffic.
    pub fn smoke(mut self, command: impl Into<String>) -> TestApp {
        self.smoke = Some(command.into());
        self
    }

    /// `[environments.ENV] approval = true`.
    pub fn approval(mut self, env: &str) -> TestApp {
        self.approval.insert(env.to_owned());
        self
    }

    /// `[alerts] webhook = SECRET`: the secret that holds the webhook URL.
    pub fn alerts_webhook(mut self, secret: impl Into<String>) -> TestApp {
        self.alerts_webhook = Some(secret.into());
        self
    }

    /// `[environments.ENV] secrets = [NAMES]`: required, and handed to the app under their names.
    /// One line of the manifest's `[backup]` section (`keep = 2`, `remote = "s3://…"`).
    pub fn backup_line(mut self, line: impl Into<String>) -> TestApp {
        self.backup_lines.push(line.into());
        self
    }

    pub fn secrets(mut self, env: &str, names: &[&str]) -> TestApp {
        self.secrets.insert(
            env.to_owned(),
            names.iter().map(|name| (*name).to_owned()).collect(),
        );
        self
    }

    /// One feature flag in `[flags]` (the app sees `FLAG_NAME=true|false`).
    pub fn flag(mut self, name: impl Into<String>, on: bool) -> TestApp {
        let name = name.into();
        self.flags.retain(|(existing, _)| *existing != name);
        self.flags.push((name, on));
        self
    }

    /// `[build] command`.
    pub fn build(mut self, command: impl Into<String>) -> TestApp {
        self.build = Some(command.into());
        self
    }

    /// `[release] command`, and `backup` (the variable naming the database) when given.
    pub fn release(mut self, command: impl Into<String>, backup: Option<&str>) -> TestApp {
        self.release_command = Some(command.into());
        self.release_backup = backup.map(str::to_owned);
        self
    }

    /// `analysis.observe`, as the manifest writes it (`"10s"`).
    pub fn observe(mut self, observe: impl Into<String>) -> TestApp {
        self.observe = observe.into();
        self
    }

    /// `strategy.keep_warm`, as the manifest writes it (`"1s"`).
    pub fn keep_warm(mut self, keep_warm: impl Into<String>) -> TestApp {
        self.keep_warm = keep_warm.into();
        self
    }

    /// One more file in the app folder (`path` relative to it; part of the artifact).
    pub fn file(mut self, path: impl Into<String>, content: impl Into<String>) -> TestApp {
        self.files.insert(path.into(), content.into());
        self
    }

    /// `VERSION`: what `GET /` answers.
    pub fn version(mut self, version: impl Into<String>) -> TestApp {
        self.version = version.into();
        self
    }

    /// One more variable in `[env]` (`ERROR_RATE`, `CRASH_AFTER_S`, ...).
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> TestApp {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn replicas(mut self, replicas: u32) -> TestApp {
        self.replicas = replicas;
        self
    }

    /// `blue-green` or `rolling`.
    pub fn strategy(mut self, strategy: impl Into<String>) -> TestApp {
        self.strategy = strategy.into();
        self
    }

    /// Health answers 503 for this long after the app listens (`HEALTH_DELAY_S`).
    pub fn health_delay(self, delay: Duration) -> TestApp {
        let seconds = format!("{}", delay.as_secs_f64());
        self.env("HEALTH_DELAY_S", seconds)
    }

    /// `health.start_timeout`, as the manifest writes it (`"1s"`).
    pub fn start_timeout(mut self, timeout: impl Into<String>) -> TestApp {
        self.start_timeout = timeout.into();
        self
    }

    /// Replaces the command of the `web` service (default: the demo app's absolute path).
    pub fn run(mut self, command: impl Into<String>) -> TestApp {
        self.run = Some(command.into());
        self
    }

    /// Runs the `web` service with `driver` (see [`Driver`]).
    pub fn driver(mut self, driver: Driver) -> TestApp {
        self.driver = driver;
        self
    }

    /// `image = REFERENCE` for a container `web` service (instead of `dockerfile`).
    pub fn image(mut self, reference: impl Into<String>) -> TestApp {
        self.image = Some(reference.into());
        self
    }

    /// `[app] name` (default [`APP`]).
    pub fn named(mut self, name: impl Into<String>) -> TestApp {
        self.name = name.into();
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn version_str(&self) -> &str {
        &self.version
    }

    /// The manifest this app deploys with.
    pub fn manifest(&self) -> String {
        let source = match (self.driver, &self.image) {
            (Driver::Process, _) => {
                let run = self
                    .run
                    .clone()
                    .unwrap_or_else(|| demo_app_path().display().to_string());
                format!("run = {run:?}")
            }
            (Driver::Container, image) => {
                let mut source = match image {
                    Some(image) => format!("image = {image:?}"),
                    None => r#"dockerfile = "Dockerfile""#.to_owned(),
                };
                if let Some(run) = &self.run {
                    source.push_str(&format!("\nrun = {run:?}"));
                }
                source
            }
        };
        let mut text = format!(
            r#"[app]
name = {name:?}

[services.web]
{source}
replicas = {replicas}
health = {{ path = "/health", interval = "100ms", timeout = "1s", healthy = 2, start_timeout = {start_timeout:?} }}
drain = "2s"
stop_timeout = "2s"

[strategy]
kind = {strategy:?}
keep_warm = {keep_warm:?}
{steps}
[analysis]
observe = {observe:?}
{analysis}
[env]
VERSION = {version:?}
"#,
            name = self.name,
            replicas = self.replicas,
            start_timeout = self.start_timeout,
            strategy = self.strategy,
            keep_warm = self.keep_warm,
            observe = self.observe,
            steps = self
                .steps
                .as_ref()
                .map_or_else(String::new, |steps| format!("steps = {steps}\n")),
            analysis = self
                .analysis
                .iter()
                .map(|line| format!("{line}\n"))
                .collect::<String>(),
            version = self.version,
        );
        for (key, value) in &self.env {
            text.push_str(&format!("{key} = {value:?}\n"));
        }
        if let Some(build) = &self.build {
            text.push_str(&format!("\n[build]\ncommand = {build:?}\n"));
        }
        if self.release_command.is_some() || self.smoke.is_some() {
            text.push_str("\n[release]\n");
        }
        if let Some(command) = &self.release_command {
            text.push_str(&format!("command = {command:?}\n"));
            if let Some(backup) = &self.release_backup {
                text.push_str(&format!("backup = {backup:?}\n"));
            }
        }
        if let Some(smoke) = &self.smoke {
            text.push_str(&format!("smoke = {smoke:?}\n"));
        }
        if let Some(webhook) = &self.alerts_webhook {
            text.push_str(&format!("\n[alerts]\nwebhook = {webhook:?}\n"));
        }
        if !self.backup_lines.is_empty() {
            text.push_str("\n[backup]\n");
            for line in &self.backup_lines {
                text.push_str(line);
                text.push('\n');
            }
        }
        if !self.flags.is_empty() {
            text.push_str("\n[flags]\n");
            for (name, on) in &self.flags {
                text.push_str(&format!("{name} = {on}\n"));
            }
        }
        if self.worker {
            let run = self
                .worker_run
                .clone()
                .or_else(|| self.run.clone())
                .unwrap_or_else(|| demo_app_path().display().to_string());
            text.push_str(&format!(
                "\n[services.worker]\nrun = {run:?}\nstop_timeout = \"2s\"\n"
            ));
        }
        if self.hosts.is_some() || !self.route_lines.is_empty() {
            text.push_str("\n[routes.web]\n");
        }
        if let Some(hosts) = &self.hosts {
            text.push_str(&format!("hosts = {hosts:?}\n"));
        }
        for line in &self.route_lines {
            text.push_str(line);
            text.push('\n');
        }
        let envs: BTreeSet<&String> = self
            .secrets
            .keys()
            .chain(&self.approval)
            .chain(self.env_hosts.keys())
            .chain(&self.swarm)
            .collect();
        for extra in &self.extra {
            text.push('\n');
            text.push_str(extra);
            text.push('\n');
        }
        for env in envs {
            text.push_str(&format!("\n[environments.{env}]\n"));
            if self.swarm.contains(env) {
                text.push_str("driver = \"swarm\"\n");
            }
            if let Some(hosts) = self.env_hosts.get(env) {
                text.push_str(&format!("routes = {{ web = {{ hosts = {hosts:?} }} }}\n"));
            }
            if let Some(names) = self.secrets.get(env) {
                text.push_str(&format!("secrets = {names:?}\n"));
            }
            if self.approval.contains(env) {
                text.push_str("approval = true\n");
            }
        }
        text
    }

    /// Writes the folder (manifest and one file) and returns it.
    pub fn write(&self) -> PathBuf {
        std::fs::create_dir_all(&self.dir)
            .unwrap_or_else(|error| panic!("cannot create `{}`: {error}", self.dir.display()));
        let files = [
            ("rollway.toml".to_owned(), self.manifest()),
            ("README".to_owned(), format!("demo app {}\n", self.version)),
        ];
        let extra = self
            .files
            .iter()
            .map(|(name, text)| (name.clone(), text.clone()));
        for (name, text) in files.into_iter().chain(extra) {
            let path = self.dir.join(&name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|error| {
                    panic!("cannot create `{}`: {error}", parent.display())
                });
            }
            std::fs::write(&path, text)
                .unwrap_or_else(|error| panic!("cannot write `{}`: {error}", path.display()));
        }
        self.dir.clone()
    }
}

impl Ran {
    /// Panics with the whole transcript unless the exit code is `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Ran {
        assert_eq!(self.code, Some(code), "unexpected exit code:\n{self}");
        self
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "exit_code: {:?}\n----- stdout -----\n{}\n----- stderr -----\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// `rollway status --json` as JSON, with accessors for what tests compare.
#[derive(Debug, Clone)]
pub struct Status(pub serde_json::Value);

impl Status {
    pub fn current_release(&self) -> Option<u64> {
        self.0["current_release"].as_u64()
    }

    /// State of the latest deployment (`Succeeded`, `Failed`, ...), if any.
    pub fn deployment_state(&self) -> Option<&str> {
        self.0["deployment"]["state"].as_str()
    }

    pub fn deployment_reason(&self) -> Option<&str> {
        self.0["deployment"]["reason"].as_str()
    }

    pub fn deployment_finished(&self) -> bool {
        matches!(
            self.deployment_state(),
            Some("Succeeded" | "Failed" | "RolledBack")
        )
    }

    /// Instance id → state (`serving`, `warm`, `starting`, ...).
    pub fn instances(&self) -> BTreeMap<String, String> {
        self.0["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|instance| {
                Some((
                    instance["id"].as_str()?.to_owned(),
                    instance["state"].as_str()?.to_owned(),
                ))
            })
            .collect()
    }

    /// `(release, weight)` pairs.
    pub fn weights(&self) -> Vec<(u64, u64)> {
        self.0["weights"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|weight| Some((weight["release"].as_u64()?, weight["weight"].as_u64()?)))
            .collect()
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_string_pretty(&self.0).unwrap_or_default();
        f.write_str(&text)
    }
}

/// Runs `command` to its end, bounded by [`COMMAND_TIMEOUT`].
pub async fn run(mut command: Command) -> Ran {
    let described = format!("{:?}", command.as_std());
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("`{described}` ran longer than {COMMAND_TIMEOUT:?}"))
        .unwrap_or_else(|error| panic!("cannot run `{described}`: {error}"));
    Ran {
        code: output.status.code(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Every file under `dir` (recursively) whose bytes contain `needle`.
pub fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() && contains(&path, needle) => found.push(path),
                _ => {}
            }
        }
    }
    found.sort();
    found
}

/// One HTTP/1.1 request on a fresh connection (bounded by 10 s), answered as status and body.
/// Panics when there is no complete answer.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    use http_body_util::{BodyExt as _, Full};
    let exchange = async {
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(std::io::Error::other)?;
        let driver = tokio::spawn(connection);
        let mut request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, host);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request
            .body(Full::new(bytes::Bytes::from(body.to_owned())))
            .map_err(std::io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(std::io::Error::other)?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(std::io::Error::other)?
            .to_bytes();
        driver.abort();
        Ok::<_, std::io::Error>(Answer {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    };
    match tokio::time::timeout(Duration::from_secs(10), exchange).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(error)) => panic!("`{method} {path}` (Host `{host}`) to {addr} failed: {error}"),
        Err(_) => panic!("`{method} {path}` (Host `{host}`) to {addr}: no answer within 10s"),
    }
}

/// Hex SHA-256 of `value` (what the demo app's `/sha256/NAME` answers).
pub fn sha256_hex(value: impl AsRef<[u8]>) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(value.as_ref())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// `n_bytes` random bytes from the kernel, as hex (canary secrets, database names).
pub fn random_hex(n_bytes: usize) -> String {
    use std::io::Read as _;
    let mut bytes = vec![0u8; n_bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut file| file.read_exact(&mut bytes))
        .unwrap_or_else(|error| panic!("cannot read `/dev/urandom`: {error}"));
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Pids of every live process whose command line contains `needle`.
pub fn processes_with_cmdline_containing(needle: &str) -> Vec<u32> {
    all_pids()
        .filter(|pid| contains(Path::new(&format!("/proc/{pid}/cmdline")), needle))
        .collect()
}

fn contains(path: &Path, needle: &str) -> bool {
    std::fs::read(path).is_ok_and(|bytes| {
        bytes
            .windows(needle.len())
            .any(|window| window == needle.as_bytes())
    })
}

/// One process found in `/proc`.
#[derive(Debug, Clone)]
struct ProcessInfo {
    pid: u32,
    pgid: i32,
    /// `ROLLWAY_INSTANCE` from its environment.
    instance: Option<String>,
}

fn all_pids() -> impl Iterator<Item = u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
}

/// Live (not zombie) processes whose working directory is `dir` or below it.
fn processes_under(dir: &Path) -> Vec<ProcessInfo> {
    all_pids()
        .filter(|pid| cwd_of(*pid).is_some_and(|cwd| cwd.starts_with(dir)))
        .filter(|pid| is_alive(*pid))
        .filter_map(|pid| {
            let pgid = process_group(pid)?;
            let instance = std::fs::read(format!("/proc/{pid}/environ"))
                .ok()
                .and_then(|environ| {
                    environ.split(|byte| *byte == 0).find_map(|pair| {
                        pair.strip_prefix(b"ROLLWAY_INSTANCE=")
                            .map(|id| String::from_utf8_lossy(id).into_owned())
                    })
                });
            Some(ProcessInfo {
                pid,
                pgid,
                instance,
            })
        })
        .collect()
}

fn cwd_of(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// Fields after the command name in `/proc/PID/stat`: state, ppid, pgrp, ...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn process_group(pid: u32) -> Option<i32> {
    stat_fields(pid)?.get(2)?.parse().ok()
}

/// Exists and is not a zombie.
fn is_alive(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.first().is_some_and(|state| state != "Z"))
}

/// `instance id → pid` from `DIR/*/pid` files (`PID START_TIME`).
fn pid_files(dir: &Path) -> BTreeMap<String, u32> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Some(id) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if let Ok(text) = std::fs::read_to_string(entry.path().join("pid"))
            && let Some(pid) = first_number(&text)
        {
            found.insert(id, pid);
        }
    }
    found
}

fn first_number(text: &str) -> Option<u32> {
    text.split_whitespace().next()?.parse().ok()
}

fn kill_group_and_process(pid: u32, pgid: Option<i32>) {
    use rustix::process::{Pid, Signal, getpgrp, kill_process, kill_process_group};
    // A process being reaped may show a group of 0 or below: `Pid::from_raw` asserts it is not
    // negative.
    if let Some(group) = pgid.filter(|group| *group > 0).and_then(Pid::from_raw)
        && group.as_raw_nonzero().get() > 1
        && group != getpgrp()
    {
        let _ = kill_process_group(group, Signal::KILL);
    }
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .filter(|pid| *pid > 0)
        .and_then(Pid::from_raw)
    {
        let _ = kill_process(pid, Signal::KILL);
    }
}

/// The status code of one HTTP/1.1 exchange (`request` must ask for `Connection: close`).
async fn http_status(addr: SocketAddr, request: &str) -> std::io::Result<u16> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let answer = String::from_utf8_lossy(&answer);
        answer
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {answer:?}")))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .map_err(|_| std::io::Error::other("no answer within 10s"))?
}
