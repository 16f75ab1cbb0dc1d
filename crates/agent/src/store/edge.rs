//! Edge controls of each environment (maintenance mode, pause), one row per environment that has one.
//!
//! Rows, not rules: what a maintenance page holds or how long a pause may last is `crate::edge`'s.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError};
use crate::edge::{EnvEdge, MaintenanceMode, Pause};

impl Store {
    /// Writes the edge controls of (app, env); all off deletes the row.
    pub fn set_env_edge(
        &self,
        app: &str,
        env: &str,
        env_edge: &EnvEdge,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let subject = format!("edge controls of `{app}` in `{env}`");
        let connection = self.connection();
        if *env_edge == EnvEdge::default() {
            connection
                .execute(
                    "DELETE FROM edge_controls WHERE app = ?1 AND environment = ?2",
                    params![app, env],
                )
                .map_err(|source| self.error("clear edge controls", subject, source))?;
            return Ok(());
        }
        let maintenance_json = env_edge
            .maintenance
            .as_ref()
            .map(|maintenance| serde_json::to_string(maintenance).unwrap_or_default());
        connection
            .execute(
                "INSERT INTO edge_controls (app, environment, maintenance_json, paused_until, paused_since, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (app, environment) DO UPDATE SET
                     maintenance_json = excluded.maintenance_json,
                     paused_until = excluded.paused_until,
                     paused_since = excluded.paused_since,
                     updated_at = excluded.updated_at",
                params![
                    app,
                    env,
                    maintenance_json,
                    env_edge.pause.map(|pause| pause.until_ms),
                    env_edge.pause.map(|pause| pause.since_ms),
                    now_ms
                ],
            )
            .map_err(|source| self.error("write edge controls", subject, source))?;
        Ok(())
    }

    /// The edge controls of (app, env); all off when it has no row.
    pub fn env_edge(&self, app: &str, env: &str) -> Result<EnvEdge, StoreError> {
        let subject = format!("edge controls of `{app}` in `{env}`");
        let connection = self.connection();
        connection
            .query_row(
                "SELECT maintenance_json, paused_until, paused_since FROM edge_controls
                 WHERE app = ?1 AND environment = ?2",
                params![app, env],
                env_edge_from_row,
            )
            .optional()
            .map_err(|source| self.error("read edge controls", subject, source))
            .map(Option::unwrap_or_default)
    }

    /// Every environment with an edge control on.
    pub fn env_edges(&self) -> Result<BTreeMap<(String, String), EnvEdge>, StoreError> {
        let subject = "edge controls".to_owned();
        let connection = self.connection();
        let mut statement = connection
            .prepare(
                "SELECT app, environment, maintenance_json, paused_until, paused_since
                 FROM edge_controls",
            )
            .map_err(|source| self.error("read edge controls", subject.clone(), source))?;
        let rows = statement
            .query_map([], |row| {
                let key: (String, String) = (row.get(0)?, row.get(1)?);
                let maintenance_json: Option<String> = row.get(2)?;
                let paused: (Option<i64>, Option<i64>) = (row.get(3)?, row.get(4)?);
                Ok((key, maintenance_json, paused))
            })
            .map_err(|source| self.error("read edge controls", subject.clone(), source))?;
        let mut edges = BTreeMap::new();
        for row in rows {
            let (key, maintenance_json, paused) =
                row.map_err(|source| self.error("read edge controls", subject.clone(), source))?;
            edges.insert(key, env_edge(maintenance_json, paused));
        }
        Ok(edges)
    }
}

fn env_edge_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<EnvEdge> {
    Ok(env_edge(row.get(0)?, (row.get(1)?, row.get(2)?)))
}

fn env_edge(maintenance_json: Option<String>, paused: (Option<i64>, Option<i64>)) -> EnvEdge {
    EnvEdge {
        // The column is written from `MaintenanceMode` only; a row that no longer reads is treated as
        // maintenance off rather than failing every routing push.
        maintenance: maintenance_json
            .and_then(|json| serde_json::from_str::<MaintenanceMode>(&json).ok()),
        pause: match paused {
            (Some(until_ms), Some(since_ms)) => Some(Pause { until_ms, since_ms }),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests;
