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
    if let Ok(runtimes) = engine.runtimes.lock() {
        for (key, runtime) in runtimes.iter() {
            for (id, instance) in &runtime.instances {
                if !engine.drivers.is_swarm(id) || instance.phase == InstancePhase::Starting {
                    // A starting instance is the deploy's to judge (its start waits for a task).
                    continue;
                }
                match engine.drivers.address(id) {
                    None => gone.push((key.clone(), id.clone())),
                    Some(address) if address != instance.addr() => {
                        moved.push((key.clone(), id.clone(), address));
                    }
                    Some(_) => {}
                }
            }
        }
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
