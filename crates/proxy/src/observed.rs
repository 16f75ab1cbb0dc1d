//! `ObservedState`: what a proxy routes right now (routes, weights, instances and their life-cycle state)
//! and each release's counters, as plain serialisable data for the control socket and the agent.
//!
//! Read from one routing snapshot plus the stats counters; it changes nothing. The wire types here mirror
//! the proxy's own (`ReleaseStatsSnapshot`, `InstanceState`) so the JSON stays stable when those change.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::control::Proxy;
use crate::desired::desired_name;
use crate::ids::InstanceState;
use crate::stats::ReleaseStatsSnapshot;

/// Everything a proxy routes, and every release's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedState {
    /// One entry per (route, path), sorted by route name then path.
    pub routes: Vec<ObservedRoute>,
    /// Sorted by release; requests that reached no release are under release `""`, last.
    pub releases: Vec<ObservedReleaseStats>,
}

/// One route and one of its path prefixes (a route with several paths has an entry per path).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRoute {
    /// The route's name in the desired state.
    pub name: String,
    pub hosts: Vec<String>,
    pub path: String,
    /// Share of new requests per release pool; a pool exists while it has an instance.
    pub weights: Vec<ObservedWeight>,
    /// Instances still listed, whatever their state; an instance that was removed is absent.
    pub instances: Vec<ObservedInstance>,
    /// Requests waiting for a ready instance now.
    pub waiting: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedWeight {
    pub release: String,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedInstance {
    /// The instance's id in the desired state.
    pub id: String,
    pub release: String,
    pub addr: SocketAddr,
    pub state: ObservedInstanceState,
    /// Requests and upgraded connections open on it now.
    pub in_flight: usize,
    /// Whether passive health took it out of traffic after failed connections.
    pub down: bool,
}

/// An instance's life cycle as the proxy sees it; removed instances are not listed at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObservedInstanceState {
    /// Added, not ready yet: takes no request.
    Starting,
    Ready,
    /// Takes no new request; in-flight ones finish.
    Draining,
    /// Nothing in flight any more; removed right after.
    Drained,
}

/// One release's counters since this proxy process started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedReleaseStats {
    pub release: String,
    pub requests: ObservedStatusClasses,
    /// Count per error kind (the `/metrics` `kind` labels); every kind is listed, seen or not.
    pub errors: BTreeMap<String, u64>,
    pub in_flight: u64,
    pub latency: ObservedLatency,
}

/// Answers by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedStatusClasses {
    pub informational: u64,
    pub success: u64,
    pub redirection: u64,
    pub client_error: u64,
    pub server_error: u64,
}

/// Time to the answer's head. Quantiles are histogram bucket bounds (at most ~41% above the true value).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedLatency {
    pub count: u64,
    pub sum_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    /// Cumulative counts per finite histogram bucket, `(upper bound in µs, count)`, ascending.
    /// Two readings subtracted give the histogram of the requests in between, so a reader can
    /// compute quantiles over a window instead of the release's whole life.
    #[serde(default)]
    pub buckets: Vec<(u64, u64)>,
}

/// An `ObservedReleaseStats` as plain counts again, for `Proxy::carry_over_stats`.
pub(crate) struct ObservedCounts {
    pub requests: crate::stats::StatusClassCounts,
    pub errors: Vec<(crate::ids::ErrorKind, u64)>,
    /// Per bucket, the overflow bucket last.
    pub latency_counts: Vec<u64>,
    pub latency_sum: std::time::Duration,
}

impl ObservedReleaseStats {
    pub(crate) fn counts(&self) -> ObservedCounts {
        let requests = crate::stats::StatusClassCounts {
            informational: self.requests.informational,
            success: self.requests.success,
            redirection: self.requests.redirection,
            client_error: self.requests.client_error,
            server_error: self.requests.server_error,
        };
        let errors = crate::ids::ErrorKind::ALL
            .iter()
            .map(|kind| (*kind, self.errors.get(kind.as_str()).copied().unwrap_or(0)))
            .collect();
        // A reading without this build's buckets (an older proxy) carries no latency at all rather
        // than latencies in the wrong buckets.
        let same_buckets = self.latency.buckets.len() == crate::stats::LATENCY_BUCKETS;
        let mut latency_counts = Vec::with_capacity(crate::stats::LATENCY_BUCKETS + 1);
        if same_buckets {
            let mut below = 0;
            for (_, cumulative) in &self.latency.buckets {
                latency_counts.push(cumulative.saturating_sub(below));
                below = (*cumulative).max(below);
            }
            latency_counts.push(self.latency.count.saturating_sub(below));
        }
        ObservedCounts {
            requests,
            errors,
            latency_counts,
            latency_sum: if same_buckets {
                std::time::Duration::from_micros(self.latency.sum_us)
            } else {
                std::time::Duration::ZERO
            },
        }
    }
}

