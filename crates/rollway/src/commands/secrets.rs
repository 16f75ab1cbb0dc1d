//! `rollway secrets set|list|unset`: values go from stdin to the agent, never through argv or output.

use std::io::Read as _;

use client::wire::SecretValue;

use crate::ExitStatus;
use crate::cli::SecretsCommand;
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn run(command: &SecretsCommand, printer: Printer) -> anyhow::Result<ExitStatus> {
    let target = match command {
        SecretsCommand::Set { target, .. }
        | SecretsCommand::List { target }
        | SecretsCommand::Unset { target, .. } => target,
    };
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let env = &target.env;
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    // Read stdin before anything else so a prompt or a pipe is consumed once.
    let value = match command {
        SecretsCommand::Set { name, .. } => {
            if !manifest::interpolate::is_env_name(name) {
                printer.error(&format!("`{name}` is not a valid secret name"));
                printer.hint("secrets reach the app as variables: letters, digits and `_`, not starting with a digit");
                return Ok(ExitStatus::Usage);
            }
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                printer.status(
                    "Reading",
                    &format!("the value of `{name}` from stdin (end with Ctrl-D)"),
                );
            }
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value)?;
            // One trailing newline comes from `echo` or the terminal, not from the secret.
            let trimmed = value
                .strip_suffix('\n')
                .map(|rest| rest.strip_suffix('\r').unwrap_or(rest))
                .unwrap_or(&value)
                .to_owned();
            if trimmed.is_empty() {
                printer.error(&format!("no value for `{name}` on stdin"));
                printer.hint(&format!(
                    "pipe it in: `printf %s \"$VALUE\" | rollway secrets set {name} --env {env}`"
                ));
                return Ok(ExitStatus::Usage);
            }
            Some(SecretValue { value: trimmed })
        }
        _ => None,
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match command {
            SecretsCommand::Set { name, .. } => {
                let Some(value) = value else {
                    return Ok(ExitStatus::Usage);
                };
                match client.set_secret(&app, env, name, &value).await {
                    Ok(view) => printer.status(
                        "Set",
                        &format!(
                            "secret `{}` for {app} in {env} (version {})",
                            view.name, view.version
                        ),
                    ),
                    Err(error) => return client_error(&printer, error),
                }
            }
            SecretsCommand::List { .. } => {
                let secrets = match client.secrets(&app, env).await {
                    Ok(secrets) => secrets,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&secrets)?)?;
                } else {
                    let mut out = format!("{:<28} {:<8} {:<12} set at\n", "name", "version", "by");
                    for secret in &secrets {
                        out.push_str(&format!(
                            "{:<28} {:<8} {:<12} {}\n",
                            secret.name,
                            secret.version,
                            secret.created_by,
                            agent::deploy::start::format_time(secret.created_at)
                        ));
                    }
                    printer.data(&out)?;
                }
            }
            SecretsCommand::Unset { name, .. } => {
                if let Err(error) = client.unset_secret(&app, env, name).await {
                    return client_error(&printer, error);
                }
                printer.status("Unset", &format!("secret `{name}` for {app} in {env}"));
            }
        }
        Ok(ExitStatus::Success)
    })
}
