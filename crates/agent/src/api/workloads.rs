//! Issue 19's routes: cron jobs and their runs, one-off commands, the apps on the agent and
//! destroying an environment.
//!
//! Roles: viewer lists jobs, runs and apps; deployer starts a cron run or a one-off command (the
//! same reach as a deploy, which runs the release command with the same config and secrets);
//! admin destroys an environment.

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, Query, State};
use axum::response::{IntoResponse, Response};
use client::wire::{
    AppEnvView, CronJobView, CronJobsView, CronRunView, CronTrigger, RunFrame, RunRequest,
};

use crate::api::auth::Caller;
use crate::api::edge::known_environment;
use crate::api::error::{ApiError, ApiJson, ApiResult, Kind};
use crate::deploy::release::load_release;
use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::NewEvent;

/// Runs listed by `GET …/cron/{job}/runs` unless `?limit=` says otherwise, and the most it takes.
const RUNS_LISTED: u32 = 50;
const MAX_RUNS_LISTED: u32 = 1000;

#[derive(Debug, serde::Deserialize)]
pub struct RunsQuery {
    limit: Option<u32>,
}
/// Most words and bytes of a one-off command.
const MAX_ARGV_WORDS: usize = 256;
const MAX_ARGV_BYTES: usize = 64 * 1024;

/// `GET /v1/apps/{app}/environments/{env}/cron`: the current release's jobs, next tick, last run.
pub async fn cron_jobs(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<CronJobsView> {
    known_environment(&engine, &app, &env)?;
    let key = AppEnv::new(app, env);
    let Some((release, jobs)) = current_jobs(&engine, &key)? else {
        return Ok(Json(CronJobsView {
            release: None,
            jobs: Vec::new(),
        }));
    };
    let now = now_ms();
    let mut views = Vec::with_capacity(jobs.len());
    for job in jobs {
        let last_run = engine
            .store
            .cron_runs(&key.app, &key.environment, &job.name, 1)
            .map_err(ApiError::internal)?
            .into_iter()
            .next();
        views.push(CronJobView {
            next_run: job.schedule.next_after(now),
            schedule: job.schedule.text().to_owned(),
            tz: job.schedule.tz().to_owned(),
            command: job.command.clone(),
            service: job.service.clone(),
            concurrency: job.concurrency.as_str().to_owned(),
            catch_up: job.catch_up,
            timeout_ms: u64::try_from(job.timeout.as_std().as_millis()).unwrap_or(u64::MAX),
            last_run,
            name: job.name,
        });
    }
    Ok(Json(CronJobsView {
        release: Some(release),
        jobs: views,
    }))
}

/// `GET /v1/apps/{app}/environments/{env}/cron/{job}/runs[?limit=N]`: newest first.
pub async fn cron_runs(
    State(engine): State<Arc<Engine>>,
    Path((app, env, job)): Path<(String, String, String)>,
    Query(query): Query<RunsQuery>,
) -> ApiResult<Vec<CronRunView>> {
    known_environment(&engine, &app, &env)?;
    let limit = query.limit.unwrap_or(RUNS_LISTED);
    if limit == 0 || limit > MAX_RUNS_LISTED {
        return Err(ApiError::new(
            Kind::Invalid,
            "invalid_limit",
            format!("`limit={limit}` is out of range; accepted: 1 to {MAX_RUNS_LISTED}"),
        ));
    }
    let runs = engine
        .store
        .cron_runs(&app, &env, &job, limit)
        .map_err(ApiError::internal)?;
    if runs.is_empty() {
        let key = AppEnv::new(app, env);
        find_job(&engine, &key, &job)?;
    }
    Ok(Json(runs))
}

/// `POST /v1/apps/{app}/environments/{env}/cron/{job}/runs`: runs the job now, in the current
/// release, recorded like a tick (trigger `manual`) before it starts.
pub async fn run_cron_job(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, job_name)): Path<(String, String, String)>,
) -> ApiResult<CronRunView> {
    known_environment(&engine, &app, &env)?;
    let key = AppEnv::new(app, env);
    let (release, job) = find_job(&engine, &key, &job_name)?;
    let tick = now_ms();
    let started = crate::cron::start_run(
        &engine,
        &key,
        release,
        &job,
        tick,
        CronTrigger::Manual,
        Some(&caller.name),
    );
    engine.record(NewEvent {
        app: Some(key.app.clone()),
        environment: Some(key.environment.clone()),
        deployment_id: None,
        kind: "cron.manual".to_owned(),
        message: format!(
            "{} ran cron job `{}` by hand (release {release})",
            caller.name, job.name
        ),
        data_json: serde_json::json!({ "job": job.name, "tick": tick, "by": caller.name })
            .to_string(),
    });
    let run = engine
        .store
        .cron_runs(&key.app, &key.environment, &job.name, RUNS_LISTED)
        .map_err(ApiError::internal)?
        .into_iter()
        .find(|run| run.tick == tick)
        .ok_or_else(|| {
            ApiError::new(
                Kind::Conflict,
                "not_started",
                format!("cron job `{}` did not start: see the agent's log", job.name),
            )
        })?;
    if !started && run.state != client::wire::CronRunState::Skipped {
        return Err(ApiError::new(
            Kind::Conflict,
            "not_started",
            format!("cron job `{}` did not start", job.name),
        ));
    }
    Ok(Json(run))
}

