//! The Driver trait: how the agent starts, stops, adopts and reads the logs of instances.
//!
//! A driver knows nothing of the proxy, the store or deployments: it is told what to run and
//! reports what it sees. `process` (children in their own process group) is the embedded default;
//! `container` runs images through the Docker Engine API (which podman serves too); `swarm` runs
//! each release of each service as a Docker Swarm service.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cgroup;
pub mod confine;
pub mod container;
pub mod priority;
pub mod process;
pub mod sandbox;
pub mod swarm;

pub use confine::{AppUser, Confinement, Isolation};

/// Everything a driver needs to run one instance.
#[derive(Clone)]
pub struct InstanceSpec {
    /// Unique across the host, stable for the instance's life: `logistix-production-r3-web-1`.
    pub instance_id: String,
    /// The unpacked release folder the command runs in (process driver; the container driver
    /// runs in the image's own working directory and ignores it).
    pub workdir: PathBuf,
    /// A shell command line, run with `/bin/sh -c`. The container driver runs it the same way
    /// inside the image (replacing the image's entrypoint and command); empty means "the image's
    /// own entrypoint and command".
    pub command: String,
    /// The resolved environment (secrets included). Never logged, never written to disk (the
    /// container driver writes it to a tmpfs only, see [`container`]).
    ///
    /// The container driver also copies `ROLLWAY_APP`, `ROLLWAY_ENVIRONMENT` and
    /// `ROLLWAY_RELEASE` into the container's labels, so they must never hold secrets.
    pub env: Vec<(String, String)>,
    /// The image the container driver runs: a reference the engine already has, best its
    /// content-addressed id (`sha256:...`, from [`container::ContainerDriver::image_digest`]) so a
    /// moved tag cannot change what a release runs. `None` for the process driver, which ignores
    /// it; the container driver refuses a spec without one.
    pub image: Option<String>,
    /// Given to the instance as `PORT`; it must listen on 127.0.0.1:PORT.
    pub port: u16,
    /// Time between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    /// Who the process runs as and what it may touch (process driver); the container driver
    /// takes `user` as the container's user when the image would run as root.
    pub confinement: Confinement,
    /// Where the instance runs on a cluster: the swarm driver's service, slot and placement.
    /// `None` for the process and container drivers, which ignore it; the swarm driver refuses
    /// a spec without one.
    pub cluster: Option<swarm::ClusterSpec>,
}

impl std::fmt::Debug for InstanceSpec {
    // Deliberately leaves out `env`: it holds secret values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("instance_id", &self.instance_id)
            .field("workdir", &self.workdir)
            .field("command", &self.command)
            .field("image", &self.image)
            .field("port", &self.port)
            .field("confinement", &self.confinement)
            .field("cluster", &self.cluster)
            .finish_non_exhaustive()
    }
}

/// What a driver sees of an instance.
///
/// `last_exit` is the exit code, or 128 + the signal number when a signal ended the process (as
/// shells report it); `None` when it is not known (an adopted process is not our child).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum InstanceStatus {
    /// The process runs; `restarts` counts crash restarts since it was started.
    Running { pid: u32, restarts: u32 },
    /// It crashed and waits for its backoff before the next start.
    Restarting {
        restarts: u32,
        last_exit: Option<i32>,
    },
    /// It was stopped, or its supervisor gave up.
    Stopped { last_exit: Option<i32> },
    /// The driver has no such instance.
    Unknown,
}

/// One line of an instance's captured output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub instance_id: String,
    pub line: String,
}

/// Where a follower of an instance's output (`rollway logs -f`) has read up to.
///
/// Opaque to the caller: get the first one from [`Driver::logs_after`] with `None` and pass back
/// the one each call returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct LogCursor {
    /// Process driver: byte offset into the current output file, always just after a complete
    /// line. Container driver: the engine's timestamp (nanoseconds since the Unix epoch) of the
    /// last line handed out.
    pub(crate) offset: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start instance `{instance_id}` (`{command}` in `{workdir}`)")]
    Spawn {
        instance_id: String,
        command: String,
        workdir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no instance `{0}`")]
    UnknownInstance(String),
    /// Instance ids name directories; they must be one plain path component.
    #[error(
        "invalid instance id `{0}`: use letters, digits, `-`, `_` and `.`, not starting with `.`"
    )]
    InvalidInstanceId(String),
    /// `start` of an instance that already runs (supervised here, or left by an earlier agent
    /// process: then `adopt` or `stop` it first).
    #[error("instance `{instance_id}` already runs (pid {pid})")]
    AlreadyRunning { instance_id: String, pid: u32 },
    #[error("{what} for instance `{instance_id}` at `{path}`")]
    Io {
        what: &'static str,
        instance_id: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A spec this driver cannot run: the container driver without an image, an env name that
    /// is not a shell identifier, an image without a command.
    #[error("cannot run instance `{instance_id}`: {reason}")]
    InvalidSpec { instance_id: String, reason: String },
    /// The container engine failed or refused an operation on an instance's container.
    #[error("{what} for instance `{instance_id}` (container `{container}`)")]
    Engine {
        what: &'static str,
        instance_id: String,
        container: String,
        #[source]
        source: container::EngineError,
    },
    #[error("cannot signal instance `{instance_id}` (pid {pid})")]
    Signal {
        instance_id: String,
        pid: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The operations every driver offers. Futures are `Send` so the agent can drive them anywhere.
pub trait Driver: Send + Sync + 'static {
    /// Starts the instance and supervises it (restart with backoff when it crashes).
    fn start(&self, spec: InstanceSpec) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// Takes over an instance started by an earlier agent process. Returns false when it no longer
    /// runs (then nothing is supervised and the caller decides whether to start it again).
    fn adopt(&self, spec: InstanceSpec) -> impl Future<Output = Result<bool, DriverError>> + Send;

    /// SIGTERM (or the equivalent), then SIGKILL after `spec.stop_timeout`; resolves once it is gone
    /// and will not be restarted. Stopping an instance that does not run is `Ok`; one left running
    /// by an earlier agent process (see [`Driver::running`]) is stopped without being adopted.
    fn stop(&self, instance_id: &str) -> impl Future<Output = Result<(), DriverError>> + Send;

    /// What this driver process supervises; `Unknown` for instances it never started or adopted.
    fn status(&self, instance_id: &str) -> InstanceStatus;

    /// Instances this driver's state shows as running, including ones from an earlier agent process.
    fn running(&self) -> Vec<String>;

    /// The last `n` lines of output of the instance, oldest first (also after it stopped, and for
    /// one an earlier agent process ran). `UnknownInstance` when it never ran on this host.
    fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError>;

    /// The complete lines written after `cursor`, and the cursor to pass next time (for
    /// `rollway logs -f`). `None` means "from now": no lines, and a cursor at the current end.
    ///
    /// To show a tail and then follow it, take the cursor first, then call [`Driver::logs`]: a
    /// line written in between is shown twice rather than lost. Lines written between two calls
    /// that span a log rotation may be skipped.
    fn logs_after(
        &self,
        instance_id: &str,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<LogLine>, LogCursor), DriverError>;
}
