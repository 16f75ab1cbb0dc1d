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

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use client::wire::{DeploymentKind, DeploymentState, Strategy};

use crate::tokens::Role;

mod backups;
mod edge;
mod images;
mod migrations;
mod secrets;

pub use backups::{BackupKind, BackupReason, BackupRecord};
pub use secrets::{SealedSecret, SecretMeta};

/// A cheap-clone handle on the store.
#[derive(Clone)]
pub struct Store {
    // std Mutex, not tokio's: critical sections are single statements or transactions and never
    // span an `.await` (see the module documentation).
    connection: Arc<Mutex<Connection>>,
    // Where the store lives, for error messages; `:memory:` for an in-memory store.
    location: Arc<PathBuf>,
}

/// A release: immutable once created, except its `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub app: String,
    pub environment: String,
    /// Invariant: numbered per (app, environment) from 1, never reused.
    pub number: u64,
    /// The artifact's SHA-256 in hex.
    pub artifact: String,
    /// The resolved manifest as JSON. Invariant: holds secret names, never secret values.
    pub config_json: String,
    pub secrets_version: Option<String>,
    /// The strategy the release was deployed with.
    pub strategy: Strategy,
    /// The name of the token that created the release.
    pub created_by: String,
    pub created_at: i64,
    pub outcome: ReleaseOutcome,
    pub message: Option<String>,
}

/// What a caller gives to create a release; the store adds the number, the time and `Pending`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRelease {
    pub app: String,
    pub environment: String,
    pub artifact: String,
    pub config_json: String,
    pub secrets_version: Option<String>,
    pub strategy: Strategy,
    pub created_by: String,
    pub message: Option<String>,
}

/// How a release ended up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOutcome {
    Pending,
    Live,
    Superseded,
    Failed,
    RolledBack,
}

/// A deployment: the persisted state of moving an (app, environment) to `to_release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `d-<unix ms, 13 digits>-<16 hex>`: unique, and sorts by creation time.
    pub id: String,
    pub app: String,
    pub environment: String,
    /// Rollback is a deployment to an earlier release: same path, different kind (the schema
    /// refuses any other kind).
    pub kind: DeploymentKind,
    pub from_release: Option<u64>,
    pub to_release: u64,
    pub strategy: Strategy,
    /// The state machine's state. The store compares it, never interprets it, except for
    /// `DeploymentState::is_terminal`.
    pub state: DeploymentState,
    /// Why the deployment is in its state (kept until a later transition gives a new one).
    pub reason: Option<String>,
    /// Executor-private JSON (for example which instances were started).
    pub data_json: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a caller gives to create a deployment; the store adds the id, the times and the
/// state `INITIAL_STATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub app: String,
    pub environment: String,
    pub kind: DeploymentKind,
    pub from_release: Option<u64>,
    pub to_release: u64,
    pub strategy: Strategy,
    pub data_json: String,
    pub created_by: String,
}

/// The state every deployment is created in.
pub const INITIAL_STATE: DeploymentState = DeploymentState::INITIAL;

/// The deploy lock of an (app, environment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lock {
    pub app: String,
    pub environment: String,
    /// Who holds it, for humans: the agent's host and pid, or a CLI user.
    pub owner: String,
    pub deployment_id: String,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
    /// Invariant: a lock whose `expires_at <= now` may be taken over by anyone.
    pub expires_at: i64,
}

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Invariant: strictly increasing in the order events were recorded, never reused.
    pub id: i64,
    pub at: i64,
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub data_json: String,
}

/// What a caller gives to record an event; the store adds the id and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub data_json: String,
}

impl NewEvent {
    /// An event about `deployment` (its app, environment and id filled in).
    pub fn for_deployment(deployment: &Deployment, kind: &str, message: String) -> NewEvent {
        NewEvent {
            app: Some(deployment.app.clone()),
            environment: Some(deployment.environment.clone()),
            deployment_id: Some(deployment.id.clone()),
            kind: kind.to_owned(),
            message,
            data_json: "{}".to_owned(),
        }
    }

