//! Analysis benchmark (issue 7, `bench/analysis/run.sh`): how long a bad canary keeps traffic.
//!
//! One real `rollway agent` on 127.0.0.1 serves the demo app (release 1, healthy). For every rate
//! and error share, a paced load loop runs through the proxy while a canary that answers that share
//! of 500s is deployed at 20%; the agent's analysis takes it out. From the load loop's records
//! (every request, its version, its wall-clock start and end) and the agent's events it prints:
//! the first bad answer, when the canary had answered `min_requests`, the failing verdict's figures,
//! and when the canary held weight 0 (the `deployment.weights` event written after the proxy took
//! the new weights).
//!
//! Usage: analysis_bench ROLLWAY_BIN [RUNS] [RATES] [SHARES]
//!   e.g. analysis_bench target/release/rollway 3 50,500,5000 0.01,0.05,0.5
//! Environment: `CARGO_BIN_EXE_demo-app` (the demo app binary), `INTERVAL` (default `1s`),
//! `WINDOW` (default `10m`), `MIN_REQUESTS` (default 50), `WEIGHT` (default 20), `HEALTHY_RUNS`
//! (healthy canaries per rate, counted when the analysis fails them; default 5).

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use testkit::agent::{APP, TestAgent, TestApp};
use testkit::load::{Load, Record};

const ENV: &str = "production";

/// One measured canary.
struct Run {
    rate: u32,
    share: f64,
    /// Requests per second the loop achieved while the canary served.
    achieved: f64,
    canary_requests: usize,
    failed: u64,
    /// Canary requests and errors in the failing verdict's sample.
    verdict_requests: u64,
    verdict_errors: u64,
    /// Milliseconds from the first bad answer to weight 0.
    bad_to_out: f64,
    /// Milliseconds from the canary's `min_requests`-th answer to weight 0.
    min_to_out: f64,
    /// Milliseconds from the first bad answer to the failing verdict event.
    bad_to_verdict: f64,
    /// Milliseconds from the verdict to weight 0 (pushing the weights to the proxy).
    verdict_to_out: f64,
    /// The failing verdict's reason.
    reason: String,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let Some(rollway) = args.get(1).map(PathBuf::from) else {
        eprintln!("usage: analysis_bench ROLLWAY_BIN [RUNS] [RATES] [SHARES]");
        std::process::exit(2);
    };
    let runs: usize = args.get(2).map_or(3, |runs| runs.parse().expect("RUNS"));
    let rates: Vec<u32> = list(args.get(3).map_or("50,500,5000", String::as_str));
    let shares: Vec<f64> = list(args.get(4).map_or("0.01,0.05,0.5", String::as_str));
    let interval = std::env::var("INTERVAL").unwrap_or_else(|_| "1s".to_owned());
    // Longer than any run: the window does not cap the evidence, so what is measured is the
    // sequential test and the interval (see bench/analysis/README.md for the default 30 s).
    let window = std::env::var("WINDOW").unwrap_or_else(|_| "10m".to_owned());
    let min_requests: u64 =
        std::env::var("MIN_REQUESTS").map_or(50, |n| n.parse().expect("MIN_REQUESTS"));
    let weight: u32 = std::env::var("WEIGHT").map_or(20, |n| n.parse().expect("WEIGHT"));

