//! Database backups: taken before every release command, on demand and on a schedule; restored
//! with one command.
//!
//! SQLite goes through SQLite's online backup API (a consistent copy while the app writes);
//! PostgreSQL through `pg_dump` in custom format and `pg_restore`. The password reaches those
//! tools through `PGPASSWORD` in their environment, never their argv.

use client::wire::ReleaseNumber;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest as _;

pub mod agent_state;
pub mod remote;
pub mod sealed;
pub mod state_schedule;
pub mod verify;

use crate::engine::{AppEnv, Engine, now_ms};
use crate::store::{BackupKind, BackupReason, BackupRecord};

/// Backups kept per app and environment when the manifest says nothing.
pub const DEFAULT_KEEP: usize = 14;
/// How long `pg_dump` and `pg_restore` may run.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(1800);

/// What a database URL points at.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    Sqlite { path: PathBuf },
    Postgres { url: PgUrl },
}

/// A PostgreSQL URL taken apart, so the password can travel in `PGPASSWORD` only.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    pub host: String,
    pub port: Option<u16>,
    pub user: Option<String>,
    password: Option<String>,
    pub database: String,
}

/// A database URL a backup cannot be taken from. Never quotes the URL: it may hold a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error("the `sqlite:` URL has no path")]
    SqliteWithoutPath,
    #[error("the PostgreSQL URL has no database name")]
    PostgresWithoutDatabase,
    #[error("the PostgreSQL URL's port is not a number")]
    PostgresPort,
    #[error(
        "cannot back up a `{scheme}` database; accepted: `sqlite:PATH`, `postgres://USER:PASSWORD@HOST:PORT/DB`"
    )]
    UnsupportedScheme { scheme: String },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display())
    }
}

impl Target {
    /// `sqlite:PATH`, `sqlite://PATH`, `sqlite:///ABS/PATH` (relative paths from `workdir`), or
    /// `postgres://` / `postgresql://` URLs.
    pub fn parse(url: &str, workdir: &Path) -> Result<Target, TargetError> {
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err(TargetError::SqliteWithoutPath);
            }
            let path = PathBuf::from(path);
            let path = if path.is_absolute() {
                path
            } else {
                workdir.join(path)
            };
            return Ok(Target::Sqlite { path });
        }
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            return parse_pg(rest).map(|url| Target::Postgres { url });
        }
        let scheme = url.split_once(':').map_or("(none)", |(scheme, _)| scheme);
        Err(TargetError::UnsupportedScheme {
            scheme: scheme.to_owned(),
        })
    }

    /// For records and messages: the password never appears.
    pub fn display(&self) -> String {
        match self {
            Target::Sqlite { path } => format!("sqlite:{}", path.display()),
            Target::Postgres { url } => {
                let user = url
                    .user
                    .as_deref()
                    .map(|user| format!("{user}@"))
                    .unwrap_or_default();
                let port = url.port.map(|port| format!(":{port}")).unwrap_or_default();
                format!("postgres://{user}{}{port}/{}", url.host, url.database)
            }
        }
    }

    pub fn kind(&self) -> BackupKind {
        match self {
            Target::Sqlite { .. } => BackupKind::Sqlite,
            Target::Postgres { .. } => BackupKind::Postgres,
        }
    }
}

impl PgUrl {
    /// The URL again, password included: for a variable of a child's environment only.
    pub fn url(&self) -> String {
        let encode = |text: &str| {
            text.bytes()
                .map(|byte| match byte {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                        (byte as char).to_string()
                    }
                    _ => format!("%{byte:02X}"),
                })
                .collect::<String>()
        };
        let credentials = match (&self.user, &self.password) {
            (Some(user), Some(password)) => format!("{}:{}@", encode(user), encode(password)),
            (Some(user), None) => format!("{}@", encode(user)),
            _ => String::new(),
        };
        let port = self.port.map(|port| format!(":{port}")).unwrap_or_default();
        format!(
            "postgres://{credentials}{}{port}/{}",
            self.host,
            encode(&self.database)
        )
    }
}

