//! `rollway rollback [--to N]`: an atomic switch back when the earlier release is still warm.

use client::wire::{DeploymentState, RollbackRequest};

use crate::ExitStatus;
use crate::cli::RollbackArgs;
use crate::commands::{app_name, client_error, connect, deploy};
use crate::printer::Printer;

pub fn run(args: &RollbackArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let target = &args.target;
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let started = tokio::time::Instant::now();
        let deployment = match client
            .rollback(&app, &target.env, &RollbackRequest { to: args.to })
            .await
        {
            Ok(deployment) => deployment,
            Err(error) => return client_error(&printer, error),
        };
        printer.status(
            "Rolling back",
            &format!(
                "{app} in {} to release {} (deployment {})",
                target.env, deployment.to_release, deployment.id
            ),
        );
        if args.detach {
            return deploy::finish_json(&printer, target.json, &deployment, ExitStatus::Success);
        }
        deploy::follow(&client, &printer, &deployment, started).await?;
        let last = match client.deployment(&deployment.id).await {
            Ok(last) => last,
            Err(error) => return client_error(&printer, error),
        };
        let status = if last.state == DeploymentState::Succeeded {
            printer.status(
                "Finished",
                &format!(
                    "release {} is live again in {:.1}s",
                    last.to_release,
                    started.elapsed().as_secs_f64()
                ),
            );
            ExitStatus::Success
        } else {
            printer.error(&format!(
                "the rollback ended {}: {}",
                last.state,
                last.reason.as_deref().unwrap_or("no reason recorded")
            ));
            ExitStatus::Failure
        };
        deploy::finish_json(&printer, target.json, &last, status)
    })
}
