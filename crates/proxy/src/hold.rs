//! Holding a request that has not been sent: while its route has no routable instance (none ready,
//! or every one refused its connection: an instance killed, a task stopped while its replacement
//! starts) or while the route is paused, the request waits in the route's queue and goes on as soon
//! as a new snapshot or passive health shows an instance, or the pause ends.
//!
//! Bounds: a request holds at most its route's `RouteSettings::hold` in all (one budget for every
//! wait of one request, `Hold`), and at most `WaitingConfig::max_waiting` requests of a route hold at
//! once; past either the answer is 503 with `Retry-After`. A held request takes no lock: it reads the
//! snapshot and waits on the proxy's `changed` watch. A held request whose client goes away is
//! dropped with its connection's future, and leaves the queue then (`LeaveQueue`).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use crate::control::{Proxy, ProxyInner};
use crate::error::ProxyError;
use crate::ids::{InstanceId, RouteName};
use crate::instance::InFlightGuard;
use crate::routing::RouteLive;
use crate::stats::ReleaseStats;

type Failure = (ProxyError, Option<Arc<ReleaseStats>>);

/// One request's time budget for holding, shared by all its waits (a pause, then no instance, then
/// instances that refuse connections).
#[derive(Debug)]
pub(crate) struct Hold {
    limit: Duration,
    started: Option<Instant>,
}

impl Hold {
    pub(crate) fn new(limit: Duration) -> Hold {
        Hold {
            limit,
            started: None,
        }
    }

    /// When holding must end; the budget starts with the first wait.
    fn deadline(&mut self) -> Instant {
        *self.started.get_or_insert_with(Instant::now) + self.limit
    }

    fn waited(&self) -> Duration {
        self.started
            .map(|started| started.elapsed())
            .unwrap_or_default()
    }
}

/// The instances one request tried, for its next pick.
#[derive(Debug, Default)]
pub(crate) struct Tried {
    /// Every instance that failed this request since its last wait.
    all: Vec<InstanceId>,
    /// Those of them that refused the connection (nothing was sent).
    refused: Vec<InstanceId>,
    /// The counters of the release that failed it last: a hold that ends in 503 after that counts there.
    last: Option<Arc<ReleaseStats>>,
}

impl Tried {
    pub(crate) fn failed(
        &mut self,
        instance: &InstanceId,
        refused: bool,
        stats: &Arc<ReleaseStats>,
    ) {
        self.all.push(instance.clone());
        if refused {
            self.refused.push(instance.clone());
        }
        self.last = Some(Arc::clone(stats));
    }
}

/// Picks an instance of the route for one attempt. A request that tried every instance goes back to
/// those that took its connection (a replay on a fresh connection); when none is left, or the route
/// has no ready instance at all, it holds (see the module) and picks as soon as one shows.
pub(crate) async fn pick(
    proxy: &Proxy,
    route_name: &RouteName,
    host: &str,
    path: &str,
    tried: &mut Tried,
    hold: &mut Hold,
) -> Result<InFlightGuard, Failure> {
    let inner = proxy.inner();
    // Fast path: one snapshot load, no allocation, no lock.
    let route_live = {
        let table = inner.table.load();
        let Some(route) = table.route_for(host, path) else {
            return Err(no_route(host, path));
        };
        if let Some(guard) = route.pick(&tried.all) {
            return Ok(guard);
        }
        if !tried.all.is_empty()
            && let Some(guard) = route.pick(&tried.refused)
        {
            return Ok(guard);
        }
        Arc::clone(&route.live)
    };
    // Boxed: the waiting is rare, and its state (a watch, a timer) would otherwise size the future of
    // every request, which is moved whole on its way into its task.
    Box::pin(hold_then_pick(
        inner, route_live, route_name, host, path, tried, hold,
    ))
    .await
}

