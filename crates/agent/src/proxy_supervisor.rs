//! The proxy's supervisor: notices at once when the proxy process exits (kill -9, a crash, a stop by
//! hand), records it and alerts, and starts the next one on the same listeners with the agent's
//! routing state. Only the requests in flight at the exit fail: new connections wait in the listen
//! backlog, which the agent keeps open (`proxy_link`).
//!
//! It does not decide routes (the engine's `desired_state` does) nor bind anything.

use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::proxy_link::{Launch, ProxyHealth};
use crate::store::NewEvent;

/// Waits between failed restarts, growing to the last one and staying there.
const BACKOFF: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(200),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(5),
];

/// Runs until the agent shuts down; the proxy keeps running after that, on purpose.
pub async fn supervise(engine: Arc<Engine>) {
    loop {
        let Some(pid) = engine.proxy.status().pid else {
            return;
        };
        let how = tokio::select! {
            () = engine.shutdown.cancelled() => return,
            how = engine.proxy.wait_exit(pid) => how,
        };
        if engine.shutdown.is_cancelled() {
            return;
        }
        // Replaced on purpose (an upgrade): the new one is the one to watch now.
        engine.proxy.wait_replacement().await;
        if engine.proxy.status().pid != Some(pid) {
            continue;
        }
        let exited_at = tokio::time::Instant::now();
        engine.proxy.set_status(|status| {
            status.health = ProxyHealth::Restarting;
            status.pid = None;
            status.last_exit = Some(format!("pid {pid} {how}"));
        });
        let holds = engine.proxy.status().holds_listeners;
        record(
            &engine,
            "proxy.exited",
            format!(
                "the proxy (pid {pid}) {how}; restarting it{}",
                if holds {
                    " (new connections wait for it in the listen backlog)"
                } else {
                    " (this agent does not hold its listeners: connections are refused until it is back)"
                }
            ),
        );
        restart(&engine, exited_at).await;
    }
}

/// Replaces the running proxy with one of the agent's binary (a hot restart) and says so.
pub async fn upgrade(
    engine: &Arc<Engine>,
    why: &str,
) -> Result<(Option<u32>, u32), crate::proxy_link::LinkError> {
    let previous = engine.proxy.status().pid;
    let pid = engine.proxy.upgrade().await?;
    if let Err(error) = engine.push_routes().await {
        tracing::error!(message = "Cannot give the new proxy its routes.", %error);
    }
    record(
        engine,
        "proxy.upgraded",
        format!(
            "{why}: the proxy (pid {pid}) took over the listeners from pid {}, which drains and exits",
            previous.map_or_else(|| "unknown".to_owned(), |pid| pid.to_string())
        ),
    );
    Ok((previous, pid))
}

async fn restart(engine: &Arc<Engine>, exited_at: tokio::time::Instant) {
    let Some(command) = engine.proxy.command() else {
        return;
    };
    let mut attempt = 0usize;
    loop {
        let wait = BACKOFF[attempt.min(BACKOFF.len() - 1)];
        if !wait.is_zero() {
            tokio::select! {
                () = engine.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
        attempt += 1;
        match engine.proxy.spawn(&command, Launch::Fresh).await {
            Ok(pid) => {
                // It reloaded routes.json already; the agent's whole state makes sure it is current.
                if let Err(error) = engine.push_routes().await {
                    tracing::error!(message = "Cannot give the restarted proxy its routes.", %error);
                }
                let restarts = {
                    let mut restarts = 0;
                    engine.proxy.set_status(|status| {
                        status.restarts += 1;
                        restarts = status.restarts;
                    });
                    restarts
                };
                record(
                    engine,
                    "proxy.restarted",
                    format!(
                        "the proxy is back (pid {pid}) {:.2}s after it exited; restart {restarts} since the agent started",
                        exited_at.elapsed().as_secs_f64()
                    ),
                );
                return;
            }
            Err(error) => {
                engine
                    .proxy
                    .set_status(|status| status.health = ProxyHealth::Down);
                // Once, then quietly: an event a second would bury the audit log.
                if attempt == 1 {
                    record(
                        engine,
                        "proxy.restart_failed",
                        format!(
                            "the proxy cannot be started again: {}; retrying every {}s",
                            crate::report::chain(&error),
                            BACKOFF[BACKOFF.len() - 1].as_secs()
                        ),
                    );
                } else {
                    tracing::warn!(message = "The proxy cannot be started again.", error = %crate::report::chain(&error));
                }
            }
        }
    }
}

fn record(engine: &Engine, kind: &str, message: String) {
    engine.record(NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: kind.to_owned(),
        message,
        data_json: "{}".to_owned(),
    });
}
