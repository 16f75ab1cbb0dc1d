//! The agent's link to its proxy: a separate `rollway proxy` process, started by the agent if none
//! answers on the control socket, and outliving the agent (as app instances do).
//!
//! The agent holds a duplicate of the proxy's data listeners (bound here, or taken from a running
//! proxy through `proxy::handover`), so when the proxy dies the sockets stay open and connections
//! wait in the backlog until the supervisor (`crate::proxy_supervisor`) has started the next one.
//!
//! The agent only ever sends the whole desired routing state; the proxy persists it before
//! applying it, so a proxy restarted without the agent still serves the last known routes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use proxy::DesiredState;
use proxy::control_client::ControlClient;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot start the proxy (`{exe} proxy`)")]
    Spawn {
        exe: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot listen on `{addr}` for the apps: {source}; stop what listens there, or give the agent another address with `--proxy ADDR`"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the proxy did not answer on `{socket}` within {seconds}s; see `{log}`")]
    NotReady {
        socket: String,
        seconds: u64,
        log: String,
    },
    #[error("the proxy exited at start ({status}): {last_line}; see `{log}`")]
    ExitedAtStart {
        status: String,
        last_line: String,
        log: String,
    },
    #[error("the proxy refused the routing update: {0}")]
    Control(String),
}

/// How the proxy process is doing, as its supervisor sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHealth {
    Serving,
    /// It exited; a new one is being started.
    Restarting,
    /// It exited and could not be started again (the supervisor keeps trying).
    Down,
}

/// What the supervisor knows of the proxy process.
#[derive(Debug, Clone)]
pub struct ProxyStatus {
    pub health: ProxyHealth,
    pub pid: Option<u32>,
    pub listen: SocketAddr,
    /// Restarts since this agent started.
    pub restarts: u64,
    /// How the last proxy process ended, when one did.
    pub last_exit: Option<String>,
    /// Whether this agent holds the data listeners (so a proxy restart refuses no connection).
    pub holds_listeners: bool,
}

/// Where the proxy process keeps its files, how to reach it, and what this agent holds of it.
#[derive(Clone)]
pub struct ProxyLink {
    pub dir: PathBuf,
    pub socket: PathBuf,
    client: ControlClient,
    shared: Arc<Shared>,
}

struct Shared {
    /// The data listeners, duplicated from the ones the proxy serves on: while the agent holds
    /// them, a connection arriving while no proxy runs waits in the backlog. Set once at start.
    listeners: OnceLock<Arc<Vec<OwnedFd>>>,
    /// std Mutex: short reads and writes of the status, never held across an await.
    status: Mutex<ProxyStatus>,
    /// Exit statuses of proxies this agent started (it is their parent and reaps them), by pid.
    /// std Mutex: inserts by the reaping threads, reads by the supervisor.
    exits: Mutex<BTreeMap<u32, std::process::ExitStatus>>,
    /// How proxies are started, set at start.
    command: OnceLock<ProxyCommand>,
    /// Held while a proxy is replaced on purpose (an upgrade), so the supervisor does not take the
    /// old one's exit for a crash. tokio Mutex: held across the whole hand-over.
    replacing: tokio::sync::Mutex<()>,
    /// The last desired state the proxy accepted: what following proxies (`rollway proxy
    /// --follow`, `GET /v1/proxy/state`) apply. `None` until the first push.
    published: tokio::sync::watch::Sender<Option<Arc<DesiredState>>>,
    /// The last TLS set (certificates with their keys, ACME challenge answers) the proxy accepted:
    /// what following proxies serve on their HTTPS listeners. In memory only, like the proxy's.
    published_tls: tokio::sync::watch::Sender<Option<Arc<PublishedTls>>>,
    /// What following proxies reported of their counters. std Mutex: never held across an await.
    followers: Mutex<crate::ingress::Followers>,
}

/// A TLS set the agent's proxy accepted, as following proxies get it (`GET /v1/proxy/state`).
pub type PublishedTls = client::wire::ProxyTls<proxy::tls::TlsState>;

