//! Edge controls of a route, decided before an instance is picked: which client networks may use it
//! (`allow`), how fast one client address may send (`RateLimit`, a token bucket per address), maintenance
//! mode (a 503 page) and a pause (requests held in the route's waiting queue until it ends).
//!
//! It decides, it does not answer: a refusal is a `ProxyError` turned into an answer by `error_response`,
//! and holding a paused request is `forward`'s waiting queue. It does not parse the manifest; the agent
//! maps `[routes.X] rate_limit`/`allow` and its own maintenance/pause state onto `RouteEdge`.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::header::HeaderMap;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{ProxyConfig, TrustedProxy, TrustedProxyParseError};
use crate::desired::{DesiredRoute, Problem};
use crate::error::ProxyError;
use crate::ids::RouteName;

/// The edge controls of one route. `RouteEdge::default()` lets everything through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteEdge {
    /// Client networks that may use the route; empty means every client. Others get 403.
    pub allow: Vec<ClientNetwork>,
    /// Requests per client address; past it the answer is 429 with `Retry-After`.
    pub rate_limit: Option<RateLimit>,
    /// When set, the route answers 503 with the page (except to the allowed networks and bypass paths).
    pub maintenance: Option<Maintenance>,
    /// When set and in the future, new requests wait in the route's queue until the pause ends.
    pub paused_until: Option<SystemTime>,
}

/// A client network (`10.0.0.0/8`, `203.0.113.7`); the same notation and matching as trusted proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientNetwork(TrustedProxy);

/// A token bucket per client address: `burst` requests at once, refilled at `requests` per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Invariant: at least 1.
    pub requests: u32,
    /// Invariant: not zero.
    pub per: Duration,
    /// Invariant: at least 1.
    pub burst: u32,
}

/// Maintenance mode of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Maintenance {
    /// The HTML page every refused request gets, with status 503.
    pub page: Bytes,
    /// The `Retry-After` of that answer.
    pub retry_after: Duration,
    /// Client networks that still reach the app (the team checking its work).
    pub allow: Vec<ClientNetwork>,
    /// Paths (exact) that still reach the app: its health check.
    pub bypass_paths: Vec<String>,
}

/// What the request path does with a request once the edge controls let it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Pass,
    /// The route is paused: hold the request until this time (then look again).
    Hold {
        until: SystemTime,
    },
}

/// Token buckets of one route, one per client address, with bounded memory.
///
/// Lock: sharded std `Mutex`es (never held across an await); the critical section is one hash lookup and
/// the bucket arithmetic. This is the request path's only lock, and only routes with a rate limit take it.
///
/// A client address is hashed once per request, with the table's keyed hasher (std's SipHash: client
/// addresses are chosen by clients, so an unkeyed hash would let one fill a shard's chain); that hash picks
/// the shard and is the shard map's own hash too (`HashedAddr`).
#[derive(Debug)]
pub(crate) struct RateTable {
    shards: Box<[Mutex<Shard>]>,
    hasher: std::collections::hash_map::RandomState,
    max_per_shard: usize,
}

/// The buckets of one shard, by client address.
type Shard = HashMap<HashedAddr, Bucket, BuildHasherDefault<PrehashedHasher>>;

/// A client address with its hash under the table's keyed hasher. Equal addresses have equal hashes, so
/// comparing the addresses is enough for equality.
#[derive(Debug, Clone, Copy)]
struct HashedAddr {
    hash: u64,
    addr: IpAddr,
}

impl PartialEq for HashedAddr {
    fn eq(&self, other: &HashedAddr) -> bool {
        self.addr == other.addr
    }
}

impl Eq for HashedAddr {}

impl Hash for HashedAddr {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// The hasher of a shard map: the key's hash is already computed (`HashedAddr`), so it passes it on.
#[derive(Debug, Default)]
struct PrehashedHasher(u64);

impl Hasher for PrehashedHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (`HashedAddr::hash`); anything else still hashes, if poorly.
        for byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*byte);
        }
    }

    fn write_u64(&mut self, hash: u64) {
        self.0 = hash;
    }
}

/// One client's bucket: tokens left at `last`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

const SHARDS: usize = 16;
/// Most client addresses tracked per route; beyond it idle (full) buckets are evicted first.
pub(crate) const MAX_TRACKED_CLIENTS: usize = 65_536;