impl ObservedState {
    /// Reads `proxy` now.
    pub fn read(proxy: &Proxy) -> ObservedState {
        let table = proxy.routing_table();
        let waiting: BTreeMap<String, usize> = proxy
            .waiting()
            .into_iter()
            .map(|(route, n_waiting)| (route.to_string(), n_waiting))
            .collect();
        let mut routes: Vec<ObservedRoute> = table
            .routes()
            .iter()
            .map(|route| ObservedRoute {
                name: desired_name(route.name().as_str()).to_owned(),
                hosts: route.spec().hosts.clone(),
                path: route.spec().path_prefix.clone(),
                weights: route
                    .pools()
                    .iter()
                    .map(|pool| ObservedWeight {
                        release: pool.release().to_string(),
                        weight: pool.weight(),
                    })
                    .collect(),
                instances: route
                    .pools()
                    .iter()
                    .flat_map(|pool| pool.instances().iter())
                    .map(|instance| ObservedInstance {
                        id: desired_name(instance.id().as_str()).to_owned(),
                        release: instance.release().to_string(),
                        addr: instance.addr(),
                        state: instance.state().into(),
                        in_flight: instance.in_flight(),
                        down: instance.is_down(),
                    })
                    .collect(),
                waiting: waiting
                    .get(route.name().as_str())
                    .copied()
                    .unwrap_or_default(),
            })
            .collect();
        routes.sort_by(|a, b| (&a.name, &a.path).cmp(&(&b.name, &b.path)));
        ObservedState {
            routes,
            releases: proxy
                .all_stats()
                .iter()
                .map(ObservedReleaseStats::from)
                .collect(),
        }
    }

    /// The instance with this desired id, on whichever route (the first path's entry for a route with
    /// several paths); `None` once it was removed.
    pub fn instance(&self, id: &str) -> Option<&ObservedInstance> {
        self.routes
            .iter()
            .flat_map(|route| route.instances.iter())
            .find(|instance| instance.id == id)
    }

    pub fn route(&self, name: &str) -> Option<&ObservedRoute> {
        self.routes.iter().find(|route| route.name == name)
    }

    pub fn release(&self, release: &str) -> Option<&ObservedReleaseStats> {
        self.releases.iter().find(|stats| stats.release == release)
    }
}

/// The counters of several proxies (or several lives of one) added release by release, sorted by
/// release: requests, errors, in-flight and the latency histogram, its quantiles recomputed from
/// the summed histogram (the same rule as one proxy's). The one way counters are added up: the
/// agent sums its own proxy's and those that follow it (`rollway proxy --follow`) with it.
pub fn sum_stats<'a>(
    readings: impl IntoIterator<Item = &'a ObservedReleaseStats>,
) -> Vec<ObservedReleaseStats> {
    let mut sums: BTreeMap<&'a str, (crate::stats::ReleaseStats, u64)> = BTreeMap::new();
    for reading in readings {
        let (stats, in_flight) = sums.entry(reading.release.as_str()).or_insert_with(|| {
            (
                crate::stats::ReleaseStats::new(crate::ids::ReleaseId::new(
                    reading.release.as_str(),
                )),
                0,
            )
        });
        let counts = reading.counts();
        stats.carry_over(
            counts.requests,
            &counts.errors,
            &counts.latency_counts,
            counts.latency_sum,
        );
        *in_flight = in_flight.saturating_add(reading.in_flight);
    }
    sums.into_values()
        .map(|(stats, in_flight)| {
            let mut observed = ObservedReleaseStats::from(&stats.snapshot());
            observed.in_flight = in_flight;
            observed
        })
        .collect()
}

impl ObservedReleaseStats {
    /// All answers counted, whatever their class.
    pub fn total_requests(&self) -> u64 {
        let r = &self.requests;
        r.informational + r.success + r.redirection + r.client_error + r.server_error
    }
}

impl From<InstanceState> for ObservedInstanceState {
    fn from(state: InstanceState) -> Self {
        match state {
            InstanceState::Starting => ObservedInstanceState::Starting,
            InstanceState::Ready => ObservedInstanceState::Ready,
            InstanceState::Draining => ObservedInstanceState::Draining,
            InstanceState::Drained => ObservedInstanceState::Drained,
        }
    }
}

