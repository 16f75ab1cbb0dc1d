//! The declarative routing the agent wants (`DesiredState`), and `apply`, which moves a live `Proxy` to it
//! through the proxy's own control calls: routes, new instances, readiness, weights, and drains of
//! whatever the desired state no longer lists.
//!
//! It is the only writer of a proxy run as its own process, but it adds no routing path of its own: every
//! change goes through `Proxy`'s methods, and the request path never sees this module.
//!
//! Wire format (the body of `PUT /v1/state` and the `state` of `routes.json`):
//!
//! ```json
//! { "routes": [ { "name": "web", "hosts": ["demo.test"], "paths": ["/"], "drain_timeout_ms": 30000,
//!     "timeout_ms": 60000, "idle_timeout_ms": 60000, "max_body_bytes": 104857600,
//!     "max_header_fields": 500, "protocol": "http1",
//!     "pools": [ { "release": "demo@2", "weight": 100,
//!       "instances": [ { "id": "web-2-0", "addr": "127.0.0.1:4001", "ready": true } ] } ] } ] }
//! ```
//!
//! Compatibility: every field added after the first version has a serde default (a `routes.json` written
//! by an older proxy loads), and is left out when it holds its default (an older proxy, which refuses
//! unknown fields, still takes a state that uses none of the newer settings).
//!
//! Rules the agent can rely on:
//! - Applying the same state twice changes nothing (`ApplyReport::is_noop`).
//! - An instance that was live and is absent stops taking new requests at once; its in-flight requests
//!   finish (bounded by its route's `drain_timeout_ms`), then it is removed. The agent stops the process
//!   after that, never before.
//! - `ready` is one-way: once an instance took traffic, `ready: false` does not take it back (passive
//!   health does that for a failing instance); leaving the instance out drains it.
//! - An instance id is never reused for another route, release or address, nor while it drains.
//! - A pool with no instance is ignored (the proxy keeps a pool only while it has an instance).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::{RouteSettings, RouteTls, UpstreamProtocol};
use crate::control::{InstanceSpec, Proxy};
use crate::edge::{DesiredMaintenance, DesiredRateLimit};
use crate::error::ControlError;
use crate::ids::{InstanceId, InstanceState, ReleaseId, RouteName};
use crate::instance::InstanceLive;
use crate::routing::{RouteSpec, RoutingTable};
use crate::warm::WarmTarget;

/// Drain bound for the instances of a route the desired state no longer lists: the proxy does not
/// remember a route's own `drain_timeout_ms`. This is DESIGN's default drain. To drain a route with its
/// own bound, first apply it with no pools, then without the route.
pub const REMOVED_ROUTE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a retiring route waits without any change while all its instances are drained but still
/// listed, before it gives up (see `spawn_retire_route`).
const RETIRE_IDLE_BOUND: Duration = Duration::from_secs(10);

/// Everything the proxy should route; whatever is live and not listed here is drained and removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredState {
    pub routes: Vec<DesiredRoute>,
}

