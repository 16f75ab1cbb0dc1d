//! `rollway maintenance on|off`, `rollway pause` and `rollway resume`: an environment's edge controls.
//!
//! The page file is read here, from the app folder, and sent whole; the agent never reads app files.

use std::path::Path;

use client::wire::{EdgeView, MaintenanceRequest};

use crate::ExitStatus;
use crate::cli::{EnvArgs, MaintenanceCommand, PauseArgs};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn maintenance(command: &MaintenanceCommand, printer: Printer) -> anyhow::Result<ExitStatus> {
    let target = match command {
        MaintenanceCommand::On { target, .. } | MaintenanceCommand::Off { target } => target,
    };
    let request = match command {
        MaintenanceCommand::On {
            message,
            page,
            allow,
            retry_after,
            ..
        } => {
            let page_html = match page {
                Some(path) => match read_page(path) {
                    Ok(page) => Some(page),
                    Err(reason) => {
                        printer.error(&reason);
                        printer.hint(&format!(
                            "give an HTML file of the app folder of at most {} KiB, such as `--page public/maintenance.html`",
                            proxy::MAX_MAINTENANCE_PAGE_BYTES / 1024
                        ));
                        return Ok(ExitStatus::Usage);
                    }
                },
                None => None,
            };
            Some(MaintenanceRequest {
                message: message.clone(),
                page_html,
                allow: allow.clone(),
                retry_after_s: retry_after.map(|duration| duration.as_std().as_secs().max(1)),
            })
        }
        MaintenanceCommand::Off { .. } => None,
    };
    call(target, printer, |client, app, env| async move {
        match &request {
            Some(request) => client.set_maintenance(&app, &env, request).await,
            None => client.clear_maintenance(&app, &env).await,
        }
    })
}

pub fn pause(args: &PauseArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let max_ms = u64::try_from(args.max.as_std().as_millis()).unwrap_or(u64::MAX);
    call(&args.target, printer, |client, app, env| async move {
        client.pause(&app, &env, max_ms).await
    })
}

pub fn resume(target: &EnvArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    call(target, printer, |client, app, env| async move {
        client.resume(&app, &env).await
    })
}

/// Reads the page file: UTF-8 HTML within the proxy's size bound.
fn read_page(path: &Path) -> Result<String, String> {
    let metadata = std::fs::metadata(path)
        .map_err(|error| format!("cannot read the page `{}`: {error}", path.display()))?;
    let limit = proxy::MAX_MAINTENANCE_PAGE_BYTES;
    if metadata.len() > limit as u64 {
        return Err(format!(
            "the page `{}` is {} bytes, more than the {limit} accepted",
            path.display(),
            metadata.len()
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|error| format!("cannot read the page `{}`: {error}", path.display()))?;
    String::from_utf8(bytes).map_err(|_| format!("the page `{}` is not UTF-8", path.display()))
}

fn call<F, Fut>(target: &EnvArgs, printer: Printer, call: F) -> anyhow::Result<ExitStatus>
where
    F: FnOnce(client::Client, String, String) -> Fut,
    Fut: std::future::Future<Output = Result<EdgeView, client::ClientError>>,
{
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let env = target.env.clone();
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let view = match call(client, app.clone(), env.clone()).await {
            Ok(view) => view,
            Err(error) => return client_error(&printer, error),
        };
        if target.json {
            printer.data(&serde_json::to_string_pretty(&view)?)?;
            return Ok(ExitStatus::Success);
        }
        for line in describe(&view) {
            printer.status("Edge", &format!("{app} in {env}: {line}"));
        }
        if view == EdgeView::default() {
            printer.status("Edge", &format!("{app} in {env}: serving normally"));
        }
        Ok(ExitStatus::Success)
    })
}

/// One line per control that is on, as `status` prints them too.
pub fn describe(view: &EdgeView) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(maintenance) = &view.maintenance {
        let page = if maintenance.custom_page {
            "the app's page".to_owned()
        } else {
            match &maintenance.message {
                Some(message) => format!("the default page: {message:?}"),
                None => "the default page".to_owned(),
            }
        };
        let allow = if maintenance.allow.is_empty() {
            String::new()
        } else {
            format!(", open to {}", maintenance.allow.join(", "))
        };
        lines.push(format!(
            "in maintenance since {} by {} ({page}{allow})",
            agent::deploy::start::format_time(maintenance.since),
            maintenance.by
        ));
    }
    if let Some(pause) = &view.pause {
        lines.push(format!(
            "paused since {}, resumes by itself at {}",
            agent::deploy::start::format_time(pause.since),
            agent::deploy::start::format_time(pause.until)
        ));
    }
    lines
}
