//! Per-release traffic statistics: requests by status class, errors by kind, in-flight count and a latency
//! histogram, all plain atomics so the request path takes no lock.
//!
//! Each worker thread (`crate::shard`) counts into its own copy of the counters, aligned apart, and a
//! snapshot sums the copies: two workers answering for the same release would otherwise take the same
//! cache lines from each other on every answer (four atomic additions per request).
//!
//! It does not decide anything (the analysis loop in the agent does) and does not render (see `metrics`).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::ids::ErrorKind;
use crate::ids::ReleaseId;

/// Number of finite latency buckets. Bucket `i` holds latencies up to `100 µs * 2^(i/2)`, so the last finite
/// bound is about 148 s; slower requests land in the overflow bucket.
pub const LATENCY_BUCKETS: usize = 42;

/// A point-in-time copy of one release's counters, as read by the analysis loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReleaseStatsSnapshot {
    pub release: ReleaseId,
    pub requests: StatusClassCounts,
    /// Count per error kind, in `ErrorKind::ALL` order; kinds never seen are included with 0.
    pub errors: Vec<(ErrorKind, u64)>,
    /// Requests (and upgraded connections) currently open on this release's instances.
    pub in_flight: u64,
    pub latency: LatencySummary,
}

/// Answers given by a release's instances, by status class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatusClassCounts {
    pub informational: u64,
    pub success: u64,
    pub redirection: u64,
    pub client_error: u64,
    pub server_error: u64,
}

/// Time to response head, summarised from the histogram. Quantiles are bucket upper bounds, so they are at
/// most ~41% above the true value (buckets grow by a factor of sqrt 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencySummary {
    pub count: u64,
    pub sum: Duration,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    /// Cumulative counts per finite bucket (Prometheus `le` semantics), then the total.
    pub cumulative_buckets: Vec<(Duration, u64)>,
}

/// The live counters of one release. Shared (`Arc`) between the control plane and every routing snapshot
/// that holds a pool of this release.
#[derive(Debug)]
pub struct ReleaseStats {
    release: ReleaseId,
    // One per `shard::shard_count()`: worker `i` counts into `shards[i]`, other threads into `shards[0]`.
    shards: Box<[Counters]>,
}

/// The counters of one worker thread. Aligned to 128 bytes (two cache lines: the adjacent-line prefetcher
/// pairs them) so that no two shards share a line.
#[derive(Debug)]
#[repr(align(128))]
struct Counters {
    by_class: [AtomicU64; 5],
    errors: [AtomicU64; ErrorKind::ALL.len()],
    // Signed: a request may start on one shard and finish on another (a body dropped on another thread),
    // so a shard's count can be negative; only the sum means something.
    in_flight: AtomicI64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    latency_sum_micros: AtomicU64,
}

impl Counters {
    fn new() -> Counters {
        Counters {
            by_class: Default::default(),
            errors: Default::default(),
            in_flight: AtomicI64::new(0),
            latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            latency_sum_micros: AtomicU64::new(0),
        }
    }
}

impl ReleaseStats {
    pub fn new(release: ReleaseId) -> ReleaseStats {
        ReleaseStats {
            release,
            shards: (0..crate::shard::shard_count())
                .map(|_| Counters::new())
                .collect(),
        }
    }

    /// This thread's counters.
    fn local(&self) -> &Counters {
        // `shards` is never empty (`shard_count` is at least 1); a worker number past it (never expected)
        // shares shard 0.
        self.shards
            .get(crate::shard::current())
            .unwrap_or(&self.shards[0])
    }