impl RouteEdge {
    /// Whether nothing is controlled (the request path skips the edge then).
    pub fn is_open(&self) -> bool {
        self.allow.is_empty()
            && self.rate_limit.is_none()
            && self.maintenance.is_none()
            && self.paused_until.is_none()
    }

    /// Decides on one request from `client` for `path` at `now` (the tokio clock, for the rate) and
    /// `wall_now` (the wall clock, for the pause: read only when the route has one). Refusals come in this
    /// order: not allowed (403), maintenance (503), rate (429).
    pub(crate) fn admit(
        &self,
        route: &RouteName,
        rates: &RateTable,
        client: IpAddr,
        path: &str,
        now: Instant,
        wall_now: impl FnOnce() -> SystemTime,
    ) -> Result<Admission, ProxyError> {
        if !self.allow.is_empty() && !self.allow.iter().any(|network| network.contains(client)) {
            return Err(ProxyError::Forbidden {
                route: route.clone(),
                client,
            });
        }
        if let Some(maintenance) = &self.maintenance
            && !maintenance
                .allow
                .iter()
                .any(|network| network.contains(client))
            && !maintenance.bypass_paths.iter().any(|bypass| bypass == path)
        {
            return Err(ProxyError::Maintenance {
                route: route.clone(),
                page: maintenance.page.clone(),
                retry_after: maintenance.retry_after,
            });
        }
        if let Some(limit) = &self.rate_limit
            && let Err(retry_after) = rates.take(client, limit, now)
        {
            return Err(ProxyError::RateLimited {
                route: route.clone(),
                client,
                retry_after,
            });
        }
        match self.paused_until {
            Some(until) if until > wall_now() => Ok(Admission::Hold { until }),
            _ => Ok(Admission::Pass),
        }
    }
}

impl ClientNetwork {
    pub fn contains(&self, addr: IpAddr) -> bool {
        self.0.contains(addr)
    }
}

impl FromStr for ClientNetwork {
    type Err = TrustedProxyParseError;

    fn from_str(text: &str) -> Result<ClientNetwork, TrustedProxyParseError> {
        text.parse().map(ClientNetwork)
    }
}

impl fmt::Display for ClientNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl RateLimit {
    /// Tokens added per second.
    fn refill_per_second(&self) -> f64 {
        f64::from(self.requests) / self.per.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

impl Default for RateTable {
    fn default() -> RateTable {
        RateTable::with_capacity(MAX_TRACKED_CLIENTS)
    }
}

impl RateTable {
    /// A table that tracks at most about `max_clients` addresses.
    pub(crate) fn with_capacity(max_clients: usize) -> RateTable {
        RateTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            max_per_shard: max_clients.div_ceil(SHARDS).max(1),
        }
    }

    /// Takes one token of `client`'s bucket at `now`, or says how long until one is there.
    pub(crate) fn take(
        &self,
        client: IpAddr,
        limit: &RateLimit,
        now: Instant,
    ) -> Result<(), Duration> {
        let hash = self.hasher.hash_one(client);
        let key = HashedAddr { hash, addr: client };
        // The shard from high bits: the shard map's buckets come from the low ones.
        let shard_idx = ((hash >> 32) as usize) % self.shards.len();
        let mut shard = self.shards[shard_idx]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let burst = f64::from(limit.burst.max(1));
        let refill = limit.refill_per_second();
        let bucket = match shard.get_mut(&key) {
            Some(bucket) => bucket,
            None => {
                if shard.len() >= self.max_per_shard {
                    evict(&mut shard, burst, refill, now, self.max_per_shard);
                }
                shard.entry(key).or_insert(Bucket {
                    tokens: burst,
                    last: now,
                })
            }
        };
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * refill).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(Duration::from_secs_f64(missing / refill))
        }
    }

    /// Client addresses tracked now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| shard.lock().map_or(0, |shard| shard.len()))
            .sum()
    }
}

