//! The container driver: each instance is a container of the Docker Engine API (served by Docker
//! and by podman), on the engine's Unix socket, published on 127.0.0.1 only.
//!
//! It does not pull or build on `start` (the agent does that while Preparing, with
//! [`ContainerDriver::pull_image`] or [`ContainerDriver::build_image`]) and knows nothing of the
//! proxy or the store.
//!
//! # Instances
//!
//! - The container of instance `ID` is named `rollway-ID` and labelled `dev.rollway.instance=ID`,
//!   `dev.rollway.owner=<config.owner>` and, from the spec's `ROLLWAY_APP`, `ROLLWAY_ENVIRONMENT`
//!   and `ROLLWAY_RELEASE` variables, `dev.rollway.app`, `.environment`, `.release`. A driver
//!   created after an agent restart finds it by name ([`Driver::adopt`]) and by label
//!   ([`Driver::running`]); containers outlive the driver like the process driver's children.
//! - `PORT` is the port inside the container and on the host: the container's `PORT/tcp` is
//!   published on `127.0.0.1:PORT`, where the proxy reaches it. The app must listen on
//!   `0.0.0.0:$PORT` inside its container (its own network namespace; only the loopback-published
//!   port reaches it from outside), not on `127.0.0.1`, which inside a container is unreachable.
//! - The engine's init is PID 1 (`--init`): it forwards the stop signal to the app and reaps
//!   zombies.
//! - Stop is the engine's graceful stop (the image's stop signal, SIGTERM by default, then
//!   SIGKILL after `stop_timeout`), then the container and its env file are removed. The last
//!   [`ContainerDriverConfig::retained_log_lines`] lines of output are kept in memory first, so
//!   `logs` still answers after a stop (until the agent restarts).
//!
//! # Restarts: the engine's restart policy, not Rollway's supervisor
//!
//! Containers run with the `unless-stopped` restart policy: the engine restarts a container that
//! exits for any reason (the process driver restarts any exit too), with its own backoff
//! (100 ms doubling up to 1 min, reset after 10 s of running), also while no agent runs, which is
//! the point: promise 6 says the agent may die at any moment, and a crashed instance should not
//! wait for it. `unless-stopped` (rather than `on-failure`) also restarts an app that exits 0,
//! and brings instances back after an engine restart. A per-instance task polls the container
//! ([`ContainerDriverConfig::status_poll_interval`]) and reports the engine's restart count and
//! last exit code through [`Driver::status`] exactly as the process driver does
//! (`Running { restarts }`, `Restarting { last_exit }`), so the agent's health gate sees a crash.
//!
//! # Secrets: an env file on a tmpfs, never in the container's config
//!
//! Everything in `docker inspect` (the container's `Config.Env`) is readable by anyone who may
//! talk to the engine and is kept in the engine's state on disk. So the engine is given only
//! `PORT`; the spec's whole env (config and secrets; the driver cannot tell them apart) is
//! written to `<env_dir>/<container>.env`, on a tmpfs in a 0700 directory the agent owns, as
//! `export NAME='value'` lines, bind-mounted read-only at `/run/rollway/env`. The container's
//! entrypoint is `/bin/sh -c '. /run/rollway/env && exec "$@"'` followed by the command, so the
//! app gets the variables in its environment as usual and nothing else changes for it. The file
//! is mode 0600 (readable by the image's numeric `USER` through `chown` when the agent is root;
//! 0644 for a named `USER`, the 0700 directory still keeping other host users out) and removed
//! with the container. The env file survives an agent restart (the engine needs it to restart a
//! crashed container) but not a reboot; `adopt` writes it again from the spec when it is
//! missing. Costs: the image needs `/bin/sh` (distroless images do not have one), and the values
//! are in the app's `/proc/<pid>/environ` like with the process driver.
//!
//! # Logs
//!
//! Through the engine's logs API (the container's stdout and stderr); the cursor of
//! [`Driver::logs_after`] is the engine's timestamp of the last line handed out.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptions, InspectContainerOptions, ListContainersOptions, RemoveContainerOptions,
    StopContainerOptions,
};
use tokio::sync::watch;
use tracing::{Instrument, info, warn};