fn parse_pg(rest: &str) -> Result<PgUrl, TargetError> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or(TargetError::PostgresWithoutDatabase)?;
    let database = path.split(['?', '#']).next().unwrap_or_default();
    if database.is_empty() {
        return Err(TargetError::PostgresWithoutDatabase);
    }
    let (credentials, host_port) = match authority.rsplit_once('@') {
        Some((credentials, host_port)) => (Some(credentials), host_port),
        None => (None, authority),
    };
    let (user, password) = match credentials {
        Some(credentials) => match credentials.split_once(':') {
            Some((user, password)) => (Some(percent_decode(user)), Some(percent_decode(password))),
            None => (Some(percent_decode(credentials)), None),
        },
        None => (None, None),
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) => (
            host,
            Some(port.parse::<u16>().map_err(|_| TargetError::PostgresPort)?),
        ),
        None => (host_port, None),
    };
    Ok(PgUrl {
        host: if host.is_empty() {
            "localhost".to_owned()
        } else {
            host.to_owned()
        },
        port,
        user,
        password,
        database: percent_decode(database),
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        if bytes[idx] == b'%'
            && let Some(hex) = text.get(idx + 1..idx + 3)
            && let Ok(byte) = u8::from_str_radix(hex, 16)
        {
            out.push(byte);
            idx += 3;
            continue;
        }
        out.push(bytes[idx]);
        idx += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where a backup is taken from, and why.
pub struct Request<'a> {
    pub app: &'a str,
    pub environment: &'a str,
    pub release: Option<ReleaseNumber>,
    pub deployment_id: Option<&'a str>,
    pub reason: BackupReason,
    pub target: &'a Target,
    /// How many backups of this app and environment to keep (here and on the remote).
    pub keep: usize,
    /// Where the backup is copied, encrypted, once taken.
    pub remote: Option<remote::Remote>,
}

/// The outcome of a backup: a record, or nothing because there is no database yet.
pub enum Taken {
    Backup(BackupRecord),
    NothingYet(String),
}

/// Why a backup was not taken.
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("cannot create `{}`", path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the backup task ended early")]
    Task(#[source] tokio::task::JoinError),
}

/// Takes a backup, records it, and prunes the oldest beyond `keep`.
pub async fn create(engine: &Arc<Engine>, request: Request<'_>) -> Result<Taken, CreateError> {
    let dir = engine
        .paths
        .state_dir
        .join("backups")
        .join(request.app)
        .join(request.environment);
    std::fs::create_dir_all(&dir).map_err(|source| CreateError::CreateDir {
        path: dir.clone(),
        source,
    })?;
    let id = format!("b-{}-{}", now_ms(), random_suffix());
    let (extension, kind) = match request.target {
        Target::Sqlite { .. } => ("sqlite", BackupKind::Sqlite),
        Target::Postgres { .. } => ("dump", BackupKind::Postgres),
    };
    let path = dir.join(format!("{id}.{extension}"));
    match request.target {
        Target::Sqlite { path: database } => {
            if !database.exists() {
                return Ok(Taken::NothingYet(format!(
                    "no database at `{}` yet: nothing to back up",
                    database.display()
                )));
            }
            let (database, out) = (database.clone(), path.clone());
            tokio::task::spawn_blocking(move || {
                sqlite_copy(&database, &out)?;
                keep_sidecars_with_the_app(&database)
            })
            .await
            .map_err(CreateError::Task)??;
        }
        Target::Postgres { url } => {
            let args = vec![
                "--format=custom".to_owned(),
                "--no-password".to_owned(),
                format!("--file={}", path.display()),
            ];
            run_pg_tool("pg_dump", &args, url).await?;
        }
    }
    let (size, sha256) = file_digest(&path)?;
    let record = BackupRecord {
        id,
        app: request.app.to_owned(),
        environment: request.environment.to_owned(),
        release: request.release,
        deployment_id: request.deployment_id.map(str::to_owned),
        kind,
        reason: request.reason,
        target: request.target.display(),
        path: path.display().to_string(),
        size,
        sha256,
        created_at: now_ms(),
    };
    engine.store.insert_backup(&record)?;
    prune(engine, request.app, request.environment, request.keep);
    if let Some(remote) = request.remote {
        remote::spawn_upload(engine, remote, record.clone(), request.keep);
    }
    Ok(Taken::Backup(record))
}

/// Why a backup was not restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "backup `{id}` at `{path}` does not match its recorded checksum; refusing to restore it"
    )]
    Checksum { id: String, path: String },
    #[error("backup `{id}` is a {kind} backup; the database is `{target}`")]
    WrongKind {
        id: String,
        kind: &'static str,
        /// The database, without its password.
        target: String,
    },
    #[error("the restore task ended early")]
    Task(#[source] tokio::task::JoinError),
}

