//! Destroying an environment: the one path `rollway destroy --env`, `rollway env destroy` and an
//! expired preview all take. Its instances stop and its routes go; its releases, events, backups
//! and secrets stay, and its next release that goes live brings it back.
//!
//! It does not check roles or confirmations (the API does) nor decide when a preview expires
//! (`previews.rs`).

use std::sync::Arc;

use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::{NewEvent, StoreError};

/// Why an environment was destroyed, as its event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestroyReason {
    /// A person asked (`rollway destroy`, `rollway env destroy`).
    Asked,
    /// A preview outlived its ttl; the agent destroyed it.
    Expired,
}

#[derive(Debug, thiserror::Error)]
pub enum DestroyError {
    #[error(
        "deployment `{deployment}` of `{app}` in `{environment}` is in flight; abort it or wait for it to end, then destroy"
    )]
    InFlight {
        app: String,
        environment: String,
        deployment: String,
    },
    #[error(
        "the deploy lock of `{app}` in `{environment}` is held by `{owner}`; wait for it or `rollway lock release`"
    )]
    Locked {
        app: String,
        environment: String,
        owner: String,
    },
    #[error(
        "the proxy did not take the routes without `{app}` in `{environment}`; nothing was stopped, try again"
    )]
    Proxy {
        app: String,
        environment: String,
        #[source]
        source: crate::proxy_link::LinkError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Destroys `key`, refused while a deployment is in flight or the deploy lock is held. Recorded
/// first (`destroyed_environments`), so an agent killed half-way finishes the job when it starts
/// again (`recover`). Answers how many instances were stopped.
pub async fn destroy(
    engine: &Arc<Engine>,
    key: &AppEnv,
    by: &str,
    reason: DestroyReason,
) -> Result<usize, DestroyError> {
    let now = now_ms();
    if let Some(deployment) = engine
        .store
        .unfinished_deployments()?
        .into_iter()
        .find(|deployment| deployment.app == key.app && deployment.environment == key.environment)
    {
        return Err(DestroyError::InFlight {
            app: key.app.clone(),
            environment: key.environment.clone(),
            deployment: deployment.id.to_string(),
        });
    }
    if let Some(lock) = engine
        .store
        .lock(&key.app, &key.environment)?
        .filter(|lock| !lock.is_expired(now))
    {
        return Err(DestroyError::Locked {
            app: key.app.clone(),
            environment: key.environment.clone(),
            owner: lock.owner,
        });
    }
    engine
        .store
        .mark_destroyed(&key.app, &key.environment, by, now)?;
    engine
        .change_routing(key, |runtime| {
            runtime.routes.clear();
            runtime.weights.clear();
        })
        .await
        .map_err(|source| DestroyError::Proxy {
            app: key.app.clone(),
            environment: key.environment.clone(),
            source,
        })?;
    let ids: Vec<String> = engine.runtime(key).instances.keys().cloned().collect();
    crate::deploy::spec::stop_instances(engine, key, &ids).await;
    // On the swarm, also whatever the store does not list: every service, secret and the
    // environment's overlay network.
    if let Some(current) = engine.store.current(&key.app, &key.environment)? {
        crate::deploy::spec::sweep_swarm(engine, key, current, driver::swarm::Sweep::Everything)
            .await;
    }
    let why = match reason {
        DestroyReason::Asked => format!("{by} destroyed"),
        DestroyReason::Expired => "the preview expired; the agent destroyed".to_owned(),
    };
    engine.record(NewEvent {
        app: Some(key.app.clone()),
        environment: Some(key.environment.clone()),
        deployment_id: None,
        kind: "environment.destroyed".to_owned(),
        message: format!(
            "{why} {} in {}: {} instance(s) stopped, routes removed; releases, events and backups kept",
            key.app,
            key.environment,
            ids.len()
        ),
        data_json: serde_json::json!({
            "by": by,
            "instances": ids.len(),
            "expired": reason == DestroyReason::Expired,
        })
        .to_string(),
    });
    Ok(ids.len())
}