/// How a proxy process begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// No proxy runs: a fresh one.
    Fresh,
    /// A hot restart: the new one takes over from the running one, which drains and exits.
    Takeover,
}

/// Says at which priority a proxy the agent raised runs: the child cannot log whether raising
/// worked (it needs `CAP_SYS_NICE`).
fn log_priority(pid: u32) {
    match driver::priority::observe(pid) {
        Ok(observed) if observed.raised() => {
            tracing::info!(message = "The proxy runs above the apps' priority.", priority = %observed.describe());
        }
        Ok(observed) => {
            tracing::warn!(message = "The proxy could not raise its priority (it needs CAP_SYS_NICE); busy apps compete with it as equals.", priority = %observed.describe());
        }
        Err(error) => {
            tracing::debug!(message = "Cannot read the proxy's priority.", %error);
        }
    }
}

/// How to start a proxy process.
#[derive(Debug, Clone)]
pub struct ProxyCommand {
    pub exe: PathBuf,
    pub listen: SocketAddr,
    pub metrics: Option<SocketAddr>,
    /// The TLS listener, if any; held and handed over with the plain one.
    pub https: Option<SocketAddr>,
    /// The proxy's own cgroup (the agent's CPU placement), joined before exec; `None` leaves it in
    /// the agent's.
    pub cgroup: Option<driver::cgroup::Group>,
    /// Whether the proxy raises its scheduling priority before exec (`driver::priority`): the
    /// placement's fallback where no cgroup weights the proxy above the apps.
    pub raise_priority: bool,
}

impl ProxyLink {
    pub fn new(dir: PathBuf, listen: SocketAddr) -> ProxyLink {
        let socket = dir.join(proxy::control_socket::SOCKET_FILE_NAME);
        ProxyLink {
            client: ControlClient::new(socket.clone()),
            dir,
            socket,
            shared: Arc::new(Shared {
                listeners: OnceLock::new(),
                status: Mutex::new(ProxyStatus {
                    health: ProxyHealth::Down,
                    pid: None,
                    listen,
                    restarts: 0,
                    last_exit: None,
                    holds_listeners: false,
                }),
                exits: Mutex::new(BTreeMap::new()),
                command: OnceLock::new(),
                replacing: tokio::sync::Mutex::new(()),
                published: tokio::sync::watch::Sender::new(None),
                published_tls: tokio::sync::watch::Sender::new(None),
                followers: Mutex::new(crate::ingress::Followers::default()),
            }),
        }
    }

