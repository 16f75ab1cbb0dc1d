//! Releases (numbered per app and environment, immutable but for their outcome) and the
//! current-release pointers.

use std::str::FromStr;

use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use client::wire::{ReleaseNumber, Strategy};

use super::{
    Store, StoreError, app_subject, now_ms, optional_release_number, parsed, release_number,
};

/// A release: immutable once created, except its `outcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub app: String,
    pub environment: String,
    /// Invariant: numbered per (app, environment) from 1, never reused.
    pub number: ReleaseNumber,
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

impl Store {
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
        let number: ReleaseNumber = transaction
            .query_row(
                "INSERT INTO release_counters (app, environment, last_number) VALUES (?1, ?2, 1)
                 ON CONFLICT (app, environment) DO UPDATE SET last_number = last_number + 1
                 RETURNING last_number",
                params![new_release.app, new_release.environment],
                |row| release_number(row, 0),
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
                    number.get(),
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
        number: ReleaseNumber,
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
                params![app, environment, number.get()],
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
        number: ReleaseNumber,
        outcome: ReleaseOutcome,
    ) -> Result<(), StoreError> {
        let n_changed = self
            .connection()
            .execute(
                "UPDATE releases SET outcome = ?4
                 WHERE app = ?1 AND environment = ?2 AND number = ?3",
                params![app, environment, number.get(), outcome.as_str()],
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
    pub fn set_current(
        &self,
        app: &str,
        environment: &str,
        number: ReleaseNumber,
    ) -> Result<(), StoreError> {
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
                params![app, environment, number.get()],
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
                params![app, environment, number.get(), now_ms()],
            )
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        transaction
            .commit()
            .map_err(|source| self.error(OPERATION, subject(), source))
    }

    pub fn current(
        &self,
        app: &str,
        environment: &str,
    ) -> Result<Option<ReleaseNumber>, StoreError> {
        self.connection()
            .query_row(
                "SELECT number FROM current_releases WHERE app = ?1 AND environment = ?2",
                params![app, environment],
                |row| release_number(row, 0),
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
    pub fn apps(&self) -> Result<Vec<(String, String, Option<ReleaseNumber>)>, StoreError> {
        self.query_rows(
            "SELECT counters.app, counters.environment, current_releases.number
             FROM release_counters AS counters
             LEFT JOIN current_releases USING (app, environment)
             ORDER BY counters.app, counters.environment",
            [],
            |row| Ok((row.get(0)?, row.get(1)?, optional_release_number(row, 2)?)),
        )
        .map_err(|source| self.error("list apps", self.subject(), source))
    }
}

const RELEASE_COLUMNS: &str = "app, environment, number, artifact, config_json, secrets_version, \
                               strategy, created_by, created_at, outcome, message";

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
                number: release_number(row, 2)?,
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

pub(super) fn release_not_found(app: &str, environment: &str, number: ReleaseNumber) -> StoreError {
    StoreError::ReleaseNotFound {
        app: app.to_owned(),
        environment: environment.to_owned(),
        number,
    }
}

pub(super) fn release_subject(app: &str, environment: &str, number: ReleaseNumber) -> String {
    format!("release `{number}` of app `{app}` in `{environment}`")
}
