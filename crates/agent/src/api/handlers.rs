//! Route handlers: parse the request, call the engine or the store, answer a wire type.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use client::wire::{
    AgentInfo, BackupView, DeployRequest, DeploymentState, DeploymentView, EventView, InstanceView,
    LogLineView, ReleaseView, RestoreView, RollbackRequest, SecretValue, SecretView, StatusView,
    TokenCreated, TokenRequest, TokenView, WeightView,
};
use futures_util::Stream;
use serde::Deserialize;

use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::{input, views};
use crate::deploy::executor::DeploymentData;
use crate::deploy::start;
use crate::engine::{Engine, now_ms};
use crate::secrets::Scrubber;
use crate::store::NewEvent;
use crate::tokens::{self, Role};

type ApiResult<T> = Result<Json<T>, ApiError>;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn agent_info(State(engine): State<Arc<Engine>>) -> ApiResult<AgentInfo> {
    Ok(Json(AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        proxy: engine.proxy_addr.to_string(),
        state_dir: engine.paths.state_dir.display().to_string(),
        isolation: Some(views::isolation_view(&engine.isolation)),
    }))
}

pub async fn artifact_exists(
    State(engine): State<Arc<Engine>>,
    Path(digest): Path<String>,
) -> StatusCode {
    if engine.artifacts.has(&digest) {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    }
}

pub async fn upload_artifact(
    State(engine): State<Arc<Engine>>,
    Path(digest): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let size = body.len();
    let artifacts = engine.artifacts.clone();
    let stored_digest = digest.clone();
    tokio::task::spawn_blocking(move || artifacts.put(&stored_digest, &body))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let _ = engine.store.record_artifact(&digest, size as u64, now_ms());
    Ok(StatusCode::CREATED)
}

pub async fn deploy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    Json(request): Json<DeployRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    input::manifest(&request.manifest)?;
    let deployment = start::deploy(
        &engine,
        &caller.name,
        &caller.token_id,
        &app,
        &env,
        &request,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(views::deployment_view(&deployment)),
    ))
}

pub async fn rollback(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    Json(request): Json<RollbackRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let deployment = start::rollback(
        &engine,
        &caller.name,
        &caller.token_id,
        &app,
        &env,
        &request,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(views::deployment_view(&deployment)),
    ))
}

pub async fn deployment(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    Ok(Json(views::deployment_view(&deployment)))
}

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    #[serde(default)]
    pub after: i64,
    #[serde(default = "default_limit")]
    pub limit: usize,
}

fn default_limit() -> usize {
    200
}

pub async fn deployment_events(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
    Query(query): Query<AfterQuery>,
) -> ApiResult<Vec<EventView>> {
    let events = engine
        .store
        .events_for_deployment(&id, query.after)
        .map_err(ApiError::internal)?;
    Ok(Json(events.iter().map(views::event_view).collect()))
}