    /// The event with `data` as its JSON payload (for programs, beside the message for people).
    pub fn with_data(self, data: &impl Serialize) -> NewEvent {
        // Serializing a plain enum or struct to JSON does not fail; `{}` keeps the event if it did.
        let data_json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
        NewEvent { data_json, ..self }
    }
}

/// An instance the agent believes runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: String,
    pub app: String,
    pub environment: String,
    pub release: u64,
    pub service: String,
    pub port: u16,
    pub state: String,
    /// Until when an instance of a superseded release is kept warm for an instant rollback.
    pub warm_until: Option<i64>,
    pub updated_at: i64,
}

/// A token as stored: its hash, never its plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// SHA-256 hex of the plaintext (`tokens::hash`).
    pub hash: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
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
        number: u64,
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

    // ---- Releases ----

    /// Creates the next release of (app, environment), numbered after the last one ever created
    /// there, with outcome `Pending`.
    pub fn create_release(&self, new_release: NewRelease) -> Result<Release, StoreError> {
        const OPERATION: &str = "create a release";
        let subject = app_subject(&new_release.app, &new_release.environment);
        let created_at = now_ms();
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error(OPERATION, subject.clone(), source))?;
        let number: u64 = transaction
            .query_row(
                "INSERT INTO release_counters (app, environment, last_number) VALUES (?1, ?2, 1)
                 ON CONFLICT (app, environment) DO UPDATE SET last_number = last_number + 1
                 RETURNING last_number",
                params![new_release.app, new_release.environment],
                |row| row.get(0),
            )
            .map_err(|source| self.error(OPERATION, subject.clone(), source))?;
        transaction
            .execute(
                "INSERT INTO releases (app, environment, number, artifact, config_json,
                     secrets_version, strategy, created_by, created_at, outcome, message)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    new_release.app,
                    new_release.environment,
                    number,
                    new_release.artifact,
                    new_release.config_json,
                    new_release.secrets_version,
                    new_release.strategy.as_str(),
                    new_release.created_by,
                    created_at,
                    ReleaseOutcome::Pending.as_str(),
                    new_release.message,
                ],
            )
            .map_err(|source| self.error(OPERATION, subject.clone(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error(OPERATION, subject, source))?;
        Ok(Release {
            app: new_release.app,
            environment: new_release.environment,
            number,
            artifact: new_release.artifact,
            config_json: new_release.config_json,
            secrets_version: new_release.secrets_version,
            strategy: new_release.strategy,
            created_by: new_release.created_by,
            created_at,
            outcome: ReleaseOutcome::Pending,
            message: new_release.message,
        })
    }

    pub fn release(
        &self,
        app: &str,
        environment: &str,
        number: u64,
    ) -> Result<Option<Release>, StoreError> {
        const OPERATION: &str = "read a release";
        let subject = || release_subject(app, environment, number);
        let connection = self.connection();
        let row = connection
            .query_row(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases
                          WHERE app = ?1 AND environment = ?2 AND number = ?3"
                ),
                params![app, environment, number],
                ReleaseRow::from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        row.map(|row| row.into_release(OPERATION, subject()))
            .transpose()
    }

    /// Every release of (app, environment), newest first.
    pub fn releases(&self, app: &str, environment: &str) -> Result<Vec<Release>, StoreError> {
        const OPERATION: &str = "list releases";
        let subject = || app_subject(app, environment);
        let rows = self
            .query_rows(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases
                          WHERE app = ?1 AND environment = ?2 ORDER BY number DESC"
                ),
                params![app, environment],
                ReleaseRow::from_row,
            )
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        rows.into_iter()
            .map(|row| row.into_release(OPERATION, subject()))
            .collect()
    }

    /// Records how a release ended up: the one column of a release that may change.
    pub fn set_release_outcome(
        &self,
        app: &str,
        environment: &str,
        number: u64,
        outcome: ReleaseOutcome,
    ) -> Result<(), StoreError> {
        let n_changed = self
            .connection()
            .execute(
                "UPDATE releases SET outcome = ?4
                 WHERE app = ?1 AND environment = ?2 AND number = ?3",
                params![app, environment, number, outcome.as_str()],
            )
            .map_err(|source| {
                self.error(
                    "set a release's outcome",
                    release_subject(app, environment, number),
                    source,
                )
            })?;
        if n_changed == 0 {
            return Err(release_not_found(app, environment, number));
        }
        Ok(())
    }

    // ---- Current release ----

    /// Makes `number` the current release of (app, environment). The release must exist.
    pub fn set_current(&self, app: &str, environment: &str, number: u64) -> Result<(), StoreError> {
        const OPERATION: &str = "set the current release";
        let subject = || release_subject(app, environment, number);
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        let exists: bool = transaction
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM releases
                                WHERE app = ?1 AND environment = ?2 AND number = ?3)",
                params![app, environment, number],
                |row| row.get(0),
            )
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        if !exists {
            return Err(release_not_found(app, environment, number));
        }
        transaction
            .execute(
                "INSERT INTO current_releases (app, environment, number, updated_at)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, environment)
                 DO UPDATE SET number = excluded.number, updated_at = excluded.updated_at",
                params![app, environment, number, now_ms()],
            )
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error(OPERATION, subject(), source))
    }

    pub fn current(&self, app: &str, environment: &str) -> Result<Option<u64>, StoreError> {
        self.connection()
            .query_row(
                "SELECT number FROM current_releases WHERE app = ?1 AND environment = ?2",
                params![app, environment],
                |row| row.get(0),
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "read the current release",
                    app_subject(app, environment),
                    source,
                )
            })
    }

    /// Every (app, environment) with at least one release, sorted, with its current release
    /// (`None` until a deployment succeeded there).
    pub fn apps(&self) -> Result<Vec<(String, String, Option<u64>)>, StoreError> {
        self.query_rows(
            "SELECT counters.app, counters.environment, current_releases.number
             FROM release_counters AS counters
             LEFT JOIN current_releases USING (app, environment)
             ORDER BY counters.app, counters.environment",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
        )
        .map_err(|source| self.error("list apps", self.subject(), source))
    }

    // ---- Deployments ----

    /// Creates a deployment with a new id, in `INITIAL_STATE`. `to_release` must exist.
    pub fn create_deployment(
        &self,
        new_deployment: NewDeployment,
    ) -> Result<Deployment, StoreError> {
        let created_at = now_ms();
        let id = new_deployment_id(created_at);
        let deployment = Deployment {
            id,
            app: new_deployment.app,
            environment: new_deployment.environment,
            kind: new_deployment.kind,
            from_release: new_deployment.from_release,
            to_release: new_deployment.to_release,
            strategy: new_deployment.strategy,
            state: INITIAL_STATE,
            reason: None,
            data_json: new_deployment.data_json,
            created_by: new_deployment.created_by,
            created_at,
            updated_at: created_at,
        };
        self.connection()
            .execute(
                &format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS})
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    deployment.id,
                    deployment.app,
                    deployment.environment,
                    deployment.kind.as_str(),
                    deployment.from_release,
                    deployment.to_release,
                    deployment.strategy.as_str(),
                    deployment.state.as_str(),
                    deployment.reason,
                    deployment.data_json,
                    deployment.created_by,
                    deployment.created_at,
                    deployment.updated_at,
                ],
            )
            .map_err(|source| {
                self.error(
                    "create a deployment",
                    release_subject(
                        &deployment.app,
                        &deployment.environment,
                        deployment.to_release,
                    ),
                    source,
                )
            })?;
        Ok(deployment)
    }

    /// Moves deployment `id` from `expected_state` to `new_state`, atomically: if another writer
    /// moved it first, nothing is written and the error says which state it is in.
    ///
    /// This is the write that comes before a transition's side effects. `reason` and
    /// `data_json` replace the stored ones when given and keep them when `None`.
    pub fn transition(
        &self,
        id: &str,
        expected_state: DeploymentState,
        new_state: DeploymentState,
        reason: Option<&str>,
        data_json: Option<&str>,
    ) -> Result<Deployment, StoreError> {
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        let deployment = self.transition_in(
            &transaction,
            id,
            expected_state,
            new_state,
            reason,
            data_json,
        )?;
        transaction
            .commit()
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        Ok(deployment)
    }

    /// `transition`, and the event that reports it, in one transaction: either both are written
    /// or neither, so a kill -9 between the two cannot lose the event.
    pub fn transition_with_event(
        &self,
        id: &str,
        expected_state: DeploymentState,
        new_state: DeploymentState,
        reason: Option<&str>,
        data_json: Option<&str>,
        new_event: NewEvent,
    ) -> Result<(Deployment, Event), StoreError> {
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        let deployment = self.transition_in(
            &transaction,
            id,
            expected_state,
            new_state,
            reason,
            data_json,
        )?;
        let event = self.record_event_in(&transaction, new_event)?;
        transaction
            .commit()
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        Ok((deployment, event))
    }

    pub fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        self.connection()
            .query_row(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                params![id],
                deployment_from_row,
            )
            .optional()
            .map_err(|source| self.error("read a deployment", deployment_subject(id), source))
    }

    /// The last `limit` deployments of (app, environment), newest first.
    pub fn deployments(
        &self,
        app: &str,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_rows(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                      WHERE app = ?1 AND environment = ?2
                      ORDER BY rowid DESC LIMIT ?3"
            ),
            params![app, environment, limit],
            deployment_from_row,
        )
        .map_err(|source| self.error("list deployments", app_subject(app, environment), source))
    }

    /// Every deployment not in a terminal state, oldest first: those a restarted agent must
    /// finish or undo.
    pub fn unfinished_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let terminal: Vec<&str> = DeploymentState::ALL
            .into_iter()
            .filter(|state| state.is_terminal())
            .map(DeploymentState::as_str)
            .collect();
        let terminal_json = serde_json::Value::from(terminal).to_string();
        self.query_rows(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                      WHERE state NOT IN (SELECT value FROM json_each(?1))
                      ORDER BY rowid"
            ),
            params![terminal_json],
            deployment_from_row,
        )
        .map_err(|source| self.error("list unfinished deployments", self.subject(), source))
    }

    // ---- Deploy locks ----

    /// Takes the deploy lock of (app, environment) for `deployment_id` until `now_ms + ttl_ms`.
    ///
    /// Returns `Ok(Err(holder))` when another deployment holds a lock that has not expired. An
    /// expired lock is taken over. The deployment that already holds the lock gets it again
    /// (a restarted agent resuming its deployment), with a fresh heartbeat and expiry.
    pub fn acquire_lock(
        &self,
        app: &str,
        environment: &str,
        owner: &str,
        deployment_id: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Result<Lock, Lock>, StoreError> {
        const OPERATION: &str = "acquire the deploy lock";
        let subject = || app_subject(app, environment);
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        let holder = transaction
            .query_row(
                &format!(
                    "SELECT {LOCK_COLUMNS} FROM deploy_locks
                          WHERE app = ?1 AND environment = ?2"
                ),
                params![app, environment],
                lock_from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        let acquired_at = match holder {
            Some(holder) if holder.deployment_id == deployment_id => holder.acquired_at,
            Some(holder) if !holder.is_expired(now_ms) => return Ok(Err(holder)),
            Some(_) | None => now_ms,
        };
        let lock = Lock {
            app: app.to_owned(),
            environment: environment.to_owned(),
            owner: owner.to_owned(),
            deployment_id: deployment_id.to_owned(),
            acquired_at,
            heartbeat_at: now_ms,
            expires_at: now_ms.saturating_add(ttl_ms),
        };
        transaction
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO deploy_locks ({LOCK_COLUMNS})
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"
                ),
                params![
                    lock.app,
                    lock.environment,
                    lock.owner,
                    lock.deployment_id,
                    lock.acquired_at,
                    lock.heartbeat_at,
                    lock.expires_at,
                ],
            )
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        Ok(Ok(lock))
    }

    /// Extends the lock held by `deployment_id` to `now_ms + ttl_ms`. `None` means the
    /// deployment no longer holds it (released, forced or taken over): it must stop.
    /// A lock that expired but that nobody took over is still renewed.
    pub fn heartbeat_lock(
        &self,
        app: &str,
        environment: &str,
        deployment_id: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lock>, StoreError> {
        self.connection()
            .query_row(
                &format!(
                    "UPDATE deploy_locks SET heartbeat_at = ?4, expires_at = ?5
                          WHERE app = ?1 AND environment = ?2 AND deployment_id = ?3
                          RETURNING {LOCK_COLUMNS}"
                ),
                params![
                    app,
                    environment,
                    deployment_id,
                    now_ms,
                    now_ms.saturating_add(ttl_ms)
                ],
                lock_from_row,
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "renew the deploy lock",
                    app_subject(app, environment),
                    source,
                )
            })
    }

    /// Releases the lock if `deployment_id` holds it; says whether it did.
    pub fn release_lock(
        &self,
        app: &str,
        environment: &str,
        deployment_id: &str,
    ) -> Result<bool, StoreError> {
        let n_deleted = self
            .connection()
            .execute(
                "DELETE FROM deploy_locks
                 WHERE app = ?1 AND environment = ?2 AND deployment_id = ?3",
                params![app, environment, deployment_id],
            )
            .map_err(|source| {
                self.error(
                    "release the deploy lock",
                    app_subject(app, environment),
                    source,
                )
            })?;
        Ok(n_deleted > 0)
    }

    /// The lock of (app, environment), expired or not (see `Lock::is_expired`).
    pub fn lock(&self, app: &str, environment: &str) -> Result<Option<Lock>, StoreError> {
        self.connection()
            .query_row(
                &format!(
                    "SELECT {LOCK_COLUMNS} FROM deploy_locks
                          WHERE app = ?1 AND environment = ?2"
                ),
                params![app, environment],
                lock_from_row,
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "read the deploy lock",
                    app_subject(app, environment),
                    source,
                )
            })
    }

    /// Removes the lock whoever holds it (`rollway lock release`, admin only); returns it.
    pub fn force_release_lock(
        &self,
        app: &str,
        environment: &str,
    ) -> Result<Option<Lock>, StoreError> {
        self.connection()
            .query_row(
                &format!(
                    "DELETE FROM deploy_locks WHERE app = ?1 AND environment = ?2
                          RETURNING {LOCK_COLUMNS}"
                ),
                params![app, environment],
                lock_from_row,
            )
            .optional()
            .map_err(|source| {
                self.error(
                    "force the deploy lock",
                    app_subject(app, environment),
                    source,
                )
            })
    }

    // ---- Events ----

    /// Appends an event to the audit log.
    pub fn record_event(&self, new_event: NewEvent) -> Result<Event, StoreError> {
        let connection = self.connection();
        self.record_event_in(&connection, new_event)
    }

    /// Up to `limit` events with an id above `after_id`, oldest first (0 starts at the
    /// beginning). Following the log means calling again with the last id seen.
    pub fn events_after(&self, after_id: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_rows(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after_id, limit],
            event_from_row,
        )
        .map_err(|source| self.error("read events", format!("ids after `{after_id}`"), source))
    }

    /// The events of deployment `id` with an id above `after_id`, oldest first.
    pub fn events_for_deployment(&self, id: &str, after_id: i64) -> Result<Vec<Event>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                      WHERE deployment_id = ?1 AND id > ?2 ORDER BY id"
            ),
            params![id, after_id],
            event_from_row,
        )
        .map_err(|source| self.error("read events", deployment_subject(id), source))
    }

    // ---- Instances ----

    /// Inserts the instance or replaces what the store knew of it.
    pub fn upsert_instance(&self, instance: &InstanceRecord) -> Result<(), StoreError> {
        self.connection()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO instances ({INSTANCE_COLUMNS})
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
                ),
                params![
                    instance.instance_id,
                    instance.app,
                    instance.environment,
                    instance.release,
                    instance.service,
                    instance.port,
                    instance.state,
                    instance.warm_until,
                    instance.updated_at,
                ],
            )
            .map_err(|source| {
                self.error(
                    "record an instance",
                    instance_subject(&instance.instance_id),
                    source,
                )
            })?;
        Ok(())
    }

    /// The instances of (app, environment), by release, service and id.
    pub fn instances(
        &self,
        app: &str,
        environment: &str,
    ) -> Result<Vec<InstanceRecord>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances
                      WHERE app = ?1 AND environment = ?2
                      ORDER BY release, service, instance_id"
            ),
            params![app, environment],
            instance_from_row,
        )
        .map_err(|source| self.error("list instances", app_subject(app, environment), source))
    }

    /// Every instance, by app, environment, release, service and id.
    pub fn all_instances(&self) -> Result<Vec<InstanceRecord>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {INSTANCE_COLUMNS} FROM instances
                      ORDER BY app, environment, release, service, instance_id"
            ),
            [],
            instance_from_row,
        )
        .map_err(|source| self.error("list instances", self.subject(), source))
    }

    /// Forgets an instance; says whether the store knew it.
    pub fn remove_instance(&self, instance_id: &str) -> Result<bool, StoreError> {
        let n_deleted = self
            .connection()
            .execute(
                "DELETE FROM instances WHERE instance_id = ?1",
                params![instance_id],
            )
            .map_err(|source| {
                self.error("remove an instance", instance_subject(instance_id), source)
            })?;
        Ok(n_deleted > 0)
    }

    // ---- Artifacts ----

    /// Notes that the artifact `digest` is stored; recording it again keeps the first record.
    pub fn record_artifact(&self, digest: &str, size: u64, now_ms: i64) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "INSERT INTO artifacts (digest, size, recorded_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (digest) DO NOTHING",
                params![digest, size, now_ms],
            )
            .map_err(|source| {
                self.error("record an artifact", format!("artifact `{digest}`"), source)
            })?;
        Ok(())
    }

    pub fn artifact_known(&self, digest: &str) -> Result<bool, StoreError> {
        self.connection()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM artifacts WHERE digest = ?1)",
                params![digest],
                |row| row.get(0),
            )
            .map_err(|source| {
                self.error(
                    "look up an artifact",
                    format!("artifact `{digest}`"),
                    source,
                )
            })
    }

    // ---- Tokens ----

    pub fn insert_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.connection()
            .execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
                params![
                    token.id,
                    token.name,
                    token.role.as_str(),
                    token.hash,
                    token.created_at,
                    token.revoked_at,
                ],
            )
            .map_err(|source| self.error("insert a token", token_subject(&token.id), source))?;
        Ok(())
    }

    /// The token stored under `hash`, revoked or not (`tokens::verify` skips revoked ones).
    pub fn token_by_hash(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError> {
        const OPERATION: &str = "look up a token";
        // The subject never shows the hash: an error message is no place for it.
        let subject = || "a presented token".to_owned();
        let connection = self.connection();
        let row = connection
            .query_row(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE hash = ?1"),
                params![hash],
                TokenRow::from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        row.map(|row| row.into_token(OPERATION, subject()))
            .transpose()
    }

    /// Every token, revoked ones included, oldest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        const OPERATION: &str = "list tokens";
        let rows = self
            .query_rows(
                &format!("SELECT {TOKEN_COLUMNS} FROM tokens ORDER BY created_at, id"),
                [],
                TokenRow::from_row,
            )
            .map_err(|source| self.error(OPERATION, self.subject(), source))?;
        rows.into_iter()
            .map(|row| row.into_token(OPERATION, self.subject()))
            .collect()
    }

    /// Revokes token `id`; says whether it existed and was not revoked yet.
    pub fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n_changed = self
            .connection()
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                params![id, now_ms()],
            )
            .map_err(|source| self.error("revoke a token", token_subject(id), source))?;
        Ok(n_changed > 0)
    }

    /// How many tokens exist, revoked ones included.
    pub fn count_tokens(&self) -> Result<u64, StoreError> {
        self.connection()
            .query_row("SELECT COUNT(*) FROM tokens", [], |row| row.get(0))
            .map_err(|source| self.error("count tokens", self.subject(), source))
    }
}

