//! End-to-end tests of the release phase: a backup before every release command and a restore
//! that gives the pre-migration database back (SQLite with examples/logistix, and PostgreSQL), a
//! failing migration that moves no traffic, secrets that never leak and follow rollbacks, missing
//! config refused before anything moves, flags-only deploys that reuse the artifact, and the
//! deploy's own work (the commands, a new instance until its gate) below the serving instances.
//!
//! Each test has its own state directory and loopback ports. The PostgreSQL test needs the
//! throwaway cluster of `scripts/test` (`ROLLWAY_TEST_POSTGRES_URL`); it fails when `ROLLWAY_E2E`
//! is set without it, and skips with one printed line otherwise.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use testkit::agent::{
    APP, Ran, TestAgent, files_containing, processes_with_cmdline_containing, random_hex,
    sha256_hex,
};
use testkit::load::Load;
use tokio::process::Command;

use crate::agent::{Setup, assert_contains};

const ENV: &str = "production";
const LOGISTIX: &str = "logistix";
const LOGISTIX_HOST: &str = "logistix.example.com";
/// Bound of every load loop; tests stop theirs long before.
const LOAD_BOUND: Duration = Duration::from_secs(240);
/// Bound of waits for the agent to reach a state.
const PATIENCE: Duration = Duration::from_secs(60);

// 1. examples/logistix: the backup is taken before the migration and restores the rows.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logistix_backup_before_migration_restores_schema_and_rows() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let logistix = Logistix::deploy_v1(&setup).await;
    logistix.create_shipments(agent, 6).await;
    let before = logistix.snapshot();
    assert_eq!(before.count("shipments"), 6, "{before:?}");
    assert_eq!(before.count("tracking_events"), 9, "{before:?}");

    logistix.add_migration(
        "003_add_weight.sql",
        "ALTER TABLE shipments ADD COLUMN weight_kg REAL NOT NULL DEFAULT 0;\n\
         UPDATE shipments SET weight_kg = id * 1.5, destination = upper(destination);\n",
    );
    let ran = agent.deploy_dir(&logistix.dir, ENV).await;
    ran.assert_code(0);
    assert_contains(&ran, "Backed up");
    assert_contains(&ran, "applied 003_add_weight");

    // The first deploy found no database yet: one backup, taken for release 2.
    let backups = agent.backups(LOGISTIX, ENV).await;
    assert_eq!(backups.len(), 1, "{backups:#?}");
    let backup = &backups[0];
    assert_eq!(backup["reason"], "release", "{backup:#}");
    assert_eq!(backup["kind"], "sqlite", "{backup:#}");
    assert_eq!(backup["release"], 2, "{backup:#}");
    let id = backup["id"].as_str().expect("backup id").to_owned();
    assert_contains(&ran, &id);
    let file = logistix.backup_file(agent, &id, "sqlite");
    assert_recorded_file(backup, &file);

    // Taken before the migration ran: in the audit log, and in the file's own schema and rows.
    let events = agent.events().await;
    let backed_up = event_index(&events, "backup.created", &id);
    let migrated = event_index(&events, "deployment.output", "applied 003_add_weight");
    assert!(backed_up < migrated, "backup event after the migration");
    let in_backup = sqlite_snapshot(&file);
    assert_eq!(
        in_backup, before,
        "the backup is not the pre-migration database"
    );
    let after = logistix.snapshot();
    assert!(
        after.schema.iter().any(|sql| sql.contains("weight_kg")),
        "{after:?}"
    );
    assert_ne!(after.checksum("shipments"), before.checksum("shipments"));
    assert_eq!(after.count("shipments"), 6, "{after:?}");

    // Restore drill: a fresh database from the backup file holds what the source held.
    let fresh = setup.dir.path().join("drill.db");
    sqlite_copy(&file, &fresh);
    assert_eq!(sqlite_snapshot(&fresh), before, "the restore drill");

    // The restore holds traffic in the proxy meanwhile: readers wait, none fails.
    let load = Load::new(agent.proxy_addr())
        .host(LOGISTIX_HOST)
        .path("/shipments?limit=5")
        .concurrency(4)
        .duration(LOAD_BOUND)
        .start();
    // A restore replaces the live database: with no terminal to confirm on, it needs `--yes`.
    let refused = agent
        .cli(&["backups", "restore", &id, "--app", LOGISTIX, "--env", ENV])
        .await;
    refused.assert_code(2);
    assert_contains(&refused, "--yes");
    let restored = agent
        .cli(&[
            "backups", "restore", &id, "--app", LOGISTIX, "--env", ENV, "--yes",
        ])
        .await;
    restored.assert_code(0);
    assert_contains(&restored, "restored");
    assert_contains(&restored, "drained 2 instance(s)");
    assert_contains(&restored, "backed up the live database first");
    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
    assert_eq!(
        logistix.snapshot(),
        before,
        "the restored database is not the pre-migration one"
    );

    // On demand: a second backup, `manual`, of the restored database.
    let created = agent
        .cli(&[
            "backups", "create", "--app", LOGISTIX, "--env", ENV, "--json",
        ])
        .await;
    created.assert_code(0);
    let created: Value = serde_json::from_str(&created.stdout).expect("backup JSON");
    // The release's backup, the live database's before the restore, this one.
    let backups = agent.backups(LOGISTIX, ENV).await;
    assert_eq!(backups.len(), 3, "{backups:#?}");
    assert_eq!(backups[0]["id"], created["id"], "{backups:#?}");
    assert_eq!(backups[0]["reason"], "manual", "{backups:#?}");
    let id = created["id"].as_str().expect("backup id");
    let file = logistix.backup_file(agent, id, "sqlite");
    assert_recorded_file(&created, &file);
    assert_eq!(sqlite_snapshot(&file), before);
}