use crate::process::validate_instance_id;
use crate::{Driver, DriverError, InstanceSpec, InstanceStatus, LogCursor, LogLine};

pub(crate) mod create;
pub(crate) mod engine;
pub(crate) mod env_file;
pub(crate) mod image;
pub(crate) mod logs;
mod monitor;
mod run_once;

pub use create::{
    LABEL_APP, LABEL_ENVIRONMENT, LABEL_INSTANCE, LABEL_OWNER, LABEL_RELEASE, LABEL_RUN_ONCE,
};
pub use engine::EngineError;
pub use image::RegistryCredentials;

use engine::Bridge;
use monitor::Watched;

/// Tunables of the container driver; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct ContainerDriverConfig {
    /// The engine's Unix socket. Default: the path of a `unix://` `DOCKER_HOST`, else
    /// `/var/run/docker.sock` (podman: `$XDG_RUNTIME_DIR/podman/podman.sock`).
    pub socket: PathBuf,
    /// Where the env files go; must be on a tmpfs (checked), and is created 0700. Default:
    /// `$RUNTIME_DIRECTORY/container-env` (systemd's `RuntimeDirectory=`), else
    /// `$XDG_RUNTIME_DIR/rollway-container-env`, else `/dev/shm/rollway-<uid>`. The engine
    /// bind-mounts from this path, so an agent that itself runs in a container must see it at the
    /// same path as the engine's host does.
    pub env_dir: PathBuf,
    /// The value of the `dev.rollway.owner` label on every container this driver creates;
    /// [`Driver::running`] lists only containers with it. Default `rollway`.
    pub owner: String,
    /// The engine network containers join (`None`: the engine's default bridge). Set it to reach
    /// other containers by name, e.g. a PostgreSQL of the same compose project.
    pub network: Option<String>,
    /// How often the state of each instance's container is polled. Default 500 ms.
    pub status_poll_interval: Duration,
    /// How many lines of a container's output are kept in memory when it is stopped and
    /// removed. Default 1000.
    pub retained_log_lines: usize,
    /// Time between the stop signal and SIGKILL when stopping a container this driver does not
    /// watch (one left by an earlier agent process). Default 10 s.
    pub orphan_stop_timeout: Duration,
    /// How long to wait for the engine to start answering a request (builds and pulls stream
    /// for longer; stops wait for their own timeout on top). Default 120 s.
    pub request_timeout: Duration,
}

/// The container driver. Share it behind an `Arc`; dropping it leaves the containers running.
pub struct ContainerDriver {
    docker: Docker,
    bridge: Bridge,
    config: ContainerDriverConfig,
    // std Mutex: the critical sections look up, insert or list entries and never await.
    instances: Mutex<HashMap<String, Arc<Watched>>>,
    /// The last lines of instances stopped (and removed) by this driver.
    // std Mutex: insert or clone one entry, never across an await.
    retained_logs: Mutex<HashMap<String, Vec<String>>>,
    /// Never sent on: dropping it (with the driver) ends every monitor task.
    shutdown: watch::Sender<()>,
}

