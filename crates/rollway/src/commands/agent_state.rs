//! `rollway agent backup` and `rollway agent restore`: the agent's own state to and from an
//! S3-compatible remote. Run on the host (they read the state directory and the master key); the
//! work is `agent::backup::agent_state`'s.

use std::sync::Arc;

use agent::backup::agent_state;
use agent::backup::remote::Remote;
use agent::secrets::{Secret, master_key};

use crate::ExitStatus;
use crate::cli::AgentAction;
use crate::printer::Printer;

use agent_state::{ACCESS_KEY_VAR, SECRET_KEY_VAR};

/// The remote's location for `rollway agent --state-backup-schedule` (the same variables
/// `rollway agent backup` reads its flags' defaults from).
pub const REMOTE_VAR: &str = "ROLLWAY_BACKUP_REMOTE";
pub const ENDPOINT_VAR: &str = "ROLLWAY_BACKUP_ENDPOINT";
pub const REGION_VAR: &str = "ROLLWAY_BACKUP_REGION";

pub fn run(action: &AgentAction, printer: Printer) -> anyhow::Result<ExitStatus> {
    let args = match action {
        AgentAction::Backup(args) => args,
        AgentAction::Restore { state, .. } => state,
    };
    let state_dir = args.state.clone().unwrap_or_else(super::connect::state_dir);
    let remote = match remote(&args.remote, args.endpoint.as_deref(), &args.region) {
        Ok(remote) => remote,
        Err(problem) => {
            printer.error(&problem.0);
            printer.hint(&problem.1);
            return Ok(ExitStatus::Usage);
        }
    };
    let sources = master_key::KeySources::from_env(args.master_key.clone());
    let master = match master_key::load_existing(&sources, &state_dir) {
        Ok(loaded) => Arc::new(loaded.key),
        Err(error) => {
            printer.error(&agent::report::chain(&error));
            printer.hint("give the master key the state was sealed with: `--master-key FILE` or `ROLLWAY_MASTER_KEY`");
            return Ok(ExitStatus::Usage);
        }
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match action {
            AgentAction::Backup(_) => {
                match agent_state::backup(
                    &state_dir,
                    &master,
                    &remote,
                    agent::store::BackupReason::Manual,
                )
                .await
                {
                    Ok(snapshot) => {
                        if args.json {
                            printer.data(&serde_json::to_string_pretty(&serde_json::json!({
                                "id": snapshot.id,
                                "key": snapshot.key,
                                "size": snapshot.size,
                                "sha256": snapshot.sha256,
                            }))?)?;
                        }
                        printer.status(
                            "Backed up",
                            &format!(
                                "the agent's state `{}` to {} as `{}` ({} bytes before sealing, sha256 {})",
                                state_dir.display(),
                                remote.shown(),
                                snapshot.key,
                                snapshot.size,
                                &snapshot.sha256[..12.min(snapshot.sha256.len())]
                            ),
                        );
                        Ok(ExitStatus::Success)
                    }
                    Err(error) => {
                        printer.error(&agent::report::chain(&error));
                        Ok(ExitStatus::Failure)
                    }
                }
            }
            AgentAction::Restore { id, .. } => {
                match agent_state::restore(&state_dir, master, &remote, id.as_deref()).await {
                    Ok(header) => {
                        if args.json {
                            printer.data(&serde_json::to_string_pretty(&serde_json::json!({
                                "id": header.id,
                                "created_at": header.created_at,
                                "sha256": header.sha256,
                            }))?)?;
                        }
                        printer.status(
                            "Restored",
                            &format!(
                                "snapshot `{}` of {} into `{}`; start the agent on it with the same master key",
                                header.id,
                                agent::deploy::start::format_time(header.created_at),
                                state_dir.display()
                            ),
                        );
                        Ok(ExitStatus::Success)
                    }
                    Err(error) => {
                        printer.error(&agent::report::chain(&error));
                        Ok(ExitStatus::Failure)
                    }
                }
            }
        }
    })
}

/// The state backup of `rollway agent --state-backup-schedule SCHEDULE`: the remote from the
/// `ROLLWAY_BACKUP_*` variables; or (what is wrong, a hint).
pub fn state_backup(
    schedule: &str,
) -> Result<agent::backup::state_schedule::StateBackup, (String, String)> {
    let schedule = manifest::cron::CronSchedule::parse(schedule, None).map_err(|error| {
        (
            format!("`--state-backup-schedule` `{schedule}` is not a schedule: {error}"),
            "write `@daily`, `@hourly` or five fields: minute hour day month weekday (UTC)"
                .to_owned(),
        )
    })?;
    let var = |name: &str| std::env::var(name).ok().filter(|value| !value.is_empty());
    let location = var(REMOTE_VAR).ok_or_else(|| {
        (
            format!("`--state-backup-schedule` needs `{REMOTE_VAR}`: where the snapshots go"),
            format!("set `{REMOTE_VAR}=s3://BUCKET/PREFIX` (and `{ENDPOINT_VAR}` for a store other than AWS S3)"),
        )
    })?;
    let region = var(REGION_VAR).unwrap_or_else(|| "us-east-1".to_owned());
    let remote = remote(&location, var(ENDPOINT_VAR).as_deref(), &region)?;
    Ok(agent::backup::state_schedule::StateBackup { schedule, remote })
}

/// The remote at `location` (`s3://BUCKET/PREFIX`), `endpoint`, `region` with the credential
/// variables; or (what is wrong, a hint).
fn remote(
    location: &str,
    endpoint: Option<&str>,
    region: &str,
) -> Result<Remote, (String, String)> {
    let (bucket, prefix) = manifest::BackupRemote::parse_url(location).map_err(|reason| {
        (
            format!("`{location}` is not an S3 location: {reason}"),
            "write `s3://BUCKET/PREFIX` (`--remote` or `ROLLWAY_BACKUP_REMOTE`)".to_owned(),
        )
    })?;
    let credential = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|value| !value.is_empty())
            .map(Secret::new)
            .ok_or_else(|| {
                (
                    format!("`{name}` is not set: the remote's credentials come from the environment"),
                    format!("set `{ACCESS_KEY_VAR}` and `{SECRET_KEY_VAR}` (never pass credentials as arguments)"),
                )
            })
    };
    let access_key_id = credential(ACCESS_KEY_VAR)?;
    let secret_access_key = credential(SECRET_KEY_VAR)?;
    let config = manifest::BackupRemote {
        bucket,
        prefix,
        endpoint: endpoint
            .map(|endpoint| endpoint.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| manifest::BackupRemote::aws_endpoint(region)),
        region: region.to_owned(),
        access_key_id: ACCESS_KEY_VAR.to_owned(),
        secret_access_key: SECRET_KEY_VAR.to_owned(),
    };
    Remote::with_credentials(&config, &access_key_id, &secret_access_key).map_err(|error| {
        (
            agent::report::chain(&error),
            "accepted: `--endpoint https://HOST[:PORT]` (or `ROLLWAY_BACKUP_ENDPOINT`)".to_owned(),
        )
    })
}
