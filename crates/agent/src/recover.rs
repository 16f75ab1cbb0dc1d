//! Start-up after any stop, clean or kill -9: rebuild the runtime view from the store, adopt the
//! instances that still run (restart those that do not), give the proxy the routes again, and
//! finish or undo every deployment that was in flight. Temporary unpack folders and uploads a
//! killed agent left are removed first.

use std::sync::Arc;

use client::wire::DeploymentEvent;

use crate::deploy::executor::{self, DeploymentData};
use crate::deploy::spec;
use crate::deploy::state::{self, Recovery, State};
use crate::engine::{AppEnv, Engine, InstancePhase, RuntimeInstance};

pub async fn recover(engine: &Arc<Engine>) {
    // Nothing unpacks yet: whatever temporary folder exists was left by a killed agent.
    crate::deploy::prepare::clean_leftovers(engine);
    rebuild_runtime(engine);
    adopt_instances(engine).await;
    if let Err(error) = engine.push_routes().await {
        tracing::error!(message = "Cannot give the proxy its routes.", %error);
    }
    resume_deployments(engine).await;
    remove_ghosts(engine).await;
    finish_destroys(engine).await;
}

/// An environment destroyed by an agent killed before it had stopped every instance: stop the rest.
async fn finish_destroys(engine: &Arc<Engine>) {
    let keys: Vec<AppEnv> = engine
        .runtimes
        .lock()
        .map(|runtimes| runtimes.keys().cloned().collect())
        .unwrap_or_default();
    for key in keys {
        if engine
            .store
            .is_destroyed(&key.app, &key.environment)
            .unwrap_or(false)
        {
            let ids: Vec<String> = engine.runtime(&key).instances.keys().cloned().collect();
            spec::stop_instances(engine, &key, &ids).await;
            if let Ok(Some(current)) = engine.store.current(&key.app, &key.environment) {
                spec::sweep_swarm(engine, &key, current, driver::swarm::Sweep::Everything).await;
            }
        }
    }
}

