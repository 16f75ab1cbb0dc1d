//! Release analysis, pure: is a release's real traffic worse than its bounds or its baseline?
//!
//! Error rates are judged by a sequential probability ratio test (Wald's SPRT) with both error
//! bounds at 1%, not by a fixed threshold: a fixed "5xx share above 1% after 50 requests" trips on
//! healthy releases a quarter of the time (DESIGN.md, Defaults). Below `min_requests`, and while
//! the test has not crossed either boundary, the verdict is `Inconclusive`, never `Pass`.
//! Nothing here reads the clock, the proxy or the store.

use serde::Serialize;

/// Requests of one release over the window being judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Sample {
    pub requests: u64,
    /// 5xx answers, plus requests the proxy failed on the release's behalf.
    pub errors: u64,
    /// p99 latency in microseconds over the release's life (the proxy's histogram).
    pub p99_us: u64,
    /// How many latencies the p99 is computed from.
    pub latency_count: u64,
}

impl Sample {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// The bounds a release is judged against (from `[analysis]`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bounds {
    pub min_requests: u64,
    pub max_error_rate: f64,
    pub max_p99_us: Option<u64>,
    /// How much worse than the baseline's error rate (absolute share) fails.
    pub baseline_margin: f64,
    /// How many times the baseline's p99 fails.
    pub latency_margin: f64,
}

/// The analysis's verdict on a release. Defined in the wire types: `analysis.verdict` events carry
/// it in `data.verdict`, and the CLI reads it from there.
pub use client::wire::{Verdict, VerdictBounds};

/// Type I and type II error bounds of the sequential test.
pub const ALPHA: f64 = 0.01;
pub const BETA: f64 = 0.01;
/// Below this difference, p99 latencies are treated as equal: 1 ms against 4 ms is noise, not a
/// regression, however many times larger.
pub const LATENCY_NOISE_US: u64 = 20_000;
/// The fewest measured latencies a p99 is judged from (with `min_requests`, whichever is more): the
/// p99 of fewer than a hundred is their slowest, and one slow request (a new instance's first, a busy
/// machine's) is not a slow release. From a hundred on, one in a hundred may be slow, as a p99 means.
pub const MIN_LATENCIES: u64 = 100;
/// The lowest error rate assumed for a baseline, so one error does not look infinitely worse.
pub const BASELINE_FLOOR: f64 = 0.001;

/// Where a sequential test stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sprt {
    /// The evidence favours H1 (the higher rate).
    AcceptH1,
    /// The evidence favours H0 (the lower rate).
    AcceptH0,
    Continue,
}

/// Wald's SPRT of `errors` in `n` Bernoulli trials, H0: p = p0 against H1: p = p1 (p0 < p1).
pub fn sprt(errors: u64, n: u64, p0: f64, p1: f64) -> Sprt {
    if !(0.0 < p0 && p0 < p1 && p1 < 1.0) {
        return Sprt::Continue;
    }
    let successes = n.saturating_sub(errors) as f64;
    let llr = errors as f64 * (p1 / p0).ln() + successes * ((1.0 - p1) / (1.0 - p0)).ln();
    let upper = ((1.0 - BETA) / ALPHA).ln();
    let lower = (BETA / (1.0 - ALPHA)).ln();
    if llr >= upper {
        Sprt::AcceptH1
    } else if llr <= lower {
        Sprt::AcceptH0
    } else {
        Sprt::Continue
    }
}

