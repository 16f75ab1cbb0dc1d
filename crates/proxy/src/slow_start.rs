//! Slow start: a release weighted in on a route that already serves takes its share in steps over the
//! route's `slow_start_ms` (10 steps), while the releases that served before keep the rest, their
//! instances still routed, until the ramp ends; only then are they drained. As HAProxy's `slowstart`
//! or Envoy's slow-start mode, so that a switch does not hand a new process all of the route's load in
//! one moment.
//!
//! It lives beside the control socket, not on the request path: each step is an ordinary `desired::apply`
//! of an intermediate state (weights interpolated, the leaving instances still listed), so `Route::pick`
//! only ever sees plain weights in a snapshot, and a step costs what a weight change costs.
//!
//! Rules:
//! - A ramp starts when a state weights in, on a route with `slow_start_ms` above 0 that serves (a pool of
//!   weight above 0 with an instance in the state applied last), a release that had weight 0 or no pool
//!   there. It goes from the weights applied last to the state's weights.
//! - A later state with the same weights on the route (the same releases, the same weights; its instances
//!   may differ: one that failed its health check is left out and drained at once) carries the ramp on
//!   toward that state. Any other weights end the ramp at once: that state is applied as it is (a
//!   rollback during the ramp gives all traffic back at once; the release it goes back to is still routed).
//! - What is saved (`routes.json`) is always the state as the agent sent it: a proxy that restarts, or a
//!   successor, applies it at once. An agent that stops (even `kill -9`) in the middle of a ramp leaves
//!   the proxy to finish it on its own.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::desired::{DesiredPool, DesiredRoute, DesiredState};

/// Steps of a ramp: the new release's share grows by a tenth of the way at each.
pub(crate) const STEPS: u32 = 10;

/// The ramps in progress and the state they lead to.
#[derive(Debug, Default)]
pub(crate) struct SlowStart {
    /// The state last applied to the proxy (intermediate while a ramp runs).
    applied: Option<DesiredState>,
    /// The state last received: where the ramps lead.
    desired: Option<DesiredState>,
    /// Ramps in progress, by desired route name.
    ramps: BTreeMap<String, Ramp>,
    /// The routes whose ramp the last `receive` started and whose first step is not applied yet.
    starting: Vec<String>,
}

#[derive(Debug, Clone)]
struct Ramp {
    started: Instant,
    duration: Duration,
    /// The route's pools of weight above 0 when the ramp started, with their instances.
    from: Vec<DesiredPool>,
    /// The weights the ramp leads to: `(release, weight)` of the pools above 0 with instances.
    target: Vec<(String, u8)>,
}

impl SlowStart {
    /// `applied`: the state the proxy runs now (the saved one it reloaded at its start, if any).
    pub(crate) fn new(applied: Option<DesiredState>) -> SlowStart {
        SlowStart {
            applied,
            desired: None,
            ramps: BTreeMap::new(),
            starting: Vec::new(),
        }
    }

    /// Takes a new state from the agent: starts, carries on or ends each route's ramp, and answers the
    /// state to apply now (the first step of a new ramp, or `desired` itself when nothing ramps).
    pub(crate) fn receive(&mut self, desired: DesiredState, now: Instant) -> DesiredState {
        let mut ramps = BTreeMap::new();
        self.starting.clear();
        for route in &desired.routes {
            let target = target_weights(route);
            if let Some(ramp) = self.ramps.remove(&route.name)
                && ramp.target == target
                && now < ramp.started + ramp.duration
            {
                ramps.insert(route.name.clone(), ramp);
                continue;
            }
            if route.slow_start_ms == 0 {
                continue;
            }
            let Some(before) = self
                .applied
                .as_ref()
                .and_then(|applied| applied.routes.iter().find(|r| r.name == route.name))
            else {
                continue;
            };
            let from: Vec<DesiredPool> = before
                .pools
                .iter()
                .filter(|pool| pool.weight > 0 && pool.instances.iter().any(|i| i.ready))
                .cloned()
                .collect();
            if from.is_empty() {
                // Nothing serves: a first release takes the route at once (nothing to share with).
                continue;
            }
            let newcomer = target
                .iter()
                .any(|(release, _)| !from.iter().any(|pool| pool.release == *release));
            if newcomer {
                self.starting.push(route.name.clone());
                ramps.insert(
                    route.name.clone(),
                    Ramp {
                        started: now,
                        duration: Duration::from_millis(route.slow_start_ms),
                        from,
                        target,
                    },
                );
            }
        }
        self.ramps = ramps;
        self.desired = Some(desired);
        self.current(now)
    }

