//! Warming a new instance before its release is weighted in: a few GETs of its warm path (the agent
//! gives its health path) from every worker thread, through `upstream::send` and the pool the real
//! traffic will use, so that when the switch comes each worker already holds open connections to the
//! instance and the app has already answered on them.
//!
//! Without it, at a switch under load every client connection's next request found the new instance's
//! pool empty: up to one new upstream connection per request in flight, on both workers at once, each
//! answered by a process that had served nothing yet (bench/proxy/README.md, "Session 29: the dip
//! during a switch").
//!
//! It is not a health check: what the answers say changes nothing (no state, no passive health, no
//! statistics: the requests go around `forward`), and a warm that fails or takes longer than its bound
//! only leaves the pool colder. It is run by the control socket's `PUT /v1/state` on instances that
//! `desired::add_to_warm` added (not ready, so they take no traffic yet), before `desired::apply`.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::{Method, Request, header};

use crate::body::{ProxyBody, RequestBody};
use crate::config::{ProxyConfig, RouteSettings};
use crate::control::Proxy;
use crate::instance::InstanceLive;
use crate::upstream::{self, IdleLimits};

/// The longest a warm holds up the state that weights its instances in. Warming two instances on a
/// loopback takes a few milliseconds; an app slower than this is switched to as it is.
pub(crate) const WARM_BOUND: Duration = Duration::from_millis(1000);

/// Most connections a warm opens to one instance from one worker thread.
pub(crate) const MAX_CONNECTIONS_PER_WORKER: usize = 64;

/// Rounds of requests on each warm connection: the first opens the connection (the app's accept and
/// its connection task), the second runs on the pooled connection as the traffic will.
const ROUNDS: usize = 2;

/// One instance to warm and how.
#[derive(Debug, Clone)]
pub(crate) struct WarmTarget {
    pub(crate) instance: Arc<InstanceLive>,
    pub(crate) settings: RouteSettings,
    /// Origin-form path of the GETs, such as `/health`.
    pub(crate) path: String,
    /// Connections to open from each worker thread.
    pub(crate) connections_per_worker: usize,
}

/// How many connections each worker should open to each of `new_instances` new instances that take
/// over a route on which `in_flight` requests are open now: each worker's share of them, doubled (the
/// count moves from one moment to the next, and a spare connection costs a file descriptor for
/// `upstream_idle_timeout`), at least 2 and at most `MAX_CONNECTIONS_PER_WORKER`.
pub(crate) fn connections_per_worker(
    in_flight: usize,
    new_instances: usize,
    workers: usize,
) -> usize {
    let share = in_flight.div_ceil(new_instances.max(1) * workers.max(1));
    (share * 2).clamp(2, MAX_CONNECTIONS_PER_WORKER)
}

/// Warms every target from every worker thread of `proxy` (or from this task's runtime when no worker is
/// registered: `crate::serve` on a runtime of the caller's, whose tasks share one pool shard), at most
/// `bound`. Answers how many warm requests got a 2xx answer, over all targets and workers.
pub(crate) async fn warm(proxy: &Proxy, targets: &[WarmTarget], bound: Duration) -> usize {
    if targets.is_empty() {
        return 0;
    }
    let handles = proxy.worker_handles();
    let mut tasks = tokio::task::JoinSet::new();
    if handles.is_empty() {
        tasks.spawn(warm_here(proxy.config().clone(), targets.to_vec()));
    } else {
        for handle in &handles {
            tasks.spawn_on(warm_here(proxy.config().clone(), targets.to_vec()), handle);
        }
    }
    let mut answered = 0;
    let all = async {
        while let Some(done) = tasks.join_next().await {
            // A worker that stopped meanwhile drops its task: nothing to warm there.
            answered += done.unwrap_or(0);
        }
    };
    if tokio::time::timeout(bound, all).await.is_err() {
        tracing::warn!(
            message = "Warming new instances took too long; switching to them as they are.",
            bound_ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX)
        );
        // Dropping the set aborts what is left.
    }
    answered
}

/// Warms the targets from this thread: `connections_per_worker` requests at once per target, `ROUNDS`
/// times, each answer read to its end so that its connection goes back to this thread's pool shard.
async fn warm_here(config: ProxyConfig, targets: Vec<WarmTarget>) -> usize {
    let config = Arc::new(config);
    let mut answered = 0;
    for _ in 0..ROUNDS {
        let mut requests = tokio::task::JoinSet::new();
        for target in &targets {
            for _ in 0..target.connections_per_worker {
                // Spawned on this thread's runtime (a worker's is current-thread), so that the
                // connection is opened, and pooled, on this thread's shard.
                requests.spawn(one(Arc::clone(&config), target.clone()));
            }
        }
        while let Some(done) = requests.join_next().await {
            answered += usize::from(done.unwrap_or(false));
        }
    }
    answered
}

/// One GET of the target's path; true when it got a 2xx answer read to its end.
async fn one(config: Arc<ProxyConfig>, target: WarmTarget) -> bool {
    let request = match Request::builder()
        .method(Method::GET)
        .uri(target.path.as_str())
        .header(header::HOST, target.instance.addr().to_string())
        .header(header::USER_AGENT, "rollway-proxy-warm")
        .body(RequestBody::empty())
    {
        Ok(request) => request,
        Err(_) => return false,
    };
    let response = match upstream::send(
        &target.instance,
        request,
        &config,
        &target.settings,
        false,
        None,
    )
    .await
    {
        Ok(response) => response,
        Err(_failure) => return false,
    };
    let success = response.status().is_success();
    let (_, incoming) = response.into_parts();
    // Read to its end, the body gives its connection back to the pool (as `forward`'s answers do).
    let body = ProxyBody::upstream(
        incoming,
        Some((
            Arc::clone(&target.instance),
            IdleLimits {
                max: config.upstream_max_idle_per_instance,
                timeout: config.upstream_idle_timeout,
            },
        )),
        None,
        target.settings.idle_timeout,
        tokio::time::Instant::now(),
    );
    success && body.collect().await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_opens_twice_its_share_of_what_is_in_flight_within_bounds() {
        // (in flight on the route, new instances, workers) -> connections per worker and instance
        let cases = [
            ((0, 2, 2), 2),
            ((1, 2, 2), 2),
            ((64, 2, 2), 32),
            ((63, 2, 2), 32),
            ((64, 1, 1), MAX_CONNECTIONS_PER_WORKER),
            ((10_000, 2, 2), MAX_CONNECTIONS_PER_WORKER),
            ((12, 0, 0), 24),
        ];
        for ((in_flight, new_instances, workers), expected) in cases {
            assert_eq!(
                connections_per_worker(in_flight, new_instances, workers),
                expected,
                "{in_flight} in flight, {new_instances} new instances, {workers} workers"
            );
        }
    }
}
