//! One tokio task per instance: wait for its process, restart it with backoff when it exits on
//! its own, end its process group (SIGTERM, then SIGKILL) when asked to stop.
//!
//! The task never kills anything when it is dropped: when the driver (or the agent) goes away,
//! the instances keep running and a later agent adopts them.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rustix::process::Signal;
use tokio::process::Child;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{info, warn};

use super::Shared;
use super::adopt::{self, ProcessIdentity};
use super::logs;
use crate::{DriverError, InstanceSpec, InstanceStatus};

/// How long to wait for a process group to vanish after SIGKILL before giving up on it.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How often a stopping instance's process group is checked.
const STOP_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// The driver's handle on one supervised instance, shared with its supervisor task.
pub(crate) struct Supervised {
    pub(crate) spec: InstanceSpec,
    // std Mutex: every critical section copies or replaces one small value, never across an await.
    status: Mutex<InstanceStatus>,
    /// Set once by `stop`: the supervisor then ends the process group and never restarts it.
    stop: watch::Sender<bool>,
    /// Set when the supervisor task has ended (or was dropped, or never ran).
    done: watch::Sender<bool>,
    /// Set by [`crate::process::ProcessDriver::promote`]: from then on the instance runs, and
    /// restarts, at the agent's priority rather than the lower `spec.confinement.nice`.
    promoted: AtomicBool,
}

/// The process an instance currently is.
pub(crate) enum RunningProcess {
    /// Started by this agent process: waiting on it also reaps it.
    Child { child: Child, pid: u32 },
    /// Started by an earlier agent process: not our child, so only its liveness can be polled.
    Adopted(ProcessIdentity),
}

/// Exponential backoff between restarts, reset once a process has run long enough.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    next: Duration,
}

impl Supervised {
    pub(crate) fn new(spec: InstanceSpec, status: InstanceStatus) -> Arc<Supervised> {
        Arc::new(Supervised {
            spec,
            status: Mutex::new(status),
            stop: watch::Sender::new(false),
            done: watch::Sender::new(false),
            promoted: AtomicBool::new(false),
        })
    }

    /// Whether the instance was promoted to the agent's priority (see `promoted`).
    pub(crate) fn promoted(&self) -> bool {
        self.promoted.load(Ordering::Acquire)
    }

    /// Marks the instance promoted; returns whether it had a lower start priority to leave.
    pub(crate) fn promote(&self) -> bool {
        self.promoted.store(true, Ordering::Release);
        self.spec.confinement.nice.is_some()
    }

    pub(crate) fn status(&self) -> InstanceStatus {
        lock(&self.status).clone()
    }

    pub(crate) fn set_running(&self, pid: u32) {
        self.set_status(InstanceStatus::Running { pid, restarts: 0 });
    }

    pub(crate) fn is_done(&self) -> bool {
        *self.done.borrow()
    }

    /// Marks the instance as done without a supervisor (a start that failed).
    pub(crate) fn abandon(&self, status: InstanceStatus) {
        self.set_status(status);
        self.done.send_replace(true);
    }

    /// Asks the supervisor to stop the instance and resolves once it has.
    pub(crate) async fn stop_and_wait(&self) {
        self.stop.send_replace(true);
        let mut done = self.done.subscribe();
        // An error means the sender is gone, which cannot happen while `self` lives.
        let _ = done.wait_for(|done| *done).await;
    }

    fn set_status(&self, status: InstanceStatus) {
        *lock(&self.status) = status;
    }
}

impl RunningProcess {
    pub(crate) fn pid(&self) -> u32 {
        match self {
            RunningProcess::Child { pid, .. } => *pid,
            RunningProcess::Adopted(identity) => identity.pid,
        }
    }

    /// Resolves when the process has exited, with its exit code when it was our child.
    async fn wait(&mut self, poll_interval: Duration) -> Option<i32> {
        match self {
            RunningProcess::Child { child, pid } => match child.wait().await {
                Ok(status) => exit_code(status),
                Err(error) => {
                    warn!(message = "Cannot wait for the instance process.", pid = *pid, %error);
                    None
                }
            },
            RunningProcess::Adopted(identity) => loop {
                tokio::time::sleep(poll_interval).await;
                if !adopt::is_alive(*identity) {
                    return None;
                }
            },
        }
    }

