//! Events: the append-only audit log.

use client::wire::EventView;
use rusqlite::{Connection, Row, params};
use serde::{Deserialize, Serialize};

use super::deployments::{Deployment, deployment_subject};
use super::{Store, StoreError, now_ms};

/// An entry of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Invariant: strictly increasing in the order events were recorded, never reused.
    pub id: i64,
    pub at: i64,
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub data_json: String,
}

/// What a caller gives to record an event; the store adds the id and the time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    pub kind: String,
    pub message: String,
    pub data_json: String,
}

impl Event {
    /// The event as the API, live followers and alerts see it.
    pub fn view(&self) -> EventView {
        EventView {
            id: self.id,
            at: self.at,
            app: self.app.clone(),
            environment: self.environment.clone(),
            deployment_id: self.deployment_id.clone(),
            kind: self.kind.clone(),
            message: self.message.clone(),
            data: serde_json::from_str(&self.data_json).unwrap_or(serde_json::Value::Null),
        }
    }
}

impl NewEvent {
    /// An event about `deployment` (its app, environment and id filled in).
    pub fn for_deployment(deployment: &Deployment, kind: &str, message: String) -> NewEvent {
        NewEvent {
            app: Some(deployment.app.clone()),
            environment: Some(deployment.environment.clone()),
            deployment_id: Some(deployment.id.clone()),
            kind: kind.to_owned(),
            message,
            data_json: "{}".to_owned(),
        }
    }

    /// The event with `data` as its JSON payload (for programs, beside the message for people).
    pub fn with_data(self, data: &impl Serialize) -> NewEvent {
        // Serializing a plain enum or struct to JSON does not fail; `{}` keeps the event if it did.
        let data_json = serde_json::to_string(data).unwrap_or_else(|_| "{}".to_owned());
        NewEvent { data_json, ..self }
    }
}

impl Store {
    /// Appends an event to the audit log.
    pub fn record_event(&self, new_event: NewEvent) -> Result<Event, StoreError> {
        let connection = self.connection();
        self.record_event_in(&connection, new_event)
    }

    /// Up to `limit` events with an id above `after_id`, oldest first (0 starts at the
    /// beginning). Following the log means calling again with the last id seen.
    pub fn events_after(&self, after_id: i64, limit: usize) -> Result<Vec<Event>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_rows(
            &format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ?1 ORDER BY id LIMIT ?2"),
            params![after_id, limit],
            event_from_row,
        )
        .map_err(|source| self.error("read events", format!("ids after `{after_id}`"), source))
    }

    /// The id of the last event recorded (0 when there is none).
    pub fn last_event_id(&self) -> Result<i64, StoreError> {
        self.connection()
            .query_row("SELECT COALESCE(MAX(id), 0) FROM events", [], |row| {
                row.get(0)
            })
            .map_err(|source| self.error("read the last event id", self.subject(), source))
    }

    /// The events of deployment `id` with an id above `after_id`, oldest first.
    pub fn events_for_deployment(&self, id: &str, after_id: i64) -> Result<Vec<Event>, StoreError> {
        self.query_rows(
            &format!(
                "SELECT {EVENT_COLUMNS} FROM events
                      WHERE deployment_id = ?1 AND id > ?2 ORDER BY id"
            ),
            params![id, after_id],
            event_from_row,
        )
        .map_err(|source| self.error("read events", deployment_subject(id), source))
    }

    pub(super) fn record_event_in(
        &self,
        connection: &Connection,
        new_event: NewEvent,
    ) -> Result<Event, StoreError> {
        let at = now_ms();
        let id = connection
            .query_row(
                "INSERT INTO events (at, app, environment, deployment_id, kind, message, data_json)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
                params![
                    at,
                    new_event.app,
                    new_event.environment,
                    new_event.deployment_id,
                    new_event.kind,
                    new_event.message,
                    new_event.data_json,
                ],
                |row| row.get(0),
            )
            .map_err(|source| {
                self.error(
                    "record an event",
                    format!("event `{}`", new_event.kind),
                    source,
                )
            })?;
        Ok(Event {
            id,
            at,
            app: new_event.app,
            environment: new_event.environment,
            deployment_id: new_event.deployment_id,
            kind: new_event.kind,
            message: new_event.message,
            data_json: new_event.data_json,
        })
    }
}

const EVENT_COLUMNS: &str = "id, at, app, environment, deployment_id, kind, message, data_json";

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    Ok(Event {
        id: row.get(0)?,
        at: row.get(1)?,
        app: row.get(2)?,
        environment: row.get(3)?,
        deployment_id: row.get(4)?,
        kind: row.get(5)?,
        message: row.get(6)?,
        data_json: row.get(7)?,
    })
}