/// Server-sent events of one deployment, from the start, until it finishes.
pub async fn deployment_stream(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    let stream = event_stream(engine, Some(id), 0);
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub async fn events(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<AfterQuery>,
) -> ApiResult<Vec<EventView>> {
    let events = engine
        .store
        .events_after(query.after, query.limit.min(10_000))
        .map_err(ApiError::internal)?;
    Ok(Json(events.iter().map(views::event_view).collect()))
}

/// Server-sent events of the whole audit log, from `after` on, until the client leaves.
pub async fn events_stream(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<AfterQuery>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    Sse::new(event_stream(engine, None, query.after)).keep_alive(KeepAlive::default())
}

/// Stored events first, then live ones; a deployment's stream ends with its `deployment.finished`.
fn event_stream(
    engine: Arc<Engine>,
    deployment: Option<String>,
    after: i64,
) -> impl Stream<Item = Result<SseEvent, Infallible>> {
    struct Cursor {
        engine: Arc<Engine>,
        deployment: Option<String>,
        after: i64,
        live: tokio::sync::broadcast::Receiver<EventView>,
        queue: std::collections::VecDeque<EventView>,
        backlog_read: bool,
        finished: bool,
    }
    // Subscribe before reading the backlog so that nothing falls between the two.
    let cursor = Cursor {
        live: engine.events.subscribe(),
        engine,
        deployment,
        after,
        queue: std::collections::VecDeque::new(),
        backlog_read: false,
        finished: false,
    };
    futures_util::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if cursor.finished {
                return None;
            }
            if let Some(event) = cursor.queue.pop_front() {
                if event.id <= cursor.after {
                    continue;
                }
                cursor.after = event.id;
                cursor.finished =
                    cursor.deployment.is_some() && event.kind == "deployment.finished";
                let data = serde_json::to_string(&event).unwrap_or_default();
                let sse = SseEvent::default()
                    .event("event")
                    .id(event.id.to_string())
                    .data(data);
                return Some((Ok(sse), cursor));
            }
            if !cursor.backlog_read {
                cursor.backlog_read = true;
                let stored = match &cursor.deployment {
                    Some(id) => cursor.engine.store.events_for_deployment(id, cursor.after),
                    None => cursor.engine.store.events_after(cursor.after, 10_000),
                };
                cursor
                    .queue
                    .extend(stored.unwrap_or_default().iter().map(views::event_view));
                continue;
            }
            match tokio::time::timeout(Duration::from_secs(30), cursor.live.recv()).await {
                Ok(Ok(event)) => {
                    let wanted = match &cursor.deployment {
                        Some(id) => event.deployment_id.as_deref() == Some(id.as_str()),
                        None => true,
                    };
                    if wanted {
                        cursor.queue.push_back(event);
                    }
                }
                // Fell behind the live channel: read the store again from the cursor.
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    cursor.backlog_read = false
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) => return None,
                Err(_) => {}
            }
        }
    })
}

pub async fn status(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<StatusView> {
    let known = engine.store.apps().map_err(ApiError::internal)?;
    if !known.iter().any(|(a, e, _)| *a == app && *e == env) {
        let environments: Vec<String> = known
            .iter()
            .filter(|(a, _, _)| *a == app)
            .map(|(_, e, _)| format!("`{e}`"))
            .collect();
        return Err(ApiError::not_found(if environments.is_empty() {
            format!("no app `{app}` on this agent: deploy it first (`rollway deploy --env {env}`)")
        } else {
            format!(
                "app `{app}` has no environment `{env}` on this agent; it has {}",
                environments.join(", ")
            )
        }));
    }
    let current = engine
        .store
        .current(&app, &env)
        .map_err(ApiError::internal)?;
    let runtime = engine.runtime(&(app.clone(), env.clone()));
    // What the proxy holds now tells which instances are draining; without an answer, none are.
    let observed: std::collections::BTreeMap<String, proxy::ObservedInstanceState> = engine
        .proxy
        .client()
        .state()
        .await
        .map(|observed| {
            observed
                .routes
                .into_iter()
                .flat_map(|route| route.instances)
                .map(|instance| (instance.id, instance.state))
                .collect()
        })
        .unwrap_or_default();
    let instances = runtime
        .instances
        .iter()
        .map(|(id, instance)| InstanceView {
            id: id.clone(),
            release: instance.release,
            service: instance.service.clone(),
            port: instance.port,
            state: views::instance_state(
                instance,
                runtime
                    .weights
                    .iter()
                    .any(|(release, weight)| *release == instance.release && *weight > 0),
                observed.get(id).copied(),
                engine.drivers.status(id),
            ),
        })
        .collect();
    let deployment = engine
        .store
        .deployments(&app, &env, 1)
        .map_err(ApiError::internal)?
        .into_iter()
        .next()
        .map(|deployment| views::deployment_view(&deployment));
    let inconclusive = match &deployment {
        Some(deployment) => engine
            .store
            .events_for_deployment(&deployment.id, 0)
            .map_err(ApiError::internal)?
            .into_iter()
            .rev()
            .find(|event| event.kind == "analysis.inconclusive")
            .map(|event| event.message),
        None => None,
    };
    let url = runtime
        .routes
        .first()
        .map(|route| match route.hosts.first() {
            Some(host) => format!(
                "http://{host}:{}/ (via {})",
                engine.proxy_addr.port(),
                engine.proxy_addr
            ),
            None => format!("http://{}/", engine.proxy_addr),
        });
    let app_key = (app.clone(), env.clone());
    Ok(Json(StatusView {
        app,
        environment: env,
        current_release: current,
        url,
        instances,
        weights: runtime
            .weights
            .iter()
            .map(|(release, weight)| WeightView {
                release: *release,
                weight: *weight,
            })
            .collect(),
        deployment,
        proxy: Some(views::proxy_view(&engine.proxy.status())),
        inconclusive,
        edge: crate::api::edge::edge_view(
            &engine
                .env_edges()
                .remove(&(app_key.0, app_key.1))
                .unwrap_or_default(),
            now_ms(),
        ),
    }))
}

/// `POST /v1/proxy/upgrade` (admin): a hot restart of the proxy onto the agent's binary.
pub async fn upgrade_proxy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<client::wire::ProxyUpgradeView> {
    let why = format!("{} asked for it", caller.name);
    let (previous_pid, _) = crate::proxy_supervisor::upgrade(&engine, &why)
        .await
        .map_err(|error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "proxy_upgrade_failed",
                format!(
                    "the new proxy did not take over, so the old one keeps serving: {}",
                    crate::report::chain(&error)
                ),
            )
        })?;
    Ok(Json(client::wire::ProxyUpgradeView {
        previous_pid,
        proxy: views::proxy_view(&engine.proxy.status()),
    }))
}

