//! `rollway promote`, `abort` and `approve`: telling a running deployment to move on or stop.

use crate::ExitStatus;
use crate::cli::{AgentArgs, EnvArgs};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

/// Signals the deployment in progress for the app and environment.
pub fn run_current(target: &EnvArgs, verb: &str, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    let env = target.env.clone();
    let id = tokio::runtime::Runtime::new()?.block_on(async { client.status(&app, &env).await });
    let id = match id {
        Ok(status) => match status
            .deployment
            .filter(|deployment| !deployment.is_finished())
        {
            Some(deployment) => deployment.id,
            None => {
                printer.error(&format!("no deployment of {app} to {env} is running"));
                return Ok(ExitStatus::Usage);
            }
        },
        Err(error) => return client_error(&printer, error),
    };
    run(&target.agent, &id, verb, printer)
}

pub fn run(
    agent: &AgentArgs,
    id: &str,
    verb: &str,
    printer: Printer,
) -> anyhow::Result<ExitStatus> {
    let Some(client) = connect::client_or_report(agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match client.signal(id, verb).await {
            Ok(deployment) => {
                let done = match verb {
                    "promote" => "Promoted",
                    "abort" => "Aborting",
                    _ => "Approved",
                };
                printer.status(
                    done,
                    &format!(
                        "deployment {} ({} → release {})",
                        deployment.id, deployment.app, deployment.to_release
                    ),
                );
                Ok(ExitStatus::Success)
            }
            Err(error) => client_error(&printer, error),
        }
    })
}
