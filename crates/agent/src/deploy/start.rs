//! Starting a deployment: everything checked before anything moves (manifest, environment,
//! required config, artifact, routes claimed by no other app or environment, the deploy lock), then
//! the executor takes over.

use client::wire::ReleaseNumber;
use std::sync::Arc;

use client::wire::{DeployRequest, DeploymentKind, RollbackRequest, Strategy};

use crate::deploy::claims::{self, RouteConflict};
use crate::deploy::executor::{self, DeploymentData, LOCK_TTL};
use crate::deploy::spec::{self, ReleaseConfig};
use crate::deploy::state::State;
use crate::engine::AppEnv;
use crate::engine::{Engine, now_ms};
use crate::store::{Deployment, NewDeployment, NewEvent, NewRelease, ReleaseOutcome};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("the manifest is invalid:\n{0}")]
    InvalidManifest(String),
    #[error("{0}")]
    UnknownEnvironment(String),
    #[error("missing for {environment}: {}", names.join(", "))]
    MissingConfig {
        environment: String,
        names: Vec<String>,
    },
    #[error("the manifest names app `{manifest}`, not `{path}`")]
    AppMismatch { manifest: String, path: String },
    #[error("artifact `{0}` was not uploaded")]
    UnknownArtifact(String),
    #[error(
        "a deployment of `{app}` to `{environment}` is in progress: {holder} holds the lock since {since} (deployment `{deployment}`)"
    )]
    Locked {
        app: String,
        environment: String,
        holder: String,
        since: String,
        deployment: String,
    },
    #[error(transparent)]
    RouteConflict(#[from] Box<RouteConflict>),
    #[error("{0}")]
    NothingToRollBack(String),
    /// `--from`/`--ttl` that cannot make a preview (name, base, ttl bounds).
    #[error("{0}")]
    Preview(String),
    /// The preview exists over another base.
    #[error("{0}")]
    PreviewConflict(String),
    #[error("the agent is shutting down and takes no deploys")]
    ShuttingDown,
    #[error("store: {0}")]
    Store(String),
}