/// Errors of the driver's own operations (connecting, images, one-off containers); the `Driver`
/// trait's methods return [`DriverError`].
#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("cannot connect to the container engine at `{socket}`")]
    Connect {
        socket: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("cannot keep container env files in `{path}`: {reason}")]
    EnvDir { path: PathBuf, reason: String },
    #[error("cannot start the container driver's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot pack the build context `{context_dir}` of image `{tag}`")]
    Context {
        context_dir: PathBuf,
        tag: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build image `{tag}` from `{context_dir}`")]
    Build {
        tag: String,
        context_dir: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error("building image `{tag}` failed: {message}")]
    BuildFailed { tag: String, message: String },
    #[error("cannot pull image `{reference}`")]
    Pull {
        reference: String,
        #[source]
        source: EngineError,
    },
    #[error("cannot inspect image `{reference}`")]
    Inspect {
        reference: String,
        #[source]
        source: EngineError,
    },
    #[error("the engine reported no id for image `{reference}`")]
    NoImageId { reference: String },
    #[error("cannot run a one-off container of image `{image}`: {reason}")]
    InvalidRunOnce { image: String, reason: String },
    #[error("{what} the one-off container `{container}` of image `{image}`")]
    RunOnce {
        what: &'static str,
        image: String,
        container: String,
        #[source]
        source: EngineError,
    },
    #[error("{what} `{path}` of the one-off container `{container}`")]
    EnvFile {
        what: &'static str,
        container: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Default for ContainerDriverConfig {
    fn default() -> ContainerDriverConfig {
        ContainerDriverConfig {
            socket: default_socket(),
            env_dir: default_env_dir(),
            owner: "rollway".to_owned(),
            network: None,
            status_poll_interval: Duration::from_millis(500),
            retained_log_lines: 1000,
            orphan_stop_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(120),
        }
    }
}

impl ContainerDriver {
    /// Connects to the engine (negotiating the API version) and prepares the env directory.
    pub async fn connect(config: ContainerDriverConfig) -> Result<ContainerDriver, ContainerError> {
        env_file::prepare_dir(&config.env_dir).map_err(|reason| ContainerError::EnvDir {
            path: config.env_dir.clone(),
            reason,
        })?;
        let docker = engine::connect(&config.socket, config.request_timeout)
            .await
            .map_err(|source| ContainerError::Connect {
                socket: config.socket.clone(),
                source,
            })?;
        Ok(ContainerDriver {
            docker,
            bridge: Bridge::new().map_err(ContainerError::Runtime)?,
            config,
            instances: Mutex::new(HashMap::new()),
            retained_logs: Mutex::new(HashMap::new()),
            shutdown: watch::Sender::new(()),
        })
    }

    pub fn config(&self) -> &ContainerDriverConfig {
        &self.config
    }

    /// Builds an image from `context_dir` with `dockerfile` (a path relative to it) and tags it
    /// `tag`; each line of the build's output goes to `on_line` as it comes. Returns the image
    /// id (`sha256:...`), what a release should record.
    pub async fn build_image(
        &self,
        context_dir: &Path,
        dockerfile: &str,
        tag: &str,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<String, ContainerError> {
        image::build(&self.docker, context_dir, dockerfile, tag, &mut on_line).await
    }

    /// The content-addressed id (`sha256:...`) of a local image: running it runs exactly this
    /// image even after the tag moved, so it is what a release records.
    pub async fn image_digest(&self, reference: &str) -> Result<String, ContainerError> {
        image::digest(&self.docker, reference).await
    }

    /// Pulls `reference` (a missing tag means `latest`), progress lines to `on_line`. Returns
    /// the pulled image's id.
    pub async fn pull_image(
        &self,
        reference: &str,
        credentials: Option<RegistryCredentials>,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<String, ContainerError> {
        image::pull(&self.docker, reference, credentials, &mut on_line).await
    }

    /// Runs `command` (a shell command line; empty: the image's own command) once in a new
    /// container of `image` with `env` (through an env file, as for instances), streams its
    /// output to `on_line`, removes the container and returns its exit code. For release
    /// commands: nothing is published and nothing restarts it.
    pub async fn run_once(
        &self,
        image: &str,
        env: &[(String, String)],
        command: &str,
        confinement: &crate::Confinement,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<i32, ContainerError> {
        let request = run_once::RunOnce {
            image,
            env,
            command,
            confinement,
            owner: &self.config.owner,
            network: self.config.network.as_deref(),
            env_dir: &self.config.env_dir,
        };
        run_once::run(&self.docker, request, &mut on_line).await
    }

    /// Removes (killing them if they still run) the one-off containers of `app` in
    /// `environment`, and their env files: what an agent process killed during a release
    /// command left. Only for a restarted agent undoing that deployment, when no release
    /// command of `app` in `environment` can be running legitimately. Returns how many.
    pub async fn remove_run_once(
        &self,
        app: &str,
        environment: &str,
    ) -> Result<usize, EngineError> {
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{LABEL_OWNER}={}", self.config.owner),
                format!("{LABEL_RUN_ONCE}=true"),
                format!("{LABEL_APP}={app}"),
                format!("{LABEL_ENVIRONMENT}={environment}"),
            ],
        )]);
        let options = ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..ListContainersOptions::default()
        };
        let containers = self.docker.list_containers(Some(options)).await?;
        let names: Vec<String> = containers
            .into_iter()
            .filter_map(|container| container.names?.into_iter().next())
            .map(|name| name.trim_start_matches('/').to_owned())
            .collect();
        for name in &names {
            let env_path = env_file::path(&self.config.env_dir, name);
            run_once::remove(&self.docker, name, &env_path).await;
            info!(message = "Removed a one-off container left by an earlier agent.", container = %name);
        }
        Ok(names.len())
    }

    /// The watched entry of `instance_id` unless it is stopping or stopped.
    fn active(&self, instance_id: &str) -> Option<Arc<Watched>> {
        lock(&self.instances)
            .get(instance_id)
            .filter(|watched| watched.is_active())
            .cloned()
    }

    fn watch(&self, watched: Arc<Watched>) {
        lock(&self.instances).insert(watched.instance_id.clone(), Arc::clone(&watched));
        let span = tracing::info_span!("instance", instance = %watched.instance_id);
        tokio::spawn(
            monitor::run(
                self.docker.clone(),
                watched,
                self.config.status_poll_interval,
                self.shutdown.subscribe(),
            )
            .instrument(span),
        );
    }

    fn env_path(&self, container: &str) -> PathBuf {
        env_file::path(&self.config.env_dir, container)
    }

    /// The container as the engine sees it; `None` when there is no such container.
    async fn inspect(
        &self,
        instance_id: &str,
        container: &str,
    ) -> Result<Option<bollard::models::ContainerInspectResponse>, DriverError> {
        match self
            .docker
            .inspect_container(container, None::<InspectContainerOptions>)
            .await
        {
            Ok(inspected) => Ok(Some(inspected)),
            Err(error) => {
                let error = EngineError::from(error);
                if error.is_not_found() {
                    Ok(None)
                } else {
                    Err(engine_error(
                        "cannot inspect the container",
                        instance_id,
                        container,
                        error,
                    ))
                }
            }
        }
    }

    /// Removes the container (forcibly) and its env file; both already gone is fine.
    async fn remove(&self, instance_id: &str, container: &str) -> Result<(), DriverError> {
        let options = RemoveContainerOptions {
            force: true,
            ..RemoveContainerOptions::default()
        };
        if let Err(error) = self.docker.remove_container(container, Some(options)).await {
            let error = EngineError::from(error);
            if !error.is_not_found() {
                return Err(engine_error(
                    "cannot remove the container",
                    instance_id,
                    container,
                    error,
                ));
            }
        }
        let path = self.env_path(container);
        env_file::remove(&path).map_err(|source| DriverError::Io {
            what: "cannot remove the env file",
            instance_id: instance_id.to_owned(),
            path,
            source,
        })
    }

    /// Writes the instance's env file, readable by the image's user.
    async fn write_env_file(
        &self,
        spec: &InstanceSpec,
        container: &str,
        image_user: Option<&str>,
    ) -> Result<(), DriverError> {
        let path = self.env_path(container);
        let run_as = create::run_as(&spec.confinement, image_user);
        let reader = env_file::Reader::of_image_user(run_as.as_deref());
        env_file::write(&path, &spec.env, reader).map_err(|source| DriverError::Io {
            what: "cannot write the env file",
            instance_id: spec.instance_id.clone(),
            path,
            source,
        })
    }

    /// Creates and starts the container of `spec` (no container of that name exists).
    async fn create_and_start(
        &self,
        spec: &InstanceSpec,
        image: &str,
        container: &str,
    ) -> Result<InstanceStatus, DriverError> {
        let instance_id = &spec.instance_id;
        let image_info = self.docker.inspect_image(image).await.map_err(|error| {
            engine_error("cannot find the image", instance_id, container, error)
        })?;
        let image_config = image_info.config.as_ref();
        self.write_env_file(
            spec,
            container,
            image_config.and_then(|config| config.user.as_deref()),
        )
        .await?;
        let created = async {
            let body = create::instance_body(
                spec,
                image,
                image_config,
                &self.config.owner,
                self.config.network.as_deref(),
                &self.env_path(container),
            )
            .map_err(|reason| DriverError::InvalidSpec {
                instance_id: instance_id.clone(),
                reason,
            })?;
            let options = CreateContainerOptions {
                name: Some(container.to_owned()),
                ..CreateContainerOptions::default()
            };
            self.docker
                .create_container(Some(options), body)
                .await
                .map_err(|error| {
                    engine_error("cannot create the container", instance_id, container, error)
                })?;
            self.docker
                .start_container(container, None)
                .await
                .map_err(|error| {
                    engine_error("cannot start the container", instance_id, container, error)
                })?;
            let inspected = self.inspect(instance_id, container).await?;
            Ok(
                inspected.map_or(InstanceStatus::Stopped { last_exit: None }, |inspected| {
                    monitor::status_of(&inspected)
                }),
            )
        }
        .await;
        if created.is_err()
            && let Err(error) = self.remove(instance_id, container).await
        {
            warn!(message = "Cannot clean up after a failed start.", instance = %instance_id, %error);
        }
        created
    }
}