    /// At agent start: adopts a proxy that answers (and takes a copy of its listeners), or binds the
    /// data listeners here and starts a proxy on them. A taken address is an error, not a warning in
    /// a log nobody reads. Returns the address the apps are served on.
    pub async fn start(&self, command: &ProxyCommand) -> Result<SocketAddr, LinkError> {
        if let Ok(health) = self.client.healthz().await {
            let listen = health.listen.unwrap_or(command.listen);
            let https = health.https.or(command.https);
            let path = self.dir.join(proxy::handover::LISTENERS_FILE_NAME);
            let fetched = tokio::task::spawn_blocking(move || {
                proxy::handover::fetch(&path, Duration::from_secs(2))
            })
            .await
            .map_err(std::io::Error::other)
            .and_then(|fetched| fetched);
            match fetched {
                Ok(fds) => {
                    let _ = self.shared.listeners.set(Arc::new(fds));
                }
                Err(error) => tracing::warn!(
                    message = "The running proxy did not hand over its listeners; a proxy crash will refuse connections until it is back.",
                    %error
                ),
            }
            self.set_status(|status| {
                status.health = ProxyHealth::Serving;
                status.pid = Some(health.pid);
                status.listen = listen;
            });
            let _ = self.shared.command.set(ProxyCommand {
                listen,
                https,
                ..command.clone()
            });
            // A proxy started before this agent had a placement (an upgrade) moves in now.
            if let Some(group) = &command.cgroup
                && let Err(error) = group.add(health.pid)
            {
                tracing::warn!(message = "Cannot move the running proxy into its cgroup; it stays where it is.", error = %crate::report::chain(&error));
            }
            if command.https.is_some() && health.https.is_none() {
                tracing::warn!(
                    message = "The running proxy has no HTTPS listener; `rollway proxy upgrade` after stopping it, or restart it, to serve HTTPS."
                );
            }
            return Ok(listen);
        }
        let listeners =
            proxy::workers::DataListeners::bind(command.listen, proxy::workers::default_workers())
                .map_err(|source| LinkError::Bind {
                    addr: command.listen,
                    source,
                })?;
        let listen = listeners.local_addr();
        let mut fds = listeners.duplicate().map_err(|source| LinkError::Bind {
            addr: command.listen,
            source,
        })?;
        drop(listeners);
        let mut https = None;
        if let Some(addr) = command.https {
            let tls = proxy::workers::DataListeners::bind(addr, proxy::workers::default_workers())
                .map_err(|source| LinkError::Bind { addr, source })?;
            https = Some(tls.local_addr());
            fds.extend(
                tls.duplicate()
                    .map_err(|source| LinkError::Bind { addr, source })?,
            );
        }
        let _ = self.shared.listeners.set(Arc::new(fds));
        self.set_status(|status| status.listen = listen);
        let command = ProxyCommand {
            listen,
            https,
            ..command.clone()
        };
        let _ = self.shared.command.set(command.clone());
        self.spawn(&command, Launch::Fresh).await?;
        Ok(listen)
    }

    /// How proxies are started (set by `start`).
    pub fn command(&self) -> Option<ProxyCommand> {
        self.shared.command.get().cloned()
    }

    /// Whether the running proxy was started from another file than the agent's binary (an upgrade
    /// installed since): compares `proxy::process::binary_identity` of both.
    pub async fn runs_other_binary(&self) -> bool {
        let Some(command) = self.command() else {
            return false;
        };
        let ours = proxy::process::binary_identity(&command.exe);
        match self.client.healthz().await {
            Ok(health) => ours.is_some() && health.binary.is_some() && health.binary != ours,
            Err(_) => false,
        }
    }

    /// A hot restart: a new proxy of the agent's binary takes the listeners, the routing and the
    /// counters over from the running one, which stops accepting, drains and exits. No connection is
    /// refused meanwhile. Returns the new pid.
    pub async fn upgrade(&self) -> Result<u32, LinkError> {
        let command = self.command().ok_or_else(|| LinkError::Spawn {
            exe: "rollway".to_owned(),
            source: std::io::Error::other("the proxy was never started by this agent"),
        })?;
        let _replacing = self.shared.replacing.lock().await;
        self.spawn(&command, Launch::Takeover).await
    }

    /// Taken by the supervisor before it acts on an exit: an upgrade in progress finishes first.
    pub async fn wait_replacement(&self) {
        let _ = self.shared.replacing.lock().await;
    }

