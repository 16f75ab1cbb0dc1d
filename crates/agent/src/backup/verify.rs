//! Restore drills: a backup restored into a scratch database (a temporary SQLite file, or a
//! temporary PostgreSQL database the agent creates and drops), checked, and handed to the app's
//! own check (`[backup] verify`). The live database is never touched.
//!
//! It records nothing itself: the caller turns the [`Drill`] into an event (and an alert when it
//! failed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{BackupError, LiveError, PgUrl, Target, file_digest, random_suffix, run_pg_tool};
use crate::deploy::spec::LoadedRelease;
use crate::engine::Engine;
use crate::store::{BackupKind, BackupRecord};

/// How long the app's own check may run.
pub const VERIFY_TIMEOUT: Duration = Duration::from_secs(600);
/// Lines of the app's check's output kept in the result (secrets scrubbed).
const OUTPUT_LINES: usize = 10;

/// A drill that could not run at all (a drill that ran and failed is a [`Drill`]).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct VerifyError(#[from] pub LiveError);

impl From<crate::store::StoreError> for VerifyError {
    fn from(error: crate::store::StoreError) -> Self {
        VerifyError(LiveError::Store(error))
    }
}

/// The outcome of one drill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drill {
    pub backup: String,
    pub kind: BackupKind,
    pub passed: bool,
    /// What was done and found, in order; the last one says why a failed drill failed.
    pub checks: Vec<String>,
    /// Rows per table of the restored database, by table name.
    pub tables: Vec<(String, u64)>,
}

/// A drill of backup `id` (or the newest) of (app, env) against the current release; the result is
/// an event (`backup.verified`, or `backup.verify_failed`, which alerts).
pub async fn run(
    engine: &Arc<Engine>,
    app: &str,
    environment: &str,
    id: Option<&str>,
    by: &str,
) -> Result<Drill, VerifyError> {
    let (_, release, live) = super::live_database(engine, app, environment)?;
    let mut fetched = None;
    let record = match id {
        Some(id) => match engine.store.backup(id)? {
            Some(record) if record.app == app && record.environment == environment => record,
            _ => {
                // Not known here (a new host): the remote may have it.
                let remote =
                    super::remote::require(&release).map_err(|error| LiveError::Remote {
                        id: id.to_owned(),
                        source: Box::new(error),
                    })?;
                let record = super::fetch_remote(engine, &remote, app, environment, id)
                    .await
                    .map_err(|error| LiveError::Remote {
                        id: id.to_owned(),
                        source: Box::new(error),
                    })?;
                fetched = Some(format!(
                    "fetched backup {id} from {} (this agent had no record of it)",
                    remote.shown()
                ));
                record
            }
        },
        None => engine
            .store
            .backups(app, environment)?
            .into_iter()
            .next()
            .ok_or_else(|| {
                LiveError::NothingYet(format!(
                    "`{app}` has no backup in `{environment}` to verify"
                ))
            })?,
    };
    let mut drill = drill(engine, &release, &live, &record).await?;
    if let Some(step) = fetched {
        drill.checks.insert(0, step);
    }
    let (kind, verdict) = if drill.passed {
        ("backup.verified", "passed")
    } else {
        ("backup.verify_failed", "FAILED")
    };
    let data = serde_json::json!({
        "backup": drill.backup,
        "passed": drill.passed,
        "tables": drill.tables.iter().map(|(name, rows)| serde_json::json!({"table": name, "rows": rows})).collect::<Vec<_>>(),
    });
    engine.record(crate::store::NewEvent {
        app: Some(app.to_owned()),
        environment: Some(environment.to_owned()),
        deployment_id: None,
        kind: kind.to_owned(),
        message: format!(
            "restore drill of backup {} {verdict} ({by}): {}",
            drill.backup,
            drill.checks.join("; ")
        ),
        data_json: data.to_string(),
    });
    Ok(drill)
}

/// Runs a drill of `record` (its local file, fetched from the remote first when gone).
pub async fn drill(
    engine: &Arc<Engine>,
    release: &LoadedRelease,
    live: &Target,
    record: &BackupRecord,
) -> Result<Drill, LiveError> {
    let mut drill = Drill {
        backup: record.id.clone(),
        kind: record.kind,
        passed: false,
        checks: Vec::new(),
        tables: Vec::new(),
    };
    let record = match super::ensure_local(engine, release, record).await? {
        Some((step, fetched)) => {
            drill.checks.push(step);
            fetched
        }
        None => record.clone(),
    };
    let path = PathBuf::from(&record.path);
    let outcome = match file_digest(&path) {
        Ok((_, sha256)) if sha256 == record.sha256 => {
            drill
                .checks
                .push(format!("sha256 matches the recorded {}", short(&sha256)));
            match (record.kind, live) {
                (BackupKind::Sqlite, _) => sqlite_drill(engine, release, &path, &mut drill).await,
                (BackupKind::Postgres, Target::Postgres { url }) => {
                    postgres_drill(engine, release, url, &path, &mut drill).await
                }
                (BackupKind::Postgres, Target::Sqlite { .. }) => Err(format!(
                    "backup `{}` is a PostgreSQL dump, but the release's database is SQLite: no server to restore it into",
                    record.id
                )),
            }
        }
        Ok((_, sha256)) => Err(format!(
            "the file's sha256 {} is not the recorded {}: the backup is corrupt",
            short(&sha256),
            short(&record.sha256)
        )),
        Err(error) => Err(crate::report::chain(&error)),
    };
    match outcome {
        Ok(()) => drill.passed = true,
        Err(reason) => drill.checks.push(format!("failed: {reason}")),
    }
    Ok(drill)
}