    /// The sum of one counter over the shards.
    fn sum(&self, counter: impl Fn(&Counters) -> &AtomicU64) -> u64 {
        self.shards
            .iter()
            .map(|shard| counter(shard).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }

    pub fn release(&self) -> &ReleaseId {
        &self.release
    }

    /// Records one answer from an instance: its status and the time to its head.
    pub fn record_response(&self, status: u16, latency: Duration) {
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            _ => 4,
        };
        let local = self.local();
        local.by_class[class].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        local.latency_buckets[bucket_index(micros)].fetch_add(1, Ordering::Relaxed);
        local
            .latency_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// Records an error the proxy met (or produced) on the way to this release.
    pub fn record_error(&self, kind: ErrorKind) {
        self.local().errors[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight_started(&self) {
        self.local().in_flight.fetch_add(1, Ordering::Relaxed);
    }

    pub fn in_flight_finished(&self) {
        self.local().in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// Reads every counter. Counters are read one by one, so a snapshot taken under load may be off by the
    /// requests that finished while it was read; each counter on its own is exact.
    pub fn snapshot(&self) -> ReleaseStatsSnapshot {
        let class = |i: usize| self.sum(|shard| &shard.by_class[i]);
        let requests = StatusClassCounts {
            informational: class(0),
            success: class(1),
            redirection: class(2),
            client_error: class(3),
            server_error: class(4),
        };
        let errors = ErrorKind::ALL
            .iter()
            .map(|kind| (*kind, self.sum(|shard| &shard.errors[kind.index()])))
            .collect();
        let counts: Vec<u64> = (0..=LATENCY_BUCKETS)
            .map(|bucket_idx| self.sum(|shard| &shard.latency_buckets[bucket_idx]))
            .collect();
        let in_flight: i64 = self
            .shards
            .iter()
            .map(|shard| shard.in_flight.load(Ordering::Relaxed))
            .fold(0, i64::wrapping_add);
        ReleaseStatsSnapshot {
            release: self.release.clone(),
            requests,
            errors,
            in_flight: u64::try_from(in_flight).unwrap_or(0),
            latency: summarise(
                &counts,
                Duration::from_micros(self.sum(|shard| &shard.latency_sum_micros)),
            ),
        }
    }

    /// Adds counts a predecessor process recorded for this release (a hot restart), so a reader sees
    /// the counters continue instead of starting again at zero. `latency_counts` are per bucket (not
    /// cumulative), the overflow bucket last; `in_flight` is not carried: those requests stay with the
    /// predecessor, which finishes them.
    pub fn carry_over(
        &self,
        requests: StatusClassCounts,
        errors: &[(ErrorKind, u64)],
        latency_counts: &[u64],
        latency_sum: Duration,
    ) {
        // Into shard 0: the sums are what a reader sees.
        let shard = &self.shards[0];
        let classes = [
            requests.informational,
            requests.success,
            requests.redirection,
            requests.client_error,
            requests.server_error,
        ];
        for (counter, count) in shard.by_class.iter().zip(classes) {
            counter.fetch_add(count, Ordering::Relaxed);
        }
        for (kind, count) in errors {
            shard.errors[kind.index()].fetch_add(*count, Ordering::Relaxed);
        }
        for (bucket, count) in shard.latency_buckets.iter().zip(latency_counts) {
            bucket.fetch_add(*count, Ordering::Relaxed);
        }
        let micros = u64::try_from(latency_sum.as_micros()).unwrap_or(u64::MAX);
        shard
            .latency_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
    }
}

impl ReleaseStatsSnapshot {
    /// The count for one error kind.
    pub fn error_count(&self, kind: ErrorKind) -> u64 {
        self.errors
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// All answers counted, whatever their class.
    pub fn total_requests(&self) -> u64 {
        let r = &self.requests;
        r.informational + r.success + r.redirection + r.client_error + r.server_error
    }
}

/// Upper bound of finite bucket `bucket_idx`.
pub fn bucket_bound(bucket_idx: usize) -> Duration {
    // 100 µs * 2^(i/2), computed exactly for even i and with sqrt 2 for odd i.
    let base = 100u64 << (bucket_idx / 2);
    if bucket_idx.is_multiple_of(2) {
        Duration::from_micros(base)
    } else {
        Duration::from_secs_f64(base as f64 * std::f64::consts::SQRT_2 / 1e6)
    }
}

/// The smallest bucket whose bound holds `micros` (`LATENCY_BUCKETS` past the last bound): a binary
/// search of the bounds, made once (a `log2` and a `ceil` per answer cost ~200 instructions).
fn bucket_index(micros: u64) -> usize {
    static BOUNDS: std::sync::LazyLock<[Duration; LATENCY_BUCKETS]> =
        std::sync::LazyLock::new(|| std::array::from_fn(bucket_bound));
    let value = Duration::from_micros(micros);
    BOUNDS.partition_point(|bound| *bound < value)
}

fn summarise(counts: &[u64], sum: Duration) -> LatencySummary {
    let total: u64 = counts.iter().sum();
    let mut cumulative_buckets = Vec::with_capacity(LATENCY_BUCKETS);
    let mut running = 0;
    for (bucket_idx, count) in counts.iter().take(LATENCY_BUCKETS).enumerate() {
        running += count;
        cumulative_buckets.push((bucket_bound(bucket_idx), running));
    }
    let quantile = |q: f64| -> Duration {
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * total as f64).ceil() as u64).max(1);
        cumulative_buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= rank)
            .map_or(bucket_bound(LATENCY_BUCKETS - 1), |(bound, _)| *bound)
    };
    LatencySummary {
        count: total,
        sum,
        p50: quantile(0.50),
        p90: quantile(0.90),
        p99: quantile(0.99),
        cumulative_buckets,
    }
}

#[cfg(test)]
mod tests;