    /// `Some(exit code)` once the process has exited (reaping it when it is our child).
    fn try_reap(&mut self) -> Option<Option<i32>> {
        match self {
            RunningProcess::Child { child, .. } => match child.try_wait() {
                Ok(Some(status)) => Some(exit_code(status)),
                Ok(None) => None,
                // Someone else reaped it: it is gone either way.
                Err(_) => Some(None),
            },
            RunningProcess::Adopted(identity) => (!adopt::is_alive(*identity)).then_some(None),
        }
    }
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration, reset_after: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            reset_after,
            next: initial,
        }
    }

    /// The delay before the next start, given how long the process that just ended had run.
    pub(crate) fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= self.reset_after {
            self.next = self.initial;
        }
        let delay = self.next.min(self.max);
        self.next = self.next.checked_mul(2).unwrap_or(self.max).min(self.max);
        delay
    }
}

/// Starts the instance's command: `/bin/sh -c <command>` in its own process group, in the
/// workdir, with a clean environment, stdin null and stdout+stderr appended to `output.log`.
/// Records its pid file; a process whose pid file cannot be written is killed again, because an
/// instance that a restarted agent could not find must not run.
pub(crate) async fn spawn_instance(
    shared: &Shared,
    spec: &InstanceSpec,
    promoted: bool,
) -> Result<RunningProcess, DriverError> {
    let instance_id = &spec.instance_id;
    let dir = shared.instance_dir(instance_id);
    let io_error = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| DriverError::Io {
            what,
            instance_id: instance_id.clone(),
            path,
            source,
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(io_error("cannot create the instance directory", &dir))?;
    let log_path = dir.join(logs::OUTPUT_LOG);
    let stdout = logs::open_for_child(&log_path)
        .map_err(io_error("cannot open the output log", &log_path))?;
    let stderr = stdout.try_clone().map_err(io_error(
        "cannot duplicate the output log handle",
        &log_path,
    ))?;

    spec.confinement
        .prepare()
        .map_err(io_error("cannot prepare the private temp folder", &dir))?;
    // A promoted instance (one that passed its gate and serves) restarts at the agent's priority.
    let mut command = if promoted && spec.confinement.nice.is_some() {
        crate::Confinement {
            nice: None,
            ..spec.confinement.clone()
        }
        .command(&spec.command, &spec.workdir)
    } else {
        spec.confinement.command(&spec.command, &spec.workdir)
    };
    command
        .env_clear()
        .envs(child_env(spec))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0)
        // Instances outlive the agent: dropping the handle must never kill them.
        .kill_on_drop(false);
    let spawn_error = |source| DriverError::Spawn {
        instance_id: instance_id.clone(),
        command: spec.command.clone(),
        workdir: spec.workdir.clone(),
        source,
    };
    let mut child = command.spawn().map_err(spawn_error)?;
    let Some(pid) = child.id() else {
        return Err(spawn_error(io::Error::other(
            "the process was reaped before its pid was read",
        )));
    };

    let stat_path = Path::new("/proc").join(pid.to_string()).join("stat");
    let pid_path = dir.join(super::PID_FILE);
    let recorded = match adopt::identity_of(pid) {
        // Even a child that exited at once is still a zombie here, so `None` means no /proc.
        None => Err(io_error("cannot read the start time", &stat_path)(
            io::Error::from(io::ErrorKind::NotFound),
        )),
        Some(identity) => adopt::write_pid_file(&pid_path, identity)
            .map_err(io_error("cannot write the pid file", &pid_path)),
    };
    if let Err(error) = recorded {
        if let Err(kill_error) = adopt::signal_group(pid, Signal::KILL) {
            warn!(message = "Cannot kill an unrecorded instance process.", pid, error = %kill_error);
        }
        // Reap it; its exit status is of no interest.
        let _ = child.wait().await;
        return Err(error);
    }
    Ok(RunningProcess::Child { child, pid })
}

