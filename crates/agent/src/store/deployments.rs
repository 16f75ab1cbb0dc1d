//! Deployments: their rows, and state written by compare-and-set.

use rusqlite::{OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use client::wire::{DeploymentId, DeploymentKind, DeploymentState, ReleaseNumber, Strategy};

use super::releases::release_subject;
use super::{
    Store, StoreError, app_subject, now_ms, optional_release_number, parsed, release_number,
};

/// A deployment: the persisted state of moving an (app, environment) to `to_release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployment {
    /// `d-<unix ms, 13 digits>-<16 hex>`: unique, and sorts by creation time.
    pub id: DeploymentId,
    pub app: String,
    pub environment: String,
    /// Rollback is a deployment to an earlier release: same path, different kind (the schema
    /// refuses any other kind).
    pub kind: DeploymentKind,
    pub from_release: Option<ReleaseNumber>,
    pub to_release: ReleaseNumber,
    pub strategy: Strategy,
    /// The state machine's state. The store compares it, never interprets it, except for
    /// `DeploymentState::is_terminal`.
    pub state: DeploymentState,
    /// Why the deployment is in its state (kept until a later transition gives a new one).
    pub reason: Option<String>,
    /// Executor-private JSON (for example which instances were started).
    pub data_json: String,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// What a caller gives to create a deployment; the store adds the id, the times and the
/// state `INITIAL_STATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDeployment {
    pub app: String,
    pub environment: String,
    pub kind: DeploymentKind,
    pub from_release: Option<ReleaseNumber>,
    pub to_release: ReleaseNumber,
    pub strategy: Strategy,
    pub data_json: String,
    pub created_by: String,
}

/// The state every deployment is created in.
pub const INITIAL_STATE: DeploymentState = DeploymentState::INITIAL;

impl Store {
    /// Creates a deployment with a new id, in `INITIAL_STATE`. `to_release` must exist.
    pub fn create_deployment(
        &self,
        new_deployment: NewDeployment,
    ) -> Result<Deployment, StoreError> {
        let created_at = now_ms();
        let id = new_deployment_id(created_at);
        let deployment = Deployment {
            id,
            app: new_deployment.app,
            environment: new_deployment.environment,
            kind: new_deployment.kind,
            from_release: new_deployment.from_release,
            to_release: new_deployment.to_release,
            strategy: new_deployment.strategy,
            state: INITIAL_STATE,
            reason: None,
            data_json: new_deployment.data_json,
            created_by: new_deployment.created_by,
            created_at,
            updated_at: created_at,
        };
        self.connection()
            .execute(
                &format!(
                    "INSERT INTO deployments ({DEPLOYMENT_COLUMNS})
                          VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
                ),
                params![
                    deployment.id.as_str(),
                    deployment.app,
                    deployment.environment,
                    deployment.kind.as_str(),
                    deployment.from_release.map(ReleaseNumber::get),
                    deployment.to_release.get(),
                    deployment.strategy.as_str(),
                    deployment.state.as_str(),
                    deployment.reason,
                    deployment.data_json,
                    deployment.created_by,
                    deployment.created_at,
                    deployment.updated_at,
                ],
            )
            .map_err(|source| {
                self.error(
                    "create a deployment",
                    release_subject(
                        &deployment.app,
                        &deployment.environment,
                        deployment.to_release,
                    ),
                    source,
                )
            })?;
        Ok(deployment)
    }

    /// Moves deployment `id` from `expected_state` to `new_state`, atomically: if another writer
    /// moved it first, nothing is written and the error says which state it is in.
    ///
    /// This is the write that comes before a transition's side effects. `reason` and
    /// `data_json` replace the stored ones when given and keep them when `None`.
    pub fn transition(
        &self,
        id: &str,
        expected_state: DeploymentState,
        new_state: DeploymentState,
        reason: Option<&str>,
        data_json: Option<&str>,
    ) -> Result<Deployment, StoreError> {
        let mut connection = self.connection();
        let transaction = connection
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        let deployment = self.transition_in(
            &transaction,
            id,
            expected_state,
            new_state,
            reason,
            data_json,
        )?;
        transaction
            .commit()
            .map_err(|source| self.error("move a deployment", deployment_subject(id), source))?;
        Ok(deployment)
    }

    pub fn deployment(&self, id: &str) -> Result<Option<Deployment>, StoreError> {
        self.connection()
            .query_row(
                &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE id = ?1"),
                params![id],
                deployment_from_row,
            )
            .optional()
            .map_err(|source| self.error("read a deployment", deployment_subject(id), source))
    }

