//! Starting the `demo-app` binary as a child process for tests: builder, readiness wait, signals, kill on drop.
//!
//! It does not deploy or proxy anything; it only owns one process. The app's behaviour (errors,
//! latency, delays, crashes) is documented in `src/bin/demo-app.rs`.

use std::io::{self, BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long [`DemoApp::spawn`] waits for the app to listen.
pub const SPAWN_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Builder for one `demo-app` process.
///
/// ```no_run
/// # fn main() -> std::io::Result<()> {
/// let app = testkit::demo::DemoApp::new().version("v1").env("ERROR_RATE", "0.1").spawn()?;
/// println!("listening on {}", app.addr());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default)]
pub struct DemoApp {
    version: Option<String>,
    env: Vec<(String, String)>,
    port: Option<u16>,
}

/// A running `demo-app`. Dropping it kills the process (SIGKILL) and reaps it.
#[derive(Debug)]
pub struct DemoProcess {
    child: Child,
    port: u16,
    /// Set once the child has been reaped, so signals are never sent to a reused pid.
    exit_status: Option<ExitStatus>,
    /// Lines the app printed on stdout (one JSON object per lifecycle event), in order.
    // std Mutex: the critical sections are a push or a clone, never held across a wait.
    events: Arc<Mutex<Vec<String>>>,
}

impl DemoApp {
    pub fn new() -> DemoApp {
        DemoApp::default()
    }

    /// Sets `VERSION`: the body of `GET /` and the `x-version` header of every answer.
    pub fn version(mut self, version: impl Into<String>) -> DemoApp {
        self.version = Some(version.into());
        self
    }

    /// Sets one environment variable of the app (`ERROR_RATE`, `HEALTH_DELAY_S`, or any other).
    ///
    /// Later calls win; these are applied after `PORT` and `VERSION`, so tests can also set bad values.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> DemoApp {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Sets the port; by default a free one is picked (bind `127.0.0.1:0`, then release it).
    pub fn port(mut self, port: u16) -> DemoApp {
        self.port = Some(port);
        self
    }

    /// Starts the app and, unless `START_DELAY_S` was set, waits up to [`SPAWN_READY_TIMEOUT`]
    /// until it listens (its `listening` event is printed and the port accepts connections).
    pub fn spawn(self) -> io::Result<DemoProcess> {
        let port = match self.port {
            Some(port) => port,
            None => free_port()?,
        };
        let path = demo_app_path();
        let mut command = Command::new(&path);
        // The test runner's own environment must not leak app settings into the child.
        for name in DEMO_APP_VARIABLES {
            command.env_remove(name);
        }
        command.env("PORT", port.to_string());
        if let Some(version) = &self.version {
            command.env("VERSION", version);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot start demo app `{}`: {error}", path.display()),
                )
            })?;

        let events = Arc::new(Mutex::new(Vec::new()));
        if let Some(stdout) = child.stdout.take() {
            let events = Arc::clone(&events);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    lock(&events).push(line);
                }
            });
        }

        let mut process = DemoProcess {
            child,
            port,
            exit_status: None,
            events,
        };
        let delayed_start = self
            .env
            .iter()
            .any(|(key, value)| key == "START_DELAY_S" && !value.is_empty());
        if !delayed_start {
            process.wait_ready(SPAWN_READY_TIMEOUT)?;
        }
        Ok(process)
    }
}

impl DemoProcess {
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The stdout lines printed so far, one JSON object per lifecycle event
    /// (`starting`, `listening`, `sigterm`, `draining`, `stopped`, `crash`).
    pub fn events(&self) -> Vec<String> {
        lock(&self.events).clone()
    }

    /// Sends SIGKILL and reaps the process. Does nothing if it has already exited and been reaped.
    pub fn kill9(&mut self) -> io::Result<()> {
        if self.exit_status.is_some() {
            return Ok(());
        }
        self.child.kill().map_err(|error| {
            io::Error::new(
                error.kind(),
                format!("cannot SIGKILL demo app pid {}: {error}", self.child.id()),
            )
        })?;
        self.exit_status = Some(self.child.wait()?);
        Ok(())
    }

