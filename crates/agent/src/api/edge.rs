//! `PUT|DELETE /v1/apps/{app}/environments/{env}/maintenance` and `…/pause`: an environment's edge
//! controls, written to the store first, then pushed to the proxy with the routing state.
//!
//! Role: deployer. Maintenance and pause are operational switches of the same weight as a deploy or a
//! rollback (which a deployer may already use to take an environment down); they never reveal or
//! change secrets, tokens or other environments.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Extension, Path, State};
use client::wire::{EdgeView, MaintenanceRequest, MaintenanceView, PauseRequest, PauseView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson, ApiResult, Kind};
use crate::edge::{
    EnvEdge, MAINTENANCE_RETRY_AFTER, MAX_MESSAGE_CHARS, MAX_PAUSE, MaintenanceMode, Pause,
    default_page,
};
use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::NewEvent;

/// Longest `Retry-After` accepted, in seconds (a day).
const MAX_RETRY_AFTER_S: u64 = 86_400;

pub async fn set_maintenance(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<MaintenanceRequest>,
) -> ApiResult<EdgeView> {
    known_environment(&engine, &app, &env)?;
    if let Some(message) = &request.message
        && message.chars().count() > MAX_MESSAGE_CHARS
    {
        return Err(invalid(format!(
            "the maintenance message has {} characters; at most {MAX_MESSAGE_CHARS} are accepted",
            message.chars().count()
        )));
    }
    if let Some(page) = &request.page_html
        && page.len() > proxy::MAX_MAINTENANCE_PAGE_BYTES
    {
        return Err(invalid(format!(
            "the maintenance page is {} bytes; at most {} are accepted",
            page.len(),
            proxy::MAX_MAINTENANCE_PAGE_BYTES
        )));
    }
    for network in &request.allow {
        if let Err(error) = network.parse::<proxy::ClientNetwork>() {
            return Err(invalid(format!("`--allow`: {error}")));
        }
    }
    let retry_after_s = request
        .retry_after_s
        .unwrap_or(MAINTENANCE_RETRY_AFTER.as_secs());
    if retry_after_s > MAX_RETRY_AFTER_S {
        return Err(invalid(format!(
            "`Retry-After` of {retry_after_s} s is more than the {MAX_RETRY_AFTER_S} s accepted"
        )));
    }
    let custom_page = request.page_html.is_some();
    let maintenance = MaintenanceMode {
        page_html: request
            .page_html
            .clone()
            .unwrap_or_else(|| default_page(request.message.as_deref())),
        message: request.message.clone(),
        custom_page,
        allow: request.allow.clone(),
        retry_after_s,
        since_ms: now_ms(),
        by: caller.name.clone(),
    };
    let page = if custom_page {
        "the app's own page"
    } else {
        "the default page"
    };
    let allowed = if request.allow.is_empty() {
        String::new()
    } else {
        format!("; still open to {}", request.allow.join(", "))
    };
    let message = format!(
        "{} put {app} in {env} in maintenance ({page}{allowed})",
        caller.name
    );
    let edited = edit(&engine, &app, &env, "maintenance.on", message, |env_edge| {
        env_edge.maintenance = Some(maintenance);
    })
    .await?;
    Ok(Json(edited))
}

