//! `rollway proxy --follow AGENT_URL`: a proxy that follows an agent over its API instead of being
//! driven over a control socket (issue 17: the ingress proxies of a swarm).
//!
//! It is the same proxy process (`proxy::process`), with three tasks beside it:
//! - `follow`: reads `GET /v1/proxy/state` (token of role proxy, from a file), keeps the newest
//!   whole desired state and the newest whole TLS set, notices a dead link by the missing
//!   keep-alives and connects again with backoff; the proxy keeps serving its last state meanwhile.
//! - `apply` (twice): puts each newest state, and each newest TLS set, to its own proxy through
//!   the control socket, the path the agent uses for its proxy (the state checked, saved in
//!   `routes.json`, then applied; the TLS set checked and swapped in, `proxy::tls`).
//! - `report`: every second, the proxy's cumulative counters to `POST /v1/proxy/report`.
//!
//! The TLS set holds private keys. It is kept in memory only, here and in the proxy process (which
//! never writes it to a file): a restarted follower serves HTTPS again once the agent sent it the
//! set, the first thing after the routing on each connection; when the routing has HTTPS routes, it
//! waits for that set (at most `FIRST_TLS_WAIT`) before it binds its listeners, so no handshake
//! meets a proxy without certificates. Nothing here logs its content.
//!
//! Nothing is served before there is a routing: without a saved `routes.json`, the first state from
//! the agent is saved before the listeners are bound, so a proxy started later (a new ingress node)
//! never answers with an empty routing table.

use std::io::Read as _;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use client::Client;
use client::pin::Fingerprint;
use client::wire::{
    MAX_PROXY_REPORT_RELEASES, PROXY_KEEPALIVE_SECS, ProxyId, ProxyReport, ProxyStateLine, ProxyTls,
};
use proxy::DesiredState;
use proxy::control_client::ControlClient;
use proxy::tls::TlsState;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::ExitStatus;
use crate::cli::ProxyRunArgs;
use crate::printer::Printer;

/// The largest token file read (a token is 68 bytes).
const MAX_TOKEN_FILE: u64 = 4096;

/// How often counters are reported.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reconnection backoff: first wait, and the longest.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub fn run(
    args: &ProxyRunArgs,
    agent: &str,
    state: PathBuf,
    listen: SocketAddr,
    printer: Printer,
) -> anyhow::Result<ExitStatus> {
    let Some(token_file) = &args.token_file else {
        printer
            .error("`rollway proxy --follow` needs `--token-file FILE` (a token of role `proxy`)");
        printer.hint("an admin creates one with `rollway tokens create --role proxy --name NAME`; put it in a file readable by the proxy only");
        return Ok(ExitStatus::Usage);
    };
    let token = match read_token(token_file) {
        Ok(token) => token,
        Err(problem) => {
            printer.error(&problem);
            return Ok(ExitStatus::Usage);
        }
    };
    let pin = match args
        .follow_fingerprint
        .as_deref()
        .map(str::parse::<Fingerprint>)
    {
        None => None,
        Some(Ok(pin)) => Some(pin),
        Some(Err(error)) => {
            printer.error(&format!("`--follow-fingerprint`: {error}"));
            printer.hint("the `api certificate:` line `rollway agent` printed, or `api_fingerprint` of `GET /v1/agent`");
            return Ok(ExitStatus::Usage);
        }
    };
    let id = args.id.clone().unwrap_or_else(host_name);
    if !ProxyId::is_valid(&id) {
        printer.error(&format!(
            "`--id {id}`: a proxy id is 1 to 128 characters of A-Z a-z 0-9 . _ - :"
        ));
        return Ok(ExitStatus::Usage);
    }
    let client = match Client::with_pin(agent, Some(token), pin) {
        Ok(client) => client,
        Err(error) => {
            printer.error(&format!("`--follow {agent}`: {error}"));
            return Ok(ExitStatus::Usage);
        }
    };
    super::agent::init_tracing();
    let mut config = proxy::process::ProcessConfig::new(state, listen);
    config.metrics = args.metrics;
    config.https = args.https;
    config.config.https_port = args.https.map(|addr| addr.port());
    config.config.trusted_proxies = args.trusted_proxies.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(super::agent::stop_on_signal(shutdown.clone()));
        follow_and_serve(client, ProxyId::new(id), config, shutdown).await
    })?;
    Ok(ExitStatus::Success)
}

