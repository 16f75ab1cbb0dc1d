//! The routing table: an immutable snapshot of routes, release pools and instances, and the choice of an
//! instance for one request (weighted pool, then least outstanding requests).
//!
//! A snapshot is never mutated; the control plane (`control`) builds a new one and swaps it in. The live
//! counters it points to (in-flight counts, stats) are shared atomics, so reading it takes no lock.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::config::RouteSettings;
use crate::edge::{RateTable, RouteEdge};
use crate::ids::{InstanceId, ReleaseId, RouteName};
use crate::instance::{InFlightGuard, InstanceLive};
use crate::stats::ReleaseStats;

/// What the control plane says about a route: which requests it takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub name: RouteName,
    /// Host names matched exactly (case-insensitive, port ignored). Empty means any host.
    pub hosts: Vec<String>,
    /// Path prefix, matched on whole segments (`/api` matches `/api` and `/api/x`, not `/apix`).
    pub path_prefix: String,
    /// Limits, timeouts and the protocol spoken to the route's instances.
    pub settings: RouteSettings,
    /// Who may use the route and how fast; maintenance and pause (`edge`).
    pub edge: RouteEdge,
}

/// One immutable routing snapshot.
#[derive(Debug, Default)]
pub struct RoutingTable {
    routes: Vec<Route>,
    // Route indices per lowercase host, each list sorted by path prefix length, longest first.
    by_host: HashMap<String, Vec<usize>, HostHasher>,
    // Routes that take any host, sorted the same way; tried after the host's own routes.
    any_host: Vec<usize>,
}

/// One route in a snapshot.
#[derive(Debug)]
pub struct Route {
    spec: RouteSpec,
    // Invariant: pool releases are unique within a route.
    pools: Vec<Pool>,
    pub(crate) live: Arc<RouteLive>,
}

/// The instances of one release on one route, with the release's share of new requests.
#[derive(Debug)]
pub struct Pool {
    release: ReleaseId,
    weight: u8,
    instances: Vec<Arc<InstanceLive>>,
    stats: Arc<ReleaseStats>,
}

/// Counters of a route that outlive snapshots.
#[derive(Debug, Default)]
pub(crate) struct RouteLive {
    /// Requests currently in the waiting queue of this route.
    pub(crate) waiting: AtomicUsize,
    /// Token buckets per client address for the route's rate limit.
    pub(crate) rates: RateTable,
}

impl RoutingTable {
    /// The route for a request: routes of its host first, then routes for any host; the longest matching
    /// path prefix wins within each group.
    pub fn route_for(&self, host: &str, path: &str) -> Option<&Route> {
        let matching = |indices: &[usize]| {
            indices
                .iter()
                .map(|route_idx| &self.routes[*route_idx])
                .find(|route| prefix_matches(&route.spec.path_prefix, path))
        };
        let host_routes = self.by_host.get(host).map(|indices| matching(indices));
        host_routes.flatten().or_else(|| matching(&self.any_host))
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub(crate) fn new(routes: Vec<Route>) -> RoutingTable {
        let mut by_host: HashMap<String, Vec<usize>, HostHasher> = HashMap::default();
        let mut any_host = Vec::new();
        for (route_idx, route) in routes.iter().enumerate() {
            if route.spec.hosts.is_empty() {
                any_host.push(route_idx);
            }
            for host in &route.spec.hosts {
                by_host
                    .entry(normalise_host(host).into_owned())
                    .or_default()
                    .push(route_idx);
            }
        }
        let prefix_len =
            |route_idx: &usize| std::cmp::Reverse(routes[*route_idx].spec.path_prefix.len());
        for indices in by_host.values_mut() {
            indices.sort_by_key(prefix_len);
        }
        any_host.sort_by_key(prefix_len);
        RoutingTable {
            routes,
            by_host,
            any_host,
        }
    }
}

impl Route {
    pub fn spec(&self) -> &RouteSpec {
        &self.spec
    }

    pub fn name(&self) -> &RouteName {
        &self.spec.name
    }

    pub fn pools(&self) -> &[Pool] {
        &self.pools
    }

    pub(crate) fn new(spec: RouteSpec, pools: Vec<Pool>, live: Arc<RouteLive>) -> Route {
        Route { spec, pools, live }
    }