impl ReleaseOutcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            ReleaseOutcome::Pending => "pending",
            ReleaseOutcome::Live => "live",
            ReleaseOutcome::Superseded => "superseded",
            ReleaseOutcome::Failed => "failed",
            ReleaseOutcome::RolledBack => "rolled_back",
        }
    }
}

impl FromStr for ReleaseOutcome {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(ReleaseOutcome::Pending),
            "live" => Ok(ReleaseOutcome::Live),
            "superseded" => Ok(ReleaseOutcome::Superseded),
            "failed" => Ok(ReleaseOutcome::Failed),
            "rolled_back" => Ok(ReleaseOutcome::RolledBack),
            _ => Err(()),
        }
    }
}

impl std::fmt::Display for ReleaseOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Lock {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at <= now_ms
    }
}

// ---- Private helpers ----

/// How long a statement waits for another connection's write lock (a second process, such as
/// an offline `rollway` command, opening the same file) before failing with `SQLITE_BUSY`.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

const RELEASE_COLUMNS: &str = "app, environment, number, artifact, config_json, secrets_version, \
                               strategy, created_by, created_at, outcome, message";
const DEPLOYMENT_COLUMNS: &str = "id, app, environment, kind, from_release, to_release, \
                                  strategy, state, reason, data_json, created_by, created_at, \
                                  updated_at";