    /// The state to apply at `now`: the last received one with each ramping route at its step. Ramps
    /// that reached their end are dropped here (their route is then as received).
    pub(crate) fn current(&mut self, now: Instant) -> DesiredState {
        let Some(desired) = &self.desired else {
            return DesiredState::default();
        };
        self.ramps
            .retain(|_, ramp| progress(ramp, now) < STEPS && !ramp.target.is_empty());
        let mut state = desired.clone();
        let listed: BTreeSet<String> = desired
            .routes
            .iter()
            .flat_map(|route| route.pools.iter())
            .flat_map(|pool| pool.instances.iter().map(|instance| instance.id.clone()))
            .collect();
        for route in &mut state.routes {
            if let Some(ramp) = self.ramps.get(&route.name) {
                step(route, ramp, progress(ramp, now), &listed);
            }
        }
        state
    }

    /// When the next step is due, if a ramp runs.
    pub(crate) fn next_step(&self, now: Instant) -> Option<Instant> {
        self.ramps
            .values()
            .map(|ramp| {
                // Step k (1-based) starts (k - 1) steps after the ramp's start.
                let step = (ramp.duration / STEPS).max(Duration::from_millis(1));
                ramp.started + step * progress(ramp, now)
            })
            .min()
    }

    /// Whether a ramp runs.
    pub(crate) fn ramping(&self) -> bool {
        !self.ramps.is_empty()
    }

    /// Records what was applied at `now` (the intermediate state, or the final one). The ramps that the
    /// last `receive` began start their clock here, with their first step applied: that step waits for
    /// the new instances' warm (up to `warm::WARM_BOUND`, longer than a short ramp) and for the state's
    /// save; counted from the state's arrival, a slow warm took the ramp's first steps, and the next step
    /// jumped most of the way at once.
    pub(crate) fn applied(&mut self, state: DesiredState, now: Instant) {
        self.applied = Some(state);
        for name in std::mem::take(&mut self.starting) {
            if let Some(ramp) = self.ramps.get_mut(&name) {
                ramp.started = now;
            }
        }
    }

    /// Ends every ramp: the state received last is applied as it is from now on (when a step cannot be
    /// applied, or the proxy hands over to a successor).
    pub(crate) fn end_ramps(&mut self) -> Option<DesiredState> {
        self.ramps.clear();
        self.desired.clone()
    }
}

/// The weights a route's state leads to: its pools of weight above 0 that have an instance.
fn target_weights(route: &DesiredRoute) -> Vec<(String, u8)> {
    route
        .pools
        .iter()
        .filter(|pool| pool.weight > 0 && !pool.instances.is_empty())
        .map(|pool| (pool.release.clone(), pool.weight))
        .collect()
}

/// Steps done at `now`: 1 when the ramp starts, `STEPS` at its end.
fn progress(ramp: &Ramp, now: Instant) -> u32 {
    let step = (ramp.duration / STEPS).max(Duration::from_millis(1));
    let elapsed = now.saturating_duration_since(ramp.started);
    let done = elapsed.as_nanos() / step.as_nanos() + 1;
    u32::try_from(done).unwrap_or(STEPS).min(STEPS)
}

/// The route at step `k` of `STEPS`: each release's share goes `k / STEPS` of the way from its share
/// when the ramp started to its share in the target; the releases leaving keep their pools (and
/// instances) until the end, each with a weight of at least 1 while it has a share.
fn step(route: &mut DesiredRoute, ramp: &Ramp, k: u32, listed: &BTreeSet<String>) {
    let p = f64::from(k) / f64::from(STEPS);
    let from_total: f64 = ramp.from.iter().map(|pool| f64::from(pool.weight)).sum();
    let target_total: f64 = ramp
        .target
        .iter()
        .map(|(_, weight)| f64::from(*weight))
        .sum();
    let share = |release: &str| {
        let from = ramp
            .from
            .iter()
            .find(|pool| pool.release == release)
            .map_or(0.0, |pool| f64::from(pool.weight) / from_total.max(1.0));
        let target = ramp
            .target
            .iter()
            .find(|(r, _)| r == release)
            .map_or(0.0, |(_, weight)| {
                f64::from(*weight) / target_total.max(1.0)
            });
        (1.0 - p) * from + p * target
    };
    let weight = |share: f64| {
        if share <= 0.0 {
            0
        } else {
            // In 1..=100 by the clamp, so the cast cannot truncate.
            (share * 100.0).round().clamp(1.0, 100.0) as u8
        }
    };
    for pool in &mut route.pools {
        if pool.instances.is_empty() && !ramp.from.iter().any(|f| f.release == pool.release) {
            continue;
        }
        pool.weight = weight(share(&pool.release));
    }
    for from in &ramp.from {
        let kept: Vec<_> = from
            .instances
            .iter()
            .filter(|instance| !listed.contains(&instance.id))
            .cloned()
            .collect();
        match route
            .pools
            .iter_mut()
            .find(|pool| pool.release == from.release)
        {
            Some(pool) => pool.instances.extend(kept),
            None => route.pools.push(DesiredPool {
                release: from.release.clone(),
                weight: weight(share(&from.release)),
                instances: kept,
            }),
        }
    }
}

#[cfg(test)]
mod tests;
