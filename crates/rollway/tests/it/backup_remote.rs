//! End-to-end tests of off-host backups (issue 21) against a real S3-compatible server (`s3s-fs`
//! on loopback, started by the test over its own folder): the uploaded object is encrypted, a
//! backup whose local copy is gone restores from the remote row for row (SQLite and PostgreSQL),
//! the remote keeps `keep` backups, restore drills pass on a good backup and fail with an alert
//! on a corrupted one, a remote that is down alerts, and the S3 credentials never leak.
//!
//! Outside `scripts/test` (no `s3s-fs`, no PostgreSQL) the tests skip with one printed line.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{APP, TestAgent, files_containing, random_hex};
use testkit::s3::S3Server;

use crate::agent::{Setup, assert_contains};
use crate::release_phase::Postgres;

const ENV: &str = "production";
const BUCKET: &str = "rollway-backups";
const KEEP: usize = 2;
/// Bound of waits for the agent to reach a state.
const PATIENCE: Duration = Duration::from_secs(60);

/// Canary credentials for the S3 server and the app's secrets.
struct Credentials {
    access_key: String,
    secret_key: String,
}

impl Credentials {
    fn new() -> Credentials {
        Credentials {
            access_key: format!("AKCANARY{}", random_hex(6).to_uppercase()),
            secret_key: format!("sk-canary-{}", random_hex(16)),
        }
    }

    async fn set(&self, agent: &TestAgent) {
        for (name, value) in [
            ("S3_ACCESS_KEY_ID", &self.access_key),
            ("S3_SECRET_ACCESS_KEY", &self.secret_key),
        ] {
            agent.set_secret(APP, ENV, name, value).await.assert_code(0);
        }
    }
}

fn backup_section(app: testkit::agent::TestApp, s3: &S3Server) -> testkit::agent::TestApp {
    app.backup_line(format!("keep = {KEEP}"))
        .backup_line(format!("remote = \"s3://{BUCKET}/db\""))
        .backup_line(format!("endpoint = {:?}", s3.endpoint()))
        .backup_line("region = \"us-east-1\"")
        .backup_line("access_key_id = \"S3_ACCESS_KEY_ID\"")
        .backup_line("secret_access_key = \"S3_SECRET_ACCESS_KEY\"")
}

const MIGRATE_SQLITE: &str = "import os, sqlite3\n\
path = os.environ['DATABASE_URL'].split('sqlite://', 1)[1]\n\
db = sqlite3.connect(path)\n\
db.execute('CREATE TABLE IF NOT EXISTS items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)')\n\
db.execute('CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT)')\n\
db.commit()\n";