const LOCK_COLUMNS: &str =
    "app, environment, owner, deployment_id, acquired_at, heartbeat_at, expires_at";
const EVENT_COLUMNS: &str = "id, at, app, environment, deployment_id, kind, message, data_json";
const INSTANCE_COLUMNS: &str =
    "instance_id, app, environment, release, service, port, state, warm_until, updated_at";
const TOKEN_COLUMNS: &str = "id, name, role, hash, created_at, revoked_at";

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

    fn transition_in(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        id: &str,
        expected_state: DeploymentState,
        new_state: DeploymentState,
        reason: Option<&str>,
        data_json: Option<&str>,
    ) -> Result<Deployment, StoreError> {
        const OPERATION: &str = "move a deployment";
        let updated = transaction
            .query_row(
                &format!(
                    "UPDATE deployments
                          SET state = ?3, reason = COALESCE(?4, reason),
                              data_json = COALESCE(?5, data_json), updated_at = ?6
                          WHERE id = ?1 AND state = ?2
                          RETURNING {DEPLOYMENT_COLUMNS}"
                ),
                params![
                    id,
                    expected_state.as_str(),
                    new_state.as_str(),
                    reason,
                    data_json,
                    now_ms()
                ],
                deployment_from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        if let Some(deployment) = updated {
            return Ok(deployment);
        }
        let actual: Option<DeploymentState> = transaction
            .query_row(
                "SELECT state FROM deployments WHERE id = ?1",
                params![id],
                |row| parsed(row, 0),
            )
            .optional()
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        Err(match actual {
            Some(actual) => StoreError::StateConflict {
                id: id.to_owned(),
                expected: expected_state,
                actual,
                new: new_state,
            },
            None => StoreError::DeploymentNotFound { id: id.to_owned() },
        })
    }

    fn record_event_in(
        &self,
        connection: &Connection,
        new_event: NewEvent,
    ) -> Result<Event, StoreError> {
        let at = now_ms();
        let id = connection
            .query_row(
                "INSERT INTO events (at, app, environment, deployment_id, kind, message, data_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                params![
                    at,
                    new_event.app,
                    new_event.environment,
                    new_event.deployment_id,
                    new_event.kind,
                    new_event.message,
                    new_event.data_json,
                ],
                |row| row.get(0),
            )
            .map_err(|source| {
                self.error(
                    "record an event",
                    format!("event `{}`", new_event.kind),
                    source,
                )
            })?;
        Ok(Event {
            id,
            at,
            app: new_event.app,
            environment: new_event.environment,
            deployment_id: new_event.deployment_id,
            kind: new_event.kind,
            message: new_event.message,
            data_json: new_event.data_json,
        })
    }
}

