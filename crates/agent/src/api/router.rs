//! Every route of the control API and the role it needs, in one place.

use std::sync::Arc;

use axum::Router;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{delete, get, post, put};

use crate::api::{auth, handlers};
use crate::engine::Engine;
use crate::tokens::Role;

/// Largest artifact the API takes.
pub const MAX_ARTIFACT_BYTES: usize = 512 * 1024 * 1024;

pub fn router(engine: Arc<Engine>) -> Router {
    let viewer = Router::new()
        .route("/agent", get(handlers::agent_info))
        .route(
            "/apps/{app}/environments/{env}/status",
            get(handlers::status),
        )
        .route(
            "/apps/{app}/environments/{env}/releases",
            get(handlers::releases),
        )
        .route("/apps/{app}/environments/{env}/logs", get(handlers::logs))
        .route(
            "/apps/{app}/environments/{env}/secrets",
            get(handlers::secrets),
        )
        .route(
            "/apps/{app}/environments/{env}/backups",
            get(handlers::backups),
        )
        .route("/deployments/{id}", get(handlers::deployment))
        .route("/deployments/{id}/events", get(handlers::deployment_events))
        .route("/deployments/{id}/stream", get(handlers::deployment_stream))
        .route("/events", get(handlers::events))
        .route("/metrics", get(handlers::metrics))
        .route("/events/stream", get(handlers::events_stream))
        .route("/apps/{app}/environments/{env}/lock", get(handlers::lock))
        .route(
            "/apps/{app}/environments/{env}/logs/stream",
            get(handlers::logs_stream),
        )
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Viewer, request, next)
        }));
    let deployer = Router::new()
        .route(
            "/artifacts/{digest}",
            put(handlers::upload_artifact).head(handlers::artifact_exists),
        )
        .route(
            "/apps/{app}/environments/{env}/deployments",
            post(handlers::deploy),
        )
        .route(
            "/apps/{app}/environments/{env}/rollback",
            post(handlers::rollback),
        )
        .route(
            "/apps/{app}/environments/{env}/secrets/{name}",
            put(handlers::set_secret).delete(handlers::unset_secret),
        )
        .route(
            "/apps/{app}/environments/{env}/backups",
            post(handlers::create_backup),
        )
        .route(
            "/apps/{app}/environments/{env}/backups/{id}/restore",
            post(handlers::restore_backup),
        )
        .route("/deployments/{id}/promote", post(handlers::promote))
        .route("/deployments/{id}/abort", post(handlers::abort))
        .route("/deployments/{id}/approve", post(handlers::approve))
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Deployer, request, next)
        }));
    let admin = Router::new()
        .route(
            "/tokens",
            get(handlers::tokens).post(handlers::create_token),
        )
        .route("/tokens/{id}", delete(handlers::revoke_token))
        .route("/proxy/upgrade", post(handlers::upgrade_proxy))
        .route(
            "/apps/{app}/environments/{env}/lock",
            delete(handlers::release_lock),
        )
        .route_layer(from_fn(|request, next| {
            auth::require(Role::Admin, request, next)
        }));
    let v1 = viewer
        .merge(deployer)
        .merge(admin)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_ARTIFACT_BYTES))
        .layer(from_fn_with_state(engine.clone(), auth::authenticate));
    Router::new()
        .nest("/v1", v1)
        .route("/healthz", get(handlers::healthz))
        .with_state(engine)
}
