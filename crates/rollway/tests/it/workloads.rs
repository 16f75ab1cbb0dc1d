//! End-to-end tests of issue 19's workloads: workers (services without a route) draining a queue
//! across deploys, cron jobs that run exactly once per tick, and one-off commands.
//!
//! Each test has its own state directory and loopback ports; assertions are about counts, states
//! and orderings, never about how long anything took.

use std::path::Path;
use std::time::Duration;

use testkit::agent::APP;

use crate::agent::Setup;

const ENV: &str = "production";
/// Bound of waits for a queue to drain or ticks to accumulate.
const PATIENCE: Duration = Duration::from_secs(120);

/// A worker that takes one queued job at a time from a SQLite queue (claimed in one transaction,
/// finished in another, as a real job runner does), and on SIGTERM finishes the job in hand
/// before it exits. A worker killed in the middle of a job leaves it `taken` for good (lost); a
/// job handed out twice has two rows in `done` (duplicated).
const QUEUE_WORKER: &str = r#"
import os, signal, sqlite3, time
stopping = False
def stop(*_):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, stop)
me = os.environ["ROLLWAY_INSTANCE"]
db = sqlite3.connect(os.environ["QUEUE_DB"], timeout=60, isolation_level=None)
while not stopping:
    db.execute("BEGIN IMMEDIATE")
    row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY id LIMIT 1").fetchone()
    if row is None:
        db.execute("COMMIT")
        time.sleep(0.05)
        continue
    db.execute("UPDATE jobs SET state = 'taken' WHERE id = ?", (row[0],))
    db.execute("COMMIT")
    time.sleep(0.03)  # the job in hand
    db.execute("BEGIN IMMEDIATE")
    db.execute("INSERT INTO done (job, instance) VALUES (?, ?)", (row[0], me))
    db.execute("UPDATE jobs SET state = 'done' WHERE id = ?", (row[0],))
    db.execute("COMMIT")
"#;

/// Runs `sql` (one statement whose rows are printed `|`-separated, or a script when `script`)
/// against the SQLite file `db` with python3's sqlite3 module.
pub(crate) fn sqlite(db: &Path, sql: &str) -> String {
    const RUN: &str = r#"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=60)
if sys.argv[3] == "script":
    db.executescript(sys.argv[2])
else:
    for row in db.execute(sys.argv[2]):
        print("|".join(str(value) for value in row))
db.commit()
"#;
    let script = if sql.trim_end().ends_with(';') {
        "script"
    } else {
        "query"
    };
    #[allow(
        clippy::disallowed_methods,
        reason = "a short synchronous query of the test's own database"
    )]
    let output = std::process::Command::new("python3")
        .args(["-c", RUN])
        .arg(db)
        .arg(sql)
        .arg(script)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "`{sql}` on `{}`: {}",
        db.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A file the app's own user may write (apps run as their own users when the agent is root).
fn world_writable(path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).expect("chmod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_draining_a_queue_across_three_deploys_loses_and_duplicates_no_job() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let db = setup.shared_dir("queue").join("queue.db");
    let jobs: String = (1..=1000)
        .map(|id| format!("INSERT INTO jobs (id, state) VALUES ({id}, 'queued');\n"))
        .collect();
    sqlite(
        &db,
        &format!(
            "CREATE TABLE jobs (id INTEGER PRIMARY KEY, state TEXT NOT NULL);\n\
             CREATE TABLE done (job INTEGER NOT NULL, instance TEXT NOT NULL);\n{jobs}"
        ),
    );
    world_writable(&db);
    let app = |version: &str| {
        setup
            .app("app", version)
            .worker_run("python3 worker.py")
            .file("worker.py", QUEUE_WORKER)
            .env("QUEUE_DB", db.display().to_string())
    };
    agent.deploy(&app("v1"), ENV).await.assert_code(0);
    let status = agent.status(APP, ENV).await;
    assert!(
        status.to_string().contains("worker"),
        "`rollway status` shows the worker: {status}"
    );
    // Three deploys while the queue drains: each new worker starts before the old one is told to
    // stop, and the old one finishes the job in hand.
    for version in ["v2", "v3", "v4"] {
        agent.deploy(&app(version), ENV).await.assert_code(0);
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let left = sqlite(&db, "SELECT count(*) FROM jobs WHERE state = 'queued'");
        if left == "0" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{left} jobs still queued"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The last job taken is finished within the worker's time for a job.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sqlite(&db, "SELECT count(*) FROM jobs WHERE state = 'taken'") != "0"
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        sqlite(&db, "SELECT count(*) FROM jobs WHERE state != 'done'"),
        "0",
        "lost jobs: {}",
        sqlite(&db, "SELECT id, state FROM jobs WHERE state != 'done'")
    );
    assert_eq!(
        sqlite(&db, "SELECT count(*), count(DISTINCT job) FROM done"),
        "1000|1000",
        "duplicated jobs: {}",
        sqlite(
            &db,
            "SELECT job, group_concat(instance) FROM done GROUP BY job HAVING count(*) > 1"
        )
    );
    // Workers of more than one release took jobs: deploys happened while the queue drained (it
    // holds 30 s of work for one worker; a deploy of the demo app takes a few seconds).
    let releases = sqlite(
        &db,
        "SELECT DISTINCT substr(instance, 1, instr(instance, '-worker-') - 1) FROM done ORDER BY 1",
    );
    assert!(
        releases.lines().count() >= 2,
        "jobs done by the workers of: {releases}"
    );
}

