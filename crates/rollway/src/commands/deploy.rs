//! `rollway deploy` and `rollway up`: check locally, pack, upload if new, start the deployment,
//! follow its progress until it ends.

use std::ops::ControlFlow;
use std::time::Duration;

use anyhow::Context;
use client::Client;
use client::wire::{
    DeployRequest, DeploymentEvent, DeploymentState, DeploymentView, EventView, PreviewRequest,
};

use crate::ExitStatus;
use crate::cli::DeployArgs;
use crate::commands::connect::{self, NoAgent};
use crate::printer::Printer;

/// A preview's lifetime when `--from` comes without `--ttl`.
const DEFAULT_TTL: &str = "72h";

fn preview_request(args: &DeployArgs) -> Option<PreviewRequest> {
    args.from.as_ref().map(|from| PreviewRequest {
        from: from.clone(),
        ttl: args.ttl.clone().unwrap_or_else(|| DEFAULT_TTL.to_owned()),
    })
}

/// Which command the user typed: `up` starts a local agent and defaults to `development`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Up,
    Deploy,
}

pub fn run(args: &DeployArgs, mode: Mode, printer: Printer) -> anyhow::Result<ExitStatus> {
    let manifest_path = args.dir.join(manifest::FILE_NAME);
    let source = match std::fs::read_to_string(&manifest_path) {
        Ok(source) => source,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            printer.error(&format!("no `{}` here", manifest_path.display()));
            printer.hint("run `rollway init` to write one for this folder");
            return Ok(ExitStatus::Usage);
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot read `{}`", manifest_path.display()));
        }
    };
    let manifest = match manifest::parse(&source, &manifest_path.display().to_string()) {
        Ok(manifest) => manifest,
        Err(diagnostics) => {
            printer.raw_stderr(&diagnostics.render(printer.color()));
            return Ok(ExitStatus::Usage);
        }
    };
    let env = match (&args.env, mode) {
        (Some(env), _) => env.clone(),
        (None, Mode::Up)
            if manifest.environments.is_empty()
                || manifest.environment_names().contains(&"development") =>
        {
            "development".to_owned()
        }
        (None, Mode::Up) => manifest
            .environment_names()
            .first()
            .map_or("development", |name| name)
            .to_owned(),
        (None, Mode::Deploy) => "production".to_owned(),
    };
    let preview = preview_request(args);
    let resolved = match &preview {
        Some(preview) => {
            match manifest::parse_preview(
                &source,
                &manifest_path.display().to_string(),
                &env,
                &preview.from,
            ) {
                Ok(resolved) => resolved,
                Err(manifest::PreviewManifestError::Invalid(diagnostics)) => {
                    printer.raw_stderr(&diagnostics.render(printer.color()));
                    return Ok(ExitStatus::Usage);
                }
                Err(manifest::PreviewManifestError::Preview(error)) => {
                    printer.error(&error.to_string());
                    return Ok(ExitStatus::Usage);
                }
            }
        }
        None => match manifest.resolve(&env) {
            Ok(resolved) => resolved,
            Err(unknown) => {
                printer.error(&unknown.to_string());
                if let Some(suggestion) = unknown.suggestion {
                    printer.hint(&format!("did you mean `--env {suggestion}`?"));
                } else if manifest::is_preview_name(&env) {
                    printer.hint(&format!(
                        "`{env}` can be a preview: `rollway deploy --env {env} --from BASE --ttl 72h`"
                    ));
                }
                return Ok(ExitStatus::Usage);
            }
        },
    };
    let app = manifest.shared.app.name.clone();
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let client = match mode {
            Mode::Up if args.agent.agent.is_none() => super::up::ensure_local_agent(&printer).await,
            _ => connect::client(&args.agent),
        };
        let client = match client {
            Ok(client) => client,
            Err(NoAgent { message, hint }) => {
                printer.error(&message);
                printer.hint(&hint);
                return Ok(ExitStatus::Unreachable);
            }
        };
        // Nothing is packed or sent while something required is missing. A preview's secrets
        // are its base's too: the agent checks those.
        let required = resolved.required_config();
        if args.from.is_none() && !required.names().is_empty() {
            let set = match client.secrets(&app, &env).await {
                Ok(set) => set,
                Err(error) => return super::client_error(&printer, error),
            };
            let missing = required.missing(|name| set.iter().any(|secret| secret.name == name));
            if !missing.is_empty() {
                printer.error(&format!("missing for {env}: {}", missing.join(", ")));
                printer.hint(&format!("set each with `rollway secrets set NAME --env {env}` (the value is read from stdin)"));
                return Ok(ExitStatus::Usage);
            }
        }
        deploy(&client, args, &printer, &app, &env, source).await
    })
}

