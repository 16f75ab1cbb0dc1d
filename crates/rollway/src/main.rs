//! The `rollway` binary: command-line parsing, one call per command, and rendering.
//!
//! Decisions live in the library crates; this crate only maps their results to output and to
//! exit codes (DESIGN.md: 0 success, 1 deploy failed, 2 usage or manifest error, 3 agent).

mod cli;
mod commands;
mod printer;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::printer::Printer;

/// Exit codes, the one place they are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// A deploy failed or was rolled back, or the command failed for another reason.
    Failure,
    /// A usage or manifest error.
    Usage,
    /// The agent cannot be reached or refuses the token.
    Unreachable,
    /// A one-off command's own exit code (`rollway run`), passed through.
    Command(u8),
}

impl From<ExitStatus> for ExitCode {
    fn from(status: ExitStatus) -> Self {
        ExitCode::from(match status {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Unreachable => 3,
            ExitStatus::Command(code) => code,
        })
    }
}

// One allocator for the CLI, the agent and the proxy process they start (`proxy::memory`).
#[global_allocator]
static ALLOCATOR: proxy::memory::Allocator = proxy::memory::ALLOCATOR;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let printer = Printer::new(cli.global.quiet);
    let result = match cli.command {
        Command::Init(args) => commands::init::run(&args, printer),
        Command::Check(args) => commands::check::run(&args, printer),
        Command::Up(args) => commands::deploy::run(&args, commands::deploy::Mode::Up, printer),
        Command::Deploy(args) => {
            commands::deploy::run(&args, commands::deploy::Mode::Deploy, printer)
        }
        Command::Status(args) => commands::inspect::status(&args, printer),
        Command::Releases(args) => commands::inspect::releases(&args, printer),
        Command::Rollback(args) => commands::rollback::run(&args, printer),
        Command::Promote(args) => commands::signal::run_current(&args, "promote", printer),
        Command::Abort(args) => commands::signal::run_current(&args, "abort", printer),
        Command::Approve { deployment, agent } => {
            commands::signal::run(&agent, &deployment, "approve", printer)
        }
        Command::Logs(args) => commands::inspect::logs(&args, printer),
        Command::Events(args) => commands::inspect::events(&args, printer),
        Command::Backups { command, target } => {
            commands::backups::run(command.as_ref(), &target, printer)
        }
        Command::Certs(args) => commands::certs::run(&args, printer),
        Command::Lock { command, target } => {
            commands::lock::run(command.as_ref(), &target, printer)
        }
        Command::Maintenance(command) => commands::edge::maintenance(&command, printer),
        Command::Pause(args) => commands::edge::pause(&args, printer),
        Command::Resume(args) => commands::edge::resume(&args, printer),
        Command::Secrets(command) => commands::secrets::run(&command, printer),
        Command::Tokens(command) => commands::tokens::run(&command, printer),
        Command::Registry(command) => commands::registry::run(&command, printer),
        Command::Agent(args) => commands::agent::run_agent(&args, printer),
        Command::Proxy(args) => commands::agent::run_proxy(&args, printer),
        Command::Sandbox(args) => commands::sandbox::run(&args),
        Command::Cron { command, target } => {
            commands::workloads::cron(command.as_ref(), &target, printer)
        }
        Command::Run(args) => commands::workloads::run(&args, printer),
        Command::Apps(args) => commands::workloads::apps(&args, printer),
        Command::Destroy(args) => commands::workloads::destroy(&args, printer),
        Command::Env { command, target } => commands::environments::run(&command, &target, printer),
    };
    match result {
        Ok(status) => status.into(),
        Err(error) => {
            // A closed pipe (`rollway check --json | head`) is not an error of ours.
            if error
                .chain()
                .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
                .any(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            printer.error(&error.to_string());
            for cause in error.chain().skip(1) {
                printer.raw_stderr(&format!("  Caused by: {cause}\n"));
            }
            ExitStatus::Failure.into()
        }
    }
}
