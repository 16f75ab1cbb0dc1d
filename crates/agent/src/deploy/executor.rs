//! The executor: runs one deployment through the state machine, writing each transition to the
//! store before performing the next step's effects, so a restarted agent knows where it was.
//!
//! Deploys and rollbacks take this one path; a rollback is a deployment to an earlier release
//! (warm when its instances still run, cold otherwise).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::deploy::state::{self, Plan, State, StepResult};
use crate::deploy::{fault, spec};
use crate::engine::{AppEnv, Engine, InstancePhase, now_ms};
use crate::health;
use crate::store::{Deployment, NewEvent, ReleaseOutcome};

/// Executor-private facts about a deployment, persisted with it (`data_json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeploymentData {
    pub plan: Option<String>,
    /// Traffic before the deployment, to go back to.
    pub previous_weights: Vec<(u64, u8)>,
    /// Instances this deployment started (stopped again when it is undone).
    pub started: Vec<String>,
    /// The backup taken before the release command, for the restore hint when it fails.
    #[serde(default)]
    pub backup_id: Option<String>,
}

/// How long a deploy lock lives without a heartbeat.
pub const LOCK_TTL: Duration = Duration::from_secs(60);

/// Drives deployment `id` to a terminal state. Errors end up in the deployment's reason.
pub async fn run(engine: Arc<Engine>, id: String) {
    let heartbeat = spawn_heartbeat(engine.clone(), id.clone());
    let result = drive(&engine, &id).await;
    heartbeat.abort();
    if let Err(error) = result {
        tracing::error!(message = "Deployment executor stopped.", deployment = %id, %error);
    }
    finish(&engine, &id);
}

async fn drive(engine: &Arc<Engine>, id: &str) -> Result<(), String> {
    loop {
        let deployment = engine
            .store
            .deployment(id)
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("no deployment `{id}`"))?;
        let current: State = deployment.state.parse()?;
        if current.is_terminal() {
            return Ok(());
        }
        if engine.shutdown.is_cancelled() && !current.traffic_may_have_moved() {
            // Parked: a restarted agent undoes it (traffic never moved).
            return Ok(());
        }
        let mut data: DeploymentData =
            serde_json::from_str(&deployment.data_json).unwrap_or_default();
        let outcome = step(engine, &deployment, current, &mut data).await;
        let (result, reason) = match outcome {
            Ok(()) => (StepResult::Done, None),
            Err(reason) => (StepResult::Failed, Some(reason)),
        };
        let plan = if data.plan.as_deref() == Some("warm") {
            Plan::Warm
        } else {
            Plan::Cold
        };
        let next = state::next(current, result, plan);
        if let Some(reason) = &reason {
            // Undo what a failed step started, before the failure is written down.
            if next == State::Failed {
                undo(engine, &deployment, &data).await;
            }
            record(
                engine,
                &deployment,
                "deployment.step_failed",
                format!("{current} failed: {reason}"),
            );
        }
        fault::crash_point(next);
        let data_json = serde_json::to_string(&data).map_err(|error| error.to_string())?;
        // The transition and its event are one transaction: a kill -9 cannot keep one without the other.
        let (_, event) = engine
            .store
            .transition_with_event(
                id,
                current.as_str(),
                next.as_str(),
                reason.as_deref(),
                Some(&data_json),
                event(
                    &deployment,
                    "deployment.state",
                    format!("{current} → {next}"),
                ),
            )
            .map_err(|error| error.to_string())?;
        engine.publish(&event);
    }
}

