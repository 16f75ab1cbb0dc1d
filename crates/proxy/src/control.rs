//! `Proxy`, the owner handle the control plane drives: routes, instances and their life cycle (add, mark
//! ready, drain, remove), weights, and per-release stats.
//!
//! Every change rebuilds an immutable `RoutingTable` and swaps it in; the request path only ever loads the
//! current snapshot. It knows nothing of the store or the drivers.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::error::ControlError;
use crate::ids::{InstanceId, InstanceState, ReleaseId, RouteName};
use crate::instance::InstanceLive;
use crate::routing::{Pool, Route, RouteLive, RouteSpec, RoutingTable};
use crate::stats::{ReleaseStats, ReleaseStatsSnapshot};

/// The proxy's owner handle. Cheap to clone; every clone drives the same proxy.
///
/// Locking: control-plane calls serialise on one std `Mutex` (held only to edit the desired state and
/// build a snapshot, never across an await). The request path never takes it: it reads `table`.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<ProxyInner>,
}

/// What a request to add an instance says.
#[derive(Debug, Clone)]
pub struct InstanceSpec {
    pub id: InstanceId,
    pub route: RouteName,
    pub release: ReleaseId,
    pub addr: SocketAddr,
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainOutcome {
    /// Every in-flight request and upgraded connection finished on its own.
    Drained,
    /// The timeout came first; this many requests or connections were cut.
    Cut { n_cut: usize },
}

/// How long a drain waits, after cutting, for the cut requests to notice.
const CUT_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct ProxyInner {
    pub(crate) config: ProxyConfig,
    pub(crate) table: ArcSwap<RoutingTable>,
    /// Bumped after every swap, and when passive health brings an instance back: requests in the waiting
    /// queue watch it.
    pub(crate) changed: watch::Sender<u64>,
    /// Errors that belong to no release (no route, bad request, waiting queue).
    pub(crate) unrouted: Arc<ReleaseStats>,
    /// Certificates and ACME challenge answers (`crate::tls`).
    pub(crate) tls: Arc<crate::tls::TlsStore>,
    // std Mutex: control calls are rare and short and never await while holding it (see `Proxy`).
    control: Mutex<ControlState>,
    /// The runtimes of the worker threads serving this proxy (`crate::workers`), so that a warm
    /// (`crate::warm`) opens each worker's own upstream connections on its thread. std Mutex: pushed
    /// once per worker, cloned out by a warm, never held across an await.
    workers: Mutex<Vec<tokio::runtime::Handle>>,
    /// The worker threads' client connection counts (`crate::balance`), once workers serve this proxy.
    balance: std::sync::OnceLock<Arc<crate::balance::Balance>>,
}

#[derive(Debug, Default)]
struct ControlState {
    routes: BTreeMap<RouteName, RouteEntry>,
    // BTreeMap so pools list their instances in a stable order.
    instances: BTreeMap<InstanceId, InstanceEntry>,
    releases: HashMap<ReleaseId, Arc<ReleaseStats>>,
}

#[derive(Debug)]
struct RouteEntry {
    spec: RouteSpec,
    // Invariant: releases are unique; a pool is kept while it has an instance.
    pools: Vec<(ReleaseId, u8)>,
    live: Arc<RouteLive>,
}

#[derive(Debug)]
struct InstanceEntry {
    route: RouteName,
    live: Arc<InstanceLive>,
}

impl Proxy {
    pub fn new(config: ProxyConfig) -> Proxy {
        let (changed, _) = watch::channel(0);
        Proxy {
            inner: Arc::new(ProxyInner {
                config,
                table: ArcSwap::from_pointee(RoutingTable::default()),
                changed,
                unrouted: Arc::new(ReleaseStats::new(ReleaseId::new(""))),
                tls: Arc::new(crate::tls::TlsStore::default()),
                control: Mutex::new(ControlState::default()),
                workers: Mutex::new(Vec::new()),
                balance: std::sync::OnceLock::new(),
            }),
        }
    }

    pub fn config(&self) -> &ProxyConfig {
        &self.inner.config
    }