/// `POST /v1/apps/{app}/environments/{env}/run`: a one-off command in the current release's
/// code, config and secrets. The answer streams newline-delimited [`RunFrame`]s: `started`, its
/// output lines in order (scrubbed), then `exited` with its code. A client that goes away stops
/// the command. The audit log says who ran what, never the environment.
pub async fn run_command(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<RunRequest>,
) -> Result<Response, ApiError> {
    let OneOff {
        key,
        release,
        release_number,
        service,
        command,
        shown,
    } = one_off(&engine, &caller, app, env, &request)?;
    let (frames, receiver) = tokio::sync::mpsc::channel::<RunFrame>(256);
    let task_engine = engine.clone();
    tokio::spawn(async move {
        let engine = task_engine;
        let _ = frames
            .send(RunFrame::Started {
                release: release_number,
                service: service.clone(),
            })
            .await;
        let lines = frames.clone();
        let closed = frames.clone();
        let ran = crate::oneoff::run(
            &engine,
            crate::oneoff::Command {
                key: &key,
                release: &release,
                service: &service,
                command: &command,
                label: "run",
                env: Vec::new(),
            },
            move |stream, line| {
                let frame = match stream {
                    crate::oneoff::Stream::Stdout => RunFrame::Stdout { line },
                    crate::oneoff::Stream::Stderr => RunFrame::Stderr { line },
                };
                // A full channel means a slow client: wait for it rather than drop output.
                let lines = lines.clone();
                async move {
                    let _ = lines.send(frame).await;
                }
            },
            async move { closed.closed().await },
        )
        .await;
        let (frame, code) = match ran {
            Ok(exit) => (RunFrame::Exited { code: exit.code }, Some(exit.code)),
            Err(error) => (
                RunFrame::Error {
                    message: crate::report::chain(&error),
                },
                None,
            ),
        };
        let _ = frames.send(frame).await;
        engine.record(NewEvent {
            app: Some(key.app.clone()),
            environment: Some(key.environment.clone()),
            deployment_id: None,
            kind: "run.exited".to_owned(),
            message: match code {
                Some(code) => format!("`{shown}` exited with {code}"),
                None => format!("`{shown}` could not run"),
            },
            data_json: serde_json::json!({ "command": shown, "code": code }).to_string(),
        });
    });
    let stream = futures_util::stream::unfold(receiver, |mut receiver| async move {
        let frame = receiver.recv().await?;
        let mut line = serde_json::to_vec(&frame).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(bytes::Bytes::from(line)), receiver))
    });
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /v1/apps/{app}/environments/{env}/run/interactive` with `Upgrade: rollway-run` and a
/// [`RunRequest`] body whose `tty` is set: answered `101 Switching Protocols`, then the connection
/// is the command's terminal (see `client::wire::TTY_UPGRADE` for the framing). Same role, checks
/// and audit events as [`run_command`].
pub async fn run_interactive(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    mut request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let upgrade_asked = request
        .headers()
        .get(axum::http::header::UPGRADE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case(client::wire::TTY_UPGRADE));
    if !upgrade_asked {
        return Err(ApiError::new(
            Kind::BadRequest,
            "upgrade_required",
            format!(
                "an interactive run needs `Connection: upgrade` and `Upgrade: {}`",
                client::wire::TTY_UPGRADE
            ),
        ));
    }
    let on_upgrade = hyper::upgrade::on(&mut request);
    let bytes = axum::body::to_bytes(request.into_body(), crate::api::input::MAX_JSON_BODY)
        .await
        .map_err(|error| ApiError::bad_request(format!("cannot read the request: {error}")))?;
    let run: RunRequest = serde_json::from_slice(&bytes).map_err(|error| {
        ApiError::new(
            Kind::Invalid,
            "invalid_body",
            format!("not a run request: {error}"),
        )
    })?;
    let Some(size) = run.tty else {
        return Err(ApiError::new(
            Kind::Invalid,
            "invalid_body",
            "an interactive run needs `tty = { rows, cols }`",
        ));
    };
    if size.rows == 0 || size.cols == 0 {
        return Err(ApiError::new(
            Kind::Invalid,
            "invalid_body",
            format!("a terminal of {}x{} is empty", size.cols, size.rows),
        ));
    }
    let OneOff {
        key,
        release,
        service,
        command,
        shown,
        ..
    } = one_off(&engine, &caller, app, env, &run)?;
    let task_engine = engine.clone();
    tokio::spawn(async move {
        let engine = task_engine;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => hyper_util::rt::TokioIo::new(upgraded),
            Err(error) => {
                tracing::warn!(message = "An interactive run's upgrade failed.", %error);
                return;
            }
        };
        let (input, mut output) = tokio::io::split(upgraded);
        let (frames, mut outgoing) = tokio::sync::mpsc::channel::<(u8, Vec<u8>)>(64);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            while let Some((kind, payload)) = outgoing.recv().await {
                let mut frame = Vec::with_capacity(payload.len() + 5);
                frame.push(kind);
                frame.extend_from_slice(
                    &u32::try_from(payload.len())
                        .unwrap_or(u32::MAX)
                        .to_be_bytes(),
                );
                frame.extend_from_slice(&payload);
                if output.write_all(&frame).await.is_err() || output.flush().await.is_err() {
                    return;
                }
            }
            let _ = output.shutdown().await;
        });
        let output_frames = frames.clone();
        let ran = crate::oneoff::run_tty(
            &engine,
            crate::oneoff::Command {
                key: &key,
                release: &release,
                service: &service,
                command: &command,
                label: "run",
                env: Vec::new(),
            },
            size,
            input,
            move |chunk| {
                let frames = output_frames.clone();
                async move {
                    let _ = frames.send((client::wire::TTY_OUTPUT, chunk)).await;
                }
            },
        )
        .await;
        let code = match ran {
            Ok(exit) => Some(exit.code),
            Err(error) => {
                let message = format!("error: {}\r\n", crate::report::chain(&error));
                let _ = frames
                    .send((client::wire::TTY_OUTPUT, message.into_bytes()))
                    .await;
                None
            }
        };
        let _ = frames
            .send((
                client::wire::TTY_EXIT,
                code.unwrap_or(1).to_be_bytes().to_vec(),
            ))
            .await;
        drop(frames);
        let _ = writer.await;
        engine.record(NewEvent {
            app: Some(key.app.clone()),
            environment: Some(key.environment.clone()),
            deployment_id: None,
            kind: "run.exited".to_owned(),
            message: match code {
                Some(code) => format!("`{shown}` exited with {code}"),
                None => format!("`{shown}` could not run"),
            },
            data_json: serde_json::json!({ "command": shown, "code": code }).to_string(),
        });
    });
    Ok((
        axum::http::StatusCode::SWITCHING_PROTOCOLS,
        [
            (axum::http::header::CONNECTION, "upgrade"),
            (axum::http::header::UPGRADE, client::wire::TTY_UPGRADE),
        ],
    )
        .into_response())
}

/// A one-off command checked and recorded (`run.started`), ready to run.
struct OneOff {
    key: AppEnv,
    release: crate::deploy::spec::LoadedRelease,
    release_number: client::wire::ReleaseNumber,
    service: String,
    /// The `sh -c` line.
    command: String,
    /// The command as typed, scrubbed: what the audit log says.
    shown: String,
}

fn one_off(
    engine: &Arc<Engine>,
    caller: &Caller,
    app: String,
    env: String,
    request: &RunRequest,
) -> Result<OneOff, ApiError> {
    known_environment(engine, &app, &env)?;
    if request.command.is_empty() {
        return Err(ApiError::new(
            Kind::Invalid,
            "invalid_command",
            "no command given: write it after `--`, such as `rollway run -- python3 manage.py migrate`",
        ));
    }
    let bytes: usize = request.command.iter().map(String::len).sum();
    if request.command.len() > MAX_ARGV_WORDS
        || bytes > MAX_ARGV_BYTES
        || request.command.iter().any(|word| word.contains('\0'))
    {
        return Err(ApiError::new(
            Kind::Invalid,
            "invalid_command",
            format!(
                "the command has {} words and {bytes} bytes; accepted: at most {MAX_ARGV_WORDS} words, {MAX_ARGV_BYTES} bytes, no NUL",
                request.command.len()
            ),
        ));
    }
    let key = AppEnv::new(app, env);
    let release_number = engine
        .store
        .current(&key.app, &key.environment)
        .map_err(ApiError::internal)?
        .ok_or_else(|| {
            ApiError::new(
                Kind::Conflict,
                "no_current_release",
                format!(
                    "`{}` has no live release in `{}` yet: deploy it first",
                    key.app, key.environment
                ),
            )
        })?;
    let release = load_release(engine, &key, release_number).map_err(ApiError::internal)?;
    let service = match &request.service {
        Some(service) => {
            if release.resolved.config.service(service).is_none() {
                let names: Vec<&str> = release
                    .resolved
                    .config
                    .services
                    .iter()
                    .map(|service| service.name.as_str())
                    .collect();
                return Err(ApiError::new(
                    Kind::Invalid,
                    "unknown_service",
                    format!(
                        "release {release_number} has no service `{service}`; it has: {}",
                        names.join(", ")
                    ),
                ));
            }
            service.clone()
        }
        None => release
            .resolved
            .config
            .services
            .first()
            .map(|service| service.name.clone())
            .unwrap_or_default(),
    };
    let command = crate::oneoff::shell_words(&request.command);
    // Who ran what: the command as typed (scrubbed, should a secret have been pasted into it).
    let shown = crate::secrets::Scrubber::for_environment(
        &engine.store,
        &engine.master_key,
        &key.app,
        &key.environment,
    )
    .map(|scrubber| scrubber.scrub(&request.command.join(" ")).into_owned())
    .unwrap_or_else(|_| "***".to_owned());
    engine.record(NewEvent {
        app: Some(key.app.clone()),
        environment: Some(key.environment.clone()),
        deployment_id: None,
        kind: "run.started".to_owned(),
        message: format!(
            "{} ran `{shown}` in release {release_number} (service `{service}`)",
            caller.name
        ),
        data_json: serde_json::json!({
            "by": caller.name,
            "command": shown,
            "release": release_number,
            "service": service,
        })
        .to_string(),
    });
    Ok(OneOff {
        key,
        release,
        release_number,
        service,
        command,
        shown,
    })
}

/// `GET /v1/apps`: every app and environment on the agent.
pub async fn apps(State(engine): State<Arc<Engine>>) -> ApiResult<Vec<AppEnvView>> {
    app_envs(&engine, None).map(Json)
}

/// Every environment of the agent's apps (of `only` when given), previews with their base.
pub(crate) fn app_envs(engine: &Engine, only: Option<&str>) -> Result<Vec<AppEnvView>, ApiError> {
    let apps = engine.store.apps().map_err(ApiError::internal)?;
    let previews = engine.store.previews().map_err(ApiError::internal)?;
    let mut views = Vec::with_capacity(apps.len());
    for (app, environment, current_release) in apps {
        if only.is_some_and(|only| only != app) {
            continue;
        }
        let key = AppEnv::new(app, environment);
        let instances = engine.runtime(&key).instances.len();
        let active = !engine
            .store
            .is_destroyed(&key.app, &key.environment)
            .map_err(ApiError::internal)?;
        let preview = previews
            .iter()
            .find(|preview| preview.app == key.app && preview.environment == key.environment)
            .cloned()
            .map(preview_view);
        views.push(AppEnvView {
            app: key.app,
            environment: key.environment,
            current_release,
            instances,
            active,
            preview,
        });
    }
    Ok(views)
}

pub(crate) fn preview_view(preview: crate::store::Preview) -> client::wire::PreviewView {
    client::wire::PreviewView {
        base: preview.base,
        expires_at: preview.expires_at,
        created_by: preview.created_by,
    }
}

fn current_jobs(
    engine: &Engine,
    key: &AppEnv,
) -> Result<Option<(client::wire::ReleaseNumber, Vec<manifest::cron::CronJob>)>, ApiError> {
    let Some(current) = engine
        .store
        .current(&key.app, &key.environment)
        .map_err(ApiError::internal)?
    else {
        return Ok(None);
    };
    let release = load_release(engine, key, current).map_err(ApiError::internal)?;
    Ok(Some((current, release.resolved.config.cron)))
}

fn find_job(
    engine: &Engine,
    key: &AppEnv,
    name: &str,
) -> Result<(client::wire::ReleaseNumber, manifest::cron::CronJob), ApiError> {
    let Some((release, jobs)) = current_jobs(engine, key)? else {
        return Err(ApiError::not_found(format!(
            "`{}` has no live release in `{}`, so no cron job `{name}`",
            key.app, key.environment
        )));
    };
    let names: Vec<String> = jobs.iter().map(|job| format!("`{}`", job.name)).collect();
    jobs.into_iter()
        .find(|job| job.name == name)
        .map(|job| (release, job))
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "release {release} of `{}` in `{}` has no cron job `{name}`; it has: {}",
                key.app,
                key.environment,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ))
        })
}

#[derive(Debug, serde::Deserialize)]
pub struct DestroyQuery {
    /// The app's name again, so a slip of the environment name cannot destroy another app.
    confirm: Option<String>,
}

/// `DELETE /v1/apps/{app}/environments/{env}?confirm=APP` (admin): stops the environment's
/// instances and removes its routes; its releases, events, backups and secrets stay. Recorded
/// first, so an agent killed half-way finishes the job when it starts again. Its next release
/// that goes live brings it back.
pub async fn destroy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    Query(query): Query<DestroyQuery>,
) -> ApiResult<AppEnvView> {
    known_environment(&engine, &app, &env)?;
    if query.confirm.as_deref() != Some(app.as_str()) {
        return Err(ApiError::new(
            Kind::Invalid,
            "confirm_app_name",
            format!("destroying `{env}` of `{app}` needs `?confirm={app}` (the app's name)"),
        ));
    }
    let key = AppEnv::new(app, env);
    destroy_answer(&engine, key, &caller.name).await
}

/// Destroys `key` for `by` (`environments::destroy`) and answers what is left of it.
pub(crate) async fn destroy_answer(
    engine: &Arc<Engine>,
    key: AppEnv,
    by: &str,
) -> ApiResult<AppEnvView> {
    use crate::environments::{DestroyError, DestroyReason, destroy};
    destroy(engine, &key, by, DestroyReason::Asked)
        .await
        .map_err(|error| match &error {
            DestroyError::InFlight { .. } => {
                ApiError::new(Kind::Conflict, "deployment_in_flight", error.to_string())
            }
            DestroyError::Locked { .. } => {
                ApiError::new(Kind::Conflict, "locked", error.to_string())
            }
            DestroyError::Proxy { .. } => ApiError::new(
                Kind::Unavailable,
                "proxy_refused",
                crate::report::chain(&error),
            ),
            DestroyError::Store(_) => ApiError::internal(error),
        })?;
    let current_release = engine
        .store
        .current(&key.app, &key.environment)
        .map_err(ApiError::internal)?;
    let preview = engine
        .store
        .preview(&key.app, &key.environment)
        .map_err(ApiError::internal)?
        .map(preview_view);
    Ok(Json(AppEnvView {
        instances: engine.runtime(&key).instances.len(),
        app: key.app,
        environment: key.environment,
        current_release,
        active: false,
        preview,
    }))
}
