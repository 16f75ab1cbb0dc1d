//! The executor: runs one deployment through the state machine, writing each transition to the
//! store before performing the next step's effects, so a restarted agent knows where it was.
//!
//! Deploys and rollbacks take this one path; a rollback is a deployment to an earlier release
//! (warm when its instances still run, cold otherwise).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use client::wire::{DeploymentEvent, DeploymentKind, Strategy};

use crate::analysis::{self, Bounds, Sample, Verdict};

use crate::deploy::state::{self, Plan, State, StepResult};
use crate::deploy::{fault, prepare, spec};
use crate::engine::Signal;
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
    /// Hold at `AwaitingApproval` before the backup and the release command.
    #[serde(default)]
    pub approval: bool,
    /// Watch the release after it takes all traffic.
    #[serde(default)]
    pub observe: bool,
    /// The id of the token that started the deployment: it may not approve it.
    #[serde(default)]
    pub started_by_token: Option<String>,
}

impl DeploymentData {
    fn plan(&self) -> Plan {
        Plan {
            warm: self.plan.as_deref() == Some("warm"),
            approval: self.approval,
            observe: self.observe,
        }
    }
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
            .map_err(|error| crate::report::chain(&error))?
            .ok_or_else(|| format!("no deployment `{id}`"))?;
        let current = deployment.state;
        if current.is_terminal() {
            return Ok(());
        }
        if engine.shutdown.is_cancelled() && !current.traffic_may_have_moved() {
            // Parked: a restarted agent undoes it (traffic never moved).
            return Ok(());
        }
        let mut data: DeploymentData =
            serde_json::from_str(&deployment.data_json).unwrap_or_default();
        // An abort between steps stops the deployment at the next boundary; the steps that wait
        // (approval, canary steps, observing) also see it while they wait.
        let outcome = match engine.take_abort(id) {
            Some(by) if current != State::RollingBack => Err(format!("aborted by {by}")),
            _ => step(engine, &deployment, current, &mut data).await,
        };
        let (result, reason) = match outcome {
            Ok(()) => (StepResult::Done, None),
            Err(reason) => (
                StepResult::Failed,
                Some(scrub_reason(engine, &deployment, &reason)),
            ),
        };
        let next = state::next(current, result, data.plan());
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
        let data_json =
            serde_json::to_string(&data).map_err(|error| crate::report::chain(&error))?;
        // The transition and its event are one transaction: a kill -9 cannot keep one without the other.
        let (_, event) = engine
            .store
            .transition_with_event(
                id,
                current,
                next,
                reason.as_deref(),
                Some(&data_json),
                NewEvent::for_deployment(
                    &deployment,
                    "deployment.state",
                    format!("{current} → {next}"),
                )
                .with_data(&DeploymentEvent::State {
                    from: current,
                    to: next,
                }),
            )
            .map_err(|error| crate::report::chain(&error))?;
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
            // Warm means the routed services still run; workers stop at every switch and are
            // started again in Verifying.
            let routed: Vec<&str> = release
                .resolved
                .config
                .routes
                .iter()
                .map(|route| route.service.as_str())
                .collect();
            let running = runtime
                .instances
                .values()
                .filter(|instance| {
                    instance.release == target
                        && instance.phase != InstancePhase::Starting
                        && routed.contains(&instance.service.as_str())
                })
                .count();
            let wanted: usize = release
                .resolved
                .config
                .services
                .iter()
                .filter(|service| routed.contains(&service.name.as_str()))
                .map(|service| service.replicas as usize)
                .sum();
            let warm = running >= wanted && wanted > 0;
            data.plan = Some(if warm { "warm" } else { "cold" }.to_owned());
            data.previous_weights = runtime.weights.clone();
            // Gates and the watch after the switch are for new releases; a rollback goes straight
            // back to a release that served before.
            let deploying = deployment.kind == DeploymentKind::Deploy;
            data.approval = deploying && release.resolved.approval;
            data.observe =
                deploying && !release.resolved.config.analysis.observe.as_std().is_zero();
            Ok(())
        }
        State::Preparing => {
            // Certificates first: a refused or broken one fails the deploy before anything is
            // built or moved.
            crate::certs::ensure_for_release(engine, &key, &release.resolved, &release.secrets)
                .await
                .map_err(|error| crate::report::chain(&error))?;
            prepare::prepare(engine, deployment, &release)
                .await
                .map_err(|error| crate::report::chain(&error))?;
            spec::prepare_images(engine, deployment, &release).await
        }
        State::BackingUp => {
            // Only a deploy runs the release command, so only a deploy needs the backup first.
            let variable = release
                .resolved
                .config
                .release
                .as_ref()
                .and_then(|phase| phase.backup.clone());
            match (variable, deployment.kind) {
                (Some(variable), DeploymentKind::Deploy) => {
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
            match (&release.resolved.config.release, deployment.kind) {
                (Some(phase), DeploymentKind::Deploy) => match &phase.command {
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
            let rolling = deployment.strategy == Strategy::Rolling
                && !engine.runtime(&key).weights.is_empty();
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
            if data.plan.as_deref() == Some("warm") {
                // A warm rollback finds its routed instances running, not its workers.
                for (service, index) in spec::wanted_instances(&release.resolved) {
                    let instance_id = spec::instance_id(&key, target, &service, index);
                    if !engine.runtime(&key).instances.contains_key(&instance_id) {
                        let started =
                            spec::start_instance(engine, &key, &release, &service, index).await?;
                        data.started.push(started);
                    }
                }
            }
            let ids: Vec<String> = engine
                .runtime(&key)
                .instances
                .iter()
                .filter(|(_, instance)| instance.release == target)
                .map(|(id, _)| id.clone())
                .collect();
            for instance_id in &ids {
                verify_instance(engine, &key, &release, instance_id).await?;
            }
            // The smoke command talks to the new instances directly, before any user does.
            let smoke = release
                .resolved
                .config
                .release
                .as_ref()
                .and_then(|phase| phase.smoke.clone());
            if let (Some(smoke), DeploymentKind::Deploy) = (smoke, deployment.kind) {
                spec::run_smoke(engine, deployment, &release, &smoke, &ids).await?;
            }
            Ok(())
        }
        State::AwaitingApproval => await_approval(engine, deployment).await,
        State::Shifting => shift(engine, deployment, &key, &release, data).await,
        State::Observing => observe(engine, deployment, &key, &release, data).await,
        State::RollingBack => roll_back(engine, deployment, &key, data).await,
        State::Succeeded | State::RolledBack | State::Failed => Ok(()),
    }
}

/// Waits for `rollway approve` (or `abort`). Nothing has touched the database or the instances
/// yet: the API lets only another token with role approver or admin send the approval.
async fn await_approval(engine: &Arc<Engine>, deployment: &Deployment) -> Result<(), String> {
    // An approval recorded before a restart counts: the agent may have died between the
    // approval and the transition after it.
    let events = engine
        .store
        .events_for_deployment(&deployment.id, 0)
        .map_err(|error| error.to_string())?;
    if events
        .iter()
        .any(|event| event.kind == "deployment.approved")
    {
        return Ok(());
    }
    record(
        engine,
        deployment,
        "deployment.awaiting_approval",
        format!(
            "release {} is prepared and waits for `rollway approve {}` by an approver or admin other than {}; nothing was backed up, migrated or started yet",
            deployment.to_release, deployment.id, deployment.created_by
        ),
    );
    loop {
        for signal in engine.take_signals(&deployment.id) {
            match signal {
                Signal::Approve { by } => {
                    record(
                        engine,
                        deployment,
                        "deployment.approved",
                        format!("{by} approved release {}", deployment.to_release),
                    );
                    return Ok(());
                }
                Signal::Abort { by } => {
                    return Err(format!("aborted by {by} before traffic moved"));
                }
                Signal::Promote { .. } => {}
            }
        }
        if engine.shutdown.is_cancelled() {
            return Err("the agent stopped while the deployment waited for approval".to_owned());
        }
        engine.wait_for_signal(Duration::from_secs(1)).await;
    }
}

/// After the switch: the same analysis, armed for `observe`; a failing verdict rolls back.
async fn observe(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    release: &spec::LoadedRelease,
    _data: &DeploymentData,
) -> Result<(), String> {
    let analysis = &release.resolved.config.analysis;
    let window = analysis.observe.as_std();
    record(
        engine,
        deployment,
        "deployment.observing",
        format!(
            "release {} takes all traffic; analysis stays armed for {}",
            deployment.to_release, analysis.observe
        ),
    );
    let mut watch = Watch::start(
        engine,
        key,
        deployment.to_release,
        Vec::new(),
        bounds(release),
        analysis.window.as_std(),
    )
    .await;
    let deadline = tokio::time::Instant::now() + window;
    let mut health = ReleaseHealth::default();
    loop {
        for signal in engine.take_signals(&deployment.id) {
            if let Signal::Abort { by } = signal {
                return Err(format!("aborted by {by} while observing"));
            }
        }
        let verdict = watch.evaluate(engine, deployment).await;
        if let Verdict::Fail { reason } = verdict {
            return Err(format!("the analysis failed after the switch: {reason}"));
        }
        // A release that stops answering its health checks altogether (frozen, deadlocked) sends
        // no errors to count: the checks are the evidence.
        if let Some(dead) = health.all_failing(engine, key, release).await {
            match warm_fallback(engine, key, deployment.to_release).await {
                Some(previous) => {
                    return Err(format!(
                        "{dead} after the switch, while release {previous} is warm and healthy"
                    ));
                }
                None if !health.said_no_fallback => {
                    health.said_no_fallback = true;
                    record(
                        engine,
                        deployment,
                        "deployment.no_fallback",
                        format!(
                            "{dead}; no earlier release is warm and healthy to go back to, so it keeps the traffic"
                        ),
                    );
                }
                None => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            if matches!(verdict, Verdict::Inconclusive { .. }) {
                record(
                    engine,
                    deployment,
                    "analysis.inconclusive",
                    format!("the observation window ended without enough evidence ({verdict})"),
                );
            }
            return Ok(());
        }
        engine.wait_for_signal(analysis.interval.as_std()).await;
    }
}

/// Consecutive health-check failures of a release's instances while it is observed.
#[derive(Default)]
struct ReleaseHealth {
    failures: std::collections::BTreeMap<String, u32>,
    said_no_fallback: bool,
}

impl ReleaseHealth {
    /// Probes every ready instance of the release once; when every one of them has failed its
    /// service's `unhealthy` checks in a row, says so.
    async fn all_failing(
        &mut self,
        engine: &Arc<Engine>,
        key: &AppEnv,
        release: &spec::LoadedRelease,
    ) -> Option<String> {
        let instances: Vec<(String, crate::engine::RuntimeInstance)> = engine
            .runtime(key)
            .instances
            .into_iter()
            .filter(|(_, instance)| {
                instance.release == release.number && instance.phase == InstancePhase::Ready
            })
            .collect();
        let mut checks = Vec::new();
        for (id, instance) in &instances {
            let Some(service) = release.resolved.config.service(&instance.service) else {
                continue;
            };
            let Some(check) = &service.health else {
                continue;
            };
            let threshold = check.unhealthy;
            checks.push(async move {
                let passed = spec::check_instance(release, service, instance.port)
                    .await
                    .unwrap_or(true);
                (id.clone(), passed, threshold)
            });
        }
        if checks.is_empty() {
            return None;
        }
        let results = futures_util::future::join_all(checks).await;
        let mut all_failing = true;
        let mut streak = u32::MAX;
        for (id, passed, threshold) in &results {
            let failures = self.failures.entry(id.clone()).or_default();
            *failures = if *passed { 0 } else { *failures + 1 };
            all_failing &= *failures >= *threshold;
            streak = streak.min(*failures);
        }
        all_failing.then(|| {
            format!(
                "every instance of release {} ({}) failed its last {streak} health checks",
                release.number,
                results.len()
            )
        })
    }
}

/// An earlier release of this app whose instances still run warm and pass a health check now.
async fn warm_fallback(engine: &Arc<Engine>, key: &AppEnv, target: u64) -> Option<u64> {
    let warm: Vec<(String, crate::engine::RuntimeInstance)> = engine
        .runtime(key)
        .instances
        .into_iter()
        .filter(|(_, instance)| instance.release != target && instance.phase == InstancePhase::Warm)
        .collect();
    let previous = warm.iter().map(|(_, instance)| instance.release).max()?;
    let release = spec::load_release(engine, key, previous).ok()?;
    for (_, instance) in warm.iter().filter(|(_, i)| i.release == previous) {
        let service = release.resolved.config.service(&instance.service)?;
        if !spec::check_instance(&release, service, instance.port).await? {
            return None;
        }
    }
    Some(previous)
}

/// The bounds of a release's `[analysis]`.
fn bounds(release: &spec::LoadedRelease) -> Bounds {
    let analysis = &release.resolved.config.analysis;
    Bounds {
        min_requests: analysis.min_requests,
        max_error_rate: analysis.max_error_rate.get(),
        max_p99_us: analysis
            .max_p99
            .map(|p99| u64::try_from(p99.as_std().as_micros()).unwrap_or(u64::MAX)),
        baseline_margin: analysis.baseline_margin.get(),
        latency_margin: analysis.latency_margin,
    }
}

/// Waits out one canary step under analysis: its pause with enough requests, or `promote`.
/// Below `min_requests` the step does not pass; after a bound it holds for `promote` or `abort`.
async fn canary_step(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    watch: &mut Watch,
    pause: Option<Duration>,
    interval: Duration,
) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let hold_after = pause.map(|pause| pause + (pause * 2).max(Duration::from_secs(60)));
    let mut said_holding = false;
    loop {
        for signal in engine.take_signals(&deployment.id) {
            match signal {
                Signal::Abort { by } => return Err(format!("the canary was aborted by {by}")),
                Signal::Promote { by } => {
                    record(
                        engine,
                        deployment,
                        "deployment.promoted",
                        format!("{by} promoted the canary"),
                    );
                    return Ok(());
                }
                Signal::Approve { .. } => {}
            }
        }
        let verdict = watch.evaluate(engine, deployment).await;
        if let Verdict::Fail { reason } = verdict {
            return Err(format!("the canary analysis failed: {reason}"));
        }
        let enough = watch.last_requests >= watch.bounds.min_requests;
        match (pause, hold_after) {
            (Some(pause), _) if started.elapsed() >= pause && enough => return Ok(()),
            (Some(_), Some(hold_after)) if started.elapsed() >= hold_after && !said_holding => {
                said_holding = true;
                record(
                    engine,
                    deployment,
                    "deployment.holding",
                    format!(
                        "only {} of {} requests reached the canary: holding for `rollway promote` or `rollway abort`",
                        watch.last_requests, watch.bounds.min_requests
                    ),
                );
            }
            (None, _) if !said_holding => {
                said_holding = true;
                record(
                    engine,
                    deployment,
                    "deployment.holding",
                    "this step has no pause: waiting for `rollway promote` (or `rollway abort`)"
                        .to_owned(),
                );
            }
            _ => {}
        }
        engine.wait_for_signal(interval).await;
    }
}

/// One analysis run: the target's and its baselines' counters over the sliding window
/// (`analysis.window`), so good traffic long ago cannot outweigh bad traffic now.
struct Watch {
    key: AppEnv,
    target: u64,
    baselines: Vec<u64>,
    bounds: Bounds,
    window: Duration,
    /// Counters read at the start and at each evaluation, oldest first; the front is what the
    /// current counters are compared with. Invariant: never empty; only the front is older than
    /// `window`.
    history: std::collections::VecDeque<(
        tokio::time::Instant,
        std::collections::BTreeMap<String, Reading>,
    )>,
    /// Requests the target answered in the window at the last evaluation.
    last_requests: u64,
}

impl Watch {
    async fn start(
        engine: &Engine,
        key: &AppEnv,
        target: u64,
        baselines: Vec<u64>,
        bounds: Bounds,
        window: Duration,
    ) -> Watch {
        let start = read_samples(engine).await;
        Watch {
            key: key.clone(),
            target,
            baselines,
            bounds,
            window,
            history: std::collections::VecDeque::from([(tokio::time::Instant::now(), start)]),
            last_requests: 0,
        }
    }

    /// Samples over the window, judged; every verdict is an event with its figures.
    async fn evaluate(&mut self, engine: &Engine, deployment: &Deployment) -> Verdict {
        let now = read_samples(engine).await;
        let at = tokio::time::Instant::now();
        // The base is the newest reading at least `window` old (the start until there is one).
        while self
            .history
            .get(1)
            .is_some_and(|(read_at, _)| at.duration_since(*read_at) >= self.window)
        {
            self.history.pop_front();
        }
        let base = self
            .history
            .front()
            .map(|(_, base)| base.clone())
            .unwrap_or_default();
        self.history.push_back((at, now.clone()));
        let since = |release: u64| -> Reading {
            let name = crate::engine::release_id(&self.key.0, &self.key.1, release);
            let current = now.get(&name).cloned().unwrap_or_default();
            let start = base.get(&name).cloned().unwrap_or_default();
            current.minus(&start)
        };
        let target_reading = since(self.target);
        let target = target_reading.sample();
        let baseline = (!self.baselines.is_empty()).then(|| {
            self.baselines
                .iter()
                .map(|release| since(*release))
                .fold(Reading::default(), |sum, reading| sum.plus(&reading))
                .sample()
        });
        self.last_requests = target.requests;
        let verdict = analysis::evaluate(target, baseline, &self.bounds);
        if let Ok(mut counters) = engine.counters.lock() {
            *counters
                .verdicts
                .entry((
                    self.key.0.clone(),
                    self.key.1.clone(),
                    verdict.name().to_owned(),
                ))
                .or_default() += 1;
        }
        let figures = serde_json::json!({ "release": self.target, "sample": target, "baseline": baseline, "verdict": verdict });
        engine.record(NewEvent {
            app: Some(self.key.0.clone()),
            environment: Some(self.key.1.clone()),
            deployment_id: Some(deployment.id.clone()),
            kind: "analysis.verdict".to_owned(),
            message: format!(
                "release {}: {verdict} ({} requests, {} 5xx, p99 {}ms)",
                self.target,
                target.requests,
                target.errors,
                target.p99_us / 1000
            ),
            data_json: figures.to_string(),
        });
        verdict
    }
}

/// Per-release counters from the proxy, keyed by the proxy's release name.
async fn read_samples(engine: &Engine) -> std::collections::BTreeMap<String, Reading> {
    let Ok(stats) = engine.proxy.client().stats().await else {
        return std::collections::BTreeMap::new();
    };
    stats
        .into_iter()
        .map(|release| {
            let classes = &release.requests;
            let requests = classes.informational
                + classes.success
                + classes.redirection
                + classes.client_error
                + classes.server_error;
            let reading = Reading {
                requests,
                errors: classes.server_error,
                buckets: release.latency.buckets.clone(),
            };
            (release.release.clone(), reading)
        })
        .collect()
}

/// One release's counters at one moment (or the difference of two moments): requests, 5xx and
/// the latency histogram, so the p99 is over the same requests as the error rate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Reading {
    requests: u64,
    errors: u64,
    /// Cumulative counts per bucket, `(upper bound in µs, count)`.
    buckets: Vec<(u64, u64)>,
}

impl Reading {
    fn minus(&self, earlier: &Reading) -> Reading {
        Reading {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            buckets: self
                .buckets
                .iter()
                .map(|(bound, count)| {
                    let before = earlier
                        .buckets
                        .iter()
                        .find(|(other, _)| other == bound)
                        .map_or(0, |(_, count)| *count);
                    (*bound, count.saturating_sub(before))
                })
                .collect(),
        }
    }

    fn plus(&self, other: &Reading) -> Reading {
        let buckets = if self.buckets.is_empty() {
            other.buckets.clone()
        } else {
            self.buckets
                .iter()
                .map(|(bound, count)| {
                    let more = other
                        .buckets
                        .iter()
                        .find(|(candidate, _)| candidate == bound)
                        .map_or(0, |(_, count)| *count);
                    (*bound, count + more)
                })
                .collect()
        };
        Reading {
            requests: self.requests + other.requests,
            errors: self.errors + other.errors,
            buckets,
        }
    }

    /// The sample analysis judges: the p99 is the bound of the bucket holding the 99th percentile.
    fn sample(&self) -> Sample {
        let latency_count = self.buckets.last().map_or(0, |(_, count)| *count);
        let rank = (latency_count as f64 * 0.99).ceil() as u64;
        let p99_us = self
            .buckets
            .iter()
            .find(|(_, count)| *count >= rank && rank > 0)
            .map_or(0, |(bound, _)| *bound);
        Sample {
            requests: self.requests,
            errors: self.errors,
            p99_us,
            latency_count,
        }
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
    let engine_for_alive = engine.clone();
    let alive_id = instance_id.to_owned();
    let alive = move || match engine_for_alive.drivers.status(&alive_id) {
        driver::InstanceStatus::Running { restarts: 0, .. } => Ok(()),
        driver::InstanceStatus::Running { .. } => Err(InstanceDown::Crashed {
            instance: alive_id.clone(),
        }),
        driver::InstanceStatus::Restarting { last_exit, .. }
        | driver::InstanceStatus::Stopped { last_exit } => Err(InstanceDown::Exited {
            instance: alive_id.clone(),
            code: last_exit.map_or_else(|| "unknown".to_owned(), |code| code.to_string()),
        }),
        driver::InstanceStatus::Unknown => Err(InstanceDown::NotRunning {
            instance: alive_id.clone(),
        }),
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
                protocol: service.protocol,
            };
            let addr = std::net::SocketAddr::from(([127, 0, 0, 1], instance.port));
            if let Err(error) = health::gate(addr, &check, alive).await {
                let reason = crate::report::chain(&error);
                return Err(with_log_tail(engine, instance_id, reason));
            }
        }
        None => {
            // A worker has no health path: it must at least stay up for a moment.
            let alive = alive;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = alive() {
                let reason = crate::report::chain(&error);
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
    let rolling = deployment.strategy == Strategy::Rolling && !data.previous_weights.is_empty();
    // A first deploy has nothing to compare a canary with: it takes traffic in one switch.
    let canary = deployment.strategy == Strategy::Canary && !data.previous_weights.is_empty();
    let routes = spec::routes(&release.resolved);
    if canary {
        let steps = release.resolved.config.strategy.steps.clone();
        let baselines: Vec<u64> = data
            .previous_weights
            .iter()
            .map(|(release, _)| *release)
            .collect();
        let analysis = &release.resolved.config.analysis;
        let mut watch = Watch::start(
            engine,
            key,
            target,
            baselines,
            bounds(release),
            analysis.window.as_std(),
        )
        .await;
        let interval = analysis.interval.as_std();
        let n_steps = steps.len();
        for (idx, step) in steps.iter().enumerate() {
            let share = step.weight.get();
            let step_name = format!("canary step {}/{n_steps}: ", idx + 1);
            give_share(engine, deployment, key, &routes, data, share, &step_name).await?;
            if share >= 100 {
                break;
            }
            canary_step(
                engine,
                deployment,
                &mut watch,
                step.pause.map(|pause| pause.as_std()),
                interval,
            )
            .await?;
        }
    } else if rolling {
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
            give_share(engine, deployment, key, &routes, data, share, "").await?;
        }
    } else {
        give_share(engine, deployment, key, &routes, data, 100, "").await?;
    }
    // Only the release that served just before stays warm, for a rollback that is one switch;
    // older warm releases and superseded workers stop once the switch is recorded.
    let warm_until = now_ms() + i64::try_from(keep_warm.as_millis()).unwrap_or(i64::MAX);
    let previous: Vec<u64> = data
        .previous_weights
        .iter()
        .map(|(release, _)| *release)
        .collect();
    let routed: std::collections::BTreeSet<String> =
        routes.iter().map(|route| route.service.clone()).collect();
    let (warm, superseded) =
        after_switch(&engine.runtime(key).instances, target, &previous, &routed);
    for instance_id in warm {
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
        .map_err(|error| crate::report::chain(&error))?;
    let store = &engine.store;
    if let Some(from) = deployment.from_release.filter(|from| *from != target) {
        // The release a rollback leaves is not a rollback target itself.
        let outcome = if deployment.kind == DeploymentKind::Rollback {
            ReleaseOutcome::RolledBack
        } else {
            ReleaseOutcome::Superseded
        };
        let _ = store.set_release_outcome(&key.0, &key.1, from, outcome);
    }
    store
        .set_release_outcome(&key.0, &key.1, target, ReleaseOutcome::Live)
        .map_err(|error| crate::report::chain(&error))?;
    store
        .set_current(&key.0, &key.1, target)
        .map_err(|error| crate::report::chain(&error))?;
    if !superseded.is_empty() {
        record(
            engine,
            deployment,
            "deployment.stopping",
            format!(
                "stopping {} instance(s) of older releases and superseded workers: {}",
                superseded.len(),
                superseded.join(", ")
            ),
        );
        // Drained first: `stop_instances` takes them out of routing before the driver stops them.
        spec::stop_instances(engine, key, &superseded).await;
    }
    Ok(())
}

/// After a switch to `target`: which instances of other releases stay warm (the routed services
/// of the releases that served just before, `previous`) and which stop (everything else: older
/// warm releases, and workers, which would otherwise keep running jobs with the old code).
/// Instances still starting belong to no finished switch and are left alone.
pub fn after_switch(
    instances: &std::collections::BTreeMap<String, crate::engine::RuntimeInstance>,
    target: u64,
    previous: &[u64],
    routed: &std::collections::BTreeSet<String>,
) -> (Vec<String>, Vec<String>) {
    let mut warm = Vec::new();
    let mut stop = Vec::new();
    for (id, instance) in instances {
        if instance.release == target || instance.phase == InstancePhase::Starting {
            continue;
        }
        if previous.contains(&instance.release) && routed.contains(&instance.service) {
            if instance.phase == InstancePhase::Ready {
                warm.push(id.clone());
            }
        } else {
            stop.push(id.clone());
        }
    }
    (warm, stop)
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
    // The routes go back too: the release left may have routed other hosts, and a first
    // deploy undone routes nothing, so it claims no host.
    let previous_routes = match deployment.from_release {
        Some(from) => spec::load_release(engine, key, from)
            .map(|release| spec::routes(&release.resolved))
            .unwrap_or_else(|_| engine.runtime(key).routes),
        None => Vec::new(),
    };
    engine
        .change_routing(key, |runtime| {
            runtime.weights = data.previous_weights.clone();
            runtime.routes = previous_routes;
        })
        .await
        .map_err(|error| crate::report::chain(&error))?;
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
    if deployment.kind == DeploymentKind::Deploy {
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

/// Gives the target release `share` percent of traffic (the earlier releases keep the rest in
/// their proportions), tells the proxy, and records it. The one place a deploy moves traffic.
async fn give_share(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    routes: &[crate::engine::RouteInfo],
    data: &DeploymentData,
    share: u8,
    step_name: &str,
) -> Result<(), String> {
    let target = deployment.to_release;
    engine
        .change_routing(key, |runtime| {
            runtime.routes = routes.to_vec();
            runtime.weights = if share >= 100 {
                vec![(target, 100)]
            } else {
                scaled(&data.previous_weights, 100 - share, target, share)
            };
        })
        .await
        .map_err(|error| crate::report::chain(&error))?;
    record(
        engine,
        deployment,
        "deployment.weights",
        format!("{step_name}release {target} takes {share}% of traffic"),
    );
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
            if data.started.contains(&instance_id) {
                continue;
            }
            spec::set_phase(
                engine,
                &key,
                &instance_id,
                InstancePhase::Warm,
                Some(warm_until),
            );
        }
        // The workers it started again stop: a release out of traffic runs no jobs.
        spec::stop_instances(engine, &key, &data.started).await;
    } else {
        // Instances of the target that never made it into `started` (a start that failed half-way,
        // a kill -9 before the list was written) are stopped by id too: no ghost stays `starting`.
        let mut ids = data.started.clone();
        for (id, instance) in engine.runtime(&key).instances {
            if instance.release == deployment.to_release
                && instance.phase == InstancePhase::Starting
                && !ids.contains(&id)
            {
                ids.push(id);
            }
        }
        spec::stop_instances(engine, &key, &ids).await;
    }
    if deployment.kind == DeploymentKind::Deploy {
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
    let state = deployment.state;
    if state.is_terminal() {
        let message = match (&deployment.reason, state) {
            (Some(reason), State::Failed | State::RolledBack) => format!("{state}: {reason}"),
            _ => format!("{state}"),
        };
        let finished = DeploymentEvent::Finished {
            state,
            reason: deployment
                .reason
                .clone()
                .filter(|_| matches!(state, State::Failed | State::RolledBack)),
        };
        engine.record(
            NewEvent::for_deployment(&deployment, "deployment.finished", message)
                .with_data(&finished),
        );
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
    engine.record(NewEvent::for_deployment(deployment, kind, message));
}

/// A failure reason as it may be shown: it often quotes command or app output, so every secret
/// value is hidden first; if the secrets cannot be opened, the reason is withheld.
fn scrub_reason(engine: &Engine, deployment: &Deployment, reason: &str) -> String {
    match spec::scrubber(engine, deployment) {
        Ok(scrubber) => scrubber.scrub(reason).into_owned(),
        Err(error) => format!("the step failed, and its reason is withheld: {error}"),
    }
}

/// A new instance that stopped running while it was starting.
#[derive(Debug, thiserror::Error)]
enum InstanceDown {
    #[error("instance `{instance}` crashed while starting")]
    Crashed { instance: String },
    #[error("instance `{instance}` exited with code {code} while starting")]
    Exited {
        instance: String,
        /// The exit code, or `unknown`.
        code: String,
    },
    #[error("instance `{instance}` is not running")]
    NotRunning { instance: String },
}

/// A failure reason with the last lines the instance printed, which usually say why.
fn with_log_tail(engine: &Engine, instance_id: &str, reason: String) -> String {
    let reason = if reason.contains(instance_id) {
        reason
    } else {
        format!("instance `{instance_id}`: {reason}")
    };
    match engine.drivers.logs(instance_id, 5) {
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

#[cfg(test)]
mod tests;