    /// Sends SIGTERM without waiting; see [`DemoProcess::wait_exit`].
    pub fn terminate(&self) -> io::Result<()> {
        let pid = self.child.id();
        if self.exit_status.is_some() {
            return Err(io::Error::other(format!(
                "cannot SIGTERM demo app pid {pid}: it has already exited"
            )));
        }
        let raw_pid = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw);
        let Some(raw_pid) = raw_pid else {
            return Err(io::Error::other(format!(
                "cannot SIGTERM demo app: pid {pid} is not a positive i32"
            )));
        };
        rustix::process::kill_process(raw_pid, rustix::process::Signal::TERM).map_err(|error| {
            io::Error::other(format!("cannot SIGTERM demo app pid {pid}: {error}"))
        })
    }

    /// Waits until the app has printed its `listening` event and its port accepts a connection.
    ///
    /// Fails at once if the process exits first, and after `timeout` otherwise.
    pub fn wait_ready(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        let addr = self.addr();
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Err(io::Error::other(format!(
                    "demo app pid {} exited ({status}) before listening on `{addr}`; events: {:?}",
                    self.child.id(),
                    self.events(),
                )));
            }
            if self.has_event("listening")
                && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "demo app pid {} did not listen on `{addr}` within {timeout:?}; events: {:?}",
                        self.child.id(),
                        self.events(),
                    ),
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Waits up to `timeout` for the process to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> io::Result<ExitStatus> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status()? {
                return Ok(status);
            }
            if std::time::Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "demo app pid {} still running after {timeout:?}; events: {:?}",
                        self.child.id(),
                        self.events(),
                    ),
                ));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    pub fn try_exit_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.exit_status.is_none() {
            self.exit_status = self.child.try_wait()?;
        }
        Ok(self.exit_status)
    }

    fn has_event(&self, name: &str) -> bool {
        let needle = format!("\"event\":\"{name}\"");
        lock(&self.events).iter().any(|line| line.contains(&needle))
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        // Errors are moot here: the process is gone either way, or already was.
        let _ = self.kill9();
    }
}

/// Path of the `demo-app` binary, building it once if needed.
///
/// In order: the `CARGO_BIN_EXE_demo-app` env var; `demo-app` in the profile directory of the
/// running test (`target/debug/deps/it-xxxx` → `target/debug/demo-app`) unless `demo-app.rs` is
/// newer than it; otherwise `cargo build -p testkit --bin demo-app` into that target directory,
/// run at most once per process.
/// Panics with the reason when none of these yields a binary.
pub fn demo_app_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(locate_demo_app).clone()
}

/// A port that was free a moment ago on 127.0.0.1 (bound to port 0, then released).
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|error| {
        io::Error::new(error.kind(), format!("cannot bind `127.0.0.1:0`: {error}"))
    })?;
    Ok(listener.local_addr()?.port())
}

/// Every variable `demo-app` reads; cleared from the inherited environment before spawning.
const DEMO_APP_VARIABLES: [&str; 11] = [
    "PORT",
    "HOST",
    "VERSION",
    "HEALTH_PATH",
    "ERROR_RATE",
    "LATENCY_MS",
    "START_DELAY_S",
    "HEALTH_DELAY_S",
    "CRASH_AFTER_S",
    "IGNORE_SIGTERM_S",
    "BAD_AFTER_S",
];

const POLL_INTERVAL: Duration = Duration::from_millis(20);

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic in the reader thread cannot leave a Vec<String> half-written; keep going.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn locate_demo_app() -> PathBuf {
    if let Some(path) = std::env::var_os("CARGO_BIN_EXE_demo-app") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe()
        .unwrap_or_else(|error| panic!("cannot locate demo-app: current_exe failed: {error}"));
    let Some(exe_dir) = exe.parent() else {
        panic!(
            "cannot locate demo-app: `{}` has no parent directory",
            exe.display()
        );
    };
    let profile_dir = if exe_dir.file_name().is_some_and(|name| name == "deps") {
        exe_dir.parent().unwrap_or(exe_dir)
    } else {
        exe_dir
    };
    let candidate = profile_dir.join(format!("demo-app{}", std::env::consts::EXE_SUFFIX));
    if candidate.is_file() && !is_older_than_source(&candidate) {
        return candidate;
    }
    build_demo_app(profile_dir);
    if !candidate.is_file() {
        panic!(
            "cannot locate demo-app: `cargo build -p testkit --bin demo-app` succeeded but `{}` \
             does not exist; set `CARGO_BIN_EXE_demo-app` to the binary's path",
            candidate.display()
        );
    }
    candidate
}

/// True when `demo-app.rs` changed after `binary` was built (another crate's tests would run a
/// stale app otherwise). Unknown modification times count as fresh.
fn is_older_than_source(binary: &Path) -> bool {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/bin/demo-app.rs");
    let modified = |path: &Path| std::fs::metadata(path).and_then(|metadata| metadata.modified());
    match (modified(binary), modified(&source)) {
        (Ok(built), Ok(edited)) => built < edited,
        _ => false,
    }
}

fn build_demo_app(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let mut command = Command::new(&cargo);
    command
        .args([
            "build",
            "-p",
            "testkit",
            "--bin",
            "demo-app",
            "--manifest-path",
        ])
        .arg(&manifest);
    if let Some(target_dir) = profile_dir.parent() {
        command.arg("--target-dir").arg(target_dir);
    }
    // Cargo names the directory of the `dev` profile `debug`; every other profile keeps its name.
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") | None => {}
        Some(profile) => {
            command.args(["--profile", profile]);
        }
    }
    match command.status() {
        Ok(status) if status.success() => {}
        Ok(status) => panic!("cannot build demo-app: `{command:?}` failed ({status})"),
        Err(error) => panic!("cannot build demo-app: cannot run `{command:?}`: {error}"),
    }
}

#[cfg(test)]
mod tests;