/// `pick` once the route has no instance for the request: waits in the queue for one.
async fn hold_then_pick(
    inner: &ProxyInner,
    route_live: Arc<RouteLive>,
    route_name: &RouteName,
    host: &str,
    path: &str,
    tried: &mut Tried,
    hold: &mut Hold,
) -> Result<InFlightGuard, Failure> {
    let _leave = enter_queue(inner, &route_live, route_name)?;
    let deadline = hold.deadline();
    // After refused connections, look again at each probe interval too: an instance may answer again
    // (a restarted process) before passive health took it out, and then no change wakes us.
    let recheck = (!tried.refused.is_empty()).then_some(inner.config.passive_health.probe_interval);
    let mut look = recheck.is_none();
    loop {
        // Subscribe before looking, so a swap between the look and the wait still wakes us.
        let mut changed = inner.changed.subscribe();
        if look {
            let table = inner.table.load();
            let Some(route) = table.route_for(host, path) else {
                return Err(no_route(host, path));
            };
            if let Some(guard) = route.pick(&[]) {
                *tried = Tried::default();
                return Ok(guard);
            }
        }
        look = true;
        let now = Instant::now();
        if now >= deadline {
            return Err((
                ProxyError::NoReadyInstance {
                    route: route_name.clone(),
                    waited: hold.waited(),
                    retry_after: inner.config.waiting.retry_after,
                },
                tried.last.clone(),
            ));
        }
        let wake = recheck.map_or(deadline, |every| deadline.min(now + every));
        let _ = tokio::time::timeout_at(wake, changed.changed()).await;
    }
}

/// Holds a request of a paused route until the pause ends, by its own end time or by a new snapshot
/// that lifts it; past the route's hold the request gets 503.
pub(crate) async fn while_paused(
    proxy: &Proxy,
    route_name: &RouteName,
    host: &str,
    path: &str,
    until: SystemTime,
    hold: &mut Hold,
) -> Result<(), Failure> {
    tracing::debug!(
        message = "Request held by a pause.",
        route = %route_name,
        until_unix_ms = crate::edge::unix_ms(until)
    );
    let inner = proxy.inner();
    let route_live = {
        let table = inner.table.load();
        let Some(route) = table.route_for(host, path) else {
            return Err(no_route(host, path));
        };
        Arc::clone(&route.live)
    };
    let _leave = enter_queue(inner, &route_live, route_name)?;
    let deadline = hold.deadline();
    loop {
        // Subscribe before looking, so a swap between the look and the wait still wakes us.
        let mut changed = inner.changed.subscribe();
        let until = {
            let table = inner.table.load();
            let Some(route) = table.route_for(host, path) else {
                return Err(no_route(host, path));
            };
            match route.spec().edge.paused_until {
                Some(paused_until) if paused_until > SystemTime::now() => paused_until,
                _ => return Ok(()),
            }
        };
        let pause_left = until.duration_since(SystemTime::now()).unwrap_or_default();
        let now = Instant::now();
        if now >= deadline {
            return Err((
                ProxyError::PausedTooLong {
                    route: route_name.clone(),
                    waited: hold.waited(),
                    retry_after: inner.config.waiting.retry_after,
                },
                None,
            ));
        }
        let wake = deadline.min(now + pause_left);
        // A new snapshot or the pause's own end: either way, look again.
        let _ = tokio::time::timeout_at(wake, changed.changed()).await;
    }
}

/// Takes a place in the route's waiting queue, or answers 503 when it is full.
fn enter_queue<'a>(
    inner: &ProxyInner,
    route_live: &'a RouteLive,
    route_name: &RouteName,
) -> Result<LeaveQueue<'a>, Failure> {
    let waiting = &inner.config.waiting;
    if !route_live.try_enter_queue(waiting.max_waiting) {
        return Err((
            ProxyError::QueueFull {
                route: route_name.clone(),
                max_waiting: waiting.max_waiting,
                retry_after: waiting.retry_after,
            },
            None,
        ));
    }
    Ok(LeaveQueue(route_live))
}

/// Leaves a route's waiting queue when dropped (also when the request's future is dropped because
/// its client went away).
struct LeaveQueue<'a>(&'a RouteLive);

impl Drop for LeaveQueue<'_> {
    fn drop(&mut self) {
        self.0.leave_queue();
    }
}

pub(crate) fn no_route(host: &str, path: &str) -> Failure {
    (
        ProxyError::NoRoute {
            host: host.to_owned(),
            path: path.to_owned(),
        },
        None,
    )
}
