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
        hide: args.hide.clone(),
    };
    if args.probe {
        let probe = driver::sandbox::probe_self(&policy)?;
        let hiding = match &probe.hiding {
            Ok(()) => "ok".to_owned(),
            Err(reason) => reason.replace('\n', " "),
        };
        println!("abi {}\nhiding {hiding}", probe.abi);
        return Ok(ExitStatus::Success);
    }
    Err(driver::sandbox::exec(&policy, Path::new(program), rest).into())
}