// 2. The same with PostgreSQL: pg_dump before the release command, pg_restore gives it back.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_backup_before_migration_restores_schema_and_rows() {
    let Some(postgres) = Postgres::from_env() else {
        return;
    };
    let database = postgres.create_database().await;
    let watch = CmdlineWatch::start(&[&postgres.password]);
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let names = [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGPASSWORD",
        "PGDATABASE",
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
    // The release command connects through PG* variables: no password in any argv.
    let create = "CREATE TABLE IF NOT EXISTS items (id serial PRIMARY KEY, name text NOT NULL);\n";
    let app = |version: &str, migration: &str| {
        setup
            .app("app", version)
            .secrets(ENV, &names)
            .release(
                "psql -X -q -v ON_ERROR_STOP=1 -f migrate.sql",
                Some("DATABASE_URL"),
            )
            .file("migrate.sql", migration)
    };
    agent.deploy(&app("v1", create), ENV).await.assert_code(0);
    agent.assert_serves("v1").await;
    postgres
        .psql(
            &database,
            "INSERT INTO items (name) SELECT 'item-' || n FROM generate_series(1, 25) AS n",
        )
        .await;
    let before = postgres.snapshot(&database).await;
    assert_eq!(before.count, 25, "{before:?}");

    let migration = format!(
        "{create}ALTER TABLE items ADD COLUMN price integer;\n\
         UPDATE items SET name = upper(name), price = id * 100;\n"
    );
    let ran = agent.deploy(&app("v2", &migration), ENV).await;
    ran.assert_code(0);
    agent.assert_serves("v2").await;
    let after = postgres.snapshot(&database).await;
    assert_eq!(after.columns, "id:integer,name:text,price:integer");
    assert_ne!(after.checksum, before.checksum);

    // Release 1 had an empty database to back up, release 2 the 25 rows.
    let backups = agent.backups(APP, ENV).await;
    assert_eq!(backups.len(), 2, "{backups:#?}");
    let backup = backups
        .iter()
        .find(|backup| backup["release"] == 2)
        .expect("a backup for release 2");
    assert_eq!(backup["reason"], "release", "{backup:#}");
    assert_eq!(backup["kind"], "postgres", "{backup:#}");
    assert!(
        !backup.to_string().contains(&postgres.password),
        "{backup:#}"
    );
    let id = backup["id"].as_str().expect("backup id").to_owned();
    let file = setup
        .agent
        .state_dir()
        .join(format!("backups/{APP}/{ENV}/{id}.dump"));
    assert_recorded_file(backup, &file);
    let events = agent.events().await;
    let backed_up = event_index(&events, "backup.created", &id);
    let migrated = events
        .iter()
        .rposition(|event| {
            event["kind"] == "deployment.command"
                && event["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("psql"))
        })
        .expect("the release command event");
    assert!(
        backed_up < migrated,
        "backup event after the release command"
    );

    // Restore drill: the dump into a fresh database holds the pre-migration schema and rows.
    let drill = postgres.create_database().await;
    postgres.pg_restore(&drill, &file).await;
    assert_eq!(postgres.snapshot(&drill).await, before, "the restore drill");

    let restored = agent
        .cli(&[
            "backups", "restore", &id, "--app", APP, "--env", ENV, "--yes",
        ])
        .await;
    restored.assert_code(0);
    assert_contains(&restored, "restored");
    assert_eq!(postgres.snapshot(&database).await, before);
    assert_no_secret_in_outputs(&[&ran, &restored], &postgres.password);
    watch.assert_clean();

    drop(setup);
    postgres.drop_database(&drill).await;
    postgres.drop_database(&database).await;
}

// 3. A failing migration under load: the deploy fails, traffic never moves, the hint works.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_migration_moves_no_traffic_and_its_restore_hint_works() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let logistix = Logistix::deploy_v1(&setup).await;
    logistix.create_shipments(agent, 4).await;
    let before = logistix.snapshot();
    let load = Load::new(agent.proxy_addr())
        .host(LOGISTIX_HOST)
        .path("/shipments?limit=5")
        .concurrency(4)
        .duration(LOAD_BOUND)
        .start();

    logistix.add_migration(
        "003_broken.sql",
        "ALTER TABLE shipments ADD COLUMN broken INTEGER;\nUPDATE no_such_table SET x = 1;\n",
    );
    let ran = agent.deploy_dir(&logistix.dir, ENV).await;
    ran.assert_code(1);
    assert_contains(&ran, "003_broken failed");
    let printed = restore_command(&ran);

    let report = load.stop().await;
    report.assert_no_failures();
    assert!(report.total > 0, "the load loop sent nothing");
    let status = agent.status(LOGISTIX, ENV).await;
    assert_eq!(status.deployment_state(), Some("Failed"), "{status}");
    assert_eq!(status.current_release(), Some(1), "{status}");
    assert_eq!(status.weights(), vec![(1, 100)], "{status}");
    let instances: Vec<(String, String)> = status.instances().into_iter().collect();
    assert_eq!(
        instances,
        [1, 2].map(|replica| (
            format!("{LOGISTIX}-{ENV}-r1-web-{replica}"),
            "serving".to_owned()
        )),
        "{status}"
    );
    // No instance of release 2 ever started, so no answer can have come from it.
    let events = agent.events().await;
    let started: Vec<&Value> = events
        .iter()
        .filter(|event| event["kind"] == "instance.started")
        .filter(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("-r2-"))
        })
        .collect();
    assert!(started.is_empty(), "{started:#?}");
    // migrate.py rolled its transaction back: the database is as it was.
    assert_eq!(logistix.snapshot(), before);

    let mut args: Vec<&str> = printed.split_whitespace().skip(1).collect();
    args.push("--yes");
    let restored = agent.cli(&args).await;
    restored.assert_code(0);
    assert_contains(&restored, "restored");
    assert_eq!(logistix.snapshot(), before);
    // The release's backup, and the live database's, taken before the restore.
    let backups = agent.backups(LOGISTIX, ENV).await;
    assert_eq!(backups.len(), 2, "{backups:#?}");
    assert_eq!(backups[1]["release"], 2, "{backups:#?}");
    assert!(printed.contains(backups[1]["id"].as_str().expect("id")));
}

