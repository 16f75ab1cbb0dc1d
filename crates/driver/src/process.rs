//! The process driver, the agent's embedded default: each instance is `/bin/sh -c <command>` in
//! its own process group, supervised by a tokio task, surviving the agent.
//!
//! Per instance it keeps exactly two kinds of files under `<state_dir>/<instance_id>/`:
//! `pid` (pid and start time, so a reused pid is never mistaken for the instance) and
//! `output.log` plus its rotation `output.log.1`. The env is never written anywhere: it reaches
//! the child through `execve`'s environment only, never its argv.
//!
//! Dropping the driver ends the supervisor tasks but not the instances; a driver created later on
//! the same state dir takes them over with [`Driver::adopt`].

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument;

use crate::{Driver, DriverError, InstanceSpec, InstanceStatus, LogCursor, LogLine};

mod adopt;
mod logs;
mod supervise;

use adopt::ProcessIdentity;
use supervise::{RunningProcess, Supervised};

/// Tunables of the process driver; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct ProcessDriverConfig {
    /// `output.log` is rotated once it exceeds this many bytes; `output.log.1` keeps at most as
    /// many. Default 10 MiB.
    pub log_limit_bytes: u64,
    /// How often the size of `output.log` is checked; it can grow past the limit for this long.
    /// Default 1 s.
    pub log_check_interval: Duration,
    /// Delay before the first restart after a crash; it doubles with each crash. Default 100 ms.
    pub backoff_initial: Duration,
    /// Upper bound of the restart delay. Default 30 s.
    pub backoff_max: Duration,
    /// A process that ran this long resets the delay to `backoff_initial`. Default 60 s.
    pub backoff_reset_after: Duration,
    /// How often an adopted instance (not our child, so it cannot be waited on) is checked for
    /// life. Default 200 ms.
    pub liveness_poll_interval: Duration,
    /// Time between SIGTERM and SIGKILL when stopping an instance this driver does not
    /// supervise (one left by an earlier agent process, so without its spec). Default 10 s.
    pub orphan_stop_timeout: Duration,
}

/// The process driver. Share it behind an `Arc`; dropping the last handle leaves the instances
/// running.
pub struct ProcessDriver {
    shared: Arc<Shared>,
    // std Mutex: the critical sections look up, insert or list entries and never await.
    instances: Mutex<HashMap<String, Arc<Supervised>>>,
    /// Never sent on: dropping it (with the driver) tells every supervisor task to return and
    /// leave its process running.
    shutdown: watch::Sender<()>,
}

impl Default for ProcessDriverConfig {
    fn default() -> ProcessDriverConfig {
        ProcessDriverConfig {
            log_limit_bytes: 10 * 1024 * 1024,
            log_check_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            backoff_reset_after: Duration::from_secs(60),
            liveness_poll_interval: Duration::from_millis(200),
            orphan_stop_timeout: Duration::from_secs(10),
        }
    }
}

impl ProcessDriver {
    /// A driver keeping its per-instance files under `state_dir` (created if missing).
    pub fn new(state_dir: PathBuf) -> io::Result<ProcessDriver> {
        ProcessDriver::with_config(state_dir, ProcessDriverConfig::default())
    }

