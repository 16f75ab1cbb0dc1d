//! `rollway sandbox --allow-rw DIR -- PROGRAM ARGS`: the process driver's Landlock wrapper. It
//! confines itself and becomes PROGRAM; it only returns when that failed.

use std::path::Path;

use crate::ExitStatus;
use crate::cli::SandboxArgs;

pub fn run(args: &SandboxArgs) -> anyhow::Result<ExitStatus> {
    let Some((program, rest)) = args.command.split_first() else {
        anyhow::bail!("no command to run after `--`");
    };
    let policy = driver::sandbox::Policy {
        read_write: args.allow_rw.clone(),
        read_only: args.allow_ro.clone(),
    };
    Err(driver::sandbox::exec(&policy, Path::new(program), rest).into())
}