impl From<&ReleaseStatsSnapshot> for ObservedReleaseStats {
    fn from(snapshot: &ReleaseStatsSnapshot) -> Self {
        let micros =
            |duration: std::time::Duration| u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let r = &snapshot.requests;
        ObservedReleaseStats {
            release: snapshot.release.to_string(),
            requests: ObservedStatusClasses {
                informational: r.informational,
                success: r.success,
                redirection: r.redirection,
                client_error: r.client_error,
                server_error: r.server_error,
            },
            errors: snapshot
                .errors
                .iter()
                .map(|(kind, count)| (kind.as_str().to_owned(), *count))
                .collect(),
            in_flight: snapshot.in_flight,
            latency: ObservedLatency {
                count: snapshot.latency.count,
                sum_us: micros(snapshot.latency.sum),
                p50_us: micros(snapshot.latency.p50),
                p90_us: micros(snapshot.latency.p90),
                p99_us: micros(snapshot.latency.p99),
                buckets: snapshot
                    .latency
                    .cumulative_buckets
                    .iter()
                    .map(|(bound, count)| (micros(*bound), *count))
                    .collect(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ids::ErrorKind;
    use crate::ids::ReleaseId;
    use crate::stats::ReleaseStats;

    /// Two proxies' counters add up per release: classes, errors, in-flight, the histogram, and the
    /// quantiles are those of the summed histogram (a slow proxy's p99 is not averaged away).
    #[test]
    fn counters_of_several_proxies_add_up_per_release() {
        let one = ReleaseStats::new(ReleaseId::new("app/prod@2"));
        for _ in 0..98 {
            one.record_response(200, Duration::from_millis(1));
        }
        let other = ReleaseStats::new(ReleaseId::new("app/prod@2"));
        other.record_response(503, Duration::from_secs(2));
        other.record_response(503, Duration::from_secs(2));
        other.record_error(ErrorKind::Connect);
        other.in_flight_started();
        let third = ReleaseStats::new(ReleaseId::new("app/prod@1"));
        third.record_response(200, Duration::from_millis(1));
        let readings: Vec<ObservedReleaseStats> = [&one, &other, &third]
            .into_iter()
            .map(|stats| ObservedReleaseStats::from(&stats.snapshot()))
            .collect();

        let sums = sum_stats(&readings);

        assert_eq!(
            sums.iter().map(|s| s.release.as_str()).collect::<Vec<_>>(),
            ["app/prod@1", "app/prod@2"]
        );
        let two = &sums[1];
        assert_eq!(two.requests.success, 98);
        assert_eq!(two.requests.server_error, 2);
        assert_eq!(two.total_requests(), 100);
        assert_eq!(two.errors.get(ErrorKind::Connect.as_str()), Some(&1));
        assert_eq!(two.in_flight, 1);
        assert_eq!(two.latency.count, 100);
        assert!(two.latency.p99_us >= 2_000_000, "{:?}", two.latency);
        assert!(two.latency.p50_us <= 2_000, "{:?}", two.latency);
        assert_eq!(sums[0].total_requests(), 1);
        assert!(sum_stats(&[]).is_empty());
    }

    /// A hot restart carries counters over through their JSON form: the successor's counters read
    /// exactly as the predecessor's did (in-flight requests stay with the predecessor).
    #[test]
    fn counters_carried_over_read_the_same() {
        let before = ReleaseStats::new(ReleaseId::new("app/prod@1"));
        for (status, millis) in [
            (200, 1),
            (200, 3),
            (503, 40),
            (301, 7),
            (404, 2),
            (200, 200_000),
        ] {
            before.record_response(status, Duration::from_millis(millis));
        }
        before.record_error(ErrorKind::ALL[0]);
        before.in_flight_started();
        let observed = ObservedReleaseStats::from(&before.snapshot());
        let json = serde_json::to_string(&observed).expect("to JSON");
        let observed: ObservedReleaseStats = serde_json::from_str(&json).expect("from JSON");

        let after = ReleaseStats::new(ReleaseId::new("app/prod@1"));
        let counts = observed.counts();
        after.carry_over(
            counts.requests,
            &counts.errors,
            &counts.latency_counts,
            counts.latency_sum,
        );
        let mut expected = before.snapshot();
        expected.in_flight = 0;
        assert_eq!(after.snapshot(), expected);
    }

    #[test]
    fn a_reading_without_buckets_carries_no_latency() {
        let before = ReleaseStats::new(ReleaseId::new("r"));
        before.record_response(200, Duration::from_millis(5));
        let mut observed = ObservedReleaseStats::from(&before.snapshot());
        observed.latency.buckets.clear();
        let counts = observed.counts();
        assert!(counts.latency_counts.is_empty());
        assert_eq!(counts.requests.success, 1);
    }
}