    pub fn with_config(
        state_dir: PathBuf,
        config: ProcessDriverConfig,
    ) -> io::Result<ProcessDriver> {
        std::fs::create_dir_all(&state_dir).map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot create the driver state dir `{}`: {error}",
                    state_dir.display()
                ),
            )
        })?;
        Ok(ProcessDriver {
            shared: Arc::new(Shared { state_dir, config }),
            instances: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(()),
        })
    }

    pub fn state_dir(&self) -> &Path {
        &self.shared.state_dir
    }

    /// The supervised entry of `instance_id` unless its supervisor has ended.
    fn active(&self, instance_id: &str) -> Option<Arc<Supervised>> {
        lock(&self.instances)
            .get(instance_id)
            .filter(|supervised| !supervised.is_done())
            .cloned()
    }

    /// Registers `spec` unless an active entry exists (then returns that entry's pid in `Err`).
    fn reserve(&self, spec: &InstanceSpec, status: InstanceStatus) -> Result<Arc<Supervised>, u32> {
        let mut instances = lock(&self.instances);
        if let Some(existing) = instances.get(&spec.instance_id)
            && !existing.is_done()
        {
            let pid = match existing.status() {
                InstanceStatus::Running { pid, .. } => pid,
                _ => 0,
            };
            return Err(pid);
        }
        let supervised = Supervised::new(spec.clone(), status);
        instances.insert(spec.instance_id.clone(), Arc::clone(&supervised));
        Ok(supervised)
    }

    fn supervise(&self, supervised: Arc<Supervised>, process: RunningProcess) {
        let span = tracing::info_span!("instance", instance = %supervised.spec.instance_id);
        tokio::spawn(
            supervise::run(
                Arc::clone(&self.shared),
                supervised,
                process,
                self.shutdown.subscribe(),
            )
            .instrument(span),
        );
    }

    /// The identity in the instance's pid file, if that process is alive.
    fn live_identity(&self, instance_id: &str) -> Result<Option<ProcessIdentity>, DriverError> {
        let path = self.shared.pid_path(instance_id);
        let identity = adopt::read_pid_file(&path).map_err(|source| DriverError::Io {
            what: "cannot read the pid file",
            instance_id: instance_id.to_owned(),
            path: path.clone(),
            source,
        })?;
        Ok(identity.filter(|identity| adopt::is_alive(*identity)))
    }

    /// The instance's directory; an instance that never ran here is unknown.
    fn existing_instance_dir(&self, instance_id: &str) -> Result<PathBuf, DriverError> {
        validate_instance_id(instance_id)?;
        let dir = self.shared.instance_dir(instance_id);
        if dir.is_dir() {
            Ok(dir)
        } else {
            Err(DriverError::UnknownInstance(instance_id.to_owned()))
        }
    }

    /// Promotes an instance started below the agent's priority (`spec.confinement.nice`, the
    /// deploy's own work: `crate::priority`) to the agent's, every thread of its process group,
    /// once it passed its health gate and before it takes traffic; its restarts run at the
    /// agent's priority from now on. Nothing to do for an instance started at the agent's
    /// priority, or one this driver does not supervise.
    pub fn promote(&self, instance_id: &str) {
        let Some(supervised) = self.active(instance_id) else {
            return;
        };
        if !supervised.promote() {
            return;
        }
        if let InstanceStatus::Running { pid, .. } = supervised.status() {
            promote_pid(instance_id, pid);
        }
    }

    fn remove_pid_file(&self, instance_id: &str) -> Result<(), DriverError> {
        let path = self.shared.pid_path(instance_id);
        adopt::remove_pid_file(&path).map_err(|source| DriverError::Io {
            what: "cannot remove the pid file",
            instance_id: instance_id.to_owned(),
            path,
            source,
        })
    }
}

/// Sets the process group `pid` leads (an instance's) to the agent's priority; a failure is logged
/// (the instance then serves at its lower start priority).
fn promote_pid(instance_id: &str, pid: u32) {
    let nice = crate::priority::own_nice();
    match crate::priority::promote_group(pid, nice) {
        Ok(()) => tracing::debug!(
            message = "Instance promoted to the agent's priority.",
            instance = %instance_id,
            pid,
            nice,
        ),
        Err(error) => tracing::warn!(
            message = "Cannot promote an instance to the agent's priority; it serves at its start priority.",
            instance = %instance_id,
            pid,
            %error,
        ),
    }
}

/// An instance adopted to serve at the agent's priority that still runs at the deploy's lower one
/// (`crate::priority::deploy_nice`: its agent was killed between its start and its health gate, so
/// nothing promoted it) is promoted now; nothing else would until its next restart.
fn promote_if_left_lowered(instance_id: &str, pid: u32) {
    let Some(lowered) = crate::priority::deploy_nice() else {
        return;
    };
    if crate::priority::observe(pid).is_ok_and(|observed| observed.nice == lowered) {
        promote_pid(instance_id, pid);
    }
}

impl Driver for ProcessDriver {
    async fn start(&self, spec: InstanceSpec) -> Result<(), DriverError> {
        validate_instance_id(&spec.instance_id)?;
        if let Some(identity) = self.live_identity(&spec.instance_id)?
            && self.active(&spec.instance_id).is_none()
        {
            return Err(DriverError::AlreadyRunning {
                instance_id: spec.instance_id,
                pid: identity.pid,
            });
        }
        let initial = InstanceStatus::Restarting {
            restarts: 0,
            last_exit: None,
        };
        let supervised =
            self.reserve(&spec, initial)
                .map_err(|pid| DriverError::AlreadyRunning {
                    instance_id: spec.instance_id.clone(),
                    pid,
                })?;
        match supervise::spawn_instance(&self.shared, &spec, false).await {
            Ok(process) => {
                let pid = process.pid();
                tracing::info!(
                    message = "Instance started.",
                    instance = %spec.instance_id,
                    pid,
                );
                supervised.set_running(pid);
                self.supervise(supervised, process);
                Ok(())
            }
            Err(error) => {
                supervised.abandon(InstanceStatus::Stopped { last_exit: None });
                Err(error)
            }
        }
    }

