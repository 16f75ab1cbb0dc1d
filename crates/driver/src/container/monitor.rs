//! One tokio task per instance that polls the engine for its container's state and keeps the
//! driver's view of it (`Driver::status` is synchronous, so it reads this copy).
//!
//! The task never restarts anything (the engine's restart policy does) and never stops anything;
//! dropping the driver ends it and leaves the container running.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{ContainerInspectResponse, ContainerStateStatusEnum};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::InstanceStatus;

/// The driver's handle on one instance's container, shared with its monitor task.
pub(crate) struct Watched {
    pub(crate) instance_id: String,
    pub(crate) container: String,
    pub(crate) stop_timeout: Duration,
    // std Mutex: every critical section reads or replaces the small state, never across an await.
    state: Mutex<WatchState>,
}

struct WatchState {
    status: InstanceStatus,
    /// Set by `stop` before it asks the engine: from then on the monitor no longer writes the
    /// status, so a poll in flight cannot overwrite the final `Stopped`.
    stopping: bool,
}

impl Watched {
    pub(crate) fn new(
        instance_id: String,
        container: String,
        stop_timeout: Duration,
        status: InstanceStatus,
    ) -> Arc<Watched> {
        Arc::new(Watched {
            instance_id,
            container,
            stop_timeout,
            state: Mutex::new(WatchState {
                status,
                stopping: false,
            }),
        })
    }

    pub(crate) fn status(&self) -> InstanceStatus {
        lock(&self.state).status.clone()
    }

    pub(crate) fn is_active(&self) -> bool {
        !lock(&self.state).stopping
    }

    /// Marks the instance as being stopped; returns false when someone else already did.
    pub(crate) fn begin_stop(&self) -> bool {
        let mut state = lock(&self.state);
        !std::mem::replace(&mut state.stopping, true)
    }

    /// The final status, written by whoever stopped it.
    pub(crate) fn set_stopped(&self, last_exit: Option<i32>) {
        lock(&self.state).status = InstanceStatus::Stopped { last_exit };
    }

    /// Records what the engine reports unless the instance is being stopped. Returns false when
    /// it is, so the monitor can end.
    fn observe(&self, status: InstanceStatus) -> bool {
        let mut state = lock(&self.state);
        if state.stopping {
            return false;
        }
        if state.status != status {
            match &status {
                InstanceStatus::Restarting {
                    restarts,
                    last_exit,
                } => warn!(
                    message = "Instance exited unexpectedly; the engine restarts it.",
                    restarts, last_exit
                ),
                InstanceStatus::Running { pid, restarts } if *restarts > 0 => {
                    info!(message = "Instance restarted.", pid, restarts);
                }
                InstanceStatus::Stopped { last_exit } => {
                    warn!(
                        message = "Instance container is no longer running.",
                        last_exit
                    );
                }
                _ => {}
            }
        }
        state.status = status;
        true
    }
}

/// The instance status that an inspected container shows.
pub(crate) fn status_of(container: &ContainerInspectResponse) -> InstanceStatus {
    let restarts = container
        .restart_count
        .and_then(|count| u32::try_from(count).ok())
        .unwrap_or(0);
    let Some(state) = &container.state else {
        return InstanceStatus::Stopped { last_exit: None };
    };
    let last_exit = state.exit_code.and_then(|code| i32::try_from(code).ok());
    let restarting = state.restarting == Some(true)
        || state.status == Some(ContainerStateStatusEnum::RESTARTING);
    let pid = state
        .pid
        .and_then(|pid| u32::try_from(pid).ok())
        .filter(|pid| *pid > 0);
    match (restarting, state.running == Some(true), pid) {
        (true, _, _) => InstanceStatus::Restarting {
            restarts,
            last_exit,
        },
        (false, true, Some(pid)) => InstanceStatus::Running { pid, restarts },
        // Created but never started, exited for good, or dead.
        _ => InstanceStatus::Stopped { last_exit },
    }
}

/// Polls the container every `interval` until the instance is stopped or the driver dropped.
pub(crate) async fn run(
    docker: Docker,
    watched: Arc<Watched>,
    interval: Duration,
    mut shutdown: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let status = match docker
            .inspect_container(
                &watched.container,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
        {
            Ok(container) => status_of(&container),
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => {
                // Removed behind the driver's back: nothing is left to watch.
                watched.observe(InstanceStatus::Stopped { last_exit: None });
                return;
            }
            Err(error) => {
                warn!(message = "Cannot inspect the instance container.", container = %watched.container, %error);
                continue;
            }
        };
        if !watched.observe(status) {
            return;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The state is replaced whole, so a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
