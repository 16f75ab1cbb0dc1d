//! `rollway agent` and `rollway proxy`: the two long-running processes, in the foreground.

use std::io::IsTerminal as _;

use tokio_util::sync::CancellationToken;

use crate::ExitStatus;
use crate::cli::{AgentRunArgs, ProxyRunArgs};
use crate::printer::Printer;

pub fn run_agent(args: &AgentRunArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    if let Some(action) = &args.action {
        return super::agent_state::run(action, printer);
    }
    let state_dir = args.state.clone().unwrap_or_else(super::connect::state_dir);
    let state_backup = match args.state_backup_schedule.as_deref() {
        None => None,
        Some(schedule) => match super::agent_state::state_backup(schedule) {
            Ok(state_backup) => Some(state_backup),
            Err((problem, hint)) => {
                printer.error(&problem);
                printer.hint(&hint);
                return Ok(ExitStatus::Usage);
            }
        },
    };
    let exe = std::env::current_exe()?;
    let config = agent::AgentConfig {
        state_dir: state_dir.clone(),
        api: args.api,
        proxy: args.proxy,
        proxy_metrics: args.proxy_metrics,
        https: args.https,
        acme_directory: args.acme_directory.clone(),
        acme_email: args.acme_email.clone(),
        acme_ca: args.acme_ca.clone(),
        exe,
        master_key: args.master_key.clone(),
        api_tls: args.api_tls,
        api_cert: match (&args.api_cert, &args.api_key) {
            (Some(cert), Some(key)) => agent::api::tls::CertSource::Given {
                cert: cert.clone(),
                key: key.clone(),
            },
            _ => agent::api::tls::CertSource::SelfSigned,
        },
        state_backup: state_backup.clone(),
        swarm_ingress_port: args.swarm_ingress,
        swarm_ingress_https_port: args.swarm_ingress_https,
        swarm_ingress_agent: args.swarm_ingress_agent.clone(),
    };
    init_tracing();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        agent::run(config, shutdown, |started| {
            printer.status(
                "Listening",
                &format!(
                    "API on {}, apps on http://{}{}",
                    started.api_url,
                    started.proxy,
                    started
                        .https
                        .map(|https| format!(" and https://{https}"))
                        .unwrap_or_default()
                ),
            );
            if let Some(fingerprint) = started.api_fingerprint {
                // Labelled like `isolation:` so scripts and people can grep for it; clients pin it
                // (`--agent-fingerprint`, `ROLLWAY_AGENT_FINGERPRINT`).
                printer.raw_stderr(&format!("api certificate: {fingerprint}\n"));
            }
            // A fact about the host, labelled like `warning:` so it can be grepped for.
            printer.raw_stderr(&format!("isolation: {}\n", started.isolation.describe()));
            if let Some(gap) = started.isolation.gap() {
                printer.warning(&gap);
            }
            if let Some(state_backup) = &state_backup {
                printer.status(
                    "Scheduled",
                    &format!(
                        "backups of the agent's state to {} on `{}`",
                        state_backup.remote.shown(),
                        state_backup.schedule
                    ),
                );
            }
            if let Some((from, to)) = &started.master_key_moved {
                printer.status(
                    "Moved",
                    &format!(
                        "the master key from `{}` to `{}`: it no longer sits beside the store",
                        from.display(),
                        to.display()
                    ),
                );
            }
            if let Some(token) = started.admin_token {
                let path = state_dir.join("admin.token");
                // Shown once, and only to a person: a service's stdout ends up in a log file,
                // where a token must never be (DESIGN.md, promise 7). It is in admin.token (0600).
                if std::io::stdout().is_terminal() {
                    printer.status(
                        "Created",
                        &format!("admin token (shown once; also in `{}`):", path.display()),
                    );
                    let _ = printer.data(token.expose());
                } else {
                    printer.status(
                        "Created",
                        &format!(
                            "admin token in `{}` (not printed: stdout is not a terminal)",
                            path.display()
                        ),
                    );
                }
            }
        })
        .await
    })?;
    Ok(ExitStatus::Success)
}

pub fn run_proxy(args: &ProxyRunArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    if let Some(crate::cli::ProxyAction::Upgrade { json, agent }) = &args.action {
        return super::proxy::upgrade(agent, *json, printer);
    }
    let (Some(state), Some(listen)) = (args.state.clone(), args.listen) else {
        printer.error("`rollway proxy` needs `--state DIR` and `--listen ADDR`");
        return Ok(ExitStatus::Usage);
    };
    if let Some(agent) = &args.follow {
        return super::proxy_follow::run(args, agent, state, listen, printer);
    }
    init_tracing();
    let listeners = if args.listeners_on_stdin {
        use std::os::fd::AsFd as _;
        let stdin = std::io::stdin().as_fd().try_clone_to_owned()?;
        let stream = std::os::unix::net::UnixStream::from(stdin);
        let fds = proxy::handover::receive(&stream, std::time::Duration::from_secs(10)).map_err(
            |error| anyhow::anyhow!("cannot take the data listeners from stdin: {error}"),
        )?;
        Some(std::sync::Arc::new(fds))
    } else {
        None
    };
    // One thread for the control plane (control socket, metrics, health checks, handover): requests are
    // served by the data-plane workers' own threads (`proxy::workers`), so a multi-thread runtime here
    // only added idle threads, each with its stack and allocator heap resident (issue 20).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let mut config = proxy::process::ProcessConfig::new(state, listen);
        config.metrics = args.metrics;
        config.https = args.https;
        config.config.https_port = args.https.map(|addr| addr.port());
        config.listeners = listeners;
        config.takeover = args.takeover;
        config.config.trusted_proxies = args.trusted_proxies.clone();
        proxy::process::run(config, shutdown).await
    })?;
    Ok(ExitStatus::Success)
}

pub(super) async fn stop_on_signal(shutdown: CancellationToken) {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => return,
        };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    shutdown.cancel();
}

/// JSON lines on stderr; `RUST_LOG`-style filtering through `ROLLWAY_LOG` (default `info`).
pub(super) fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ROLLWAY_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
