//! Routing follows the swarm's tasks: when Swarm stops a task or replaces it (a crash, a
//! `docker kill`, a lost node), the instance's address changes, and the proxy must neither keep
//! sending to the old one nor send to the new one before it is healthy.
//!
//! The swarm driver announces every change of a slot's task (engine events and a periodic
//! reconcile, see `driver::swarm`); on each, every swarm instance of the runtime is compared
//! with the driver's view:
//!
//! - no running task: the instance leaves routing at once (`unhealthy`, pushed), before
//!   anything else happens; the proxy's own retry covers requests in flight to it.
//! - a running task on another port (a replacement): it stays out of routing, the proxy drops
//!   the old address (drained), then the instance takes the new port, still out of routing; the
//!   continuous watch (`watch::health_loop`) lets it back in after its health checks pass on
//!   the new port, like any instance that recovers.
//! - a warm instance (out of routing, kept for a rollback) only follows its task's address, so
//!   that a warm rollback's health gate checks the task that runs.

use std::sync::Arc;

use crate::engine::{AppEnv, Engine, InstancePhase};

/// Runs for the agent's life: waits for the swarm driver to be connected (by a deploy or by
/// recovery), then follows its changes.
pub async fn run(engine: Arc<Engine>) {
    let mut connected = engine.drivers.swarm_connected();
    let swarm = loop {
        if let Some(swarm) = connected.borrow_and_update().clone() {
            break swarm;
        }
        tokio::select! {
            _ = engine.shutdown.cancelled() => return,
            changed = connected.changed() => if changed.is_err() { return },
        }
    };
    let mut changes = swarm.changes();
    loop {
        tokio::select! {
            _ = engine.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
        follow_once(&engine).await;
    }
}

/// One pass over every swarm instance of every app environment.
async fn follow_once(engine: &Arc<Engine>) {
    let mut gone: Vec<(AppEnv, String)> = Vec::new();
    let mut moved: Vec<(AppEnv, String, std::net::SocketAddr)> = Vec::new();
    let mut warm_moved = false;
    if let Ok(mut runtimes) = engine.runtimes.lock() {
        for (key, runtime) in runtimes.iter_mut() {
            for (id, instance) in runtime.instances.iter_mut() {
                if !engine.drivers.is_swarm(id) || instance.phase == InstancePhase::Starting {
                    // A starting instance is the deploy's to judge (its start waits for a task).
                    continue;
                }
                let address = engine.drivers.address(id);
                if instance.phase != InstancePhase::Ready {
                    // Warm: not in routing, so it only follows its task's address, for the
                    // health gate of a warm rollback to find it.
                    if let Some(address) = address.filter(|address| *address != instance.addr()) {
                        instance.host = address.ip();
                        instance.port = address.port();
                        warm_moved = true;
                    }
                    continue;
                }
                match address {
                    None => gone.push((key.clone(), id.clone())),
                    Some(address) if address != instance.addr() => {
                        moved.push((key.clone(), id.clone(), address));
                    }
                    Some(_) => {}
                }
            }
        }
    }
    if warm_moved {
        persist_all(engine);
    }
    if gone.is_empty() && moved.is_empty() {
        return;
    }

    let leaving = gone
        .iter()
        .cloned()
        .chain(moved.iter().map(|(key, id, _)| (key.clone(), id.clone())));
    for (key, id) in leaving {
        let was_routed = engine
            .with_runtime(&key, |runtime| {
                runtime.instances.get_mut(&id).map(|instance| {
                    let was = !instance.unhealthy;
                    instance.unhealthy = true;
                    was
                })
            })
            .unwrap_or(false);
        if was_routed {
            tracing::warn!(message = "A swarm task stopped; its instance left routing.", instance = %id);
            engine.record_progress(
                crate::engine::Subject::app(&key),
                &client::wire::DeploymentEvent::InstanceUnhealthy {
                    instance: id.clone(),
                    failures: 0,
                },
            );
        }
    }
    let _ = engine.push_routes().await;
    if moved.is_empty() {
        return;
    }
    let drain = engine
        .runtimes
        .lock()
        .map(|runtimes| {
            runtimes
                .values()
                .flat_map(|runtime| runtime.routes.iter().map(|route| route.drain))
                .max()
                .unwrap_or_default()
        })
        .unwrap_or_default();
    let moved_ids: Vec<String> = moved.iter().map(|(_, id, _)| id.clone()).collect();
    crate::deploy::spec::wait_gone_from_proxy(engine, &moved_ids, drain).await;
    for (key, id, address) in moved {
        engine.with_runtime(&key, |runtime| {
            if let Some(instance) = runtime.instances.get_mut(&id) {
                instance.host = address.ip();
                instance.port = address.port();
            }
        });
        crate::deploy::spec::persist_instance(engine, &key, &id);
        tracing::info!(message = "A swarm task was replaced; its instance waits for health checks on the new port.", instance = %id, %address);
    }
}

/// Writes every swarm instance's address to the store (after a warm one followed its task).
fn persist_all(engine: &Engine) {
    let ids: Vec<(AppEnv, String)> = engine
        .runtimes
        .lock()
        .map(|runtimes| {
            runtimes
                .iter()
                .flat_map(|(key, runtime)| {
                    runtime
                        .instances
                        .keys()
                        .filter(|id| engine.drivers.is_swarm(id))
                        .map(|id| (key.clone(), id.clone()))
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    for (key, id) in ids {
        crate::deploy::spec::persist_instance(engine, &key, &id);
    }
}
