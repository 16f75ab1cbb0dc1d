//! Signals to running deployments (promote, abort, approve), written when the API accepts them
//! and marked handled in the same transaction as the transition they cause, so a signal survives
//! an agent restart and is acted on exactly once.

use rusqlite::{OptionalExtension, TransactionBehavior, params};

use client::wire::DeploymentState;

use super::deployments::deployment_subject;
use super::{Deployment, Event, NewEvent, Store, StoreError, now_ms};

/// What a person tells a running deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    Promote { by: String },
    Abort { by: String },
    Approve { by: String },
}

impl Signal {
    /// The name stored in `signals.kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            Signal::Promote { .. } => "promote",
            Signal::Abort { .. } => "abort",
            Signal::Approve { .. } => "approve",
        }
    }

    pub fn by(&self) -> &str {
        match self {
            Signal::Promote { by } | Signal::Abort { by } | Signal::Approve { by } => by,
        }
    }

    fn from_row(kind: &str, by: String) -> Option<Signal> {
        match kind {
            "promote" => Some(Signal::Promote { by }),
            "abort" => Some(Signal::Abort { by }),
            "approve" => Some(Signal::Approve { by }),
            _ => None,
        }
    }
}

/// A signal not yet handled, with its row id (to mark it handled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSignal {
    pub id: i64,
    pub signal: Signal,
}

/// A move of a deployment, written at once with what caused and reports it.
pub struct Advance<'a> {
    pub id: &'a str,
    pub from: DeploymentState,
    pub to: DeploymentState,
    pub reason: Option<&'a str>,
    pub data_json: &'a str,
    /// The event telling of the move (none when only the canary step changes).
    pub event: Option<NewEvent>,
    /// The signal the move acts on, marked handled with it.
    pub handled: Option<i64>,
}

impl Store {
    /// Records a signal for deployment `id`; the executor acts on it from the store.
    pub fn add_signal(&self, id: &str, signal: &Signal) -> Result<i64, StoreError> {
        let connection = self.connection();
        connection
            .execute(
                "INSERT INTO signals (deployment_id, kind, by, at) VALUES (?1, ?2, ?3, ?4)",
                params![id, signal.kind(), signal.by(), now_ms()],
            )
            .map_err(|source| self.error("record a signal", deployment_subject(id), source))?;
        Ok(connection.last_insert_rowid())
    }

    /// The signals of deployment `id` not handled yet, oldest first.
    pub fn pending_signals(&self, id: &str) -> Result<Vec<PendingSignal>, StoreError> {
        let rows: Vec<(i64, String, String)> = self
            .query_rows(
                "SELECT id, kind, by FROM signals
                  WHERE deployment_id = ?1 AND handled_at IS NULL ORDER BY id",
                params![id],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
            )
            .map_err(|source| self.error("read signals", deployment_subject(id), source))?;
        Ok(rows
            .into_iter()
            .filter_map(|(row_id, kind, by)| {
                Signal::from_row(&kind, by).map(|signal| PendingSignal { id: row_id, signal })
            })
            .collect())
    }

    /// Marks signal `signal_id` handled (acted on, or not applying where the deployment is).
    pub fn handle_signal(&self, signal_id: i64) -> Result<(), StoreError> {
        self.connection()
            .execute(
                "UPDATE signals SET handled_at = ?2 WHERE id = ?1 AND handled_at IS NULL",
                params![signal_id, now_ms()],
            )
            .map_err(|source| {
                self.error(
                    "mark a signal handled",
                    format!("signal {signal_id}"),
                    source,
                )
            })?;
        Ok(())
    }

    /// The pending signals of `id`, marked handled.
    pub fn take_signals(&self, id: &str) -> Result<Vec<Signal>, StoreError> {
        let pending = self.pending_signals(id)?;
        for signal in &pending {
            self.handle_signal(signal.id)?;
        }
        Ok(pending.into_iter().map(|pending| pending.signal).collect())
    }

    /// Moves a deployment (compare-and-set on its state), writes its data, records the event and
    /// marks the signal that caused it handled, in one transaction: a kill -9 keeps all or none.
    pub fn advance(&self, advance: Advance<'_>) -> Result<(Deployment, Option<Event>), StoreError> {
        const OPERATION: &str = "move a deployment";
        let id = advance.id;
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        let deployment = self.transition_in(
            &transaction,
            id,
            advance.from,
            advance.to,
            advance.reason,
            Some(advance.data_json),
        )?;
        let event = advance
            .event
            .map(|event| self.record_event_in(&transaction, event))
            .transpose()?;
        if let Some(signal_id) = advance.handled {
            transaction
                .execute(
                    "UPDATE signals SET handled_at = ?2 WHERE id = ?1",
                    params![signal_id, now_ms()],
                )
                .optional()
                .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        }
        transaction
            .commit()
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        Ok((deployment, event))
    }
}