/// Restores `record` into `target`, after checking the file is the one recorded.
pub async fn restore(record: &BackupRecord, target: &Target) -> Result<String, RestoreError> {
    let path = PathBuf::from(&record.path);
    let (_, sha256) = file_digest(&path)?;
    if sha256 != record.sha256 {
        return Err(RestoreError::Checksum {
            id: record.id.clone(),
            path: record.path.clone(),
        });
    }
    match (target, record.kind) {
        (Target::Sqlite { path: database }, BackupKind::Sqlite) => {
            let (backup, database) = (path.clone(), database.clone());
            let shown = database.display().to_string();
            tokio::task::spawn_blocking(move || {
                sqlite_copy(&backup, &database)?;
                keep_sidecars_with_the_app(&database)
            })
            .await
            .map_err(RestoreError::Task)??;
            Ok(format!(
                "restored `{shown}` from backup `{}` with SQLite's online backup",
                record.id
            ))
        }
        (Target::Postgres { url }, BackupKind::Postgres) => {
            let args = vec![
                "--clean".to_owned(),
                "--if-exists".to_owned(),
                "--no-owner".to_owned(),
                "--no-password".to_owned(),
                "--single-transaction".to_owned(),
                format!("--dbname={}", url.database),
                path.display().to_string(),
            ];
            run_pg_tool("pg_restore", &args, url).await?;
            Ok(format!(
                "restored `{}` from backup `{}` with pg_restore --clean",
                target.display(),
                record.id
            ))
        }
        _ => Err(RestoreError::WrongKind {
            id: record.id.clone(),
            kind: record.kind.as_str(),
            target: target.display(),
        }),
    }
}