async fn deploy(
    client: &Client,
    args: &DeployArgs,
    printer: &Printer,
    app: &str,
    env: &str,
    source: String,
) -> anyhow::Result<ExitStatus> {
    let started = tokio::time::Instant::now();
    let dir = args.dir.clone();
    let artifact = tokio::task::spawn_blocking(move || client::artifact::pack(&dir))
        .await?
        .with_context(|| format!("cannot pack `{}`", args.dir.display()))?;
    printer.status(
        "Packed",
        &format!(
            "{} files, {} ({})",
            artifact.n_files,
            human_size(artifact.size),
            short(&artifact.digest)
        ),
    );
    let known = match client.artifact_exists(&artifact.digest).await {
        Ok(known) => known,
        Err(error) => return super::client_error(printer, error),
    };
    if known {
        printer.status("Reusing", "artifact already on the agent");
    } else {
        let n_bytes = artifact.bytes.len();
        if let Err(error) = client
            .upload_artifact(&artifact.digest, artifact.bytes)
            .await
        {
            return super::client_error(printer, error);
        }
        printer.status("Uploaded", &human_size(n_bytes as u64));
    }
    let request = DeployRequest {
        artifact: artifact.digest.clone(),
        manifest: source,
        strategy: args.strategy,
        message: args.message.clone(),
        preview: preview_request(args),
    };
    let deployment = match client.deploy(app, env, &request).await {
        Ok(deployment) => deployment,
        Err(error) => return super::client_error(printer, error),
    };
    printer.status(
        "Deploying",
        &format!(
            "{app}@{} to {env} ({}, deployment {})",
            deployment.to_release, deployment.strategy, deployment.id
        ),
    );
    if args.detach {
        return finish_json(printer, args.json, &deployment, ExitStatus::Success);
    }
    let followed = follow(client, printer, &deployment, started).await?;
    let last = match client.deployment(&deployment.id).await {
        Ok(last) => last,
        Err(error) => return super::client_error(printer, error),
    };
    summary::write(client, printer, &last).await;
    let status = report_end(printer, &last, started.elapsed(), &followed);
    if last.state == DeploymentState::Succeeded
        && let Ok(status_view) = client.status(app, env).await
        && let Some(url) = status_view.url
    {
        printer.status("Serving", &url);
    }
    finish_json(printer, args.json, &last, status)
}

/// What following a deployment learned that its last line must say.
#[derive(Debug, Default)]
pub struct Followed {
    /// The observation window ended without a verdict: the agent's words for it.
    pub inconclusive: Option<String>,
}

