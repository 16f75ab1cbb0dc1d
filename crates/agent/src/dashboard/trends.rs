//! The last hour of each environment's traffic, for the overview's sparklines: once a minute the
//! proxy's per-release counters are read (the same reading the canary analysis takes), summed per
//! app and environment, and the difference from the previous minute kept: requests, 5xx and the p99
//! of that minute's requests. In memory only, bounded: [`POINTS`] per environment.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::deploy::executor::{Reading, read_samples};
use crate::engine::{Engine, now_ms};

/// How often the counters are read.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Tests only (debug builds, like the fault hooks of `deploy::fault`): another reading interval in
/// milliseconds, so a browser test sees sparklines without waiting minutes.
pub const INTERVAL_VAR: &str = "ROLLWAY_TEST_TREND_INTERVAL_MS";

fn interval() -> Duration {
    if !cfg!(debug_assertions) {
        return INTERVAL;
    }
    std::env::var(INTERVAL_VAR)
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|ms| *ms >= 10)
        .map_or(INTERVAL, Duration::from_millis)
}
/// Points kept per environment: an hour.
pub const POINTS: usize = 60;

/// One minute of one environment's traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrendPoint {
    /// Unix milliseconds at the end of the minute.
    pub at: i64,
    pub requests: u64,
    pub errors: u64,
    pub p99_us: u64,
}

impl TrendPoint {
    /// The 5xx share, 0 without requests.
    pub fn error_share(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Every environment's last hour.
#[derive(Debug, Default)]
pub struct Trends {
    inner: Mutex<BTreeMap<(String, String), Series>>,
}

#[derive(Debug, Default)]
struct Series {
    /// The counters at the previous reading, to take the difference from.
    last: Option<Reading>,
    points: VecDeque<TrendPoint>,
}

impl Trends {
    /// The points of (app, env), oldest first.
    pub fn points(&self, app: &str, env: &str) -> Vec<TrendPoint> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .get(&(app.to_owned(), env.to_owned()))
            .map(|series| series.points.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Adds one reading of the proxy's counters (release name `app/env@number` to its cumulative
    /// counters) taken at `at`. The first reading of an environment only sets where counting
    /// starts; counters that went down (the proxy restarted) count from zero.
    pub(crate) fn record(&self, at: i64, readings: &BTreeMap<String, Reading>) {
        let mut per_env: BTreeMap<(String, String), Reading> = BTreeMap::new();
        for (release, reading) in readings {
            let Some((scope, _number)) = release.rsplit_once('@') else {
                continue;
            };
            let Some((app, env)) = scope.split_once('/') else {
                continue;
            };
            let entry = per_env.entry((app.to_owned(), env.to_owned())).or_default();
            *entry = entry.plus(reading);
        }
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (key, now) in per_env {
            let series = inner.entry(key).or_default();
            if let Some(last) = &series.last {
                let delta = if now.requests < last.requests {
                    now.clone()
                } else {
                    now.minus(last)
                };
                let sample = delta.sample();
                series.points.push_back(TrendPoint {
                    at,
                    requests: sample.requests,
                    errors: sample.errors,
                    p99_us: sample.p99_us,
                });
                while series.points.len() > POINTS {
                    series.points.pop_front();
                }
            }
            series.last = Some(now);
        }
    }

    /// Test and benchmark access: sets (app, env)'s points as given.
    pub fn set_points(&self, app: &str, env: &str, points: Vec<TrendPoint>) {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner
            .entry((app.to_owned(), env.to_owned()))
            .or_default()
            .points = points.into_iter().rev().take(POINTS).rev().collect();
    }
}

/// Reads the proxy's counters every [`INTERVAL`] until the agent shuts down.
pub async fn run(engine: Arc<Engine>, trends: Arc<Trends>) {
    let interval = interval();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = engine.shutdown.cancelled() => return,
        }
        let readings = read_samples(&engine).await;
        trends.record(now_ms(), &readings);
    }
}
