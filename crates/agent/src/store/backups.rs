//! Backup records: where each backup file is, what it holds, and its checksum.

use rusqlite::{OptionalExtension, Row, params};

use client::wire::ReleaseNumber;

use super::{Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupReason {
    /// Taken right before a release command.
    Release,
    Manual,
    Schedule,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupRecord {
    pub id: String,
    pub app: String,
    pub environment: String,
    pub release: Option<ReleaseNumber>,
    pub deployment_id: Option<String>,
    pub kind: BackupKind,
    pub reason: BackupReason,
    /// The database, with any password removed.
    pub target: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: i64,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Sqlite => "sqlite",
            BackupKind::Postgres => "postgres",
        }
    }
}

impl BackupReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupReason::Release => "release",
            BackupReason::Manual => "manual",
            BackupReason::Schedule => "schedule",
        }
    }
}

impl Store {
    pub fn insert_backup(&self, record: &BackupRecord) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO backups (id, app, environment, release, deployment_id, kind, reason, target, path, size, sha256, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    record.id,
                    record.app,
                    record.environment,
                    record.release.map(|n| i64::try_from(n.get()).unwrap_or(i64::MAX)),
                    record.deployment_id,
                    record.kind.as_str(),
                    record.reason.as_str(),
                    record.target,
                    record.path,
                    i64::try_from(record.size).unwrap_or(i64::MAX),
                    record.sha256,
                    record.created_at
                ],
            )
            .map_err(|source| self.error("record a backup", format!("backup `{}`", record.id), source))?;
        Ok(())
    }

    /// Backups of (app, env), newest first.
    pub fn backups(&self, app: &str, env: &str) -> Result<Vec<BackupRecord>, StoreError> {
        let subject = format!("backups of `{app}` in `{env}`");
        let connection = self.connection();
        let mut statement = connection
            .prepare(&format!(
                "{SELECT} WHERE app = ?1 AND environment = ?2 ORDER BY created_at DESC, id DESC"
            ))
            .map_err(|source| self.error("list backups", subject.clone(), source))?;
        let rows = statement
            .query_map(params![app, env], backup_from_row)
            .map_err(|source| self.error("list backups", subject.clone(), source))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|source| self.error("list backups", subject, source))
    }

    pub fn backup(&self, id: &str) -> Result<Option<BackupRecord>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                &format!("{SELECT} WHERE id = ?1"),
                params![id],
                backup_from_row,
            )
            .optional()
            .map_err(|source| self.error("read a backup", format!("backup `{id}`"), source))
    }

    pub fn delete_backup(&self, id: &str) -> Result<bool, StoreError> {
        let connection = self.connection();
        let n = connection
            .execute("DELETE FROM backups WHERE id = ?1", params![id])
            .map_err(|source| self.error("delete a backup", format!("backup `{id}`"), source))?;
        Ok(n > 0)
    }
}

const SELECT: &str = "SELECT id, app, environment, release, deployment_id, kind, reason, target, path, size, sha256, created_at FROM backups";

fn backup_from_row(row: &Row<'_>) -> rusqlite::Result<BackupRecord> {
    let kind: String = row.get(5)?;
    let reason: String = row.get(6)?;
    Ok(BackupRecord {
        id: row.get(0)?,
        app: row.get(1)?,
        environment: row.get(2)?,
        release: row
            .get::<_, Option<i64>>(3)?
            .map(|n| ReleaseNumber::new(u64::try_from(n).unwrap_or(0))),
        deployment_id: row.get(4)?,
        kind: if kind == "postgres" {
            BackupKind::Postgres
        } else {
            BackupKind::Sqlite
        },
        reason: match reason.as_str() {
            "manual" => BackupReason::Manual,
            "schedule" => BackupReason::Schedule,
            _ => BackupReason::Release,
        },
        target: row.get(7)?,
        path: row.get(8)?,
        size: u64::try_from(row.get::<_, i64>(9)?).unwrap_or(0),
        sha256: row.get(10)?,
        created_at: row.get(11)?,
    })
}