    /// Starts a proxy process, detached (its own process group, no pipe to the agent: a kill -9 of the
    /// agent leaves it serving), on the held listeners when there are any, and waits until it answers.
    pub async fn spawn(&self, command: &ProxyCommand, launch: Launch) -> Result<u32, LinkError> {
        let exe = command.exe.display().to_string();
        let spawn_error = |source| LinkError::Spawn {
            exe: exe.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(spawn_error)?;
        let log_path = self.dir.join("proxy.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(spawn_error)?;
        let log_err = log.try_clone().map_err(spawn_error)?;
        #[allow(
            clippy::disallowed_methods,
            reason = "the proxy is Rollway's own process, not an app instance"
        )]
        let mut process = std::process::Command::new(&command.exe);
        process
            .arg("proxy")
            .arg("--state")
            .arg(&self.dir)
            .arg("--listen")
            .arg(command.listen.to_string())
            // The remote's credentials of `--state-backup-schedule` are the agent's alone.
            .env_remove(crate::backup::agent_state::ACCESS_KEY_VAR)
            .env_remove(crate::backup::agent_state::SECRET_KEY_VAR)
            .stdout(log)
            .stderr(log_err);
        if let Some(metrics) = command.metrics {
            process.arg("--metrics").arg(metrics.to_string());
        }
        if let Some(https) = command.https {
            process.arg("--https").arg(https.to_string());
        }
        if launch == Launch::Takeover {
            process.arg("--takeover");
        }
        // The listeners cross on a socket pair that is the child's stdin: std places it at fd 0 in
        // the child only, so no app instance started meanwhile can inherit a listener.
        let handover = match self.shared.listeners.get() {
            Some(fds) => {
                let (ours, theirs) = UnixStream::pair().map_err(spawn_error)?;
                process
                    .arg("--listeners-on-stdin")
                    .stdin(std::process::Stdio::from(OwnedFd::from(theirs)));
                Some((ours, fds.clone()))
            }
            None => {
                process.stdin(std::process::Stdio::null());
                None
            }
        };
        // The proxy leads a session of its own (so its own process group too): a terminal's
        // signals to the agent's group (Ctrl-C on `rollway agent` or `rollway up`) and the app
        // instances' sessions never reach it, and `ps -j` shows it apart from what it proxies to.
        // Under a CPU placement it also joins the proxy's cgroup (weighted above the apps'), so
        // busy apps cannot starve it; threads it starts later are in it from the start.
        let joiner = match command.cgroup.as_ref().map(driver::cgroup::Group::joiner) {
            Some(Ok(joiner)) => Some(joiner),
            Some(Err(error)) => {
                tracing::warn!(message = "Cannot place the proxy in its cgroup; it runs in the agent's.", error = %crate::report::chain(&error));
                None
            }
            None => None,
        };
        // Where no cgroup weights it, the proxy raises its own priority (after `setsid`, so the
        // session autogroup it raises is its own, never the agent's and the apps').
        let raise_priority = command.raise_priority;
        // SAFETY: the closure runs in the forked child before exec and only makes the setsid(2)
        // system call, one write(2) of a constant to a descriptor opened before the fork, and
        // `driver::priority::raise_proxy` (setpriority(2), open(2)/write(2)/close(2) of constants),
        // all async-signal-safe; it allocates nothing and takes no lock.
        #[allow(unsafe_code)]
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut process, move || {
                rustix::process::setsid()
                    .map(drop)
                    .map_err(std::io::Error::from)?;
                if let Some(joiner) = &joiner {
                    joiner.join()?;
                }
                if raise_priority {
                    driver::priority::raise_proxy();
                }
                Ok(())
            });
        }
        let mut child = process.spawn().map_err(spawn_error)?;
        // The child has its end now; drop ours of it so a dead child is seen as a closed socket.
        drop(process);
        let pid = child.id();
        if raise_priority {
            log_priority(pid);
        }
        if let Some((ours, fds)) = handover {
            let borrowed: Vec<_> = fds.iter().map(AsFd::as_fd).collect();
            if let Err(source) = proxy::handover::send(&ours, &borrowed) {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_error(source));
            }
        }
        let wait = Duration::from_secs(15);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Ok(health) = self.client.healthz().await
                && health.pid == pid
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(LinkError::ExitedAtStart {
                    status: describe_exit(status),
                    last_line: last_line(&log_path),
                    log: log_path.display().to_string(),
                });
            }
            if tokio::time::Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LinkError::NotReady {
                    socket: self.socket.display().to_string(),
                    seconds: wait.as_secs(),
                    log: log_path.display().to_string(),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Reap it when it exits while this agent lives (the supervisor reads the status); after
        // the agent is gone it is adopted by init.
        let shared = self.shared.clone();
        std::thread::spawn(move || {
            if let Ok(status) = child.wait()
                && let Ok(mut exits) = shared.exits.lock()
            {
                exits.insert(pid, status);
            }
        });
        self.set_status(|status| {
            status.health = ProxyHealth::Serving;
            status.pid = Some(pid);
            status.holds_listeners = self.shared.listeners.get().is_some();
        });
        Ok(pid)
    }

    /// Waits until the proxy process `pid` has exited, and says how it ended when this agent is its
    /// parent. Returns at once when it is already gone.
    pub async fn wait_exit(&self, pid: u32) -> String {
        match wait_for_exit(pid).await {
            Ok(()) => {}
            Err(error) => {
                // No pidfd (an old kernel): ask the proxy itself, often.
                tracing::debug!(message = "pidfd unavailable; polling the proxy.", %error);
                loop {
                    match self.client.healthz().await {
                        Ok(health) if health.pid == pid => {}
                        _ => break,
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        // The reaping thread may need a moment to record the status.
        for _ in 0..20 {
            if let Some(status) = self
                .shared
                .exits
                .lock()
                .ok()
                .and_then(|mut exits| exits.remove(&pid))
            {
                return describe_exit(status);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        "exited (it was started by an earlier agent, so its exit status is unknown)".to_owned()
    }

    pub fn status(&self) -> ProxyStatus {
        self.shared
            .status
            .lock()
            .map(|status| status.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    pub fn set_status(&self, edit: impl FnOnce(&mut ProxyStatus)) {
        let mut status = self
            .shared
            .status
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        status.holds_listeners = self.shared.listeners.get().is_some();
        edit(&mut status);
    }

    /// Replaces the certificates and challenge answers the proxy serves (over the 0600 control
    /// socket); once it accepted them, following proxies get them too (`GET /v1/proxy/state`, a
    /// proxy-role token, over TLS beyond loopback): the only ways a private key leaves the agent.
    pub async fn put_tls(&self, state: &proxy::tls::TlsState) -> Result<(), LinkError> {
        self.client
            .put_tls(state)
            .await
            .map_err(|error| LinkError::Control(error.to_string()))?;
        self.shared.published_tls.send_if_modified(|published| {
            if published.as_deref().map(|published| &published.set) == Some(state) {
                return false;
            }
            let generation = published.as_deref().map_or_else(
                || {
                    let since_epoch = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default();
                    u64::try_from(since_epoch.as_millis()).unwrap_or(u64::MAX)
                },
                |published| published.generation.saturating_add(1),
            );
            *published = Some(Arc::new(PublishedTls {
                generation,
                set: state.clone(),
            }));
            true
        });
        Ok(())
    }

    /// Waits until every following proxy that reported lately serves the TLS set published now
    /// (or a newer one), at most `patience`; `false` when some did not in time (named in the log).
    /// The ACME challenges wait for it, so a validation reaching any ingress node finds its answer.
    pub async fn followers_have_tls(&self, patience: Duration) -> bool {
        let Some(generation) = self
            .shared
            .published_tls
            .borrow()
            .as_deref()
            .map(|published| published.generation)
        else {
            return true;
        };
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            let behind = self
                .followers()
                .behind_tls(generation, std::time::Instant::now());
            if behind.is_empty() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    message = "Some following proxies did not take the newest certificates and challenge answers in time.",
                    behind = ?behind.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    waited_ms = u64::try_from(patience.as_millis()).unwrap_or(u64::MAX),
                );
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Puts the whole desired state to the proxy; once it accepted it, following proxies get it too.
    pub async fn put_state(&self, desired: &DesiredState) -> Result<(), LinkError> {
        self.client
            .put_state(desired)
            .await
            .map_err(|error| LinkError::Control(error.to_string()))?;
        self.shared.published.send_if_modified(|published| {
            if published.as_deref() == Some(desired) {
                return false;
            }
            *published = Some(Arc::new(desired.clone()));
            true
        });
        Ok(())
    }

    /// The desired states the proxy accepted, the last one first (`None` before the first push).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Arc<DesiredState>>> {
        self.shared.published.subscribe()
    }

    /// The TLS sets the proxy accepted, the last one first (`None` before the first push).
    pub fn subscribe_tls(&self) -> tokio::sync::watch::Receiver<Option<Arc<PublishedTls>>> {
        self.shared.published_tls.subscribe()
    }

    /// Takes a following proxy's counters (`POST /v1/proxy/report`).
    pub fn follower_report(
        &self,
        report: client::wire::ProxyReport<proxy::ObservedReleaseStats>,
    ) -> Result<(), crate::ingress::TooManyFollowers> {
        self.followers().report(report, std::time::Instant::now())
    }

    /// The following proxies that reported lately.
    pub fn followers_seen(&self) -> Vec<crate::ingress::FollowerSeen> {
        self.followers().seen(std::time::Instant::now())
    }

    /// Per-release counters of every proxy: this agent's own, plus what following proxies
    /// reported (`crate::ingress`), summed per release. The one reading of traffic counters for
    /// the analysis, alerts and `/metrics`. Fails when the agent's own proxy does not answer.
    pub async fn stats(
        &self,
    ) -> Result<Vec<proxy::ObservedReleaseStats>, proxy::control_client::ControlClientError> {
        let local = self.client.stats().await?;
        let remote = self.followers().readings(std::time::Instant::now());
        if remote.is_empty() {
            return Ok(local);
        }
        Ok(proxy::sum_stats(local.iter().chain(remote.iter())))
    }

    fn followers(&self) -> std::sync::MutexGuard<'_, crate::ingress::Followers> {
        self.shared
            .followers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Ids of every instance the proxy still holds (ready or draining).
    pub async fn observed_instances(&self) -> Result<BTreeSet<String>, LinkError> {
        let observed = self
            .client
            .state()
            .await
            .map_err(|error| LinkError::Control(error.to_string()))?;
        Ok(observed
            .routes
            .into_iter()
            .flat_map(|route| route.instances)
            .map(|instance| instance.id)
            .collect())
    }

    pub fn client(&self) -> &ControlClient {
        &self.client
    }
}

/// Resolves when process `pid` has exited (a pidfd becomes readable then); works for processes this
/// agent did not start, such as a proxy adopted after an agent restart.
async fn wait_for_exit(pid: u32) -> std::io::Result<()> {
    let raw = i32::try_from(pid).map_err(std::io::Error::other)?;
    let pid = rustix::process::Pid::from_raw(raw)
        .ok_or_else(|| std::io::Error::other("pid 0 is not a process"))?;
    let pidfd = match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::NONBLOCK) {
        Ok(pidfd) => pidfd,
        // Already gone.
        Err(rustix::io::Errno::SRCH) => return Ok(()),
        Err(errno) => return Err(errno.into()),
    };
    // The replacement (`register_with_interest`) is `unsafe`; the worry behind the deprecation is a
    // `T` that does not own its descriptor, and an `OwnedFd` owns it for the `AsyncFd`'s whole life.
    #[allow(
        deprecated,
        reason = "an OwnedFd upholds the I/O safety the deprecation is about"
    )]
    let pidfd = tokio::io::unix::AsyncFd::with_interest(pidfd, tokio::io::Interest::READABLE)?;
    let _ready = pidfd.readable().await?;
    Ok(())
}

fn describe_exit(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => format!("ended ({status})"),
    }
}

/// The last non-empty line of a log file, for an error message.
fn last_line(path: &Path) -> String {
    use std::io::{Read as _, Seek as _};
    const TAIL: u64 = 4096;
    std::fs::File::open(path)
        .and_then(|mut file| {
            let len = file.metadata()?.len();
            file.seek(std::io::SeekFrom::Start(len.saturating_sub(TAIL)))?;
            let mut bytes = Vec::new();
            file.read_to_end(&mut bytes)?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        })
        .ok()
        .and_then(|text| {
            text.lines()
                .rev()
                .find(|line| !line.trim().is_empty())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "no output".to_owned())
}