/// One state's work. `Err` carries the reason shown to the user.
async fn step(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    current: State,
    data: &mut DeploymentData,
) -> Result<(), String> {
    let key: AppEnv = (deployment.app.clone(), deployment.environment.clone());
    let target = deployment.to_release;
    let release = spec::load_release(engine, &key, target)?;
    match current {
        State::Pending => {
            let runtime = engine.runtime(&key);
            let running = runtime
                .instances
                .values()
                .filter(|instance| {
                    instance.release == target && instance.phase != InstancePhase::Starting
                })
                .count();
            let wanted: usize = release
                .resolved
                .config
                .services
                .iter()
                .map(|service| service.replicas as usize)
                .sum();
            let warm = running >= wanted && wanted > 0;
            data.plan = Some(if warm { "warm" } else { "cold" }.to_owned());
            data.previous_weights = runtime.weights.clone();
            Ok(())
        }
        State::Preparing => spec::prepare(engine, deployment, &release).await,
        State::BackingUp => {
            // Only a deploy runs the release command, so only a deploy needs the backup first.
            let variable = release
                .resolved
                .config
                .release
                .as_ref()
                .and_then(|phase| phase.backup.clone());
            match (variable, deployment.kind.as_str()) {
                (Some(variable), "deploy") => {
                    data.backup_id =
                        spec::backup_before_release(engine, deployment, &release, &variable)
                            .await?;
                    Ok(())
                }
                _ => Ok(()),
            }
        }
        State::Releasing => {
            // A rollback goes back to code whose schema is already in place: no release command.
            match (&release.resolved.config.release, deployment.kind.as_str()) {
                (Some(phase), "deploy") => match &phase.command {
                    Some(command) => spec::run_release_command(engine, deployment, &release, command)
                        .await
                        .map_err(|reason| match &data.backup_id {
                            Some(id) => format!(
                                "{reason}\nthe database was backed up just before; to restore it: `rollway backups restore {id} --app {} --env {}`",
                                deployment.app, deployment.environment
                            ),
                            None => reason,
                        }),
                    None => Ok(()),
                },
                _ => Ok(()),
            }
        }
        State::Starting => {
            let rolling =
                deployment.strategy == "rolling" && !engine.runtime(&key).weights.is_empty();
            for (service, index) in spec::wanted_instances(&release.resolved) {
                // Rolling keeps capacity: only the first new instance starts now, the rest one by
                // one while traffic moves.
                if rolling && index > 0 {
                    continue;
                }
                let instance_id =
                    spec::start_instance(engine, &key, &release, &service, index).await?;
                data.started.push(instance_id);
            }
            Ok(())
        }
        State::Verifying => {
            let ids: Vec<String> = engine
                .runtime(&key)
                .instances
                .iter()
                .filter(|(_, instance)| instance.release == target)
                .map(|(id, _)| id.clone())
                .collect();
            for instance_id in ids {
                verify_instance(engine, &key, &release, &instance_id).await?;
            }
            Ok(())
        }
        State::Shifting => shift(engine, deployment, &key, &release, data).await,
        State::RollingBack => roll_back(engine, deployment, &key, data).await,
        State::Succeeded | State::RolledBack | State::Failed => Ok(()),
    }
}

/// Runs the health gate of one instance and makes it routable.
async fn verify_instance(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: &spec::LoadedRelease,
    instance_id: &str,
) -> Result<(), String> {
    let Some(instance) = engine.runtime(key).instances.get(instance_id).cloned() else {
        return Err(format!("instance `{instance_id}` disappeared"));
    };
    if instance.phase == InstancePhase::Ready {
        return Ok(());
    }
    // A warm instance passed its gate before and has run since: one check that it still answers.
    let warm = instance.phase == InstancePhase::Warm;
    let service = release
        .resolved
        .config
        .service(&instance.service)
        .ok_or_else(|| {
            format!(
                "service `{}` is not in release {}",
                instance.service, release.number
            )
        })?;
    let driver = engine.driver.clone();
    let alive_id = instance_id.to_owned();
    let alive = move || match driver::Driver::status(driver.as_ref(), &alive_id) {
        driver::InstanceStatus::Running { restarts: 0, .. } => Ok(()),
        driver::InstanceStatus::Running { .. } => {
            Err(format!("instance `{alive_id}` crashed while starting"))
        }
        driver::InstanceStatus::Restarting { last_exit, .. }
        | driver::InstanceStatus::Stopped { last_exit } => Err(format!(
            "instance `{alive_id}` exited with code {} while starting",
            last_exit.map_or_else(|| "unknown".to_owned(), |code| code.to_string())
        )),
        driver::InstanceStatus::Unknown => Err(format!("instance `{alive_id}` is not running")),
    };
    match &service.health {
        Some(health) => {
            let check = health::Check {
                path: health.path.clone(),
                host: spec::health_host(&release.resolved, service, health),
                interval: health.interval.as_std(),
                timeout: health.timeout.as_std(),
                healthy: if warm { 1 } else { health.healthy },
                start_timeout: health.start_timeout.as_std(),
            };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], instance.port));
            if let Err(reason) = health::gate(addr, &check, alive).await {
                return Err(with_log_tail(engine, instance_id, reason));
            }
        }
        None => {
            // A worker has no health path: it must at least stay up for a moment.
            let alive = alive;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(reason) = alive() {
                return Err(with_log_tail(engine, instance_id, reason));
            }
        }
    }
    spec::set_phase(engine, key, instance_id, InstancePhase::Ready, None);
    engine.record(NewEvent {
        app: Some(key.0.clone()),
        environment: Some(key.1.clone()),
        deployment_id: None,
        kind: "instance.healthy".to_owned(),
        message: format!("instance {instance_id} healthy"),
        data_json: "{}".to_owned(),
    });
    Ok(())
}