pub async fn releases(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<ReleaseView>> {
    let current = engine
        .store
        .current(&app, &env)
        .map_err(ApiError::internal)?;
    let releases = engine
        .store
        .releases(&app, &env)
        .map_err(ApiError::internal)?;
    Ok(Json(
        releases
            .iter()
            .map(|release| views::release_view(release, current))
            .collect(),
    ))
}

#[derive(Debug, Deserialize)]
pub struct LogsQuery {
    #[serde(default = "default_lines")]
    pub n: usize,
}

fn default_lines() -> usize {
    100
}

pub async fn logs(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
    Query(query): Query<LogsQuery>,
) -> ApiResult<Vec<LogLineView>> {
    let key = (app.clone(), env.clone());
    let runtime = engine.runtime(&key);
    // No secret value leaves through this route, even if the app printed one: every version of
    // every secret (a rollback brings old ones back), and nothing at all if they cannot be opened.
    let scrubber = Scrubber::for_environment(&engine.store, &engine.master_key, &app, &env)
        .map_err(ApiError::internal)?;
    let n = query.n.min(10_000);
    let engine_for_read = engine.clone();
    let ids: Vec<String> = runtime.instances.keys().cloned().collect();
    let lines = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        for id in ids {
            if let Ok(found) = engine_for_read.drivers.logs(&id, n) {
                lines.extend(found.into_iter().map(|line| LogLineView {
                    instance_id: line.instance_id,
                    line: scrubber.scrub(&line.line).into_owned(),
                }));
            }
        }
        lines
    })
    .await
    .map_err(ApiError::internal)?;
    Ok(Json(lines))
}

pub async fn tokens(State(engine): State<Arc<Engine>>) -> ApiResult<Vec<TokenView>> {
    let tokens = engine.store.tokens().map_err(ApiError::internal)?;
    Ok(Json(tokens.iter().map(views::token_view).collect()))
}

pub async fn create_token(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Json(request): Json<TokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let role: Role = request
        .role
        .parse()
        .map_err(|error: tokens::ParseRoleError| ApiError::bad_request(error.to_string()))?;
    input::token_name(request.name.trim())?;
    let (record, plain) =
        tokens::create(&engine.store, request.name.trim(), role).map_err(ApiError::internal)?;
    engine.record(NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: "token.created".to_owned(),
        message: format!("{} created token `{}` ({role})", caller.name, record.name),
        data_json: "{}".to_owned(),
    });
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            role: role.to_string(),
            token: plain.expose().to_owned(),
        }),
    ))
}