/// Judges `release` against the bounds and, when one serves at the same time, its `baseline`.
pub fn evaluate(release: Sample, baseline: Option<Sample>, bounds: &Bounds) -> Verdict {
    if release.requests < bounds.min_requests {
        return Verdict::Inconclusive {
            reason: format!(
                "{} of {} requests needed",
                release.requests, bounds.min_requests
            ),
        };
    }
    let rate = release.error_rate();
    // Latency: the absolute bound, then the baseline's (each only when it applies).
    if let Some(max_p99) = absolute_p99_bound(&release, bounds)
        && release.p99_us > max_p99
    {
        return Verdict::Fail {
            reason: format!(
                "p99 {} above the bound {}",
                micros(release.p99_us),
                micros(max_p99)
            ),
        };
    }
    if let Some(baseline) = baseline
        && let Some(max_p99) = baseline_p99_bound(&release, &baseline, bounds)
        && release.p99_us > max_p99
    {
        return Verdict::Fail {
            reason: format!(
                "p99 {} is more than {}x the baseline's {}",
                micros(release.p99_us),
                bounds.latency_margin,
                micros(baseline.p99_us)
            ),
        };
    }
    // Errors against the absolute bound: H0 half the bound, H1 the bound.
    let absolute = sprt(
        release.errors,
        release.requests,
        bounds.max_error_rate / 2.0,
        bounds.max_error_rate,
    );
    if absolute == Sprt::AcceptH1 {
        return Verdict::Fail {
            reason: format!(
                "5xx share {:.2}% ({} of {}) is above the bound {:.2}%",
                rate * 100.0,
                release.errors,
                release.requests,
                bounds.max_error_rate * 100.0
            ),
        };
    }
    // Errors against the baseline serving at the same time: H0 its rate, H1 its rate plus the margin.
    let relative = match baseline {
        Some(baseline) if baseline.requests >= bounds.min_requests => {
            let p0 = baseline.error_rate().max(BASELINE_FLOOR);
            let p1 = (p0 + bounds.baseline_margin).min(0.999);
            let result = sprt(release.errors, release.requests, p0, p1);
            if result == Sprt::AcceptH1 {
                return Verdict::Fail {
                    reason: format!(
                        "5xx share {:.2}% is worse than the baseline's {:.2}% by more than {:.2} points",
                        rate * 100.0,
                        baseline.error_rate() * 100.0,
                        bounds.baseline_margin * 100.0
                    ),
                };
            }
            Some(result)
        }
        _ => None,
    };
    match (absolute, relative) {
        (Sprt::AcceptH0, None | Some(Sprt::AcceptH0)) => Verdict::Pass,
        _ => Verdict::Inconclusive {
            reason: format!(
                "5xx share {:.2}% over {} requests: not conclusive yet",
                rate * 100.0,
                release.requests
            ),
        },
    }
}

/// The bounds `evaluate` holds `release` against, as a chart draws them: the error test's share
/// and the lowest p99 that fails it. `evaluate` fails on latency exactly when the release's p99
/// is above `max_p99_us` (the same two functions decide both).
pub fn applied_bounds(
    release: &Sample,
    baseline: Option<&Sample>,
    bounds: &Bounds,
) -> VerdictBounds {
    let absolute = absolute_p99_bound(release, bounds);
    let relative = baseline.and_then(|baseline| baseline_p99_bound(release, baseline, bounds));
    VerdictBounds {
        max_error_share: bounds.max_error_rate,
        max_p99_us: match (absolute, relative) {
            (Some(a), Some(r)) => Some(a.min(r)),
            (a, r) => a.or(r),
        },
    }
}

/// `max_p99`, when set and the release has enough measured requests to judge.
fn absolute_p99_bound(release: &Sample, bounds: &Bounds) -> Option<u64> {
    bounds.max_p99_us.filter(|_| judged_p99(release, bounds))
}

/// Whether `sample` measured enough latencies for its p99 to be judged ([`MIN_LATENCIES`]).
fn judged_p99(sample: &Sample, bounds: &Bounds) -> bool {
    sample.latency_count >= bounds.min_requests.max(MIN_LATENCIES)
}

/// The highest p99 (µs) that passes against `baseline`: its p99 times `latency_margin`, and at
/// least [`LATENCY_NOISE_US`] above it; None unless both sides measured enough latencies.
fn baseline_p99_bound(release: &Sample, baseline: &Sample, bounds: &Bounds) -> Option<u64> {
    if !judged_p99(baseline, bounds) || !judged_p99(release, bounds) || baseline.p99_us == 0 {
        return None;
    }
    // A whole number of µs is above `x` exactly when it is above `floor(x)`.
    let scaled = (baseline.p99_us as f64 * bounds.latency_margin).floor();
    let scaled = if scaled >= u64::MAX as f64 {
        u64::MAX
    } else {
        scaled as u64
    };
    Some(scaled.max(baseline.p99_us.saturating_add(LATENCY_NOISE_US)))
}

fn micros(us: u64) -> String {
    if us >= 1000 {
        format!("{}ms", us / 1000)
    } else {
        format!("{us}µs")
    }
}

#[cfg(test)]
mod tests;
