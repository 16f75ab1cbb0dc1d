//! The executor: runs one deployment through the state machine (`deploy::state`). It only runs
//! effects: the machine says where an input leads and what to do there; the executor writes each
//! transition to the store before it runs the new position's effects, so a restarted agent knows
//! where it was, and turns what happens (a step's end, a signal from the store, a verdict) into
//! the machine's next input.
//!
//! Deploys and rollbacks take this one path; a rollback is a deployment to an earlier release
//! (warm when its instances still run, cold otherwise).

use client::wire::ReleaseNumber;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use client::wire::{DeploymentEvent, DeploymentKind, Figures};

use crate::analysis::{self, Bounds, Sample, Verdict};

use crate::deploy::release::{self, LoadedRelease};
use crate::deploy::state::{self, At, CanaryStep, Effect, Facts, Input, Plan, State, Traffic};
use crate::deploy::{fault, prepare, spec};
use crate::engine::{
    AppEnv, Engine, InstancePhase, RouteInfo, Signal, Subject, now_ms, progress_event,
};
use crate::health;
use crate::store::{Advance, Deployment, ReleaseOutcome};

/// Executor-private facts about a deployment, persisted with it (`data_json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeploymentData {
    /// `warm` or `cold` (kept beside `decided` for records written before it).
    pub plan: Option<String>,
    /// Traffic before the deployment, to go back to.
    pub previous_weights: Vec<(ReleaseNumber, u8)>,
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
    /// What the deployment does, decided once in `Pending` (`state::plan`).
    #[serde(default)]
    pub decided: Option<Plan>,
    /// The canary step the deployment is at while `Shifting`.
    #[serde(default)]
    pub step: usize,
}

impl DeploymentData {
    fn warm(&self) -> bool {
        self.decided
            .as_ref()
            .map_or(self.plan.as_deref() == Some("warm"), |plan| plan.warm)
    }
}