    /// Chooses an instance for a new request and counts the request on it, or `None` when no pool with a
    /// weight above 0 has a ready instance outside `exclude`.
    ///
    /// A pool is drawn with probability proportional to its weight among the pools that have a candidate;
    /// inside it, the instance with the fewest outstanding requests wins (ties broken at random).
    pub(crate) fn pick(&self, exclude: &[InstanceId]) -> Option<InFlightGuard> {
        // An instance can stop being ready between the scan and the acquire (a drain started); the acquire
        // then fails and the scan runs again on fresh state. Bounded so a flapping instance cannot spin us.
        for _ in 0..4 {
            let mut candidates: [Option<(&Pool, &Arc<InstanceLive>)>; 4] = [None; 4];
            let mut n_candidates = 0;
            let mut total_weight = 0u32;
            let mut overflow: Vec<(&Pool, &Arc<InstanceLive>)> = Vec::new();
            for pool in self.pools.iter().filter(|pool| pool.weight > 0) {
                if let Some(instance) = pool.least_loaded(exclude) {
                    total_weight += u32::from(pool.weight);
                    if n_candidates < candidates.len() {
                        candidates[n_candidates] = Some((pool, instance));
                    } else {
                        overflow.push((pool, instance));
                    }
                    n_candidates += 1;
                }
            }
            if n_candidates == 0 {
                return None;
            }
            let mut draw = (random_u64() % u64::from(total_weight)) as u32;
            let chosen = candidates
                .iter()
                .flatten()
                .chain(overflow.iter())
                .find(|(pool, _)| {
                    let weight = u32::from(pool.weight);
                    if draw < weight {
                        true
                    } else {
                        draw -= weight;
                        false
                    }
                })
                .copied();
            let (pool, instance) = chosen?;
            if let Some(guard) = InstanceLive::try_acquire(instance, &pool.stats) {
                return Some(guard);
            }
        }
        None
    }
}

impl Pool {
    pub fn release(&self) -> &ReleaseId {
        &self.release
    }

    /// Share of new requests, 0 to 100, relative to the other pools of the route.
    pub fn weight(&self) -> u8 {
        self.weight
    }

    pub fn instances(&self) -> &[Arc<InstanceLive>] {
        &self.instances
    }

    pub fn stats(&self) -> &Arc<ReleaseStats> {
        &self.stats
    }

    pub(crate) fn new(
        release: ReleaseId,
        weight: u8,
        instances: Vec<Arc<InstanceLive>>,
        stats: Arc<ReleaseStats>,
    ) -> Pool {
        Pool {
            release,
            weight,
            instances,
            stats,
        }
    }

    fn least_loaded(&self, exclude: &[InstanceId]) -> Option<&Arc<InstanceLive>> {
        let n_instances = self.instances.len();
        if n_instances == 0 {
            return None;
        }
        let start = (random_u64() % n_instances as u64) as usize;
        let mut best: Option<(&Arc<InstanceLive>, usize)> = None;
        for offset in 0..n_instances {
            let instance = &self.instances[(start + offset) % n_instances];
            if !instance.is_available() || exclude.contains(instance.id()) {
                continue;
            }
            let load = instance.in_flight();
            if best.is_none_or(|(_, best_load)| load < best_load) {
                best = Some((instance, load));
            }
        }
        best.map(|(instance, _)| instance)
    }
}

/// The hasher of `RoutingTable::by_host`: foldhash, seeded at random per map. The map is looked up twice
/// per request and its keys are the operator's hosts (a request only looks up, so a crafted host can
/// lengthen nothing but its own lookup); std's SipHash cost ~230 instructions per lookup for a protection
/// this map does not need, foldhash a tenth of that while still seeded.
type HostHasher = foldhash::fast::RandomState;

/// Lowercases a host and drops its port and a trailing dot (`Example.com.:8080` -> `example.com`: a fully
/// qualified name is the same host, RFC 1034 section 3.1); keeps IPv6 brackets.
pub(crate) fn normalise_host(host: &str) -> Cow<'_, str> {
    let without_port = if let Some(rest) = host.strip_prefix('[') {
        match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        }
    } else {
        let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
        name.strip_suffix('.').unwrap_or(name)
    };
    if without_port.bytes().any(|byte| byte.is_ascii_uppercase()) {
        Cow::Owned(without_port.to_ascii_lowercase())
    } else {
        Cow::Borrowed(without_port)
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix.is_empty() || prefix == "/" {
        return true;
    }
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || rest.starts_with('?'),
        None => false,
    }
}

/// A fast per-thread pseudo-random number for load balancing; not for anything secret.
pub(crate) fn random_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, RandomState};
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()) | 1);
    }
    STATE.with(|state| {
        // xorshift64*: enough spread for choosing among a handful of pools and instances.
        let mut x = state.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        state.set(x);
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    })
}

/// Number of routes, pools and instances; handy in logs and tests.
impl RoutingTable {
    pub fn n_routes(&self) -> usize {
        self.routes.len()
    }
}

// `AtomicUsize` ordering note: `waiting` is a bound, not a synchronisation point, so Relaxed is enough.
impl RouteLive {
    pub(crate) fn try_enter_queue(&self, max_waiting: usize) -> bool {
        let previous = self.waiting.fetch_add(1, Ordering::Relaxed);
        if previous >= max_waiting {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    pub(crate) fn leave_queue(&self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;
