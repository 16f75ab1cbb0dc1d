//! `rollway check`: validate the manifest, print the parity report and what each environment
//! requires before it can be deployed, and warn about what is valid but will bite (a route
//! answering every host, an alerts webhook whose secret is not set).

use std::fmt::Write as _;

use anyhow::Context;
use manifest::{LoadError, Manifest, ParityReport, ResolvedManifest};
use serde_json::json;

use crate::ExitStatus;
use crate::cli::CheckArgs;
use crate::printer::Printer;

pub fn run(args: &CheckArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let path_text = args.file.display().to_string();
    let manifest = match manifest::load(&args.file) {
        Ok(manifest) => manifest,
        Err(LoadError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            if args.json {
                print_json_errors(
                    &printer,
                    &path_text,
                    &[json!({ "file": path_text, "message": "file not found" })],
                )?;
            }
            printer.error(&format!("no `{path_text}` here"));
            printer.hint("run `rollway init` to write one for this folder, or pass `--file PATH`");
            return Ok(ExitStatus::Usage);
        }
        Err(LoadError::Read { path, source }) => {
            return Err(source).with_context(|| format!("cannot read `{path}`"));
        }
        Err(LoadError::Invalid(diagnostics)) => {
            if args.json {
                let errors: Vec<_> = diagnostics
                    .located()
                    .into_iter()
                    .map(|located| serde_json::to_value(located).unwrap_or_default())
                    .collect();
                print_json_errors(&printer, &path_text, &errors)?;
            }
            printer.raw_stderr(&diagnostics.render(printer.color()));
            return Ok(ExitStatus::Usage);
        }
    };

    let selected: Vec<ResolvedManifest> = match &args.env {
        Some(name) => match manifest.resolve(name) {
            Ok(resolved) => vec![resolved],
            Err(unknown) => {
                if args.json {
                    print_json_errors(
                        &printer,
                        &path_text,
                        &[json!({ "file": path_text, "message": unknown.to_string() })],
                    )?;
                }
                printer.error(&unknown.to_string());
                if let Some(suggestion) = &unknown.suggestion {
                    printer.hint(&format!("did you mean `--env {suggestion}`?"));
                }
                return Ok(ExitStatus::Usage);
            }
        },
        None if manifest.environments.is_empty() => Vec::new(),
        None => manifest.resolve_all(),
    };
    let parity = parity_for(&manifest, args.env.as_deref());
    let missing = match &args.env {
        Some(env) => missing_on_agent(args, &manifest.shared.app.name, env, &selected),
        None => Verified::NotAsked,
    };

    if args.json {
        let environments: Vec<_> = selected
            .iter()
            .map(|resolved| {
                json!({
                    "name": resolved.environment,
                    "required": resolved.required_config(),
                    "manifest": resolved,
                })
            })
            .collect();
        let out = json!({
            "ok": true,
            "file": path_text,
            "app": manifest.shared.app.name,
            "environments": environments,
            "parity": parity,
        });
        printer.data(&serde_json::to_string_pretty(&out)?)?;
    } else {
        printer.data(&render_text(&manifest, &selected, &parity))?;
    }
    let warned: Vec<ResolvedManifest> = if selected.is_empty() {
        manifest.resolve("development").into_iter().collect()
    } else {
        selected.clone()
    };
    for resolved in &warned {
        for warning in resolved.warnings(&manifest.shared.app.name) {
            printer.warning(&warning.to_string());
        }
    }
    if let Verified::Missing {
        alerts_off: Some(warning),
        ..
    } = &missing
    {
        printer.warning(&warning.to_string());
    }
    match &missing {
        Verified::Missing { env, names, .. } if !names.is_empty() => {
            printer.error(&format!("missing for {env}: {}", names.join(", ")));
            printer.hint(&format!("set each with `rollway secrets set NAME --env {env}` (the value is read from stdin)"));
            return Ok(ExitStatus::Usage);
        }
        Verified::Unreachable(reason) => {
            printer.warning(&format!("required secrets not verified: {reason}"))
        }
        _ => {}
    }
    let scope = match &args.env {
        Some(name) => format!(" for `{name}`"),
        None => String::new(),
    };
    printer.status("Checked", &format!("{path_text}{scope}: no problems found"));
    Ok(ExitStatus::Success)
}

/// With `--env E`, E's column comes first so it reads as "E against the others".
fn parity_for(manifest: &Manifest, first: Option<&str>) -> ParityReport {
    let mut all = manifest.resolve_all();
    if let Some(first) = first
        && let Some(idx) = all
            .iter()
            .position(|resolved| resolved.environment == first)
    {
        let chosen = all.remove(idx);
        all.insert(0, chosen);
    }
    ParityReport::new(&all)
}