    /// The certificates served on TLS listeners and the ACME challenge answers.
    pub fn tls(&self) -> &Arc<crate::tls::TlsStore> {
        &self.inner.tls
    }

    /// Records the runtime of a worker thread that serves this proxy (`crate::workers` calls it from
    /// each worker it starts).
    pub(crate) fn register_worker(&self, handle: tokio::runtime::Handle) {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(handle);
    }

    /// Records the counts of client connections of the workers serving this proxy (`crate::workers`;
    /// the first set of workers started for it).
    pub(crate) fn set_balance(&self, balance: Arc<crate::balance::Balance>) {
        let _ = self.inner.balance.set(balance);
    }

    /// The client connections each data-plane worker serves now, worker `i` at index `i` (empty when
    /// the proxy is served by `crate::serve` on a runtime of the caller's).
    pub fn worker_connections(&self) -> Vec<usize> {
        self.inner
            .balance
            .get()
            .map(|balance| balance.open())
            .unwrap_or_default()
    }

    /// The runtimes of the worker threads registered so far (none when the proxy is served by
    /// `crate::serve` on a runtime of the caller's).
    pub(crate) fn worker_handles(&self) -> Vec<tokio::runtime::Handle> {
        self.inner
            .workers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The current snapshot.
    pub fn routing_table(&self) -> Arc<RoutingTable> {
        self.inner.table.load_full()
    }

    /// Creates a route or changes which requests it takes; its pools are kept.
    pub fn set_route(&self, spec: RouteSpec) {
        self.edit(|state| {
            match state.routes.get_mut(&spec.name) {
                Some(entry) => entry.spec = spec,
                None => {
                    state.routes.insert(
                        spec.name.clone(),
                        RouteEntry {
                            spec,
                            pools: Vec::new(),
                            live: Arc::new(RouteLive::default()),
                        },
                    );
                }
            }
            Ok(())
        })
        .unwrap_or(());
    }

    /// Removes a route; its instances are cut and removed too.
    pub fn remove_route(&self, route: &RouteName) -> Result<(), ControlError> {
        self.edit(|state| {
            state
                .routes
                .remove(route)
                .ok_or_else(|| ControlError::UnknownRoute {
                    route: route.clone(),
                })?;
            state.instances.retain(|_, entry| {
                let keep = entry.route != *route;
                if !keep {
                    entry.live.cut.cancel();
                    entry.live.connections.clear();
                }
                keep
            });
            Ok(())
        })
    }

    /// Removes a route only when no instance is left on it, and says whether it did. The check and the
    /// removal happen under one lock, so an instance added meanwhile is never cut (unlike `remove_route`).
    pub fn remove_route_if_empty(&self, route: &RouteName) -> Result<bool, ControlError> {
        self.edit(|state| {
            if !state.routes.contains_key(route) {
                return Err(ControlError::UnknownRoute {
                    route: route.clone(),
                });
            }
            if state.instances.values().any(|entry| entry.route == *route) {
                return Ok(false);
            }
            state.routes.remove(route);
            Ok(true)
        })
    }

    /// Adds an instance in state `Starting` (no traffic yet). The route must exist. Its release gets a
    /// pool if it has none: with weight 100 when it is the route's first pool, else 0 (a new release takes
    /// traffic only when `set_weights` says so).
    pub fn add_instance(&self, spec: InstanceSpec) -> Result<(), ControlError> {
        self.edit(|state| {
            if state.instances.contains_key(&spec.id) {
                return Err(ControlError::DuplicateInstance { instance: spec.id });
            }
            let route =
                state
                    .routes
                    .get_mut(&spec.route)
                    .ok_or_else(|| ControlError::UnknownRoute {
                        route: spec.route.clone(),
                    })?;
            if !route
                .pools
                .iter()
                .any(|(release, _)| *release == spec.release)
            {
                let weight = if route.pools.is_empty() { 100 } else { 0 };
                route.pools.push((spec.release.clone(), weight));
            }
            state
                .releases
                .entry(spec.release.clone())
                .or_insert_with(|| Arc::new(ReleaseStats::new(spec.release.clone())));
            state.instances.insert(
                spec.id.clone(),
                InstanceEntry {
                    route: spec.route,
                    live: Arc::new(InstanceLive::new(spec.id, spec.release, spec.addr)),
                },
            );
            Ok(())
        })
    }

    /// Lets the instance take new requests; requests waiting on its route go on at once.
    pub fn mark_ready(&self, instance: &InstanceId) -> Result<(), ControlError> {
        self.edit(|state| {
            let entry = state.instance(instance)?;
            entry.live.set_state(InstanceState::Ready);
            entry.live.mark_up();
            Ok(())
        })
    }

    /// Stops new requests to the instance now, then resolves once its in-flight requests and upgraded
    /// connections have finished, or at `timeout`, when whatever is left is cut.
    ///
    /// The state change happens when this is called, not when the future is first polled, so a caller
    /// that swaps weights and then drains gets a strict order.
    pub fn drain(
        &self,
        instance: &InstanceId,
        timeout: Duration,
    ) -> impl Future<Output = Result<DrainOutcome, ControlError>> + Send + 'static {
        let live = self.edit(|state| {
            let entry = state.instance(instance)?;
            if entry.live.state() != InstanceState::Drained {
                entry.live.set_state(InstanceState::Draining);
            }
            Ok(Arc::clone(&entry.live))
        });
        let proxy = self.clone();
        async move {
            let live = live?;
            let outcome = match tokio::time::timeout(timeout, live.wait_idle()).await {
                Ok(()) => DrainOutcome::Drained,
                Err(_elapsed) => {
                    let n_cut = live.in_flight();
                    live.cut.cancel();
                    // Cutting closes every connection of the instance; the guards they hold drop as their
                    // tasks notice, which takes a scheduler turn or two. An answer stuck behind a client
                    // that stopped reading is only noticed when the client reads again: bounded wait.
                    let _ = tokio::time::timeout(CUT_GRACE, live.wait_idle()).await;
                    DrainOutcome::Cut { n_cut }
                }
            };
            live.connections.clear();
            live.set_state(InstanceState::Drained);
            proxy.publish();
            tracing::info!(
                message = "Instance drained.",
                instance = %live.id(),
                outcome = ?outcome
            );
            Ok(outcome)
        }
    }