/// One route: which requests it takes and the release pools that answer them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRoute {
    /// Unique among routes; no whitespace.
    pub name: String,
    /// Host names matched exactly (case-insensitive, port ignored). Empty means any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`. Empty means `/`.
    #[serde(default)]
    pub paths: Vec<String>,
    /// How long an instance leaving this route may take to finish its in-flight requests before they
    /// are cut.
    #[serde(default = "default_drain_timeout_ms")]
    pub drain_timeout_ms: u64,
    /// Time to an answer's head (`RouteSettings::timeout`).
    #[serde(
        default = "default_timeout_ms",
        skip_serializing_if = "is_default_timeout_ms"
    )]
    pub timeout_ms: u64,
    /// Longest silence inside an answer body (`RouteSettings::idle_timeout`).
    #[serde(
        default = "default_idle_timeout_ms",
        skip_serializing_if = "is_default_idle_timeout_ms"
    )]
    pub idle_timeout_ms: u64,
    /// Largest request body (`RouteSettings::max_body_bytes`).
    #[serde(
        default = "default_max_body_bytes",
        skip_serializing_if = "is_default_max_body_bytes"
    )]
    pub max_body_bytes: u64,
    /// Most header fields in an answer (`RouteSettings::max_header_fields`).
    #[serde(
        default = "default_max_header_fields",
        skip_serializing_if = "is_default_max_header_fields"
    )]
    pub max_header_fields: usize,
    /// Protocol spoken to the instances.
    #[serde(default, skip_serializing_if = "is_default_protocol")]
    pub protocol: UpstreamProtocol,
    /// HTTPS policy (`RouteSettings::tls`).
    #[serde(default, skip_serializing_if = "RouteTls::is_default")]
    pub tls: RouteTls,
    /// Longest wait of an unsent request for a routable instance (`RouteSettings::hold`).
    #[serde(
        default = "default_hold_ms",
        skip_serializing_if = "is_default_hold_ms"
    )]
    pub hold_ms: u64,
    /// Client networks allowed (`RouteEdge::allow`); empty means every client.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Requests per client address (`RouteEdge::rate_limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<DesiredRateLimit>,
    /// Maintenance mode (`RouteEdge::maintenance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<DesiredMaintenance>,
    /// End of a pause, in milliseconds since the Unix epoch (`RouteEdge::paused_until`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused_until_unix_ms: Option<u64>,
    /// A path (such as the instances' health path) that a new instance is sent a few GETs of, from every
    /// worker, before its release is weighted in on this route while it serves (`crate::warm`); none: new
    /// instances are weighted in cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warm_path: Option<String>,
    /// Slow start (`crate::slow_start`): over this long, in 10 steps, a release weighted in while the
    /// route serves takes its share gradually, and the releases it replaces keep the rest (their
    /// instances routed) until the end. 0: weights apply at once.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub slow_start_ms: u64,
    #[serde(default)]
    pub pools: Vec<DesiredPool>,
}

/// The instances of one release on a route, and the release's share of new requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredPool {
    /// Unique within the route; not empty.
    pub release: String,
    /// 0 to 100, relative to the other pools of the route.
    pub weight: u8,
    #[serde(default)]
    pub instances: Vec<DesiredInstance>,
}

/// One instance; its id is unique across the whole state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredInstance {
    pub id: String,
    pub addr: SocketAddr,
    /// Whether it may take new requests (the agent's health gate passed).
    #[serde(default)]
    pub ready: bool,
}

/// What one `apply` changed. Background drains it started are listed, not awaited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyReport {
    /// Proxy routes created or whose hosts or path changed.
    pub routes_set: Vec<String>,
    /// Proxy instance ids added (not ready yet unless also in `marked_ready`).
    pub instances_added: Vec<String>,
    pub marked_ready: Vec<String>,
    /// `(route, release, weight)` for every weight that changed.
    pub weights_set: Vec<(String, String, u8)>,
    /// Instances that stopped taking new requests now; each is removed once drained.
    pub instances_draining: Vec<String>,
    /// Routes no longer desired; each is removed once its last instance is.
    pub routes_retiring: Vec<String>,
}

/// Why a desired state was refused. Nothing was changed when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("desired state is invalid: {}", join_problems(problems))]
    Invalid { problems: Vec<Problem> },
    #[error("proxy refused to {action}")]
    Control {
        action: String,
        #[source]
        source: ControlError,
    },
}

