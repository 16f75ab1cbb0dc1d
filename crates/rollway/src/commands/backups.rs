//! `rollway backups [list [--remote]] | create | restore ID | verify [ID]`.

use crate::ExitStatus;
use crate::cli::{BackupsCommand, EnvArgs};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn run(
    command: Option<&BackupsCommand>,
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
        match command.unwrap_or(&BackupsCommand::List { remote: false }) {
            BackupsCommand::List { remote: true } => {
                return super::backups_remote::list(&client, &app, env, target.json, &printer)
                    .await;
            }
            BackupsCommand::Verify { id } => {
                return super::backups_remote::verify(
                    &client,
                    &app,
                    env,
                    id.as_deref(),
                    target.json,
                    &printer,
                )
                .await;
            }
            BackupsCommand::List { remote: false } => {
                let backups = match client.backups(&app, env).await {
                    Ok(backups) => backups,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&backups)?)?;
                    return Ok(ExitStatus::Success);
                }
                if backups.is_empty() {
                    printer.status("Backups", &format!("none yet for {app} in {env}"));
                    return Ok(ExitStatus::Success);
                }
                let mut out = format!(
                    "{:<28} {:<8} {:<9} {:<10} {:<24} database\n",
                    "id", "release", "reason", "size", "taken"
                );
                for backup in &backups {
                    out.push_str(&format!(
                        "{:<28} {:<8} {:<9} {:<10} {:<24} {}\n",
                        backup.id,
                        backup
                            .release
                            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
                        backup.reason,
                        backup.size,
                        agent::deploy::start::format_time(backup.created_at),
                        backup.target
                    ));
                }
                printer.data(&out)?;
            }
            BackupsCommand::Create => match client.create_backup(&app, env).await {
                Ok(backup) => {
                    if target.json {
                        printer.data(&serde_json::to_string_pretty(&backup)?)?;
                    }
                    printer.status(
                        "Backed up",
                        &format!(
                            "{} to `{}` ({} bytes, sha256 {})",
                            backup.target,
                            backup.id,
                            backup.size,
                            &backup.sha256[..12.min(backup.sha256.len())]
                        ),
                    );
                }
                Err(error) => return client_error(&printer, error),
            },
            BackupsCommand::Restore { id, yes } => {
                match confirm_restore(id, &app, env, *yes, &printer)? {
                    Confirmation::Yes => {}
                    Confirmation::No => return Ok(ExitStatus::Failure),
                    Confirmation::CannotAsk => return Ok(ExitStatus::Usage),
                }
                match client.restore_backup(&app, env, id).await {
                    Ok(restored) => {
                        if target.json {
                            printer.data(&serde_json::to_string_pretty(&restored)?)?;
                        }
                        for step in &restored.steps {
                            printer.status("Restore", step);
                        }
                    }
                    Err(error) => return client_error(&printer, error),
                }
            }
        }
        Ok(ExitStatus::Success)
    })
}

enum Confirmation {
    Yes,
    No,
    /// Stdin is not a terminal and `--yes` was not given.
    CannotAsk,
}

/// A restore replaces the live database: asked on the terminal, or `--yes`.
fn confirm_restore(
    id: &str,
    app: &str,
    env: &str,
    yes: bool,
    printer: &Printer,
) -> anyhow::Result<Confirmation> {
    use std::io::{BufRead as _, IsTerminal as _};
    if yes {
        return Ok(Confirmation::Yes);
    }
    if !std::io::stdin().is_terminal() {
        printer.error(&format!(
            "restoring `{id}` replaces the database of {app} in {env}, and there is no terminal to confirm it"
        ));
        printer.hint(&format!(
            "pass `--yes` to restore without asking: `rollway backups restore {id} --app {app} --env {env} --yes`"
        ));
        return Ok(Confirmation::CannotAsk);
    }
    printer.raw_stderr(&format!(
        "Restore backup `{id}` into the database of {app} in {env}? The live database is backed up first. [y/N] "
    ));
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(Confirmation::Yes)
    } else {
        printer.status("Cancelled", "nothing was restored");
        Ok(Confirmation::No)
    }
}