async fn shift(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    release: &spec::LoadedRelease,
    data: &mut DeploymentData,
) -> Result<(), String> {
    let target = deployment.to_release;
    let keep_warm = release.resolved.config.strategy.keep_warm.as_std();
    let rolling = deployment.strategy == "rolling" && !data.previous_weights.is_empty();
    let routes = spec::routes(&release.resolved);
    if rolling {
        let wanted = spec::wanted_instances(&release.resolved);
        let n_wanted = wanted.len().max(1);
        for (done, (service, index)) in wanted.into_iter().enumerate() {
            let instance_id = spec::instance_id(key, target, &service, index);
            if !engine.runtime(key).instances.contains_key(&instance_id) {
                let started = spec::start_instance(engine, key, release, &service, index).await?;
                data.started.push(started);
            }
            verify_instance(engine, key, release, &instance_id).await?;
            let share = u8::try_from(100 * (done + 1) / n_wanted).unwrap_or(100);
            engine.with_runtime(key, |runtime| {
                runtime.routes = routes.clone();
                runtime.weights = if share >= 100 {
                    vec![(target, 100)]
                } else {
                    scaled(&data.previous_weights, 100 - share, target, share)
                };
            });
            engine
                .push_routes()
                .await
                .map_err(|error| error.to_string())?;
            record(
                engine,
                deployment,
                "deployment.weights",
                format!("release {target} takes {share}% of traffic"),
            );
        }
    } else {
        engine.with_runtime(key, |runtime| {
            runtime.routes = routes.clone();
            runtime.weights = vec![(target, 100)];
        });
        engine
            .push_routes()
            .await
            .map_err(|error| error.to_string())?;
        record(
            engine,
            deployment,
            "deployment.weights",
            format!("release {target} takes 100% of traffic"),
        );
    }
    // The earlier releases leave traffic but stay warm for a rollback.
    let warm_until = now_ms() + i64::try_from(keep_warm.as_millis()).unwrap_or(i64::MAX);
    let earlier: Vec<String> = engine
        .runtime(key)
        .instances
        .iter()
        .filter(|(_, instance)| {
            instance.release != target && instance.phase == InstancePhase::Ready
        })
        .map(|(id, _)| id.clone())
        .collect();
    for instance_id in earlier {
        spec::set_phase(
            engine,
            key,
            &instance_id,
            InstancePhase::Warm,
            Some(warm_until),
        );
    }
    engine
        .push_routes()
        .await
        .map_err(|error| error.to_string())?;
    let store = &engine.store;
    if let Some(from) = deployment.from_release.filter(|from| *from != target) {
        // The release a rollback leaves is not a rollback target itself.
        let outcome = if deployment.kind == "rollback" {
            ReleaseOutcome::RolledBack
        } else {
            ReleaseOutcome::Superseded
        };
        let _ = store.set_release_outcome(&key.0, &key.1, from, outcome);
    }
    store
        .set_release_outcome(&key.0, &key.1, target, ReleaseOutcome::Live)
        .map_err(|error| error.to_string())?;
    store
        .set_current(&key.0, &key.1, target)
        .map_err(|error| error.to_string())?;
    Ok(())
}

async fn roll_back(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    data: &DeploymentData,
) -> Result<(), String> {
    let previous: Vec<u64> = data
        .previous_weights
        .iter()
        .map(|(release, _)| *release)
        .collect();
    let earlier: Vec<String> = engine
        .runtime(key)
        .instances
        .iter()
        .filter(|(_, instance)| {
            previous.contains(&instance.release) && instance.phase == InstancePhase::Warm
        })
        .map(|(id, _)| id.clone())
        .collect();
    for instance_id in earlier {
        spec::set_phase(engine, key, &instance_id, InstancePhase::Ready, None);
    }
    engine.with_runtime(key, |runtime| {
        runtime.weights = data.previous_weights.clone()
    });
    engine
        .push_routes()
        .await
        .map_err(|error| error.to_string())?;
    record(
        engine,
        deployment,
        "deployment.weights",
        "traffic is back on the earlier release".to_owned(),
    );
    if let Some(from) = deployment.from_release {
        let _ = engine.store.set_current(&key.0, &key.1, from);
        let _ = engine
            .store
            .set_release_outcome(&key.0, &key.1, from, ReleaseOutcome::Live);
    }
    if deployment.kind == "deploy" {
        let _ = engine.store.set_release_outcome(
            &key.0,
            &key.1,
            deployment.to_release,
            ReleaseOutcome::RolledBack,
        );
    }
    spec::stop_instances(engine, key, &data.started).await;
    Ok(())
}