fn short(sha256: &str) -> &str {
    &sha256[..12.min(sha256.len())]
}

async fn sqlite_drill(
    engine: &Arc<Engine>,
    release: &LoadedRelease,
    backup: &Path,
    drill: &mut Drill,
) -> Result<(), String> {
    let home = crate::deploy::spec::app_home(
        engine,
        &release.resolved.config.app.name,
        &release.resolved.environment,
    )
    .map_err(|error| crate::report::chain(&error))?;
    let confinement = home.confinement(&engine.isolation, &engine.placement, "verify");
    confinement
        .prepare()
        .map_err(|error| format!("cannot prepare the scratch folder: {error}"))?;
    let folder = confinement
        .temp_dir
        .clone()
        .unwrap_or_else(|| home.dir.join("tmp").join("verify"));
    let scratch = folder.join(format!("drill-{}.sqlite", random_suffix()));
    let result = async {
        let (from, to) = (backup.to_owned(), scratch.clone());
        let tables = tokio::task::spawn_blocking(move || sqlite_restore_and_count(&from, &to))
            .await
            .map_err(|error| format!("the drill task ended early: {error}"))??;
        drill.checks.push(format!(
            "restored into the scratch file `{}`; integrity_check: ok",
            scratch.display()
        ));
        drill
            .checks
            .push(format!("{} table(s): {}", tables.len(), counts(&tables)));
        drill.tables = tables;
        give_to_app(&scratch, home.user)?;
        let url = format!("sqlite://{}", scratch.display());
        app_check(engine, release, &confinement, &url, drill).await
    }
    .await;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = scratch.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(name));
    }
    drill.checks.push("removed the scratch database".to_owned());
    result
}