/// The supervisor task of one instance. Ends when the instance is stopped, or (leaving the
/// process alone) when the driver is dropped.
pub(crate) async fn run(
    shared: Arc<Shared>,
    supervised: Arc<Supervised>,
    mut process: RunningProcess,
    mut shutdown: watch::Receiver<()>,
) {
    /// Whatever ends the task (return, panic, runtime shutdown), `stop` callers are released.
    struct DoneOnDrop(Arc<Supervised>);
    impl Drop for DoneOnDrop {
        fn drop(&mut self) {
            self.0.done.send_replace(true);
        }
    }
    let _done = DoneOnDrop(Arc::clone(&supervised));

    enum Outcome {
        Shutdown,
        Stop,
        Exited(Option<i32>),
    }

    let spec = &supervised.spec;
    let config = &shared.config;
    let dir = shared.instance_dir(&spec.instance_id);
    let pid_path = dir.join(super::PID_FILE);
    let mut stop = supervised.stop.subscribe();
    let mut backoff = Backoff::new(
        config.backoff_initial,
        config.backoff_max,
        config.backoff_reset_after,
    );
    let mut restarts = 0u32;

    loop {
        let started_at = Instant::now();
        let outcome = tokio::select! {
            _ = shutdown.changed() => Outcome::Shutdown,
            _ = stop.wait_for(|stopping| *stopping) => Outcome::Stop,
            exit = watch_process(&mut process, &dir, config) => Outcome::Exited(exit),
        };
        let last_exit = match outcome {
            Outcome::Shutdown => return,
            Outcome::Stop => {
                let last_exit = terminate(&mut process, spec.stop_timeout).await;
                remove_pid_file(&pid_path);
                info!(message = "Instance stopped.", last_exit);
                supervised.set_status(InstanceStatus::Stopped { last_exit });
                return;
            }
            Outcome::Exited(last_exit) => last_exit,
        };

        remove_pid_file(&pid_path);
        let pid = process.pid();
        if adopt::group_alive(pid) {
            // The app's own children would hold its port or duplicate its work: end them too.
            terminate(&mut process, spec.stop_timeout).await;
        }
        if *stop.borrow() {
            info!(message = "Instance stopped.", last_exit);
            supervised.set_status(InstanceStatus::Stopped { last_exit });
            return;
        }
        warn!(
            message = "Instance exited unexpectedly.",
            pid, last_exit, restarts
        );

        let mut delay = backoff.next_delay(started_at.elapsed());
        loop {
            supervised.set_status(InstanceStatus::Restarting {
                restarts,
                last_exit,
            });
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = stop.wait_for(|stopping| *stopping) => {
                    info!(message = "Instance stopped while waiting to restart.", last_exit);
                    supervised.set_status(InstanceStatus::Stopped { last_exit });
                    return;
                }
                () = tokio::time::sleep(delay) => {}
            }
            restarts = restarts.saturating_add(1);
            let promoted = supervised.promoted();
            match spawn_instance(&shared, spec, promoted).await {
                Ok(started) => {
                    process = started;
                    let pid = process.pid();
                    info!(message = "Instance restarted.", pid, restarts);
                    supervised.set_status(InstanceStatus::Running { pid, restarts });
                    if !promoted && supervised.promoted() {
                        // Promoted while this start was under way, after `promote` read the
                        // previous pid: promote this process here.
                        super::promote_pid(&spec.instance_id, pid);
                    }
                    break;
                }
                Err(error) => {
                    warn!(message = "Cannot restart instance.", restarts, %error);
                    delay = backoff.next_delay(Duration::ZERO);
                }
            }
        }
    }
}

/// Ends a process group: SIGTERM, up to `stop_timeout` for every member to exit, then SIGKILL.
/// Returns the leader's exit code when it was our child.
pub(crate) async fn terminate(process: &mut RunningProcess, stop_timeout: Duration) -> Option<i32> {
    let pid = process.pid();
    let mut last_exit = None;
    signal(process, &mut last_exit, Signal::TERM);
    if !wait_group_gone(process, &mut last_exit, stop_timeout).await {
        warn!(
            message = "Instance did not stop within its stop timeout; sending SIGKILL.",
            pid,
            stop_timeout_ms = u64::try_from(stop_timeout.as_millis()).unwrap_or(u64::MAX),
        );
        signal(process, &mut last_exit, Signal::KILL);
        if !wait_group_gone(process, &mut last_exit, KILL_GRACE).await {
            warn!(message = "Instance process group survived SIGKILL.", pid);
        }
    }
    last_exit.flatten()
}

