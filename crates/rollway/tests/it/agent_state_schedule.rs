//! End-to-end test of the agent's own state backed up on a schedule (issue 21,
//! `rollway agent --state-backup-schedule`) against a real S3-compatible server (`s3s-fs` on
//! loopback): snapshots reach the remote by themselves, each one restores into a fresh state
//! directory and holds the releases of its time, a remote that is down is an
//! `agent.backup_failed` event and an alert, and the remote's credentials reach no app, no log
//! and no event.
//!
//! Outside `scripts/test` (no `s3s-fs`) the test skips with one printed line.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent, random_hex};
use testkit::s3::S3Server;

use crate::agent::{Setup, rollway_bin};

const ENV: &str = "production";
const BUCKET: &str = "rollway-state";
/// Every two seconds: per-second schedules are accepted by debug builds with
/// `ROLLWAY_TEST_CRON_SECONDS=1` only.
const SCHEDULE: &str = "*/2 * * * * *";
const PATIENCE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_backs_up_its_own_state_on_a_schedule_and_each_snapshot_restores() {
    let access_key = format!("AKSTATE{}", random_hex(6).to_uppercase());
    let secret_key = format!("sk-state-canary-{}", random_hex(16));
    let Some(mut s3) = S3Server::start(&access_key, &secret_key, &[BUCKET]).await else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = format!("s3://{BUCKET}/agents");
    let endpoint = s3.endpoint();
    let env = [
        ("ROLLWAY_TEST_CRON_SECONDS", "1"),
        ("ROLLWAY_BACKUP_REMOTE", remote.as_str()),
        ("ROLLWAY_BACKUP_ENDPOINT", endpoint.as_str()),
        ("ROLLWAY_BACKUP_ACCESS_KEY_ID", access_key.as_str()),
        ("ROLLWAY_BACKUP_SECRET_ACCESS_KEY", secret_key.as_str()),
    ];
    let schedule_args = ["--state-backup-schedule".to_owned(), SCHEDULE.to_owned()];

    // Day one: a schedule that is not one, or no remote, and the agent does not start.
    let refused = crate::rollway(
        dir.path(),
        &[
            "agent",
            "--state",
            "x",
            "--state-backup-schedule",
            "daily at 3",
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a schedule"));
    let refused = crate::rollway(
        dir.path(),
        &["agent", "--state", "x", "--state-backup-schedule", "@daily"],
    );
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("ROLLWAY_BACKUP_REMOTE"));

    let agent = TestAgent::start_with_args(
        rollway_bin(),
        &dir.path().join("state"),
        &schedule_args,
        &env,
    )
    .await;
    let setup = Setup { agent, dir };
    let agent = &setup.agent;
    let webhook = setup.webhook(ENV, "ALERT_WEBHOOK").await;
    let app = |version: &str| {
        setup
            .app("app", version)
            .secrets(ENV, &["ALERT_WEBHOOK"])
            .alerts_webhook("ALERT_WEBHOOK")
    };
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    // The remote's credentials are the agent's: the app's instances never get them.
    for name in [
        "ROLLWAY_BACKUP_ACCESS_KEY_ID",
        "ROLLWAY_BACKUP_SECRET_ACCESS_KEY",
    ] {
        let answer = agent.get(None, &format!("/sha256/{name}")).await;
        assert_eq!(answer.status, 404, "the app got `{name}`: {answer:?}");
    }

    // Snapshots come by themselves, one per tick.
    let after_v1 = last_event_id(agent).await;
    wait_backed_up(agent, after_v1, 2).await;
    agent.deploy(&app("v2"), ENV).await.assert_code(0);
    let after_v2 = last_event_id(agent).await;
    // Ticks are taken one after another: the second snapshot after v2 began after it.
    wait_backed_up(agent, after_v2, 2).await;

    // The remote is down: an event per tick that fails, and an alert through the apps' webhook.
    s3.stop().await;
    let stopped = last_event_id(agent).await;
    let failed = wait_events(agent, "agent.backup_failed", stopped, 1).await;
    assert!(
        failed[0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("after 3 attempts") && m.contains(&remote)),
        "{failed:#?}"
    );
    let alerts = webhook.wait_for(1, PATIENCE).await;
    assert!(
        alerts.iter().any(|alert| alert
            .body
            .contains("[rollway] rollway: the agent's state was not backed up")),
        "{alerts:#?}"
    );
    s3.restart(&access_key, &secret_key).await;
    let back = last_event_id(agent).await;
    wait_backed_up(agent, back, 1).await;

    // The credentials appear in no event and no log line.
    let events = serde_json::to_string(&agent.events().await).expect("events");
    let log = agent.log();
    for canary in [&access_key, &secret_key] {
        assert!(
            !events.contains(canary.as_str()),
            "an event holds a credential"
        );
        assert!(!log.contains(canary.as_str()), "the log holds a credential");
    }

    // The remote keeps the newest 14; every one of them restores into a fresh state directory and
    // holds the releases of its time (none before the first deploy, v1 and v2 in the last).
    let taken = wait_backed_up(agent, 0, 1).await.len();
    let master_key = agent.master_key_file();
    let mut setup = setup;
    assert!(setup.agent.terminate(Duration::from_secs(20)).await);
    let mut ids: Vec<String> = s3
        .objects(BUCKET, ".tar.sealed")
        .iter()
        .filter_map(|path| Some(path.file_name()?.to_str()?.split('.').next()?.to_owned()))
        .collect();
    ids.sort();
    let keep = ::agent::backup::agent_state::KEEP;
    assert!(taken >= 5, "{taken} snapshots taken");
    assert!(
        (taken.min(keep)..=keep).contains(&ids.len()),
        "{} on the remote after {taken} (more may have ended as the agent stopped): {ids:?}",
        ids.len()
    );
    let mut counts = Vec::new();
    for id in &ids {
        let fresh = setup.dir.path().join(format!("restored-{id}"));
        let restored = restore(&fresh, &master_key, &remote, &endpoint, &env, id).await;
        assert_eq!(restored.status.code(), Some(0), "{restored:?}");
        counts.push(releases_in(&fresh.join("rollway.db")));
    }
    assert_eq!(counts.last(), Some(&2), "{ids:?}: {counts:?}");
    assert!(
        counts.windows(2).all(|pair| pair[0] <= pair[1]),
        "{counts:?}"
    );
}

/// The line the agent logs once its schedule's start is settled (after the missed snapshot, if
/// one was taken).
const SCHEDULED: &str = "Backups of the agent's state are scheduled.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daily_schedule_takes_the_missed_snapshot_at_start_and_no_other() {
    let (access_key, secret_key) = ("AKDAILY", "sk-daily-canary");
    let Some(s3) = S3Server::start(access_key, secret_key, &[BUCKET]).await else {
        return;
    };
    let utc_day = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs()
            / 86_400
    };
    let day = utc_day();
    let dir = tempfile::tempdir().expect("tempdir");
    let remote = format!("s3://{BUCKET}/agents");
    let endpoint = s3.endpoint();
    let env = [
        ("ROLLWAY_BACKUP_REMOTE", remote.as_str()),
        ("ROLLWAY_BACKUP_ENDPOINT", endpoint.as_str()),
        ("ROLLWAY_BACKUP_ACCESS_KEY_ID", access_key),
        ("ROLLWAY_BACKUP_SECRET_ACCESS_KEY", secret_key),
    ];
    let mut agent = TestAgent::start_with_args(
        rollway_bin(),
        &dir.path().join("state"),
        &["--state-backup-schedule".to_owned(), "@daily".to_owned()],
        &env,
    )
    .await;
    // No snapshot on the remote is older than today's tick: one is taken at once.
    wait_logged(&agent, 1).await;
    assert_eq!(wait_backed_up(&agent, 0, 1).await.len(), 1);
    assert_eq!(s3.objects(BUCKET, ".tar.sealed").len(), 1);
    // Restarted the same day: today's snapshot exists, none is taken until tomorrow's tick.
    agent.restart_with_env(&env).await;
    let lines = wait_logged(&agent, 2).await;
    if utc_day() != day {
        println!("skipped: midnight UTC (a new @daily tick) fell during the test");
        return;
    }
    assert!(
        lines[0].contains("caught_up") && lines[0].contains("true"),
        "{lines:?}"
    );
    assert!(
        lines[1].contains("caught_up") && lines[1].contains("false"),
        "{lines:?}"
    );
    assert_eq!(s3.objects(BUCKET, ".tar.sealed").len(), 1);
    let taken = agent
        .events()
        .await
        .iter()
        .filter(|event| event["kind"] == "agent.backed_up")
        .count();
    assert_eq!(taken, 1);
}

