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
