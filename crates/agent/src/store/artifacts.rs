//! The artifact index: which blobs are stored, for pruning.

use rusqlite::params;

use super::{Store, StoreError};

impl Store {
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
}
