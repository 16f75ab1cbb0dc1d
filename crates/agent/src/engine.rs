//! The engine: the agent's shared state (store, driver, proxy link, artifacts) and the in-memory
//! view of what serves where, from which the proxy's desired routing state is computed.
//!
//! Invariant: the store is the source of truth; `Runtime` is rebuilt from it on start. The proxy
//! only ever receives a whole desired state computed here (`desired_state`), never piecemeal edits.
//! Invariant: deployments change routes and weights only through `change_routing`, which undoes a
//! change the proxy refused, so the runtime view never keeps routing the proxy did not accept (the
//! other writers are start-up, from the store, and a restore's traffic hold in `backup`).

use client::wire::ReleaseNumber;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use client::wire::{DeploymentId, EventView};
use proxy::{DesiredInstance, DesiredPool, DesiredRoute, DesiredState};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::artifact::ArtifactStore;
use crate::proxy_link::ProxyLink;
use crate::store::{Event, NewEvent, Store};

/// An app in one of its environments: the key of what the agent runs and routes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AppEnv {
    pub app: String,
    pub environment: String,
}

impl AppEnv {
    pub fn new(app: impl Into<String>, environment: impl Into<String>) -> AppEnv {
        AppEnv {
            app: app.into(),
            environment: environment.into(),
        }
    }
}

/// Where an instance is in its life, as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstancePhase {
    /// Started, not yet through the health gate.
    Starting,
    /// Passed the health gate; routable.
    Ready,
    /// Out of traffic but kept running so a rollback is a switch.
    Warm,
}

impl InstancePhase {
    pub fn as_str(self) -> &'static str {
        match self {
            InstancePhase::Starting => "starting",
            InstancePhase::Ready => "ready",
            InstancePhase::Warm => "warm",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "starting" => Some(InstancePhase::Starting),
            "ready" => Some(InstancePhase::Ready),
            "warm" => Some(InstancePhase::Warm),
            _ => None,
        }
    }
}

impl RuntimeInstance {
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(self.host, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct RuntimeInstance {
    pub release: ReleaseNumber,
    pub service: String,
    pub port: u16,
    /// Where it answers with `port`: loopback, or the node of its swarm task.
    pub host: std::net::IpAddr,
    pub phase: InstancePhase,
    /// Unix ms after which a warm instance is stopped.
    pub warm_until: Option<i64>,
    /// Failed its continuous health checks: out of routing until it passes again.
    pub unhealthy: bool,
}

/// The route of an app in one environment, from its current release's manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub service: String,
    pub hosts: Vec<String>,
    pub paths: Vec<String>,
    pub drain: Duration,
    /// `[routes.X] slow_start`: how long a new release takes to get its whole share (proxy `slow_start`).
    pub slow_start: Duration,
    /// Limits, timeouts and upstream protocol from `[routes.X]` and `[services.X] protocol`.
    pub settings: proxy::RouteSettings,
    /// Rate limit and allow list from `[routes.X]`, and the health path maintenance lets through.
    pub edge: crate::edge::RouteEdgeInfo,
}

#[derive(Debug, Clone, Default)]
pub struct Runtime {
    pub routes: Vec<RouteInfo>,
    /// Traffic per release in percent; empty when nothing serves.
    /// Invariant: weights of a non-empty list sum to 100.
    pub weights: Vec<(ReleaseNumber, u8)>,
    pub instances: BTreeMap<String, RuntimeInstance>,
}

/// Folders under the state directory.
#[derive(Debug, Clone)]
pub struct Paths {
    pub state_dir: PathBuf,
    /// What apps may touch, outside the state directory: see [`crate::isolation`].
    pub apps: PathBuf,
    pub instances: PathBuf,
    pub deploy_logs: PathBuf,
}

impl Paths {
    pub fn new(state_dir: PathBuf) -> Paths {
        Paths {
            apps: crate::isolation::apps_dir(&state_dir),
            instances: state_dir.join("instances"),
            deploy_logs: state_dir.join("deployments"),
            state_dir,
        }
    }

    /// The app environment's folder (`<apps>/<app>/<environment>`, owned by its user).
    pub fn app_dir(&self, app: &str, environment: &str) -> PathBuf {
        self.apps.join(app).join(environment)
    }