/// Checks the request, records the release and the deployment, and starts the executor.
pub fn deploy(
    engine: &Arc<Engine>,
    caller: &str,
    token_id: &str,
    app: &str,
    env: &str,
    request: &DeployRequest,
) -> Result<Deployment, StartError> {
    if engine.shutdown.is_cancelled() {
        return Err(StartError::ShuttingDown);
    }
    let now = now_ms();
    let existing = engine.store.preview(app, env).map_err(store_error)?;
    let preview = match &request.preview {
        Some(asked) => Some(crate::previews::admit(
            existing.as_ref(),
            app,
            env,
            asked,
            caller,
            now,
        )?),
        None => {
            if let Some(existing) = &existing {
                return Err(StartError::Preview(format!(
                    "`{env}` is a preview of `{}`; deploy it again with `--from {} --ttl DURATION`",
                    existing.base, existing.base
                )));
            }
            None
        }
    };
    let config = ReleaseConfig {
        manifest: request.manifest.clone(),
        environment: env.to_owned(),
        base: preview.as_ref().map(|preview| preview.base.clone()),
    };
    let manifest = manifest::parse(&config.manifest, manifest::FILE_NAME)
        .map_err(|diagnostics| StartError::InvalidManifest(diagnostics.render(false)))?;
    if manifest.shared.app.name != app {
        return Err(StartError::AppMismatch {
            manifest: manifest.shared.app.name.clone(),
            path: app.to_owned(),
        });
    }
    let resolved = match &config.base {
        Some(_) => crate::deploy::release::resolve(&config).map_err(|error| match error {
            crate::deploy::release::ResolveError::Parse(rendered) => {
                StartError::InvalidManifest(rendered)
            }
            other => StartError::Preview(other.to_string()),
        })?,
        None => manifest.resolve(env).map_err(|error| {
            let mut message = error.to_string();
            if manifest::is_preview_name(env) {
                message.push_str(&format!(
                    "; `{env}` can be a preview: deploy it with `--from BASE --ttl DURATION`"
                ));
            }
            StartError::UnknownEnvironment(message)
        })?,
    };
    let secret_versions =
        crate::secrets::snapshot_over(&engine.store, app, env, config.base.as_deref())
            .map_err(store_error)?;
    let missing = resolved
        .required_config()
        .missing(|name| secret_versions.contains_key(name));
    if !missing.is_empty() {
        return Err(StartError::MissingConfig {
            environment: env.to_owned(),
            names: missing,
        });
    }
    if !engine.artifacts.has(&request.artifact) {
        return Err(StartError::UnknownArtifact(request.artifact.clone()));
    }
    // Held until the deployment is recorded, so two deploys cannot claim one route at once.
    let _claiming = CLAIMING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check_routes(engine, app, env, &spec::routes(&resolved))?;
    let strategy = request
        .strategy
        .unwrap_or_else(|| strategy_of(resolved.config.strategy.kind));
    let config_json = serde_json::to_string(&config).map_err(store_error)?;
    let store = &engine.store;
    if let Some(preview) = &preview {
        // Before the release, so the deployment's scrubber knows the base's secrets.
        store.put_preview(preview).map_err(store_error)?;
    }
    let from = store.current(app, env).map_err(store_error)?;
    let release = store
        .create_release(NewRelease {
            app: app.to_owned(),
            environment: env.to_owned(),
            artifact: request.artifact.clone(),
            config_json,
            // The versions, never the values: a rollback opens exactly these again.
            secrets_version: Some(serde_json::to_string(&secret_versions).map_err(store_error)?),
            created_by: caller.to_owned(),
            message: request.message.clone(),
            strategy,
        })
        .map_err(store_error)?;
    match begin(
        engine,
        caller,
        token_id,
        app,
        env,
        DeploymentKind::Deploy,
        from,
        release.number,
        strategy,
    ) {
        Ok(deployment) => {
            // Alerts must not vanish unnoticed: the deploy goes on, and its progress says why
            // nobody will be alerted.
            if let Some(warning) =
                resolved.webhook_warning(|name| secret_versions.contains_key(name))
            {
                engine.record(NewEvent::for_deployment(
                    &deployment,
                    "alerts.off",
                    warning.to_string(),
                ));
            }
            Ok(deployment)
        }
        Err(error) => {
            let _ = store.set_release_outcome(app, env, release.number, ReleaseOutcome::Failed);
            if let (Some(_), None) = (&preview, &existing) {
                // A preview refused here was never made.
                let _ = store.delete_preview(app, env);
            }
            Err(error)
        }
    }
}

/// A rollback: to `--to N`, or to the release that served before the current one.
pub fn rollback(
    engine: &Arc<Engine>,
    caller: &str,
    token_id: &str,
    app: &str,
    env: &str,
    request: &RollbackRequest,
) -> Result<Deployment, StartError> {
    if engine.shutdown.is_cancelled() {
        return Err(StartError::ShuttingDown);
    }
    let store = &engine.store;
    let current = store.current(app, env).map_err(store_error)?;
    let target = match request.to {
        Some(number) => {
            store
                .release(app, env, number)
                .map_err(store_error)?
                .ok_or_else(|| {
                    StartError::NothingToRollBack(format!(
                        "no release {number} of `{app}` in `{env}`"
                    ))
                })?;
            number
        }
        None => store
            .releases(app, env)
            .map_err(store_error)?
            .into_iter()
            .find(|release| {
                Some(release.number) != current && release.outcome == ReleaseOutcome::Superseded
            })
            .map(|release| release.number)
            .ok_or_else(|| {
                StartError::NothingToRollBack(format!(
                    "`{app}` in `{env}` has no earlier good release"
                ))
            })?,
    };
    if Some(target) == current {
        return Err(StartError::NothingToRollBack(format!(
            "release {target} is already current"
        )));
    }
    // The target must still load (manifest, recorded secret versions) before anything moves.
    let loaded = spec::load_release(engine, &AppEnv::new(app.to_owned(), env.to_owned()), target)
        .map_err(|error| StartError::InvalidManifest(crate::report::chain(&error)))?;
    let _claiming = CLAIMING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    check_routes(engine, app, env, &spec::routes(&loaded.resolved))?;
    begin(
        engine,
        caller,
        token_id,
        app,
        env,
        DeploymentKind::Rollback,
        current,
        target,
        Strategy::BlueGreen,
    )
}

