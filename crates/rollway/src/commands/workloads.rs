//! `rollway cron [list | runs NAME | run NAME]`, `rollway run -- COMMAND...` and `rollway apps`.

use std::io::Write as _;
use std::ops::ControlFlow;

use agent::deploy::start::format_time;
use client::wire::{CronRunView, RunFrame, RunRequest};

use crate::ExitStatus;
use crate::cli::{AppsArgs, CronCommand, DestroyArgs, EnvArgs, RunArgs};
use crate::commands::{app_name, client_error, connect};
use crate::printer::Printer;

pub fn cron(
    command: Option<&CronCommand>,
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
        match command.unwrap_or(&CronCommand::List) {
            CronCommand::List => {
                let jobs = match client.cron_jobs(&app, env).await {
                    Ok(jobs) => jobs,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&jobs)?)?;
                    return Ok(ExitStatus::Success);
                }
                let Some(release) = jobs.release else {
                    printer.status("Cron", &format!("{app} in {env} has no live release yet"));
                    return Ok(ExitStatus::Success);
                };
                if jobs.jobs.is_empty() {
                    printer.status(
                        "Cron",
                        &format!("release {release} of {app} in {env} has no `[cron]` jobs"),
                    );
                    return Ok(ExitStatus::Success);
                }
                let mut out = format!(
                    "{:<16} {:<24} {:<20} {:<24} {:<10} command\n",
                    "job", "schedule", "tz", "next run", "last run"
                );
                for job in &jobs.jobs {
                    out.push_str(&format!(
                        "{:<16} {:<24} {:<20} {:<24} {:<10} {}\n",
                        job.name,
                        job.schedule,
                        job.tz,
                        job.next_run.map_or_else(|| "-".to_owned(), format_time),
                        job.last_run
                            .as_ref()
                            .map_or_else(|| "-".to_owned(), |run| run.state.to_string()),
                        job.command
                    ));
                }
                printer.data(&out)?;
            }
            CronCommand::Runs {
                name,
                output,
                limit,
            } => {
                let runs = match client.cron_runs(&app, env, name, *limit).await {
                    Ok(runs) => runs,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&runs)?)?;
                    return Ok(ExitStatus::Success);
                }
                if runs.is_empty() {
                    printer.status("Cron", &format!("`{name}` has not run yet"));
                    return Ok(ExitStatus::Success);
                }
                let mut out = format!(
                    "{:<24} {:<9} {:<8} {:<12} {:<5} {:<10}\n",
                    "tick", "trigger", "release", "state", "exit", "duration"
                );
                for run in &runs {
                    out.push_str(&run_line(run));
                    if *output && !run.output.is_empty() {
                        for line in run.output.lines() {
                            out.push_str(&format!("  | {line}\n"));
                        }
                    }
                }
                printer.data(&out)?;
            }
            CronCommand::Run { name } => {
                let run = match client.run_cron_job(&app, env, name).await {
                    Ok(run) => run,
                    Err(error) => return client_error(&printer, error),
                };
                if target.json {
                    printer.data(&serde_json::to_string_pretty(&run)?)?;
                }
                printer.status(
                    "Started",
                    &format!(
                        "cron job `{name}` in release {} of {app} in {env} ({}); `rollway cron runs {name}` shows how it ends",
                        run.release, run.state
                    ),
                );
            }
        }
        Ok(ExitStatus::Success)
    })
}

fn run_line(run: &CronRunView) -> String {
    let duration = run.finished_at.map_or_else(
        || "-".to_owned(),
        |finished| format!("{:.1}s", (finished - run.started_at).max(0) as f64 / 1000.0),
    );
    format!(
        "{:<24} {:<9} {:<8} {:<12} {:<5} {:<10}\n",
        format_time(run.tick),
        run.trigger,
        run.release,
        run.state,
        run.exit_code
            .map_or_else(|| "-".to_owned(), |code| code.to_string()),
        duration
    )
}