/// A release row as stored, before its outcome is parsed.
struct ReleaseRow {
    release: Release,
    outcome: String,
}

impl ReleaseRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<ReleaseRow> {
        Ok(ReleaseRow {
            release: Release {
                app: row.get(0)?,
                environment: row.get(1)?,
                number: row.get(2)?,
                artifact: row.get(3)?,
                config_json: row.get(4)?,
                secrets_version: row.get(5)?,
                strategy: parsed(row, 6)?,
                created_by: row.get(7)?,
                created_at: row.get(8)?,
                outcome: ReleaseOutcome::Pending,
                message: row.get(10)?,
            },
            outcome: row.get(9)?,
        })
    }

    fn into_release(self, operation: &'static str, subject: String) -> Result<Release, StoreError> {
        let outcome = self.outcome.parse().map_err(|()| StoreError::Corrupt {
            operation,
            subject,
            value: self.outcome.clone(),
        })?;
        Ok(Release {
            outcome,
            ..self.release
        })
    }
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

fn deployment_from_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: row.get(0)?,
        app: row.get(1)?,
        environment: row.get(2)?,
        kind: parsed(row, 3)?,
        from_release: row.get(4)?,
        to_release: row.get(5)?,
        strategy: parsed(row, 6)?,
        state: parsed(row, 7)?,
        reason: row.get(8)?,
        data_json: row.get(9)?,
        created_by: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

