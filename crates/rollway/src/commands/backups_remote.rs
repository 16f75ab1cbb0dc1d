//! `rollway backups list --remote` and `rollway backups verify [ID]`: the sealed copies off the
//! host, and restore drills. Rendering only; the agent does the work.

use client::http::Client;

use crate::ExitStatus;
use crate::commands::client_error;
use crate::printer::Printer;

pub async fn list(
    client: &Client,
    app: &str,
    env: &str,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let backups = match client.remote_backups(app, env).await {
        Ok(backups) => backups,
        Err(error) => return client_error(printer, error),
    };
    if json {
        printer.data(&serde_json::to_string_pretty(&backups)?)?;
        return Ok(ExitStatus::Success);
    }
    if backups.is_empty() {
        printer.status("Backups", &format!("none on the remote for {app} in {env}"));
        return Ok(ExitStatus::Success);
    }
    let mut out = format!(
        "{:<28} {:<10} {:<26} {:<6} object\n",
        "id", "size", "uploaded", "local"
    );
    for backup in &backups {
        out.push_str(&format!(
            "{:<28} {:<10} {:<26} {:<6} {}\n",
            backup.id,
            backup.size,
            backup.last_modified,
            if backup.local { "yes" } else { "no" },
            backup.key
        ));
    }
    printer.data(&out)?;
    Ok(ExitStatus::Success)
}

pub async fn verify(
    client: &Client,
    app: &str,
    env: &str,
    id: Option<&str>,
    json: bool,
    printer: &Printer,
) -> anyhow::Result<ExitStatus> {
    let drill = match client.verify_backup(app, env, id).await {
        Ok(drill) => drill,
        Err(error) => return client_error(printer, error),
    };
    if json {
        printer.data(&serde_json::to_string_pretty(&drill)?)?;
    }
    for check in &drill.checks {
        printer.status("Verify", check);
    }
    if drill.passed {
        printer.status("Verified", &format!("backup `{}` restores", drill.backup));
        Ok(ExitStatus::Success)
    } else {
        printer.error(&format!(
            "backup `{}` failed its restore drill",
            drill.backup
        ));
        Ok(ExitStatus::Failure)
    }
}
