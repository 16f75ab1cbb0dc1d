//! `rollway status`, `releases`, `logs` and `events`: reading what the agent knows.

use std::ops::ControlFlow;

use client::wire::EventView;

use crate::ExitStatus;
use crate::cli::{EnvArgs, EventsArgs, LogsArgs};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn status(args: &EnvArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(args.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&args.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let status = match client.status(&app, &args.env).await {
            Ok(status) => status,
            Err(error) => return client_error(&printer, error),
        };
        if args.json {
            printer.data(&serde_json::to_string_pretty(&status)?)?;
            return Ok(ExitStatus::Success);
        }
        let mut out = String::new();
        let current = status
            .current_release
            .map_or_else(|| "none".to_owned(), |n| n.to_string());
        out.push_str(&format!(
            "{} in {}: release {current}\n",
            status.app, status.environment
        ));
        if let Some(url) = &status.url {
            out.push_str(&format!("url       {url}\n"));
        }
        let weights: Vec<String> = status
            .weights
            .iter()
            .map(|w| format!("release {} {}%", w.release, w.weight))
            .collect();
        out.push_str(&format!(
            "traffic   {}\n",
            if weights.is_empty() {
                "none".to_owned()
            } else {
                weights.join(", ")
            }
        ));
        if let Some(proxy) = &status.proxy {
            let pid = proxy
                .pid
                .map(|pid| format!(" (pid {pid})"))
                .unwrap_or_default();
            let restarts = match proxy.restarts {
                0 => String::new(),
                1 => ", restarted once".to_owned(),
                n => format!(", restarted {n} times"),
            };
            let last_exit = match (&proxy.last_exit, proxy.restarts) {
                (Some(exit), _) => format!("; last exit: {exit}"),
                (None, _) => String::new(),
            };
            out.push_str(&format!(
                "proxy     {} on {}{pid}{restarts}{last_exit}\n",
                proxy.state, proxy.listen
            ));
        }
        for instance in &status.instances {
            out.push_str(&format!(
                "instance  {:<40} release {:<4} port {:<6} {}\n",
                instance.id, instance.release, instance.port, instance.state
            ));
        }
        if let Some(deployment) = &status.deployment {
            let reason = deployment
                .reason
                .as_deref()
                .map(|reason| format!(": {reason}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "last      {} {} → release {} {}{reason}\n",
                deployment.id, deployment.kind, deployment.to_release, deployment.state
            ));
        }
        if let Some(edge) = &status.edge {
            for line in crate::commands::edge::describe(edge) {
                out.push_str(&format!("edge      {line}\n"));
            }
        }
        if let Some(inconclusive) = &status.inconclusive {
            out.push_str(&format!("verdict   inconclusive: {inconclusive}\n"));
        }
        printer.data(&out)?;
        Ok(ExitStatus::Success)
    })
}

pub fn releases(args: &EnvArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(args.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&args.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let releases = match client.releases(&app, &args.env).await {
            Ok(releases) => releases,
            Err(error) => return client_error(&printer, error),
        };
        if args.json {
            printer.data(&serde_json::to_string_pretty(&releases)?)?;
            return Ok(ExitStatus::Success);
        }
        let mut out = format!(
            "{:<3} {:<8} {:<12} {:<11} {:<10} {:<24} message\n",
            "", "release", "artifact", "outcome", "by", "when"
        );
        for release in &releases {
            out.push_str(&format!(
                "{:<3} {:<8} {:<12} {:<11} {:<10} {:<24} {}\n",
                if release.current { "*" } else { "" },
                release.number,
                release.artifact.get(..12).unwrap_or(&release.artifact),
                release.outcome,
                release.created_by,
                agent::deploy::start::format_time(release.created_at),
                release.message.as_deref().unwrap_or(""),
            ));
        }
        printer.data(&out)?;
        Ok(ExitStatus::Success)
    })
}

pub fn logs(args: &LogsArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let target = &args.target;
    let Some(app) = app_name(target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let Some(client) = connect::client_or_report(&target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let lines = match client.logs(&app, &target.env, args.lines).await {
            Ok(lines) => lines,
            Err(error) => return client_error(&printer, error),
        };
        if target.json {
            printer.data(&serde_json::to_string_pretty(&lines)?)?;
        } else {
            let out: Vec<String> = lines
                .iter()
                .map(|line| format!("{} | {}", line.instance_id, line.line))
                .collect();
            if !out.is_empty() {
                printer.data(&out.join("\n"))?;
            }
        }
        if !args.follow {
            return Ok(ExitStatus::Success);
        }
        // New lines arrive as server-sent events, one per line, from every instance.
        let mut failure = None;
        let result = client
            .follow(
                &format!("/v1/apps/{app}/environments/{}/logs/stream", target.env),
                |_, data| {
                    if let Ok(line) = serde_json::from_str::<client::wire::LogLineView>(data) {
                        let text = if target.json {
                            data.to_owned()
                        } else {
                            format!("{} | {}", line.instance_id, line.line)
                        };
                        if let Err(error) = printer.data(&text) {
                            failure = Some(error);
                            return ControlFlow::Break(());
                        }
                    }
                    ControlFlow::Continue(())
                },
            )
            .await;
        if let Some(error) = failure {
            return Err(error.into());
        }
        if let Err(error) = result {
            return client_error(&printer, error);
        }
        Ok(ExitStatus::Success)
    })
}

pub fn events(args: &EventsArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(client) = connect::client_or_report(&args.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let all = match client.events(0, 100_000).await {
            Ok(events) => events,
            Err(error) => return client_error(&printer, error),
        };
        let start = all.len().saturating_sub(args.lines);
        let show = |event: &EventView| -> anyhow::Result<()> {
            if args.json {
                printer.data(&serde_json::to_string(event)?)?;
            } else {
                printer.data(&format!(
                    "{}  {:<22} {}",
                    agent::deploy::start::format_time(event.at),
                    event.kind,
                    event.message
                ))?;
            }
            Ok(())
        };
        for event in &all[start..] {
            show(event)?;
        }
        if args.follow {
            let after = all.last().map_or(0, |event| event.id);
            let mut failure = None;
            let result = client
                .follow(&format!("/v1/events/stream?after={after}"), |_, data| {
                    if let Ok(event) = serde_json::from_str::<EventView>(data)
                        && let Err(error) = show(&event)
                    {
                        failure = Some(error);
                        return ControlFlow::Break(());
                    }
                    ControlFlow::Continue(())
                })
                .await;
            if let Some(error) = failure {
                return Err(error);
            }
            if let Err(error) = result {
                return client_error(&printer, error);
            }
        }
        Ok(ExitStatus::Success)
    })
}