/// One thing wrong with a desired state, alone or compared with the live proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("route name `{route}` is empty or has whitespace")]
    BadRouteName { route: String },
    #[error("route `{route}` is listed twice")]
    DuplicateRoute { route: String },
    #[error("route `{route}`: path `{path}` must start with `/` and have no whitespace")]
    BadPath { route: String, path: String },
    #[error("route `{route}`: host `{host}` is empty or has whitespace")]
    BadHost { route: String, host: String },
    #[error("host `{host}` and path `{path}` are routed by both `{first}` and `{second}`")]
    RoutedTwice {
        host: String,
        path: String,
        first: String,
        second: String,
    },
    #[error("route `{route}`: release name is empty")]
    EmptyRelease { route: String },
    #[error("route `{route}`: release `{release}` has two pools")]
    DuplicatePool { route: String, release: String },
    #[error("route `{route}`: weight {weight} of release `{release}` is above 100")]
    WeightOutOfRange {
        route: String,
        release: String,
        weight: u8,
    },
    #[error("instance id `{instance}` is empty or has whitespace")]
    BadInstanceId { instance: String },
    #[error("instance `{instance}` is listed twice")]
    DuplicateInstance { instance: String },
    #[error(
        "instance `{instance}` is live on route `{live_route}`, release `{live_release}` at `{live_addr}`; an id is never reused for another one"
    )]
    InstanceChanged {
        instance: String,
        live_route: String,
        live_release: String,
        live_addr: SocketAddr,
    },
    #[error(
        "instance `{instance}` is draining; a drained instance cannot come back, give it a new id"
    )]
    InstanceDraining { instance: String },
    #[error("route `{route}`: {source}")]
    BadNetwork {
        route: String,
        #[source]
        source: crate::config::TrustedProxyParseError,
    },
    #[error(
        "route `{route}`: rate limit {requests} per {per_ms} ms with burst {burst} needs all three above 0"
    )]
    BadRateLimit {
        route: String,
        requests: u32,
        per_ms: u64,
        burst: u32,
    },
    #[error("route `{route}`: maintenance page is {bytes} bytes, more than the {limit} accepted")]
    MaintenancePageTooLarge {
        route: String,
        bytes: usize,
        limit: usize,
    },
}

impl DesiredState {
    /// Every problem of the state on its own (no proxy needed), in listing order.
    pub fn problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut route_names = BTreeSet::new();
        let mut instance_ids = BTreeSet::new();
        // (host or "" for any host, path) -> route that routes it.
        let mut routed: BTreeMap<(String, String), &str> = BTreeMap::new();
        for route in &self.routes {
            if !is_name(&route.name) {
                problems.push(Problem::BadRouteName {
                    route: route.name.clone(),
                });
            }
            if !route_names.insert(route.name.as_str()) {
                problems.push(Problem::DuplicateRoute {
                    route: route.name.clone(),
                });
            }
            for host in &route.hosts {
                if !is_name(host) {
                    problems.push(Problem::BadHost {
                        route: route.name.clone(),
                        host: host.clone(),
                    });
                }
            }
            let hosts: Vec<String> = if route.hosts.is_empty() {
                vec![String::new()]
            } else {
                route
                    .hosts
                    .iter()
                    .map(|host| crate::routing::normalise_host(host).into_owned())
                    .collect()
            };
            if let Some(path) = &route.warm_path
                && (!path.starts_with('/') || path.chars().any(char::is_whitespace))
            {
                problems.push(Problem::BadPath {
                    route: route.name.clone(),
                    path: path.clone(),
                });
            }
            for path in route.effective_paths() {
                if !path.starts_with('/') || path.chars().any(char::is_whitespace) {
                    problems.push(Problem::BadPath {
                        route: route.name.clone(),
                        path: path.to_owned(),
                    });
                }
                for host in &hosts {
                    let key = (host.clone(), normalise_path(path).to_owned());
                    if let Some(first) = routed.insert(key, &route.name) {
                        problems.push(Problem::RoutedTwice {
                            host: if host.is_empty() {
                                "*".into()
                            } else {
                                host.clone()
                            },
                            path: path.to_owned(),
                            first: first.to_owned(),
                            second: route.name.clone(),
                        });
                    }
                }
            }
            problems.extend(crate::edge::problems(route));
            let mut releases = BTreeSet::new();
            for pool in &route.pools {
                if pool.release.trim().is_empty() {
                    problems.push(Problem::EmptyRelease {
                        route: route.name.clone(),
                    });
                }
                if !releases.insert(pool.release.as_str()) {
                    problems.push(Problem::DuplicatePool {
                        route: route.name.clone(),
                        release: pool.release.clone(),
                    });
                }
                if pool.weight > 100 {
                    problems.push(Problem::WeightOutOfRange {
                        route: route.name.clone(),
                        release: pool.release.clone(),
                        weight: pool.weight,
                    });
                }
                for instance in &pool.instances {
                    if !is_name(&instance.id) {
                        problems.push(Problem::BadInstanceId {
                            instance: instance.id.clone(),
                        });
                    }
                    if !instance_ids.insert(instance.id.as_str()) {
                        problems.push(Problem::DuplicateInstance {
                            instance: instance.id.clone(),
                        });
                    }
                }
            }
        }
        problems
    }

    /// Every problem of the state, then every conflict with what `proxy` runs now. Empty means `apply`
    /// will accept it.
    pub fn check(&self, proxy: &Proxy) -> Vec<Problem> {
        let mut problems = self.problems();
        if !problems.is_empty() {
            return problems;
        }
        let live = Live::read(&proxy.routing_table());
        for route in plan(self) {
            for pool in &route.pools {
                for instance in &pool.instances {
                    let Some(live_instance) = live.instances.get(&instance.id) else {
                        continue;
                    };
                    if live_instance.route != route.spec.name
                        || live_instance.release != pool.release
                        || live_instance.addr != instance.addr
                    {
                        problems.push(Problem::InstanceChanged {
                            instance: instance.id.to_string(),
                            live_route: live_instance.route.to_string(),
                            live_release: live_instance.release.to_string(),
                            live_addr: live_instance.addr,
                        });
                    } else if matches!(
                        live_instance.state,
                        InstanceState::Draining | InstanceState::Drained
                    ) {
                        problems.push(Problem::InstanceDraining {
                            instance: instance.id.to_string(),
                        });
                    }
                }
            }
        }
        problems
    }
}