/// Why a backup on demand or a restore of the live database was not done.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("`{app}` has no current release in `{environment}`")]
    NoCurrentRelease { app: String, environment: String },
    /// The release's database could not be found.
    #[error(transparent)]
    Release(Box<crate::deploy::spec::SpecError>),
    #[error(transparent)]
    Load(#[from] crate::deploy::release::ReleaseError),
    #[error("release {release} of `{app}` names no database: set `[release] backup = \"VAR\"`")]
    NoDatabase { app: String, release: ReleaseNumber },
    /// There is no database yet to back up.
    #[error("{0}")]
    NothingYet(String),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error("cannot hold the app's traffic in the proxy, so nothing was restored")]
    HoldTraffic(#[source] crate::proxy_link::LinkError),
    #[error("the backup of the live database failed, so nothing was restored")]
    LiveBackupFailed(#[source] CreateError),
    #[error(transparent)]
    Restore(#[from] RestoreError),
    #[error("the local copy of backup `{id}` is gone, and it could not be fetched from the remote")]
    Remote {
        id: String,
        #[source]
        source: Box<remote::RemoteError>,
    },
}

/// A backup on demand that was not taken.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct BackupNowError(#[from] pub LiveError);

/// A restore of the live database that was not done (or not completely).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct RestoreLiveError(#[from] pub LiveError);

/// The current release of (app, env), and the database its `[release] backup` names.
pub(crate) fn live_database(
    engine: &Arc<Engine>,
    app: &str,
    env: &str,
) -> Result<(ReleaseNumber, crate::deploy::spec::LoadedRelease, Target), LiveError> {
    let key = AppEnv::new(app.to_owned(), env.to_owned());
    let current = engine
        .store
        .current(app, env)?
        .ok_or_else(|| LiveError::NoCurrentRelease {
            app: app.to_owned(),
            environment: env.to_owned(),
        })?;
    let release = crate::deploy::spec::load_release(engine, &key, current)?;
    let variable = release
        .resolved
        .config
        .release
        .as_ref()
        .and_then(|phase| phase.backup.clone())
        .ok_or_else(|| LiveError::NoDatabase {
            app: app.to_owned(),
            release: current,
        })?;
    let target = crate::deploy::spec::database_target(engine, &release, &variable)
        .map_err(|error| LiveError::Release(Box::new(error)))?;
    Ok((current, release, target))
}

/// The current release of (app, env), loaded.
pub fn live_release(
    engine: &Arc<Engine>,
    app: &str,
    env: &str,
) -> Result<crate::deploy::spec::LoadedRelease, LiveError> {
    let key = AppEnv::new(app.to_owned(), env.to_owned());
    let current = engine
        .store
        .current(app, env)?
        .ok_or_else(|| LiveError::NoCurrentRelease {
            app: app.to_owned(),
            environment: env.to_owned(),
        })?;
    Ok(crate::deploy::spec::load_release(engine, &key, current)?)
}

/// A backup now of the current release's database (`rollway backups create`, and the schedule).
pub async fn on_demand(
    engine: &Arc<Engine>,
    app: &str,
    env: &str,
    reason: BackupReason,
) -> Result<BackupRecord, BackupNowError> {
    let (current, release, target) = live_database(engine, app, env)?;
    let request = Request {
        app,
        environment: env,
        release: Some(current),
        deployment_id: None,
        reason,
        target: &target,
        keep: release.resolved.config.backup.keep as usize,
        remote: remote::of_release(engine, &release),
    };
    match create(engine, request).await.map_err(LiveError::from)? {
        Taken::Backup(record) => Ok(record),
        Taken::NothingYet(reason) => Err(LiveError::NothingYet(reason).into()),
    }
}

/// Restores `record` into the database of the current release: the app's instances are taken out
/// of traffic first (requests wait in the proxy), the live database is backed up, the restore
/// runs, traffic comes back. Returns the steps taken.
pub async fn restore_live(
    engine: &Arc<Engine>,
    record: &BackupRecord,
) -> Result<Vec<String>, RestoreLiveError> {
    let key = AppEnv::new(record.app.clone(), record.environment.clone());
    let (current, release, target) = live_database(engine, &key.app, &key.environment)?;
    let mut steps = Vec::new();
    // The local copy may be gone (a lost disk, a new host): fetch the sealed copy first, before
    // anything is held or changed.
    let record = &match ensure_local(engine, &release, record).await? {
        Some(fetched) => {
            steps.push(fetched.0);
            fetched.1
        }
        None => record.clone(),
    };
    // The app's writers are its instances: hold traffic and let in-flight requests finish.
    let held = engine.with_runtime(&key, |runtime| std::mem::take(&mut runtime.weights));
    let serving: Vec<ReleaseNumber> = held.iter().map(|(release, _)| *release).collect();
    let ids: Vec<String> = engine
        .runtime(&key)
        .instances
        .iter()
        .filter(|(_, instance)| {
            serving.contains(&instance.release)
                && instance.phase == crate::engine::InstancePhase::Ready
        })
        .map(|(id, _)| id.clone())
        .collect();
    if !held.is_empty() {
        engine.push_routes().await.map_err(LiveError::HoldTraffic)?;
        crate::deploy::spec::wait_gone_from_proxy(engine, &ids, Duration::from_secs(30)).await;
        steps.push(format!(
            "held new requests and drained {} instance(s)",
            ids.len()
        ));
    }
    // The live database is backed up first, so a restore of the wrong backup can be undone.
    // Nothing is pruned now: pruning could remove the very backup being restored.
    let result = match create(
        engine,
        Request {
            app: &key.app,
            environment: &key.environment,
            release: Some(current),
            deployment_id: None,
            reason: BackupReason::Manual,
            target: &target,
            keep: usize::MAX,
            remote: remote::of_release(engine, &release),
        },
    )
    .await
    {
        Ok(Taken::Backup(before)) => {
            steps.push(format!(
                "backed up the live database first as {} ({} bytes)",
                before.id, before.size
            ));
            restore(record, &target).await.map_err(LiveError::from)
        }
        Ok(Taken::NothingYet(reason)) => {
            steps.push(format!("no live database to back up first: {reason}"));
            restore(record, &target).await.map_err(LiveError::from)
        }
        Err(error) => Err(LiveError::LiveBackupFailed(error)),
    };
    if let Ok(done) = &result {
        steps.push(done.clone());
    }
    if !held.is_empty() {
        engine.with_runtime(&key, |runtime| runtime.weights = held);
        if let Err(error) = engine.push_routes().await {
            steps.push(format!("could not give traffic back: {error}"));
        } else {
            steps.push("traffic flows again".to_owned());
        }
    }
    result?;
    Ok(steps)
}

/// When `record`'s file is not on the agent: fetches it from the release's remote, opens it, and
/// records it again with its new path. `None` when the local copy is there.
pub async fn ensure_local(
    engine: &Arc<Engine>,
    release: &crate::deploy::spec::LoadedRelease,
    record: &BackupRecord,
) -> Result<Option<(String, BackupRecord)>, LiveError> {
    if Path::new(&record.path).exists() {
        return Ok(None);
    }
    let remote = remote::require(release).map_err(|error| LiveError::Remote {
        id: record.id.clone(),
        source: Box::new(error),
    })?;
    let fetched = fetch_remote(
        engine,
        &remote,
        &record.app,
        &record.environment,
        &record.id,
    )
    .await
    .map_err(|error| LiveError::Remote {
        id: record.id.clone(),
        source: Box::new(error),
    })?;
    Ok(Some((
        format!(
            "fetched backup {} from {} (the local copy was gone) and checked its sha256",
            record.id,
            remote.shown()
        ),
        fetched,
    )))
}

/// Backup `id` of (app, env) fetched from the current release's remote, when the agent has no record
/// of it, and the step to report; `None` when there is no remote or it does not have `id`.
pub async fn record_from_remote(
    engine: &Arc<Engine>,
    app: &str,
    env: &str,
    id: &str,
) -> Result<Option<(BackupRecord, String)>, RestoreLiveError> {
    let release = live_release(engine, app, env)?;
    let remote = match remote::require(&release) {
        Ok(remote) => remote,
        Err(remote::RemoteError::NoRemote) => return Ok(None),
        Err(error) => {
            return Err(LiveError::Remote {
                id: id.to_owned(),
                source: Box::new(error),
            }
            .into());
        }
    };
    match fetch_remote(engine, &remote, app, env, id).await {
        Ok(record) => Ok(Some((
            record,
            format!(
                "fetched backup {id} from {} (this agent had no record of it) and checked its sha256",
                remote.shown()
            ),
        ))),
        Err(remote::RemoteError::NotOnRemote { .. }) => Ok(None),
        Err(error) => Err(LiveError::Remote {
            id: id.to_owned(),
            source: Box::new(error),
        }
        .into()),
    }
}

/// Fetches backup `id` of (app, env) from `remote` into the local backups folder and records it
/// (replacing a record whose file is gone).
pub async fn fetch_remote(
    engine: &Arc<Engine>,
    remote: &remote::Remote,
    app: &str,
    environment: &str,
    id: &str,
) -> Result<BackupRecord, remote::RemoteError> {
    // The id names local files below: only the characters backup ids are made of.
    if id.is_empty()
        || !id
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-')
    {
        return Err(remote::RemoteError::NotOnRemote {
            id: id.to_owned(),
            remote: remote.shown().to_owned(),
        });
    }
    let key = match engine.store.backup_remote(id)? {
        Some(copy) => copy.key,
        None => remote::find(remote, app, environment, id).await?,
    };
    let dir = engine
        .paths
        .state_dir
        .join("backups")
        .join(app)
        .join(environment);
    std::fs::create_dir_all(&dir).map_err(|source| remote::RemoteError::File {
        operation: "create",
        path: dir.clone(),
        source,
    })?;
    let partial = dir.join(format!(".{id}.partial"));
    let header = remote::fetch(engine, remote, &key, &partial).await;
    let header = match header {
        Ok(header) if header.id == id && header.app == app && header.environment == environment => {
            header
        }
        Ok(_) => {
            let _ = std::fs::remove_file(&partial);
            return Err(remote::RemoteError::NotOnRemote {
                id: id.to_owned(),
                remote: remote.shown().to_owned(),
            });
        }
        Err(error) => {
            let _ = std::fs::remove_file(&partial);
            return Err(error);
        }
    };
    let kind = if header.kind == "postgres" {
        BackupKind::Postgres
    } else {
        BackupKind::Sqlite
    };
    let extension = match kind {
        BackupKind::Sqlite => "sqlite",
        BackupKind::Postgres => "dump",
    };
    let path = dir.join(format!("{id}.{extension}"));
    std::fs::rename(&partial, &path).map_err(|source| remote::RemoteError::File {
        operation: "move into place",
        path: path.clone(),
        source,
    })?;
    let record = BackupRecord {
        id: header.id,
        app: header.app,
        environment: header.environment,
        release: header.release.map(ReleaseNumber::new),
        deployment_id: None,
        kind,
        reason: match header.reason.as_str() {
            "manual" => BackupReason::Manual,
            "schedule" => BackupReason::Schedule,
            _ => BackupReason::Release,
        },
        target: header.target,
        path: path.display().to_string(),
        size: header.size,
        sha256: header.sha256,
        created_at: header.created_at,
    };
    let remote_copy = engine.store.backup_remote(id)?;
    engine.store.delete_backup(id)?;
    engine.store.insert_backup(&record)?;
    let copy = match remote_copy {
        Some(copy) => copy,
        None => crate::store::RemoteCopy {
            key,
            sha256: String::new(),
            size: 0,
            uploaded_at: now_ms(),
        },
    };
    engine.store.set_backup_remote(id, &copy)?;
    Ok(record)
}

/// Takes the scheduled backups and runs the scheduled restore drills that are due (called every
/// 30 s by the agent).
pub async fn run_schedules(engine: &Arc<Engine>) {
    let apps = engine.store.apps().unwrap_or_default();
    let now = now_ms();
    for (app, env, current) in apps {
        let Some(current) = current else { continue };
        let key = AppEnv::new(app.clone(), env.clone());
        let Ok(release) = crate::deploy::spec::load_release(engine, &key, current) else {
            continue;
        };
        if let Ok(remote) = remote::require(&release) {
            remote::upload_pending(
                engine,
                &remote,
                &app,
                &env,
                release.resolved.config.backup.keep as usize,
            );
        }
        if let Some(schedule) = release.resolved.config.backup.verify_schedule {
            let due_ms = schedule.last_due(now / 1000) * 1000;
            let last = engine.store.last_drill_at(&app, &env).unwrap_or_default();
            // Never before the first backup exists, and once per due time.
            let has_backup = engine
                .store
                .backups(&app, &env)
                .is_ok_and(|backups| !backups.is_empty());
            if has_backup && last.is_none_or(|last| last < due_ms) {
                // The drill records its own event (and alerts on failure); a drill that cannot
                // run at all is recorded here.
                if let Err(error) = verify::run(engine, &app, &env, None, "schedule").await {
                    engine.record(crate::store::NewEvent {
                        app: Some(app.clone()),
                        environment: Some(env.clone()),
                        deployment_id: None,
                        kind: "backup.verify_failed".to_owned(),
                        message: format!(
                            "the scheduled restore drill ({schedule}) could not run: {}",
                            crate::report::chain(&error)
                        ),
                        data_json: "{}".to_owned(),
                    });
                }
            }
        }
        let Some(schedule) = release.resolved.config.backup.schedule else {
            continue;
        };
        let due_ms = schedule.last_due(now / 1000) * 1000;
        let last = engine
            .store
            .backups(&app, &env)
            .unwrap_or_default()
            .into_iter()
            .filter(|record| record.reason == BackupReason::Schedule)
            .map(|record| record.created_at)
            .max();
        if last.is_some_and(|last| last >= due_ms) {
            continue;
        }
        let (kind, message) = match on_demand(engine, &app, &env, BackupReason::Schedule).await {
            Ok(record) => (
                "backup.created",
                format!(
                    "scheduled backup {} of {} ({} bytes)",
                    record.id, record.target, record.size
                ),
            ),
            Err(error) => (
                "backup.failed",
                format!(
                    "the scheduled backup ({schedule}) failed: {}",
                    crate::report::chain(&error)
                ),
            ),
        };
        engine.record(crate::store::NewEvent {
            app: Some(app.clone()),
            environment: Some(env.clone()),
            deployment_id: None,
            kind: kind.to_owned(),
            message,
            data_json: "{}".to_owned(),
        });
    }
}

/// A failure of one backup operation on a file or a PostgreSQL tool, naming which.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot open `{}`", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("`{}`", path.display())]
    BusyTimeout {
        path: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("cannot {step} `{}` to `{}`", from.display(), to.display())]
    Copy {
        /// `start copying` or `copy`.
        step: &'static str,
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("`{tool}` ran longer than {}s", TOOL_TIMEOUT.as_secs())]
    ToolTimeout { tool: String },
    #[error("cannot run `{tool}` (is the PostgreSQL client installed?)")]
    ToolSpawn {
        tool: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{tool}` failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot chown `{}`", path.display())]
    Chown {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Gives SQLite's `-wal`, `-shm` and `-journal` files of an app's `database` the database file's
/// owner: the agent (root) opening it may have made them, and an app running as its own user
/// could then no longer write its database.
fn keep_sidecars_with_the_app(database: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt as _;
    if !rustix::process::geteuid().is_root() {
        return Ok(());
    }
    let Ok(metadata) = std::fs::metadata(database) else {
        return Ok(());
    };
    for suffix in ["-wal", "-shm", "-journal"] {
        let mut name = database.as_os_str().to_owned();
        name.push(suffix);
        let sidecar = PathBuf::from(name);
        if std::fs::symlink_metadata(&sidecar).is_ok_and(|sidecar| sidecar.is_file()) {
            std::os::unix::fs::lchown(&sidecar, Some(metadata.uid()), Some(metadata.gid()))
                .map_err(|source| BackupError::Chown {
                    path: sidecar.clone(),
                    source,
                })?;
        }
    }
    Ok(())
}

/// Copies one SQLite database onto another with the online backup API (readers and writers of
/// the source may go on; the destination's content is replaced as a whole).
fn sqlite_copy(from: &Path, to: &Path) -> Result<(), BackupError> {
    let source =
        rusqlite::Connection::open_with_flags(from, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|source| BackupError::Open {
                path: from.to_owned(),
                source: Box::new(source),
            })?;
    let mut destination = rusqlite::Connection::open(to).map_err(|source| BackupError::Open {
        path: to.to_owned(),
        source: Box::new(source),
    })?;
    destination
        .busy_timeout(Duration::from_secs(10))
        .map_err(|source| BackupError::BusyTimeout {
            path: to.to_owned(),
            source: Box::new(source),
        })?;
    let copy_error = |step, source| BackupError::Copy {
        step,
        from: from.to_owned(),
        to: to.to_owned(),
        source: Box::new(source),
    };
    let backup = rusqlite::backup::Backup::new(&source, &mut destination)
        .map_err(|source| copy_error("start copying", source))?;
    backup
        .run_to_completion(256, Duration::from_millis(5), None)
        .map_err(|source| copy_error("copy", source))
}

async fn run_pg_tool(tool: &str, args: &[String], url: &PgUrl) -> Result<String, BackupError> {
    #[allow(
        clippy::disallowed_methods,
        reason = "pg_dump and pg_restore end inside the backup step"
    )]
    let mut command = tokio::process::Command::new(tool);
    command
        .args(args)
        .env_clear()
        .envs(driver::confine::passed_through_env())
        .env("PGHOST", &url.host)
        .env("PGDATABASE", &url.database)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    if let Some(port) = url.port {
        command.env("PGPORT", port.to_string());
    }
    if let Some(user) = &url.user {
        command.env("PGUSER", user);
    }
    if let Some(password) = &url.password {
        command.env("PGPASSWORD", password);
    }
    let output = tokio::time::timeout(TOOL_TIMEOUT, command.output())
        .await
        .map_err(|_| BackupError::ToolTimeout {
            tool: tool.to_owned(),
        })?
        .map_err(|source| BackupError::ToolSpawn {
            tool: tool.to_owned(),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        Err(BackupError::ToolFailed {
            tool: tool.to_owned(),
            status: output.status,
            stderr: stderr.trim().to_owned(),
        })
    }
}

/// Removes the oldest backups of (app, env) beyond `keep` (files and records).
pub fn prune(engine: &Engine, app: &str, env: &str, keep: usize) {
    let Ok(backups) = engine.store.backups(app, env) else {
        return;
    };
    for old in backups.into_iter().skip(keep.max(1)) {
        let _ = std::fs::remove_file(&old.path);
        let _ = engine.store.delete_backup(&old.id);
    }
}

/// The size and sha256 (hex) of the file at `path`.
pub fn file_digest(path: &Path) -> Result<(u64, String), BackupError> {
    let read_error = |source| BackupError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read_error)?;
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(read_error)?;
    Ok((size, hex::encode(hasher.finalize())))
}

pub(crate) fn random_suffix() -> String {
    let mut bytes = [0u8; 4];
    let _ = getrandom::fill(&mut bytes);
    hex::encode(bytes)
}

#[cfg(test)]
mod tests;
