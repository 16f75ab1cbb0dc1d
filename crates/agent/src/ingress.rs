//! Proxies that follow the agent (`rollway proxy --follow`, issue 17: the ingress proxies of a
//! swarm): what each last reported of its counters, so the analysis, alerts and `/metrics` see the
//! traffic of every proxy, not only the agent's own.
//!
//! A follower reports its cumulative per-release counters every second with a random
//! `incarnation` per process start. The agent keeps, per follower, the last report and what the
//! follower's earlier lives counted (`earlier`): a new incarnation, or a counter that went down
//! (a restart the incarnation did not tell), starts a new series and keeps the old one, so the sum
//! never goes down and never counts a request twice. A follower silent for [`STALE_AFTER`] is
//! retired: its counts stay in the sum (without its in-flight requests), its entry is dropped, so
//! the map is as large as the live followers ([`MAX_FOLLOWERS`]).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use client::wire::{ProxyId, ProxyReport};
use proxy::{ObservedReleaseStats, sum_stats};

/// A follower that has not reported for this long is retired (its counts kept, its in-flight
/// requests no longer counted). Followers report every second.
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// The most followers the agent tracks at once; one more is refused until one is retired.
pub const MAX_FOLLOWERS: usize = 256;

/// The followers' counters. Behind a std `Mutex` in `ProxyLink`: short, never held across an await.
#[derive(Debug, Default)]
pub struct Followers {
    live: BTreeMap<ProxyId, Follower>,
    /// The counts of retired followers, summed.
    retired: Vec<ObservedReleaseStats>,
}

#[derive(Debug)]
struct Follower {
    incarnation: String,
    /// What its earlier lives counted, summed (in-flight 0).
    earlier: Vec<ObservedReleaseStats>,
    last: Vec<ObservedReleaseStats>,
    seen: Instant,
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
        if !self.live.contains_key(&report.proxy) && self.live.len() >= MAX_FOLLOWERS {
            return Err(TooManyFollowers {
                proxy: report.proxy,
            });
        }
        let follower = self.live.entry(report.proxy).or_insert_with(|| Follower {
            incarnation: report.incarnation.clone(),
            earlier: Vec::new(),
            last: Vec::new(),
            seen: now,
            tls_generation: 0,
        });
        let restarted = follower.incarnation != report.incarnation
            || follower.last.iter().any(|before| {
                let after = report
                    .releases
                    .iter()
                    .find(|after| after.release == before.release);
                after.is_none_or(|after| {
                    after.total_requests() < before.total_requests()
                        || after.latency.count < before.latency.count
                })
            });
        if restarted {
            follower.earlier = without_in_flight(sum_stats(
                follower.earlier.iter().chain(follower.last.iter()),
            ));
        }
        follower.incarnation = report.incarnation;
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

    /// The live followers and how long ago each reported.
    pub fn seen(&mut self, now: Instant) -> Vec<FollowerSeen> {
        self.expire(now);
        self.live
            .iter()
            .map(|(proxy, follower)| FollowerSeen {
                proxy: proxy.clone(),
                seen_ago: now.saturating_duration_since(follower.seen),
            })
            .collect()
    }

    /// The live followers that do not serve TLS set `generation` (or a newer one) yet.
    pub fn behind_tls(&mut self, generation: u64, now: Instant) -> Vec<ProxyId> {
        self.expire(now);
        self.live
            .iter()
            .filter(|(_, follower)| follower.tls_generation < generation)
            .map(|(proxy, _)| proxy.clone())
            .collect()
    }

    fn expire(&mut self, now: Instant) {
        let stale: Vec<ProxyId> = self
            .live
            .iter()
            .filter(|(_, follower)| now.saturating_duration_since(follower.seen) >= STALE_AFTER)
            .map(|(proxy, _)| proxy.clone())
            .collect();
        for proxy in stale {
            if let Some(follower) = self.live.remove(&proxy) {
                tracing::info!(
                    message = "A following proxy stopped reporting; its counts are kept.",
                    proxy = %proxy,
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
