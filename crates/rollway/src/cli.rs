//! The command line as clap sees it: every command, flag and help text, and nothing else.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Boring deploys for small teams: health-gated, zero failed requests, rolled back by itself.
#[derive(Debug, Parser)]
#[command(
    name = "rollway",
    version,
    about,
    long_about = None,
    after_help = "Start with `rollway init` in your app folder, then `rollway check`.\nExit codes: 0 success, 1 deploy failed or rolled back, 2 usage or manifest error, 3 agent unreachable or token refused."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Print only errors.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented rollway.toml for the app in this folder.
    Init(InitArgs),
    /// Validate the manifest, show what differs between environments and what each one requires.
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The app folder.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Replace an existing rollway.toml.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Check one environment (default: every declared environment).
    #[arg(long, short)]
    pub env: Option<String>,
    /// The manifest to check.
    #[arg(long, short, default_value = "rollway.toml")]
    pub file: PathBuf,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}