/// Debug builds accept per-second cron schedules with this variable (agent and CLI both read it).
const CRON_SECONDS: (&str, &str) = ("ROLLWAY_TEST_CRON_SECONDS", "1");

/// A cron job that writes one row per run: its tick and the release it ran in.
const TICK_JOB: &str = r#"
import os, sqlite3
db = sqlite3.connect(os.environ["TICKS_DB"], timeout=60)
db.execute("INSERT INTO ticks (tick, release) VALUES (?, ?)",
           (int(os.environ["ROLLWAY_CRON_TICK"]), int(os.environ["ROLLWAY_RELEASE"])))
db.commit()
"#;

/// `rollway cron runs JOB --json`, every run, oldest first.
async fn cron_runs(agent: &testkit::agent::TestAgent, job: &str) -> Vec<serde_json::Value> {
    let ran = agent
        .cli(&[
            "cron", "runs", job, "--app", APP, "--env", ENV, "--json", "--limit", "1000",
        ])
        .await;
    ran.assert_code(0);
    let mut runs: Vec<serde_json::Value> =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|error| panic!("{error}: {ran}"));
    runs.reverse();
    runs
}

/// Waits until `db`'s `ticks` table holds at least `n` more rows than `before`.
async fn wait_rows(db: &Path, before: u64, n: u64) -> u64 {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let rows: u64 = sqlite(db, "SELECT count(*) FROM ticks")
            .parse()
            .expect("count");
        if rows >= before + n {
            return rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{rows} rows, waited for {}",
            before + n
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cron_job_runs_exactly_once_per_tick_across_five_deploys_and_two_agent_kill_9s() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut agent = testkit::agent::TestAgent::start_with_env(
        crate::agent::rollway_bin(),
        &dir.path().join("state"),
        &[CRON_SECONDS],
    )
    .await;
    let shared = {
        use std::os::unix::fs::PermissionsExt as _;
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).expect("shared dir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        shared
    };
    let db = shared.join("ticks.db");
    sqlite(
        &db,
        "CREATE TABLE ticks (tick INTEGER NOT NULL, release INTEGER NOT NULL);",
    );
    world_writable(&db);
    let receiver = testkit::webhook::Receiver::start().await;
    agent
        .set_secret(APP, ENV, "ALERTS_URL", &receiver.url("/hook"))
        .await
        .assert_code(0);
    let app = |version: &str, cron: bool| {
        let app = testkit::agent::TestApp::new(dir.path().join("app"))
            .version(version)
            .alerts_webhook("ALERTS_URL")
            .file("tick.py", TICK_JOB)
            .env("TICKS_DB", db.display().to_string());
        if cron {
            app.extra(
                // `allow`: on a loaded machine a run may outlast its second; every tick still runs.
                "[cron.tick]\nschedule = \"* * * * * *\"\ncommand = \"python3 tick.py\"\ntimeout = \"30s\"\nconcurrency = \"allow\"\n\n\
                 [cron.broken]\nschedule = \"*/5 * * * * *\"\ncommand = \"echo broken; exit 7\"",
            )
        } else {
            app
        }
    };
    deploy_seconds(&agent, app("v1", true)).await.assert_code(0);
    let mut rows = wait_rows(&db, 0, 3).await;
    for (version, kill) in [("v2", true), ("v3", false), ("v4", true), ("v5", false)] {
        deploy_seconds(&agent, app(version, true))
            .await
            .assert_code(0);
        rows = wait_rows(&db, rows, 2).await;
        if kill {
            agent.kill9().await;
            // Down for a few ticks, so there are ticks to catch up on.
            tokio::time::sleep(Duration::from_millis(2500)).await;
            agent.restart_with_env(&[CRON_SECONDS]).await;
            rows = wait_rows(&db, rows, 2).await;
        }
    }
    // The last release has no cron job: the ticks stop, the runs in flight finish.
    deploy_seconds(&agent, app("v6", false))
        .await
        .assert_code(0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let runs = loop {
        let runs = cron_runs(&agent, "tick").await;
        if runs.iter().all(|run| run["state"] != "running") {
            break runs;
        }
        assert!(tokio::time::Instant::now() < deadline, "runs still going");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    // Every row is one tick's run: none doubled.
    assert_eq!(
        sqlite(&db, "SELECT count(*) - count(DISTINCT tick) FROM ticks"),
        "0",
        "ticks that ran twice: {}",
        sqlite(
            &db,
            "SELECT tick FROM ticks GROUP BY tick HAVING count(*) > 1"
        )
    );
    let rows: std::collections::BTreeMap<i64, u64> = sqlite(&db, "SELECT tick, release FROM ticks")
        .lines()
        .map(|line| {
            let (tick, release) = line.split_once('|').expect("tick|release");
            (
                tick.parse().expect("tick"),
                release.parse().expect("release"),
            )
        })
        .collect();
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for run in &runs {
        let tick = run["tick"].as_i64().expect("tick");
        let state = run["state"].as_str().expect("state").to_owned();
        *states.entry(state.clone()).or_default() += 1;
        match state.as_str() {
            // Succeeded: exactly its row, written in the release the run was recorded with.
            "succeeded" => assert_eq!(
                rows.get(&tick).copied(),
                run["release"].as_u64(),
                "run {run}"
            ),
            // The agent was killed while it ran: never started again (at most its one row).
            "interrupted" => {}
            other => panic!("a run ended `{other}`: {run}"),
        }
    }
    for tick in rows.keys() {
        assert!(
            runs.iter().any(|run| run["tick"].as_i64() == Some(*tick)),
            "row of tick {tick} without a recorded run"
        );
    }
    // Consecutive seconds, but for the agent's two downtimes (the latest missed tick of each
    // ran once on start: `catch_up`). Deploys cost no tick.
    let ticks: Vec<i64> = runs
        .iter()
        .filter(|run| run["trigger"] != "catch_up")
        .map(|run| run["tick"].as_i64().expect("tick"))
        .collect();
    let gaps = ticks
        .windows(2)
        .filter(|pair| pair[1] - pair[0] != 1000)
        .count();
    assert!(gaps <= 2, "{gaps} gaps in {ticks:?}");
    let caught_up = runs
        .iter()
        .filter(|run| run["trigger"] == "catch_up")
        .count();
    assert_eq!(caught_up, 2, "one catch-up run per restart: {runs:#?}");
    let releases: std::collections::BTreeSet<u64> = rows.values().copied().collect();
    assert!(
        releases.len() >= 4,
        "each deploy's release ran the job: {releases:?}"
    );
    // A failing job alerts through the webhook, with its exit code.
    let received = receiver.wait_for(1, PATIENCE).await;
    assert!(
        received.iter().any(
            |request| request.body.contains("cron job `broken` (release")
                && request.body.contains("failed with exit code 7")
        ),
        "{received:#?}"
    );
    eprintln!(
        "runs: {states:?}, rows: {}, gaps: {gaps}, releases: {releases:?}",
        rows.len()
    );
    drop(agent);
}

/// `rollway deploy` with per-second cron schedules accepted by the CLI's check too.
async fn deploy_seconds(
    agent: &testkit::agent::TestAgent,
    app: testkit::agent::TestApp,
) -> testkit::agent::Ran {
    let mut command = agent.deploy_command(&app, ENV, Some(agent.admin_token()));
    command.env(CRON_SECONDS.0, CRON_SECONDS.1);
    testkit::agent::run(command).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollway_run_streams_in_order_exits_with_the_command_code_and_never_shows_a_secret() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let canary = format!("canary-{}", testkit::agent::random_hex(12));
    let app = setup.app("app", "v1").secrets(ENV, &["CANARY_SECRET"]);
    // Day one: nothing deployed yet.
    let ran = agent
        .cli(&["run", "--app", APP, "--env", ENV, "--", "true"])
        .await;
    assert_ne!(ran.code, Some(0), "{ran}");
    agent
        .set_secret(APP, ENV, "CANARY_SECRET", &canary)
        .await
        .assert_code(0);
    agent.deploy(&app, ENV).await.assert_code(0);

    let script = "for i in $(seq 1 200); do echo out$i; echo err$i >&2; done; \
                  echo \"secret: $CANARY_SECRET\"; echo \"length: ${#CANARY_SECRET}\"; \
                  echo \"release: $ROLLWAY_RELEASE\"; exit 3";
    let ran = agent
        .cli(&["run", "--app", APP, "--env", ENV, "--", "sh", "-c", script])
        .await;
    ran.assert_code(3);
    let out: Vec<&str> = ran.stdout.lines().collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("out{i}")).collect();
    assert_eq!(out[..200], expected[..], "{ran}");
    let err: Vec<&str> = ran
        .stderr
        .lines()
        .filter(|line| line.starts_with("err"))
        .collect();
    let expected: Vec<String> = (1..=200).map(|i| format!("err{i}")).collect();
    assert_eq!(err, expected, "{ran}");
    // The command had the secret; its output shows it scrubbed.
    assert_eq!(
        out[200..],
        [
            "secret: ***".to_owned(),
            format!("length: {}", canary.len()),
            "release: 1".to_owned()
        ],
        "{ran}"
    );
    assert!(
        !ran.stdout.contains(&canary) && !ran.stderr.contains(&canary),
        "{ran}"
    );
    let ran = agent
        .cli(&[
            "run", "--app", APP, "--env", ENV, "--", "sh", "-c", "exit 0",
        ])
        .await;
    ran.assert_code(0);

    // Who ran what is in the audit log; never the environment.
    let events = agent.events().await;
    let text = serde_json::to_string(&events).expect("events JSON");
    assert!(!text.contains(&canary), "the canary is in the events");
    let started: Vec<&serde_json::Value> = events
        .iter()
        .filter(|event| event["kind"] == "run.started")
        .collect();
    assert_eq!(started.len(), 2, "{started:#?}");
    assert_eq!(started[0]["data"]["by"], "admin", "{started:#?}");
    assert!(
        started[0]["message"]
            .as_str()
            .is_some_and(|message| message.contains("sh -c for i in")),
        "{started:#?}"
    );
    let exited: Vec<i64> = events
        .iter()
        .filter(|event| event["kind"] == "run.exited")
        .filter_map(|event| event["data"]["code"].as_i64())
        .collect();
    assert_eq!(exited, [3, 0]);

    // A viewer may not run commands; an unknown service is named with those there are.
    let ran = agent
        .cli(&[
            "tokens", "create", "--role", "viewer", "--name", "watcher", "--json",
        ])
        .await;
    ran.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    let viewer = created["token"].as_str().expect("token value").to_owned();
    let ran = agent
        .cli_as(
            Some(&viewer),
            &["run", "--app", APP, "--env", ENV, "--", "true"],
        )
        .await;
    ran.assert_code(3);
    assert!(ran.stderr.contains("deployer"), "{ran}");
    let ran = agent
        .cli(&[
            "run",
            "--app",
            APP,
            "--env",
            ENV,
            "--service",
            "nope",
            "--",
            "true",
        ])
        .await;
    ran.assert_code(2);
    assert!(
        ran.stderr.contains("no service `nope`") && ran.stderr.contains("web"),
        "{ran}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apps_lists_every_environment_and_destroy_stops_one_and_keeps_its_records() {
    let mut setup = Setup::start().await;
    let demo = setup.app("demo", "v1").worker().hosts(&["demo.localhost"]);
    let other = setup
        .app("other", "v1")
        .named("other")
        .hosts(&["other.localhost"]);
    let agent = &mut setup.agent;
    agent.deploy(&demo, ENV).await.assert_code(0);
    agent.deploy(&other, "staging").await.assert_code(0);
    let apps = |ran: &testkit::agent::Ran| -> Vec<serde_json::Value> {
        ran.assert_code(0);
        serde_json::from_str(&ran.stdout).unwrap_or_else(|error| panic!("{error}: {ran}"))
    };
    let listed = apps(&agent.cli(&["apps", "--json"]).await);
    let summary: Vec<(String, String, u64, bool)> = listed
        .iter()
        .map(|view| {
            (
                view["app"].as_str().unwrap_or_default().to_owned(),
                view["environment"].as_str().unwrap_or_default().to_owned(),
                view["instances"].as_u64().unwrap_or_default(),
                view["active"].as_bool().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("demo".to_owned(), ENV.to_owned(), 2, true),
            ("other".to_owned(), "staging".to_owned(), 1, true)
        ]
    );

    // Day-one mistakes and a deployer's reach: nothing is destroyed.
    let refused = agent.cli(&["destroy", "--app", APP, "--env", ENV]).await;
    refused.assert_code(2);
    assert!(refused.stderr.contains("--confirm demo"), "{refused}");
    let refused = agent
        .cli(&["destroy", "--app", APP, "--env", ENV, "--confirm", "other"])
        .await;
    refused.assert_code(2);
    let ran = agent
        .cli(&[
            "tokens", "create", "--role", "deployer", "--name", "ci", "--json",
        ])
        .await;
    ran.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).expect("token JSON");
    let deployer = created["token"].as_str().expect("token value").to_owned();
    let refused = agent
        .cli_as(
            Some(&deployer),
            &["destroy", "--app", APP, "--env", ENV, "--confirm", APP],
        )
        .await;
    refused.assert_code(3);
    assert!(refused.stderr.contains("admin"), "{refused}");
    assert_eq!(agent.get(Some("demo.localhost"), "/").await.status, 200);

    let destroyed = agent
        .cli(&["destroy", "--app", APP, "--env", ENV, "--confirm", APP])
        .await;
    destroyed.assert_code(0);
    let running: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert_eq!(
        running,
        ["other-staging-r1-web-1"],
        "only the other app runs"
    );
    assert_eq!(agent.get(Some("demo.localhost"), "/").await.status, 404);
    assert_eq!(agent.get(Some("other.localhost"), "/").await.status, 200);
    // Records stay: its release, its events.
    let releases = agent
        .cli(&["releases", "--app", APP, "--env", ENV, "--json"])
        .await;
    releases.assert_code(0);
    let releases: Vec<serde_json::Value> =
        serde_json::from_str(&releases.stdout).expect("releases JSON");
    assert_eq!(releases.len(), 1);
    let events = agent.events().await;
    assert!(
        events
            .iter()
            .any(|event| event["kind"] == "environment.destroyed" && event["data"]["by"] == "admin"),
        "{events:#?}"
    );
    // A restarted agent keeps it destroyed.
    agent.restart_with_env(&[]).await;
    assert_eq!(agent.get(Some("demo.localhost"), "/").await.status, 404);
    let running: Vec<String> = agent.instance_pid_files().into_keys().collect();
    assert_eq!(running, ["other-staging-r1-web-1"]);
    let listed = apps(&agent.cli(&["apps", "--json"]).await);
    assert_eq!(listed[0]["active"], false, "{listed:#?}");
    assert_eq!(listed[0]["instances"], 0, "{listed:#?}");

    // Its next deploy brings it back.
    agent.deploy(&demo.version("v2"), ENV).await.assert_code(0);
    let answer = agent.get(Some("demo.localhost"), "/").await;
    assert_eq!(answer.status, 200);
    let listed = apps(&agent.cli(&["apps", "--json"]).await);
    assert_eq!(listed[0]["active"], true, "{listed:#?}");
}

/// A cron job that takes a while: a row when it starts and one when it ends, with its release.
const LONG_JOB: &str = r#"
import os, sqlite3, time
def row(phase):
    db = sqlite3.connect(os.environ["TICKS_DB"], timeout=60)
    db.execute("INSERT INTO phases (tick, release, phase) VALUES (?, ?, ?)",
               (int(os.environ["ROLLWAY_CRON_TICK"]), int(os.environ["ROLLWAY_RELEASE"]), phase))
    db.commit()
    db.close()
row("start")
time.sleep(3)
row("end")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_cron_job_survives_a_deploy_and_forbid_skips_the_ticks_it_spans() {
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = testkit::agent::TestAgent::start_with_env(
        crate::agent::rollway_bin(),
        &dir.path().join("state"),
        &[CRON_SECONDS],
    )
    .await;
    let shared = {
        use std::os::unix::fs::PermissionsExt as _;
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(&shared).expect("shared dir");
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).expect("chmod");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
            .expect("chmod");
        shared
    };
    let db = shared.join("phases.db");
    sqlite(
        &db,
        "CREATE TABLE phases (tick INTEGER NOT NULL, release INTEGER NOT NULL, phase TEXT NOT NULL);",
    );
    world_writable(&db);
    let app = |version: &str| {
        testkit::agent::TestApp::new(dir.path().join("app"))
            .version(version)
            .file("long.py", LONG_JOB)
            .env("TICKS_DB", db.display().to_string())
            .extra(
                "[cron.long]\nschedule = \"* * * * * *\"\ncommand = \"python3 long.py\"\nconcurrency = \"forbid\"\ntimeout = \"60s\"",
            )
    };
    deploy_seconds(&agent, app("v1")).await.assert_code(0);
    // Deploy while release 1's run is in the middle of its job.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let tick = loop {
        let started = sqlite(&db, "SELECT tick FROM phases WHERE phase = 'start' LIMIT 1");
        if !started.is_empty() {
            break started;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the job never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    deploy_seconds(&agent, app("v2")).await.assert_code(0);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let ended = sqlite(
            &db,
            &format!("SELECT release FROM phases WHERE phase = 'end' AND tick = {tick}"),
        );
        if !ended.is_empty() {
            assert_eq!(ended, "1", "the run finished under its own release");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the run never ended"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Until release 2 ran once, then stop the ticks.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while sqlite(
        &db,
        "SELECT count(*) FROM phases WHERE release = 2 AND phase = 'end'",
    ) == "0"
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "release 2 never ran the job"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs = cron_runs(&agent, "long").await;
    let first = runs
        .iter()
        .find(|run| run["tick"].as_i64().map(|tick| tick.to_string()) == Some(tick.clone()))
        .expect("the first run is recorded");
    assert_eq!(first["state"], "succeeded", "{first}");
    assert_eq!(first["release"], 1, "{first}");
    assert_eq!(first["exit_code"], 0, "{first}");
    // Ticks that came while a run went were recorded as skipped and never started.
    let skipped: Vec<i64> = runs
        .iter()
        .filter(|run| run["state"] == "skipped")
        .filter_map(|run| run["tick"].as_i64())
        .collect();
    assert!(!skipped.is_empty(), "{runs:#?}");
    for tick in &skipped {
        assert_eq!(
            sqlite(
                &db,
                &format!("SELECT count(*) FROM phases WHERE tick = {tick}")
            ),
            "0"
        );
    }
    assert!(
        runs.iter().all(|run| ["succeeded", "skipped", "running"]
            .contains(&run["state"].as_str().unwrap_or(""))),
        "{runs:#?}"
    );
    // `rollway cron` lists the job with its next run.
    let listed = agent
        .cli(&["cron", "--app", APP, "--env", ENV, "--json"])
        .await;
    listed.assert_code(0);
    let listed: serde_json::Value = serde_json::from_str(&listed.stdout).expect("cron JSON");
    assert_eq!(listed["release"], 2, "{listed:#}");
    assert_eq!(listed["jobs"][0]["name"], "long", "{listed:#}");
    assert!(
        listed["jobs"][0]["next_run"].as_i64().is_some(),
        "{listed:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_health_command_gates_its_release_and_a_failing_one_keeps_the_old_worker() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    // The worker says it is ready with a file in its private temp folder, a second after start.
    let app = |version: &str, check: &str| {
        setup
            .app("app", version)
            .worker_run("sleep 1; touch \"$TMPDIR/ready\"; exec sleep 1000")
            .extra(format!(
                "[services.worker.health]\ncommand = {check:?}\ninterval = \"200ms\"\nstart_timeout = \"5s\""
            ))
    };
    let ready = "test -f \"$TMPDIR/ready\"";
    let ran = agent.deploy(&app("v1", ready), ENV).await;
    ran.assert_code(0);
    let id = |release: u64| format!("{APP}-{ENV}-r{release}-worker-1");
    assert!(
        agent.instance_pid_files().contains_key(&id(1)),
        "{:?}",
        agent.instance_pid_files()
    );
    let status = agent.status(APP, ENV).await;
    assert!(status.to_string().contains(&id(1)), "{status}");

    let ran = agent
        .deploy(&app("v2", "echo not ready yet; exit 4"), ENV)
        .await;
    ran.assert_code(1);
    assert!(
        ran.stderr.contains("exited with 4") && ran.stderr.contains("not ready yet"),
        "{ran}"
    );
    let running = agent.instance_pid_files();
    assert!(
        running.contains_key(&id(1)) && !running.contains_key(&id(2)),
        "the old worker keeps working, the new one is gone: {running:?}"
    );
}

/// A tmux server of the test's own (its own socket), killed when dropped.
struct Tmux {
    socket: std::path::PathBuf,
}

impl Tmux {
    fn command(&self, args: &[&str]) -> std::process::Output {
        #[allow(
            clippy::disallowed_methods,
            reason = "tmux commands return at once; the test drives a terminal through them"
        )]
        std::process::Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux runs")
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.command(&["capture-pane", "-p", "-t", "run"]).stdout)
            .into_owned()
    }

    async fn wait_screen(&self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "`{needle}` never showed; the screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollway_run_interactive_gives_a_terminal_driven_through_tmux() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let canary = format!("canary-{}", testkit::agent::random_hex(12));
    agent
        .set_secret(APP, ENV, "CANARY_SECRET", &canary)
        .await
        .assert_code(0);
    agent
        .deploy(
            &setup.app("app", "v1").secrets(ENV, &["CANARY_SECRET"]),
            ENV,
        )
        .await
        .assert_code(0);
    // Without a terminal it says what to do.
    let ran = agent
        .cli(&["run", "-i", "--app", APP, "--env", ENV, "--", "sh"])
        .await;
    ran.assert_code(2);
    assert!(ran.stderr.contains("needs a terminal"), "{ran}");

    let exit_file = setup.dir.path().join("exit");
    let script = setup.dir.path().join("session.sh");
    std::fs::write(
        &script,
        format!(
            "NO_COLOR=1 ROLLWAY_TOKEN={token} ROLLWAY_STATE_DIR={nowhere} {rollway} run -i --app {APP} --env {ENV} --agent {url} -- sh\n\
             echo \"exit:$?\" > {exit}\nsleep 600\n",
            token = agent.admin_token(),
            nowhere = setup.dir.path().join("no-local-agent").display(),
            rollway = crate::agent::rollway_bin().display(),
            url = agent.api_url(),
            exit = exit_file.display(),
        ),
    )
    .expect("session script");
    let tmux = Tmux {
        socket: setup.dir.path().join("tmux.sock"),
    };
    let started = tmux.command(&[
        "new-session",
        "-d",
        "-s",
        "run",
        "-x",
        "120",
        "-y",
        "30",
        &format!("sh {}", script.display()),
    ]);
    assert!(started.status.success(), "{started:?}");
    // A prompt from the shell on the agent, then a command typed into it.
    tmux.wait_screen("$").await;
    tmux.command(&[
        "send-keys",
        "-t",
        "run",
        "tty; stty size; echo \"sum: $((6*7)) release: $ROLLWAY_RELEASE\"; echo \"$CANARY_SECRET\"",
        "Enter",
    ]);
    let screen = tmux.wait_screen("sum: 42 release: 1").await;
    assert!(
        screen.contains("/dev/pts/"),
        "a terminal of its own:\n{screen}"
    );
    assert!(screen.contains("30 120"), "the terminal's size:\n{screen}");
    assert!(
        !screen.contains(&canary),
        "the secret is scrubbed:\n{screen}"
    );
    tmux.command(&["send-keys", "-t", "run", "exit 5", "Enter"]);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Ok(text) = std::fs::read_to_string(&exit_file) {
            assert_eq!(text.trim(), "exit:5", "{}", tmux.screen());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the session never ended:\n{}",
            tmux.screen()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = agent.events().await;
    let exited: Vec<i64> = events
        .iter()
        .filter(|event| event["kind"] == "run.exited")
        .filter_map(|event| event["data"]["code"].as_i64())
        .collect();
    assert_eq!(exited, [5], "{events:#?}");
}