/// A token row as stored, before its role is parsed.
struct TokenRow {
    token: TokenRecord,
    role: String,
}

impl TokenRow {
    fn from_row(row: &Row<'_>) -> rusqlite::Result<TokenRow> {
        Ok(TokenRow {
            token: TokenRecord {
                id: row.get(0)?,
                name: row.get(1)?,
                role: Role::Viewer,
                hash: row.get(3)?,
                created_at: row.get(4)?,
                revoked_at: row.get(5)?,
            },
            role: row.get(2)?,
        })
    }

    fn into_token(
        self,
        operation: &'static str,
        subject: String,
    ) -> Result<TokenRecord, StoreError> {
        let role = self.role.parse().map_err(|_| StoreError::Corrupt {
            operation,
            subject,
            value: self.role.clone(),
        })?;
        Ok(TokenRecord { role, ..self.token })
    }
}

fn lock_from_row(row: &Row<'_>) -> rusqlite::Result<Lock> {
    Ok(Lock {
        app: row.get(0)?,
        environment: row.get(1)?,
        owner: row.get(2)?,
        deployment_id: row.get(3)?,
        acquired_at: row.get(4)?,
        heartbeat_at: row.get(5)?,
        expires_at: row.get(6)?,
    })
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: row.get(0)?,
        at: row.get(1)?,
        app: row.get(2)?,
        environment: row.get(3)?,
        deployment_id: row.get(4)?,
        kind: row.get(5)?,
        message: row.get(6)?,
        data_json: row.get(7)?,
    })
}

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        instance_id: row.get(0)?,
        app: row.get(1)?,
        environment: row.get(2)?,
        release: row.get(3)?,
        service: row.get(4)?,
        port: row.get(5)?,
        state: row.get(6)?,
        warm_until: row.get(7)?,
        updated_at: row.get(8)?,
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