impl Driver for ContainerDriver {
    async fn start(&self, spec: InstanceSpec) -> Result<(), DriverError> {
        validate_instance_id(&spec.instance_id)?;
        let instance_id = spec.instance_id.clone();
        let invalid = |reason: String| DriverError::InvalidSpec {
            instance_id: instance_id.clone(),
            reason,
        };
        let Some(image) = spec.image.clone() else {
            return Err(invalid(
                "no image: the container driver runs images only".into(),
            ));
        };
        let invalid_names = env_file::invalid_names(&spec.env);
        if !invalid_names.is_empty() {
            return Err(invalid(format!(
                "env names that are not shell identifiers: {}",
                invalid_names.join(", ")
            )));
        }
        let container = create::container_name(&instance_id);
        if let Some(watched) = self.active(&instance_id) {
            let pid = match watched.status() {
                InstanceStatus::Running { pid, .. } => pid,
                _ => 0,
            };
            return Err(DriverError::AlreadyRunning { instance_id, pid });
        }
        if let Some(existing) = self.inspect(&instance_id, &container).await? {
            match monitor::status_of(&existing) {
                InstanceStatus::Running { pid, .. } => {
                    return Err(DriverError::AlreadyRunning { instance_id, pid });
                }
                InstanceStatus::Restarting { .. } => {
                    return Err(DriverError::AlreadyRunning {
                        instance_id,
                        pid: 0,
                    });
                }
                // A leftover that no longer runs: its name is needed.
                _ => self.remove(&instance_id, &container).await?,
            }
        }
        let status = self.create_and_start(&spec, &image, &container).await?;
        info!(message = "Instance started.", instance = %instance_id, %container, ?status);
        self.watch(Watched::new(
            instance_id,
            container,
            spec.stop_timeout,
            status,
        ));
        Ok(())
    }