#[allow(
    clippy::too_many_arguments,
    reason = "one call site per kind; a struct would only rename them"
)]
fn begin(
    engine: &Arc<Engine>,
    caller: &str,
    token_id: &str,
    app: &str,
    env: &str,
    kind: DeploymentKind,
    from: Option<ReleaseNumber>,
    to: ReleaseNumber,
    strategy: Strategy,
) -> Result<Deployment, StartError> {
    let store = &engine.store;
    let deployment = store
        .create_deployment(NewDeployment {
            app: app.to_owned(),
            environment: env.to_owned(),
            kind,
            from_release: from,
            to_release: to,
            strategy,
            created_by: caller.to_owned(),
            data_json: serde_json::to_string(&DeploymentData {
                started_by_token: Some(token_id.to_owned()),
                ..DeploymentData::default()
            })
            .unwrap_or_default(),
        })
        .map_err(store_error)?;
    let ttl = i64::try_from(LOCK_TTL.as_millis()).unwrap_or(60_000);
    match store
        .acquire_lock(app, env, caller, &deployment.id, ttl, now_ms())
        .map_err(store_error)?
    {
        Ok(_) => {}
        Err(holder) => {
            let _ = store.transition(
                &deployment.id,
                State::Pending,
                State::Failed,
                Some("another deployment holds the lock"),
                None,
            );
            return Err(StartError::Locked {
                app: app.to_owned(),
                environment: env.to_owned(),
                holder: holder.owner,
                since: format_time(holder.acquired_at),
                deployment: holder.deployment_id.into_string(),
            });
        }
    }
    engine.record(NewEvent {
        app: Some(app.to_owned()),
        environment: Some(env.to_owned()),
        deployment_id: Some(deployment.id.clone()),
        kind: format!("deployment.{kind}"),
        message: match from {
            Some(from) => format!(
                "{caller} started a {kind} of {app} to {env}: release {from} → {to} ({strategy})"
            ),
            None => {
                format!("{caller} started a {kind} of {app} to {env}: release {to} ({strategy})")
            }
        },
        data_json: "{}".to_owned(),
    });
    tokio::spawn(executor::run(
        engine.clone(),
        deployment.id.clone().into_string(),
    ));
    Ok(deployment)
}

/// Serialises the route check with the recording of the deployment that claims the routes.
/// std Mutex: held by synchronous code only (store calls), never across an await.
static CLAIMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn check_routes(
    engine: &Engine,
    app: &str,
    env: &str,
    routes: &[crate::engine::RouteInfo],
) -> Result<(), StartError> {
    let key = AppEnv::new(app.to_owned(), env.to_owned());
    match claims::find_conflict(engine, &key, routes).map_err(store_error)? {
        Some(conflict) => Err(StartError::RouteConflict(Box::new(conflict))),
        None => Ok(()),
    }
}

/// The manifest's strategy as the wire names it (the same three, spelled the same).
fn strategy_of(kind: manifest::StrategyKind) -> Strategy {
    match kind {
        manifest::StrategyKind::BlueGreen => Strategy::BlueGreen,
        manifest::StrategyKind::Rolling => Strategy::Rolling,
        manifest::StrategyKind::Canary => Strategy::Canary,
    }
}

fn store_error(error: impl std::error::Error + 'static) -> StartError {
    StartError::Store(crate::report::chain(&error))
}

/// Unix ms as `2026-11-23 04:05:06 UTC`.
pub fn format_time(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