    /// The unpacked and built artifact a release runs in, in its app environment's folder. Keyed
    /// by the artifact and the build command, not the release: a config-only deploy reuses the
    /// folder, with no rebuild.
    pub fn build_dir(
        &self,
        app: &str,
        environment: &str,
        artifact: &str,
        build_command: Option<&str>,
    ) -> PathBuf {
        use sha2::Digest as _;
        let mut hasher = sha2::Sha256::new();
        hasher.update(artifact.as_bytes());
        hasher.update([0]);
        hasher.update(build_command.unwrap_or("").as_bytes());
        let key = hex::encode(hasher.finalize());
        self.app_dir(app, environment).join("builds").join(format!(
            "{}-{}",
            artifact.get(..12).unwrap_or(artifact),
            &key[..12]
        ))
    }
}

pub struct Engine {
    pub store: Arc<Store>,
    pub drivers: crate::drivers::Drivers,
    pub proxy: ProxyLink,
    pub proxy_addr: SocketAddr,
    pub artifacts: ArtifactStore,
    pub master_key: crate::secrets::MasterKey,
    /// How app processes are confined on this host (detected at start).
    pub isolation: driver::Isolation,
    /// Where the proxy and the apps run (cgroups), decided when the agent started.
    pub placement: driver::cgroup::Placement,
    pub paths: Paths,
    /// Every recorded event, as it is recorded: live followers (`events --follow`, a deployment's
    /// stream) and the alerts task subscribe; one that falls behind reads the store from its last id.
    pub events: broadcast::Sender<EventView>,
    /// std Mutex: held for map edits only, never across an await.
    pub runtimes: Mutex<BTreeMap<AppEnv, Runtime>>,
    /// Serialises pushes to the proxy so a stale desired state never overtakes a newer one.
    pub proxy_push: tokio::sync::Mutex<()>,
    pub shutdown: CancellationToken,
    /// Wakes executors waiting for a signal (the signals themselves are in the store).
    pub signalled: tokio::sync::Notify,
    /// In-memory counters for `/metrics`. std Mutex: increments only.
    pub counters: Mutex<crate::metrics::Counters>,
    /// Certificates for the HTTPS listener: settings, pending ACME challenges.
    pub certs: crate::certs::Certs,
    /// The API certificate's fingerprint when the API serves TLS (`GET /v1/agent` shows it).
    pub api_fingerprint: Option<client::pin::Fingerprint>,
    /// The API's certificate chain in PEM when the API serves TLS (`GET /v1/agent/certificate`).
    pub api_certificate: Option<String>,
    /// Maintenance mode and pause per environment (`crate::edge`), loaded from the store at start.
    /// std Mutex: map reads and edits only, never held across an await.
    pub edge: Mutex<BTreeMap<AppEnv, crate::edge::EnvEdge>>,
    /// Cron runs in progress (`crate::cron`).
    pub cron: crate::cron::CronRuns,
    /// The registry the agent runs for the cluster (`crate::registry`).
    pub registry: crate::registry::Registry,
}

/// What a person tells a running deployment (kept in the store until acted on).
pub use crate::store::Signal;

/// Whom a progress event is about: an app environment and, for a deployment's own events, the
/// deployment.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub app: &'a str,
    pub environment: &'a str,
    pub deployment_id: Option<&'a str>,
}