/// The app's own restore check: it must be given the scratch database, never the live one, and
/// find the canary rows there.
const CHECK_DB: &str = "import os, sqlite3, sys\n\
path = os.environ['DATABASE_URL'].split('sqlite://', 1)[1]\n\
if os.path.realpath(path) == os.path.realpath(os.environ['LIVE_DB']):\n\
\x20   sys.exit('given the live database')\n\
n = sqlite3.connect(path).execute(\"SELECT count(*) FROM items WHERE name LIKE 'canary-row-%'\").fetchone()[0]\n\
print('canary rows:', n)\n\
sys.exit(0 if n == 3 else 3)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_backups_go_off_host_encrypted_restore_from_the_remote_and_are_drilled() {
    let credentials = Credentials::new();
    let Some(mut s3) =
        S3Server::start(&credentials.access_key, &credentials.secret_key, &[BUCKET]).await
    else {
        return;
    };
    let mut setup = Setup::start().await;
    let agent = &setup.agent;
    let webhook = setup.webhook(ENV, "ALERT_WEBHOOK").await;
    let database = setup.shared_dir("data").join("app.db");
    agent
        .set_secret(
            APP,
            ENV,
            "DATABASE_URL",
            &format!("sqlite://{}", database.display()),
        )
        .await
        .assert_code(0);
    credentials.set(agent).await;
    let app = backup_section(setup.app("app", "v1"), &s3)
        .backup_line("verify = \"python3 check_db.py\"")
        .secrets(
            ENV,
            &[
                "DATABASE_URL",
                "S3_ACCESS_KEY_ID",
                "S3_SECRET_ACCESS_KEY",
                "ALERT_WEBHOOK",
            ],
        )
        .alerts_webhook("ALERT_WEBHOOK")
        .env("LIVE_DB", database.display().to_string())
        .release("python3 migrate.py", Some("DATABASE_URL"))
        .file("migrate.py", MIGRATE_SQLITE)
        .file("check_db.py", CHECK_DB);
    agent.deploy(&app, ENV).await.assert_code(0);
    // The remote's credentials are the agent's: the app's instances never get them.
    for name in ["S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] {
        let answer = agent.get(None, &format!("/sha256/{name}")).await;
        assert_eq!(answer.status, 404, "the app got `{name}`: {answer:?}");
    }
    assert_eq!(agent.get(None, "/sha256/DATABASE_URL").await.status, 200);
    let canary = format!("canary-row-{}", random_hex(8));
    sqlite_exec(
        &database,
        &format!(
            "INSERT INTO items (name) VALUES ('{canary}'), ('{canary}-2'), ('{canary}-3'), ('plain');\n\
             INSERT INTO notes (body) VALUES ('n1'), (NULL);"
        ),
    );
    let before = sqlite_rows(&database);
    assert_eq!(before.len(), 6, "{before:#?}");

    // 1. A backup on demand is uploaded sealed: the object holds no row's text.
    let id = create_backup(agent).await;
    wait_event(agent, "backup.uploaded", &id).await;
    let objects = s3.objects(BUCKET, ".sealed");
    assert_eq!(objects.len(), 1, "{objects:?}");
    let object = std::fs::read(&objects[0]).expect("the uploaded object");
    assert!(object.starts_with(b"RWBACKUP"), "not a sealed backup");
    assert!(
        !object.windows(canary.len()).any(|w| w == canary.as_bytes()),
        "the uploaded object holds the canary row's text"
    );
    assert!(!object.windows(15).any(|w| w == b"SQLite format 3"));
    let listed = agent.backups(APP, ENV).await;
    let key = listed[0]["remote"]
        .as_str()
        .expect("the remote key")
        .to_owned();
    assert!(objects[0].ends_with(&key), "{key} vs {:?}", objects[0]);
    assert_eq!(key, format!("db/{APP}/{ENV}/{id}.sqlite.sealed"));

    // 2. The local copy is lost and the live database changed: restore fetches the sealed copy.
    let local = agent
        .state_dir()
        .join(format!("backups/{APP}/{ENV}/{id}.sqlite"));
    std::fs::remove_file(&local).expect("delete the local copy");
    sqlite_exec(&database, "DELETE FROM items; DELETE FROM notes;");
    assert!(sqlite_rows(&database).is_empty());
    let remote_list = agent
        .cli(&[
            "backups", "list", "--remote", "--app", APP, "--env", ENV, "--json",
        ])
        .await;
    remote_list.assert_code(0);
    let remote_list: Vec<Value> = serde_json::from_str(&remote_list.stdout).expect("JSON");
    assert_eq!(remote_list.len(), 1, "{remote_list:#?}");
    assert_eq!(remote_list[0]["id"], id.as_str());
    assert_eq!(remote_list[0]["local"], false);
    let restored = agent
        .cli(&[
            "backups", "restore", &id, "--app", APP, "--env", ENV, "--yes",
        ])
        .await;
    restored.assert_code(0);
    assert_contains(&restored, "fetched backup");
    assert_eq!(sqlite_rows(&database), before, "restored from the remote");

    // Roles: a viewer lists the remote but runs no drill; no token, nothing.
    let created = agent
        .cli(&[
            "tokens", "create", "--role", "viewer", "--name", "v", "--json",
        ])
        .await;
    created.assert_code(0);
    let created: Value = serde_json::from_str(&created.stdout).expect("token JSON");
    let viewer = created["token"].as_str().expect("token").to_owned();
    let remote_path = format!("/v1/apps/{APP}/environments/{ENV}/backups/remote");
    let verify_path = format!("/v1/apps/{APP}/environments/{ENV}/backups/verify");
    assert_eq!(
        agent.api_status("GET", &remote_path, Some(&viewer)).await,
        200
    );
    assert_eq!(agent.api_status("GET", &remote_path, None).await, 401);
    assert_eq!(
        agent.api_status("POST", &verify_path, Some(&viewer)).await,
        403
    );
    assert_eq!(agent.api_status("POST", &verify_path, None).await, 401);

    // 3. A drill passes on the good backup, leaves the live database alone, runs the app's check.
    let live_before = std::fs::read(&database).expect("the live database");
    let verified = agent
        .cli(&[
            "backups", "verify", &id, "--app", APP, "--env", ENV, "--json",
        ])
        .await;
    verified.assert_code(0);
    let drill: Value = serde_json::from_str(&verified.stdout).expect("drill JSON");
    assert_eq!(drill["passed"], true, "{drill:#}");
    assert_eq!(
        drill["tables"],
        serde_json::json!([{"table": "items", "rows": 4}, {"table": "notes", "rows": 2}]),
        "{drill:#}"
    );
    assert_contains(&verified, "integrity_check: ok");
    assert_contains(&verified, "`python3 check_db.py` passed");
    assert_eq!(std::fs::read(&database).expect("live"), live_before);
    wait_event(agent, "backup.verified", &id).await;

    // 4. Flipped bytes: the drill fails, with an event and an alert.
    let bytes_local = agent
        .state_dir()
        .join(format!("backups/{APP}/{ENV}/{id}.sqlite"));
    let mut bytes = std::fs::read(&bytes_local).expect("the fetched local copy");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    bytes[middle + 1] ^= 0xff;
    std::fs::write(&bytes_local, &bytes).expect("corrupt the backup");
    let failed = agent
        .cli(&["backups", "verify", &id, "--app", APP, "--env", ENV])
        .await;
    failed.assert_code(1);
    assert_contains(&failed, "corrupt");
    wait_event(agent, "backup.verify_failed", &id).await;
    let alerts = webhook.wait_for(1, PATIENCE).await;
    assert!(
        alerts
            .iter()
            .any(|alert| alert.body.contains("restore drill") && alert.body.contains(&id)),
        "{alerts:#?}"
    );

    // 5. keep + 3 backups: the remote holds `keep`, the newest ones.
    let mut ids = vec![id.clone()];
    for _ in 0..(KEEP + 2) {
        let id = create_backup(agent).await;
        wait_event(agent, "backup.uploaded", &id).await;
        ids.push(id);
    }
    let on_remote: Vec<String> = s3
        .objects(BUCKET, ".sealed")
        .iter()
        .filter_map(|path| {
            path.file_name()?
                .to_str()?
                .split('.')
                .next()
                .map(str::to_owned)
        })
        .collect();
    let mut newest: Vec<String> = ids[ids.len() - KEEP..].to_vec();
    newest.sort();
    assert_eq!(on_remote, newest, "after {} backups", ids.len());

    // 6. A new host with the master key but none of the agent's records (its state was not
    // restored): the remote's backups are listed there and one restores by its id.
    let newest = ids.last().expect("a backup").clone();
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other_state = other_dir.path().join("state");
    std::fs::write(
        other_dir.path().join("state.master.key"),
        std::fs::read(agent.master_key_file()).expect("the master key"),
    )
    .expect("copy the master key");
    let other = TestAgent::start(crate::agent::rollway_bin(), &other_state).await;
    for (name, value) in [
        ("DATABASE_URL", format!("sqlite://{}", database.display())),
        ("S3_ACCESS_KEY_ID", credentials.access_key.clone()),
        ("S3_SECRET_ACCESS_KEY", credentials.secret_key.clone()),
        ("ALERT_WEBHOOK", webhook.url("/other")),
    ] {
        other
            .set_secret(APP, ENV, name, &value)
            .await
            .assert_code(0);
    }
    other.deploy(&app, ENV).await.assert_code(0);
    let listed = other
        .cli(&[
            "backups", "list", "--remote", "--app", APP, "--env", ENV, "--json",
        ])
        .await;
    listed.assert_code(0);
    let listed: Vec<Value> = serde_json::from_str(&listed.stdout).expect("JSON");
    assert!(
        listed
            .iter()
            .any(|backup| backup["id"] == newest.as_str() && backup["local"] == false),
        "{listed:#?}"
    );
    sqlite_exec(&database, "DELETE FROM items;");
    let restored_there = other
        .cli(&[
            "backups", "restore", &newest, "--app", APP, "--env", ENV, "--yes",
        ])
        .await;
    restored_there.assert_code(0);
    assert_contains(&restored_there, "fetched backup");
    assert_eq!(
        sqlite_rows(&database),
        before,
        "restored on a new host by id"
    );
    drop(other);

    // 7. The remote is down: retries, then an event and an alert.
    s3.stop().await;
    let id = create_backup(agent).await;
    let failed = wait_event(agent, "backup.upload_failed", &id).await;
    assert!(
        failed["message"]
            .as_str()
            .is_some_and(|m| m.contains("after 5 attempts")),
        "{failed:#}"
    );
    let alerts = webhook.wait_for(2, PATIENCE).await;
    assert!(
        alerts
            .iter()
            .any(|alert| alert.body.contains("not uploaded") && alert.body.contains(&id)),
        "{alerts:#?}"
    );
    // The remote is back and the agent restarts: the backup that was never uploaded is, by the
    // agent's next schedule pass.
    s3.restart(&credentials.access_key, &credentials.secret_key)
        .await;
    setup.agent.restart_with_env(&[]).await;
    let agent = &setup.agent;
    let uploaded = wait_event_within(agent, "backup.uploaded", &id, Duration::from_secs(90)).await;
    assert!(
        uploaded["message"]
            .as_str()
            .is_some_and(|m| m.contains(&id)),
        "{uploaded:#}"
    );
    assert_eq!(
        s3.objects(BUCKET, &format!("{id}.sqlite.sealed")).len(),
        1,
        "the late upload"
    );

    // 8. The credentials appear nowhere: log, events, API answers, CLI output, state files.
    let events = agent.events().await;
    let answers = [
        serde_json::to_string(&events).expect("events"),
        serde_json::to_string(&agent.backups(APP, ENV).await).expect("backups"),
        agent.log(),
        restored.stdout.clone() + &restored.stderr,
        verified.stdout.clone() + &verified.stderr,
    ];
    for canary in [&credentials.access_key, &credentials.secret_key] {
        for (idx, answer) in answers.iter().enumerate() {
            assert!(
                !answer.contains(canary.as_str()),
                "answer {idx} holds a credential"
            );
        }
        assert_eq!(
            files_containing(agent.state_dir(), canary),
            Vec::<std::path::PathBuf>::new(),
            "state files hold a credential"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backups_restore_from_the_remote_row_for_row_and_drill_in_a_scratch_database() {
    let Some(postgres) = Postgres::from_env() else {
        return;
    };
    let credentials = Credentials::new();
    let Some(s3) =
        S3Server::start(&credentials.access_key, &credentials.secret_key, &[BUCKET]).await
    else {
        return;
    };
    let database = postgres.create_database().await;
    let setup = Setup::start().await;
    let agent = &setup.agent;
    // The release command connects through PG* variables: no password in any argv.
    let names = [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
    ];
    for (name, value) in [
        ("DATABASE_URL", postgres.url(&database)),
        ("PGHOST", postgres.host.clone()),
        ("PGPORT", postgres.port.clone()),
        ("PGUSER", postgres.user.clone()),
        ("PGPASSWORD", postgres.password.clone()),
        ("PGDATABASE", database.clone()),
    ] {
        agent
            .set_secret(APP, ENV, name, &value)
            .await
            .assert_code(0);
    }
    credentials.set(agent).await;
    let create = "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text NOT NULL);\n";
    let app = backup_section(setup.app("app", "v1"), &s3)
        .secrets(ENV, &names)
        .release(
            "psql -X -q -v ON_ERROR_STOP=1 -f migrate.sql",
            Some("DATABASE_URL"),
        )
        .file("migrate.sql", create);
    agent.deploy(&app, ENV).await.assert_code(0);
    let canary = format!("canary-row-{}", random_hex(8));
    postgres
        .psql(
            &database,
            &format!(
                "INSERT INTO items (name) SELECT '{canary}-' || n FROM generate_series(1, 25) AS n"
            ),
        )
        .await;
    let rows = "SELECT id || ':' || name FROM items ORDER BY id";
    let before = postgres.psql(&database, rows).await;
    assert_eq!(before.lines().count(), 25);

    let id = create_backup(agent).await;
    wait_event(agent, "backup.uploaded", &id).await;
    // Release 1's backup (an empty database) is there too.
    let objects = s3.objects(BUCKET, &format!("{id}.dump.sealed"));
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert_eq!(s3.objects(BUCKET, ".dump.sealed").len(), 2);
    let object = std::fs::read(&objects[0]).expect("the uploaded object");
    assert!(!object.windows(canary.len()).any(|w| w == canary.as_bytes()));

    std::fs::remove_file(
        agent
            .state_dir()
            .join(format!("backups/{APP}/{ENV}/{id}.dump")),
    )
    .expect("delete the local copy");
    postgres.psql(&database, "DELETE FROM items").await;
    let restored = agent
        .cli(&[
            "backups", "restore", &id, "--app", APP, "--env", ENV, "--yes",
        ])
        .await;
    restored.assert_code(0);
    assert_contains(&restored, "fetched backup");
    assert_eq!(
        postgres.psql(&database, rows).await,
        before,
        "restored from the remote"
    );

    let verified = agent
        .cli(&[
            "backups", "verify", &id, "--app", APP, "--env", ENV, "--json",
        ])
        .await;
    verified.assert_code(0);
    let drill: Value = serde_json::from_str(&verified.stdout).expect("drill JSON");
    assert_eq!(drill["passed"], true, "{drill:#}");
    assert_eq!(
        drill["tables"],
        serde_json::json!([{"table": "public.items", "rows": 25}]),
        "{drill:#}"
    );
    assert_contains(&verified, "pg_restore succeeded");
    assert_contains(&verified, "dropped the scratch database");
    let scratch = postgres
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'rollway_drill_%'",
        )
        .await;
    assert_eq!(scratch, "0", "a scratch database was left behind");
    assert_eq!(
        postgres.psql(&database, rows).await,
        before,
        "the live database moved"
    );

    drop(setup);
    postgres.drop_database(&database).await;
}

/// `rollway backups create --json`: the new backup's id.
async fn create_backup(agent: &TestAgent) -> String {
    let ran = agent
        .cli(&["backups", "create", "--app", APP, "--env", ENV, "--json"])
        .await;
    ran.assert_code(0);
    let created: Value = serde_json::from_str(&ran.stdout).expect("backup JSON");
    created["id"].as_str().expect("id").to_owned()
}

/// Waits for an event of `kind` whose message names `id`; returns it.
async fn wait_event(agent: &TestAgent, kind: &str, id: &str) -> Value {
    wait_event_within(agent, kind, id, PATIENCE).await
}

async fn wait_event_within(agent: &TestAgent, kind: &str, id: &str, patience: Duration) -> Value {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let events = agent.events().await;
        if let Some(event) = events.iter().find(|event| {
            event["kind"] == kind && event["message"].as_str().is_some_and(|m| m.contains(id))
        }) {
            return event.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `{kind}` event for {id}: {:#?}",
            &events[events.len().saturating_sub(8)..]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn sqlite_exec(path: &Path, sql: &str) {
    let status = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\ndb.executescript(sys.argv[2])\ndb.commit()\n",
        ])
        .arg(path)
        .arg(sql)
        .status()
        .expect("python3");
    assert!(status.success(), "sqlite `{sql}` failed");
}

/// Every row of every table, in order, as text.
fn sqlite_rows(path: &Path) -> Vec<String> {
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import sqlite3, sys\ndb = sqlite3.connect(sys.argv[1])\n\
             for (t,) in db.execute(\"SELECT name FROM sqlite_master WHERE type='table' ORDER BY name\").fetchall():\n\
             \x20   for row in db.execute(f'SELECT * FROM \"{t}\" ORDER BY rowid'):\n\
             \x20       print(t, repr(row))\n",
        ])
        .arg(path)
        .output()
        .expect("python3");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_restored_on_a_fresh_state_dir_serves_its_releases_and_deploys() {
    let credentials = Credentials::new();
    let Some(s3) =
        S3Server::start(&credentials.access_key, &credentials.secret_key, &[BUCKET]).await
    else {
        return;
    };
    let Setup { agent, dir } = Setup::start().await;
    // The app's SQLite database lives on the host too (apart from the state directory, writable
    // by the app's user); its backups go to the same remote.
    let data = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(
        data.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )
    .expect("chmod");
    let database = data.path().join("app.db");
    let greeting = format!("greeting-canary-{}", random_hex(8));
    for (name, value) in [
        ("GREETING", greeting.clone()),
        ("DATABASE_URL", format!("sqlite://{}", database.display())),
        ("S3_ACCESS_KEY_ID", credentials.access_key.clone()),
        ("S3_SECRET_ACCESS_KEY", credentials.secret_key.clone()),
    ] {
        agent
            .set_secret(APP, ENV, name, &value)
            .await
            .assert_code(0);
    }
    let app = |folder: &Path, version: &str| {
        backup_section(
            testkit::agent::TestApp::new(folder.join("app")).version(version),
            &s3,
        )
        .secrets(
            ENV,
            &[
                "GREETING",
                "DATABASE_URL",
                "S3_ACCESS_KEY_ID",
                "S3_SECRET_ACCESS_KEY",
            ],
        )
        .release("python3 migrate.py", Some("DATABASE_URL"))
        .file("migrate.py", MIGRATE_SQLITE)
    };
    agent
        .deploy(&app(dir.path(), "v1"), ENV)
        .await
        .assert_code(0);
    agent
        .deploy(&app(dir.path(), "v2"), ENV)
        .await
        .assert_code(0);
    agent.assert_serves("v2").await;
    let canary = format!("canary-row-{}", random_hex(8));
    sqlite_exec(
        &database,
        &format!(
            "INSERT INTO items (name) VALUES ('{canary}'), ('plain'); INSERT INTO notes (body) VALUES ('n1');"
        ),
    );
    let rows = sqlite_rows(&database);
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let backup_id = create_backup(&agent).await;
    wait_event(&agent, "backup.uploaded", &backup_id).await;
    let before = releases(&agent).await;
    let events_before = agent.events().await;
    assert!(before.contains("v2") || before.contains('2'), "{before}");

    // Back up the running agent's state; the snapshot is sealed.
    let state_args = |state: &Path, key: &Path| -> Vec<String> {
        vec![
            "--state".to_owned(),
            state.display().to_string(),
            "--master-key".to_owned(),
            key.display().to_string(),
            "--remote".to_owned(),
            format!("s3://{BUCKET}/agents"),
            "--endpoint".to_owned(),
            s3.endpoint(),
        ]
    };
    let cli = |action: &str, args: Vec<String>| {
        let mut command = tokio::process::Command::new(crate::agent::rollway_bin());
        command
            .arg("agent")
            .arg(action)
            .args(args)
            .env("NO_COLOR", "1")
            .env(
                "ROLLWAY_BACKUP_ACCESS_KEY_ID",
                credentials.access_key.clone(),
            )
            .env(
                "ROLLWAY_BACKUP_SECRET_ACCESS_KEY",
                credentials.secret_key.clone(),
            )
            .env_remove("ROLLWAY_MASTER_KEY")
            .kill_on_drop(true);
        testkit::agent::run(command)
    };
    let clock = tokio::time::Instant::now();
    let backed_up = cli(
        "backup",
        state_args(agent.state_dir(), &agent.master_key_file()),
    )
    .await;
    backed_up.assert_code(0);
    let backup_took = clock.elapsed();
    assert_contains(&backed_up, "Backed up");
    let snapshots = s3.objects(BUCKET, ".tar.sealed");
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    let object = std::fs::read(&snapshots[0]).expect("the snapshot");
    assert!(!object.windows(15).any(|w| w == b"SQLite format 3"));
    assert!(
        !object
            .windows(greeting.len())
            .any(|w| w == greeting.as_bytes())
    );

    // The host is lost: the agent, its instances and its state directory are gone.
    let master_key = std::fs::read(agent.master_key_file()).expect("the master key");
    let admin_token = std::fs::read(agent.state_dir().join("admin.token")).expect("admin token");
    drop(agent);
    drop(dir);
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", database.display()));
    }

    // A new host: the master key, an empty state directory, the remote.
    let fresh = tempfile::tempdir().expect("tempdir");
    let state = fresh.path().join("state");
    let key_file = fresh.path().join("state.master.key");
    // Without the master key nothing is restored (and no new key is made).
    let refused = cli("restore", state_args(&state, &key_file)).await;
    refused.assert_code(2);
    assert!(!key_file.exists(), "a master key was made");
    std::fs::write(&key_file, &master_key).expect("write the master key");
    let clock = tokio::time::Instant::now();
    let restored = cli("restore", state_args(&state, &key_file)).await;
    restored.assert_code(0);
    let restore_took = clock.elapsed();
    assert_contains(&restored, "Restored");
    // Never over an existing store.
    let again = cli("restore", state_args(&state, &key_file)).await;
    again.assert_code(1);
    assert_contains(&again, "already holds a store");
    // The operator's CLI keeps its token; the test agent reads it from here.
    std::fs::write(state.join("admin.token"), &admin_token).expect("admin token");

    let clock = tokio::time::Instant::now();
    let agent = TestAgent::start(crate::agent::rollway_bin(), &state).await;
    let start_took = clock.elapsed();
    assert_eq!(releases(&agent).await, before, "releases after the restore");
    // Every event came back, same ids and words (the new agent may add its own after them).
    let events_after = agent.events().await;
    assert!(events_after.len() >= events_before.len());
    for (old, new) in events_before.iter().zip(&events_after) {
        assert_eq!(
            (&old["id"], &old["kind"], &old["message"]),
            (&new["id"], &new["kind"], &new["message"])
        );
    }
    let secrets = agent
        .cli(&["secrets", "list", "--app", APP, "--env", ENV])
        .await;
    secrets.assert_code(0);
    assert_contains(&secrets, "GREETING");
    // The runbook's database step: an empty database where `DATABASE_URL` points, then the backup
    // by its id; the new host has no local copy, so it comes from the remote, rows and all.
    std::fs::write(&database, b"").expect("an empty database");
    std::fs::set_permissions(
        &database,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .expect("chmod");
    let clock = tokio::time::Instant::now();
    let restored_db = agent
        .cli(&[
            "backups", "restore", &backup_id, "--app", APP, "--env", ENV, "--yes",
        ])
        .await;
    restored_db.assert_code(0);
    let database_took = clock.elapsed();
    assert_contains(&restored_db, "fetched backup");
    assert_eq!(
        sqlite_rows(&database),
        rows,
        "the database after the restore"
    );
    let clock = tokio::time::Instant::now();
    agent
        .deploy(&app(fresh.path(), "v3"), ENV)
        .await
        .assert_code(0);
    agent.assert_serves("v3").await;
    assert_eq!(
        sqlite_rows(&database),
        rows,
        "the database after the redeploy"
    );
    // For the runbook in deploy/README.md (`--nocapture` shows them).
    println!(
        "disaster recovery: backup {backup_took:?}, restore {restore_took:?}, agent start {start_took:?}, database restore {database_took:?}, redeploy {:?}",
        clock.elapsed()
    );
}

/// `rollway releases --json` of the demo app.
async fn releases(agent: &TestAgent) -> String {
    let ran = agent
        .cli(&["releases", "--app", APP, "--env", ENV, "--json"])
        .await;
    ran.assert_code(0);
    ran.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_restore_drills_run_by_themselves() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let database = setup.shared_dir("data").join("app.db");
    agent
        .set_secret(
            APP,
            ENV,
            "DATABASE_URL",
            &format!("sqlite://{}", database.display()),
        )
        .await
        .assert_code(0);
    // `hourly`: the last due time is this hour's start, so the agent's first schedule pass (every
    // 30 s) after a backup exists runs a drill, and no other until the next hour.
    let app = setup
        .app("app", "v1")
        .backup_line("verify_schedule = \"hourly\"")
        .secrets(ENV, &["DATABASE_URL"])
        .release("python3 migrate.py", Some("DATABASE_URL"))
        .file("migrate.py", MIGRATE_SQLITE);
    agent.deploy(&app, ENV).await.assert_code(0);
    sqlite_exec(&database, "INSERT INTO items (name) VALUES ('a'), ('b');");
    let id = create_backup(agent).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let drill = loop {
        let events = agent.events().await;
        let drills: Vec<&Value> = events
            .iter()
            .filter(|event| event["kind"] == "backup.verified")
            .collect();
        if let Some(drill) = drills.first() {
            assert_eq!(drills.len(), 1, "{drills:#?}");
            break (*drill).clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no scheduled drill within 90 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let message = drill["message"].as_str().expect("message");
    assert!(
        message.contains(&id) && message.contains("(schedule)"),
        "{message}"
    );
    assert!(message.contains("items 2"), "{message}");
}