// 4. A canary secret, used by the app and rolled back and forward, is never shown or written. The
// build, release and smoke commands and the app itself print it (a migration tool printing its
// database URL): every version is scrubbed from events, deployments/*.log, the agent's log and
// the logs route.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_secret_appears_in_no_log_event_answer_output_file_or_cmdline() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let canaries = [
        format!("canary-{}", random_hex(16)),
        format!("canary-{}", random_hex(16)),
    ];
    let app = setup
        .app("app", "v1")
        .secrets(ENV, &["CANARY"])
        .env("GREETING", "hello ${CANARY}")
        // The commands see it too, expanded by the shell, never in an argv, and print it.
        .build(r#"echo "build sees $CANARY""#)
        .release(
            r#"test -n "$CANARY" && echo "release command saw the canary: $CANARY" && echo "db=$CANARY;" >&2"#,
            None,
        )
        .smoke(r#"echo "smoke sees $CANARY""#)
        // The app prints it to its own output, which the logs route shows.
        .run(format!(
            r#"echo "app starts with $CANARY"; (while sleep 0.2; do echo "app still has $CANARY"; done) & exec {}"#,
            testkit::demo::demo_app_path().display()
        ))
        .keep_warm("1s");
    let watch = CmdlineWatch::start(&[&canaries[0], &canaries[1]]);
    let mut outputs: Vec<Ran> = Vec::new();
    for (release, canary) in (1..).zip(&canaries) {
        let set = agent.set_secret(APP, ENV, "CANARY", canary).await;
        set.assert_code(0);
        outputs.push(set);
        let ran = agent.deploy(&app, ENV).await;
        ran.assert_code(0);
        outputs.push(ran);
        assert_secret_served(agent, "CANARY", canary).await;
        wait_instances(agent, APP, &[release]).await;
    }
    // Cold rollbacks (nothing is warm after 1s): the instances get the values opened again.
    let ran = agent.rollback(APP, ENV, None).await;
    ran.assert_code(0);
    outputs.push(ran);
    assert_secret_served(agent, "CANARY", &canaries[0]).await;
    wait_instances(agent, APP, &[1]).await;
    // Release 1 runs with the older version, which is no longer current: its output is scrubbed
    // all the same.
    let ran = agent
        .cli(&["logs", "--json", "--env", ENV, "--app", APP])
        .await;
    ran.assert_code(0);
    assert!(ran.stdout.contains("app starts with ***"), "{}", ran.stdout);
    outputs.push(ran);
    let ran = agent.rollback(APP, ENV, Some(2)).await;
    ran.assert_code(0);
    outputs.push(ran);
    assert_secret_served(agent, "CANARY", &canaries[1]).await;

    // The logs stream too.
    let mut follow = agent
        .command(
            Some(agent.admin_token()),
            &["logs", "-f", "--env", ENV, "--app", APP],
        )
        .spawn()
        .expect("rollway logs -f");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = follow.start_kill();
    let followed = follow.wait_with_output().await.expect("rollway logs -f");
    let followed = String::from_utf8_lossy(&followed.stdout).into_owned();
    assert!(followed.contains("app still has ***"), "{followed}");
    for canary in &canaries {
        assert!(
            !followed.contains(canary.as_str()),
            "`logs -f` shows the canary"
        );
    }

    for args in [
        &["status", "--json"][..],
        &["status"],
        &["releases", "--json"],
        &["releases"],
        &["secrets", "list", "--json"],
        &["secrets", "list"],
        &["backups", "--json"],
        &["logs", "--json"],
        &["logs"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--env", ENV, "--app", APP]);
        let ran = agent.cli(&args).await;
        ran.assert_code(0);
        outputs.push(ran);
    }
    for args in [&["events", "--json", "-n", "100000"][..], &["events"]] {
        let ran = agent.cli(args).await;
        ran.assert_code(0);
        outputs.push(ran);
    }
    let events = agent.events().await;
    for printed in [
        "build sees ***",
        "release command saw the canary: ***",
        "db=***;",
        "smoke sees ***",
    ] {
        assert!(
            events.iter().any(|event| event["message"]
                .as_str()
                .is_some_and(|m| m.contains(printed))),
            "no event shows `{printed}`: the command did not run with the canary"
        );
    }
    let logs = agent
        .cli(&["logs", "--json", "--env", ENV, "--app", APP])
        .await;
    assert!(
        logs.stdout.contains("app starts with ***"),
        "the logs route does not show the app's scrubbed line: {}",
        logs.stdout
    );
    let mut answers = Vec::new();
    let base = format!("/v1/apps/{APP}/environments/{ENV}");
    let mut paths: Vec<String> = ["status", "releases", "secrets", "backups", "logs"]
        .iter()
        .map(|what| format!("{base}/{what}"))
        .collect();
    paths.push("/v1/events?after=0&limit=100000".to_owned());
    paths.push("/v1/agent".to_owned());
    let deployments: std::collections::BTreeSet<&str> = events
        .iter()
        .filter_map(|event| event["deployment_id"].as_str())
        .collect();
    assert_eq!(deployments.len(), 4, "{deployments:?}");
    for id in deployments {
        paths.push(format!("/v1/deployments/{id}"));
        paths.push(format!("/v1/deployments/{id}/events"));
    }
    for path in &paths {
        let answer = agent.api("GET", path, "").await;
        assert_eq!(answer.status, 200, "GET {path}: {answer:?}");
        answers.push((path.clone(), answer.body));
    }

    let state = agent.state_dir();
    let log = agent.log();
    for canary in &canaries {
        assert_no_secret_in_outputs(&outputs.iter().collect::<Vec<_>>(), canary);
        for (path, body) in &answers {
            assert!(
                !body.contains(canary.as_str()),
                "GET {path} shows the canary"
            );
        }
        assert!(
            !log.contains(canary.as_str()),
            "the agent logged the canary"
        );
        // The store holds it encrypted only: not one file has it in clear, rollway.db and
        // deployments/*.log included, but the app's own output, which it printed itself.
        let (app_output, others): (Vec<PathBuf>, Vec<PathBuf>) = files_containing(state, canary)
            .into_iter()
            .partition(|path| {
                path.starts_with(state.join("instances"))
                    && path.file_name().is_some_and(|name| name == "output.log")
            });
        assert_eq!(
            others,
            Vec::<PathBuf>::new(),
            "files under the state directory hold the canary in clear"
        );
        if canary == &canaries[1] {
            assert!(
                !app_output.is_empty(),
                "the app printed the canary, so the logs route had something to scrub"
            );
        }
        assert_eq!(
            files_containing(setup.dir.path(), canary)
                .into_iter()
                .filter(|path| !app_output.contains(path))
                .collect::<Vec<_>>(),
            Vec::<PathBuf>::new(),
            "files of the test hold the canary in clear"
        );
        assert_eq!(
            processes_with_cmdline_containing(canary),
            Vec::<u32>::new(),
            "a command line shows the canary"
        );
    }
    // The store files exist and were searched.
    assert!(state.join("rollway.db").is_file());
    watch.assert_clean();
}

// 5. Missing secrets: all named at once, nothing uploaded, recorded or started.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_secrets_are_all_named_and_nothing_moves() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = setup
        .app("app", "v1")
        .secrets(ENV, &["JWT_SECRET", "SESSION_SECRET", "SMTP_PASSWORD"])
        .env("API_URL", "https://${API_TOKEN}@api.example.com");
    agent
        .set_secret(APP, ENV, "SESSION_SECRET", "set-and-fine")
        .await
        .assert_code(0);
    let expected = "missing for production: JWT_SECRET, SMTP_PASSWORD, API_TOKEN";

    let ran = agent.deploy(&app, ENV).await;
    ran.assert_code(2);
    assert_contains(&ran, expected);
    let manifest = app.write().join("rollway.toml");
    let manifest_arg = manifest.display().to_string();
    let checked = agent
        .cli(&["check", "--env", ENV, "--file", &manifest_arg])
        .await;
    checked.assert_code(2);
    assert_contains(&checked, expected);
    // The agent refuses on its own too, before it looks for the artifact.
    let request = serde_json::json!({
        "artifact": "0".repeat(64),
        "manifest": app.manifest(),
    });
    let answer = agent
        .api(
            "POST",
            &format!("/v1/apps/{APP}/environments/{ENV}/deployments"),
            &request.to_string(),
        )
        .await;
    assert_eq!(answer.status, 422, "{answer:?}");
    assert!(answer.body.contains(expected), "{answer:?}");

    let artifacts = files_under(&agent.state_dir().join("artifacts"));
    assert_eq!(artifacts, Vec::<PathBuf>::new(), "an artifact was uploaded");
    let releases = agent
        .cli(&["releases", "--env", ENV, "--app", APP, "--json"])
        .await;
    releases.assert_code(0);
    let releases: Value = serde_json::from_str(&releases.stdout).expect("releases JSON");
    assert_eq!(releases, serde_json::json!([]), "a release was recorded");
    // Nothing was recorded, so the agent knows no such app (status says so instead of `release none`).
    let status = agent
        .cli(&["status", "--env", ENV, "--app", APP, "--json"])
        .await;
    assert_ne!(status.code, Some(0), "{status}");
    assert_contains(&status, &format!("no app `{APP}` on this agent"));
    assert!(agent.instance_pid_files().is_empty());
    assert!(agent.instance_processes().is_empty());
    let events = agent.events().await;
    let moved: Vec<&Value> = events
        .iter()
        .filter(|event| {
            event["kind"].as_str().is_some_and(|kind| {
                kind.starts_with("deployment.") || kind.starts_with("instance.")
            })
        })
        .collect();
    assert!(moved.is_empty(), "{moved:#?}");
}

// 6. A rollback restores the secret versions its release recorded, and so does rolling forward.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_restores_the_earlier_secret_version() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let app = setup.app("app", "v1").secrets(ENV, &["S"]).keep_warm("1s");
    let values = ["value-one", "value-two"];
    for (release, value) in (1..).zip(values) {
        agent.set_secret(APP, ENV, "S", value).await.assert_code(0);
        agent.deploy(&app, ENV).await.assert_code(0);
        assert_secret_served(agent, "S", value).await;
        wait_instances(agent, APP, &[release]).await;
    }
    let listed = agent
        .cli(&["secrets", "list", "--env", ENV, "--app", APP, "--json"])
        .await;
    listed.assert_code(0);
    let listed: Value = serde_json::from_str(&listed.stdout).expect("secrets JSON");
    assert_eq!(listed[0]["name"], "S", "{listed:#}");
    assert_eq!(listed[0]["version"], 2, "{listed:#}");

    // Cold rollbacks: release 1's instance stopped, so its value comes from the store again.
    agent.rollback(APP, ENV, None).await.assert_code(0);
    assert_secret_served(agent, "S", values[0]).await;
    assert_eq!(agent.status(APP, ENV).await.current_release(), Some(1));
    wait_instances(agent, APP, &[1]).await;
    agent.rollback(APP, ENV, Some(2)).await.assert_code(0);
    assert_secret_served(agent, "S", values[1]).await;
    assert_eq!(agent.status(APP, ENV).await.current_release(), Some(2));
}