    /// Forgets the instance. Anything still open on it is cut: drain first for a graceful exit.
    pub fn remove(&self, instance: &InstanceId) -> Result<(), ControlError> {
        self.edit(|state| {
            let entry =
                state
                    .instances
                    .remove(instance)
                    .ok_or_else(|| ControlError::UnknownInstance {
                        instance: instance.clone(),
                    })?;
            entry.live.set_state(InstanceState::Drained);
            entry.live.cut.cancel();
            entry.live.connections.clear();
            let release = entry.live.release().clone();
            let release_still_used = state
                .instances
                .values()
                .any(|other| other.route == entry.route && *other.live.release() == release);
            if !release_still_used && let Some(route) = state.routes.get_mut(&entry.route) {
                route
                    .pools
                    .retain(|(pool_release, _)| *pool_release != release);
            }
            Ok(())
        })
    }

    /// Sets the share of new requests of each listed release on a route (0 to 100, relative to the other
    /// pools). Releases not listed keep their weight.
    pub fn set_weights(
        &self,
        route: &RouteName,
        weights: &[(ReleaseId, u8)],
    ) -> Result<(), ControlError> {
        self.edit(|state| {
            let entry = state
                .routes
                .get_mut(route)
                .ok_or_else(|| ControlError::UnknownRoute {
                    route: route.clone(),
                })?;
            for (release, weight) in weights {
                if *weight > 100 {
                    return Err(ControlError::WeightOutOfRange {
                        release: release.clone(),
                        weight: *weight,
                    });
                }
                if !entry
                    .pools
                    .iter()
                    .any(|(pool_release, _)| pool_release == release)
                {
                    return Err(ControlError::UnknownPool {
                        route: route.clone(),
                        release: release.clone(),
                    });
                }
            }
            for (release, weight) in weights {
                for (pool_release, pool_weight) in &mut entry.pools {
                    if pool_release == release {
                        *pool_weight = *weight;
                    }
                }
            }
            Ok(())
        })
    }