/// Why the executor could not go on, or a position's work failed: its text with every cause
/// (`report::chain`) is the reason a deployment records and the user sees.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Spec(Box<spec::SpecError>),
    #[error(transparent)]
    Release(#[from] release::ReleaseError),
    #[error(transparent)]
    Prepare(#[from] prepare::PrepareError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Routing(#[from] crate::proxy_link::LinkError),
    #[error(transparent)]
    Certificates(#[from] crate::certs::CertError),
    #[error("no deployment `{id}`")]
    NoDeployment { id: String },
    #[error("cannot write the deployment's data")]
    Data(#[source] serde_json::Error),
    #[error("the release was not loaded")]
    NotLoaded,
    #[error("the plan runs {0}, but the release has none")]
    Unplanned(&'static str),
    /// The release command failed after the database was backed up: how to restore it.
    #[error(
        "{source}\nthe database was backed up just before; to restore it: `rollway backups restore {backup} --app {app} --env {environment}`"
    )]
    AfterBackup {
        backup: String,
        app: String,
        environment: String,
        #[source]
        source: Box<spec::SpecError>,
    },
    #[error("instance `{instance}` disappeared")]
    Disappeared { instance: String },
    #[error("service `{service}` is not in release {release}")]
    NoService {
        service: String,
        release: ReleaseNumber,
    },
    /// An instance failed its health gate or stopped while starting: the reason with its causes
    /// and the last lines the instance printed.
    #[error("{0}")]
    Instance(String),
}

impl From<spec::SpecError> for StepError {
    fn from(error: spec::SpecError) -> StepError {
        StepError::Spec(Box::new(error))
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

/// What one run of a deployment keeps between positions: its target release, loaded once
/// (record, resolved manifest, secrets), and the analysis of a canary, which spans its steps.
#[derive(Default)]
struct Context {
    release: Option<LoadedRelease>,
    watch: Option<Watch>,
}

async fn drive(engine: &Arc<Engine>, id: &str) -> Result<(), StepError> {
    let mut context = Context::default();
    loop {
        let deployment = engine
            .store
            .deployment(id)?
            .ok_or_else(|| StepError::NoDeployment { id: id.to_owned() })?;
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
        let at = At {
            state: current,
            step: if current == State::Shifting {
                data.step
            } else {
                0
            },
        };
        // A deployment recorded before plans were persisted gets its plan from its release.
        if data.decided.is_none()
            && current != State::Pending
            && let Ok(release) = loaded(engine, &deployment, &mut context.release)
        {
            let facts = facts(&deployment, release, data.warm(), &data.previous_weights);
            data.decided = Some(state::plan(&facts));
        }
        // A signal written before this position's work (or before a restart) is acted on first.
        let plan = data.decided.clone().unwrap_or_default();
        let (input, handled) = match signal_input(engine, id, at, &plan)? {
            Some((input, signal)) => (input, Some(signal)),
            None => {
                let mut run = Run {
                    engine,
                    deployment: &deployment,
                    data: &mut data,
                    context: &mut context,
                };
                run.position(at).await
            }
        };
        let plan = data.decided.clone().unwrap_or_default();
        let transition = state::advance(at, &input, &plan);
        if transition.is_ignored(at) {
            if let Some(signal) = handled {
                let _ = engine.store.handle_signal(signal);
            }
            continue;
        }
        for effect in transition
            .effects
            .iter()
            .filter(|effect| effect.before_write())
        {
            match effect {
                // Undo what a failed step started, before the failure is written down.
                Effect::Undo => undo(engine, &deployment, &data).await,
                Effect::Approved { by } => record(
                    engine,
                    &deployment,
                    DeploymentEvent::Approved {
                        by: by.clone(),
                        release: deployment.to_release,
                    },
                ),
                Effect::Promoted { by } => record(
                    engine,
                    &deployment,
                    DeploymentEvent::Promoted { by: by.clone() },
                ),
                _ => {}
            }
        }
        let reason = transition
            .reason
            .as_deref()
            .map(|reason| scrub_reason(engine, &deployment, reason));
        if let Some(reason) = &reason {
            record(
                engine,
                &deployment,
                DeploymentEvent::StepFailed {
                    state: current,
                    reason: reason.clone(),
                },
            );
        }
        let next = transition.next;
        if next.state != current {
            fault::crash_point(next.state);
        }
        data.step = next.step;
        let data_json = serde_json::to_string(&data).map_err(StepError::Data)?;
        // The transition, its event and the signal it acts on are one transaction: a kill -9
        // cannot keep one without the others.
        let event = (next.state != current).then(|| {
            progress_event(
                Subject::deployment(&deployment),
                &DeploymentEvent::State {
                    from: current,
                    to: next.state,
                },
            )
        });
        let (_, event) = engine.store.advance(Advance {
            id,
            from: current,
            to: next.state,
            reason: reason.as_deref(),
            data_json: &data_json,
            event,
            handled,
        })?;
        if let Some(event) = event {
            engine.publish(&event);
        }
    }
}

/// The first pending signal of deployment `id` that does something at `at`; those that do
/// nothing there are marked handled.
fn signal_input(
    engine: &Engine,
    id: &str,
    at: At,
    plan: &Plan,
) -> Result<Option<(Input, i64)>, StepError> {
    let pending = engine.store.pending_signals(id)?;
    for pending in pending {
        let input = match pending.signal.clone() {
            Signal::Abort { by } => Input::Abort { by },
            Signal::Approve { by } => Input::Approve { by },
            Signal::Promote { by } => Input::Promote { by },
        };
        if state::advance(at, &input, plan).is_ignored(at) {
            let _ = engine.store.handle_signal(pending.id);
            continue;
        }
        fault::crash_on_signal(&pending.signal);
        return Ok(Some((input, pending.id)));
    }
    Ok(None)
}

/// The deployment's target release, loaded on first use and kept for the rest of the run.
fn loaded<'a>(
    engine: &Engine,
    deployment: &Deployment,
    slot: &'a mut Option<LoadedRelease>,
) -> Result<&'a mut LoadedRelease, StepError> {
    if slot.is_none() {
        let key = AppEnv::new(deployment.app.clone(), deployment.environment.clone());
        let release = release::load_release(engine, &key, deployment.to_release)?;
        *slot = Some(release);
    }
    slot.as_mut().ok_or(StepError::NotLoaded)
}

/// What the plan is decided from: the deployment, its release's manifest, and what runs now.
fn facts(
    deployment: &Deployment,
    release: &LoadedRelease,
    warm: bool,
    previous_weights: &[(ReleaseNumber, u8)],
) -> Facts {
    let config = &release.resolved.config;
    let phase = config.release.as_ref();
    Facts {
        kind: deployment.kind,
        strategy: deployment.strategy,
        warm,
        serving: !previous_weights.is_empty(),
        approval: release.resolved.approval,
        backup: phase.is_some_and(|phase| phase.backup.is_some()),
        release_command: phase.is_some_and(|phase| phase.command.is_some()),
        smoke: phase.is_some_and(|phase| phase.smoke.is_some()),
        observe: !config.analysis.observe.as_std().is_zero(),
        canary_steps: config
            .strategy
            .steps
            .iter()
            .map(|step| CanaryStep {
                share: step.weight.get(),
                pause_ms: step
                    .pause
                    .map(|pause| u64::try_from(pause.as_std().as_millis()).unwrap_or(u64::MAX)),
            })
            .collect(),
    }
}

/// One position's work for one deployment.
struct Run<'a> {
    engine: &'a Arc<Engine>,
    deployment: &'a Deployment,
    data: &'a mut DeploymentData,
    context: &'a mut Context,
}

impl Run<'_> {
    fn key(&self) -> AppEnv {
        AppEnv::new(
            self.deployment.app.clone(),
            self.deployment.environment.clone(),
        )
    }

    fn plan(&self) -> Plan {
        self.data.decided.clone().unwrap_or_default()
    }

    /// Runs the effects of position `at` and waits, if its last effect waits, for what ends it:
    /// the machine's next input, and the signal it comes from.
    async fn position(&mut self, at: At) -> (Input, Option<i64>) {
        let effects = state::entry(at, &self.plan());
        for effect in &effects {
            if let Err(error) = self.effect(effect).await {
                return (Input::Failed(crate::report::chain(&error)), None);
            }
        }
        match effects.last() {
            Some(effect) if effect.waits() => self.wait(at, effect).await,
            _ => (Input::Done, None),
        }
    }

    /// One effect of a position. `Err` carries the reason shown to the user.
    async fn effect(&mut self, effect: &Effect) -> Result<(), StepError> {
        let engine = self.engine;
        let deployment = self.deployment;
        let key = self.key();
        let target = deployment.to_release;
        let release = loaded(engine, deployment, &mut self.context.release)?;
        let data = &mut *self.data;
        match effect {
            Effect::Inspect => {
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
                let plan = state::plan(&facts(deployment, release, warm, &runtime.weights));
                data.plan = Some(if warm { "warm" } else { "cold" }.to_owned());
                data.previous_weights = runtime.weights.clone();
                data.approval = plan.approval;
                data.observe = plan.observe;
                data.decided = Some(plan);
                Ok(())
            }
            Effect::Prepare => {
                // Certificates first: a refused or broken one fails the deploy before anything is
                // built or moved.
                crate::certs::ensure_for_release(engine, &key, &release.resolved, &release.secrets)
                    .await?;
                prepare::prepare(engine, deployment, release).await?;
                Ok(spec::prepare_images(engine, deployment, release).await?)
            }
            Effect::AskApproval => {
                record(
                    engine,
                    deployment,
                    DeploymentEvent::AwaitingApproval {
                        release: deployment.to_release,
                        deployment: deployment.id.clone(),
                        started_by: deployment.created_by.clone(),
                    },
                );
                Ok(())
            }
            Effect::BackUp => {
                let variable = release
                    .resolved
                    .config
                    .release
                    .as_ref()
                    .and_then(|phase| phase.backup.clone())
                    .ok_or(StepError::Unplanned("a database to back up"))?;
                data.backup_id =
                    spec::backup_before_release(engine, deployment, release, &variable).await?;
                Ok(())
            }
            Effect::RunReleaseCommand => {
                let command = release
                    .resolved
                    .config
                    .release
                    .as_ref()
                    .and_then(|phase| phase.command.clone())
                    .ok_or(StepError::Unplanned("a release command"))?;
                spec::run_release_command(engine, deployment, release, &command)
                    .await
                    .map_err(|source| match &data.backup_id {
                        Some(id) => StepError::AfterBackup {
                            backup: id.clone(),
                            app: deployment.app.clone(),
                            environment: deployment.environment.clone(),
                            source: Box::new(source),
                        },
                        None => StepError::from(source),
                    })
            }
            Effect::StartInstances => {
                let rolling = matches!(
                    data.decided.as_ref().map(|plan| &plan.traffic),
                    Some(Traffic::Rolling)
                );
                for (service, index) in spec::wanted_instances(&release.resolved) {
                    // Rolling keeps capacity: only the first new instance starts now, the rest
                    // one by one while traffic moves.
                    if rolling && index > 0 {
                        continue;
                    }
                    let instance_id =
                        spec::start_instance(engine, &key, release, &service, index).await?;
                    data.started.push(instance_id);
                }
                Ok(())
            }
            Effect::Verify => {
                if data.warm() {
                    // A warm rollback finds its routed instances running, not its workers.
                    for (service, index) in spec::wanted_instances(&release.resolved) {
                        let instance_id = spec::instance_id(&key, target, &service, index);
                        if !engine.runtime(&key).instances.contains_key(&instance_id) {
                            let started =
                                spec::start_instance(engine, &key, release, &service, index)
                                    .await?;
                            data.started.push(started);
                        }
                    }
                }
                for instance_id in target_instances(engine, &key, target) {
                    verify_instance(engine, &key, release, &instance_id).await?;
                }
                Ok(())
            }
            Effect::Smoke => {
                // The smoke command talks to the new instances directly, before any user does.
                let smoke = release
                    .resolved
                    .config
                    .release
                    .as_ref()
                    .and_then(|phase| phase.smoke.clone())
                    .ok_or(StepError::Unplanned("a smoke command"))?;
                let ids = target_instances(engine, &key, target);
                Ok(spec::run_smoke(engine, deployment, release, &smoke, &ids).await?)
            }
            Effect::Switch => {
                let routes = spec::routes(&release.resolved);
                give_share(engine, deployment, &key, &routes, data, 100, None).await
            }
            Effect::RollOut => {
                let routes = spec::routes(&release.resolved);
                let wanted = spec::wanted_instances(&release.resolved);
                let n_wanted = wanted.len().max(1);
                for (done, (service, index)) in wanted.into_iter().enumerate() {
                    let instance_id = spec::instance_id(&key, target, &service, index);
                    if !engine.runtime(&key).instances.contains_key(&instance_id) {
                        let started =
                            spec::start_instance(engine, &key, release, &service, index).await?;
                        data.started.push(started);
                    }
                    verify_instance(engine, &key, release, &instance_id).await?;
                    let share = u8::try_from(100 * (done + 1) / n_wanted).unwrap_or(100);
                    give_share(engine, deployment, &key, &routes, data, share, None).await?;
                }
                Ok(())
            }
            Effect::CanaryStep { step, share } => {
                let n_steps = release.resolved.config.strategy.steps.len();
                if self.context.watch.is_none() {
                    let baselines: Vec<ReleaseNumber> = data
                        .previous_weights
                        .iter()
                        .map(|(release, _)| *release)
                        .collect();
                    let watch = Watch::start(
                        engine,
                        &key,
                        target,
                        baselines,
                        bounds(release),
                        release.resolved.config.analysis.window.as_std(),
                    )
                    .await;
                    self.context.watch = Some(watch);
                }
                let routes = spec::routes(&release.resolved);
                let number = u32::try_from(step + 1).unwrap_or(u32::MAX);
                let of = u32::try_from(n_steps).unwrap_or(u32::MAX);
                give_share(
                    engine,
                    deployment,
                    &key,
                    &routes,
                    data,
                    *share,
                    Some((number, of)),
                )
                .await
            }
            Effect::CompleteSwitch => {
                complete_switch(engine, deployment, &key, release, data).await
            }
            Effect::Observe => {
                let analysis = &release.resolved.config.analysis;
                record(
                    engine,
                    deployment,
                    DeploymentEvent::Observing {
                        release: deployment.to_release,
                        window: analysis.observe.to_string(),
                    },
                );
                Ok(())
            }
            Effect::RollBack => roll_back(engine, deployment, &key, data).await,
            // Run before the transition is written (`drive`).
            Effect::Undo | Effect::Approved { .. } | Effect::Promoted { .. } => Ok(()),
        }
    }

    /// Waits after a waiting effect for the input that ends the position: a signal that applies
    /// (read from the store), a verdict that changes something, or the position's own end (the
    /// canary step's pause with enough requests, the observation window).
    async fn wait(&mut self, at: At, effect: &Effect) -> (Input, Option<i64>) {
        let engine = self.engine;
        let deployment = self.deployment;
        let key = self.key();
        let plan = self.plan();
        let Some(release) = self.context.release.as_ref() else {
            return (Input::Failed("the release was not loaded".to_owned()), None);
        };
        let analysis = &release.resolved.config.analysis;
        let interval = analysis.interval.as_std();
        let started = tokio::time::Instant::now();
        let pause = match (effect, &plan.traffic) {
            (Effect::CanaryStep { step, .. }, Traffic::Canary { steps }) => steps
                .get(*step)
                .and_then(|step| step.pause_ms)
                .map(Duration::from_millis),
            _ => None,
        };
        // Below `min_requests` a canary step does not pass; after a bound it holds for `promote`
        // or `abort`.
        let hold_after = pause.map(|pause| pause + (pause * 2).max(Duration::from_secs(60)));
        let mut said_holding = false;
        let observe_until = started + analysis.observe.as_std();
        let mut observed = match effect {
            Effect::Observe => Some((
                Watch::start(
                    engine,
                    &key,
                    deployment.to_release,
                    Vec::new(),
                    bounds(release),
                    analysis.window.as_std(),
                )
                .await,
                ReleaseHealth::default(),
            )),
            _ => None,
        };
        loop {
            match signal_input(engine, &deployment.id, at, &plan) {
                Ok(Some((input, signal))) => return (input, Some(signal)),
                Ok(None) => {}
                Err(error) => return (Input::Failed(crate::report::chain(&error)), None),
            }
            match effect {
                Effect::AskApproval => {
                    if engine.shutdown.is_cancelled() {
                        let reason = "the agent stopped while the deployment waited for approval";
                        return (Input::Failed(reason.to_owned()), None);
                    }
                    engine.wait_for_signal(Duration::from_secs(1)).await;
                }
                Effect::CanaryStep { .. } => {
                    let Some(watch) = self.context.watch.as_mut() else {
                        return (Input::Failed("the canary has no analysis".to_owned()), None);
                    };
                    let verdict = watch.evaluate(engine, deployment).await;
                    let input = Input::Verdict(verdict);
                    if !state::advance(at, &input, &plan).is_ignored(at) {
                        return (input, None);
                    }
                    let enough = watch.last_requests >= watch.bounds.min_requests;
                    match (pause, hold_after) {
                        (Some(pause), _) if started.elapsed() >= pause && enough => {
                            return (Input::Done, None);
                        }
                        (Some(_), Some(hold_after))
                            if started.elapsed() >= hold_after && !said_holding =>
                        {
                            said_holding = true;
                            record(
                                engine,
                                deployment,
                                DeploymentEvent::Holding {
                                    requests: Some(watch.last_requests),
                                    min_requests: Some(watch.bounds.min_requests),
                                },
                            );
                        }
                        (None, _) if !said_holding => {
                            said_holding = true;
                            record(
                                engine,
                                deployment,
                                DeploymentEvent::Holding {
                                    requests: None,
                                    min_requests: None,
                                },
                            );
                        }
                        _ => {}
                    }
                    engine.wait_for_signal(interval).await;
                }
                Effect::Observe => {
                    let Some((watch, health)) = observed.as_mut() else {
                        return (Input::Done, None);
                    };
                    let verdict = watch.evaluate(engine, deployment).await;
                    let input = Input::Verdict(verdict.clone());
                    if !state::advance(at, &input, &plan).is_ignored(at) {
                        return (input, None);
                    }
                    // A release that stops answering its health checks altogether (frozen,
                    // deadlocked) sends no errors to count: the checks are the evidence.
                    if let Some(dead) = health.all_failing(engine, &key, release).await {
                        match warm_fallback(engine, &key, deployment.to_release).await {
                            Some(previous) => {
                                return (
                                    Input::Failed(format!(
                                        "{dead} after the switch, while release {previous} is warm and healthy"
                                    )),
                                    None,
                                );
                            }
                            None if !health.said_no_fallback => {
                                health.said_no_fallback = true;
                                record(
                                    engine,
                                    deployment,
                                    DeploymentEvent::NoFallback { reason: dead },
                                );
                            }
                            None => {}
                        }
                    }
                    if tokio::time::Instant::now() >= observe_until {
                        if matches!(verdict, Verdict::Inconclusive { .. }) {
                            record(
                                engine,
                                deployment,
                                DeploymentEvent::Inconclusive { verdict },
                            );
                        }
                        return (Input::Done, None);
                    }
                    engine.wait_for_signal(interval).await;
                }
                _ => return (Input::Done, None),
            }
        }
    }
}