impl DesiredRoute {
    /// A route with every setting at its default and no pools.
    pub fn new(name: impl Into<String>) -> DesiredRoute {
        let settings = RouteSettings::default();
        DesiredRoute {
            name: name.into(),
            hosts: Vec::new(),
            paths: Vec::new(),
            drain_timeout_ms: default_drain_timeout_ms(),
            timeout_ms: millis(settings.timeout),
            idle_timeout_ms: millis(settings.idle_timeout),
            max_body_bytes: settings.max_body_bytes,
            max_header_fields: settings.max_header_fields,
            protocol: settings.protocol,
            tls: settings.tls,
            hold_ms: millis(settings.hold),
            allow: Vec::new(),
            rate_limit: None,
            maintenance: None,
            paused_until_unix_ms: None,
            warm_path: None,
            slow_start_ms: 0,
            pools: Vec::new(),
        }
    }

    /// The route's settings in the proxy's terms.
    pub fn settings(&self) -> RouteSettings {
        RouteSettings {
            timeout: Duration::from_millis(self.timeout_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            max_body_bytes: self.max_body_bytes,
            max_header_fields: self.max_header_fields,
            protocol: self.protocol,
            tls: self.tls,
            hold: Duration::from_millis(self.hold_ms),
        }
    }

    /// Sets every field that `settings` covers.
    pub fn set_settings(&mut self, settings: RouteSettings) {
        self.timeout_ms = millis(settings.timeout);
        self.idle_timeout_ms = millis(settings.idle_timeout);
        self.max_body_bytes = settings.max_body_bytes;
        self.max_header_fields = settings.max_header_fields;
        self.protocol = settings.protocol;
        self.tls = settings.tls;
        self.hold_ms = millis(settings.hold);
    }

    /// The path prefixes routed: `paths`, or `/` when it is empty.
    pub fn effective_paths(&self) -> Vec<&str> {
        if self.paths.is_empty() {
            vec!["/"]
        } else {
            self.paths.iter().map(String::as_str).collect()
        }
    }
}

impl ApplyReport {
    /// Whether the apply changed nothing (re-joining a route's retirement is not a change).
    pub fn is_noop(&self) -> bool {
        self.routes_set.is_empty()
            && self.instances_added.is_empty()
            && self.marked_ready.is_empty()
            && self.weights_set.is_empty()
            && self.instances_draining.is_empty()
    }
}

/// Moves `proxy` to `desired`, in the order that loses no request: routes first, then new instances,
/// readiness, weights, and only then drains of the instances no longer listed (their state changes before
/// this returns; the wait and the removal run in background tasks). Refuses the whole state, changing
/// nothing, when `check` finds a problem.
///
/// Must be called inside a tokio runtime. Callers serialise their calls (the control socket does); the
/// background tasks only ever remove what is no longer desired.
pub fn apply(proxy: &Proxy, desired: &DesiredState) -> Result<ApplyReport, ApplyError> {
    let problems = desired.check(proxy);
    if !problems.is_empty() {
        return Err(ApplyError::Invalid { problems });
    }
    let planned = plan(desired);
    let mut report = ApplyReport::default();

    let live = Live::read(&proxy.routing_table());
    for route in &planned {
        let unchanged = live
            .routes
            .get(&route.spec.name)
            .is_some_and(|(spec, _)| *spec == route.spec);
        if !unchanged {
            proxy.set_route(route.spec.clone());
            report.routes_set.push(route.spec.name.to_string());
        }
    }
    for route in &planned {
        for pool in &route.pools {
            for instance in &pool.instances {
                if live.instances.contains_key(&instance.id) {
                    continue;
                }
                proxy
                    .add_instance(InstanceSpec {
                        id: instance.id.clone(),
                        route: route.spec.name.clone(),
                        release: pool.release.clone(),
                        addr: instance.addr,
                    })
                    .map_err(|source| ApplyError::Control {
                        action: format!("add instance `{}`", instance.id),
                        source,
                    })?;
                report.instances_added.push(instance.id.to_string());
            }
        }
    }

    // Read again: adding instances created pools (with a default weight) and `Starting` instances.
    let live = Live::read(&proxy.routing_table());
    for route in &planned {
        for pool in &route.pools {
            for instance in &pool.instances {
                let starting = live
                    .instances
                    .get(&instance.id)
                    .is_some_and(|live_instance| live_instance.state == InstanceState::Starting);
                if instance.ready && starting {
                    proxy
                        .mark_ready(&instance.id)
                        .map_err(|source| ApplyError::Control {
                            action: format!("mark instance `{}` ready", instance.id),
                            source,
                        })?;
                    report.marked_ready.push(instance.id.to_string());
                }
            }
        }
    }
    for route in &planned {
        let live_weights = live
            .routes
            .get(&route.spec.name)
            .map(|(_, weights)| weights.as_slice())
            .unwrap_or_default();
        let changes: Vec<(ReleaseId, u8)> = route
            .pools
            .iter()
            .filter(|pool| !pool.instances.is_empty())
            .filter(|pool| {
                !live_weights
                    .iter()
                    .any(|(release, weight)| *release == pool.release && *weight == pool.weight)
            })
            .map(|pool| (pool.release.clone(), pool.weight))
            .collect();
        if changes.is_empty() {
            continue;
        }
        proxy
            .set_weights(&route.spec.name, &changes)
            .map_err(|source| ApplyError::Control {
                action: format!("set weights on route `{}`", route.spec.name),
                source,
            })?;
        for (release, weight) in changes {
            report
                .weights_set
                .push((route.spec.name.to_string(), release.to_string(), weight));
        }
    }

    // Only now do leaving instances stop taking requests: their replacements are ready and weighted.
    let desired_instances: BTreeSet<&InstanceId> = planned
        .iter()
        .flat_map(|route| route.pools.iter())
        .flat_map(|pool| pool.instances.iter().map(|instance| &instance.id))
        .collect();
    let drain_timeouts: HashMap<&RouteName, Duration> = planned
        .iter()
        .map(|route| (&route.spec.name, route.drain_timeout))
        .collect();
    for (id, live_instance) in &live.instances {
        if desired_instances.contains(id)
            || !matches!(
                live_instance.state,
                InstanceState::Starting | InstanceState::Ready
            )
        {
            continue;
        }
        let timeout = drain_timeouts
            .get(&live_instance.route)
            .copied()
            .unwrap_or(REMOVED_ROUTE_DRAIN_TIMEOUT);
        spawn_drain_then_remove(proxy, id, timeout);
        report.instances_draining.push(id.to_string());
    }
    for name in live.routes.keys() {
        if drain_timeouts.contains_key(name) {
            continue;
        }
        spawn_retire_route(proxy, name);
        report.routes_retiring.push(name.to_string());
    }
    if !report.is_noop() {
        tracing::info!(
            message = "Desired routing applied.",
            n_routes_set = report.routes_set.len(),
            n_instances_added = report.instances_added.len(),
            n_marked_ready = report.marked_ready.len(),
            n_weights_set = report.weights_set.len(),
            n_instances_draining = report.instances_draining.len(),
            n_routes_retiring = report.routes_retiring.len(),
        );
    }
    Ok(report)
}

/// The desired route name behind a proxy route or instance name (see `plan`).
pub(crate) fn desired_name(proxy_name: &str) -> &str {
    proxy_name
        .split_once(' ')
        .map_or(proxy_name, |(name, _)| name)
}

/// A desired route expressed in the proxy's terms.
///
/// The proxy's routes have one path prefix each, so a desired route with several paths becomes one proxy
/// route per path, named `{route} {path}`, whose instances are named `{instance} {path}` (names and paths
/// have no whitespace, so the split is unambiguous). With one path the names are kept as they are.
#[derive(Debug)]
struct PlannedRoute {
    spec: RouteSpec,
    drain_timeout: Duration,
    warm_path: Option<String>,
    pools: Vec<PlannedPool>,
}

#[derive(Debug)]
struct PlannedPool {
    release: ReleaseId,
    weight: u8,
    instances: Vec<PlannedInstance>,
}

#[derive(Debug)]
struct PlannedInstance {
    id: InstanceId,
    addr: SocketAddr,
    ready: bool,
}

/// What the proxy runs now, read from one snapshot.
#[derive(Debug, Default)]
struct Live {
    // Route -> (spec, weight per pool).
    routes: BTreeMap<RouteName, (RouteSpec, Vec<(ReleaseId, u8)>)>,
    instances: BTreeMap<InstanceId, LiveInstance>,
}

#[derive(Debug)]
struct LiveInstance {
    route: RouteName,
    release: ReleaseId,
    addr: SocketAddr,
    state: InstanceState,
}

impl Live {
    fn read(table: &RoutingTable) -> Live {
        let mut live = Live::default();
        for route in table.routes() {
            let weights = route
                .pools()
                .iter()
                .map(|pool| (pool.release().clone(), pool.weight()))
                .collect();
            live.routes
                .insert(route.name().clone(), (route.spec().clone(), weights));
            for pool in route.pools() {
                for instance in pool.instances() {
                    live.instances.insert(
                        instance.id().clone(),
                        LiveInstance {
                            route: route.name().clone(),
                            release: instance.release().clone(),
                            addr: instance.addr(),
                            state: instance.state(),
                        },
                    );
                }
            }
        }
        live
    }
}

fn plan(desired: &DesiredState) -> Vec<PlannedRoute> {
    let mut planned = Vec::new();
    for route in &desired.routes {
        let paths = route.effective_paths();
        let split = paths.len() > 1;
        for path in paths {
            let qualify = |name: &str| {
                if split {
                    format!("{name} {path}")
                } else {
                    name.to_owned()
                }
            };
            planned.push(PlannedRoute {
                spec: RouteSpec {
                    name: RouteName::new(qualify(&route.name)),
                    hosts: route.hosts.clone(),
                    path_prefix: path.to_owned(),
                    settings: route.settings(),
                    edge: route.edge(),
                },
                drain_timeout: Duration::from_millis(route.drain_timeout_ms),
                warm_path: route.warm_path.clone(),
                pools: route
                    .pools
                    .iter()
                    .map(|pool| PlannedPool {
                        release: ReleaseId::new(pool.release.as_str()),
                        weight: pool.weight,
                        instances: pool
                            .instances
                            .iter()
                            .map(|instance| PlannedInstance {
                                id: InstanceId::new(qualify(&instance.id)),
                                addr: instance.addr,
                                ready: instance.ready,
                            })
                            .collect(),
                    })
                    .collect(),
            });
        }
    }
    planned
}

/// Adds, not ready (they take no traffic yet), the instances that `apply` would weight in on a route
/// that serves now, so that `crate::warm` can open their connections before `apply` runs: the ready
/// instances `desired` lists that the proxy does not have yet, in a pool of weight above 0, on a live
/// route with a `warm_path`, an HTTP/1 or h2c protocol (a gRPC service answers no GET) and at least one
/// instance taking requests. `apply` then finds them added and carries on as it would have.
///
/// Call it only with a state that `check` accepted, serialised with `apply` (the control socket does);
/// answers the targets, each with the connections per worker it needs for its share of what is in
/// flight on its route now (`warm::connections_per_worker`).
pub(crate) fn add_to_warm(
    proxy: &Proxy,
    desired: &DesiredState,
) -> Result<Vec<WarmTarget>, ApplyError> {
    let table = proxy.routing_table();
    let live = Live::read(&table);
    let workers = proxy.worker_handles().len().max(1);
    let mut added = Vec::new();
    for route in plan(desired) {
        let Some(path) = &route.warm_path else {
            continue;
        };
        if route.spec.settings.protocol == UpstreamProtocol::Grpc {
            continue;
        }
        let Some(live_route) = table
            .routes()
            .iter()
            .find(|live_route| *live_route.name() == route.spec.name)
        else {
            continue;
        };
        let serving: Vec<_> = live_route
            .pools()
            .iter()
            .filter(|pool| pool.weight() > 0)
            .flat_map(|pool| pool.instances().iter())
            .filter(|instance| instance.is_available())
            .collect();
        if serving.is_empty() {
            continue;
        }
        let in_flight: usize = serving.iter().map(|instance| instance.in_flight()).sum();
        let new: Vec<_> = route
            .pools
            .iter()
            .filter(|pool| pool.weight > 0)
            .flat_map(|pool| pool.instances.iter().map(move |instance| (pool, instance)))
            .filter(|(_, instance)| instance.ready && !live.instances.contains_key(&instance.id))
            .collect();
        let connections_per_worker =
            crate::warm::connections_per_worker(in_flight, new.len(), workers);
        for (pool, instance) in new {
            proxy
                .add_instance(InstanceSpec {
                    id: instance.id.clone(),
                    route: route.spec.name.clone(),
                    release: pool.release.clone(),
                    addr: instance.addr,
                })
                .map_err(|source| ApplyError::Control {
                    action: format!("add instance `{}`", instance.id),
                    source,
                })?;
            added.push((
                instance.id.clone(),
                route.spec.settings,
                path.clone(),
                connections_per_worker,
            ));
        }
    }
    if added.is_empty() {
        return Ok(Vec::new());
    }
    // Read again: the added instances are in the snapshot now, not ready.
    let table = proxy.routing_table();
    let instances: HashMap<&InstanceId, &Arc<InstanceLive>> = table
        .routes()
        .iter()
        .flat_map(|route| route.pools().iter())
        .flat_map(|pool| pool.instances().iter())
        .map(|instance| (instance.id(), instance))
        .collect();
    Ok(added
        .into_iter()
        .filter_map(|(id, settings, path, connections_per_worker)| {
            instances.get(&id).map(|instance| WarmTarget {
                instance: Arc::clone(instance),
                settings,
                path,
                connections_per_worker,
            })
        })
        .collect())
}

/// Starts the drain now (the instance takes no new request from this call on), then removes the
/// instance in the background once it is drained or cut.
fn spawn_drain_then_remove(proxy: &Proxy, instance: &InstanceId, timeout: Duration) {
    let drained = proxy.drain(instance, timeout);
    let proxy = proxy.clone();
    let instance = instance.clone();
    tokio::spawn(async move {
        match drained.await {
            Ok(_outcome) => match proxy.remove(&instance) {
                // Another task (or a restart of the route) removed it first: nothing left to do.
                Ok(()) | Err(ControlError::UnknownInstance { .. }) => {}
                Err(error) => {
                    tracing::warn!(message = "Removing a drained instance failed.", instance = %instance, %error);
                }
            },
            Err(ControlError::UnknownInstance { .. }) => {}
            Err(error) => {
                tracing::warn!(message = "Draining an instance failed.", instance = %instance, %error);
            }
        }
    });
}

/// Removes a route that is no longer desired once its last instance is gone. Gives up if the route comes
/// back (an instance on it is starting or ready again) or is already gone.
fn spawn_retire_route(proxy: &Proxy, route: &RouteName) {
    let proxy = proxy.clone();
    let route = route.clone();
    tokio::spawn(async move {
        loop {
            // Subscribe before looking, so a change between the look and the wait still wakes us.
            let mut changed = proxy.inner().changed.subscribe();
            let table = proxy.routing_table();
            let Some(live_route) = table.routes().iter().find(|live| *live.name() == route) else {
                return;
            };
            let instances: Vec<(InstanceId, InstanceState)> = live_route
                .pools()
                .iter()
                .flat_map(|pool| pool.instances().iter())
                .map(|instance| (instance.id().clone(), instance.state()))
                .collect();
            drop(table);
            if instances
                .iter()
                .any(|(_, state)| matches!(state, InstanceState::Starting | InstanceState::Ready))
            {
                return;
            }
            if instances.is_empty() {
                match proxy.remove_route_if_empty(&route) {
                    Ok(true) => {
                        tracing::info!(message = "Route removed.", route = %route);
                        return;
                    }
                    // An instance arrived between the look and the removal: the route is wanted again.
                    Ok(false) | Err(ControlError::UnknownRoute { .. }) => return,
                    Err(error) => {
                        tracing::warn!(message = "Removing a route failed.", route = %route, %error);
                        return;
                    }
                }
            }
            // Every drain `apply` starts is bounded and ends in a removal, which publishes a new snapshot.
            // Instances drained but never removed (someone called `Proxy::drain` directly) would keep the
            // route forever: past a generous bound without any change, this task gives up.
            match tokio::time::timeout(RETIRE_IDLE_BOUND, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_closed)) => return,
                Err(_elapsed) => {
                    if instances
                        .iter()
                        .all(|(_, state)| *state == InstanceState::Drained)
                    {
                        tracing::warn!(message = "Route kept: its drained instances were never removed.", route = %route);
                        return;
                    }
                }
            }
        }
    });
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn default_timeout_ms() -> u64 {
    millis(RouteSettings::default().timeout)
}