impl<'a> Subject<'a> {
    pub fn deployment(deployment: &'a crate::store::Deployment) -> Subject<'a> {
        Subject {
            app: &deployment.app,
            environment: &deployment.environment,
            deployment_id: Some(&deployment.id),
        }
    }

    pub fn app(key: &'a AppEnv) -> Subject<'a> {
        Subject {
            app: &key.app,
            environment: &key.environment,
            deployment_id: None,
        }
    }
}

/// The event [`Engine::record_progress`] records (also written inside a store transaction).
pub fn progress_event(subject: Subject<'_>, event: &client::wire::DeploymentEvent) -> NewEvent {
    NewEvent {
        app: Some(subject.app.to_owned()),
        environment: Some(subject.environment.to_owned()),
        deployment_id: subject.deployment_id.map(DeploymentId::from),
        kind: event.kind().to_owned(),
        message: event.to_string(),
        data_json: "{}".to_owned(),
    }
    .with_data(event)
}

impl Engine {
    /// Writes an event to the audit log and tells live followers. The single place events are made.
    pub fn record(&self, event: NewEvent) {
        match self.store.record_event(event) {
            Ok(stored) => self.publish(&stored),
            Err(error) => tracing::error!(message = "Cannot record an event.", %error),
        }
    }

    /// Records a deployment's progress: its typed payload (`client::wire::DeploymentEvent`),
    /// the kind that payload has, and the payload in words for people beside it. Every progress
    /// event of a deployment is recorded here.
    pub fn record_progress(&self, subject: Subject<'_>, event: &client::wire::DeploymentEvent) {
        self.record(progress_event(subject, event));
    }

    /// Tells the trace log and live followers about an event already in the store.
    pub fn publish(&self, stored: &Event) {
        let view = stored.view();
        tracing::info!(
            message = "Event.",
            kind = %view.kind,
            deployment = view.deployment_id.as_deref().unwrap_or(""),
            text = %view.message
        );
        let _ = self.events.send(view);
    }

    pub fn with_runtime<T>(&self, key: &AppEnv, edit: impl FnOnce(&mut Runtime) -> T) -> T {
        let mut runtimes = self
            .runtimes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        edit(runtimes.entry(key.clone()).or_default())
    }

    pub fn runtime(&self, key: &AppEnv) -> Runtime {
        self.with_runtime(key, |runtime| runtime.clone())
    }

    /// The whole routing state the proxy should have now.
    pub fn desired_state(&self) -> DesiredState {
        let runtimes = self
            .runtimes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let edges = self.env_edges();
        let now_ms = now_ms();
        let mut routes = Vec::new();
        for (
            AppEnv {
                app,
                environment: env,
            },
            runtime,
        ) in runtimes.iter()
        {
            for route in &runtime.routes {
                let pools = runtime
                    .weights
                    .iter()
                    .map(|(release, weight)| DesiredPool {
                        release: release_id(app, env, *release),
                        weight: *weight,
                        instances: runtime
                            .instances
                            .iter()
                            .filter(|(_, instance)| {
                                instance.release == *release
                                    && instance.service == route.service
                                    && instance.phase == InstancePhase::Ready
                                    && !instance.unhealthy
                            })
                            .map(|(id, instance)| DesiredInstance {
                                id: id.clone(),
                                addr: instance.addr(),
                                ready: true,
                            })
                            .collect(),
                    })
                    .collect();
                let mut desired_route = DesiredRoute::new(format!("{app}/{env}/{}", route.service));
                desired_route.hosts = route.hosts.clone();
                desired_route.paths = route.paths.clone();
                desired_route.drain_timeout_ms =
                    u64::try_from(route.drain.as_millis()).unwrap_or(u64::MAX);
                desired_route.set_settings(route.settings);
                crate::edge::apply(
                    &mut desired_route,
                    route,
                    edges.get(&AppEnv::new(app.clone(), env.clone())),
                    now_ms,
                );
                // A new release's instances get a few GETs of the health path from every proxy worker
                // before they are weighted in on a serving route (proxy `warm`): the path the agent's
                // own health checks already use, so it is safe to call.
                desired_route.warm_path = route.edge.health_path.clone();
                desired_route.slow_start_ms =
                    u64::try_from(route.slow_start.as_millis()).unwrap_or(u64::MAX);
                desired_route.pools = pools;
                routes.push(desired_route);
            }
        }
        DesiredState { routes }
    }

    /// Records a signal for a running deployment in the store, then wakes its executor: a signal
    /// the API accepted survives an agent restart.
    pub fn signal(&self, deployment: &str, signal: Signal) -> Result<(), crate::store::StoreError> {
        self.store.add_signal(deployment, &signal)?;
        self.signalled.notify_waiters();
        Ok(())
    }

    /// The pending signals of `deployment`, marked handled (for tests and tools; the executor
    /// marks each handled with the transition it causes).
    pub fn take_signals(&self, deployment: &str) -> Vec<Signal> {
        self.store.take_signals(deployment).unwrap_or_default()
    }

    /// Sleeps `at_most`, or less when a signal arrives.
    pub async fn wait_for_signal(&self, at_most: Duration) {
        let _ = tokio::time::timeout(at_most, self.signalled.notified()).await;
    }

    /// Changes the routes and weights of `key` and sends the proxy the whole new state. When the
    /// proxy does not take it, the change is undone: the runtime view never holds routing the
    /// proxy refused, so one app's refused change cannot fail every later push of every app.
    pub async fn change_routing(
        &self,
        key: &AppEnv,
        edit: impl FnOnce(&mut Runtime),
    ) -> Result<(), crate::proxy_link::LinkError> {
        let _serial = self.proxy_push.lock().await;
        let (routes, weights) = self.with_runtime(key, |runtime| {
            let before = (runtime.routes.clone(), runtime.weights.clone());
            edit(runtime);
            before
        });
        let desired = self.desired_state();
        let pushed = self.proxy.put_state(&desired).await;
        if pushed.is_err() {
            self.with_runtime(key, |runtime| {
                runtime.routes = routes;
                runtime.weights = weights;
            });
        }
        pushed
    }

    /// Sends the current desired state to the proxy.
    pub async fn push_routes(&self) -> Result<(), crate::proxy_link::LinkError> {
        let _serial = self.proxy_push.lock().await;
        let desired = self.desired_state();
        self.proxy.put_state(&desired).await?;
        // A proxy that restarted or took over needs the certificates too (they are never on disk).
        if let Err(error) = crate::certs::push(self).await {
            tracing::error!(message = "Cannot give the proxy its certificates.", error = %crate::report::chain(&error));
        }
        Ok(())
    }
}

/// The proxy's name for a release: `app/env@N`, so metrics tell releases apart.
pub fn release_id(app: &str, env: &str, release: ReleaseNumber) -> String {
    format!("{app}/{env}@{release}")
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

#[cfg(test)]
mod tests;