/// The ids of the target release's instances in the runtime view.
fn target_instances(engine: &Engine, key: &AppEnv, target: ReleaseNumber) -> Vec<String> {
    engine
        .runtime(key)
        .instances
        .iter()
        .filter(|(_, instance)| instance.release == target)
        .map(|(id, _)| id.clone())
        .collect()
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
                let passed = spec::check_instance(release, service, instance.addr())
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
async fn warm_fallback(
    engine: &Arc<Engine>,
    key: &AppEnv,
    target: ReleaseNumber,
) -> Option<ReleaseNumber> {
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
        if !spec::check_instance(&release, service, instance.addr()).await? {
            return None;
        }
    }
    Some(previous)
}

/// The bounds of a release's `[analysis]`.
pub(crate) fn bounds(release: &spec::LoadedRelease) -> Bounds {
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

/// One analysis run: the target's and its baselines' counters over the sliding window
/// (`analysis.window`), so good traffic long ago cannot outweigh bad traffic now.
struct Watch {
    key: AppEnv,
    target: ReleaseNumber,
    baselines: Vec<ReleaseNumber>,
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
        target: ReleaseNumber,
        baselines: Vec<ReleaseNumber>,
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
        let since = |release: ReleaseNumber| -> Reading {
            let name = crate::engine::release_id(&self.key.app, &self.key.environment, release);
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
                    self.key.app.clone(),
                    self.key.environment.clone(),
                    verdict.name().to_owned(),
                ))
                .or_default() += 1;
        }
        let figures = |sample: Sample| Figures {
            requests: sample.requests,
            errors: sample.errors,
            p99_us: sample.p99_us,
            latency_count: sample.latency_count,
        };
        record(
            engine,
            deployment,
            DeploymentEvent::Verdict {
                release: self.target,
                verdict: verdict.clone(),
                sample: figures(target),
                baseline: baseline.map(figures),
                bounds: Some(analysis::applied_bounds(
                    &target,
                    baseline.as_ref(),
                    &self.bounds,
                )),
            },
        );
        verdict
    }
}

