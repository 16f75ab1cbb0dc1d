//! The agent's `/metrics` in Prometheus text format: deployments by strategy and outcome, analysis
//! verdicts, instance health, backup age, and the proxy's per-release request counters relayed
//! with app and environment labels (every request metric carries the release).
//!
//! Rendered by hand from the store and the runtime view: a scrape costs a few queries, and the
//! process holds no second copy of the numbers.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::engine::{AppEnv, Engine, InstancePhase, now_ms};

/// Counters the agent keeps in memory (since it started).
#[derive(Debug, Default)]
pub struct Counters {
    /// (app, environment, verdict) → count.
    pub verdicts: BTreeMap<(String, String, String), u64>,
}

pub async fn render(engine: &Engine) -> String {
    let mut out = String::new();
    let apps = engine.store.apps().unwrap_or_default();

    header(
        &mut out,
        "rollway_deployments_total",
        "counter",
        "Deployments by strategy and final state.",
    );
    for (app, env, _) in &apps {
        let mut counts: BTreeMap<(String, String, String), u64> = BTreeMap::new();
        for deployment in engine
            .store
            .deployments(app, env, 100_000)
            .unwrap_or_default()
        {
            *counts
                .entry((
                    deployment.kind.as_str().to_owned(),
                    deployment.strategy.as_str().to_owned(),
                    deployment.state.as_str().to_owned(),
                ))
                .or_default() += 1;
        }
        for ((kind, strategy, state), count) in counts {
            let _ = writeln!(
                out,
                "rollway_deployments_total{{app=\"{}\",environment=\"{}\",kind=\"{kind}\",strategy=\"{strategy}\",state=\"{state}\"}} {count}",
                escape(app),
                escape(env)
            );
        }
    }

    header(
        &mut out,
        "rollway_analysis_verdicts_total",
        "counter",
        "Analysis verdicts since the agent started.",
    );
    if let Ok(counters) = engine.counters.lock() {
        for ((app, env, verdict), count) in &counters.verdicts {
            let _ = writeln!(
                out,
                "rollway_analysis_verdicts_total{{app=\"{}\",environment=\"{}\",verdict=\"{verdict}\"}} {count}",
                escape(app),
                escape(env)
            );
        }
    }

    header(
        &mut out,
        "rollway_current_release",
        "gauge",
        "The release serving each app and environment.",
    );
    for (app, env, current) in &apps {
        if let Some(current) = current {
            let _ = writeln!(
                out,
                "rollway_current_release{{app=\"{}\",environment=\"{}\"}} {current}",
                escape(app),
                escape(env)
            );
        }
    }

    header(
        &mut out,
        "rollway_instance_up",
        "gauge",
        "1 for an instance in traffic and passing its health checks, 0 otherwise.",
    );
    let runtimes: Vec<_> = engine
        .runtimes
        .lock()
        .map(|runtimes| {
            runtimes
                .iter()
                .map(|(key, runtime)| (key.clone(), runtime.clone()))
                .collect()
        })
        .unwrap_or_default();
    for (
        AppEnv {
            app,
            environment: env,
        },
        runtime,
    ) in &runtimes
    {
        for (id, instance) in &runtime.instances {
            let up = instance.phase == InstancePhase::Ready && !instance.unhealthy;
            let _ = writeln!(
                out,
                "rollway_instance_up{{app=\"{}\",environment=\"{}\",release=\"{}\",instance=\"{}\",state=\"{}\"}} {}",
                escape(app),
                escape(env),
                instance.release,
                escape(id),
                instance.phase.as_str(),
                u8::from(up)
            );
        }
    }

    header(
        &mut out,
        "rollway_backup_age_seconds",
        "gauge",
        "Seconds since the newest backup of each app and environment.",
    );
    let now = now_ms();
    for (app, env, _) in &apps {
        if let Some(newest) = engine.store.backups(app, env).unwrap_or_default().first() {
            let age = (now - newest.created_at).max(0) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "rollway_backup_age_seconds{{app=\"{}\",environment=\"{}\"}} {age:.3}",
                escape(app),
                escape(env)
            );
        }
    }

    header(
        &mut out,
        "rollway_requests_total",
        "counter",
        "Requests through the proxy by release and status class (since the proxy started).",
    );
    let stats = engine.proxy.stats().await.unwrap_or_default();
    for release in &stats {
        let Some((scope, number)) = release.release.rsplit_once('@') else {
            continue;
        };
        let Some((app, env)) = scope.split_once('/') else {
            continue;
        };
        let classes = &release.requests;
        for (class, count) in [
            ("1xx", classes.informational),
            ("2xx", classes.success),
            ("3xx", classes.redirection),
            ("4xx", classes.client_error),
            ("5xx", classes.server_error),
        ] {
            let _ = writeln!(
                out,
                "rollway_requests_total{{app=\"{}\",environment=\"{}\",release=\"{number}\",class=\"{class}\"}} {count}",
                escape(app),
                escape(env)
            );
        }
    }
    header(
        &mut out,
        "rollway_request_duration_seconds",
        "summary",
        "Latency through the proxy by release.",
    );
    for release in &stats {
        let Some((scope, number)) = release.release.rsplit_once('@') else {
            continue;
        };
        let Some((app, env)) = scope.split_once('/') else {
            continue;
        };
        let labels = format!(
            "app=\"{}\",environment=\"{}\",release=\"{number}\"",
            escape(app),
            escape(env)
        );
        let latency = &release.latency;
        for (quantile, us) in [
            ("0.5", latency.p50_us),
            ("0.9", latency.p90_us),
            ("0.99", latency.p99_us),
        ] {
            let _ = writeln!(
                out,
                "rollway_request_duration_seconds{{{labels},quantile=\"{quantile}\"}} {:.6}",
                us as f64 / 1e6
            );
        }
        let _ = writeln!(
            out,
            "rollway_request_duration_seconds_sum{{{labels}}} {:.6}",
            latency.sum_us as f64 / 1e6
        );
        let _ = writeln!(
            out,
            "rollway_request_duration_seconds_count{{{labels}}} {}",
            latency.count
        );
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Label values escaped as the text format asks (`\`, `"`, newline).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