pub async fn revoke_token(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !engine.store.revoke_token(&id).map_err(ApiError::internal)? {
        return Err(ApiError::not_found(format!("no token `{id}`")));
    }
    engine.record(NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: "token.revoked".to_owned(),
        message: format!("{} revoked token `{id}`", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(StatusCode::NO_CONTENT)
}

pub async fn secrets(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<SecretView>> {
    let metas = crate::secrets::list(&engine.store, &app, &env).map_err(ApiError::internal)?;
    Ok(Json(
        metas
            .into_iter()
            .map(|meta| SecretView {
                name: meta.name,
                version: meta.version,
                created_by: meta.created_by,
                created_at: meta.created_at,
            })
            .collect(),
    ))
}

pub async fn set_secret(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, name)): Path<(String, String, String)>,
    Json(body): Json<SecretValue>,
) -> ApiResult<SecretView> {
    // The name was checked with the path (`input::check_path`).
    input::secret_value(&body.value)?;
    let value = crate::secrets::Secret::new(body.value);
    let now = now_ms();
    let version = crate::secrets::set(
        &engine.store,
        &engine.master_key,
        crate::secrets::SecretName {
            app: &app,
            env: &env,
            name: &name,
        },
        &value,
        &caller.name,
        now,
    )
    .map_err(ApiError::internal)?;
    engine.record(NewEvent {
        app: Some(app.clone()),
        environment: Some(env.clone()),
        deployment_id: None,
        kind: "secret.set".to_owned(),
        message: format!("{} set secret {name} (version {version})", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(Json(SecretView {
        name,
        version,
        created_by: caller.name,
        created_at: now,
    }))
}

pub async fn unset_secret(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    if !crate::secrets::unset(&engine.store, &app, &env, &name, &caller.name, now_ms())
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found(format!(
            "no secret `{name}` set for `{app}` in `{env}`"
        )));
    }
    engine.record(NewEvent {
        app: Some(app),
        environment: Some(env),
        deployment_id: None,
        kind: "secret.unset".to_owned(),
        message: format!("{} unset secret {name}", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(StatusCode::NO_CONTENT)
}

fn backup_view(record: &crate::store::BackupRecord) -> BackupView {
    BackupView {
        id: record.id.clone(),
        release: record.release,
        reason: record.reason.as_str().to_owned(),
        kind: record.kind.as_str().to_owned(),
        target: record.target.clone(),
        size: record.size,
        sha256: record.sha256.clone(),
        created_at: record.created_at,
    }
}

pub async fn backups(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<BackupView>> {
    let records = engine
        .store
        .backups(&app, &env)
        .map_err(ApiError::internal)?;
    Ok(Json(records.iter().map(backup_view).collect()))
}

pub async fn create_backup(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    match crate::backup::on_demand(&engine, &app, &env, crate::store::BackupReason::Manual).await {
        Ok(record) => {
            engine.record(NewEvent {
                app: Some(app),
                environment: Some(env),
                deployment_id: None,
                kind: "backup.created".to_owned(),
                message: format!(
                    "{} took backup {} of {} ({} bytes)",
                    caller.name, record.id, record.target, record.size
                ),
                data_json: "{}".to_owned(),
            });
            Ok((StatusCode::CREATED, Json(backup_view(&record))))
        }
        Err(reason) => Err(ApiError::new(StatusCode::CONFLICT, "backup_failed", reason)),
    }
}

pub async fn restore_backup(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, id)): Path<(String, String, String)>,
) -> ApiResult<RestoreView> {
    let record = engine
        .store
        .backup(&id)
        .map_err(ApiError::internal)?
        .filter(|record| record.app == app && record.environment == env)
        .ok_or_else(|| ApiError::not_found(format!("no backup `{id}` of `{app}` in `{env}`")))?;
    let steps = crate::backup::restore_live(&engine, &record)
        .await
        .map_err(|reason| ApiError::new(StatusCode::CONFLICT, "restore_failed", reason))?;
    engine.record(NewEvent {
        app: Some(app),
        environment: Some(env),
        deployment_id: None,
        kind: "backup.restored".to_owned(),
        message: format!("{} restored backup {id}: {}", caller.name, steps.join("; ")),
        data_json: "{}".to_owned(),
    });
    Ok(Json(RestoreView { backup: id, steps }))
}

/// Promote, abort and approve: a signal to a running deployment, checked against its state.
async fn signal(
    engine: &Engine,
    caller: &Caller,
    id: &str,
    make: fn(String) -> crate::engine::Signal,
    applies: fn(DeploymentState) -> bool,
    verb: &str,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    if !applies(deployment.state) {
        let allowed: Vec<&str> = DeploymentState::ALL
            .into_iter()
            .filter(|state| applies(*state))
            .map(DeploymentState::as_str)
            .collect();
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "wrong_state",
            format!(
                "deployment `{id}` is {}; it can be {verb} only while {}",
                deployment.state,
                allowed.join(" or ")
            ),
        ));
    }
    engine.signal(id, make(caller.name.clone()));
    Ok(Json(views::deployment_view(&deployment)))
}

pub async fn promote(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Promote { by },
        DeploymentState::can_be_promoted,
        "promoted",
    )
    .await
}

/// Approval needs role approver or admin (the route's layer) and a token other than the one
/// that started the deployment: nobody approves their own deploy.
pub async fn approve(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    let data: DeploymentData = serde_json::from_str(&deployment.data_json).unwrap_or_default();
    match data.started_by_token {
        Some(starter) if starter == caller.token_id => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "own_deployment",
                format!(
                    "the token that started deployment `{id}` cannot approve it; another token with role approver or admin must"
                ),
            ));
        }
        Some(_) => {}
        None => {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "unknown_starter",
                format!(
                    "deployment `{id}` does not record which token started it, so nobody can approve it; abort it and deploy again"
                ),
            ));
        }
    }
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Approve { by },
        DeploymentState::can_be_approved,
        "approved",
    )
    .await
}