fn is_default_timeout_ms(value: &u64) -> bool {
    *value == default_timeout_ms()
}

fn default_idle_timeout_ms() -> u64 {
    millis(RouteSettings::default().idle_timeout)
}

fn is_default_idle_timeout_ms(value: &u64) -> bool {
    *value == default_idle_timeout_ms()
}

fn default_max_body_bytes() -> u64 {
    RouteSettings::default().max_body_bytes
}

fn is_default_max_body_bytes(value: &u64) -> bool {
    *value == default_max_body_bytes()
}

fn default_max_header_fields() -> usize {
    RouteSettings::default().max_header_fields
}

fn is_default_max_header_fields(value: &usize) -> bool {
    *value == default_max_header_fields()
}

fn default_hold_ms() -> u64 {
    millis(RouteSettings::default().hold)
}

fn is_default_hold_ms(value: &u64) -> bool {
    *value == default_hold_ms()
}

fn is_default_protocol(value: &UpstreamProtocol) -> bool {
    *value == UpstreamProtocol::default()
}

/// Route, host and instance names: not empty, no whitespace (a space separates a name from its path).
fn is_name(name: &str) -> bool {
    !name.is_empty() && !name.chars().any(char::is_whitespace)
}

/// `/api/` and `/api` route the same requests.
fn normalise_path(path: &str) -> &str {
    match path.strip_suffix('/') {
        Some("") | None => path,
        Some(stripped) => stripped,
    }
}

fn join_problems(problems: &[Problem]) -> String {
    struct Joined<'a>(&'a [Problem]);
    impl fmt::Display for Joined<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            for (problem_idx, problem) in self.0.iter().enumerate() {
                if problem_idx > 0 {
                    f.write_str("; ")?;
                }
                write!(f, "{problem}")?;
            }
            Ok(())
        }
    }
    Joined(problems).to_string()
}

#[cfg(test)]
mod tests;
