//! The daemon: store, control API, deployment state machine, health gate and proxy control.
//!
//! `run` is the whole agent process: it owns the state directory, starts (or finds) the proxy
//! process, recovers what a previous agent left, serves the API, and on shutdown leaves the app
//! instances and the proxy running.

pub mod alerts;
pub mod analysis;
pub mod api;
pub mod artifact;
pub mod backup;
pub mod certs;
pub mod cron;
pub mod dashboard;
pub mod deploy;
pub mod drivers;
pub mod edge;
pub mod engine;
pub mod environments;
pub mod health;
pub mod ingress;
pub mod isolation;
pub mod metrics;
pub mod oneoff;
pub mod previews;
pub mod proxy_link;
pub mod proxy_supervisor;
pub mod recover;
pub mod registry;
pub mod report;
pub mod secrets;
pub mod store;
pub mod swarm_follow;
pub mod swarm_ingress;
pub mod tokens;
pub mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::local::{ADMIN_TOKEN_FILE, AGENT_FILE, LocalAgent};
use driver::process::ProcessDriver;
use tokio_util::sync::CancellationToken;

use crate::artifact::ArtifactStore;
use crate::engine::{Engine, InstancePhase, Paths, now_ms};
use crate::proxy_link::ProxyLink;
use crate::store::Store;
use crate::tokens::{PlainToken, Role};

#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub state_dir: PathBuf,
    pub api: SocketAddr,
    pub proxy: SocketAddr,
    /// Where the proxy serves `/metrics`, if anywhere.
    pub proxy_metrics: Option<SocketAddr>,
    /// The proxy's HTTPS listener, if any.
    pub https: Option<SocketAddr>,
    /// ACME directory (URL, or `production` / `staging`), contact and extra trust roots.
    pub acme_directory: String,
    pub acme_email: Option<String>,
    pub acme_ca: Option<PathBuf>,
    /// The `rollway` binary, started again as `rollway proxy`.
    pub exe: PathBuf,
    /// `--master-key FILE`; `None`: `ROLLWAY_MASTER_KEY`, a systemd credential, or the default
    /// file outside the state directory (see [`secrets::master_key`]).
    pub master_key: Option<PathBuf>,
    /// `--api-tls`: TLS on a loopback API too (beyond loopback it is always on).
    pub api_tls: bool,
    /// The API's certificate: self-signed, or `--api-cert`/`--api-key` (which turn TLS on).
    pub api_cert: api::tls::CertSource,
    /// `--state-backup-schedule`: the agent's own state to an S3-compatible remote on a schedule.
    pub state_backup: Option<backup::state_schedule::StateBackup>,
    /// `--swarm-ingress PORT`: the proxy as a global Swarm service on the ingress nodes
    /// (`swarm_ingress`), serving the apps on this port of each.
    pub swarm_ingress_port: Option<u16>,
    /// With `swarm_ingress_port`: the ingress nodes' HTTPS port (`--swarm-ingress-https`).
    pub swarm_ingress_https_port: Option<u16>,
    /// `--swarm-ingress-agent URL`: the API as the nodes reach it (default: the API's own URL).
    pub swarm_ingress_agent: Option<String>,
}