/// Makes room in a full shard: buckets that refilled to `burst` are the same as no bucket, so they go
/// first; if none did (more active clients than the bound), the least recently seen goes.
fn evict(shard: &mut Shard, burst: f64, refill: f64, now: Instant, max_per_shard: usize) {
    shard.retain(|_, bucket| {
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens + elapsed * refill < burst
    });
    if shard.len() >= max_per_shard
        && let Some(oldest) = shard
            .iter()
            .min_by_key(|(_, bucket)| bucket.last)
            .map(|(key, _)| *key)
    {
        shard.remove(&oldest);
    }
}

/// The client's address as the edge controls see it: the peer's, or, when the peer is a trusted proxy,
/// the last address in `X-Forwarded-For` that is not itself a trusted proxy (the rightmost entries were
/// added by proxies we trust; anything left of the first untrusted one could be made up by the client).
pub(crate) fn client_addr(config: &ProxyConfig, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
    if !config.trusts(peer) {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for entry in entries.iter().rev() {
        let Ok(addr) = entry.parse::<IpAddr>() else {
            // A malformed hop: nothing left of it can be believed.
            return client;
        };
        client = addr;
        if !config.trusts(addr) {
            return addr;
        }
    }
    client
}

/// Wall-clock time from milliseconds since the Unix epoch (the wire's form of a pause's end).
pub fn time_from_unix_ms(unix_ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(unix_ms)
}

/// Milliseconds since the Unix epoch of a wall-clock time (0 before the epoch).
pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

/// Largest maintenance page the proxy takes, in bytes (the agent refuses larger files earlier).
pub const MAX_MAINTENANCE_PAGE_BYTES: usize = 256 * 1024;

/// A route's rate limit on the wire (`DesiredRoute::rate_limit`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRateLimit {
    pub requests: u32,
    pub per_ms: u64,
    pub burst: u32,
}

/// A route's maintenance mode on the wire (`DesiredRoute::maintenance`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredMaintenance {
    /// The whole HTML page, at most `MAX_MAINTENANCE_PAGE_BYTES`.
    pub page_html: String,
    pub retry_after_s: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bypass_paths: Vec<String>,
}

impl DesiredRoute {
    /// The route's edge controls in the proxy's terms. Networks that do not parse are left out
    /// (`DesiredState::problems` refuses them before this is used).
    pub fn edge(&self) -> RouteEdge {
        let networks = |texts: &[String]| -> Vec<ClientNetwork> {
            texts.iter().filter_map(|text| text.parse().ok()).collect()
        };
        RouteEdge {
            allow: networks(&self.allow),
            rate_limit: self.rate_limit.map(|limit| RateLimit {
                requests: limit.requests.max(1),
                per: Duration::from_millis(limit.per_ms.max(1)),
                burst: limit.burst.max(1),
            }),
            maintenance: self.maintenance.as_ref().map(|maintenance| Maintenance {
                page: Bytes::from(maintenance.page_html.clone()),
                retry_after: Duration::from_secs(maintenance.retry_after_s),
                allow: networks(&maintenance.allow),
                bypass_paths: maintenance.bypass_paths.clone(),
            }),
            paused_until: self.paused_until_unix_ms.map(time_from_unix_ms),
        }
    }
}

/// What is wrong with a desired route's edge controls.
pub(crate) fn problems(route: &DesiredRoute) -> Vec<Problem> {
    let mut problems = Vec::new();
    let networks = route.allow.iter().chain(
        route
            .maintenance
            .iter()
            .flat_map(|maintenance| maintenance.allow.iter()),
    );
    for network in networks {
        if let Err(source) = network.parse::<ClientNetwork>() {
            problems.push(Problem::BadNetwork {
                route: route.name.clone(),
                source,
            });
        }
    }
    if let Some(limit) = route.rate_limit
        && (limit.requests == 0 || limit.per_ms == 0 || limit.burst == 0)
    {
        problems.push(Problem::BadRateLimit {
            route: route.name.clone(),
            requests: limit.requests,
            per_ms: limit.per_ms,
            burst: limit.burst,
        });
    }
    if let Some(maintenance) = &route.maintenance
        && maintenance.page_html.len() > MAX_MAINTENANCE_PAGE_BYTES
    {
        problems.push(Problem::MaintenancePageTooLarge {
            route: route.name.clone(),
            bytes: maintenance.page_html.len(),
            limit: MAX_MAINTENANCE_PAGE_BYTES,
        });
    }
    problems
}

#[cfg(test)]
mod tests;
