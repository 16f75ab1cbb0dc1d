//! The agent's own state backed up on a schedule (`rollway agent --state-backup-schedule`): the
//! same snapshot as `rollway agent backup` ([`super::agent_state`]), taken by the running agent
//! at each tick, with its outcome an event (`agent.backed_up`, or `agent.backup_failed`, which
//! alerts every webhook of the apps on the agent, like the proxy's events).
//!
//! It does not choose the remote or read credentials: the binary builds the [`Remote`] from the
//! `ROLLWAY_BACKUP_*` variables and hands it over in [`StateBackup`].

use std::sync::Arc;
use std::time::Duration;

use manifest::cron::CronSchedule;

use super::agent_state::{self, Snapshot, StateError};
use super::remote::Remote;
use crate::engine::{Engine, now_ms};
use crate::store::{BackupReason, NewEvent};

/// Attempts per scheduled snapshot, and the first backoff (doubled after each failure).
pub const ATTEMPTS: u32 = 3;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Where and when the running agent backs up its own state.
#[derive(Debug, Clone)]
pub struct StateBackup {
    pub schedule: CronSchedule,
    pub remote: Remote,
}

/// The schedule's task; one for the agent's life. When the newest snapshot on the remote is older
/// than the schedule's last tick (the agent was down at that tick, or this is its first start), a
/// snapshot is taken at once; then one per tick. A tick that falls while a snapshot is still being
/// taken is skipped (the next one is after it ends).
pub async fn run(engine: Arc<Engine>, config: StateBackup) {
    let mut after = now_ms();
    let missed = match config.schedule.last_at_or_before(after) {
        None => false,
        Some(due) => match newest_snapshot_ms(&config.remote).await {
            Ok(newest) => newest.is_none_or(|newest| newest < due),
            // Unreachable now: the attempt at once says so (an event, an alert).
            Err(_) => true,
        },
    };
    if missed {
        take(&engine, &config).await;
        after = now_ms();
    }
    tracing::info!(message = "Backups of the agent's state are scheduled.", schedule = %config.schedule, remote = %config.remote.shown(), caught_up = missed);
    loop {
        let Some(next) = config.schedule.next_after(after) else {
            return;
        };
        let wait = Duration::from_millis(u64::try_from(next - now_ms()).unwrap_or(0));
        tokio::select! {
            () = engine.shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        take(&engine, &config).await;
        after = now_ms().max(next);
    }
}

/// One scheduled snapshot with retries; its outcome is an event and a log line.
async fn take(engine: &Arc<Engine>, config: &StateBackup) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let outcome: Result<Snapshot, StateError> = loop {
        match agent_state::backup(
            &engine.paths.state_dir,
            &engine.master_key,
            &config.remote,
            BackupReason::Schedule,
        )
        .await
        {
            Ok(snapshot) => break Ok(snapshot),
            Err(error) if attempt >= ATTEMPTS => break Err(error),
            Err(error) => {
                tracing::warn!(message = "The agent's state backup failed; retrying.", attempt, error = %crate::report::chain(&error));
                tokio::time::sleep(backoff).await;
                backoff *= 2;
                attempt += 1;
            }
        }
    };
    let remote = config.remote.shown();
    let event = match outcome {
        Ok(snapshot) => {
            tracing::info!(message = "The agent's state is backed up.", snapshot = %snapshot.id, key = %snapshot.key);
            NewEvent {
                app: None,
                environment: None,
                deployment_id: None,
                kind: "agent.backed_up".to_owned(),
                message: format!(
                    "the agent's state was backed up to {remote} as `{}` ({} bytes before sealing, sha256 {}) (schedule {})",
                    snapshot.key,
                    snapshot.size,
                    &snapshot.sha256[..12.min(snapshot.sha256.len())],
                    config.schedule
                ),
                data_json: serde_json::json!({
                    "id": snapshot.id,
                    "key": snapshot.key,
                    "size": snapshot.size,
                    "sha256": snapshot.sha256,
                })
                .to_string(),
            }
        }
        Err(error) => {
            let error = crate::report::chain(&error);
            tracing::error!(message = "The agent's state was not backed up.", attempts = attempt, %error);
            NewEvent {
                app: None,
                environment: None,
                deployment_id: None,
                kind: "agent.backup_failed".to_owned(),
                message: format!(
                    "the agent's state was not backed up to {remote} after {attempt} attempts (schedule {}): {error}",
                    config.schedule
                ),
                data_json: "{}".to_owned(),
            }
        }
    };
    engine.record(event);
}

/// The creation time of the newest snapshot on the remote (snapshot ids are `s-MILLIS-SUFFIX`).
async fn newest_snapshot_ms(remote: &Remote) -> Result<Option<i64>, StateError> {
    Ok(agent_state::list(remote)
        .await?
        .iter()
        .filter_map(|object| super::remote::backup_id(&object.key))
        .filter_map(snapshot_ms)
        .max())
}

fn snapshot_ms(id: &str) -> Option<i64> {
    id.strip_prefix("s-")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_snapshot_id_gives_its_time() {
        assert_eq!(
            super::snapshot_ms("s-1795403700123-ab12"),
            Some(1_795_403_700_123)
        );
        assert_eq!(super::snapshot_ms("b-1795403700123-ab12"), None);
        assert_eq!(super::snapshot_ms("s-x-ab12"), None);
    }
}