fn render_text(
    manifest: &Manifest,
    selected: &[ResolvedManifest],
    parity: &ParityReport,
) -> String {
    let mut out = String::new();
    let shared = &manifest.shared;
    let services: Vec<String> = shared
        .services
        .iter()
        .map(|service| format!("{} ×{}", service.name, service.replicas))
        .collect();
    let _ = writeln!(
        out,
        "app `{}`: services {}",
        shared.app.name,
        services.join(", ")
    );
    if manifest.environments.is_empty() {
        let _ = writeln!(
            out,
            "environments: none declared (the shared settings serve every environment)"
        );
        return out;
    }
    let _ = writeln!(
        out,
        "environments: {}",
        manifest.environment_names().join(", ")
    );
    for resolved in selected {
        let config = &resolved.config;
        let _ = writeln!(out, "\n[{}]", resolved.environment);
        let _ = writeln!(out, "  strategy    {}", config.strategy.kind.as_str());
        for service in &config.services {
            let health = service.health.as_ref().map_or_else(
                || "no health check".to_owned(),
                |health| format!("health {}", health.path),
            );
            let _ = writeln!(
                out,
                "  service     {} ×{}, {health}",
                service.name, service.replicas
            );
        }
        for route in &config.routes {
            let hosts = if route.hosts.is_empty() {
                "any host".to_owned()
            } else {
                route.hosts.join(", ")
            };
            let _ = writeln!(
                out,
                "  route       {} → {} ({})",
                hosts,
                route.service,
                route.paths.join(", ")
            );
        }
        let required = resolved.required_config().names();
        let required = if required.is_empty() {
            "nothing".to_owned()
        } else {
            required.join(", ")
        };
        let _ = writeln!(
            out,
            "  requires    {required} (checked against the agent's secrets at deploy time)"
        );
    }
    let _ = writeln!(out);
    if parity.environments.len() < 2 {
        let _ = writeln!(out, "parity: only one environment, nothing to compare");
    } else if parity.is_empty() {
        let _ = writeln!(
            out,
            "parity: {} have identical settings",
            parity.environments.join(", ")
        );
    } else {
        let _ = writeln!(out, "parity: {} settings differ", parity.differences.len());
        out.push_str(&parity_table(parity));
    }
    out
}

fn parity_table(parity: &ParityReport) -> String {
    const MAX_CELL: usize = 60;
    let cell = |value: &Option<String>| {
        let text = value.clone().unwrap_or_else(|| "-".to_owned());
        if text.chars().count() > MAX_CELL {
            format!("{}…", text.chars().take(MAX_CELL - 1).collect::<String>())
        } else {
            text
        }
    };
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("setting".to_owned())
            .chain(parity.environments.iter().cloned())
            .collect(),
    ];
    for difference in &parity.differences {
        rows.push(
            std::iter::once(difference.setting.clone())
                .chain(difference.values.iter().map(cell))
                .collect(),
        );
    }
    let n_columns = rows[0].len();
    let widths: Vec<usize> = (0..n_columns)
        .map(|column| {
            rows.iter()
                .map(|row| row[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from("  ");
        for (column, text) in row.iter().enumerate() {
            let pad = widths[column] - text.chars().count();
            line.push_str(text);
            if column + 1 < n_columns {
                line.push_str(&" ".repeat(pad + 3));
            }
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    out
}

fn print_json_errors(
    printer: &Printer,
    path: &str,
    errors: &[serde_json::Value],
) -> anyhow::Result<()> {
    let out = json!({ "ok": false, "file": path, "errors": errors });
    printer.data(&serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

/// Whether the environment's required secrets were checked against an agent.
enum Verified {
    NotAsked,
    Missing {
        env: String,
        names: Vec<String>,
        /// The alerts webhook's secret is not set: alerts would vanish.
        alerts_off: Option<manifest::Warning>,
    },
    Unreachable(String),
}

/// Asks the agent (given, or the local one when it runs) which required secrets are not set.
fn missing_on_agent(
    args: &CheckArgs,
    app: &str,
    env: &str,
    selected: &[ResolvedManifest],
) -> Verified {
    let Some(resolved) = selected.first() else {
        return Verified::NotAsked;
    };
    let required = resolved.required_config();
    if required.names().is_empty() && resolved.alerts_webhook().is_none() {
        return Verified::Missing {
            env: env.to_owned(),
            names: Vec::new(),
            alerts_off: None,
        };
    }
    let client = match super::connect::client(&args.agent) {
        Ok(client) => client,
        Err(no_agent) => return Verified::Unreachable(no_agent.message),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => return Verified::Unreachable(error.to_string()),
    };
    match runtime.block_on(client.secrets(app, env)) {
        Ok(set) => {
            let is_set = |name: &str| set.iter().any(|secret| secret.name == name);
            Verified::Missing {
                env: env.to_owned(),
                names: required.missing(is_set),
                alerts_off: resolved.webhook_warning(is_set),
            }
        }
        Err(error) => Verified::Unreachable(error.to_string()),
    }
}