    /// The last `limit` deployments of (app, environment), newest first.
    pub fn deployments(
        &self,
        app: &str,
        environment: &str,
        limit: usize,
    ) -> Result<Vec<Deployment>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.query_rows(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                      WHERE app = ?1 AND environment = ?2
                      ORDER BY rowid DESC LIMIT ?3"
            ),
            params![app, environment, limit],
            deployment_from_row,
        )
        .map_err(|source| self.error("list deployments", app_subject(app, environment), source))
    }

    /// Every deployment not in a terminal state, oldest first: those a restarted agent must
    /// finish or undo.
    pub fn unfinished_deployments(&self) -> Result<Vec<Deployment>, StoreError> {
        let terminal: Vec<&str> = DeploymentState::ALL
            .into_iter()
            .filter(|state| state.is_terminal())
            .map(DeploymentState::as_str)
            .collect();
        let terminal_json = serde_json::Value::from(terminal).to_string();
        self.query_rows(
            &format!(
                "SELECT {DEPLOYMENT_COLUMNS} FROM deployments
                      WHERE state NOT IN (SELECT value FROM json_each(?1))
                      ORDER BY rowid"
            ),
            params![terminal_json],
            deployment_from_row,
        )
        .map_err(|source| self.error("list unfinished deployments", self.subject(), source))
    }

    pub(super) fn transition_in(
        &self,
        transaction: &rusqlite::Transaction<'_>,
        id: &str,
        expected_state: DeploymentState,
        new_state: DeploymentState,
        reason: Option<&str>,
        data_json: Option<&str>,
    ) -> Result<Deployment, StoreError> {
        const OPERATION: &str = "move a deployment";
        let updated = transaction
            .query_row(
                &format!(
                    "UPDATE deployments
                          SET state = ?3, reason = COALESCE(?4, reason),
                              data_json = COALESCE(?5, data_json), updated_at = ?6
                          WHERE id = ?1 AND state = ?2
                          RETURNING {DEPLOYMENT_COLUMNS}"
                ),
                params![
                    id,
                    expected_state.as_str(),
                    new_state.as_str(),
                    reason,
                    data_json,
                    now_ms()
                ],
                deployment_from_row,
            )
            .optional()
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        if let Some(deployment) = updated {
            return Ok(deployment);
        }
        let actual: Option<DeploymentState> = transaction
            .query_row(
                "SELECT state FROM deployments WHERE id = ?1",
                params![id],
                |row| parsed(row, 0),
            )
            .optional()
            .map_err(|source| self.error(OPERATION, deployment_subject(id), source))?;
        Err(match actual {
            Some(actual) => StoreError::StateConflict {
                id: id.to_owned(),
                expected: expected_state,
                actual,
                new: new_state,
            },
            None => StoreError::DeploymentNotFound { id: id.to_owned() },
        })
    }
}

pub(super) const DEPLOYMENT_COLUMNS: &str = "id, app, environment, kind, from_release, to_release, \
                                  strategy, state, reason, data_json, created_by, created_at, \
                                  updated_at";

fn deployment_from_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        id: DeploymentId::new(row.get::<_, String>(0)?),
        app: row.get(1)?,
        environment: row.get(2)?,
        kind: parsed(row, 3)?,
        from_release: optional_release_number(row, 4)?,
        to_release: release_number(row, 5)?,
        strategy: parsed(row, 6)?,
        state: parsed(row, 7)?,
        reason: row.get(8)?,
        data_json: row.get(9)?,
        created_by: row.get(10)?,
        created_at: row.get(11)?,
        updated_at: row.get(12)?,
    })
}

/// `d-<unix ms, zero-padded to 13 digits>-<8 random bytes in hex>`: sorts by creation time and
/// is unique without coordination. Should the OS fail to give random bytes, the suffix falls back
/// to a process-wide counter, still unique within this agent.
pub(super) fn new_deployment_id(now_ms: i64) -> DeploymentId {
    let mut suffix = [0u8; 8];
    if getrandom::fill(&mut suffix).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        suffix = count.to_be_bytes();
    }
    DeploymentId::new(format!("d-{now_ms:013}-{}", hex::encode(suffix)))
}

pub(super) fn deployment_subject(id: &str) -> String {
    format!("deployment `{id}`")
}