/// What the caller learns once the agent serves.
pub struct Started {
    pub api: SocketAddr,
    /// `https://ADDR` or, on loopback without TLS, `http://ADDR`.
    pub api_url: String,
    /// The API certificate's fingerprint, which clients pin, when the API serves TLS.
    pub api_fingerprint: Option<client::pin::Fingerprint>,
    pub proxy: SocketAddr,
    /// The proxy's HTTPS listener, when it has one.
    pub https: Option<SocketAddr>,
    /// Only on the first start of a state directory: the admin token, shown once.
    pub admin_token: Option<PlainToken>,
    /// Where the master key came from.
    pub master_key: secrets::master_key::KeyOrigin,
    /// `Some((from, to))` on the start that moved a `master.key` out of the state directory.
    pub master_key_moved: Option<(PathBuf, PathBuf)>,
    /// How apps are confined on this host (`Isolation::describe` says it in words).
    pub isolation: driver::Isolation,
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot prepare the state directory `{path}`")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "app users cannot reach the apps folder `{apps}`: `{dir}` (mode {mode:04o}) lets no other user through. As root, the agent runs each app as a user of its own, with its files under `{apps}`. Start the agent with a state folder outside `{dir}` (`--state /var/lib/rollway`, root's default), or let other users cross it (`chmod o+x {dir}`)"
    )]
    AppsUnreachable {
        apps: String,
        dir: String,
        mode: u32,
    },
    #[error("another agent already runs on `{0}`")]
    AlreadyRunning(String),
    #[error("cannot open the store")]
    Store(#[from] store::StoreError),
    #[error(transparent)]
    Proxy(#[from] proxy_link::LinkError),
    #[error("cannot listen on `{addr}`")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Secrets(#[from] secrets::SecretError),
    #[error("the API server failed")]
    Serve(#[source] std::io::Error),
    #[error("cannot set up TLS for the API")]
    ApiTls(#[from] api::tls::ApiTlsError),
    #[error(transparent)]
    Registry(#[from] registry::RegistryError),
}

/// Runs the agent until `shutdown` fires.
pub async fn run(
    config: AgentConfig,
    shutdown: CancellationToken,
    on_started: impl FnOnce(Started),
) -> Result<(), AgentError> {
    let state_dir = config.state_dir.clone();
    let dir_error = |source| AgentError::StateDir {
        path: state_dir.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&state_dir).map_err(dir_error)?;
    std::fs::set_permissions(&state_dir, std::fs::Permissions::from_mode(0o700))
        .map_err(dir_error)?;
    let _lock = lock_state_dir(&state_dir)?;

    let store = Arc::new(Store::open(&state_dir.join("rollway.db"))?);
    let admin_token = ensure_admin_token(&store, &state_dir)?;
    let loaded_key = secrets::master_key::load(
        &secrets::master_key::KeySources::from_env(config.master_key.clone()),
        &state_dir,
    )?;
    if let Some((from, to)) = &loaded_key.moved {
        tracing::info!(message = "Moved the master key out of the state directory.", from = %from.display(), to = %to.display());
    }
    let (master_key, master_key_origin) = (loaded_key.key, loaded_key.origin);
    let isolation = driver::Isolation::detect(&config.exe, isolation::hidden_from_apps(&state_dir));
    tracing::info!(message = "Apps are isolated.", isolation = %isolation.describe());
    if let Some(gap) = isolation.gap() {
        tracing::warn!(message = "App isolation has a gap.", gap = %gap);
    }

    // Before the proxy and any app start: they are placed as they are spawned.
    let placement = driver::cgroup::Placement::detect();
    tracing::info!(message = "CPU placement of the proxy and the apps.", placement = %placement.describe());

    let paths = Paths::new(state_dir.clone());
    isolation::prepare_apps_dir(&paths.apps).map_err(|source| AgentError::StateDir {
        path: paths.apps.display().to_string(),
        source,
    })?;
    // Found now rather than as "Permission denied" at the first deploy's first command.
    if isolation == driver::Isolation::Users
        && let Some(blocked) = driver::confine::first_uncrossable(&paths.apps)
    {
        return Err(AgentError::AppsUnreachable {
            apps: paths.apps.display().to_string(),
            dir: blocked.dir.display().to_string(),
            mode: blocked.mode,
        });
    }
    let driver = Arc::new(ProcessDriver::new(paths.instances.clone()).map_err(dir_error)?);
    let artifacts = ArtifactStore::new(state_dir.join("artifacts"))
        .with_limits(artifact::ArtifactLimits::from_env());
    let proxy = ProxyLink::new(state_dir.join("proxy"), config.proxy);
    let proxy_command = proxy_link::ProxyCommand {
        exe: config.exe.clone(),
        listen: config.proxy,
        metrics: config.proxy_metrics,
        https: config.https,
        cgroup: placement.proxy().cloned(),
        raise_priority: !placement.weighted(),
    };
    let proxy_addr = proxy.start(&proxy_command).await?;

    let listener = tokio::net::TcpListener::bind(config.api)
        .await
        .map_err(|source| AgentError::Bind {
            addr: config.api,
            source,
        })?;
    let api_addr = listener.local_addr().map_err(|source| AgentError::Bind {
        addr: config.api,
        source,
    })?;
    let registry_address =
        registry::cluster_address(api_addr, std::env::var(registry::ADDRESS_VAR).ok());
    let api_tls = if api::tls::needs_tls(api_addr, config.api_tls)
        || matches!(config.api_cert, api::tls::CertSource::Given { .. })
    {
        Some(api::tls::load(
            &state_dir,
            &master_key,
            &config.api_cert,
            &registry_address
                .iter()
                .map(|address| registry::host_of(address))
                .collect::<Vec<_>>(),
        )?)
    } else {
        None
    };
    let api_fingerprint = api_tls.as_ref().map(|tls| tls.fingerprint);
    let api_certificate = api_tls.as_ref().map(|tls| tls.pem.clone());
    let api_url = match api_tls {
        Some(_) => format!("https://{api_addr}"),
        None => format!("http://{api_addr}"),
    };
    let registry = registry::Registry::open(
        &state_dir,
        &store,
        &master_key,
        registry_address,
        registry::RegistryLimits::from_env(),
    )?;
    let (events, _) = tokio::sync::broadcast::channel(1024);
    let engine = Arc::new(Engine {
        store,
        drivers: drivers::Drivers::new(driver),
        proxy,
        proxy_addr,
        artifacts,
        master_key,
        isolation: isolation.clone(),
        placement,
        paths,
        events,
        runtimes: Mutex::new(BTreeMap::new()),
        proxy_push: tokio::sync::Mutex::new(()),
        shutdown: shutdown.clone(),
        signalled: tokio::sync::Notify::new(),
        counters: Mutex::new(metrics::Counters::default()),
        certs: certs::Certs::new(certs::CertsConfig::new(
            &config.acme_directory,
            config.acme_email.clone(),
            config.acme_ca.clone(),
            config.https.is_some(),
        )),
        api_fingerprint,
        api_certificate,
        edge: Mutex::new(BTreeMap::new()),
        cron: cron::CronRuns::default(),
        registry,
    });
    // Subscribed before anything is recorded (recovery records events), so no alert is missed.
    tokio::spawn(alerts::run(engine.clone(), engine.events.subscribe()));
    // Before recovery's first routing push, so the proxy never gets a state without them.
    api::edge::restore(&engine);
    recover::recover(&engine).await;
    // A proxy still running from an older binary (the agent was upgraded) hands over to a new one,
    // once the routes are known again (the upgrade gives the new proxy the whole desired state).
    if engine.proxy.runs_other_binary().await
        && let Err(error) = proxy_supervisor::upgrade(&engine, "the agent's binary changed").await
    {
        tracing::error!(message = "Cannot upgrade the proxy; the old one keeps serving.", error = %report::chain(&error));
    }
    tokio::spawn(proxy_supervisor::supervise(engine.clone()));
    tokio::spawn(expire_warm_instances(engine.clone()));
    tokio::spawn(scheduled_backups(engine.clone()));
    tokio::spawn(certs::renew_loop(engine.clone()));
    tokio::spawn(watch::health_loop(engine.clone()));
    tokio::spawn(swarm_follow::run(engine.clone()));
    tokio::spawn(watch::error_rate_loop(engine.clone()));
    tokio::spawn(cron::run(engine.clone()));
    if let Some(state_backup) = config.state_backup.clone() {
        tokio::spawn(backup::state_schedule::run(engine.clone(), state_backup));
    }
    tokio::spawn(previews::run(engine.clone()));
    tokio::spawn(registry::collect_loop(engine.clone()));
    if let Some(port) = config.swarm_ingress_port {
        let agent_url = config
            .swarm_ingress_agent
            .clone()
            .unwrap_or_else(|| api_url.clone());
        tokio::spawn(swarm_ingress::run(
            engine.clone(),
            swarm_ingress::SwarmIngress {
                port,
                https_port: config.swarm_ingress_https_port,
                agent_url,
            },
        ));
    }

    let agent_file = LocalAgent {
        api: api_url.clone(),
        proxy: proxy_addr.to_string(),
        pid: std::process::id(),
        fingerprint: api_fingerprint,
    };
    write_private(
        &state_dir.join(AGENT_FILE),
        serde_json::to_string_pretty(&agent_file)
            .unwrap_or_default()
            .as_bytes(),
    )
    .map_err(dir_error)?;
    tracing::info!(message = "Agent serving.", api = %api_url, proxy = %proxy_addr, state = %state_dir.display(), api_fingerprint = ?api_fingerprint);
    on_started(Started {
        api: api_addr,
        api_url,
        api_fingerprint,
        proxy: proxy_addr,
        https: engine.proxy.command().and_then(|command| command.https),
        admin_token,
        master_key: master_key_origin,
        master_key_moved: loaded_key.moved,
        isolation,
    });

    let served = api::serve(listener, engine.clone(), api_tls, shutdown.clone()).await;
    // Deploys in flight park at their next step; instances and the proxy keep running.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = std::fs::remove_file(state_dir.join(AGENT_FILE));
    tracing::info!(message = "Agent stopped; instances and the proxy keep running.");
    served.map_err(AgentError::Serve)
}

/// One agent per state directory: an exclusive lock held for the process's life.
fn lock_state_dir(state_dir: &std::path::Path) -> Result<std::fs::File, AgentError> {
    let path = state_dir.join("agent.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| AgentError::StateDir {
            path: path.display().to_string(),
            source,
        })?;
    rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive)
        .map_err(|_| AgentError::AlreadyRunning(state_dir.display().to_string()))?;
    Ok(file)
}

/// The first start creates the admin token and writes it to `admin.token` (0600).
fn ensure_admin_token(
    store: &Store,
    state_dir: &std::path::Path,
) -> Result<Option<PlainToken>, AgentError> {
    if store.count_tokens()? > 0 {
        return Ok(None);
    }
    let (_, plain) = tokens::create(store, "admin", Role::Admin)?;
    let path = state_dir.join(ADMIN_TOKEN_FILE);
    write_private(&path, format!("{}\n", plain.expose()).as_bytes()).map_err(|source| {
        AgentError::StateDir {
            path: path.display().to_string(),
            source,
        }
    })?;
    Ok(Some(plain))
}

pub(crate) fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let temp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&temp, path)
}

/// Stops warm instances whose keep-warm time is over (they are out of traffic already).
async fn expire_warm_instances(engine: Arc<Engine>) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if engine.shutdown.is_cancelled() {
            return;
        }
        let now = now_ms();
        let expired: Vec<(engine::AppEnv, String)> = engine
            .runtimes
            .lock()
            .map(|runtimes| {
                runtimes
                    .iter()
                    .flat_map(|(key, runtime)| {
                        runtime
                            .instances
                            .iter()
                            .filter(|(_, instance)| {
                                instance.phase == InstancePhase::Warm
                                    && instance.warm_until.is_some_and(|until| until <= now)
                            })
                            .map(|(id, _)| (key.clone(), id.clone()))
                            .collect::<Vec<_>>()
                    })
                    .collect()
            })
            .unwrap_or_default();
        for (key, id) in expired {
            deploy::spec::stop_instances(&engine, &key, std::slice::from_ref(&id)).await;
        }
    }
}

/// Takes scheduled backups when they fall due.
async fn scheduled_backups(engine: Arc<Engine>) {
    loop {
        tokio::time::sleep(Duration::from_secs(30)).await;
        if engine.shutdown.is_cancelled() {
            return;
        }
        backup::run_schedules(&engine).await;
    }
}
