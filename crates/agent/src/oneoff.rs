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
    #[error("cannot give `{command}` a terminal")]
    Tty {
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

/// A one-off command ready to spawn (its standard streams still to be set).
struct Prepared {
    process: tokio::process::Command,
    /// The user it runs as, when the agent switches users.
    user: Option<driver::AppUser>,
    scrubber: crate::secrets::Scrubber,
    /// The service's: SIGTERM, then SIGKILL after this.
    stop_timeout: std::time::Duration,
}

/// The process of `command`: the service's instance spec gives the environment and confinement
/// its instances get, in the release's folder.
fn prepare(engine: &Arc<Engine>, command: &Command<'_>) -> Result<Prepared, OneOffError> {
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
            service: (*service_name).to_owned(),
            release: release.number,
        })?;
    if !matches!(service.source, manifest::ServiceSource::Run { .. }) {
        return Err(OneOffError::Container {
            service: (*service_name).to_owned(),
        });
    }
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
            command: (*command).to_owned(),
            source,
        })?;
    let mut process = spec.confinement.command(command, &spec.workdir);
    process
        .env_clear()
        .envs(spec.confinement.inherited_env())
        .envs(
            spec.env
                .iter()
                .chain(env.iter())
                .map(|(name, value)| (name.as_str(), value.as_str())),
        );
    Ok(Prepared {
        process,
        user: spec.confinement.user,
        scrubber,
        stop_timeout: spec.stop_timeout,
    })
}

/// How long a terminal's output may hold back bytes that could start a secret value, waiting for
/// the rest, before it shows them: a pause longer than this ends any value being printed.
const HOLD_BACK: std::time::Duration = std::time::Duration::from_millis(50);

/// Runs `command` to its end, handing every scrubbed output line to `on_line` in the order each
/// stream produced them (a slow `on_line` slows the reading, it loses nothing). When `stop`
/// completes first, the command is stopped.
pub async fn run<LineDone: Future<Output = ()>>(
    engine: &Arc<Engine>,
    command: Command<'_>,
    mut on_line: impl FnMut(Stream, String) -> LineDone,
    stop: impl Future<Output = ()>,
) -> Result<Exit, OneOffError> {
    let command_text = command.command;
    let Prepared {
        mut process,
        scrubber,
        stop_timeout,
        ..
    } = prepare(engine, &command)?;
    let command = command_text;
    process
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

pub use client::wire::TtySize;

/// Runs `command` on a new terminal (a pseudo-terminal of `size`, its standard streams and
/// controlling terminal, in a session of its own through `setsid --ctty`), for `rollway run -i`.
/// Bytes from `input` are typed into it; what it shows is handed to `on_output`, scrubbed of the
/// environment's secrets chunk by chunk (best effort: a value split across two reads of the
/// terminal passes). When `input` ends (the person left), the session gets SIGHUP like a closed
/// terminal, then SIGKILL after the service's `stop_timeout`.
pub async fn run_tty<OutputDone: Future<Output = ()>>(
    engine: &Arc<Engine>,
    command: Command<'_>,
    size: TtySize,
    mut input: impl tokio::io::AsyncRead + Unpin,
    mut on_output: impl FnMut(Vec<u8>) -> OutputDone,
) -> Result<Exit, OneOffError> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let text = command.command.to_owned();
    let tty_error = |source: std::io::Error| OneOffError::Tty {
        command: text.clone(),
        source,
    };
    let wrapped = format!(
        "exec setsid --ctty --wait /bin/sh -c '{}'",
        text.replace('\'', r"'\''")
    );
    let Prepared {
        mut process,
        scrubber,
        stop_timeout,
        user,
    } = prepare(
        engine,
        &Command {
            command: &wrapped,
            ..command
        },
    )?;
    let (master, slave) = open_pty(size, user).map_err(tty_error)?;
    let stdio = |slave: &std::fs::File| slave.try_clone().map(Stdio::from);
    process
        .stdin(stdio(&slave).map_err(tty_error)?)
        .stdout(stdio(&slave).map_err(tty_error)?)
        .stderr(stdio(&slave).map_err(tty_error)?)
        .kill_on_drop(true);
    let mut child = process.spawn().map_err(|source| OneOffError::Spawn {
        command: text.clone(),
        source,
    })?;
    // Only the child holds the terminal now: when it ends, reading the master fails (EIO).
    drop(slave);
    drop(process);
    let pid = child.id();
    let mut reader = tokio::fs::File::from_std(master.try_clone().map_err(tty_error)?);
    let mut writer = tokio::fs::File::from_std(master);
    let mut shown = vec![0u8; 16 * 1024];
    let mut typed = vec![0u8; 4096];
    let mut input_open = true;
    let mut stopped = false;
    let mut kill_at: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut stream = crate::secrets::StreamScrubber::new(&scrubber);
    loop {
        tokio::select! {
            read = reader.read(&mut shown) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let chunk = stream.push(&shown[..n]);
                    if !chunk.is_empty() {
                        on_output(chunk).await;
                    }
                }
            },
            // What was held back as a possible start of a secret is shown once the output pauses.
            () = tokio::time::sleep(HOLD_BACK), if stream.holds() => {
                on_output(stream.flush()).await;
            },
            read = input.read(&mut typed), if input_open => match read {
                Ok(0) | Err(_) => {
                    input_open = false;
                    stopped = true;
                    signal_group(pid, rustix::process::Signal::HUP);
                    kill_at = Some(Box::pin(tokio::time::sleep(stop_timeout)));
                }
                Ok(n) => {
                    if writer.write_all(&typed[..n]).await.is_err() || writer.flush().await.is_err() {
                        input_open = false;
                    }
                }
            },
            () = async { if let Some(sleep) = kill_at.as_mut() { sleep.await } }, if kill_at.is_some() => {
                kill_at = None;
                signal_group(pid, rustix::process::Signal::KILL);
            }
        }
    }
    let rest = stream.flush();
    if !rest.is_empty() {
        on_output(rest).await;
    }
    let status = child.wait().await.map_err(|source| OneOffError::Wait {
        command: text.clone(),
        source,
    })?;
    use std::os::unix::process::ExitStatusExt as _;
    let code = status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
        .unwrap_or(1);
    Ok(Exit { code, stopped })
}

/// A new pseudo-terminal of `size`: the master (for the agent) and the slave (for the command),
/// the slave handed to the app's user so programs that reopen their terminal can.
fn open_pty(
    size: TtySize,
    user: Option<driver::AppUser>,
) -> std::io::Result<(std::fs::File, std::fs::File)> {
    use rustix::pty::OpenptFlags;
    let master =
        rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
    rustix::pty::grantpt(&master)?;
    rustix::pty::unlockpt(&master)?;
    let name = rustix::pty::ptsname(&master, Vec::new())?;
    rustix::termios::tcsetwinsize(
        &master,
        rustix::termios::Winsize {
            ws_row: size.rows,
            ws_col: size.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        },
    )?;
    let path = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(name.as_bytes()));
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(rustix::fs::OFlags::NOCTTY.bits() as i32)
        .open(&path)?;
    if let Some(user) = user {
        std::os::unix::fs::fchown(&slave, Some(user.uid), Some(user.gid))?;
    }
    Ok((std::fs::File::from(master), slave))
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