    async fn adopt(&self, spec: InstanceSpec) -> Result<bool, DriverError> {
        validate_instance_id(&spec.instance_id)?;
        if self.active(&spec.instance_id).is_some() {
            return Ok(true);
        }
        let Some(identity) = self.live_identity(&spec.instance_id)? else {
            self.remove_pid_file(&spec.instance_id)?;
            return Ok(false);
        };
        let running = InstanceStatus::Running {
            pid: identity.pid,
            restarts: 0,
        };
        let Ok(supervised) = self.reserve(&spec, running) else {
            // Adopted concurrently by another call.
            return Ok(true);
        };
        tracing::info!(
            message = "Instance adopted.",
            instance = %spec.instance_id,
            pid = identity.pid,
        );
        if spec.confinement.nice.is_none() {
            promote_if_left_lowered(&spec.instance_id, identity.pid);
        }
        self.supervise(supervised, RunningProcess::Adopted(identity));
        Ok(true)
    }

    async fn stop(&self, instance_id: &str) -> Result<(), DriverError> {
        validate_instance_id(instance_id)?;
        if let Some(supervised) = self.active(instance_id) {
            supervised.stop_and_wait().await;
            return Ok(());
        }
        // Not supervised here: an instance left by an earlier agent process, or nothing.
        if let Some(identity) = self.live_identity(instance_id)? {
            tracing::info!(
                message = "Stopping an instance this driver does not supervise.",
                instance = %instance_id,
                pid = identity.pid,
            );
            let mut process = RunningProcess::Adopted(identity);
            supervise::terminate(&mut process, self.shared.config.orphan_stop_timeout).await;
        }
        self.remove_pid_file(instance_id)
    }

    fn status(&self, instance_id: &str) -> InstanceStatus {
        lock(&self.instances)
            .get(instance_id)
            .map_or(InstanceStatus::Unknown, |supervised| supervised.status())
    }

    fn running(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(&self.shared.state_dir) else {
            return Vec::new();
        };
        let mut running: Vec<String> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|instance_id| {
                let path = self.shared.pid_path(instance_id);
                matches!(adopt::read_pid_file(&path), Ok(Some(identity)) if adopt::is_alive(identity))
            })
            .collect();
        running.sort();
        running
    }

    fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError> {
        let dir = self.existing_instance_dir(instance_id)?;
        let lines = logs::tail(&dir, n).map_err(|source| DriverError::Io {
            what: "cannot read the output log",
            instance_id: instance_id.to_owned(),
            path: dir.join(logs::OUTPUT_LOG),
            source,
        })?;
        Ok(log_lines(instance_id, lines))
    }

    fn logs_after(
        &self,
        instance_id: &str,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<LogLine>, LogCursor), DriverError> {
        let dir = self.existing_instance_dir(instance_id)?;
        let (lines, cursor) = logs::read_after(&dir, cursor).map_err(|source| DriverError::Io {
            what: "cannot read the output log",
            instance_id: instance_id.to_owned(),
            path: dir.join(logs::OUTPUT_LOG),
            source,
        })?;
        Ok((log_lines(instance_id, lines), cursor))
    }
}

/// The name of the pid file inside an instance's directory.
pub(crate) const PID_FILE: &str = "pid";

/// What the driver and its supervisor tasks share.
pub(crate) struct Shared {
    pub(crate) state_dir: PathBuf,
    pub(crate) config: ProcessDriverConfig,
}

impl Shared {
    pub(crate) fn instance_dir(&self, instance_id: &str) -> PathBuf {
        self.state_dir.join(instance_id)
    }

    fn pid_path(&self, instance_id: &str) -> PathBuf {
        self.instance_dir(instance_id).join(PID_FILE)
    }
}

/// Instance ids become directory names, so they must be one plain path component.
pub(crate) fn validate_instance_id(instance_id: &str) -> Result<(), DriverError> {
    let valid = !instance_id.is_empty()
        && !instance_id.starts_with('.')
        && instance_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(DriverError::InvalidInstanceId(instance_id.to_owned()))
    }
}

fn log_lines(instance_id: &str, lines: Vec<String>) -> Vec<LogLine> {
    lines
        .into_iter()
        .map(|line| LogLine {
            instance_id: instance_id.to_owned(),
            line,
        })
        .collect()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are inserted or replaced whole, so a panic elsewhere cannot leave the map torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
