//! Proxies that follow the agent (`rollway proxy --follow`, issue 17: the ingress proxies of a
//! swarm): what each last reported of its counters, so the analysis, alerts and `/metrics` see the
//! traffic of every proxy, not only the agent's own.
//!
//! A follower reports its cumulative per-release counters every second with a random
//! `incarnation` per process start. The agent keeps one series per follower life, keyed by
//! (id, incarnation): a restart (a new incarnation) starts a new series beside the old one, whose
//! counts stay, and two processes that were given one id (clones of one server, a copied
//! `--id`) are two series, never one whose counters seem to jump back and forth (which would add
//! them up again at every report). Within a life, a counter that went down (a restart the
//! incarnation did not tell) moves the last report into `earlier`, so the sum never goes down and
//! never counts a request twice. When a new incarnation of an id appears, the other lives of that
//! id count no request in flight (a dead process has none; a live duplicate's next report brings
//! its own back), and two lives of one id that keep reporting are logged once. A life silent for
//! [`STALE_AFTER`] is retired: its counts stay in the sum (without its in-flight requests), its
//! entry is dropped, so the map is as large as the live followers ([`MAX_FOLLOWERS`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use client::wire::{ProxyId, ProxyReport};
use proxy::{ObservedReleaseStats, sum_stats};

/// A follower that has not reported for this long is retired (its counts kept, its in-flight
/// requests no longer counted). Followers report every second.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// A life that reported within this is taken as running (followers report every second).
pub const REPORTING: Duration = Duration::from_secs(3);

/// The most followers the agent tracks at once; one more is refused until one is retired.
pub const MAX_FOLLOWERS: usize = 256;

/// The followers' counters. Behind a std `Mutex` in `ProxyLink`: short, never held across an await.
#[derive(Debug, Default)]
pub struct Followers {
    /// One entry per follower life: (id, incarnation).
    live: BTreeMap<(ProxyId, String), Follower>,
    /// The counts of retired followers, summed.
    retired: Vec<ObservedReleaseStats>,
}

#[derive(Debug)]
struct Follower {
    /// What this life counted before its counters went down, summed (in-flight 0).
    earlier: Vec<ObservedReleaseStats>,
    last: Vec<ObservedReleaseStats>,
    seen: Instant,
    /// Two lives of this id reported after each other's last report: logged once.
    duplicate_logged: bool,
    /// The generation of the TLS set it serves (`ProxyTls::generation`).
    tls_generation: u64,
}

/// A follower the agent shows (`GET /v1/agent`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerSeen {
    pub proxy: ProxyId,
    pub seen_ago: Duration,
}

/// A report refused: the agent already tracks [`MAX_FOLLOWERS`] others.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the agent already follows {MAX_FOLLOWERS} proxies; `{proxy}` is refused until one of them has been silent for {stale_s}s",
    stale_s = STALE_AFTER.as_secs()
)]
pub struct TooManyFollowers {
    pub proxy: ProxyId,
}

