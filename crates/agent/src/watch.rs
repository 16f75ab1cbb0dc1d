//! The continuous watch, outside deploys: active health checks on every routed instance for its
//! whole life, and the current release's error rate over a sliding window.
//!
//! An instance that fails `unhealthy` checks in a row leaves routing and comes back after `healthy`
//! passes (after one pass when no instance of its release's service is in routing: the proxy holds
//! the route's requests meanwhile); both are events, the first one an alert. When every instance of
//! a release's service fails, those in routing stay (fail open) and one alert says so; one already
//! out (a stopped task) is not brought back by it. An
//! error rate that crosses the bound is an alert, not a rollback: there is nothing newer to undo.

use client::wire::ReleaseNumber;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::analysis::{self, Sample, Sprt};
use crate::engine::{AppEnv, Engine, InstancePhase, release_id};
use crate::store::NewEvent;

/// How often the watch looks at error rates.
pub const TICK: Duration = Duration::from_secs(1);

/// Health checks of every ready instance, each at its service's interval.
///
/// Fail open, as Envoy's panic threshold does: when every instance of a release's service fails its
/// checks, those in routing stay (some of its paths may still work, and nothing else would answer)
/// and an alert goes out; the failing ones leave routing only while others of the group pass. Fail
/// open never brings back an instance that is already out: with none in routing, the proxy holds
/// the route's requests (bounded by the route's `hold`) until one passes a check, which is better
/// than sending them to a task that is gone or a replacement that does not answer yet.
pub async fn health_loop(engine: Arc<Engine>) {
    // Consecutive results per instance: (passes, failures).
    let mut streaks: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    // Groups (app, env, release, service) currently failing open, so the alert goes out once.
    let mut failing_open: BTreeSet<(AppEnv, ReleaseNumber, String)> = BTreeSet::new();
    loop {
        tokio::time::sleep(TICK).await;
        if engine.shutdown.is_cancelled() {
            return;
        }
        let runtimes: Vec<(AppEnv, crate::engine::Runtime)> = engine
            .runtimes
            .lock()
            .map(|runtimes| {
                runtimes
                    .iter()
                    .map(|(key, runtime)| (key.clone(), runtime.clone()))
                    .collect()
            })
            .unwrap_or_default();
        let mut seen = Vec::new();
        let mut still_open = BTreeSet::new();
        for (key, runtime) in runtimes {
            // A deploy in flight runs its own health gate.
            if engine
                .store
                .lock(&key.app, &key.environment)
                .ok()
                .flatten()
                .is_some()
            {
                continue;
            }
            let Some(current) = runtime.weights.first().map(|(release, _)| *release) else {
                continue;
            };
            let Ok(release) = crate::deploy::spec::load_release(&engine, &key, current) else {
                continue;
            };
            // Each routed instance's verdict this tick, grouped by (release, service).
            let mut groups: BTreeMap<(ReleaseNumber, String), Vec<Judged>> = BTreeMap::new();
            for (id, instance) in &runtime.instances {
                if instance.phase != InstancePhase::Ready
                    || !runtime
                        .weights
                        .iter()
                        .any(|(release, _)| *release == instance.release)
                {
                    continue;
                }
                let Some(service) = release.resolved.config.service(&instance.service) else {
                    continue;
                };
                let Some(health) = &service.health else {
                    continue;
                };
                seen.push(id.clone());
                let passed =
                    crate::deploy::spec::check_instance(&release, service, instance.addr())
                        .await
                        .unwrap_or(true);
                let streak = streaks.entry(id.clone()).or_default();
                *streak = if passed {
                    (streak.0 + 1, 0)
                } else {
                    (0, streak.1 + 1)
                };
                let (passes, failures) = *streak;
                groups
                    .entry((instance.release, instance.service.clone()))
                    .or_default()
                    .push(Judged {
                        id: id.clone(),
                        out: instance.unhealthy,
                        failing: false,
                        passes,
                        failures,
                        healthy: health.healthy,
                        unhealthy: health.unhealthy,
                    });
            }
            for judged in groups.values_mut() {
                // With none of the group in routing, its requests are held (the proxy's hold): the
                // first instance that passes a check goes back at once rather than after `healthy`.
                let none_routed = judged.iter().all(|instance| instance.out);
                for instance in judged.iter_mut() {
                    // Out while failing; back once it passed `healthy` checks in a row.
                    instance.failing = if instance.out {
                        instance.passes < if none_routed { 1 } else { instance.healthy }
                    } else {
                        instance.failures >= instance.unhealthy
                    };
                }
            }
            let mut changed = false;
            for ((release_number, service), judged) in groups {
                let group = (key.clone(), release_number, service.clone());
                // Fail open: every instance fails and some are in routing; those stay in. An
                // instance already out (its task or process gone, or failing before the others)
                // comes back only by passing its checks.
                let all_failing = judged.iter().all(|instance| instance.failing)
                    && judged.iter().any(|instance| !instance.out);
                if all_failing {
                    still_open.insert(group.clone());
                    if failing_open.insert(group) {
                        record(
                            &engine,
                            &key,
                            "watch.all_unhealthy",
                            format!(
                                "all {} instances of release {release_number} (service `{service}`) fail their health checks; they stay in traffic (fail open): nothing else could answer",
                                judged.len()
                            ),
                        );
                    }
                } else if failing_open.remove(&group) {
                    record(
                        &engine,
                        &key,
                        "watch.recovered",
                        format!(
                            "release {release_number} (service `{service}`): some instances pass their health checks again"
                        ),
                    );
                }
                for instance in judged {
                    let out = instance.failing && (instance.out || !all_failing);
                    if out == instance.out {
                        continue;
                    }
                    set_unhealthy(&engine, &key, &instance.id, out);
                    changed = true;
                    let progress = if out {
                        client::wire::DeploymentEvent::InstanceUnhealthy {
                            instance: instance.id.clone(),
                            failures: instance.failures,
                        }
                    } else if instance.failing {
                        client::wire::DeploymentEvent::InstanceKeptInTraffic {
                            instance: instance.id.clone(),
                            release: release_number,
                        }
                    } else {
                        client::wire::DeploymentEvent::InstanceRecovered {
                            instance: instance.id.clone(),
                        }
                    };
                    engine.record_progress(crate::engine::Subject::app(&key), &progress);
                }
            }
            if changed {
                let _ = engine.push_routes().await;
            }
        }
        failing_open.retain(|group| still_open.contains(group));
        streaks.retain(|id, _| seen.contains(id));
    }
}

