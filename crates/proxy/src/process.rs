//! The proxy as its own long-lived process (`rollway proxy --state DIR --listen ADDR`): reloads its last
//! routing, serves the data plane, takes the agent's updates on a Unix control socket, and stops
//! gracefully on SIGTERM.
//!
//! It parses no arguments and reads no environment: the binary hands it a `ProcessConfig`.
//!
//! The state directory holds `routes.json` (the last desired state accepted), `proxy.sock` (the control
//! socket, mode 0600) and `proxy.pid` (the process id, locked while the process lives).
//!
//! What survives what:
//! - The agent crashing, being killed (-9) or upgraded: everything. The proxy is not the agent's child in
//!   any way that matters (the agent starts it in its own process group); it keeps routing with its last
//!   state, and the restarted agent puts its full desired state again, which changes nothing when nothing
//!   changed.
//! - The proxy stopping (SIGTERM): requests in flight finish within `shutdown_timeout`. When it was
//!   started on handed-over listeners (`ProcessConfig::listeners`, as the agent does), the sockets stay
//!   open in their holder and new connections wait in the backlog for the next proxy; a proxy that bound
//!   its own listeners refuses new connections from the signal on. On its next start the routing comes
//!   back from `routes.json`, ready instances ready at once.
//! - The proxy killed (-9) or the host rebooting: the routing, from `routes.json` (saved before each
//!   change took effect); with a holder of the listeners, no connection is refused meanwhile. Lost: requests in flight, per-release counters (they restart at zero, so a reader
//!   must treat a smaller count as a restart), passive-health marks, and drains in progress (the leaving
//!   instances are simply not in `routes.json`, so they get no new request). An instance that died
//!   meanwhile is taken out by passive health on the first refused connection.
//! - A refused `PUT /v1/state`: nothing is saved and nothing changes.

use std::fs;
use std::io::{self, Read, Seek, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UnixListener};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::ProxyConfig;
use crate::control::Proxy;
use crate::control_client::ControlClient;
use crate::control_socket::{Health, SOCKET_FILE_NAME, serve_control};
use crate::desired::{self, ApplyError};
use crate::observed::ObservedState;
use crate::routes_file::{RoutesFile, RoutesFileError};
use crate::workers::DataListeners;

/// The pid file's name inside the state directory; it is also the lock that keeps a second proxy out.
pub const PID_FILE_NAME: &str = "proxy.pid";

/// How long an existing socket gets to answer before it is taken for stale.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a successor waits for a retiring proxy to give up its pid file.
const TAKEOVER_WAIT: Duration = Duration::from_secs(10);

/// Everything one proxy process needs.
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Created (mode 0700) when missing.
    pub state_dir: PathBuf,
    /// The data listener (port 0 picks one; `GET /healthz` tells which).
    pub listen: SocketAddr,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The TLS listener (HTTPS with the certificates the agent sends, `crate::tls`), if any. Handed
    /// over with the plain one: the handed-over sockets on this address serve TLS.
    pub https: Option<SocketAddr>,
    pub config: ProxyConfig,
    /// Data-plane worker threads, each with its own runtime and `SO_REUSEPORT` listener
    /// (`crate::workers`); one per core by default.
    pub workers: usize,
    /// After SIGTERM (or `shutdown`): how long requests in flight get to finish before the process
    /// returns anyway.
    pub shutdown_timeout: Duration,
    /// Data listeners handed over by the process that holds them (the agent, see `crate::handover`);
    /// `None` binds `listen` here. One worker per listener.
    pub listeners: Option<Arc<Vec<OwnedFd>>>,
    /// A hot restart: take over from the proxy running on this state directory (its listeners when
    /// none are given, then its counters, pid file and sockets once it retires). Without a running
    /// proxy it is an ordinary start.
    pub takeover: bool,
}