async fn follow_and_serve(
    client: Client,
    id: ProxyId,
    config: proxy::process::ProcessConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let (states, mut newest) = watch::channel::<Option<Arc<DesiredState>>>(None);
    let (tls, newest_tls) = watch::channel::<Option<Arc<ProxyTls<TlsState>>>>(None);
    // The generation of the TLS set the proxy serves, reported so the agent's ACME challenges
    // wait until this proxy has their answers.
    let tls_applied = Arc::new(AtomicU64::new(0));
    tokio::spawn(follow(client.clone(), states, tls, shutdown.clone()));

    let routes_file = proxy::RoutesFile::in_dir(&config.state_dir);
    let routing = match routes_file.load() {
        Ok(Some(saved)) => {
            tracing::info!(
                message = "Serving the saved routing until the agent sends its own.",
                path = %routes_file.path().display(),
            );
            saved
        }
        Ok(None) => {
            tracing::info!(message = "Waiting for the agent's routing before serving.");
            let Some(first) = first_state(&mut newest, &shutdown).await else {
                return Ok(());
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&config.state_dir)
                .map_err(|error| {
                    anyhow::anyhow!(
                        "cannot create the state directory `{}`: {error}",
                        config.state_dir.display()
                    )
                })?;
            let to_save = routes_file.clone();
            let saved = first.clone();
            tokio::task::spawn_blocking(move || to_save.save(&saved)).await??;
            first
        }
        Err(error) => return Err(error.into()),
    };
    // With routes served over HTTPS, the certificates first: a restarted follower whose HTTPS port
    // accepted before the agent's TLS set arrived would fail those handshakes.
    let mut newest_tls = newest_tls;
    let first_tls =
        if config.https.is_some() && routing.routes.iter().any(|route| route.tls.redirect) {
            first_tls(&mut newest_tls, &shutdown).await
        } else {
            None
        };

    let process = proxy::process::ProxyProcess::start(config).await?;
    if let Some(published) = first_tls {
        match process.proxy().tls().replace(published.set.clone()) {
            Ok(()) => tls_applied.store(published.generation, Ordering::Relaxed),
            // `apply` below tries the same set again and says why it fails.
            Err(error) => {
                tracing::warn!(message = "The agent's first certificates cannot be applied.", %error)
            }
        }
    }
    let control = ControlClient::new(process.socket_path());
    tracing::info!(
        message = "Following the agent.",
        agent = client.base(),
        proxy = %id,
        listen = %process.data_addr(),
    );
    let routes = control.clone();
    tokio::spawn(apply(
        newest,
        move |state: Arc<DesiredState>| {
            let control = routes.clone();
            async move {
                let observed = control.put_state(&state).await?;
                tracing::info!(
                    message = "Routing from the agent applied.",
                    n_routes = observed.routes.len(),
                );
                Ok(())
            }
        },
        "routing",
        shutdown.clone(),
    ));
    let certificates = control.clone();
    let applied = tls_applied.clone();
    tokio::spawn(apply(
        newest_tls,
        move |published: Arc<ProxyTls<TlsState>>| {
            let control = certificates.clone();
            let applied = applied.clone();
            async move {
                let tls = &published.set;
                let hosts = control.put_tls(tls).await?;
                applied.store(published.generation, Ordering::Relaxed);
                tracing::info!(
                    message = "Certificates from the agent applied.",
                    n_hosts = hosts.len(),
                    n_http01 = tls.http01.len(),
                    n_tls_alpn01 = tls.tls_alpn01.len(),
                );
                Ok(())
            }
        },
        "certificates",
        shutdown.clone(),
    ));
    tokio::spawn(report(client, control, id, tls_applied, shutdown.clone()));
    process.serve(shutdown).await?;
    Ok(())
}

/// The first state the agent sends that the proxy would take; `None` when stopped first.
async fn first_state(
    newest: &mut watch::Receiver<Option<Arc<DesiredState>>>,
    shutdown: &CancellationToken,
) -> Option<DesiredState> {
    loop {
        if let Some(state) = newest.borrow_and_update().clone() {
            let problems = state.problems();
            if problems.is_empty() {
                return Some((*state).clone());
            }
            tracing::warn!(message = "The agent's routing is refused; waiting for the next.", problems = ?problems);
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            changed = newest.changed() => if changed.is_err() { return None },
        }
    }
}

/// How long a follower with HTTPS routes waits for the agent's certificates before it serves
/// anyway (the agent away: its plain routes from the saved routing, HTTPS once the agent is back).
const FIRST_TLS_WAIT: Duration = Duration::from_secs(30);