    /// The counters of one release, if it ever had an instance.
    pub fn stats(&self, release: &ReleaseId) -> Option<ReleaseStatsSnapshot> {
        let state = self.lock();
        state.releases.get(release).map(|stats| stats.snapshot())
    }

    /// Adds a predecessor's counters (a hot restart) to this proxy's, release by release; releases this
    /// proxy does not route yet get their counters now, so they continue when they are routed.
    pub fn carry_over_stats(&self, observed: &[crate::observed::ObservedReleaseStats]) {
        let mut state = self.lock();
        for release in observed {
            let counts = release.counts();
            let stats = if release.release.is_empty() {
                self.inner.unrouted.clone()
            } else {
                let id = ReleaseId::new(release.release.as_str());
                state
                    .releases
                    .entry(id.clone())
                    .or_insert_with(|| Arc::new(ReleaseStats::new(id)))
                    .clone()
            };
            stats.carry_over(
                counts.requests,
                &counts.errors,
                &counts.latency_counts,
                counts.latency_sum,
            );
        }
    }

    /// The counters of every release, sorted by release, then the unrouted ones (release ``).
    pub fn all_stats(&self) -> Vec<ReleaseStatsSnapshot> {
        let mut snapshots: Vec<_> = self
            .lock()
            .releases
            .values()
            .map(|stats| stats.snapshot())
            .collect();
        snapshots.sort_by(|a, b| a.release.cmp(&b.release));
        snapshots.push(self.inner.unrouted.snapshot());
        snapshots
    }

    /// Requests waiting for a ready instance, per route.
    pub fn waiting(&self) -> Vec<(RouteName, usize)> {
        self.lock()
            .routes
            .iter()
            .map(|(name, entry)| {
                (
                    name.clone(),
                    entry
                        .live
                        .waiting
                        .load(std::sync::atomic::Ordering::Relaxed),
                )
            })
            .collect()
    }

    pub(crate) fn inner(&self) -> &Arc<ProxyInner> {
        &self.inner
    }

    /// Wakes requests in the waiting queue so they look at the snapshot again.
    pub(crate) fn publish(&self) {
        self.inner
            .changed
            .send_modify(|generation| *generation += 1);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ControlState> {
        // A panic while holding the lock leaves the desired state as it was before the edit (edits are
        // applied to the map in one go), so going on with it is safe.
        self.inner
            .control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every instance the proxy holds (ready, not ready or draining).
    pub(crate) fn instance_lives(&self) -> Vec<Arc<crate::instance::InstanceLive>> {
        self.lock()
            .instances
            .values()
            .map(|entry| Arc::clone(&entry.live))
            .collect()
    }

    /// Applies one edit to the desired state, then builds and swaps in the snapshot it implies.
    fn edit<T>(
        &self,
        edit: impl FnOnce(&mut ControlState) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        let mut state = self.lock();
        let value = edit(&mut state)?;
        let table = state.build_table();
        self.inner.table.store(Arc::new(table));
        drop(state);
        self.publish();
        Ok(value)
    }
}

impl ControlState {
    fn instance(&self, instance: &InstanceId) -> Result<&InstanceEntry, ControlError> {
        self.instances
            .get(instance)
            .ok_or_else(|| ControlError::UnknownInstance {
                instance: instance.clone(),
            })
    }

    fn build_table(&self) -> RoutingTable {
        let routes =
            self.routes
                .iter()
                .map(|(name, entry)| {
                    let pools = entry
                        .pools
                        .iter()
                        .map(|(release, weight)| {
                            let instances = self
                                .instances
                                .values()
                                .filter(|instance| {
                                    instance.route == *name && instance.live.release() == release
                                })
                                .map(|instance| Arc::clone(&instance.live))
                                .collect();
                            let stats =
                                self.releases.get(release).cloned().unwrap_or_else(|| {
                                    Arc::new(ReleaseStats::new(release.clone()))
                                });
                            Pool::new(release.clone(), *weight, instances, stats)
                        })
                        .collect();
                    Route::new(entry.spec.clone(), pools, Arc::clone(&entry.live))
                })
                .collect();
        RoutingTable::new(routes)
    }
}
