//! Off-host copies of backups: which object on the remote holds a backup, and the agent's backup
//! key as the master key sealed it. It knows rows, not S3 nor ciphers (see `backup::remote`).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};

/// A backup's encrypted copy on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteCopy {
    /// The object's key in the bucket.
    pub key: String,
    /// The sha256 of the uploaded (encrypted) object.
    pub sha256: String,
    pub size: u64,
    pub uploaded_at: i64,
}

impl Store {
    pub fn set_backup_remote(&self, id: &str, copy: &RemoteCopy) -> Result<(), StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "UPDATE backups SET remote_key = ?2, remote_sha256 = ?3, remote_size = ?4, uploaded_at = ?5 WHERE id = ?1",
                params![
                    id,
                    copy.key,
                    copy.sha256,
                    i64::try_from(copy.size).unwrap_or(i64::MAX),
                    copy.uploaded_at
                ],
            )
            .map_err(|source| {
                self.error("record a backup's remote copy", format!("backup `{id}`"), source)
            })?;
        Ok(())
    }

    pub fn backup_remote(&self, id: &str) -> Result<Option<RemoteCopy>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                "SELECT remote_key, remote_sha256, remote_size, uploaded_at FROM backups WHERE id = ?1 AND remote_key IS NOT NULL",
                params![id],
                |row| {
                    Ok(RemoteCopy {
                        key: row.get(0)?,
                        sha256: row.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        size: u64::try_from(row.get::<_, Option<i64>>(2)?.unwrap_or(0)).unwrap_or(0),
                        uploaded_at: row.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    })
                },
            )
            .optional()
            .map_err(|source| {
                self.error("read a backup's remote copy", format!("backup `{id}`"), source)
            })
    }

    /// When the latest restore drill of (app, env) ran (ms), from its event.
    pub fn last_drill_at(&self, app: &str, env: &str) -> Result<Option<i64>, StoreError> {
        let connection = self.connection();
        connection
            .query_row(
                "SELECT MAX(at) FROM events WHERE app = ?1 AND environment = ?2 AND kind IN ('backup.verified', 'backup.verify_failed')",
                params![app, env],
                |row| row.get::<_, Option<i64>>(0),
            )
            .map_err(|source| {
                self.error("read the last restore drill", format!("`{app}` in `{env}`"), source)
            })
    }

    /// The agent's backup key as sealed by the master key, if one was made.
    pub fn sealed_backup_key(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let connection = self.connection();
        connection
            .query_row("SELECT sealed FROM backup_key WHERE id = 1", [], |row| {
                row.get(0)
            })
            .optional()
            .map_err(|source| {
                self.error("read the backup key", "the backup key".to_owned(), source)
            })
    }

    /// Keeps `sealed` as the agent's backup key unless one is there already; returns the one kept
    /// (two first uploads at once agree on one key).
    pub fn keep_sealed_backup_key(&self, sealed: &[u8], now: i64) -> Result<Vec<u8>, StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT OR IGNORE INTO backup_key (id, sealed, created_at) VALUES (1, ?1, ?2)",
                params![sealed, now],
            )
            .map_err(|source| {
                self.error("keep the backup key", "the backup key".to_owned(), source)
            })?;
        drop(connection);
        self.sealed_backup_key()?.ok_or_else(|| {
            self.error(
                "keep the backup key",
                "the backup key".to_owned(),
                rusqlite::Error::QueryReturnedNoRows,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BackupKind, BackupReason, BackupRecord, NewEvent};

    fn store() -> Store {
        Store::open_in_memory().expect("store")
    }

    #[test]
    fn the_first_backup_key_kept_stays() {
        let store = store();
        assert_eq!(store.sealed_backup_key().expect("read"), None);
        assert_eq!(
            store.keep_sealed_backup_key(b"first", 1).expect("keep"),
            b"first"
        );
        assert_eq!(
            store.keep_sealed_backup_key(b"second", 2).expect("keep"),
            b"first"
        );
        assert_eq!(
            store.sealed_backup_key().expect("read").as_deref(),
            Some(&b"first"[..])
        );
    }

    #[test]
    fn a_backup_has_a_remote_copy_once_recorded() {
        let store = store();
        let record = BackupRecord {
            id: "b-1-ab".to_owned(),
            app: "shop".to_owned(),
            environment: "production".to_owned(),
            release: None,
            deployment_id: None,
            kind: BackupKind::Sqlite,
            reason: BackupReason::Manual,
            target: "sqlite:/db".to_owned(),
            path: "/state/backups/b-1-ab.sqlite".to_owned(),
            size: 10,
            sha256: "00".to_owned(),
            created_at: 1,
        };
        store.insert_backup(&record).expect("insert");
        assert_eq!(store.backup_remote("b-1-ab").expect("read"), None);
        let copy = RemoteCopy {
            key: "db/shop/production/b-1-ab.sqlite.sealed".to_owned(),
            sha256: "ff".to_owned(),
            size: 99,
            uploaded_at: 5,
        };
        store.set_backup_remote("b-1-ab", &copy).expect("set");
        assert_eq!(store.backup_remote("b-1-ab").expect("read"), Some(copy));
        assert_eq!(store.backup_remote("b-2-cd").expect("read"), None);
    }

    #[test]
    fn the_last_drill_is_the_latest_drill_event_of_its_environment() {
        let store = store();
        assert_eq!(
            store.last_drill_at("shop", "production").expect("read"),
            None
        );
        let event = |app: &str, kind: &str| NewEvent {
            app: Some(app.to_owned()),
            environment: Some("production".to_owned()),
            deployment_id: None,
            kind: kind.to_owned(),
            message: "m".to_owned(),
            data_json: "{}".to_owned(),
        };
        store
            .record_event(event("shop", "backup.verified"))
            .expect("event");
        let first = store.last_drill_at("shop", "production").expect("read");
        assert!(first.is_some());
        store
            .record_event(event("other", "backup.verify_failed"))
            .expect("event");
        store
            .record_event(event("shop", "backup.created"))
            .expect("event");
        assert_eq!(
            store.last_drill_at("shop", "production").expect("read"),
            first
        );
        assert!(
            store
                .last_drill_at("other", "production")
                .expect("read")
                .is_some()
        );
        assert_eq!(store.last_drill_at("shop", "staging").expect("read"), None);
    }
}