    async fn adopt(&self, spec: InstanceSpec) -> Result<bool, DriverError> {
        validate_instance_id(&spec.instance_id)?;
        if self.active(&spec.instance_id).is_some() {
            return Ok(true);
        }
        let instance_id = &spec.instance_id;
        let container = create::container_name(instance_id);
        let Some(existing) = self.inspect(instance_id, &container).await? else {
            self.remove(instance_id, &container).await?;
            return Ok(false);
        };
        let status = monitor::status_of(&existing);
        if matches!(status, InstanceStatus::Stopped { .. }) {
            self.remove(instance_id, &container).await?;
            return Ok(false);
        }
        if !self.env_path(&container).exists() {
            // The tmpfs was emptied (a reboot): the engine needs the file for the next restart.
            let image_user = match &spec.image {
                Some(image) => self
                    .docker
                    .inspect_image(image)
                    .await
                    .ok()
                    .and_then(|image| image.config)
                    .and_then(|config| config.user),
                None => None,
            };
            self.write_env_file(&spec, &container, image_user.as_deref())
                .await?;
        }
        info!(message = "Instance adopted.", instance = %instance_id, %container, ?status);
        self.watch(Watched::new(
            instance_id.clone(),
            container,
            spec.stop_timeout,
            status,
        ));
        Ok(true)
    }