impl Followers {
    /// Takes a follower's report at `now`.
    pub fn report(
        &mut self,
        report: ProxyReport<ObservedReleaseStats>,
        now: Instant,
    ) -> Result<(), TooManyFollowers> {
        self.expire(now);
        let key = (report.proxy, report.incarnation);
        if !self.live.contains_key(&key) && self.live.len() >= MAX_FOLLOWERS {
            return Err(TooManyFollowers { proxy: key.0 });
        }
        if !self.live.contains_key(&key) {
            // A new life of this id: the others of the id are dead (a restart) or duplicates.
            for ((proxy, _), other) in self.live.iter_mut() {
                if *proxy == key.0 {
                    other.last = without_in_flight(std::mem::take(&mut other.last));
                }
            }
        } else {
            // This life reports again: another life of the id that reported since this one's last
            // report is a second process with the same id.
            let previous = self.live.get(&key).map_or(now, |follower| follower.seen);
            let duplicate = self.live.iter().any(|((proxy, incarnation), other)| {
                *proxy == key.0 && *incarnation != key.1 && other.seen > previous
            });
            if let Some(follower) = self.live.get_mut(&key)
                && duplicate
                && !follower.duplicate_logged
            {
                follower.duplicate_logged = true;
                tracing::warn!(
                    message = "Two running proxies report under one id; each is counted, but give each its own `--id` to tell them apart.",
                    proxy = %key.0,
                );
            }
        }
        let follower = self.live.entry(key).or_insert_with(|| Follower {
            earlier: Vec::new(),
            last: Vec::new(),
            seen: now,
            duplicate_logged: false,
            tls_generation: 0,
        });
        let went_down = follower.last.iter().any(|before| {
            let after = report
                .releases
                .iter()
                .find(|after| after.release == before.release);
            after.is_none_or(|after| {
                after.total_requests() < before.total_requests()
                    || after.latency.count < before.latency.count
            })
        });
        if went_down {
            follower.earlier = without_in_flight(sum_stats(
                follower.earlier.iter().chain(follower.last.iter()),
            ));
        }
        follower.tls_generation = report.tls_generation;
        follower.last = report.releases;
        follower.seen = now;
        Ok(())
    }

    /// Every follower's counts (live and retired), one entry per release and follower life, to be
    /// summed with the agent's own proxy's (`proxy::sum_stats`).
    pub fn readings(&mut self, now: Instant) -> Vec<ObservedReleaseStats> {
        self.expire(now);
        let mut readings = self.retired.clone();
        for follower in self.live.values() {
            readings.extend(follower.earlier.iter().cloned());
            readings.extend(follower.last.iter().cloned());
        }
        readings
    }

    /// The live followers and how long ago each reported: one line per id (its latest life).
    pub fn seen(&mut self, now: Instant) -> Vec<FollowerSeen> {
        self.expire(now);
        let mut latest: BTreeMap<&ProxyId, Instant> = BTreeMap::new();
        for ((proxy, _), follower) in &self.live {
            let seen = latest.entry(proxy).or_insert(follower.seen);
            *seen = (*seen).max(follower.seen);
        }
        latest
            .into_iter()
            .map(|(proxy, seen)| FollowerSeen {
                proxy: proxy.clone(),
                seen_ago: now.saturating_duration_since(seen),
            })
            .collect()
    }

    /// The live followers that do not serve TLS set `generation` (or a newer one) yet. Only lives
    /// that reported within [`REPORTING`] count: the earlier life of a restarted follower is dead,
    /// not behind.
    pub fn behind_tls(&mut self, generation: u64, now: Instant) -> Vec<ProxyId> {
        self.expire(now);
        let mut behind: Vec<ProxyId> = self
            .live
            .iter()
            .filter(|(_, follower)| {
                follower.tls_generation < generation
                    && now.saturating_duration_since(follower.seen) < REPORTING
            })
            .map(|((proxy, _), _)| proxy.clone())
            .collect();
        behind.dedup();
        behind
    }

    fn expire(&mut self, now: Instant) {
        let stale: Vec<(ProxyId, String)> = self
            .live
            .iter()
            .filter(|(_, follower)| now.saturating_duration_since(follower.seen) >= STALE_AFTER)
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            if let Some(follower) = self.live.remove(&key) {
                tracing::info!(
                    message = "A following proxy stopped reporting; its counts are kept.",
                    proxy = %key.0,
                );
                self.retired = without_in_flight(sum_stats(
                    self.retired
                        .iter()
                        .chain(follower.earlier.iter())
                        .chain(follower.last.iter()),
                ));
            }
        }
    }
}

fn without_in_flight(mut stats: Vec<ObservedReleaseStats>) -> Vec<ObservedReleaseStats> {
    for release in &mut stats {
        release.in_flight = 0;
    }
    stats
}

#[cfg(test)]
mod tests;