/// Waits until the agent's log holds `n` [`SCHEDULED`] lines; returns them.
async fn wait_logged(agent: &TestAgent, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let lines: Vec<String> = agent
            .log()
            .lines()
            .filter(|line| line.contains(SCHEDULED))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} `{SCHEDULED}` lines: {}",
            lines.len(),
            agent.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `rollway agent restore --id ID` into `state`.
async fn restore(
    state: &Path,
    master_key: &Path,
    remote: &str,
    endpoint: &str,
    env: &[(&str, &str)],
    id: &str,
) -> std::process::Output {
    let mut command = tokio::process::Command::new(rollway_bin());
    command
        .arg("agent")
        .arg("restore")
        .arg("--state")
        .arg(state)
        .arg("--master-key")
        .arg(master_key)
        .args(["--remote", remote, "--endpoint", endpoint, "--id", id])
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .env_remove("ROLLWAY_MASTER_KEY")
        .kill_on_drop(true);
    tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("restore within the patience")
        .expect("run rollway agent restore")
}

/// The demo app's releases in a restored store, after its `integrity_check` passed.
fn releases_in(store: &Path) -> u64 {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\n\
             assert db.execute('PRAGMA integrity_check').fetchone()[0] == 'ok'\n\
             print(db.execute('SELECT count(*) FROM releases WHERE app = ? AND environment = ?', (sys.argv[2], sys.argv[3])).fetchone()[0])\n",
        ])
        .arg(store)
        .args([APP, ENV])
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .expect("a count")
}

async fn last_event_id(agent: &TestAgent) -> i64 {
    agent
        .events()
        .await
        .iter()
        .filter_map(|event| event["id"].as_i64())
        .max()
        .unwrap_or(0)
}

async fn wait_backed_up(agent: &TestAgent, after: i64, n: usize) -> Vec<Value> {
    wait_events(agent, "agent.backed_up", after, n).await
}

/// Waits for `n` events of `kind` recorded after event `after`; returns them.
async fn wait_events(agent: &TestAgent, kind: &str, after: i64, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let events: Vec<Value> = agent
            .events()
            .await
            .into_iter()
            .filter(|event| event["kind"] == kind && event["id"].as_i64() > Some(after))
            .collect();
        if events.len() >= n {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {n} `{kind}` events after {after}",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