    async fn stop(&self, instance_id: &str) -> Result<(), DriverError> {
        validate_instance_id(instance_id)?;
        let container = create::container_name(instance_id);
        let watched = self.active(instance_id);
        let stop_timeout = match &watched {
            Some(watched) => {
                watched.begin_stop();
                watched.stop_timeout
            }
            None => self.config.orphan_stop_timeout,
        };
        // The engine answers a stop once the container is gone: wait for that on top of the
        // usual request timeout.
        let docker = self
            .docker
            .clone()
            .with_timeout(self.config.request_timeout + stop_timeout);
        let options = StopContainerOptions {
            signal: None,
            t: Some(timeout_seconds(stop_timeout)),
        };
        if let Err(error) = docker.stop_container(&container, Some(options)).await {
            let error = EngineError::from(error);
            if !error.is_not_found() {
                return Err(engine_error(
                    "cannot stop the container",
                    instance_id,
                    &container,
                    error,
                ));
            }
        }
        let last_exit = match self.inspect(instance_id, &container).await? {
            Some(inspected) => match monitor::status_of(&inspected) {
                InstanceStatus::Stopped { last_exit } => last_exit,
                _ => None,
            },
            None => None,
        };
        match logs::tail(
            &self.docker,
            &logs::Source::Container(container.clone()),
            self.config.retained_log_lines,
        )
        .await
        {
            Ok(lines) => {
                let lines = lines.into_iter().map(|line| line.line).collect();
                lock(&self.retained_logs).insert(instance_id.to_owned(), lines);
            }
            Err(error) if error.is_not_found() => {}
            Err(error) => {
                warn!(message = "Cannot keep the output of a stopped instance.", instance = %instance_id, %error);
            }
        }
        self.remove(instance_id, &container).await?;
        info!(message = "Instance stopped.", instance = %instance_id, last_exit);
        if let Some(watched) = watched {
            watched.set_stopped(last_exit);
        }
        Ok(())
    }

    fn status(&self, instance_id: &str) -> InstanceStatus {
        lock(&self.instances)
            .get(instance_id)
            .map_or(InstanceStatus::Unknown, |watched| watched.status())
    }