pub async fn clear_maintenance(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<EdgeView> {
    known_environment(&engine, &app, &env)?;
    let message = format!("{} took {app} in {env} out of maintenance", caller.name);
    let edited = edit(
        &engine,
        &app,
        &env,
        "maintenance.off",
        message,
        |env_edge| {
            env_edge.maintenance = None;
        },
    )
    .await?;
    Ok(Json(edited))
}

pub async fn pause(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<PauseRequest>,
) -> ApiResult<EdgeView> {
    known_environment(&engine, &app, &env)?;
    let max = Duration::from_millis(request.max_ms);
    if max.is_zero() || max > MAX_PAUSE {
        return Err(invalid(format!(
            "a pause of {} ms is out of range; accepted: above 0, at most {} s (requests wait at most the proxy's queue bound, 30 s by default)",
            request.max_ms,
            MAX_PAUSE.as_secs()
        )));
    }
    let since_ms = now_ms();
    let pause = Pause {
        since_ms,
        until_ms: since_ms.saturating_add(i64::try_from(request.max_ms).unwrap_or(i64::MAX)),
    };
    let message = format!(
        "{} paused {app} in {env}: new requests wait until resumed, {} s at most",
        caller.name,
        max.as_secs_f64()
    );
    let edited = edit(&engine, &app, &env, "pause.on", message, |env_edge| {
        env_edge.pause = Some(pause);
    })
    .await?;
    spawn_auto_resume(engine, AppEnv::new(app, env), pause);
    Ok(Json(edited))
}

pub async fn resume(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<EdgeView> {
    known_environment(&engine, &app, &env)?;
    let message = format!(
        "{} resumed {app} in {env}: held requests go on",
        caller.name
    );
    let edited = edit(&engine, &app, &env, "pause.off", message, |env_edge| {
        env_edge.pause = None;
    })
    .await?;
    Ok(Json(edited))
}

/// The edge controls of an environment as `status` shows them; `None` when all are off.
pub fn edge_view(env_edge: &EnvEdge, now_ms: i64) -> Option<EdgeView> {
    let view = EdgeView {
        maintenance: env_edge
            .maintenance
            .as_ref()
            .map(|maintenance| MaintenanceView {
                message: maintenance.message.clone(),
                custom_page: maintenance.custom_page,
                allow: maintenance.allow.clone(),
                retry_after_s: maintenance.retry_after_s,
                since: maintenance.since_ms,
                by: maintenance.by.clone(),
            }),
        pause: env_edge
            .pause
            .filter(|pause| !pause.is_over(now_ms))
            .map(|pause| PauseView {
                since: pause.since_ms,
                until: pause.until_ms,
            }),
    };
    (view != EdgeView::default()).then_some(view)
}

/// Loads every environment's edge controls at start; a pause that ended while the agent was down is
/// cleared (with its event), a running one gets its timer again. Before the first routing push, so the
/// proxy never sees a state without them.
pub fn restore(engine: &Arc<Engine>) {
    let edges = match engine.store.env_edges() {
        Ok(edges) => edges,
        Err(error) => {
            tracing::error!(message = "Cannot read the edge controls; none are applied.", %error);
            return;
        }
    };
    let now = now_ms();
    for ((app, environment), mut env_edge) in edges {
        let key = AppEnv::new(app, environment);
        if let Some(pause) = env_edge.pause {
            if pause.is_over(now) {
                env_edge.pause = None;
                if let Err(error) =
                    engine
                        .store
                        .set_env_edge(&key.app, &key.environment, &env_edge, now)
                {
                    tracing::error!(message = "Cannot clear an ended pause.", %error);
                }
                record(
                    engine,
                    &key.app,
                    &key.environment,
                    "pause.ended",
                    ended_message(&key, pause),
                );
            } else {
                spawn_auto_resume(engine.clone(), key.clone(), pause);
            }
        }
        engine.set_env_edge(&key, env_edge);
    }
}

/// Ends `pause` at its bound unless it was lifted or replaced meanwhile.
fn spawn_auto_resume(engine: Arc<Engine>, key: AppEnv, pause: Pause) {
    tokio::spawn(async move {
        let left = u64::try_from(pause.until_ms.saturating_sub(now_ms())).unwrap_or(0);
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(left)) => {}
            () = engine.shutdown.cancelled() => return,
        }
        let still = engine
            .env_edges()
            .get(&key)
            .is_some_and(|env_edge| env_edge.pause == Some(pause));
        if !still {
            return;
        }
        let message = ended_message(&key, pause);
        if let Err(error) = edit(
            &engine,
            &key.app,
            &key.environment,
            "pause.ended",
            message,
            |env_edge| {
                env_edge.pause = None;
            },
        )
        .await
        {
            // The proxy ended the pause by itself at the same time; only the push failed.
            tracing::warn!(message = "Cannot push the end of a pause.", error = %error.message);
        }
    });
}

fn ended_message(key: &AppEnv, pause: Pause) -> String {
    format!(
        "{} in {} resumed by itself after its {} s bound",
        key.app,
        key.environment,
        Duration::from_millis(u64::try_from(pause.until_ms - pause.since_ms).unwrap_or(0))
            .as_secs_f64()
    )
}

/// Writes the new controls to the store, then pushes the routing state, then records the event. A
/// failed push leaves the store as written: the proxy supervisor pushes the whole state again when the
/// proxy comes back.
async fn edit(
    engine: &Arc<Engine>,
    app: &str,
    env: &str,
    kind: &str,
    message: String,
    change: impl FnOnce(&mut EnvEdge),
) -> Result<EdgeView, ApiError> {
    let key = AppEnv::new(app, env);
    let mut env_edge = engine.env_edges().remove(&key).unwrap_or_default();
    change(&mut env_edge);
    let now = now_ms();
    engine
        .store
        .set_env_edge(app, env, &env_edge, now)
        .map_err(ApiError::internal)?;
    engine.set_env_edge(&key, env_edge.clone());
    record(engine, app, env, kind, message);
    engine.push_routes().await.map_err(|error| {
        ApiError::new(
            Kind::Unavailable,
            "proxy_unreachable",
            format!(
                "saved, but the proxy did not take it yet ({}); it gets it when it is back",
                crate::report::chain(&error)
            ),
        )
    })?;
    Ok(edge_view(&env_edge, now).unwrap_or_default())
}

fn record(engine: &Engine, app: &str, env: &str, kind: &str, message: String) {
    engine.record(NewEvent {
        app: Some(app.to_owned()),
        environment: Some(env.to_owned()),
        deployment_id: None,
        kind: kind.to_owned(),
        message,
        data_json: "{}".to_owned(),
    });
}

/// A value of the request that is read but refused (422).
fn invalid(message: String) -> ApiError {
    ApiError::new(Kind::Invalid, "invalid", message)
}

/// Refuses names that are not slugs and environments never deployed on this agent (a typo would
/// otherwise switch nothing and say it did).
pub(crate) fn known_environment(engine: &Engine, app: &str, env: &str) -> Result<(), ApiError> {
    crate::api::input::app_name(app).map_err(|error| ApiError::bad_request(error.to_string()))?;
    crate::api::input::environment_name(env)
        .map_err(|error| ApiError::bad_request(error.to_string()))?;
    let known = engine.store.apps().map_err(ApiError::internal)?;
    if known.iter().any(|(a, e, _)| a == app && e == env) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!(
            "no app `{app}` in environment `{env}` on this agent: deploy it first"
        )))
    }
}
