//! One-off commands in a release: a cron job's run and `rollway run`. One way to run them: the
//! release's folder, the chosen service's environment (config and secrets, exactly as its
//! instances get them), the app's user and confinement, its own process group; every output line
//! passes through the environment's `Scrubber` before anyone sees it.
//!
//! The command runs apart from the instances and from any deployment: a deploy never stops it.
//! It is ended only by its own exit or by the caller's `stop` (a cron timeout, a replacing tick,
//! a client that went away): SIGTERM to its process group, then SIGKILL after the service's
//! `stop_timeout`.

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;

use tokio::io::AsyncBufReadExt as _;

use crate::deploy::spec::{self, LoadedRelease, SpecError};
use crate::engine::{AppEnv, Engine};

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How a one-off command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit code, or 128 + the signal that ended it.
    pub code: i32,
    /// Whether the caller's `stop` ended it.
    pub stopped: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum OneOffError {
    #[error("no service `{service}` in release {release}")]
    NoService {
        service: String,
        release: client::wire::ReleaseNumber,
    },
    #[error(
        "service `{service}` runs an image; one-off commands run in a release's folder (process services) only for now"
    )]
    Container { service: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("cannot prepare the private temp folder of `{command}`")]
    TempDir {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for `{command}` to end")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
}

/// What to run.
pub struct Command<'a> {
    pub key: &'a AppEnv,
    pub release: &'a LoadedRelease,
    pub service: &'a str,
    /// Run with `sh -c` in the release's folder.
    pub command: &'a str,
    /// Names its private temp folder (`cron-reports`, `run`); kept between runs like a home.
    pub label: &'a str,
    /// Variables besides the service's (`ROLLWAY_CRON_TICK`).
    pub env: Vec<(String, String)>,
}

/// Runs `command` to its end, handing every scrubbed output line to `on_line` in the order each
/// stream produced them (a slow `on_line` slows the reading, it loses nothing). When `stop`
/// completes first, the command is stopped.
pub async fn run<LineDone: Future<Output = ()>>(
    engine: &Arc<Engine>,
    command: Command<'_>,
    mut on_line: impl FnMut(Stream, String) -> LineDone,
    stop: impl Future<Output = ()>,
) -> Result<Exit, OneOffError> {
    let Command {
        key,
        release,
        service: service_name,
        command,
        label,
        env,
    } = command;
    let service = release
        .resolved
        .config
        .service(service_name)
        .ok_or_else(|| OneOffError::NoService {
            service: service_name.to_owned(),
            release: release.number,
        })?;
    if !matches!(service.source, manifest::ServiceSource::Run { .. }) {
        return Err(OneOffError::Container {
            service: service_name.to_owned(),
        });
    }
    // The service's own instance spec gives the environment and confinement its instances get.
    let spec = spec::instance_spec(engine, key, release, service, label, 0)?;
    let scrubber = crate::secrets::Scrubber::for_environment(
        &engine.store,
        &engine.master_key,
        &key.app,
        &key.environment,
    )
    .map_err(SpecError::Scrubber)?;
    spec.confinement
        .prepare()
        .map_err(|source| OneOffError::TempDir {
            command: command.to_owned(),
            source,
        })?;
    let private = spec.confinement.env();
    let mut process = spec.confinement.command(command, &spec.workdir);
    process
        .env_clear()
        .envs(
            spec::passthrough_env()
                .into_iter()
                .filter(|(name, _)| !private.iter().any(|(private, _)| private == name.as_str())),
        )
        .envs(private.iter().cloned())
        .envs(
            spec.env
                .iter()
                .chain(&env)
                .map(|(name, value)| (name.as_str(), value.as_str())),
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own group, so a stop reaches every process it started.
        .process_group(0)
        .kill_on_drop(true);
    let mut child = process.spawn().map_err(|source| OneOffError::Spawn {
        command: command.to_owned(),
        source,
    })?;
    let pid = child.id();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(OneOffError::Spawn {
            command: command.to_owned(),
            source: std::io::Error::other("no output pipes"),
        });
    };
    let mut out_lines = tokio::io::BufReader::new(stdout).lines();
    let mut err_lines = tokio::io::BufReader::new(stderr).lines();
    let (mut out_open, mut err_open) = (true, true);
    let mut stopped = false;
    let stop_timeout = spec.stop_timeout;
    tokio::pin!(stop);
    let mut kill_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let status = loop {
        tokio::select! {
            // Output first, so lines are handed on before the exit is.
            biased;
            line = out_lines.next_line(), if out_open => match line {
                Ok(Some(line)) => on_line(Stream::Stdout, scrubber.scrub(&line).into_owned()).await,
                _ => out_open = false,
            },
            line = err_lines.next_line(), if err_open => match line {
                Ok(Some(line)) => on_line(Stream::Stderr, scrubber.scrub(&line).into_owned()).await,
                _ => err_open = false,
            },
            status = child.wait(), if !out_open && !err_open => {
                break status.map_err(|source| OneOffError::Wait { command: command.to_owned(), source })?;
            }
            () = &mut stop, if !stopped => {
                stopped = true;
                signal_group(pid, rustix::process::Signal::TERM);
                kill_at = Some(Box::pin(tokio::time::sleep(stop_timeout)));
            }
            () = async { if let Some(sleep) = kill_at.as_mut() { sleep.await } }, if kill_at.is_some() => {
                kill_at = None;
                signal_group(pid, rustix::process::Signal::KILL);
            }
        }
    };
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(Exit { code, stopped })
}

/// One run of a worker's health command (`health = { command }`), as instance `instance_id` of
/// `service` sees its environment (its variables and private temp folder): `Ok` when it exits 0
/// within the check's timeout, else what it did, with its last output line.
pub async fn check(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: &LoadedRelease,
    service: &manifest::Service,
    instance_id: &str,
    check: &manifest::HealthCommand,
) -> Result<(), String> {
    let mut last_line = String::new();
    let ran = run(
        engine,
        Command {
            key,
            release,
            service: &service.name,
            command: &check.command,
            label: instance_id,
            env: Vec::new(),
        },
        |_, line| {
            last_line = line;
            std::future::ready(())
        },
        tokio::time::sleep(check.timeout.as_std()),
    )
    .await;
    let said = if last_line.is_empty() {
        String::new()
    } else {
        format!(" (last output: {last_line})")
    };
    match ran {
        Ok(exit) if exit.stopped => Err(format!(
            "`{}` ran past its timeout of {}{said}",
            check.command, check.timeout
        )),
        Ok(exit) if exit.code == 0 => Ok(()),
        Ok(exit) => Err(format!(
            "`{}` exited with {}{said}",
            check.command, exit.code
        )),
        Err(error) => Err(crate::report::chain(&error)),
    }
}

fn signal_group(pid: Option<u32>, signal: rustix::process::Signal) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// `argv` as one `sh -c` command line: each word single-quoted, so nothing in it is expanded
/// twice (`rollway run -- sh -c 'exit 3'` runs exactly `sh`, `-c`, `exit 3`).
pub fn shell_words(argv: &[String]) -> String {
    let quoted: Vec<String> = argv
        .iter()
        .map(|word| format!("'{}'", word.replace('\'', r"'\''")))
        .collect();
    format!("exec {}", quoted.join(" "))
}

#[cfg(test)]
mod tests;