pub async fn abort(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Abort { by },
        DeploymentState::can_be_aborted,
        "aborted",
    )
    .await
}

/// Prometheus text format (role viewer: scrape with a bearer token).
pub async fn metrics(State(engine): State<Arc<Engine>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&engine).await,
    )
}

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

/// Server-sent events of the app's output: each new line of every instance of (app, env), with
/// every secret value scrubbed, until the client leaves.
pub async fn logs_stream(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    struct Follow {
        engine: Arc<Engine>,
        key: (String, String),
        cursors: std::collections::BTreeMap<String, driver::LogCursor>,
        queue: std::collections::VecDeque<LogLineView>,
    }
    let follow = Follow {
        engine,
        key: (app, env),
        cursors: std::collections::BTreeMap::new(),
        queue: std::collections::VecDeque::new(),
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        loop {
            if let Some(line) = follow.queue.pop_front() {
                let data = serde_json::to_string(&line).unwrap_or_default();
                return Some((Ok(SseEvent::default().event("log").data(data)), follow));
            }
            // Opened again for each batch, so a secret set meanwhile is hidden too; when the
            // secrets cannot be opened, the stream ends rather than show output unscrubbed.
            let Ok(scrubber) = Scrubber::for_environment(
                &follow.engine.store,
                &follow.engine.master_key,
                &follow.key.0,
                &follow.key.1,
            ) else {
                return None;
            };
            let ids: Vec<String> = follow
                .engine
                .runtime(&follow.key)
                .instances
                .keys()
                .cloned()
                .collect();
            for id in ids {
                let cursor = follow.cursors.get(&id).cloned();
                if let Ok((lines, next)) = follow.engine.drivers.logs_after(&id, cursor) {
                    follow.cursors.insert(id.clone(), next);
                    follow
                        .queue
                        .extend(lines.into_iter().map(|line| LogLineView {
                            instance_id: line.instance_id,
                            line: scrubber.scrub(&line.line).into_owned(),
                        }));
                }
            }
            if follow.queue.is_empty() {
                if follow.engine.shutdown.is_cancelled() {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