    let work = std::env::temp_dir().join(format!("rollway-bench-analysis-{}", std::process::id()));
    std::fs::create_dir_all(&work).expect("work dir");
    let agent = TestAgent::start(&rollway, &work.join("state")).await;
    let healthy_runs: usize =
        std::env::var("HEALTHY_RUNS").map_or(5, |n| n.parse().expect("HEALTHY_RUNS"));
    // A bad canary must never pass its step by waiting it out; a healthy one passes after 3 s.
    let app = |version: &str| {
        let pause = if version == "bad" { "10m" } else { "3s" };
        TestApp::new(work.join("app"))
            .version(version)
            .canary(format!(
                r#"[{{ weight = {weight}, pause = "{pause}" }}, {{ weight = 100 }}]"#
            ))
            .analysis(format!("interval = {interval:?}"))
            .analysis(format!("window = {window:?}"))
            .analysis(format!("min_requests = {min_requests}"))
    };
    let ran = agent.deploy(&app("good"), ENV).await;
    assert_eq!(ran.code, Some(0), "{ran}");
    println!(
        "interval {interval}, window {window}, min_requests {min_requests}, canary weight {weight}%, max_error_rate 1%, baseline_margin 1%"
    );
    println!(
        "| req/s | achieved | 5xx share | canary requests at the verdict (5xx) | canary answers | failed requests | first bad answer → weight 0 | min_requests reached → weight 0 | first bad → verdict | verdict → weight 0 | reason |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let mut all = Vec::new();
    for &rate in &rates {
        for &share in &shares {
            for _ in 0..runs {
                let run = measure(&agent, &app, rate, share, min_requests).await;
                println!(
                    "| {} | {:.0} | {:.0}% | {} ({}) | {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms | {} |",
                    run.rate,
                    run.achieved,
                    run.share * 100.0,
                    run.verdict_requests,
                    run.verdict_errors,
                    run.canary_requests,
                    run.failed,
                    run.bad_to_out,
                    run.min_to_out,
                    run.bad_to_verdict,
                    run.verdict_to_out,
                    run.reason
                );
                all.push(run);
            }
        }
    }
    // False positives: healthy canaries (no 5xx, no added latency) that the analysis fails.
    println!();
    for &rate in &rates {
        let mut failed = Vec::new();
        for _ in 0..healthy_runs {
            if let Some(reason) = healthy(&agent, &app, rate).await {
                failed.push(reason);
            }
        }
        println!(
            "healthy canary at {rate} req/s: {} of {healthy_runs} failed by the analysis {failed:?}",
            failed.len()
        );
    }
    println!("\nmedians over {runs} run(s):");
    println!(
        "| req/s | 5xx share | canary requests at the verdict | failed requests | first bad answer → weight 0 | min_requests reached → weight 0 |"
    );
    println!("|---|---|---|---|---|---|");
    for &rate in &rates {
        for &share in &shares {
            let these: Vec<&Run> = all
                .iter()
                .filter(|run| run.rate == rate && run.share == share)
                .collect();
            if these.is_empty() {
                continue;
            }
            let median = |value: &dyn Fn(&Run) -> f64| {
                let mut values: Vec<f64> = these.iter().map(|run| value(run)).collect();
                values.sort_by(f64::total_cmp);
                values[values.len() / 2]
            };
            println!(
                "| {rate} | {:.0}% | {:.0} | {:.0} | {:.0} ms | {:.0} ms |",
                share * 100.0,
                median(&|run| run.verdict_requests as f64),
                median(&|run| run.failed as f64),
                median(&|run| run.bad_to_out),
                median(&|run| run.min_to_out),
            );
        }
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&work);
}

async fn measure(
    agent: &TestAgent,
    app: &dyn Fn(&str) -> TestApp,
    rate: u32,
    share: f64,
    min_requests: u64,
) -> Run {
    // Enough clients that the pace, not the answers, sets the rate.
    let concurrency = (rate as usize / 50).clamp(4, 128);
    let started_at_ms = unix_ms();
    let load = Load::new(agent.proxy_addr())
        .concurrency(concurrency)
        .rate(rate)
        .timeout(Duration::from_secs(10))
        .duration(Duration::from_secs(280))
        .start();
    // The baseline serves alone for a moment, as it does before any deploy.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ran = agent
        .deploy(&app("bad").env("ERROR_RATE", share.to_string()), ENV)
        .await;
    let report = load.stop().await;
    assert_eq!(
        ran.code,
        Some(1),
        "the bad canary was not rolled back:\n{ran}"
    );

    let status = agent.status(APP, ENV).await;
    let id = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let events: Vec<Value> = agent
        .events()
        .await
        .into_iter()
        .filter(|event| event["deployment_id"] == id.as_str())
        .collect();
    let at = |event: &Value| event["at"].as_i64().expect("event time") as f64;
    let weights: Vec<&Value> = events
        .iter()
        .filter(|event| event["kind"] == "deployment.weights")
        .collect();
    let (canary_in, out) = (at(weights[0]), at(weights[weights.len() - 1]));
    let verdict = events
        .iter()
        .find(|event| {
            event["kind"] == "analysis.verdict" && event["data"]["verdict"]["verdict"] == "fail"
        })
        .expect("a failing verdict");
    let wall = |record: &Record| {
        let start = started_at_ms + record.started.as_secs_f64() * 1000.0;
        (start, start + record.latency.as_secs_f64() * 1000.0)
    };
    let mut canary: Vec<(f64, f64, bool)> = report
        .records
        .iter()
        .filter(|record| record.version.as_deref() == Some("bad"))
        .map(|record| {
            let (start, end) = wall(record);
            (start, end, !record.outcome.is_success())
        })
        .collect();
    canary.sort_by(|a, b| a.1.total_cmp(&b.1));
    let first_bad = canary
        .iter()
        .find(|(_, _, failed)| *failed)
        .map_or(f64::NAN, |(_, end, _)| *end);
    let min_reached = canary
        .get(min_requests.saturating_sub(1) as usize)
        .map_or(f64::NAN, |(_, end, _)| *end);
    let during = report
        .records
        .iter()
        .filter(|record| (canary_in..=out).contains(&wall(record).0))
        .count();
    Run {
        rate,
        share,
        achieved: during as f64 / ((out - canary_in) / 1000.0),
        canary_requests: canary.len(),
        failed: report.failed,
        verdict_requests: verdict["data"]["sample"]["requests"].as_u64().unwrap_or(0),
        verdict_errors: verdict["data"]["sample"]["errors"].as_u64().unwrap_or(0),
        bad_to_out: out - first_bad,
        min_to_out: out - min_reached,
        bad_to_verdict: at(verdict) - first_bad,
        verdict_to_out: out - at(verdict),
        reason: verdict["data"]["verdict"]["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Deploys a healthy canary under load; the failing verdict's reason if the analysis failed it.
async fn healthy(agent: &TestAgent, app: &dyn Fn(&str) -> TestApp, rate: u32) -> Option<String> {
    let load = Load::new(agent.proxy_addr())
        .concurrency((rate as usize / 50).clamp(4, 128))
        .rate(rate)
        .duration(Duration::from_secs(120))
        .start();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ran = agent.deploy(&app("good"), ENV).await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report}");
    if ran.code == Some(0) {
        return None;
    }
    let status = agent.status(APP, ENV).await;
    Some(status.deployment_reason().unwrap_or("?").to_owned())
}

fn list<T: std::str::FromStr>(text: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    text.split(',')
        .map(|item| item.trim().parse().expect("a number"))
        .collect()
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64() * 1000.0)
}
