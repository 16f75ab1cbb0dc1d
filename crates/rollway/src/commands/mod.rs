//! One module per command, each with `run(args, printer) -> anyhow::Result<ExitStatus>`.

pub mod check;
pub mod init;