/// Copies the backup into a new file with SQLite's backup API, runs `integrity_check`, counts rows.
fn sqlite_restore_and_count(backup: &Path, scratch: &Path) -> Result<Vec<(String, u64)>, String> {
    super::sqlite_copy(backup, scratch).map_err(|error| crate::report::chain(&error))?;
    let connection = rusqlite::Connection::open(scratch)
        .map_err(|error| format!("cannot open the scratch database: {error}"))?;
    let integrity: Vec<String> = connection
        .prepare("PRAGMA integrity_check")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|error| format!("integrity_check failed: {error}"))?;
    if integrity != ["ok"] {
        return Err(format!("integrity_check: {}", integrity.join("; ")));
    }
    let names: Vec<String> = connection
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .and_then(|mut statement| {
            statement
                .query_map([], |row| row.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|error| format!("cannot list the tables: {error}"))?;
    names
        .into_iter()
        .map(|name| {
            let sql = format!("SELECT count(*) FROM \"{}\"", name.replace('"', "\"\""));
            connection
                .query_row(&sql, [], |row| row.get::<_, i64>(0))
                .map(|count| (name.clone(), u64::try_from(count).unwrap_or(0)))
                .map_err(|error| format!("cannot count the rows of `{name}`: {error}"))
        })
        .collect()
}

async fn postgres_drill(
    engine: &Arc<Engine>,
    release: &LoadedRelease,
    live: &PgUrl,
    backup: &Path,
    drill: &mut Drill,
) -> Result<(), String> {
    let scratch = PgUrl {
        database: format!("rollway_drill_{}", random_suffix()),
        ..live.clone()
    };
    // Created from the live database's connection (CREATE DATABASE may run in any database);
    // the scratch name is ours, made of [a-z0-9_] only.
    psql(live, &format!("CREATE DATABASE {}", scratch.database))
        .await
        .map_err(|error| {
            format!(
                "cannot create the scratch database (does the user have CREATEDB?): {}",
                crate::report::chain(&error)
            )
        })?;
    drill.checks.push(format!(
        "created the scratch database `{}`",
        scratch.database
    ));
    let result = async {
        let args = vec![
            "--no-owner".to_owned(),
            "--no-password".to_owned(),
            "--exit-on-error".to_owned(),
            "--single-transaction".to_owned(),
            format!("--dbname={}", scratch.database),
            backup.display().to_string(),
        ];
        run_pg_tool("pg_restore", &args, &scratch)
            .await
            .map_err(|error| crate::report::chain(&error))?;
        drill.checks.push("pg_restore succeeded".to_owned());
        let counted = psql(&scratch, COUNT_ROWS)
            .await
            .map_err(|error| crate::report::chain(&error))?;
        let tables: Vec<(String, u64)> = counted
            .lines()
            .filter_map(|line| {
                let (name, count) = line.rsplit_once('|')?;
                Some((name.to_owned(), count.trim().parse().ok()?))
            })
            .collect();
        drill
            .checks
            .push(format!("{} table(s): {}", tables.len(), counts(&tables)));
        drill.tables = tables;
        let home = crate::deploy::spec::app_home(
            engine,
            &release.resolved.config.app.name,
            &release.resolved.environment,
        )
        .map_err(|error| crate::report::chain(&error))?;
        let confinement = home.confinement(&engine.isolation, &engine.placement, "verify");
        confinement
            .prepare()
            .map_err(|error| format!("cannot prepare the check's folder: {error}"))?;
        app_check(engine, release, &confinement, &scratch.url(), drill).await
    }
    .await;
    match psql(
        live,
        &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", scratch.database),
    )
    .await
    {
        Ok(_) => drill.checks.push(format!(
            "dropped the scratch database `{}`",
            scratch.database
        )),
        Err(error) => drill.checks.push(format!(
            "could not drop the scratch database `{}`: {}",
            scratch.database,
            crate::report::chain(&error)
        )),
    }
    result
}

/// `schema.table|rows` per base table, counted exactly.
const COUNT_ROWS: &str = "SELECT table_schema || '.' || table_name || '|' || \
    (xpath('/row/c/text()', query_to_xml(format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), false, true, '')))[1]::text \
    FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
    AND table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1";

async fn psql(url: &PgUrl, sql: &str) -> Result<String, BackupError> {
    let args = vec![
        "-X".to_owned(),
        "-A".to_owned(),
        "-t".to_owned(),
        "-q".to_owned(),
        "-v".to_owned(),
        "ON_ERROR_STOP=1".to_owned(),
        "-c".to_owned(),
        sql.to_owned(),
    ];
    run_pg_tool("psql", &args, url).await
}

fn counts(tables: &[(String, u64)]) -> String {
    if tables.is_empty() {
        return "none".to_owned();
    }
    tables
        .iter()
        .map(|(name, count)| format!("{name} {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Gives the scratch file to the app's user, so its check (run as that user) can open it.
fn give_to_app(scratch: &Path, user: driver::AppUser) -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    std::os::unix::fs::lchown(scratch, Some(user.uid), Some(user.gid)).map_err(|error| {
        format!(
            "cannot give `{}` to the app's user: {error}",
            scratch.display()
        )
    })
}

/// Runs `[backup] verify` confined like the release command, with the release's variables and
/// the scratch database's URL in the variable `release.backup` names.
async fn app_check(
    engine: &Arc<Engine>,
    release: &LoadedRelease,
    confinement: &driver::Confinement,
    url: &str,
    drill: &mut Drill,
) -> Result<(), String> {
    let Some(command) = release.resolved.config.backup.verify.as_deref() else {
        return Ok(());
    };
    let Some(variable) = release
        .resolved
        .config
        .release
        .as_ref()
        .and_then(|phase| phase.backup.as_deref())
    else {
        return Ok(());
    };
    let mut env =
        crate::deploy::spec::base_env(release).map_err(|error| crate::report::chain(&error))?;
    env.retain(|(name, _)| name != variable);
    env.push((variable.to_owned(), url.to_owned()));
    let dir = crate::deploy::spec::workdir(engine, release);
    let mut child = confinement.command(command, &dir);
    child
        .env_clear()
        .envs(confinement.inherited_env())
        .envs(
            env.iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let output = tokio::time::timeout(VERIFY_TIMEOUT, child.output())
        .await
        .map_err(|_| format!("`{command}` ran longer than {}s", VERIFY_TIMEOUT.as_secs()))?
        .map_err(|error| format!("cannot run `{command}`: {error}"))?;
    // What the check printed may hold a secret or the scratch URL's password: scrubbed.
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    text = text.replace(url, "***");
    for secret in release.secrets.values() {
        if secret.expose().len() >= 4 {
            text = text.replace(secret.expose(), "***");
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(OUTPUT_LINES)..].join(" | ");
    if output.status.success() {
        drill.checks.push(format!("`{command}` passed"));
        Ok(())
    } else {
        Err(format!("`{command}` failed ({}): {tail}", output.status))
    }
}
