//! The agent's SQLite store: releases, the current-release pointers, deployments, deploy locks,
//! events (the audit log), instances, the artifact index and token hashes.
//! It knows rows, not rules: the deployment state machine, the token roles' meaning and the
//! artifact bytes live in `deploy`, `tokens` and `artifact`.
//!
//! Locking: one `std::sync::Mutex<Connection>` behind a cheap-clone handle. The API is
//! synchronous; async callers use `spawn_blocking` (or call directly for the short reads).
//! A std mutex fits because every critical section is one statement or one transaction, never
//! held across an `.await`, and SQLite serializes writers anyway.
//!
//! Time: every time is `i64` unix milliseconds. Times that decide something (lock expiry,
//! heartbeats, the artifact index used for pruning) are passed in by the caller as `now_ms`, so
//! tests can step them. Stamps that only record when a row was written (`created_at` of releases
//! and deployments, `updated_at`, an event's `at`, `revoked_at`) are read from the system clock
//! here. Records the caller builds whole (`InstanceRecord`, `TokenRecord`) carry their own times.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, Row};

use client::wire::{DeploymentState, ReleaseNumber};

mod artifacts;
mod backup_remote;
mod backups;
mod certs;
mod cron;
mod deployments;
mod edge;
mod environments;
mod events;
mod images;
mod instances;
mod locks;
mod migrations;
mod previews;
mod registry;
mod releases;
mod secrets;
mod sessions;
mod signals;
mod tokens;
pub use cron::NewCronRun;

pub use backup_remote::RemoteCopy;
pub use backups::{BackupKind, BackupReason, BackupRecord};
pub use certs::{CertRecord, CertSource};
pub use deployments::{Deployment, INITIAL_STATE, NewDeployment};
pub use events::{Event, NewEvent};
pub use images::ReleaseImages;
pub use instances::InstanceRecord;
pub use locks::Lock;
pub use previews::Preview;
pub use registry::RegistryAccess;
pub use releases::{NewRelease, Release, ReleaseOutcome};
pub use secrets::{SealedSecret, SecretMeta};
pub use signals::{Advance, PendingSignal, Signal};
pub use tokens::TokenRecord;

/// A cheap-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    // std Mutex, not tokio's: critical sections are single statements or transactions and never
    // span an `.await` (see the module documentation).
    connection: Arc<Mutex<Connection>>,
    // Where the store lives, for error messages; `:memory:` for an in-memory store.
    location: Arc<PathBuf>,
}

/// A failure of the store, naming the operation and what it was about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create store file `{path}`")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open store `{path}`")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot migrate store `{path}` to the latest schema")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("cannot {operation} for {subject}")]
    Sqlite {
        operation: &'static str,
        subject: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("release `{number}` of `{app}` in `{environment}` does not exist")]
    ReleaseNotFound {
        app: String,
        environment: String,
        number: ReleaseNumber,
    },
    #[error("deployment `{id}` does not exist")]
    DeploymentNotFound { id: String },
    #[error(
        "deployment `{id}` is `{actual}`, not `{expected}` as the transition to `{new}` expected"
    )]
    StateConflict {
        id: String,
        expected: DeploymentState,
        actual: DeploymentState,
        new: DeploymentState,
    },
    #[error("cannot {operation} for {subject}: stored value `{value}` is invalid")]
    Corrupt {
        operation: &'static str,
        subject: String,
        value: String,
    },
}

impl Store {
    /// Opens (creating it with mode 0600 if needed) the store at `path` and migrates it to the
    /// latest schema. WAL mode, foreign keys on, `synchronous = FULL` (writes are rare, and an
    /// acknowledged release or event must survive a power cut, not only a kill -9).
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        create_private_file(path)?;
        let connection = Connection::open(path).map_err(|source| StoreError::Open {
            path: path.to_owned(),
            source,
        })?;
        Store::setup(connection, path.to_owned())
    }

    /// A store that lives in memory only, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Store::setup(connection, path)
    }

    /// The schema version (the number of migrations applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let connection = self.connection();
        connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(|source| self.error("read the schema version", self.subject(), source))
    }
}

// ---- Private helpers ----

/// How long a statement waits for another connection's write lock (a second process, such as
/// an offline `rollway` command, opening the same file) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

impl Store {
    fn setup(mut connection: Connection, path: PathBuf) -> Result<Store, StoreError> {
        let open_error = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        connection.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        // An in-memory database answers `memory`; only a file can be in WAL mode.
        let _journal_mode: String = connection
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(open_error)?;
        connection
            .pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        connection
            .pragma_update(None, "foreign_keys", true)
            .map_err(open_error)?;
        migrations::migrations()
            .to_latest(&mut connection)
            .map_err(|source| StoreError::Migrate {
                path: path.clone(),
                source,
            })?;
        Ok(Store {
            connection: Arc::new(Mutex::new(connection)),
            location: Arc::new(path),
        })
    }

    /// The connection. A panic while it was held cannot leave a half-written change behind
    /// (an open transaction rolls back when dropped), so a poisoned mutex is used as is.
    fn connection(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn error(
        &self,
        operation: &'static str,
        subject: String,
        source: rusqlite::Error,
    ) -> StoreError {
        StoreError::Sqlite {
            operation,
            subject,
            source,
        }
    }

    /// The subject of whole-store operations.
    fn subject(&self) -> String {
        format!("store `{}`", self.location.display())
    }

    fn query_rows<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        from_row: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
    ) -> rusqlite::Result<Vec<T>> {
        let connection = self.connection();
        let mut statement = connection.prepare_cached(sql)?;
        let rows = statement.query_map(params, from_row)?;
        rows.collect()
    }
}

/// Column `index` of `row`, an integer column holding a release number. `ReleaseNumber` lives
/// in the wire types, so it cannot implement rusqlite's `FromSql` here (the orphan rule); it is
/// written as `number.get()` and read through this helper.
fn release_number(row: &Row<'_>, index: usize) -> rusqlite::Result<ReleaseNumber> {
    row.get::<_, u64>(index).map(ReleaseNumber::new)
}

/// Column `index` of `row`, a nullable integer column holding a release number.
fn optional_release_number(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<ReleaseNumber>> {
    Ok(row.get::<_, Option<u64>>(index)?.map(ReleaseNumber::new))
}

/// Column `index` of `row`, a text column holding one of `T`'s string forms (a state, kind or
/// strategy). The enums live in the wire types, so they cannot implement rusqlite's `FromSql`
/// here; a value that names none of them is a conversion error, as `FromSql` would give.
fn parsed<T>(row: &Row<'_>, index: usize) -> rusqlite::Result<T>
where
    T: FromStr,
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let text: String = row.get(index)?;
    text.parse().map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            Box::new(error),
        )
    })
}

/// Creates the store file readable by its owner only, and tightens an existing one: it holds
/// token hashes and encrypted secrets. SQLite gives the `-wal` and `-shm` files the same mode.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let create_error = |source| StoreError::CreateFile {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        options.mode(0o600);
        let file = options.open(path).map_err(create_error)?;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(create_error)?;
    }
    #[cfg(not(unix))]
    {
        options.open(path).map_err(create_error)?;
    }
    Ok(())
}

/// The system clock in unix milliseconds, for stamps that only record when a row was written.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn app_subject(app: &str, environment: &str) -> String {
    format!("app `{app}` in `{environment}`")
}

#[cfg(test)]
mod tests;