/// Takes back what a deployment that never moved traffic started.
pub async fn undo(engine: &Arc<Engine>, deployment: &Deployment, data: &DeploymentData) {
    let key: AppEnv = (deployment.app.clone(), deployment.environment.clone());
    if data.plan.as_deref() == Some("warm") {
        // A warm rollback started nothing; its instances go back to warm.
        let ids: Vec<String> = engine
            .runtime(&key)
            .instances
            .iter()
            .filter(|(_, instance)| {
                instance.release == deployment.to_release && instance.phase == InstancePhase::Ready
            })
            .filter(|_| {
                !engine
                    .runtime(&key)
                    .weights
                    .iter()
                    .any(|(release, _)| *release == deployment.to_release)
            })
            .map(|(id, _)| id.clone())
            .collect();
        let warm_until = now_ms() + 60_000;
        for instance_id in ids {
            spec::set_phase(
                engine,
                &key,
                &instance_id,
                InstancePhase::Warm,
                Some(warm_until),
            );
        }
    } else {
        spec::stop_instances(engine, &key, &data.started).await;
    }
    if deployment.kind == "deploy" {
        let _ = engine.store.set_release_outcome(
            &key.0,
            &key.1,
            deployment.to_release,
            ReleaseOutcome::Failed,
        );
    }
    let _ = engine.push_routes().await;
}

/// After a terminal state: the lock goes, a last event is written.
fn finish(engine: &Arc<Engine>, id: &str) {
    let Ok(Some(deployment)) = engine.store.deployment(id) else {
        return;
    };
    let _ = engine
        .store
        .release_lock(&deployment.app, &deployment.environment, id);
    if let Ok(state) = deployment.state.parse::<State>()
        && state.is_terminal()
    {
        let message = match (&deployment.reason, state) {
            (Some(reason), State::Failed | State::RolledBack) => format!("{state}: {reason}"),
            _ => format!("{state}"),
        };
        record(engine, &deployment, "deployment.finished", message);
    }
}

fn spawn_heartbeat(engine: Arc<Engine>, id: String) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(LOCK_TTL / 4).await;
            let Ok(Some(deployment)) = engine.store.deployment(&id) else {
                return;
            };
            let ttl = i64::try_from(LOCK_TTL.as_millis()).unwrap_or(60_000);
            let _ = engine.store.heartbeat_lock(
                &deployment.app,
                &deployment.environment,
                &id,
                ttl,
                now_ms(),
            );
        }
    })
}

fn record(engine: &Engine, deployment: &Deployment, kind: &str, message: String) {
    engine.record(event(deployment, kind, message));
}

fn event(deployment: &Deployment, kind: &str, message: String) -> NewEvent {
    NewEvent {
        app: Some(deployment.app.clone()),
        environment: Some(deployment.environment.clone()),
        deployment_id: Some(deployment.id.clone()),
        kind: kind.to_owned(),
        message,
        data_json: "{}".to_owned(),
    }
}

/// A failure reason with the last lines the instance printed, which usually say why.
fn with_log_tail(engine: &Engine, instance_id: &str, reason: String) -> String {
    let reason = if reason.contains(instance_id) {
        reason
    } else {
        format!("instance `{instance_id}`: {reason}")
    };
    match driver::Driver::logs(engine.driver.as_ref(), instance_id, 5) {
        Ok(lines) if !lines.is_empty() => {
            let tail: Vec<String> = lines
                .iter()
                .map(|line| format!("  | {}", line.line))
                .collect();
            format!("{reason}; its last output:\n{}", tail.join("\n"))
        }
        _ => reason,
    }
}

/// Weights of `previous` scaled to `keep` percent, plus `target` at `share`.
fn scaled(previous: &[(u64, u8)], keep: u8, target: u64, share: u8) -> Vec<(u64, u8)> {
    let total: u32 = previous
        .iter()
        .map(|(_, weight)| u32::from(*weight))
        .sum::<u32>()
        .max(1);
    let mut weights: Vec<(u64, u8)> = previous
        .iter()
        .map(|(release, weight)| {
            (
                *release,
                u8::try_from(u32::from(*weight) * u32::from(keep) / total).unwrap_or(0),
            )
        })
        .collect();
    let given: u32 = weights
        .iter()
        .map(|(_, weight)| u32::from(*weight))
        .sum::<u32>()
        + u32::from(share);
    if let Some(first) = weights.first_mut() {
        first.1 = first
            .1
            .saturating_add(u8::try_from(100u32.saturating_sub(given)).unwrap_or(0));
    }
    weights.push((target, share));
    weights.retain(|(_, weight)| *weight > 0);
    weights
}