/// Instances still `starting` with no deployment in flight for their app and environment are left
/// over from a deploy that failed or was cut short: nothing will ever take them further.
async fn remove_ghosts(engine: &Arc<Engine>) {
    let in_flight: Vec<AppEnv> = engine
        .store
        .unfinished_deployments()
        .unwrap_or_default()
        .into_iter()
        .map(|deployment| AppEnv::new(deployment.app, deployment.environment))
        .collect();
    let ghosts: Vec<(AppEnv, Vec<String>)> = engine
        .runtimes
        .lock()
        .map(|runtimes| {
            runtimes
                .iter()
                .filter(|(key, _)| !in_flight.contains(key))
                .map(|(key, runtime)| {
                    let ids = runtime
                        .instances
                        .iter()
                        .filter(|(_, instance)| instance.phase == InstancePhase::Starting)
                        .map(|(id, _)| id.clone())
                        .collect::<Vec<_>>();
                    (key.clone(), ids)
                })
                .filter(|(_, ids)| !ids.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for (key, ids) in ghosts {
        tracing::warn!(message = "Removing instances left starting by an earlier deploy.", app = %key.app, environment = %key.environment, instances = ?ids);
        spec::stop_instances(engine, &key, &ids).await;
    }
}

fn rebuild_runtime(engine: &Arc<Engine>) {
    let records = engine.store.all_instances().unwrap_or_else(|error| {
        tracing::error!(message = "Cannot read the instances from the store.", %error);
        Vec::new()
    });
    for record in records {
        let key = AppEnv::new(record.app.clone(), record.environment.clone());
        let phase = InstancePhase::parse(&record.state).unwrap_or(InstancePhase::Starting);
        engine.with_runtime(&key, |runtime| {
            runtime.instances.insert(
                record.instance_id.to_string(),
                RuntimeInstance {
                    release: record.release,
                    service: record.service.clone(),
                    port: record.port,
                    host: record.host,
                    phase,
                    warm_until: record.warm_until,
                    unhealthy: false,
                },
            );
        });
    }
    let keys: Vec<AppEnv> = engine
        .runtimes
        .lock()
        .map(|runtimes| runtimes.keys().cloned().collect())
        .unwrap_or_default();
    let mut all_keys = keys;
    for (app, env, _) in engine.store.apps().unwrap_or_default() {
        let key = AppEnv::new(app, env);
        if !all_keys.contains(&key) {
            all_keys.push(key);
        }
    }
    for key in all_keys {
        let Ok(Some(current)) = engine.store.current(&key.app, &key.environment) else {
            continue;
        };
        // A destroyed environment has no routes until its next release goes live.
        if engine
            .store
            .is_destroyed(&key.app, &key.environment)
            .unwrap_or(false)
        {
            continue;
        }
        let Ok(release) = spec::load_release(engine, &key, current) else {
            continue;
        };
        engine.with_runtime(&key, |runtime| {
            runtime.routes = spec::routes(&release.resolved);
            runtime.weights = vec![(current, 100)];
        });
    }
}

async fn adopt_instances(engine: &Arc<Engine>) {
    let runtimes: Vec<(AppEnv, Vec<(String, RuntimeInstance)>)> = engine
        .runtimes
        .lock()
        .map(|runtimes| {
            runtimes
                .iter()
                .map(|(key, runtime)| {
                    (
                        key.clone(),
                        runtime
                            .instances
                            .iter()
                            .map(|(id, instance)| (id.clone(), instance.clone()))
                            .collect(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    for (key, instances) in runtimes {
        for (id, instance) in instances {
            let Ok(release) = spec::load_release(engine, &key, instance.release) else {
                continue;
            };
            let Some(service) = release.resolved.config.service(&instance.service) else {
                continue;
            };
            if let Err(error) = spec::carry_over_legacy_build(engine, &release) {
                tracing::warn!(message = "Cannot carry a release folder over.", instance = %id, %error);
            }
            let Ok(driver_spec) =
                spec::instance_spec(engine, &key, &release, service, &id, instance.port)
            else {
                continue;
            };
            match engine.drivers.adopt(driver_spec.clone()).await {
                Ok(true) => {}
                Ok(false) => {
                    // Gone while the agent was away: start it again on its port.
                    tracing::warn!(message = "Instance was not running; starting it again.", instance = %id);
                    if let Err(error) = engine.drivers.start(driver_spec).await {
                        tracing::error!(message = "Cannot restart an instance.", instance = %id, error = %crate::report::chain(&error));
                    }
                }
                Err(error) => {
                    tracing::error!(message = "Cannot adopt an instance.", instance = %id, error = %crate::report::chain(&error))
                }
            }
        }
    }
}

/// The release command of an app of containers runs in a one-off container, which outlives an
/// agent killed during it: remove it (and its env file, which holds the secrets).
async fn remove_release_containers(engine: &Arc<Engine>, deployment: &crate::store::Deployment) {
    let key = AppEnv::new(deployment.app.clone(), deployment.environment.clone());
    // On the swarm, the release command is a Swarm job, which outlives the agent the same way.
    spec::sweep_swarm(
        engine,
        &key,
        deployment.to_release,
        driver::swarm::Sweep::Jobs,
    )
    .await;
    let containers = spec::load_release(engine, &key, deployment.to_release)
        .is_ok_and(|release| !release.images.is_empty());
    if !containers {
        return;
    }
    let removed = match engine.drivers.container().await {
        Ok(driver) => driver
            .remove_run_once(&deployment.app, &deployment.environment)
            .await
            .map_err(|error| crate::report::chain(&error)),
        Err(error) => Err(crate::report::chain(&error)),
    };
    if let Err(error) = removed {
        tracing::error!(message = "Cannot remove the release command's container.", deployment = %deployment.id, %error);
    }
}

async fn resume_deployments(engine: &Arc<Engine>) {
    let unfinished = engine
        .store
        .unfinished_deployments()
        .unwrap_or_else(|error| {
            tracing::error!(message = "Cannot read unfinished deployments from the store.", %error);
            Vec::new()
        });
    for deployment in unfinished {
        let current = deployment.state;
        match state::recover(current) {
            Recovery::Finished => {}
            Recovery::Undo => {
                let data: DeploymentData =
                    serde_json::from_str(&deployment.data_json).unwrap_or_default();
                // Instances of the target the store did not know yet are stopped by `undo` too.
                if current == State::Releasing {
                    remove_release_containers(engine, &deployment).await;
                }
                executor::undo(engine, &deployment, &data).await;
                let reason = format!("the agent restarted during {current}; traffic never moved");
                let _ = engine.store.transition(
                    &deployment.id,
                    current,
                    State::Failed,
                    Some(&reason),
                    None,
                );
                engine.record_progress(
                    crate::engine::Subject::deployment(&deployment),
                    &DeploymentEvent::Finished {
                        state: State::Failed,
                        reason: Some(reason.clone()),
                    },
                );
                let _ = engine.store.release_lock(
                    &deployment.app,
                    &deployment.environment,
                    &deployment.id,
                );
            }
            Recovery::Resume(_) => {
                tokio::spawn(executor::run(
                    engine.clone(),
                    deployment.id.clone().into_string(),
                ));
            }
        }
    }
}