/// The agent's first TLS set, waited for at most [`FIRST_TLS_WAIT`]; `None` when it did not come
/// (or the follower was stopped first).
async fn first_tls(
    newest: &mut watch::Receiver<Option<Arc<ProxyTls<TlsState>>>>,
    shutdown: &CancellationToken,
) -> Option<Arc<ProxyTls<TlsState>>> {
    tracing::info!(message = "Waiting for the agent's certificates before serving HTTPS.");
    let arrived = async {
        loop {
            if let Some(set) = newest.borrow_and_update().clone() {
                return Some(set);
            }
            if newest.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::select! {
        () = shutdown.cancelled() => None,
        arrived = tokio::time::timeout(FIRST_TLS_WAIT, arrived) => arrived.unwrap_or_else(|_elapsed| {
            tracing::warn!(
                message = "No certificates from the agent yet; serving without them until they come.",
                waited_s = FIRST_TLS_WAIT.as_secs(),
            );
            None
        }),
    }
}

/// Reads the agent's stream of states into `states`, reconnecting with backoff, until `shutdown`.
async fn follow(
    client: Client,
    states: watch::Sender<Option<Arc<DesiredState>>>,
    tls: watch::Sender<Option<Arc<ProxyTls<TlsState>>>>,
    shutdown: CancellationToken,
) {
    let started = Instant::now();
    let millis =
        |at: Instant| u64::try_from(at.duration_since(started).as_millis()).unwrap_or(u64::MAX);
    let mut backoff = BACKOFF_FIRST;
    let dead_after = Duration::from_secs(PROXY_KEEPALIVE_SECS * 3);
    loop {
        let last_line = AtomicU64::new(millis(Instant::now()));
        let mut lines = 0_u64;
        let stream = client.proxy_states::<DesiredState, ProxyTls<TlsState>>(|line| {
            last_line.store(millis(Instant::now()), Ordering::Relaxed);
            lines += 1;
            match line {
                ProxyStateLine::State(state) => {
                    states.send_replace(Some(Arc::new(state)));
                }
                ProxyStateLine::Tls(set) => {
                    tls.send_replace(Some(Arc::new(set)));
                }
                ProxyStateLine::KeepAlive => {}
            }
            ControlFlow::Continue(())
        });
        let watchdog = async {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let silent =
                    millis(Instant::now()).saturating_sub(last_line.load(Ordering::Relaxed));
                if silent > u64::try_from(dead_after.as_millis()).unwrap_or(u64::MAX) {
                    return;
                }
            }
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => return,
            outcome = stream => outcome.map_err(|error| error.to_string()),
            () = watchdog => Err(format!("nothing heard for {}s", dead_after.as_secs())),
        };
        if lines > 0 {
            backoff = BACKOFF_FIRST;
        }
        match outcome {
            Ok(()) => tracing::info!(
                message = "The agent ended the routing stream; connecting again.",
                agent = client.base()
            ),
            Err(error) => tracing::warn!(
                message = "The agent's routing stream is down; serving the last routing and connecting again.",
                agent = client.base(),
                %error,
                retry_in_ms = u64::try_from(backoff.as_millis()).unwrap_or(u64::MAX),
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Puts each newest value (a state, a TLS set) to the proxy with `put` (control socket: checked,
/// then applied); a failure is tried again after a pause unless a newer one came. `what` names it
/// in the log (never its content: a TLS set holds keys).
async fn apply<T, F, Fut>(
    mut newest: watch::Receiver<Option<Arc<T>>>,
    put: F,
    what: &'static str,
    shutdown: CancellationToken,
) where
    F: Fn(Arc<T>) -> Fut,
    Fut: Future<Output = Result<(), proxy::control_client::ControlClientError>>,
{
    let mut retry = BACKOFF_FIRST;
    loop {
        let value = newest.borrow_and_update().clone();
        let mut failed = false;
        if let Some(value) = value {
            match put(value).await {
                Ok(()) => retry = BACKOFF_FIRST,
                Err(error) => {
                    failed = true;
                    tracing::warn!(message = "What the agent sent cannot be applied; trying again.", what, %error);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = newest.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(retry), if failed => {
                retry = (retry * 2).min(BACKOFF_MAX);
            }
        }
    }
}

/// Every second, the proxy's cumulative counters to the agent.
async fn report(
    client: Client,
    control: ControlClient,
    id: ProxyId,
    tls_applied: Arc<AtomicU64>,
    shutdown: CancellationToken,
) {
    let incarnation = incarnation();
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(REPORT_EVERY) => {}
        }
        let mut releases = match control.stats().await {
            Ok(releases) => releases,
            Err(error) => {
                tracing::warn!(message = "Cannot read the proxy's counters.", %error);
                continue;
            }
        };
        releases.truncate(MAX_PROXY_REPORT_RELEASES);
        let sent = client
            .proxy_report(&ProxyReport {
                proxy: id.clone(),
                incarnation: incarnation.clone(),
                releases,
                tls_generation: tls_applied.load(Ordering::Relaxed),
            })
            .await;
        match sent {
            Ok(()) if failing => {
                failing = false;
                tracing::info!(message = "Reporting counters to the agent again.");
            }
            Ok(()) => {}
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(message = "Cannot report counters to the agent; trying every second.", %error);
            }
            Err(_) => {}
        }
    }
}

/// New at each start: the process id and the start time, so the agent tells a restart (counters
/// from zero) from a reading that went down.
fn incarnation() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// The token in `path`, trimmed; the messages never hold its value.
fn read_token(path: &Path) -> Result<String, String> {
    let file = std::fs::File::open(path)
        .map_err(|error| format!("cannot read the token file `{}`: {error}", path.display()))?;
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE)
        .read_to_string(&mut text)
        .map_err(|error| format!("cannot read the token file `{}`: {error}", path.display()))?;
    let token = text.trim();
    if !token.starts_with("rwy_") || token.contains(char::is_whitespace) {
        return Err(format!(
            "the token file `{}` does not hold one token (`rwy_…`, one line)",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .ok()
        .filter(|name| ProxyId::is_valid(name))
        .unwrap_or_else(|| "proxy".to_owned())
}