/// Per-release counters from the proxy, keyed by the proxy's release name.
pub(crate) async fn read_samples(engine: &Engine) -> std::collections::BTreeMap<String, Reading> {
    let Ok(stats) = engine.proxy.stats().await else {
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
pub(crate) struct Reading {
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    /// Cumulative counts per bucket, `(upper bound in µs, count)`.
    pub(crate) buckets: Vec<(u64, u64)>,
}

impl Reading {
    pub(crate) fn minus(&self, earlier: &Reading) -> Reading {
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

    pub(crate) fn plus(&self, other: &Reading) -> Reading {
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
    pub(crate) fn sample(&self) -> Sample {
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
) -> Result<(), StepError> {
    let Some(instance) = engine.runtime(key).instances.get(instance_id).cloned() else {
        return Err(StepError::Disappeared {
            instance: instance_id.to_owned(),
        });
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
        .ok_or_else(|| StepError::NoService {
            service: instance.service.clone(),
            release: release.number,
        })?;
    let engine_for_alive = engine.clone();
    let alive_id = instance_id.to_owned();
    // A new instance must not have restarted at all; a warm one must not restart during this
    // check (it may have been restarted while warm: a swarm task replaced by Swarm, a crash the
    // driver recovered from, and it passed its gate before).
    let restarts_before = match engine.drivers.status(instance_id) {
        driver::InstanceStatus::Running { restarts, .. } if warm => restarts,
        _ => 0,
    };
    let alive = move || match engine_for_alive.drivers.status(&alive_id) {
        driver::InstanceStatus::Running { restarts, .. } if restarts <= restarts_before => Ok(()),
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
            let addr = instance.addr();
            if let Err(error) = health::gate(addr, &check, alive).await {
                let reason = crate::report::chain(&error);
                return Err(StepError::Instance(with_log_tail(
                    engine,
                    instance_id,
                    reason,
                )));
            }
        }
        None if let Some(check) = &service.health_command => {
            let pace = health::Pace {
                interval: check.interval.as_std(),
                healthy: if warm { 1 } else { check.healthy },
                start_timeout: check.start_timeout.as_std(),
            };
            let gated = health::gate_by(&pace, alive, || {
                crate::oneoff::check(engine, key, release, service, instance_id, check)
            })
            .await;
            if let Err(error) = gated {
                let reason = crate::report::chain(&error);
                return Err(StepError::Instance(with_log_tail(
                    engine,
                    instance_id,
                    reason,
                )));
            }
        }
        None => {
            // A worker has no health check: it must at least stay up for a moment.
            let alive = alive;
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Err(error) = alive() {
                let reason = crate::report::chain(&error);
                return Err(StepError::Instance(with_log_tail(
                    engine,
                    instance_id,
                    reason,
                )));
            }
        }
    }
    // It passed its gate: from now on it may serve, at the priority of the serving instances.
    engine.drivers.promote(instance_id);
    spec::set_phase(engine, key, instance_id, InstancePhase::Ready, None);
    engine.record_progress(
        Subject::app(key),
        &DeploymentEvent::InstanceHealthy {
            instance: instance_id.to_owned(),
        },
    );
    Ok(())
}

/// After the target took all traffic: only the release that served just before stays warm, for
/// a rollback that is one switch; older warm releases and superseded workers stop; the target is
/// recorded live and current.
async fn complete_switch(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    release: &LoadedRelease,
    data: &DeploymentData,
) -> Result<(), StepError> {
    let target = deployment.to_release;
    let keep_warm = release.resolved.config.strategy.keep_warm.as_std();
    let routes = spec::routes(&release.resolved);
    let warm_until = now_ms() + i64::try_from(keep_warm.as_millis()).unwrap_or(i64::MAX);
    let previous: Vec<ReleaseNumber> = data
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
    engine.push_routes().await?;
    let store = &engine.store;
    if let Some(from) = deployment.from_release.filter(|from| *from != target) {
        // The release a rollback leaves is not a rollback target itself.
        let outcome = if deployment.kind == DeploymentKind::Rollback {
            ReleaseOutcome::RolledBack
        } else {
            ReleaseOutcome::Superseded
        };
        let _ = store.set_release_outcome(&key.app, &key.environment, from, outcome);
    }
    store.set_release_outcome(&key.app, &key.environment, target, ReleaseOutcome::Live)?;
    store.set_current(&key.app, &key.environment, target)?;
    // A destroyed environment runs again from its first release that goes live.
    store.clear_destroyed(&key.app, &key.environment)?;
    if !superseded.is_empty() {
        record(
            engine,
            deployment,
            DeploymentEvent::Stopping {
                instances: superseded.clone(),
            },
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
    target: ReleaseNumber,
    previous: &[ReleaseNumber],
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
) -> Result<(), StepError> {
    let previous: Vec<ReleaseNumber> = data
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
        Some(from) => release::load_release(engine, key, from)
            .map(|release| spec::routes(&release.resolved))
            .unwrap_or_else(|_| engine.runtime(key).routes),
        None => Vec::new(),
    };
    move_traffic(
        engine,
        deployment,
        key,
        previous_routes,
        data.previous_weights.clone(),
        |weights| DeploymentEvent::TrafficBack { weights },
    )
    .await?;
    if let Some(from) = deployment.from_release {
        let _ = engine.store.set_current(&key.app, &key.environment, from);
        let _ = engine.store.set_release_outcome(
            &key.app,
            &key.environment,
            from,
            ReleaseOutcome::Live,
        );
    }
    if deployment.kind == DeploymentKind::Deploy {
        let _ = engine.store.set_release_outcome(
            &key.app,
            &key.environment,
            deployment.to_release,
            ReleaseOutcome::RolledBack,
        );
    }
    spec::stop_instances(engine, key, &data.started).await;
    Ok(())
}

/// Gives the target release `share` percent of traffic (the earlier releases keep the rest in
/// their proportions).
async fn give_share(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    routes: &[RouteInfo],
    data: &DeploymentData,
    share: u8,
    step: Option<(u32, u32)>,
) -> Result<(), StepError> {
    let target = deployment.to_release;
    let weights = if share >= 100 {
        vec![(target, 100)]
    } else {
        scaled(&data.previous_weights, 100 - share, target, share)
    };
    move_traffic(
        engine,
        deployment,
        key,
        routes.to_vec(),
        weights,
        |weights| DeploymentEvent::Weights {
            release: target,
            share,
            step: step.map(|(step, _)| step),
            of: step.map(|(_, of)| of),
            weights,
        },
    )
    .await
}

/// Sets the routes and weights of `key`, tells the proxy, and records it. The one place a
/// deployment moves traffic, forward (every step of a switch, a roll-out, a canary) or back.
async fn move_traffic(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    key: &AppEnv,
    routes: Vec<RouteInfo>,
    weights: Vec<(ReleaseNumber, u8)>,
    event: impl FnOnce(Vec<(ReleaseNumber, u8)>) -> DeploymentEvent,
) -> Result<(), StepError> {
    engine
        .change_routing(key, |runtime| {
            runtime.routes = routes;
            runtime.weights = weights.clone();
        })
        .await?;
    record(engine, deployment, event(weights));
    Ok(())
}

/// Takes back what a deployment that never moved traffic started.
pub async fn undo(engine: &Arc<Engine>, deployment: &Deployment, data: &DeploymentData) {
    let key = AppEnv::new(deployment.app.clone(), deployment.environment.clone());
    if data.warm() {
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
            &key.app,
            &key.environment,
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
        let finished = DeploymentEvent::Finished {
            state,
            reason: deployment
                .reason
                .clone()
                .filter(|_| matches!(state, State::Failed | State::RolledBack)),
        };
        record(engine, &deployment, finished);
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

/// Records a progress event of `deployment` (`Engine::record_progress`).
fn record(engine: &Engine, deployment: &Deployment, event: DeploymentEvent) {
    engine.record_progress(Subject::deployment(deployment), &event);
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
fn scaled(
    previous: &[(ReleaseNumber, u8)],
    keep: u8,
    target: ReleaseNumber,
    share: u8,
) -> Vec<(ReleaseNumber, u8)> {
    let total: u32 = previous
        .iter()
        .map(|(_, weight)| u32::from(*weight))
        .sum::<u32>()
        .max(1);
    let mut weights: Vec<(ReleaseNumber, u8)> = previous
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