/// `d-<unix ms, zero-padded to 13 digits>-<8 random bytes in hex>`: sorts by creation time and
/// is unique without coordination. Should the OS fail to give random bytes, the suffix falls back
/// to a process-wide counter, still unique within this agent.
fn new_deployment_id(now_ms: i64) -> String {
    let mut suffix = [0u8; 8];
    if getrandom::fill(&mut suffix).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        suffix = count.to_be_bytes();
    }
    format!("d-{now_ms:013}-{}", hex::encode(suffix))
}

/// The system clock in unix milliseconds, for stamps that only record when a row was written.
fn now_ms() -> i64 {
    let since_epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO);
    i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX)
}

fn release_not_found(app: &str, environment: &str, number: u64) -> StoreError {
    StoreError::ReleaseNotFound {
        app: app.to_owned(),
        environment: environment.to_owned(),
        number,
    }
}

fn app_subject(app: &str, environment: &str) -> String {
    format!("app `{app}` in `{environment}`")
}

fn release_subject(app: &str, environment: &str, number: u64) -> String {
    format!("release `{number}` of app `{app}` in `{environment}`")
}

fn deployment_subject(id: &str) -> String {
    format!("deployment `{id}`")
}

fn instance_subject(instance_id: &str) -> String {
    format!("instance `{instance_id}`")
}

fn token_subject(id: &str) -> String {
    format!("token `{id}`")
}

#[cfg(test)]
mod tests;