/// Renders a deployment's events as they arrive, until it finishes.
pub async fn follow(
    client: &Client,
    printer: &Printer,
    deployment: &DeploymentView,
    started: tokio::time::Instant,
) -> anyhow::Result<Followed> {
    let path = format!("/v1/deployments/{}/stream", deployment.id);
    let mut followed = Followed::default();
    let result = client
        .follow(&path, |_, data| {
            let Ok(event) = serde_json::from_str::<EventView>(data) else {
                return ControlFlow::Continue(());
            };
            let progress = event.deployment_event();
            if let Some(inconclusive @ DeploymentEvent::Inconclusive { .. }) = &progress {
                followed.inconclusive = Some(inconclusive.to_string());
            }
            render_event(printer, &event, started.elapsed());
            match progress {
                Some(DeploymentEvent::Finished { .. }) => ControlFlow::Break(()),
                _ => ControlFlow::Continue(()),
            }
        })
        .await;
    if result.is_err() {
        // The stream broke (agent restarted?): poll until the deployment ends.
        for _ in 0..600 {
            match client.deployment(&deployment.id).await {
                Ok(view) if view.is_finished() => return Ok(followed),
                _ => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
    }
    Ok(followed)
}

fn render_event(printer: &Printer, event: &EventView, elapsed: Duration) {
    let at = format!("({:.1}s)", elapsed.as_secs_f64());
    match progress_line(event, &at) {
        Some(Line::Status(verb, text)) => printer.status(verb, &text),
        Some(Line::Warning(text)) => printer.warning(&text),
        None => {}
    }
}

/// One line of a deployment's progress, before the printer styles it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    Status(&'static str, String),
    Warning(String),
}

/// What an event shows while a deployment is followed. Read from the event's typed payload
/// (`DeploymentEvent`), never from its message, whose wording is for people; an event without a
/// payload (an older agent's) shows by its kind.
fn progress_line(event: &EventView, at: &str) -> Option<Line> {
    let Some(progress) = event.deployment_event() else {
        return untyped_line(event, at);
    };
    let status = |verb, text: String| Some(Line::Status(verb, text));
    match &progress {
        DeploymentEvent::State { to, .. } => state_line(*to, at),
        DeploymentEvent::Output { line } => status("", format!("| {line}")),
        DeploymentEvent::Command { .. }
        | DeploymentEvent::PullImage { .. }
        | DeploymentEvent::BuildImage { .. } => status("Running", progress.to_string()),
        DeploymentEvent::BackupTaken { .. } => status("Backed up", progress.to_string()),
        DeploymentEvent::BackupSkipped { reason } => {
            status("Skipped", format!("the backup: {reason}"))
        }
        DeploymentEvent::Verdict { verdict, .. } if verdict.is_fail() => {
            Some(Line::Warning(progress.to_string()))
        }
        DeploymentEvent::Holding { .. } | DeploymentEvent::AwaitingApproval { .. } => {
            status("Waiting", progress.to_string())
        }
        DeploymentEvent::Promoted { .. } | DeploymentEvent::Approved { .. } => {
            status("Promoted", progress.to_string())
        }
        DeploymentEvent::Reused { .. } => status("Reusing", progress.to_string()),
        DeploymentEvent::Stopping { .. } => status("Stopping", progress.to_string()),
        DeploymentEvent::InstanceStarted { .. } => status("Started", progress.to_string()),
        DeploymentEvent::InstanceHealthy { .. } => status("Healthy", progress.to_string()),
        DeploymentEvent::Weights { .. } | DeploymentEvent::TrafficBack { .. } => {
            status("Shifted", format!("{progress} {at}"))
        }
        DeploymentEvent::StepFailed { .. } => Some(Line::Warning(progress.to_string())),
        DeploymentEvent::Finished { .. }
        | DeploymentEvent::InstanceUnhealthy { .. }
        | DeploymentEvent::InstanceKeptInTraffic { .. }
        | DeploymentEvent::InstanceRecovered { .. }
        | DeploymentEvent::Verdict { .. }
        | DeploymentEvent::Inconclusive { .. }
        | DeploymentEvent::Image { .. }
        | DeploymentEvent::Observing { .. }
        | DeploymentEvent::NoFallback { .. } => None,
    }
}

/// An event without a typed payload, by its kind: an agent-wide warning (`alerts.off`), or the
/// progress of an agent older than the payloads.
fn untyped_line(event: &EventView, at: &str) -> Option<Line> {
    let status = |verb, text: &str| Some(Line::Status(verb, text.to_owned()));
    match event.kind.as_str() {
        "deployment.output" => status("", &format!("| {}", event.message)),
        "deployment.command" => status("Running", &event.message),
        "backup.created" => status("Backed up", &event.message),
        "backup.skipped" => status("Skipped", &format!("the backup: {}", event.message)),
        "analysis.verdict" if event.verdict().is_some_and(|verdict| verdict.is_fail()) => {
            Some(Line::Warning(event.message.clone()))
        }
        "deployment.holding" | "deployment.awaiting_approval" => status("Waiting", &event.message),
        "deployment.promoted" | "deployment.approved" => status("Promoted", &event.message),
        "deployment.reuse" => status("Reusing", &event.message),
        "deployment.stopping" => status("Stopping", &event.message),
        "alerts.off" => Some(Line::Warning(event.message.clone())),
        "instance.started" => status("Started", &event.message),
        "instance.healthy" => status("Healthy", &event.message),
        "deployment.weights" => status("Shifted", &format!("{} {at}", event.message)),
        "deployment.step_failed" => Some(Line::Warning(event.message.clone())),
        _ => None,
    }
}

/// The line for entering state `to`. BackingUp and Releasing show through what they do
/// (`Backed up`, `Running`), if anything.
fn state_line(to: DeploymentState, at: &str) -> Option<Line> {
    let what = match to {
        DeploymentState::Preparing => "the release: unpack, build",
        DeploymentState::Starting => "new instances",
        DeploymentState::Verifying => "health of the new instances",
        DeploymentState::Shifting => "traffic to the new release",
        DeploymentState::AwaitingApproval => "approval: `rollway approve` releases it",
        DeploymentState::Observing => "the new release with all traffic, analysis armed",
        DeploymentState::RollingBack => "traffic to the earlier release",
        _ => return None,
    };
    let verb = match to {
        DeploymentState::RollingBack => "Rolling back",
        DeploymentState::AwaitingApproval => "Awaiting",
        other => other.as_str(),
    };
    Some(Line::Status(verb, format!("{what} {at}")))
}

fn report_end(
    printer: &Printer,
    deployment: &DeploymentView,
    elapsed: Duration,
    followed: &Followed,
) -> ExitStatus {
    let took = format!("in {:.1}s", elapsed.as_secs_f64());
    match deployment.state {
        DeploymentState::Succeeded => {
            // An observation without a verdict is not a pass: the last line says so.
            let caveat = followed
                .inconclusive
                .as_deref()
                .map(|reason| format!("; not verified under traffic: {reason}"))
                .unwrap_or_default();
            printer.status(
                "Finished",
                &format!(
                    "{} {}@{} is live {took}{caveat}",
                    deployment.kind, deployment.app, deployment.to_release
                ),
            );
            ExitStatus::Success
        }
        DeploymentState::RolledBack => {
            printer.error(&format!(
                "the {} was rolled back: {}",
                deployment.kind,
                deployment.reason.as_deref().unwrap_or("no reason recorded")
            ));
            ExitStatus::Failure
        }
        _ => {
            printer.error(&format!(
                "the {} failed: {}",
                deployment.kind,
                deployment.reason.as_deref().unwrap_or("no reason recorded")
            ));
            printer.hint(&format!(
                "traffic stays on the release that served before; see `rollway logs --env {}`",
                deployment.environment
            ));
            ExitStatus::Failure
        }
    }
}

pub fn finish_json(
    printer: &Printer,
    json: bool,
    deployment: &DeploymentView,
    status: ExitStatus,
) -> anyhow::Result<ExitStatus> {
    if json {
        printer.data(&serde_json::to_string_pretty(deployment)?)?;
    }
    Ok(status)
}

fn human_size(bytes: u64) -> String {
    match bytes {
        0..1024 => format!("{bytes} B"),
        1024..1_048_576 => format!("{:.1} KiB", bytes as f64 / 1024.0),
        _ => format!("{:.1} MiB", bytes as f64 / 1_048_576.0),
    }
}

fn short(digest: &str) -> String {
    format!("sha256:{}", digest.get(..12).unwrap_or(digest))
}

mod summary;

#[cfg(test)]
mod tests;
