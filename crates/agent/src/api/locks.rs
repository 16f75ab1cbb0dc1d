//! The deploy lock of an app environment: read it, clear a stale one (admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::engine::Engine;
use crate::store::NewEvent;

fn lock_view(lock: &crate::store::Lock) -> client::wire::LockView {
    client::wire::LockView {
        owner: lock.owner.clone(),
        deployment_id: lock.deployment_id.clone(),
        acquired_at: lock.acquired_at,
        heartbeat_at: lock.heartbeat_at,
        expires_at: lock.expires_at,
    }
}

pub async fn lock(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Option<client::wire::LockView>> {
    let lock = engine.store.lock(&app, &env).map_err(ApiError::internal)?;
    Ok(Json(lock.as_ref().map(lock_view)))
}

/// Clears a stale deploy lock (admin). The deployment that held it is not stopped by this.
pub async fn release_lock(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Option<client::wire::LockView>> {
    let removed = engine
        .store
        .force_release_lock(&app, &env)
        .map_err(ApiError::internal)?;
    if let Some(lock) = &removed {
        engine.record(NewEvent {
            app: Some(app),
            environment: Some(env),
            deployment_id: Some(lock.deployment_id.clone()),
            kind: "lock.released".to_owned(),
            message: format!(
                "{} released the deploy lock held by {} since {}",
                caller.name,
                lock.owner,
                crate::deploy::start::format_time(lock.acquired_at)
            ),
            data_json: "{}".to_owned(),
        });
    }
    Ok(Json(removed.as_ref().map(lock_view)))
}
