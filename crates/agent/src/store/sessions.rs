//! Dashboard sessions: the hash of each session's id, the token it stands for, and its expiry.
//! A session is valid while it has not expired and its token is not revoked (revoking deletes the
//! token's sessions: trigger `dashboard_sessions_end_with_token`).

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, TokenRecord, now_ms};

impl Store {
    /// Records a session: `id_hash` (never the id), the token it was exchanged for, and when it
    /// ends.
    pub fn insert_session(
        &self,
        id_hash: &str,
        token_id: &str,
        expires_at: i64,
    ) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "INSERT INTO dashboard_sessions (id_hash, token_id, created_at, expires_at)
                      VALUES (?1, ?2, ?3, ?4)",
                params![id_hash, token_id, now_ms(), expires_at],
            )
            .map_err(|source| {
                self.error(
                    "insert a dashboard session",
                    token_subject(token_id),
                    source,
                )
            })?;
        Ok(())
    }

    /// The token of the session stored under `id_hash`, if the session has not expired at `now_ms`
    /// and its token is not revoked; and when the session ends.
    pub fn session_token(
        &self,
        id_hash: &str,
        now_ms: i64,
    ) -> Result<Option<(TokenRecord, i64)>, StoreError> {
        const OPERATION: &str = "look up a dashboard session";
        // The subject never shows the hash: an error message is no place for it.
        let subject = || "a presented session".to_owned();
        let row = self
            .connection()
            .query_row(
                "SELECT t.id, t.name, t.role, t.hash, t.created_at, t.revoked_at, s.expires_at
                   FROM dashboard_sessions s JOIN tokens t ON t.id = s.token_id
                  WHERE s.id_hash = ?1 AND s.expires_at > ?2 AND t.revoked_at IS NULL",
                params![id_hash, now_ms],
                |row| {
                    Ok((
                        row.get::<_, String>(0)?,
                        row.get::<_, String>(1)?,
                        row.get::<_, String>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, i64>(4)?,
                        row.get::<_, Option<i64>>(5)?,
                        row.get::<_, i64>(6)?,
                    ))
                },
            )
            .optional()
            .map_err(|source| self.error(OPERATION, subject(), source))?;
        let Some((id, name, role, hash, created_at, revoked_at, expires_at)) = row else {
            return Ok(None);
        };
        let role = role.parse().map_err(|_| StoreError::Corrupt {
            operation: OPERATION,
            subject: subject(),
            value: role.clone(),
        })?;
        Ok(Some((
            TokenRecord {
                id,
                name,
                role,
                hash,
                created_at,
                revoked_at,
            },
            expires_at,
        )))
    }

    /// Ends the session stored under `id_hash` (sign-out); says whether it existed.
    pub fn delete_session(&self, id_hash: &str) -> Result<bool, StoreError> {
        let n = self
            .connection()
            .execute(
                "DELETE FROM dashboard_sessions WHERE id_hash = ?1",
                params![id_hash],
            )
            .map_err(|source| {
                self.error(
                    "end a dashboard session",
                    "a presented session".to_owned(),
                    source,
                )
            })?;
        Ok(n > 0)
    }

    /// Deletes sessions that ended before `now_ms`; returns how many.
    pub fn prune_sessions(&self, now_ms: i64) -> Result<usize, StoreError> {
        self.connection()
            .execute(
                "DELETE FROM dashboard_sessions WHERE expires_at <= ?1",
                params![now_ms],
            )
            .map_err(|source| self.error("prune dashboard sessions", self.subject(), source))
    }
}

fn token_subject(id: &str) -> String {
    format!("token `{id}`")
}