/// Streams the command's output as it comes (stdout to stdout, stderr to stderr, each line as
/// soon as it arrives, so their order is kept) and exits with its exit code.
pub fn run(args: &RunArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(app) = app_name(args.target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let env = &args.target.env;
    let Some(client) = connect::client_or_report(&args.target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    if args.interactive {
        return run_interactive(args, &app, env, client, printer);
    }
    let request = RunRequest {
        command: args.command.clone(),
        service: args.service.clone(),
        tty: None,
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let mut exit: Option<i32> = None;
        let mut failure: Option<String> = None;
        let streamed = client
            .run_command(&app, env, &request, |frame| {
                match frame {
                    RunFrame::Started { release, service } => printer.status(
                        "Running",
                        &format!("in release {release} of {app} in {env} (service `{service}`)"),
                    ),
                    RunFrame::Stdout { line } => {
                        let mut stdout = std::io::stdout().lock();
                        let _ = writeln!(stdout, "{line}");
                        let _ = stdout.flush();
                    }
                    RunFrame::Stderr { line } => printer.raw_stderr(&format!("{line}\n")),
                    RunFrame::Exited { code } => {
                        exit = Some(code);
                        return ControlFlow::Break(());
                    }
                    RunFrame::Error { message } => {
                        failure = Some(message);
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .await;
        if let Err(error) = streamed {
            return client_error(&printer, error);
        }
        match (exit, failure) {
            (Some(code), _) => Ok(ExitStatus::Command(u8::try_from(code).unwrap_or(1))),
            (None, Some(message)) => {
                printer.error(&format!("the command could not run: {message}"));
                Ok(ExitStatus::Failure)
            }
            (None, None) => {
                printer.error("the agent ended the answer before the command exited");
                Ok(ExitStatus::Failure)
            }
        }
    })
}

pub fn apps(args: &AppsArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    let Some(client) = connect::client_or_report(&args.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let apps = match client.apps().await {
            Ok(apps) => apps,
            Err(error) => return client_error(&printer, error),
        };
        if args.json {
            printer.data(&serde_json::to_string_pretty(&apps)?)?;
            return Ok(ExitStatus::Success);
        }
        if apps.is_empty() {
            printer.status("Apps", "none deployed on this agent yet");
            return Ok(ExitStatus::Success);
        }
        let mut out = format!(
            "{:<24} {:<16} {:<8} {:<10} state\n",
            "app", "environment", "release", "instances"
        );
        for view in &apps {
            out.push_str(&format!(
                "{:<24} {:<16} {:<8} {:<10} {}\n",
                view.app,
                view.environment,
                view.current_release
                    .map_or_else(|| "-".to_owned(), |number| number.to_string()),
                view.instances,
                if view.active { "active" } else { "destroyed" }
            ));
        }
        printer.data(&out)?;
        Ok(ExitStatus::Success)
    })
}

/// Asks for the app's name (or takes `--confirm APP`), then destroys the environment.
pub fn destroy(args: &DestroyArgs, printer: Printer) -> anyhow::Result<ExitStatus> {
    use std::io::{BufRead as _, IsTerminal as _};
    let Some(app) = app_name(args.target.app.as_deref(), &printer) else {
        return Ok(ExitStatus::Usage);
    };
    let env = &args.target.env;
    let typed = match &args.confirm {
        Some(typed) => typed.clone(),
        None if std::io::stdin().is_terminal() => {
            printer.raw_stderr(&format!(
                "This stops every instance of {app} in {env} and removes its routes (releases, events and backups stay).\nType the app's name to confirm: "
            ));
            let mut answer = String::new();
            std::io::stdin().lock().read_line(&mut answer)?;
            answer.trim().to_owned()
        }
        None => {
            printer.error(&format!(
                "destroying {env} of {app} needs a confirmation, and there is no terminal to ask on"
            ));
            printer.hint(&format!(
                "pass the app's name: `rollway destroy --app {app} --env {env} --confirm {app}`"
            ));
            return Ok(ExitStatus::Usage);
        }
    };
    if typed != app {
        printer.error(&format!(
            "`{typed}` is not the app's name `{app}`; nothing was destroyed"
        ));
        return Ok(ExitStatus::Usage);
    }
    let Some(client) = connect::client_or_report(&args.target.agent, &printer) else {
        return Ok(ExitStatus::Unreachable);
    };
    tokio::runtime::Runtime::new()?.block_on(async {
        let view = match client.destroy(&app, env).await {
            Ok(view) => view,
            Err(error) => return client_error(&printer, error),
        };
        if args.target.json {
            printer.data(&serde_json::to_string_pretty(&view)?)?;
        }
        printer.status(
            "Destroyed",
            &format!(
                "{app} in {env}: instances stopped, routes removed; releases, events and backups kept (`rollway deploy --env {env}` brings it back)"
            ),
        );
        Ok(ExitStatus::Success)
    })
}

/// `rollway run -i`: this terminal in raw mode, its keys to the command's terminal on the agent,
/// what that shows to this one, until the command exits; then its exit code.
fn run_interactive(
    args: &RunArgs,
    app: &str,
    env: &str,
    client: client::Client,
    printer: Printer,
) -> anyhow::Result<ExitStatus> {
    use std::io::IsTerminal as _;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        printer.error("`rollway run -i` needs a terminal, and stdin is not one");
        printer.hint("drop `-i` to run the command with its output streamed");
        return Ok(ExitStatus::Usage);
    }
    let size = rustix::termios::tcgetwinsize(std::io::stdout())
        .ok()
        .filter(|size| size.ws_row > 0 && size.ws_col > 0)
        .map_or(client::wire::TtySize { rows: 24, cols: 80 }, |size| {
            client::wire::TtySize {
                rows: size.ws_row,
                cols: size.ws_col,
            }
        });
    let request = RunRequest {
        command: args.command.clone(),
        service: args.service.clone(),
        tty: Some(size),
    };
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime.block_on(async {
        let connection = match client.run_interactive(app, env, &request).await {
            Ok(connection) => connection,
            Err(error) => return client_error(&printer, error).map(Err),
        };
        // Restored when dropped, whatever happens next.
        let raw = RawMode::enter()?;
        let (mut from_agent, mut to_agent) = tokio::io::split(connection);
        let typing = tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut typed = [0u8; 1024];
            while let Ok(n) = stdin.read(&mut typed).await {
                if n == 0 || to_agent.write_all(&typed[..n]).await.is_err() {
                    break;
                }
                let _ = to_agent.flush().await;
            }
        });
        let mut stdout = tokio::io::stdout();
        let mut code = None;
        loop {
            let mut head = [0u8; 5];
            if from_agent.read_exact(&mut head).await.is_err() {
                break;
            }
            let length = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut payload = vec![0u8; length.min(1 << 20)];
            if from_agent.read_exact(&mut payload).await.is_err() {
                break;
            }
            match head[0] {
                client::wire::TTY_OUTPUT => {
                    stdout.write_all(&payload).await?;
                    stdout.flush().await?;
                }
                client::wire::TTY_EXIT if payload.len() == 4 => {
                    code = Some(i32::from_be_bytes([
                        payload[0], payload[1], payload[2], payload[3],
                    ]));
                    break;
                }
                _ => {}
            }
        }
        typing.abort();
        drop(raw);
        anyhow::Ok(Ok(code))
    });
    // The thread reading stdin may still wait for a key: do not wait for it.
    runtime.shutdown_background();
    match outcome? {
        Err(status) => Ok(status),
        Ok(Some(code)) => Ok(ExitStatus::Command(u8::try_from(code).unwrap_or(1))),
        Ok(None) => {
            printer.error("the connection to the agent ended before the command exited");
            Ok(ExitStatus::Failure)
        }
    }
}

/// This terminal in raw mode (keys go through as typed, no echo) until dropped.
struct RawMode {
    original: rustix::termios::Termios,
}

impl RawMode {
    fn enter() -> std::io::Result<RawMode> {
        let stdin = std::io::stdin();
        let original = rustix::termios::tcgetattr(&stdin)?;
        let mut raw = original.clone();
        raw.make_raw();
        rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)?;
        Ok(RawMode { original })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = rustix::termios::tcsetattr(
            std::io::stdin(),
            rustix::termios::OptionalActions::Now,
            &self.original,
        );
    }
}
