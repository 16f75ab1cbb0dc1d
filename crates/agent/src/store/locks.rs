//! Deploy locks: one per app and environment, with an owner, a heartbeat and a TTL.

use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, app_subject};

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

impl Lock {
    pub fn is_expired(&self, now_ms: i64) -> bool {
        self.expires_at <= now_ms
    }
}

impl Store {
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
}

const LOCK_COLUMNS: &str =
    "app, environment, owner, deployment_id, acquired_at, heartbeat_at, expires_at";

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