    fn running(&self) -> Vec<String> {
        let docker = self.docker.clone();
        let filters = HashMap::from([
            (
                "label".to_owned(),
                vec![format!("{LABEL_OWNER}={}", self.config.owner)],
            ),
            ("status".to_owned(), vec!["running".to_owned()]),
        ]);
        let listed = self.bridge.run(async move {
            let options = ListContainersOptions {
                filters: Some(filters),
                ..ListContainersOptions::default()
            };
            docker.list_containers(Some(options)).await
        });
        let containers = match listed {
            Some(Ok(containers)) => containers,
            Some(Err(error)) => {
                warn!(message = "Cannot list the instance containers.", %error);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        let mut running: Vec<String> = containers
            .into_iter()
            .filter_map(|container| container.labels?.remove(LABEL_INSTANCE))
            .collect();
        running.sort();
        running
    }

    fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError> {
        validate_instance_id(instance_id)?;
        let container = create::container_name(instance_id);
        let docker = self.docker.clone();
        let source = logs::Source::Container(container.clone());
        let tail = self
            .bridge
            .run(async move { logs::tail(&docker, &source, n).await })
            .unwrap_or_else(|| Err(EngineError::other("the driver is shutting down".into())));
        match tail {
            Ok(lines) => Ok(log_lines(
                instance_id,
                lines.into_iter().map(|line| line.line),
            )),
            Err(error) if error.is_not_found() => {
                let retained = lock(&self.retained_logs).get(instance_id).cloned();
                match retained {
                    Some(mut lines) => {
                        let skip = lines.len().saturating_sub(n);
                        Ok(log_lines(instance_id, lines.split_off(skip)))
                    }
                    None => Err(DriverError::UnknownInstance(instance_id.to_owned())),
                }
            }
            Err(error) => Err(engine_error(
                "cannot read the output",
                instance_id,
                &container,
                error,
            )),
        }
    }

    fn logs_after(
        &self,
        instance_id: &str,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<LogLine>, LogCursor), DriverError> {
        validate_instance_id(instance_id)?;
        let container = create::container_name(instance_id);
        let read = logs::read_after(
            &self.bridge,
            &self.docker,
            &logs::Source::Container(container.clone()),
            cursor,
        );
        match read {
            Ok((lines, cursor)) => Ok((log_lines(instance_id, lines), cursor)),
            Err(error)
                if error.is_not_found() && lock(&self.retained_logs).contains_key(instance_id) =>
            {
                // Stopped and removed by this driver: nothing more will be written.
                Ok((Vec::new(), cursor.unwrap_or_default()))
            }
            Err(error) if error.is_not_found() => {
                Err(DriverError::UnknownInstance(instance_id.to_owned()))
            }
            Err(error) => Err(engine_error(
                "cannot read the output",
                instance_id,
                &container,
                error,
            )),
        }
    }
}

fn engine_error(
    what: &'static str,
    instance_id: &str,
    container: &str,
    error: impl Into<EngineError>,
) -> DriverError {
    DriverError::Engine {
        what,
        instance_id: instance_id.to_owned(),
        container: container.to_owned(),
        source: error.into(),
    }
}

/// The engine takes whole seconds; a sub-second timeout rounds up, so it is never zero (which
/// would mean SIGKILL at once).
fn timeout_seconds(timeout: Duration) -> i32 {
    let seconds = timeout.as_secs() + u64::from(timeout.subsec_nanos() > 0);
    i32::try_from(seconds.max(1)).unwrap_or(i32::MAX)
}

fn default_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if host.starts_with("unix://") => PathBuf::from(&host["unix://".len()..]),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

fn default_env_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY").filter(|dir| !dir.is_empty()) {
        // systemd may list several directories separated by `:`; the first is ours.
        let dir = PathBuf::from(dir);
        let first = dir
            .to_str()
            .and_then(|text| text.split(':').next())
            .map_or(dir.clone(), PathBuf::from);
        return first.join("container-env");
    }
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR").filter(|dir| !dir.is_empty()) {
        return PathBuf::from(dir).join("rollway-container-env");
    }
    let uid = rustix::process::geteuid().as_raw();
    PathBuf::from(format!("/dev/shm/rollway-{uid}"))
}

fn log_lines(instance_id: &str, lines: impl IntoIterator<Item = String>) -> Vec<LogLine> {
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
