//! Instances the agent believes run.

use client::wire::{InstanceId, ReleaseNumber};
use rusqlite::{Row, params};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError, app_subject, release_number};

/// An instance the agent believes runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub instance_id: InstanceId,
    pub app: String,
    pub environment: String,
    pub release: ReleaseNumber,
    pub service: String,
    pub port: u16,
    /// The address the instance answers on with `port`: loopback, or a swarm node's address.
    pub host: std::net::IpAddr,
    pub state: String,
    /// Until when an instance of a superseded release is kept warm for an instant rollback.
    pub warm_until: Option<i64>,
    pub updated_at: i64,
}

impl Store {
    /// Inserts the instance or replaces what the store knew of it.
    pub fn upsert_instance(&self, instance: &InstanceRecord) -> Result<(), StoreError> {
        self.connection()
            .execute(
                &format!(
                    "INSERT OR REPLACE INTO instances ({INSTANCE_COLUMNS})
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
                ),
                params![
                    instance.instance_id.as_str(),
                    instance.app,
                    instance.environment,
                    instance.release.get(),
                    instance.service,
                    instance.port,
                    instance.state,
                    instance.warm_until,
                    instance.updated_at,
                    instance.host.to_string(),
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
}

const INSTANCE_COLUMNS: &str =
    "instance_id, app, environment, release, service, port, state, warm_until, updated_at, host";

fn instance_from_row(row: &Row<'_>) -> rusqlite::Result<InstanceRecord> {
    Ok(InstanceRecord {
        instance_id: InstanceId::new(row.get::<_, String>(0)?),
        app: row.get(1)?,
        environment: row.get(2)?,
        release: release_number(row, 3)?,
        service: row.get(4)?,
        port: row.get(5)?,
        state: row.get(6)?,
        warm_until: row.get(7)?,
        updated_at: row.get(8)?,
        host: row.get::<_, String>(9)?.parse().map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                9,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })?,
    })
}

fn instance_subject(instance_id: &str) -> String {
    format!("instance `{instance_id}`")
}
