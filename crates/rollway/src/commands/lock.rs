//! `rollway lock [status] | release`: the deploy lock of an app in an environment.

use crate::ExitStatus;
use crate::cli::{EnvArgs, LockCommand};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn run(
    command: Option<&LockCommand>,
    target: &EnvArgs,
    printer: Printer,
) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let env = &target.env;
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let release = matches!(command, Some(LockCommand::Release));
        let lock = if release {
            client.release_lock(&app, env).await
        } else {
            client.lock(&app, env).await
        };
        let lock = match lock {
            Ok(lock) => lock,
            Err(error) => return client_error(&printer, error),
        };
        if target.json {
            printer.data(&serde_json::to_string_pretty(&lock)?)?;
            return Ok(ExitStatus::Success);
        }
        let format_time = agent::deploy::start::format_time;
        match (lock, release) {
            (None, _) => printer.status(
                "Unlocked",
                &format!("no deploy of {app} to {env} holds the lock"),
            ),
            (Some(lock), false) => printer.data(&format!(
                "held by {} for deployment {}\nsince     {}\nheartbeat {}\nexpires   {}",
                lock.owner,
                lock.deployment_id,
                format_time(lock.acquired_at),
                format_time(lock.heartbeat_at),
                format_time(lock.expires_at)
            ))?,
            (Some(lock), true) => printer.status(
                "Released",
                &format!(
                    "the lock held by {} since {} (deployment {})",
                    lock.owner,
                    format_time(lock.acquired_at),
                    lock.deployment_id
                ),
            ),
        }
        Ok(ExitStatus::Success)
    })
}