/// One instance's health verdict in one tick.
struct Judged {
    id: String,
    /// Out of routing before this tick.
    out: bool,
    /// Fails its checks (by the `unhealthy`/`healthy` streak rules).
    failing: bool,
    passes: u32,
    failures: u32,
    /// The service's streak rules: passes to come back, failures to leave.
    healthy: u32,
    unhealthy: u32,
}

fn set_unhealthy(engine: &Engine, key: &AppEnv, id: &str, unhealthy: bool) {
    engine.with_runtime(key, |runtime| {
        if let Some(instance) = runtime.instances.get_mut(id) {
            instance.unhealthy = unhealthy;
        }
    });
}

/// The current release's error rate over the analysis window, judged like a deploy's analysis
/// against the absolute bound; crossing it is an alert (once, until it recovers).
pub async fn error_rate_loop(engine: Arc<Engine>) {
    let mut history: BTreeMap<String, VecDeque<(tokio::time::Instant, Sample)>> = BTreeMap::new();
    let mut breached: BTreeMap<String, bool> = BTreeMap::new();
    loop {
        tokio::time::sleep(TICK).await;
        if engine.shutdown.is_cancelled() {
            return;
        }
        let Ok(stats) = engine.proxy.stats().await else {
            continue;
        };
        let now = tokio::time::Instant::now();
        for (app, env, current) in engine.store.apps().unwrap_or_default() {
            let Some(current) = current else { continue };
            let key = AppEnv::new(app.clone(), env.clone());
            if engine.store.lock(&app, &env).ok().flatten().is_some() {
                continue;
            }
            let Ok(release) = crate::deploy::spec::load_release(&engine, &key, current) else {
                continue;
            };
            let analysis = &release.resolved.config.analysis;
            let name = release_id(&app, &env, current);
            let Some(observed) = stats.iter().find(|candidate| candidate.release == name) else {
                continue;
            };
            let classes = &observed.requests;
            let sample = Sample {
                requests: classes.informational
                    + classes.success
                    + classes.redirection
                    + classes.client_error
                    + classes.server_error,
                errors: classes.server_error,
                p99_us: observed.latency.p99_us,
                latency_count: observed.latency.count,
            };
            let window = history.entry(name.clone()).or_default();
            window.push_back((now, sample));
            while window
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > analysis.window.as_std())
            {
                window.pop_front();
            }
            let Some((_, oldest)) = window.front() else {
                continue;
            };
            let requests = sample.requests.saturating_sub(oldest.requests);
            let errors = sample.errors.saturating_sub(oldest.errors);
            if requests < analysis.min_requests {
                continue;
            }
            let bound = analysis.max_error_rate.get();
            let verdict = analysis::sprt(errors, requests, bound / 2.0, bound);
            let was = breached.get(&name).copied().unwrap_or(false);
            let rate = errors as f64 / requests as f64 * 100.0;
            match verdict {
                Sprt::AcceptH1 if !was => {
                    breached.insert(name.clone(), true);
                    record(
                        &engine,
                        &key,
                        "watch.error_rate",
                        format!(
                            "release {current}: 5xx share {rate:.2}% ({errors} of {requests} over {}) is above the bound {:.2}%",
                            analysis.window,
                            bound * 100.0
                        ),
                    );
                }
                Sprt::AcceptH0 if was => {
                    breached.insert(name.clone(), false);
                    record(
                        &engine,
                        &key,
                        "watch.recovered",
                        format!("release {current}: 5xx share {rate:.2}% is back under the bound"),
                    );
                }
                _ => {}
            }
        }
        history.retain(|name, _| stats.iter().any(|candidate| &candidate.release == name));
    }
}

fn record(engine: &Engine, key: &AppEnv, kind: &str, message: String) {
    engine.record(NewEvent {
        app: Some(key.app.clone()),
        environment: Some(key.environment.clone()),
        deployment_id: None,
        kind: kind.to_owned(),
        message,
        data_json: "{}".to_owned(),
    });
}
