//! Destroyed environments: `rollway destroy` stops an environment's instances and routes and keeps
//! its releases, events and backups; its row here says it runs nothing until its next deploy.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, app_subject};

impl Store {
    /// Marks (app, env) destroyed.
    pub fn mark_destroyed(
        &self,
        app: &str,
        env: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "INSERT INTO destroyed_environments (app, environment, destroyed_at, destroyed_by)
                 VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (app, environment) DO UPDATE SET
                     destroyed_at = excluded.destroyed_at, destroyed_by = excluded.destroyed_by",
                params![app, env, now_ms, by],
            )
            .map_err(|source| self.error("mark destroyed", app_subject(app, env), source))?;
        Ok(())
    }

    /// A deploy brings (app, env) back.
    pub fn clear_destroyed(&self, app: &str, env: &str) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "DELETE FROM destroyed_environments WHERE app = ?1 AND environment = ?2",
                params![app, env],
            )
            .map_err(|source| self.error("clear destroyed", app_subject(app, env), source))?;
        Ok(())
    }

    pub fn is_destroyed(&self, app: &str, env: &str) -> Result<bool, StoreError> {
        self.connection()
            .query_row(
                "SELECT 1 FROM destroyed_environments WHERE app = ?1 AND environment = ?2",
                params![app, env],
                |_| Ok(()),
            )
            .optional()
            .map(|found| found.is_some())
            .map_err(|source| self.error("read destroyed", app_subject(app, env), source))
    }
}