/// Why the proxy process could not start or stopped badly.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot create the state directory `{}`", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another proxy{} runs on state directory `{}`", pid.map(|pid| format!(" (pid {pid})")).unwrap_or_default(), state_dir.display())]
    AlreadyRunning {
        state_dir: PathBuf,
        pid: Option<u32>,
    },
    #[error("cannot use the pid file `{}`", path.display())]
    PidFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` exists and is not a socket; refusing to remove it", path.display())]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale control socket `{}`", path.display())]
    StaleSocket {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot load the saved routing")]
    LoadRoutes(#[source] RoutesFileError),
    #[error("saved routing in `{}` cannot be applied", path.display())]
    ApplyRoutes {
        path: PathBuf,
        #[source]
        source: ApplyError,
    },
    #[error("the running proxy (pid {pid}) did not retire")]
    Takeover {
        pid: u32,
        #[source]
        source: crate::control_client::ControlClientError,
    },
    #[error("the handed-over data listeners cannot be used")]
    HandedOver(#[source] io::Error),
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot create the control socket `{}`", path.display())]
    BindControl {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot watch for SIGTERM")]
    Signal(#[source] io::Error),
    #[error("{server} stopped with an error")]
    Serve {
        server: &'static str,
        #[source]
        source: io::Error,
    },
}

/// A started proxy process: everything bound, routing reloaded, not serving yet.
#[derive(Debug)]
pub struct ProxyProcess {
    proxy: Proxy,
    data: DataListeners,
    data_addr: SocketAddr,
    https: Option<DataListeners>,
    metrics: Option<(TcpListener, SocketAddr)>,
    control: UnixListener,
    socket: BoundSocket,
    /// `listeners.sock`: gives out `handover_fds`, the data listeners, to whoever holds them next.
    handover: UnixListener,
    handover_socket: BoundSocket,
    handover_fds: Arc<Vec<OwnedFd>>,
    routes_file: RoutesFile,
    pid_file: Option<PidFile>,
    sigterm: Signal,
    shutdown_timeout: Duration,
}

/// Runs a whole proxy process: `ProxyProcess::start`, then `serve` until SIGTERM or `shutdown`.
pub async fn run(config: ProcessConfig, shutdown: CancellationToken) -> Result<(), ProcessError> {
    ProxyProcess::start(config).await?.serve(shutdown).await
}

impl ProcessConfig {
    /// A process on `listen` with state in `state_dir`, no metrics listener, production tunables and a
    /// 30 s shutdown bound (DESIGN's default drain).
    pub fn new(state_dir: impl Into<PathBuf>, listen: SocketAddr) -> ProcessConfig {
        ProcessConfig {
            state_dir: state_dir.into(),
            listen,
            metrics: None,
            https: None,
            config: ProxyConfig::default(),
            workers: crate::workers::default_workers(),
            shutdown_timeout: Duration::from_secs(30),
            listeners: None,
            takeover: false,
        }
    }
}

impl ProxyProcess {
    /// Takes the state directory (refusing when another proxy lives on it), reloads `routes.json` with
    /// ready instances ready, then binds the data listener, the metrics listener and the control socket,
    /// and writes the pid. The routing is in place before the data listener exists, so the first request
    /// accepted is routed.
    pub async fn start(config: ProcessConfig) -> Result<ProxyProcess, ProcessError> {
        let state_dir = config.state_dir;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&state_dir)
            .map_err(|source| ProcessError::StateDir {
                path: state_dir.clone(),
                source,
            })?;
        let socket_path = state_dir.join(SOCKET_FILE_NAME);
        let mut listeners = config.listeners.clone();
        let mut inherited_stats = Vec::new();
        let mut inherited_tls = None;
        let mut pid_file =
            if config.takeover {
                let predecessor = ControlClient::new(&socket_path).with_timeout(PROBE_TIMEOUT * 5);
                match predecessor.healthz().await {
                    Ok(health) => {
                        if listeners.is_none() {
                            let path = state_dir.join(crate::handover::LISTENERS_FILE_NAME);
                            let fds = crate::handover::fetch(&path, PROBE_TIMEOUT * 5)
                                .map_err(ProcessError::HandedOver)?;
                            listeners = Some(Arc::new(fds));
                        }
                        // Its certificates (never on disk): HTTPS serves from the first handshake.
                        // An older proxy has none to give; the agent sends them after the start.
                        inherited_tls = predecessor.tls().await.ok();
                        // From here the predecessor accepts nothing; connections wait in the shared
                        // backlog until this process serves.
                        inherited_stats = predecessor.retire().await.map_err(|source| {
                            ProcessError::Takeover {
                                pid: health.pid,
                                source,
                            }
                        })?;
                        tracing::info!(
                            message = "Taking over from the running proxy.",
                            predecessor = health.pid
                        );
                        PidFile::lock_when_released(&state_dir, TAKEOVER_WAIT).await?
                    }
                    Err(_) => PidFile::lock(&state_dir)?,
                }
            } else {
                PidFile::lock(&state_dir)?
            };
        remove_stale_socket(&state_dir, &socket_path).await?;
        // Registered before anything is served, so a SIGTERM from now on stops us gracefully.
        let sigterm = signal(SignalKind::terminate()).map_err(ProcessError::Signal)?;

        let proxy = Proxy::new(config.config);
        let routes_file = RoutesFile::in_dir(&state_dir);
        if let Some(saved) = routes_file.load().map_err(ProcessError::LoadRoutes)? {
            let report =
                desired::apply(&proxy, &saved).map_err(|source| ProcessError::ApplyRoutes {
                    path: routes_file.path().to_path_buf(),
                    source,
                })?;
            tracing::info!(
                message = "Saved routing reloaded.",
                path = %routes_file.path().display(),
                n_routes = report.routes_set.len(),
                n_instances = report.instances_added.len(),
                n_ready = report.marked_ready.len(),
            );
        }

        proxy.carry_over_stats(&inherited_stats);
        if let Some(tls) = inherited_tls
            && let Err(error) = proxy.tls().replace(tls)
        {
            tracing::warn!(message = "The predecessor's certificates cannot be served; waiting for the agent's.", %error);
        }
        let mut https = None;
        let data = match &listeners {
            Some(fds) => {
                let duplicates = fds
                    .iter()
                    .map(OwnedFd::try_clone)
                    .collect::<io::Result<Vec<_>>>()
                    .map_err(ProcessError::HandedOver)?;
                let (duplicates, tls) = split_tls(duplicates, config.https);
                if !tls.is_empty() {
                    https = Some(DataListeners::from_fds(tls).map_err(ProcessError::HandedOver)?);
                }
                let data = DataListeners::from_fds(duplicates).map_err(ProcessError::HandedOver)?;
                if config.listen.port() != 0 && data.local_addr() != config.listen {
                    return Err(ProcessError::HandedOver(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "the listeners are on `{}`, not on `{}`",
                            data.local_addr(),
                            config.listen
                        ),
                    )));
                }
                data
            }
            None => DataListeners::bind(config.listen, config.workers).map_err(|source| {
                ProcessError::Bind {
                    addr: config.listen,
                    source,
                }
            })?,
        };
        let data_addr = data.local_addr();
        if https.is_none()
            && let Some(addr) = config.https
        {
            https = Some(
                DataListeners::bind(addr, config.workers)
                    .map_err(|source| ProcessError::Bind { addr, source })?,
            );
        }
        let mut handover_fds = data.duplicate().map_err(ProcessError::HandedOver)?;
        if let Some(https) = &https {
            handover_fds.extend(https.duplicate().map_err(ProcessError::HandedOver)?);
        }
        let handover_fds = Arc::new(handover_fds);
        let metrics = match config.metrics {
            Some(addr) => {
                // A retiring predecessor closes its metrics listener as it retires; give it a moment.
                let wait = if config.takeover {
                    TAKEOVER_WAIT
                } else {
                    Duration::ZERO
                };
                let listener = bind_tcp_retrying(addr, wait).await?;
                let bound = local_addr(&listener, addr)?;
                Some((listener, bound))
            }
            None => None,
        };
        let (control, socket) = bind_control(&socket_path)?;
        let (handover, handover_socket) =
            bind_control(&state_dir.join(crate::handover::LISTENERS_FILE_NAME))?;
        pid_file.write_pid()?;
        tracing::info!(
            message = "Proxy started.",
            listen = %data_addr,
            control = %socket_path.display(),
            pid = std::process::id(),
        );
        Ok(ProxyProcess {
            proxy,
            data,
            data_addr,
            https,
            metrics,
            control,
            socket,
            handover,
            handover_socket,
            handover_fds,
            routes_file,
            pid_file: Some(pid_file),
            sigterm,
            shutdown_timeout: config.shutdown_timeout,
        })
    }

    pub fn proxy(&self) -> &Proxy {
        &self.proxy
    }

    pub fn data_addr(&self) -> SocketAddr {
        self.data_addr
    }

    /// The TLS listener's address, when there is one.
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https.as_ref().map(DataListeners::local_addr)
    }

    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(_, addr)| *addr)
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket.path
    }

    /// Serves until SIGTERM or `shutdown`, then stops accepting everywhere, gives requests in flight
    /// `shutdown_timeout` to finish, removes the socket and pid files, and returns.
    pub async fn serve(mut self, shutdown: CancellationToken) -> Result<(), ProcessError> {
        let stop = CancellationToken::new();
        let health = Health {
            pid: std::process::id(),
            listen: Some(self.data_addr),
            https: self.https_addr(),
            metrics: self.metrics_addr(),
            binary: binary_identity(Path::new("/proc/self/exe")),
        };
        let retire = CancellationToken::new();
        let data = crate::workers::serve_with_https(
            self.data,
            self.https,
            self.proxy.clone(),
            stop.clone(),
        )
        .map_err(|source| ProcessError::Serve {
            server: "data listener",
            source,
        })?;
        let data = tokio::spawn(data.wait());
        let metrics = self.metrics.map(|(listener, _)| {
            tokio::spawn(crate::metrics::serve_metrics(
                listener,
                self.proxy.clone(),
                stop.clone(),
            ))
        });
        let handover = tokio::spawn(crate::handover::serve(
            self.handover,
            self.handover_fds.clone(),
            stop.clone(),
        ));
        let control = tokio::spawn(serve_control(
            self.control,
            self.proxy.clone(),
            self.routes_file,
            health,
            stop.clone(),
            retire.clone(),
        ));

        tokio::select! {
            () = shutdown.cancelled() => {}
            _ = self.sigterm.recv() => tracing::info!(message = "SIGTERM received; stopping."),
            () = retire.cancelled() => {}
        }
        stop.cancel();
        // Gone from the file system at once, so the agent sees "no proxy" instead of a hanging connect.
        self.socket.remove();
        self.handover_socket.remove();
        if retire.is_cancelled() {
            // The successor waits for this lock; it gets it now, not after our drain.
            if let Some(pid_file) = self.pid_file.take() {
                pid_file.remove();
            }
        }
        let _ = join(handover, "hand-over socket", Duration::from_secs(1)).await;
        // This process's duplicates of the data listeners, kept to hand over: closed now, so a proxy
        // that bound its own listeners refuses new connections through its drain instead of leaving
        // them in a backlog nobody accepts. Where another process holds them too (the agent, or a
        // successor that took them over), the sockets stay open there.
        self.handover_fds = Arc::default();

        let mut result = Ok(());
        let control_result = join(control, "control socket", Duration::from_secs(5)).await;
        let data_result = join(data, "data listener", self.shutdown_timeout).await;
        if data_result.is_none() {
            let in_flight: u64 = self
                .proxy
                .all_stats()
                .iter()
                .map(|stats| stats.in_flight)
                .sum();
            tracing::warn!(
                message = "Requests still in flight at the shutdown bound; they are cut.",
                in_flight,
                bound = ?self.shutdown_timeout,
            );
        }
        let metrics_result = match metrics {
            Some(metrics) => join(metrics, "metrics listener", Duration::from_secs(5)).await,
            None => Some(Ok(())),
        };
        for outcome in [data_result, control_result, metrics_result]
            .into_iter()
            .flatten()
        {
            if let Err(error) = outcome
                && result.is_ok()
            {
                result = Err(error);
            }
        }
        if let Some(pid_file) = self.pid_file.take() {
            pid_file.remove();
        }
        tracing::info!(message = "Proxy stopped.");
        result
    }

    /// What the process routes now (the same answer as `GET /v1/state`).
    pub fn observed(&self) -> ObservedState {
        ObservedState::read(&self.proxy)
    }
}

/// The control socket this process created, identified by inode so a successor's socket is never
/// removed by mistake.
#[derive(Debug)]
struct BoundSocket {
    path: PathBuf,
    inode: u64,
}

/// `proxy.pid`, opened and exclusively locked (`flock`) for the life of the process. The kernel drops
/// the lock when the process dies, even by kill -9, so a stale file never keeps a new proxy out.
#[derive(Debug)]
struct PidFile {
    path: PathBuf,
    file: fs::File,
}

impl PidFile {
    /// Waits (bounded) for a retiring predecessor to give up the lock, then takes it.
    async fn lock_when_released(state_dir: &Path, wait: Duration) -> Result<PidFile, ProcessError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match PidFile::lock(state_dir) {
                Err(ProcessError::AlreadyRunning { .. })
                    if tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                // Opened just before the predecessor removed it: the lock is on a file nobody sees.
                Ok(pid_file) if !pid_file.is_at_path() => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                other => return other,
            }
        }
    }

    /// Whether the locked file is still the one at the path.
    fn is_at_path(&self) -> bool {
        match (self.file.metadata(), fs::metadata(&self.path)) {
            (Ok(ours), Ok(at_path)) => ours.ino() == at_path.ino() && ours.dev() == at_path.dev(),
            _ => false,
        }
    }

    fn lock(state_dir: &Path) -> Result<PidFile, ProcessError> {
        let path = state_dir.join(PID_FILE_NAME);
        let pid_error = |source| ProcessError::PidFile {
            path: path.clone(),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(pid_error)?;
        match file.try_lock() {
            Ok(()) => Ok(PidFile { path, file }),
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let pid = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                Err(ProcessError::AlreadyRunning {
                    state_dir: state_dir.to_path_buf(),
                    pid,
                })
            }
            Err(fs::TryLockError::Error(source)) => Err(pid_error(source)),
        }
    }

    fn write_pid(&mut self) -> Result<(), ProcessError> {
        let pid_error = |source| ProcessError::PidFile {
            path: self.path.clone(),
            source,
        };
        self.file.set_len(0).map_err(pid_error)?;
        self.file.rewind().map_err(pid_error)?;
        writeln!(self.file, "{}", std::process::id()).map_err(pid_error)?;
        self.file.sync_all().map_err(pid_error)
    }

    /// Removes the file while still holding the lock; a proxy starting now creates a fresh one.
    fn remove(self) {
        if let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(message = "Removing the pid file failed.", path = %self.path.display(), %error);
        }
    }
}

impl BoundSocket {
    fn remove(&self) {
        let ours =
            fs::symlink_metadata(&self.path).is_ok_and(|metadata| metadata.ino() == self.inode);
        if ours && let Err(error) = fs::remove_file(&self.path) {
            tracing::warn!(message = "Removing the control socket failed.", path = %self.path.display(), %error);
        }
    }
}

/// A socket file left by a proxy that died is removed; one that still answers means another proxy lives.
async fn remove_stale_socket(state_dir: &Path, socket_path: &Path) -> Result<(), ProcessError> {
    let metadata = match fs::symlink_metadata(socket_path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ProcessError::StaleSocket {
                path: socket_path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ProcessError::NotASocket {
            path: socket_path.to_path_buf(),
        });
    }
    let probe = ControlClient::new(socket_path).with_timeout(PROBE_TIMEOUT);
    if let Ok(health) = probe.healthz().await {
        return Err(ProcessError::AlreadyRunning {
            state_dir: state_dir.to_path_buf(),
            pid: Some(health.pid),
        });
    }
    tracing::info!(message = "Removing a stale control socket.", path = %socket_path.display());
    fs::remove_file(socket_path).map_err(|source| ProcessError::StaleSocket {
        path: socket_path.to_path_buf(),
        source,
    })
}

/// Binds the control socket under a temporary name, restricts it to its owner, then renames it into
/// place: it is never reachable with the umask's looser mode.
fn bind_control(socket_path: &Path) -> Result<(UnixListener, BoundSocket), ProcessError> {
    let bind_error = |source| ProcessError::BindControl {
        path: socket_path.to_path_buf(),
        source,
    };
    let temporary = socket_path.with_extension(format!("sock.{}.tmp", std::process::id()));
    match fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(source) => return Err(bind_error(source)),
    }
    let listener = UnixListener::bind(&temporary).map_err(bind_error)?;
    let placed = fs::set_permissions(&temporary, fs::Permissions::from_mode(0o600))
        .and_then(|()| fs::rename(&temporary, socket_path))
        .and_then(|()| fs::symlink_metadata(socket_path));
    match placed {
        Ok(metadata) => Ok((
            listener,
            BoundSocket {
                path: socket_path.to_path_buf(),
                inode: metadata.ino(),
            },
        )),
        Err(source) => {
            let _ = fs::remove_file(&temporary);
            Err(bind_error(source))
        }
    }
}

async fn bind_tcp_retrying(addr: SocketAddr, wait: Duration) -> Result<TcpListener, ProcessError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(error)
                if error.kind() == io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(source) => return Err(ProcessError::Bind { addr, source }),
        }
    }
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ProcessError> {
    listener
        .local_addr()
        .map_err(|source| ProcessError::Bind { addr, source })
}

/// Waits for a server task up to `bound`; `None` when the bound came first (the task is left to the
/// runtime, which ends with the process).
async fn join(
    task: JoinHandle<io::Result<()>>,
    server: &'static str,
    bound: Duration,
) -> Option<Result<(), ProcessError>> {
    match tokio::time::timeout(bound, task).await {
        Ok(Ok(Ok(()))) => Some(Ok(())),
        Ok(Ok(Err(source))) => Some(Err(ProcessError::Serve { server, source })),
        Ok(Err(join_error)) => Some(Err(ProcessError::Serve {
            server,
            source: io::Error::other(join_error),
        })),
        Err(_elapsed) => None,
    }
}

/// Splits handed-over listeners into the plain ones and those on `https` (the TLS listener).
fn split_tls(fds: Vec<OwnedFd>, https: Option<SocketAddr>) -> (Vec<OwnedFd>, Vec<OwnedFd>) {
    let Some(https) = https else {
        return (fds, Vec::new());
    };
    fds.into_iter().partition(|fd| {
        let addr = rustix::net::getsockname(fd)
            .ok()
            .and_then(|addr| std::net::SocketAddr::try_from(addr).ok());
        addr != Some(https)
    })
}

/// Names the executable file behind `path` (device, inode, size, modification time): a new build
/// installed over the old one is a new file, while a running process keeps naming the one it started
/// from (`/proc/self/exe` of a replaced binary still points at the old inode).
pub fn binary_identity(path: &Path) -> Option<String> {
    let metadata = fs::metadata(path).ok()?;
    Some(format!(
        "{}:{}:{}:{}",
        metadata.dev(),
        metadata.ino(),
        metadata.size(),
        metadata.mtime()
    ))
}