// 7. A flags-only change reuses the artifact and its build, and passes the health gate.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flags_only_change_reuses_the_artifact_and_passes_the_health_gate() {
    let setup = Setup::start().await;
    let agent = &setup.agent;
    let builds = setup.shared_dir("shared").join("builds.log");
    let app = |on: bool| {
        setup
            .app("app", "v1")
            .build(format!("echo built >> '{}'", builds.display()))
            .flag("NEW_CHECKOUT", on)
    };
    agent.deploy(&app(false), ENV).await.assert_code(0);
    let flag = agent.get(None, "/env/FLAG_NEW_CHECKOUT").await;
    assert_eq!((flag.status, flag.body.as_str()), (200, "false"));
    let load = setup.load();

    let ran = agent.deploy(&app(true), ENV).await;
    ran.assert_code(0);
    assert_contains(&ran, "Reusing");
    let report = load.stop().await;
    report.assert_no_failures();
    let flag = agent.get(None, "/env/FLAG_NEW_CHECKOUT").await;
    assert_eq!((flag.status, flag.body.as_str()), (200, "true"));

    let built = std::fs::read_to_string(&builds).expect("the build ran");
    assert_eq!(built.lines().count(), 1, "the artifact was built again");
    let artifacts = files_under(&agent.state_dir().join("artifacts"));
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    let status = agent.status(APP, ENV).await;
    assert_eq!(status.current_release(), Some(2), "{status}");
    let deployment = status.0["deployment"]["id"]
        .as_str()
        .expect("deployment id")
        .to_owned();
    let events = agent.events().await;
    let of_second: Vec<(&str, &str)> = events
        .iter()
        .filter(|event| event["deployment_id"] == deployment.as_str())
        .map(|event| {
            (
                event["kind"].as_str().unwrap_or_default(),
                event["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        of_second
            .iter()
            .any(|(kind, _)| *kind == "deployment.reuse"),
        "{of_second:#?}"
    );
    assert!(
        of_second
            .iter()
            .any(|(kind, message)| *kind == "deployment.state" && message.ends_with("→ Verifying")),
        "{of_second:#?}"
    );
    let healthy = events
        .iter()
        .filter(|event| event["kind"] == "instance.healthy")
        .filter(|event| {
            event["message"]
                .as_str()
                .is_some_and(|m| m.contains("-r2-"))
        })
        .count();
    assert_eq!(healthy, 1, "release 2's instance passed no health gate");
}

// Helpers.

/// A copy of examples/logistix in the test directory, its database outside the release folders.
struct Logistix {
    dir: PathBuf,
    database: PathBuf,
    jwt_secret: String,
}

impl Logistix {
    /// Copies the example, sets its secrets and deploys it (migrations 001 and 002).
    async fn deploy_v1(setup: &Setup) -> Logistix {
        let dir = setup.dir.path().join("logistix");
        copy_dir(&crate::repo_root().join("examples/logistix"), &dir);
        // The watch after the switch is not what these tests are about: no minute of observing.
        let manifest = dir.join("rollway.toml");
        let text = std::fs::read_to_string(&manifest).expect("the example's manifest");
        let text: String = text
            .lines()
            .filter(|line| !line.starts_with("observe ="))
            .map(|line| match line {
                "[analysis]" => "[analysis]\nobserve = \"0s\"\n".to_owned(),
                _ => format!("{line}\n"),
            })
            .collect();
        assert!(text.contains("observe = \"0s\""), "{text}");
        std::fs::write(&manifest, text).expect("write the manifest");
        let data = setup.shared_dir("data");
        let logistix = Logistix {
            dir,
            database: data.join("logistix.db"),
            jwt_secret: random_hex(24),
        };
        let agent = &setup.agent;
        let url = format!("sqlite://{}", logistix.database.display());
        for (name, value) in [
            ("DATABASE_URL", url.as_str()),
            ("JWT_SECRET", &logistix.jwt_secret),
        ] {
            agent
                .set_secret(LOGISTIX, ENV, name, value)
                .await
                .assert_code(0);
        }
        let ran = agent.deploy_dir(&logistix.dir, ENV).await;
        ran.assert_code(0);
        assert_contains(&ran, "applied 002_create_tracking_events");
        logistix
    }

    /// `n` shipments through the proxy, each with a second tracking event from 1 in 2.
    async fn create_shipments(&self, agent: &TestAgent, n: usize) {
        let token = self.mint_token().await;
        let auth = format!("Bearer {token}");
        let headers = [
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        for idx in 1..=n {
            let body = serde_json::json!({
                "reference": format!("LX-{idx:04}"),
                "origin": "Lyon",
                "destination": "Oslo",
            });
            let answer = testkit::agent::http(
                agent.proxy_addr(),
                "POST",
                LOGISTIX_HOST,
                "/shipments",
                &headers,
                &body.to_string(),
            )
            .await;
            assert_eq!(answer.status, 201, "{answer:?}");
            if idx % 2 == 0 {
                let answer = testkit::agent::http(
                    agent.proxy_addr(),
                    "POST",
                    LOGISTIX_HOST,
                    &format!("/shipments/{idx}/events"),
                    &headers,
                    r#"{"status": "picked_up", "location": "Lyon"}"#,
                )
                .await;
                assert_eq!(answer.status, 201, "{answer:?}");
            }
        }
    }

    /// `python3 app.py --mint-token tester`, the key in its environment.
    async fn mint_token(&self) -> String {
        let output = Command::new("python3")
            .args(["app.py", "--mint-token", "tester"])
            .current_dir(&self.dir)
            .env("JWT_SECRET", &self.jwt_secret)
            .output()
            .await
            .expect("python3 app.py --mint-token");
        assert!(output.status.success(), "{output:?}");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    fn add_migration(&self, name: &str, sql: &str) {
        let path = self.dir.join("migrations").join(name);
        std::fs::write(&path, sql).expect("write the migration");
    }

    fn snapshot(&self) -> SqliteSnapshot {
        sqlite_snapshot(&self.database)
    }

    fn backup_file(&self, agent: &TestAgent, id: &str, extension: &str) -> PathBuf {
        agent
            .state_dir()
            .join(format!("backups/{LOGISTIX}/{ENV}/{id}.{extension}"))
    }
}

/// The schema (every `CREATE` statement) and, per table, its row count and a checksum of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SqliteSnapshot {
    schema: Vec<String>,
    tables: BTreeMap<String, TableSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TableSummary {
    count: u64,
    sha256: String,
}

impl SqliteSnapshot {
    fn count(&self, table: &str) -> u64 {
        self.tables.get(table).map_or(0, |summary| summary.count)
    }

    fn checksum(&self, table: &str) -> &str {
        self.tables
            .get(table)
            .map_or("", |summary| summary.sha256.as_str())
    }
}

const SQLITE_SNAPSHOT: &str = r#"
import hashlib, json, sqlite3, sys
conn = sqlite3.connect("file:" + sys.argv[1] + "?mode=ro", uri=True)
schema = sorted(row[0] for row in conn.execute(
    "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite%'"))
tables = {}
for (name,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite%'").fetchall():
    rows = conn.execute(f'SELECT * FROM "{name}" ORDER BY rowid').fetchall()
    tables[name] = {"count": len(rows), "sha256": hashlib.sha256(repr(rows).encode()).hexdigest()}
print(json.dumps({"schema": schema, "tables": tables}))
"#;

/// Reads a SQLite database with Python's sqlite3 (the same library the app uses).
fn sqlite_snapshot(path: &Path) -> SqliteSnapshot {
    let output = std::process::Command::new("python3")
        .args(["-c", SQLITE_SNAPSHOT])
        .arg(path)
        .output()
        .expect("python3");
    assert!(
        output.status.success(),
        "cannot read `{}`: {}",
        path.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let json: Value = serde_json::from_slice(&output.stdout).expect("snapshot JSON");
    let schema = json["schema"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|sql| sql.as_str().map(str::to_owned))
        .collect();
    let tables = json["tables"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(name, summary)| {
            let summary = TableSummary {
                count: summary["count"].as_u64().expect("a count"),
                sha256: summary["sha256"].as_str().expect("a checksum").to_owned(),
            };
            (name.clone(), summary)
        })
        .collect();
    SqliteSnapshot { schema, tables }
}

/// A copy of `from` into a new database `to`, through SQLite's backup API.
fn sqlite_copy(from: &Path, to: &Path) {
    let script = "import sqlite3, sys\n\
                  source = sqlite3.connect(sys.argv[1])\n\
                  target = sqlite3.connect(sys.argv[2])\n\
                  source.backup(target)\n\
                  target.close()\n";
    let status = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(from)
        .arg(to)
        .status()
        .expect("python3");
    assert!(status.success(), "cannot copy `{}`", from.display());
}

/// The throwaway cluster of `scripts/test`, reached as its superuser.
pub(crate) struct Postgres {
    pub(crate) host: String,
    pub(crate) port: String,
    pub(crate) user: String,
    pub(crate) password: String,
}

/// Schema and rows of the `items` table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PgSnapshot {
    columns: String,
    count: u64,
    checksum: String,
}

impl Postgres {
    /// From `ROLLWAY_TEST_POSTGRES_URL`; `None` (with one printed line) outside `scripts/test`.
    pub(crate) fn from_env() -> Option<Postgres> {
        let Ok(url) = std::env::var("ROLLWAY_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("ROLLWAY_E2E").is_none(),
                "ROLLWAY_E2E is set but ROLLWAY_TEST_POSTGRES_URL is not: scripts/test starts PostgreSQL and sets both"
            );
            println!(
                "skipped: no PostgreSQL (set ROLLWAY_TEST_POSTGRES_URL, as scripts/test does)"
            );
            return None;
        };
        let rest = url
            .strip_prefix("postgres://")
            .expect("ROLLWAY_TEST_POSTGRES_URL starts with postgres://");
        let (credentials, rest) = rest.rsplit_once('@').expect("user:password@ in the URL");
        let (user, password) = credentials.split_once(':').expect("user:password");
        let (host_port, _database) = rest.split_once('/').expect("/database in the URL");
        let (host, port) = host_port.rsplit_once(':').expect("host:port in the URL");
        Some(Postgres {
            host: host.to_owned(),
            port: port.to_owned(),
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    pub(crate) fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}:{}@{}:{}/{database}",
            self.user, self.password, self.host, self.port
        )
    }

    /// A PostgreSQL client command with the connection in PG* variables (never in argv).
    fn command(&self, program: &str, database: &str) -> Command {
        let mut command = Command::new(program);
        command
            .env("PGHOST", &self.host)
            .env("PGPORT", &self.port)
            .env("PGUSER", &self.user)
            .env("PGPASSWORD", &self.password)
            .env("PGDATABASE", database)
            .kill_on_drop(true);
        command
    }

    pub(crate) async fn psql(&self, database: &str, sql: &str) -> String {
        let output = self
            .command("psql", database)
            .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .output()
            .await
            .expect("psql");
        assert!(
            output.status.success(),
            "psql `{sql}` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    pub(crate) async fn create_database(&self) -> String {
        let name = format!("rollway_test_{}", random_hex(6));
        self.psql("postgres", &format!("CREATE DATABASE {name}"))
            .await;
        name
    }

    pub(crate) async fn drop_database(&self, name: &str) {
        self.psql(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        )
        .await;
    }

    async fn pg_restore(&self, database: &str, file: &Path) {
        let output = self
            .command("pg_restore", database)
            .args(["--no-owner", "--exit-on-error", "-d", database])
            .arg(file)
            .output()
            .await
            .expect("pg_restore");
        assert!(
            output.status.success(),
            "pg_restore failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    async fn snapshot(&self, database: &str) -> PgSnapshot {
        let columns = self
            .psql(
                database,
                "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) \
                 FROM information_schema.columns WHERE table_schema = 'public' AND table_name = 'items'",
            )
            .await;
        let count = self
            .psql(database, "SELECT count(*) FROM items")
            .await
            .parse()
            .expect("a count");
        let checksum = self
            .psql(
                database,
                "SELECT md5(coalesce(string_agg(items::text, '|' ORDER BY id), '')) FROM items",
            )
            .await;
        PgSnapshot {
            columns,
            count,
            checksum,
        }
    }
}

/// Samples every process's command line in the background (every 10 ms) for secret values, so a
/// short-lived process (a release command, pg_dump) that showed one is caught too.
struct CmdlineWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<(u64, Vec<u32>)>,
}

impl CmdlineWatch {
    fn start(secrets: &[&str]) -> CmdlineWatch {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let secrets: Vec<String> = secrets.iter().map(|secret| (*secret).to_owned()).collect();
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut n_rounds, mut hits) = (0, Vec::new());
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                for secret in &secrets {
                    hits.extend(processes_with_cmdline_containing(secret));
                }
                n_rounds += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
            (n_rounds, hits)
        });
        CmdlineWatch { stop, thread }
    }

    /// Stops sampling; panics if any command line showed a secret.
    #[track_caller]
    fn assert_clean(self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (n_rounds, hits) = self.thread.join().expect("the cmdline watch");
        assert!(n_rounds > 0, "the cmdline watch never ran");
        assert!(
            hits.is_empty(),
            "processes {hits:?} showed a secret in their command line"
        );
    }
}

/// Polls until the app answers `/sha256/NAME` with the digest of `value` (bounded).
async fn assert_secret_served(agent: &TestAgent, name: &str, value: &str) {
    let expected = sha256_hex(value);
    let path = format!("/sha256/{name}");
    let answer = agent.get(None, &path).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        answer.body, expected,
        "the app does not have the expected version of `{name}`"
    );
    for _ in 0..5 {
        assert_eq!(agent.get(None, &path).await.body, expected);
    }
}

/// Waits until the app runs instances of exactly `releases` (warm ones expired).
async fn wait_instances(agent: &TestAgent, app: &str, releases: &[u64]) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let status = agent.status(app, ENV).await;
        let mut running: Vec<u64> = status.0["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|instance| instance["release"].as_u64())
            .collect();
        running.sort_unstable();
        running.dedup();
        if running == releases {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "instances of releases {releases:?} expected: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The deploy's own work runs below the serving instances (`driver::priority`, issue 20): the
/// build, release and smoke commands, and a new instance from its start until its health gate; the
/// instance then serves at the agent's (this test's) priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deploys_own_work_runs_lowered_and_a_new_instance_serves_promoted() {
    let own = driver::priority::own_nice();
    let Some(lowered) = driver::priority::deploy_nice() else {
        eprintln!("this test runs at the lowest priority already: nothing to lower");
        return;
    };
    let setup = Setup::start().await;
    let agent = &setup.agent;
    // Field 19 of `cut`'s own /proc/self/stat (its command has no space) is its nice value.
    let nice = "$(cut -d' ' -f19 /proc/self/stat)";
    let app = setup
        .app("app", "v1")
        .build(format!("echo \"build runs at nice {nice}\""))
        .release(format!("echo \"release runs at nice {nice}\""), None)
        .smoke(format!("echo \"smoke runs at nice {nice}\""))
        .run(format!(
            "echo \"app starts at nice {nice}\"; exec {}",
            testkit::demo::demo_app_path().display()
        ));
    let ran = agent.deploy(&app, ENV).await;
    ran.assert_code(0);
    // `rollway deploy` shows the commands' output as it comes.
    let shown = format!("{}{}", ran.stdout, ran.stderr);
    for label in ["build", "release", "smoke"] {
        assert!(
            shown.contains(&format!("{label} runs at nice {lowered}")),
            "{shown}"
        );
    }
    let logs = agent.cli(&["logs", "--env", ENV, "--app", APP]).await;
    logs.assert_code(0);
    let started_at = if driver::priority::instance_start_nice().is_some() {
        lowered
    } else {
        // Where the agent could not promote it back, a new instance starts at its priority.
        own
    };
    assert!(
        logs.stdout
            .contains(&format!("app starts at nice {started_at}")),
        "{}",
        logs.stdout
    );
    let instances = agent.instance_pid_files();
    assert!(!instances.is_empty());
    for pid in instances.values() {
        let nice = driver::priority::observe(*pid).expect("observe").nice;
        assert_eq!(nice, own, "a serving instance runs at the agent's priority");
    }
}

/// The index of the first event of `kind` whose message contains `needle`.
#[track_caller]
fn event_index(events: &[Value], kind: &str, needle: &str) -> usize {
    events
        .iter()
        .position(|event| {
            event["kind"] == kind
                && event["message"]
                    .as_str()
                    .is_some_and(|message| message.contains(needle))
        })
        .unwrap_or_else(|| panic!("no `{kind}` event with `{needle}`: {events:#?}"))
}

/// The backup record's size and checksum are those of the file.
#[track_caller]
fn assert_recorded_file(backup: &Value, file: &Path) {
    let bytes = std::fs::read(file)
        .unwrap_or_else(|error| panic!("cannot read `{}`: {error}", file.display()));
    assert_eq!(backup["size"], bytes.len() as u64, "{backup:#}");
    assert_eq!(backup["sha256"], sha256_hex(&bytes), "{backup:#}");
}

/// The `rollway backups restore ...` command a failed deploy printed, without its backticks.
#[track_caller]
fn restore_command(ran: &Ran) -> String {
    let text = format!("{}{}", ran.stdout, ran.stderr);
    let start = text
        .find("`rollway backups restore ")
        .unwrap_or_else(|| panic!("no restore command in the output:\n{ran}"));
    let rest = &text[start + 1..];
    let end = rest.find('`').expect("the closing backtick");
    rest[..end].to_owned()
}

#[track_caller]
fn assert_no_secret_in_outputs(outputs: &[&Ran], secret: &str) {
    for ran in outputs {
        assert!(
            !ran.stdout.contains(secret) && !ran.stderr.contains(secret),
            "a command printed a secret value:\n{ran}"
        );
    }
}

/// Every file below `dir` (none when it does not exist).
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(entry.path()),
                Ok(_) => found.push(entry.path()),
                Err(_) => {}
            }
        }
    }
    found.sort();
    found
}

/// Copies a folder recursively, leaving out Python's caches.
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create the copy");
    for entry in std::fs::read_dir(from).expect("read the example").flatten() {
        let name = entry.file_name();
        if name == "__pycache__" {
            continue;
        }
        let (source, target) = (entry.path(), to.join(&name));
        if entry.file_type().expect("file type").is_dir() {
            copy_dir(&source, &target);
        } else {
            std::fs::copy(&source, &target).expect("copy a file");
        }
    }
}