/// Signals the instance's process group, and its leader by pid when the leader has left the
/// group (`setsid`); never twice to the same process, since some apps read a second SIGTERM as
/// "quit now".
fn signal(process: &mut RunningProcess, last_exit: &mut Option<Option<i32>>, signal: Signal) {
    let pid = process.pid();
    if let Err(error) = adopt::signal_group(pid, signal) {
        warn!(message = "Cannot signal the instance process group.", pid, ?signal, %error);
    }
    if last_exit.is_none() {
        *last_exit = process.try_reap();
    }
    let leader_left_group = last_exit.is_none()
        && adopt::process_group_of(pid).is_some_and(|group| group != i64::from(pid));
    if leader_left_group && let Err(error) = adopt::signal_process(pid, signal) {
        warn!(message = "Cannot signal the instance process.", pid, ?signal, %error);
    }
}

/// Waits (up to `timeout`) until the leader has exited (and, when it is our child, been reaped)
/// and no live process is left in its group. Returns whether both hold.
async fn wait_group_gone(
    process: &mut RunningProcess,
    last_exit: &mut Option<Option<i32>>,
    timeout: Duration,
) -> bool {
    let pid = process.pid();
    let deadline = Instant::now() + timeout;
    loop {
        // The group is checked first: once it looks empty, the leader is at most a zombie, so
        // the reap right after it collects the exit status.
        let group_gone = !adopt::group_alive(pid);
        if last_exit.is_none() {
            *last_exit = process.try_reap();
        }
        if group_gone && last_exit.is_some() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(STOP_POLL_INTERVAL).await;
    }
}

/// Waits for the process to exit, rotating its output log meanwhile.
async fn watch_process(
    process: &mut RunningProcess,
    dir: &Path,
    config: &super::ProcessDriverConfig,
) -> Option<i32> {
    let mut rotation = tokio::time::interval(config.log_check_interval);
    rotation.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            exit = process.wait(config.liveness_poll_interval) => return exit,
            _ = rotation.tick() => rotate_logs(dir, config.log_limit_bytes).await,
        }
    }
}

async fn rotate_logs(dir: &Path, limit: u64) {
    let owned_dir = dir.to_path_buf();
    // Rotation copies up to `limit` bytes: keep that off the runtime's worker threads.
    let rotated =
        tokio::task::spawn_blocking(move || logs::rotate_if_needed(&owned_dir, limit)).await;
    match rotated {
        Ok(Ok(_)) => {}
        Ok(Err(error)) => {
            let path = dir.join(logs::OUTPUT_LOG);
            warn!(message = "Cannot rotate the output log.", path = %path.display(), %error);
        }
        Err(error) => warn!(message = "Output log rotation task failed.", %error),
    }
}

/// The instance's whole environment: a few of the agent's variables (`HOME` and `TMPDIR` its
/// private folder when it has one), the spec's env, `PORT`.
fn child_env(spec: &InstanceSpec) -> Vec<(OsString, OsString)> {
    let mut env = spec.confinement.inherited_env();
    env.extend(
        spec.env
            .iter()
            .map(|(key, value)| (OsString::from(key), OsString::from(value))),
    );
    env.push(("PORT".into(), spec.port.to_string().into()));
    env
}

fn remove_pid_file(path: &Path) {
    if let Err(error) = adopt::remove_pid_file(path) {
        warn!(message = "Cannot remove the pid file.", path = %path.display(), %error);
    }
}

/// The exit code, or 128 + the signal number for a process killed by a signal (as shells say).
fn exit_code(status: ExitStatus) -> Option<i32> {
    status
        .code()
        .or_else(|| status.signal().map(|signal| 128 + signal))
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A status is replaced whole, so a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
