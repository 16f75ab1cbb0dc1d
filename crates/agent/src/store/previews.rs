//! Preview environments' rows: which environment of an app is a preview, over which base, until
//! when. It knows rows, not rules: names and ttl bounds are checked before a row is written
//! (`deploy::start`), and expiry is acted on by `previews.rs`.

use rusqlite::{OptionalExtension, Row, params};

use super::{Store, StoreError, app_subject};

/// One preview environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preview {
    pub app: String,
    pub environment: String,
    /// The declared environment it layers over.
    pub base: String,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
}

const COLUMNS: &str = "app, environment, base, created_by, created_at, expires_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Preview> {
    Ok(Preview {
        app: row.get(0)?,
        environment: row.get(1)?,
        base: row.get(2)?,
        created_by: row.get(3)?,
        created_at: row.get(4)?,
        expires_at: row.get(5)?,
    })
}

impl Store {
    /// Records a preview, or renews one: a later deploy moves `expires_at` and keeps who made it
    /// and when. The base of an existing preview never changes (the caller refuses another one).
    pub fn put_preview(&self, preview: &Preview) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "INSERT INTO previews (app, environment, base, created_by, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, environment) DO UPDATE SET expires_at = excluded.expires_at",
                params![
                    preview.app,
                    preview.environment,
                    preview.base,
                    preview.created_by,
                    preview.created_at,
                    preview.expires_at
                ],
            )
            .map_err(|source| {
                self.error(
                    "record preview",
                    app_subject(&preview.app, &preview.environment),
                    source,
                )
            })?;
        Ok(())
    }

    /// Forgets a preview whose first deploy was refused before it started.
    pub fn delete_preview(&self, app: &str, env: &str) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "DELETE FROM previews WHERE app = ?1 AND environment = ?2",
                params![app, env],
            )
            .map_err(|source| self.error("delete preview", app_subject(app, env), source))?;
        Ok(())
    }

    pub fn preview(&self, app: &str, env: &str) -> Result<Option<Preview>, StoreError> {
        self.connection()
            .query_row(
                &format!("SELECT {COLUMNS} FROM previews WHERE app = ?1 AND environment = ?2"),
                params![app, env],
                from_row,
            )
            .optional()
            .map_err(|source| self.error("read preview", app_subject(app, env), source))
    }

    /// Every preview of every app, by app and name.
    pub fn previews(&self) -> Result<Vec<Preview>, StoreError> {
        self.query_rows(
            &format!("SELECT {COLUMNS} FROM previews ORDER BY app, environment"),
            [],
            from_row,
        )
        .map_err(|source| self.error("list previews", self.subject(), source))
    }

    /// Previews past their expiry that are not destroyed yet, oldest expiry first.
    pub fn expired_previews(&self, now_ms: i64) -> Result<Vec<Preview>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {COLUMNS} FROM previews AS p
                 WHERE p.expires_at <= ?1
                   AND NOT EXISTS (SELECT 1 FROM destroyed_environments AS d
                                   WHERE d.app = p.app AND d.environment = p.environment)
                 ORDER BY p.expires_at"
            ),
            params![now_ms],
            from_row,
        )
        .map_err(|source| self.error("list expired previews", self.subject(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preview(env: &str, by: &str, created_at: i64, expires_at: i64) -> Preview {
        Preview {
            app: "shop".to_owned(),
            environment: env.to_owned(),
            base: "staging".to_owned(),
            created_by: by.to_owned(),
            created_at,
            expires_at,
        }
    }

    #[test]
    fn renewing_keeps_the_maker_and_expired_ones_skip_the_destroyed() {
        let store = Store::open_in_memory().expect("store");
        store
            .put_preview(&preview("preview-1", "ana", 1, 100))
            .expect("put");
        store
            .put_preview(&preview("preview-2", "ana", 1, 50))
            .expect("put");
        store
            .put_preview(&preview("preview-1", "bob", 90, 500))
            .expect("renew");
        assert_eq!(
            store.preview("shop", "preview-1").expect("read"),
            Some(preview("preview-1", "ana", 1, 500))
        );
        let expired = |now| -> Vec<String> {
            store
                .expired_previews(now)
                .expect("expired")
                .into_iter()
                .map(|preview| preview.environment)
                .collect()
        };
        assert_eq!(expired(49), Vec::<String>::new());
        assert_eq!(expired(500), ["preview-2", "preview-1"]);
        store
            .mark_destroyed("shop", "preview-2", "rollway (ttl)", 60)
            .expect("destroy");
        assert_eq!(expired(500), ["preview-1"]);
        // The schema refuses what is no preview.
        assert!(store.put_preview(&preview("staging", "ana", 1, 2)).is_err());
        assert!(
            store
                .put_preview(&preview("preview-3", "ana", 5, 5))
                .is_err()
        );
    }
}
