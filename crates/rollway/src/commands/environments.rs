//! `rollway env list | destroy NAME`: the environments of the app, previews with their base and
//! expiry, and destroying a preview (what `rollway destroy` does, through the same agent path).

use agent::deploy::start::format_time;

use crate::ExitStatus;
use crate::cli::{AppArgs, EnvCommand};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn run(command: &EnvCommand, target: &AppArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        match command {
            EnvCommand::List => {
                let views = match client.environments(&app).await {
                    Ok(views) => views,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&views)?)?;
                    return Ok(ExitStatus::Success);
                }
                let mut out = format!(
                    "{:<24} {:<8} {:<10} {:<10} {:<12} expires\n",
                    "environment", "release", "instances", "state", "base"
                );
                for view in &views {
                    let (base, expires) = match &view.preview {
                        Some(preview) => (preview.base.as_str(), format_time(preview.expires_at)),
                        None => ("-", "-".to_owned()),
                    };
                    out.push_str(&format!(
                        "{:<24} {:<8} {:<10} {:<10} {:<12} {}\n",
                        view.environment,
                        view.current_release
                            .map_or_else(|| "-".to_owned(), |number| number.to_string()),
                        view.instances,
                        if view.active { "active" } else { "destroyed" },
                        base,
                        expires
                    ));
                }
                printer.data(&out)?;
                Ok(ExitStatus::Success)
            }
            EnvCommand::Destroy { name } => {
                if !manifest::is_preview_name(name) {
                    printer.error(&format!("`{name}` is not a preview; `rollway env destroy` destroys previews (`preview-<slug>`)"));
                    printer.hint(&format!(
                        "destroy an environment of the manifest with `rollway destroy --env {name}` (admin)"
                    ));
                    return Ok(ExitStatus::Usage);
                }
                let view = match client.destroy_preview(&app, name).await {
                    Ok(view) => view,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&view)?)?;
                }
                printer.status(
                    "Destroyed",
                    &format!(
                        "{app} in {name}: instances stopped, routes removed; releases and events kept"
                    ),
                );
                Ok(ExitStatus::Success)
            }
        }
    })
}
