//! The swarm driver: each release of each service is one Docker Swarm service, and each of its
//! task slots is one Rollway instance.
//!
//! It talks to the Engine API's Swarm endpoints (bollard) of a manager node and knows nothing of
//! the proxy or the store, like the other drivers.
//!
//! # Instances are task slots
//!
//! The instances `<prefix>-1` .. `<prefix>-N` of a release's service (`prefix` is
//! `<app>-<env>-r<N>-<service>`) are the slots 1..N of the Swarm service `rollway-<prefix>`
//! ([`ClusterSpec::service`]), created with `replicas = N` by the first [`Driver::start`] of
//! one of them; the later starts only register their slot. Swarm places the tasks (placement
//! constraints, `max_per_node`, resources reserved and limited), restarts a task that exits and
//! replaces one whose node is gone, in the same slot. [`Driver::stop`] takes a slot out of this
//! driver's view; the service is removed (Swarm stops its tasks with their stop grace period)
//! when its last registered slot is stopped, because Swarm cannot stop one chosen slot: a scale
//! down might stop a task that still serves. An instance out of routing whose siblings still
//! serve (a rolling deploy's old release) so keeps running until the last one stops.
//!
//! # Addresses: host-mode published ports, read from each task's `PortStatus`
//!
//! The agent's proxy runs on the host and cannot reach overlay addresses. So each service
//! publishes `PORT` in host mode without a fixed published port: the engine binds a free port on
//! the task's node for each task, and [`SwarmDriver::address`] answers the node's address and
//! that port for the slot's running task (the task's `Status.PortStatus`). A task replaced by
//! Swarm comes back on another port: the address changes, and [`SwarmDriver::changes`] says so.
//! The services also use `endpoint_mode: dnsrr` on an attachable overlay network per app and
//! environment (`rollway-<app>-<env>`), so no Swarm VIP ever routes to a task that is shutting
//! down (moby#38841), and tasks reach each other (and a future proxy service on the overlay)
//! by name. Costs: a host-mode port is bound on every interface of the node (the engine takes no
//! host IP for it), so a firewall must keep the ephemeral range closed from outside.
//!
//! # Following the tasks
//!
//! A task of this driver starting, dying or being replaced is seen through the engine's event
//! stream (container events labelled with the driver's owner), each event triggering a
//! reconcile, and by a periodic reconcile ([`SwarmDriverConfig::reconcile_interval`]) that also
//! covers other nodes and lost events. A reconcile lists every registered service's tasks; when
//! any slot's state or address changed, the number behind [`SwarmDriver::changes`] goes up.
//!
//! # Secrets: a Swarm secret per release and service
//!
//! The spec's whole env (config and secrets; the driver cannot tell them apart) becomes one Swarm
//! secret, `rollway-<prefix>-env` (encrypted in the managers' Raft log, given to the task on a
//! tmpfs), mounted at `/run/rollway/env` and sourced by the same entrypoint as the container
//! driver's env file. The service's spec (`docker service inspect`) and each task's container
//! (`docker inspect`) hold only `PORT` and the secret's name. The secret is removed with the
//! service.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    EndpointPortConfig, EndpointPortConfigProtocolEnum, EndpointPortConfigPublishModeEnum,
    EndpointSpec, EndpointSpecModeEnum, Limit, NetworkAttachmentConfig, NetworkCreateRequest,
    ResourceObject, SecretSpec, ServiceSpec, ServiceSpecMode, ServiceSpecModeReplicated,
    ServiceSpecModeReplicatedJob, TaskSpec, TaskSpecContainerSpec, TaskSpecContainerSpecFile,
    TaskSpecContainerSpecSecrets, TaskSpecPlacement, TaskSpecResources, TaskSpecRestartPolicy,
    TaskSpecRestartPolicyConditionEnum, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, ListServicesOptions, ListTasksOptions, LogsOptions, PushImageOptions,
    TagImageOptions,
};
use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::container::engine::{self, Bridge, EngineError};
use crate::container::{LABEL_APP, LABEL_ENVIRONMENT, LABEL_OWNER, LABEL_RELEASE, create};
use crate::container::{env_file, image, logs};
use crate::process::validate_instance_id;
use crate::{Driver, DriverError, InstanceSpec, InstanceStatus, LogCursor, LogLine};

/// The instance-id prefix of a service's slots (`<prefix>-<slot>`).
pub const LABEL_INSTANCE_PREFIX: &str = "dev.rollway.instance-prefix";
/// Marks the one-off job of [`SwarmDriver::run_job`].
pub const LABEL_JOB: &str = "dev.rollway.job";

/// Where each service's tasks run on the cluster: what [`InstanceSpec::cluster`] carries for
/// the swarm driver.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSpec {
    /// `rollway-<app>-<env>-r<N>-<service>`; its task slots are the instances
    /// `<app>-<env>-r<N>-<service>-<slot>`.
    pub service: String,
    /// This instance's task slot, from 1.
    pub slot: u32,
    /// How many slots the service has. Invariant: `slot <= replicas`.
    pub replicas: u32,
    /// The attachable overlay network of the app and environment.
    pub network: String,
    /// Placement constraints in the engine's syntax (`node.labels.tier == web`).
    pub constraints: Vec<String>,
    pub max_per_node: Option<u32>,
    /// CPUs in billionths and memory in bytes, each both the limit and the reservation.
    pub nano_cpus: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// Credentials of the registry the image is pulled from; every node's engine gets them
    /// from the manager with the service (never in the service's spec or a task's env).
    pub registry_auth: Option<RegistryAuth>,
}

/// A user name and password for one registry (`HOST[:PORT]`), given to the engine in its
/// `X-Registry-Auth` header to push and to create services: never in argv, a spec or a log.
/// `Debug` shows the server and the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryAuth {
    pub server: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryAuth")
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl RegistryAuth {
    fn credentials(&self) -> bollard::auth::DockerCredentials {
        bollard::auth::DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.clone()),
            serveraddress: Some(self.server.clone()),
            ..bollard::auth::DockerCredentials::default()
        }
    }
}

/// Tunables of the swarm driver; [`Default`] gives the production values.
#[derive(Debug, Clone)]
pub struct SwarmDriverConfig {
    /// The engine's Unix socket, on a manager node. Default as for the container driver.
    pub socket: PathBuf,
    /// The value of the `dev.rollway.owner` label on every object this driver creates.
    pub owner: String,
    /// How often every registered service's tasks are listed, besides each engine event.
    /// Default 1 s.
    pub reconcile_interval: Duration,
    /// How long to wait for the engine to start answering a request. Default 120 s.
    pub request_timeout: Duration,
}

impl Default for SwarmDriverConfig {
    fn default() -> SwarmDriverConfig {
        let container = crate::container::ContainerDriverConfig::default();
        SwarmDriverConfig {
            socket: container.socket,
            owner: container.owner,
            reconcile_interval: Duration::from_secs(1),
            request_timeout: container.request_timeout,
        }
    }
}

/// Errors of the driver's own operations (connecting, images, jobs); the `Driver` trait's
/// methods return [`DriverError`].
#[derive(Debug, thiserror::Error)]
pub enum SwarmError {
    #[error("cannot connect to the container engine at `{socket}`")]
    Connect {
        socket: PathBuf,
        #[source]
        source: EngineError,
    },
    #[error(
        "the engine at `{socket}` is not a manager of a swarm (its node is `{state}`); run `docker swarm init` on it, or give the agent a manager's socket"
    )]
    NotAManager { socket: PathBuf, state: String },
    #[error("cannot start the swarm driver's runtime")]
    Runtime(#[source] std::io::Error),
    #[error("{what} `{image}`")]
    Image {
        what: &'static str,
        image: String,
        #[source]
        source: EngineError,
    },
    #[error("pushing `{image}` failed: {message}")]
    PushFailed { image: String, message: String },
    #[error("the registry gave no digest for `{image}` after the push")]
    NoDigest { image: String },
    #[error("cannot run the job `{service}`: {reason}")]
    InvalidJob { service: String, reason: String },
    #[error("{what} the job `{service}`")]
    Job {
        what: &'static str,
        service: String,
        #[source]
        source: EngineError,
    },
    #[error("the job `{service}` did not end within {seconds}s")]
    JobTimeout { service: String, seconds: u64 },
    #[error("the job `{service}` ended without running: {message}")]
    JobRejected { service: String, message: String },
    #[error("{what} the ingress service `{service}`")]
    Ingress {
        what: &'static str,
        service: String,
        #[source]
        source: EngineError,
    },
    #[error("{what} of `{app}` in `{environment}`")]
    Sweep {
        what: &'static str,
        app: String,
        environment: String,
        #[source]
        source: EngineError,
    },
}

/// Which of an app environment's Swarm objects [`SwarmDriver::sweep`] removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// Release-command jobs ([`LABEL_JOB`]) and their env secrets: what an agent killed during a
    /// release command leaves.
    Jobs,
    /// Every service, secret and overlay network of the app environment: a destroyed
    /// environment.
    Everything,
}

/// What this driver last saw of one slot's task.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SlotView {
    task_id: String,
    state: TaskState,
    address: Option<SocketAddr>,
    /// Earlier tasks of the slot (Swarm replaced them).
    restarts: u32,
    last_exit: Option<i32>,
    /// Why Swarm could not run the slot's task (`docker service ps`'s error column): the current
    /// task's, else the latest earlier one's (a rejected pull, no node that fits).
    error: Option<String>,
}

/// One Swarm service this driver runs instances of.
#[derive(Debug, Clone)]
struct Registered {
    prefix: String,
    /// Registered (started or adopted) and not stopped slots.
    slots: BTreeSet<u32>,
    stop_timeout: Duration,
    secret: String,
    tasks: BTreeMap<u32, SlotView>,
}

/// The swarm driver. Share it behind an `Arc`; dropping it leaves the services running.
pub struct SwarmDriver {
    docker: Docker,
    bridge: Bridge,
    config: SwarmDriverConfig,
    // std Mutex: lookups, inserts and whole replacements of entries, never across an await.
    services: Mutex<HashMap<String, Registered>>,
    /// Node id → its address, filled as tasks are seen on nodes.
    // std Mutex: one lookup or insert.
    nodes: Mutex<HashMap<String, IpAddr>>,
    /// Serialises creating and removing services, so two slots' starts create one service.
    // tokio Mutex: held across the engine calls that create the service.
    lifecycle: tokio::sync::Mutex<()>,
    changes: watch::Sender<u64>,
    /// Never sent on: dropping it (with the driver) ends the follower task.
    shutdown: watch::Sender<()>,
}

impl SwarmDriver {
    /// Connects to the engine, checks that it is a swarm manager, and starts following tasks.
    pub async fn connect(config: SwarmDriverConfig) -> Result<Arc<SwarmDriver>, SwarmError> {
        let connect_error = |source| SwarmError::Connect {
            socket: config.socket.clone(),
            source,
        };
        let docker = engine::connect(&config.socket, config.request_timeout)
            .await
            .map_err(connect_error)?;
        let info = docker
            .info()
            .await
            .map_err(|error| connect_error(error.into()))?;
        let swarm = info.swarm.unwrap_or_default();
        let state = swarm
            .local_node_state
            .map(|state| state.to_string())
            .unwrap_or_default();
        if state != "active" || swarm.control_available != Some(true) {
            return Err(SwarmError::NotAManager {
                socket: config.socket.clone(),
                state: if state.is_empty() {
                    "unknown".to_owned()
                } else {
                    state
                },
            });
        }
        let driver = Arc::new(SwarmDriver {
            docker,
            bridge: Bridge::new().map_err(SwarmError::Runtime)?,
            config,
            services: Mutex::new(HashMap::new()),
            nodes: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            changes: watch::Sender::new(0),
            shutdown: watch::Sender::new(()),
        });
        tokio::spawn(follow(Arc::downgrade(&driver), driver.shutdown.subscribe()));
        Ok(driver)
    }

    pub fn config(&self) -> &SwarmDriverConfig {
        &self.config
    }

    /// Goes up each time a slot's task changed state or address (a task died, or Swarm started
    /// its replacement): the agent re-reads [`SwarmDriver::address`] and routes accordingly.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Where the instance's running task answers: its node's address and the port the engine
    /// published for it. `None` while no task of the slot runs.
    pub fn address(&self, instance_id: &str) -> Option<SocketAddr> {
        let (service, slot) = self.find(instance_id)?;
        let services = lock(&self.services);
        let view = services.get(&service)?.tasks.get(&slot)?;
        (view.state == TaskState::RUNNING)
            .then_some(view.address)
            .flatten()
    }

    /// Why Swarm could not run the instance's task, as the engine said it (`None` when it said
    /// nothing, or the instance is not known).
    pub fn task_error(&self, instance_id: &str) -> Option<String> {
        let (service, slot) = self.find(instance_id)?;
        let services = lock(&self.services);
        services.get(&service)?.tasks.get(&slot)?.error.clone()
    }

    /// Tags the local image `image` as `<repository>:<tag>` (the repository names its registry,
    /// `127.0.0.1:5000/shop-web`), pushes it and returns the reference by digest
    /// (`127.0.0.1:5000/shop-web@sha256:...`) that every node pulls: a moved tag cannot change
    /// what a release runs. `auth` logs in to a registry that needs it.
    pub async fn push_image(
        &self,
        image: &str,
        repository: &str,
        tag: &str,
        auth: Option<&RegistryAuth>,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<String, SwarmError> {
        let image_error = |what: &'static str| {
            let image = image.to_owned();
            move |source: bollard::errors::Error| SwarmError::Image {
                what,
                image,
                source: source.into(),
            }
        };
        let target = format!("{repository}:{tag}");
        let options = TagImageOptions {
            repo: Some(repository.to_owned()),
            tag: Some(tag.to_owned()),
        };
        self.docker
            .tag_image(image, Some(options))
            .await
            .map_err(image_error("cannot tag"))?;
        let options = PushImageOptions {
            tag: Some(tag.to_owned()),
            ..PushImageOptions::default()
        };
        // The engine wants some credentials header even for a registry without authentication.
        let credentials = auth.map(RegistryAuth::credentials).unwrap_or_default();
        let mut stream = self
            .docker
            .push_image(repository, Some(options), Some(credentials));
        while let Some(info) = stream.next().await {
            let info = info.map_err(image_error("cannot push"))?;
            if let Some(detail) = info.error_detail {
                return Err(SwarmError::PushFailed {
                    image: target,
                    message: detail.message.unwrap_or_default(),
                });
            }
            if let Some(status) = info.status {
                on_line(&status);
            }
        }
        let inspected = self
            .docker
            .inspect_image(&target)
            .await
            .map_err(image_error("cannot inspect"))?;
        inspected
            .repo_digests
            .unwrap_or_default()
            .into_iter()
            .find(|digest| digest.split_once('@').map(|(repo, _)| repo) == Some(repository))
            .ok_or(SwarmError::NoDigest { image: target })
    }

    /// Runs `command` (a shell command line; empty: the image's own) once as a Swarm job
    /// (`replicated-job`, one task, never restarted) of `image` on `cluster`'s network and
    /// placement, its env through a Swarm secret as for instances; streams the task's output to
    /// `on_line`, removes the job and its secret, and returns the exit code.
    pub async fn run_job(
        &self,
        spec: &InstanceSpec,
        timeout: Duration,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<i32, SwarmError> {
        let Some(cluster) = spec.cluster.clone() else {
            return Err(SwarmError::InvalidJob {
                service: spec.instance_id.clone(),
                reason: "no cluster placement".to_owned(),
            });
        };
        let service = cluster.service.clone();
        let invalid = |reason: String| SwarmError::InvalidJob {
            service: service.clone(),
            reason,
        };
        let job_error = |what: &'static str| {
            let service = service.clone();
            move |source: EngineError| SwarmError::Job {
                what,
                service,
                source,
            }
        };
        let image = spec
            .image
            .clone()
            .ok_or_else(|| invalid("no image".into()))?;
        self.ensure_network(&cluster.network, spec)
            .await
            .map_err(job_error("cannot create the network of"))?;
        let secret = format!("{service}-env");
        let secret_id = self
            .replace_secret(&secret, spec)
            .await
            .map_err(job_error("cannot create the secret of"))?;
        let body = self
            .service_spec(spec, &cluster, &image, (&secret, &secret_id), true)
            .await;
        let ran = async {
            let body = body.map_err(invalid)?;
            let auth = cluster.registry_auth.as_ref().map(RegistryAuth::credentials);
            self.docker
                .create_service(body, auth)
                .await
                .map_err(|error| job_error("cannot create")(error.into()))?;
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                let tasks = self
                    .docker
                    .list_tasks(Some(ListTasksOptions {
                        filters: Some(HashMap::from([(
                            "service".to_owned(),
                            vec![service.clone()],
                        )])),
                    }))
                    .await
                    .map_err(|error| job_error("cannot follow")(error.into()))?;
                let ended = tasks.into_iter().find(|task| {
                    matches!(
                        task.status.as_ref().and_then(|status| status.state),
                        Some(
                            TaskState::COMPLETE
                                | TaskState::FAILED
                                | TaskState::REJECTED
                                | TaskState::SHUTDOWN
                        )
                    )
                });
                if let Some(task) = ended {
                    let status = task.status.unwrap_or_default();
                    if let Some(task_id) = &task.id {
                        let options = LogsOptions {
                            stdout: true,
                            stderr: true,
                            ..LogsOptions::default()
                        };
                        let mut output = self.docker.task_logs(task_id, Some(options));
                        while let Some(chunk) = output.next().await {
                            match chunk {
                                Ok(chunk) => {
                                    let text = chunk.to_string();
                                    for line in text.lines() {
                                        on_line(line);
                                    }
                                }
                                Err(error) => {
                                    warn!(message = "Cannot read a job's output.", %service, %error);
                                    break;
                                }
                            }
                        }
                    }
                    let exit = status
                        .container_status
                        .and_then(|container| container.exit_code)
                        .and_then(|code| i32::try_from(code).ok());
                    return match (status.state, exit) {
                        (Some(TaskState::REJECTED), _) | (_, None) => {
                            Err(SwarmError::JobRejected {
                                service: service.clone(),
                                message: status
                                    .err
                                    .or(status.message)
                                    .unwrap_or_else(|| "no exit code".to_owned()),
                            })
                        }
                        (_, Some(code)) => Ok(code),
                    };
                }
                if tokio::time::Instant::now() >= deadline {
                    return Err(SwarmError::JobTimeout {
                        service: service.clone(),
                        seconds: timeout.as_secs(),
                    });
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        .await;
        if let Err(error) = self.remove_service(&service, Duration::from_secs(10)).await {
            warn!(message = "Cannot remove a job.", %service, %error);
        }
        self.remove_secret(&secret).await;
        ran
    }

    /// Removes what `sweep` names of the app environment `app`/`environment`, found by this
    /// driver's labels (owner, app, environment), whatever the agent's store remembers: the
    /// services (waiting for their tasks to stop), then their secrets, then, for
    /// [`Sweep::Everything`], the overlay network. Returns the names removed.
    pub async fn sweep(
        &self,
        app: &str,
        environment: &str,
        sweep: Sweep,
    ) -> Result<Vec<String>, SwarmError> {
        let sweep_error = |what: &'static str| {
            move |source: bollard::errors::Error| SwarmError::Sweep {
                what,
                app: app.to_owned(),
                environment: environment.to_owned(),
                source: source.into(),
            }
        };
        let mut labels = vec![
            format!("{LABEL_OWNER}={}", self.config.owner),
            format!("{LABEL_APP}={app}"),
            format!("{LABEL_ENVIRONMENT}={environment}"),
        ];
        if sweep == Sweep::Jobs {
            labels.push(format!("{LABEL_JOB}=true"));
        }
        let filters = HashMap::from([("label".to_owned(), labels.clone())]);
        let _lifecycle = self.lifecycle.lock().await;
        let services = self
            .docker
            .list_services(Some(ListServicesOptions {
                filters: Some(filters.clone()),
                ..ListServicesOptions::default()
            }))
            .await
            .map_err(sweep_error("cannot list the services"))?;
        let mut removed = Vec::new();
        for service in services {
            let Some(name) = service.spec.and_then(|spec| spec.name) else {
                continue;
            };
            self.remove_service(&name, Duration::from_secs(10))
                .await
                .map_err(|source| SwarmError::Sweep {
                    what: "cannot remove a service",
                    app: app.to_owned(),
                    environment: environment.to_owned(),
                    source,
                })?;
            self.remove_secret(&format!("{name}-env")).await;
            lock(&self.services).remove(&name);
            info!(message = "Service removed.", service = %name, ?sweep);
            removed.push(name);
        }
        if sweep == Sweep::Jobs {
            return Ok(removed);
        }
        // Secrets no service holds any more (a start cut short), then the overlay network.
        let secrets = self
            .docker
            .list_secrets(Some(bollard::query_parameters::ListSecretsOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(sweep_error("cannot list the secrets"))?;
        for secret in secrets {
            if let Some(name) = secret.spec.and_then(|spec| spec.name) {
                self.remove_secret(&name).await;
                removed.push(name);
            }
        }
        let networks = self
            .docker
            .list_networks(Some(bollard::query_parameters::ListNetworksOptions {
                filters: Some(filters),
            }))
            .await
            .map_err(sweep_error("cannot list the networks"))?;
        for network in networks {
            let Some(name) = network.name else { continue };
            // The network stays in use until the removed services' tasks have left it.
            let mut tries = 0;
            loop {
                match self.docker.remove_network(&name).await {
                    Ok(()) => break,
                    Err(error) => {
                        let error = EngineError::from(error);
                        if error.is_not_found() {
                            break;
                        }
                        tries += 1;
                        if tries >= 40 {
                            return Err(SwarmError::Sweep {
                                what: "cannot remove the overlay network",
                                app: app.to_owned(),
                                environment: environment.to_owned(),
                                source: error,
                            });
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            info!(message = "Network removed.", network = %name);
            removed.push(name);
        }
        Ok(removed)
    }

    /// The service and slot of a registered instance, or what its id says for one that is not.
    fn find(&self, instance_id: &str) -> Option<(String, u32)> {
        let services = lock(&self.services);
        services.iter().find_map(|(service, registered)| {
            let slot = instance_id
                .strip_prefix(&registered.prefix)?
                .strip_prefix('-')?
                .parse::<u32>()
                .ok()?;
            Some((service.clone(), slot))
        })
    }

    async fn ensure_network(&self, network: &str, spec: &InstanceSpec) -> Result<(), EngineError> {
        match self.docker.inspect_network(network, None).await {
            Ok(_) => return Ok(()),
            Err(error) => {
                let error = EngineError::from(error);
                if !error.is_not_found() {
                    return Err(error);
                }
            }
        }
        let request = NetworkCreateRequest {
            name: network.to_owned(),
            driver: Some("overlay".to_owned()),
            attachable: Some(true),
            labels: Some(self.labels(spec)),
            ..NetworkCreateRequest::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Created meanwhile by another start.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    /// Creates the env secret `name` from the spec's env, replacing a leftover of that name (a
    /// start cut short; no service uses it).
    /// Returns the secret's id, which a service's reference needs besides its name.
    async fn replace_secret(&self, name: &str, spec: &InstanceSpec) -> Result<String, EngineError> {
        self.remove_secret(name).await;
        let secret = SecretSpec {
            name: Some(name.to_owned()),
            labels: Some(self.labels(spec)),
            data: Some(base64(env_file::render(&spec.env).as_bytes())),
            ..SecretSpec::default()
        };
        Ok(self.docker.create_secret(secret).await?.id)
    }

    async fn remove_secret(&self, name: &str) {
        // A secret stays in use until the service's tasks are gone: retry for a while.
        for _ in 0..40 {
            match self.docker.delete_secret(name).await {
                Ok(()) => return,
                Err(error) => {
                    let error = EngineError::from(error);
                    if error.is_not_found() {
                        return;
                    }
                    if error.status_code() != Some(400) && error.status_code() != Some(409) {
                        warn!(message = "Cannot remove a secret.", secret = %name, %error);
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        warn!(message = "A secret is still in use; it stays.", secret = %name);
    }

    /// Removes the service and waits (bounded) until its tasks' containers on this node are gone.
    async fn remove_service(
        &self,
        service: &str,
        stop_timeout: Duration,
    ) -> Result<(), EngineError> {
        let inspected = match self.docker.inspect_service(service, None).await {
            Ok(inspected) => inspected,
            Err(error) => {
                let error = EngineError::from(error);
                return if error.is_not_found() {
                    Ok(())
                } else {
                    Err(error)
                };
            }
        };
        let id = inspected.id.unwrap_or_default();
        if let Err(error) = self.docker.delete_service(service).await {
            let error = EngineError::from(error);
            if !error.is_not_found() {
                return Err(error);
            }
        }
        let deadline = tokio::time::Instant::now() + stop_timeout + Duration::from_secs(15);
        let filters = HashMap::from([(
            "label".to_owned(),
            vec![format!("com.docker.swarm.service.id={id}")],
        )]);
        while tokio::time::Instant::now() < deadline {
            let containers = self
                .docker
                .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                    all: true,
                    filters: Some(filters.clone()),
                    ..Default::default()
                }))
                .await?;
            if containers.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        warn!(message = "The tasks of a removed service are still there.", %service);
        Ok(())
    }

    fn labels(&self, spec: &InstanceSpec) -> HashMap<String, String> {
        let mut labels = HashMap::from([(LABEL_OWNER.to_owned(), self.config.owner.clone())]);
        for (variable, label) in [
            ("ROLLWAY_APP", LABEL_APP),
            ("ROLLWAY_ENVIRONMENT", LABEL_ENVIRONMENT),
            ("ROLLWAY_RELEASE", LABEL_RELEASE),
        ] {
            if let Some((_, value)) = spec.env.iter().find(|(name, _)| name == variable) {
                labels.insert(label.to_owned(), value.clone());
            }
        }
        labels
    }

    /// The whole service (or job) spec of a release's service.
    async fn service_spec(
        &self,
        spec: &InstanceSpec,
        cluster: &ClusterSpec,
        image: &str,
        (secret, secret_id): (&str, &str),
        job: bool,
    ) -> Result<ServiceSpec, String> {
        // The image's own config (entrypoint, command, user) when the manager has it.
        let image_config = image::inspect(&self.docker, image)
            .await
            .ok()
            .and_then(|inspected| inspected.config);
        let (entrypoint, cmd) = create::entrypoint_and_cmd(&spec.command, image_config.as_ref())?;
        let image_user = image_config.as_ref().and_then(|config| config.user.clone());
        let user = create::run_as(&spec.confinement, image_user.as_deref());
        // The env secret is readable by the user the task runs as: by uid when it is numeric,
        // else by everyone inside the task (its tmpfs is the task's own).
        let uid = user
            .as_deref()
            .and_then(|user| user.split(':').next())
            .filter(|uid| uid.parse::<u32>().is_ok())
            .unwrap_or("0")
            .to_owned();
        let mode = if user.is_some() && uid == "0" {
            0o444
        } else {
            0o400
        };
        let mut labels = self.labels(spec);
        let prefix = spec
            .instance_id
            .rsplit_once('-')
            .map_or(spec.instance_id.as_str(), |(prefix, _)| prefix);
        if job {
            labels.insert(LABEL_JOB.to_owned(), "true".to_owned());
        } else {
            labels.insert(LABEL_INSTANCE_PREFIX.to_owned(), prefix.to_owned());
        }
        let container_spec = TaskSpecContainerSpec {
            image: Some(image.to_owned()),
            labels: Some(labels.clone()),
            command: Some(entrypoint),
            args: Some(cmd),
            env: Some(vec![format!("PORT={}", spec.port)]),
            user,
            init: Some(true),
            stop_grace_period: i64::try_from(spec.stop_timeout.as_nanos()).ok(),
            secrets: Some(vec![TaskSpecContainerSpecSecrets {
                file: Some(TaskSpecContainerSpecFile {
                    name: Some(env_file::MOUNT_PATH.to_owned()),
                    uid: Some(uid.clone()),
                    gid: Some("0".to_owned()),
                    mode: Some(mode),
                }),
                secret_name: Some(secret.to_owned()),
                secret_id: Some(secret_id.to_owned()),
            }]),
            ..TaskSpecContainerSpec::default()
        };
        let limits = (cluster.nano_cpus.is_some() || cluster.memory_bytes.is_some()).then(|| {
            let nano_cpus = cluster.nano_cpus.and_then(|n| i64::try_from(n).ok());
            let memory_bytes = cluster.memory_bytes.and_then(|n| i64::try_from(n).ok());
            TaskSpecResources {
                limits: Some(Limit {
                    nano_cpus,
                    memory_bytes,
                    ..Limit::default()
                }),
                reservations: Some(ResourceObject {
                    nano_cpus,
                    memory_bytes,
                    ..ResourceObject::default()
                }),
                ..TaskSpecResources::default()
            }
        });
        let task_template = TaskSpec {
            container_spec: Some(container_spec),
            resources: limits,
            restart_policy: Some(TaskSpecRestartPolicy {
                condition: Some(if job {
                    TaskSpecRestartPolicyConditionEnum::NONE
                } else {
                    TaskSpecRestartPolicyConditionEnum::ANY
                }),
                // Swarm's default: 5 s between a task's exit and its replacement.
                delay: Some(1_000_000_000),
                ..TaskSpecRestartPolicy::default()
            }),
            placement: Some(TaskSpecPlacement {
                constraints: Some(cluster.constraints.clone()),
                max_replicas: cluster.max_per_node.map(i64::from),
                ..TaskSpecPlacement::default()
            }),
            networks: Some(vec![NetworkAttachmentConfig {
                target: Some(cluster.network.clone()),
                ..NetworkAttachmentConfig::default()
            }]),
            ..TaskSpec::default()
        };
        let mode = if job {
            ServiceSpecMode {
                replicated_job: Some(ServiceSpecModeReplicatedJob {
                    max_concurrent: Some(1),
                    total_completions: Some(1),
                }),
                ..ServiceSpecMode::default()
            }
        } else {
            ServiceSpecMode {
                replicated: Some(ServiceSpecModeReplicated {
                    replicas: Some(i64::from(cluster.replicas)),
                }),
                ..ServiceSpecMode::default()
            }
        };
        let endpoint_spec = EndpointSpec {
            mode: Some(EndpointSpecModeEnum::DNSRR),
            ports: (!job).then(|| {
                vec![EndpointPortConfig {
                    protocol: Some(EndpointPortConfigProtocolEnum::TCP),
                    target_port: Some(i64::from(spec.port)),
                    // No published port: the engine binds a free one per task.
                    published_port: None,
                    publish_mode: Some(EndpointPortConfigPublishModeEnum::HOST),
                    ..EndpointPortConfig::default()
                }]
            }),
        };
        Ok(ServiceSpec {
            name: Some(cluster.service.clone()),
            labels: Some(labels),
            task_template: Some(task_template),
            mode: Some(mode),
            endpoint_spec: Some(endpoint_spec),
            ..ServiceSpec::default()
        })
    }

    /// Lists the tasks of every registered service and records what changed.
    async fn reconcile(&self) {
        let names: Vec<String> = lock(&self.services).keys().cloned().collect();
        let mut changed = false;
        for service in names {
            let options = ListTasksOptions {
                filters: Some(HashMap::from([(
                    "service".to_owned(),
                    vec![service.clone()],
                )])),
            };
            let tasks = match self.docker.list_tasks(Some(options)).await {
                Ok(tasks) => tasks,
                Err(error) => {
                    let error = EngineError::from(error);
                    if !error.is_not_found() {
                        warn!(message = "Cannot list a service's tasks.", %service, %error);
                    }
                    continue;
                }
            };
            let mut by_slot: BTreeMap<u32, Vec<bollard::models::Task>> = BTreeMap::new();
            for task in tasks {
                if let Some(slot) = task.slot.and_then(|slot| u32::try_from(slot).ok()) {
                    by_slot.entry(slot).or_default().push(task);
                }
            }
            let mut views = BTreeMap::new();
            for (slot, mut tasks) in by_slot {
                // The current task: the one Swarm wants running, else the newest.
                tasks.sort_by_key(|task| {
                    (
                        task.desired_state == Some(TaskState::RUNNING),
                        task.version.as_ref().and_then(|version| version.index),
                    )
                });
                let n_tasks = tasks.len();
                let Some(current) = tasks.pop() else { continue };
                let last_exit = tasks
                    .last()
                    .and_then(|task| task.status.as_ref())
                    .and_then(|status| status.container_status.as_ref())
                    .and_then(|container| container.exit_code)
                    .and_then(|code| i32::try_from(code).ok());
                let error = std::iter::once(&current)
                    .chain(tasks.iter().rev())
                    .find_map(|task| task.status.as_ref()?.err.clone())
                    .filter(|error| !error.is_empty());
                let status = current.status.clone().unwrap_or_default();
                let port = status
                    .port_status
                    .and_then(|ports| ports.ports)
                    .unwrap_or_default()
                    .into_iter()
                    .find_map(|port| port.published_port)
                    .and_then(|port| u16::try_from(port).ok());
                let node = match &current.node_id {
                    Some(node_id) => self.node_address(node_id).await,
                    None => None,
                };
                views.insert(
                    slot,
                    SlotView {
                        task_id: current.id.clone().unwrap_or_default(),
                        state: status.state.unwrap_or(TaskState::NEW),
                        address: port.zip(node).map(|(port, ip)| SocketAddr::new(ip, port)),
                        restarts: u32::try_from(n_tasks - 1).unwrap_or(u32::MAX),
                        last_exit,
                        error,
                    },
                );
            }
            let mut services = lock(&self.services);
            if let Some(registered) = services.get_mut(&service)
                && registered.tasks != views
            {
                registered.tasks = views;
                changed = true;
            }
        }
        if changed {
            self.changes.send_modify(|generation| *generation += 1);
        }
    }

    /// A node's address as the swarm knows it (`docker node inspect`'s `Status.Addr`); a node
    /// that advertises `0.0.0.0` is this one, reached on loopback.
    async fn node_address(&self, node_id: &str) -> Option<IpAddr> {
        if let Some(address) = lock(&self.nodes).get(node_id) {
            return Some(*address);
        }
        let node = self.docker.inspect_node(node_id).await.ok()?;
        let address: IpAddr = node.status?.addr?.parse().ok()?;
        let address = if address.is_unspecified() {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            address
        };
        lock(&self.nodes).insert(node_id.to_owned(), address);
        Some(address)
    }

    fn register(&self, cluster: &ClusterSpec, prefix: &str, stop_timeout: Duration) {
        let mut services = lock(&self.services);
        let registered = services
            .entry(cluster.service.clone())
            .or_insert_with(|| Registered {
                prefix: prefix.to_owned(),
                slots: BTreeSet::new(),
                stop_timeout,
                secret: format!("{}-env", cluster.service),
                tasks: BTreeMap::new(),
            });
        registered.slots.insert(cluster.slot);
    }

    /// Where the instance's output is read: its slot's current task through the manager's task
    /// logs endpoint, which reads it from whichever node the task runs on; and the task's name
    /// (`SERVICE.SLOT`) for an error.
    fn log_source(&self, instance_id: &str) -> Result<(logs::Source, String), DriverError> {
        let (service, slot) = self
            .find(instance_id)
            .ok_or_else(|| DriverError::UnknownInstance(instance_id.to_owned()))?;
        let task_id = self
            .view(instance_id)
            .map(|view| view.task_id)
            .filter(|task_id| !task_id.is_empty())
            .ok_or_else(|| DriverError::UnknownInstance(instance_id.to_owned()))?;
        Ok((logs::Source::Task(task_id), format!("{service}.{slot}")))
    }

    fn view(&self, instance_id: &str) -> Option<SlotView> {
        let (service, slot) = self.find(instance_id)?;
        lock(&self.services)
            .get(&service)?
            .tasks
            .get(&slot)
            .cloned()
    }
}

impl Driver for SwarmDriver {
    async fn start(&self, spec: InstanceSpec) -> Result<(), DriverError> {
        validate_instance_id(&spec.instance_id)?;
        let instance_id = spec.instance_id.clone();
        let invalid = |reason: String| DriverError::InvalidSpec {
            instance_id: instance_id.clone(),
            reason,
        };
        let Some(image) = spec.image.clone() else {
            return Err(invalid(
                "no image: the swarm driver runs images only".into(),
            ));
        };
        let Some(cluster) = spec.cluster.clone() else {
            return Err(invalid("no cluster placement for the swarm driver".into()));
        };
        if cluster.slot == 0 || cluster.slot > cluster.replicas {
            return Err(invalid(format!(
                "slot {} of a service with {} replicas",
                cluster.slot, cluster.replicas
            )));
        }
        let invalid_names = env_file::invalid_names(&spec.env);
        if !invalid_names.is_empty() {
            return Err(invalid(format!(
                "env names that are not shell identifiers: {}",
                invalid_names.join(", ")
            )));
        }
        let prefix = instance_id
            .strip_suffix(&format!("-{}", cluster.slot))
            .ok_or_else(|| {
                invalid(format!(
                    "the id does not end with its slot `-{}`",
                    cluster.slot
                ))
            })?
            .to_owned();
        let engine_error = |what: &'static str| {
            let instance_id = instance_id.clone();
            let service = cluster.service.clone();
            move |source: EngineError| DriverError::Engine {
                what,
                instance_id,
                container: service,
                source,
            }
        };
        let _lifecycle = self.lifecycle.lock().await;
        let exists = match self.docker.inspect_service(&cluster.service, None).await {
            Ok(_) => true,
            Err(error) => {
                let error = EngineError::from(error);
                if !error.is_not_found() {
                    return Err(engine_error("cannot inspect the service")(error));
                }
                false
            }
        };
        if !exists {
            self.ensure_network(&cluster.network, &spec)
                .await
                .map_err(engine_error("cannot create the network"))?;
            let secret = format!("{}-env", cluster.service);
            let secret_id = self
                .replace_secret(&secret, &spec)
                .await
                .map_err(engine_error("cannot create the env secret"))?;
            let body = match self
                .service_spec(&spec, &cluster, &image, (&secret, &secret_id), false)
                .await
            {
                Ok(body) => body,
                Err(reason) => {
                    self.remove_secret(&secret).await;
                    return Err(invalid(reason));
                }
            };
            let auth = cluster
                .registry_auth
                .as_ref()
                .map(RegistryAuth::credentials);
            if let Err(error) = self.docker.create_service(body, auth).await {
                self.remove_secret(&secret).await;
                return Err(engine_error("cannot create the service")(error.into()));
            }
            info!(message = "Service created.", service = %cluster.service, replicas = cluster.replicas);
        }
        self.register(&cluster, &prefix, spec.stop_timeout);
        drop(_lifecycle);
        self.reconcile().await;
        info!(message = "Instance started.", instance = %instance_id, service = %cluster.service, slot = cluster.slot);
        Ok(())
    }

    async fn adopt(&self, spec: InstanceSpec) -> Result<bool, DriverError> {
        validate_instance_id(&spec.instance_id)?;
        let Some(cluster) = spec.cluster.clone() else {
            return Ok(false);
        };
        match self.docker.inspect_service(&cluster.service, None).await {
            Ok(_) => {}
            Err(error) => {
                let error = EngineError::from(error);
                if error.is_not_found() {
                    return Ok(false);
                }
                return Err(DriverError::Engine {
                    what: "cannot inspect the service",
                    instance_id: spec.instance_id.clone(),
                    container: cluster.service.clone(),
                    source: error,
                });
            }
        }
        let prefix = spec
            .instance_id
            .strip_suffix(&format!("-{}", cluster.slot))
            .unwrap_or(&spec.instance_id)
            .to_owned();
        self.register(&cluster, &prefix, spec.stop_timeout);
        self.reconcile().await;
        info!(message = "Instance adopted.", instance = %spec.instance_id, service = %cluster.service);
        Ok(true)
    }

    async fn stop(&self, instance_id: &str) -> Result<(), DriverError> {
        validate_instance_id(instance_id)?;
        let _lifecycle = self.lifecycle.lock().await;
        let (service, stop_timeout, secret) = match self.find(instance_id) {
            Some((service, slot)) => {
                let mut services = lock(&self.services);
                let Some(registered) = services.get_mut(&service) else {
                    return Ok(());
                };
                registered.slots.remove(&slot);
                if !registered.slots.is_empty() {
                    // Siblings still registered: the service stays (see the module's docs).
                    info!(message = "Instance released; its service keeps running for its other slots.", instance = %instance_id, %service);
                    return Ok(());
                }
                (service, registered.stop_timeout, registered.secret.clone())
            }
            None => {
                // Not registered (left by an earlier agent process): its whole service goes.
                let Some((prefix, _slot)) = instance_id.rsplit_once('-') else {
                    return Ok(());
                };
                let service = format!("rollway-{prefix}");
                let secret = format!("{service}-env");
                (service, Duration::from_secs(10), secret)
            }
        };
        self.remove_service(&service, stop_timeout)
            .await
            .map_err(|source| DriverError::Engine {
                what: "cannot remove the service",
                instance_id: instance_id.to_owned(),
                container: service.clone(),
                source,
            })?;
        self.remove_secret(&secret).await;
        lock(&self.services).remove(&service);
        info!(message = "Service removed.", %service);
        Ok(())
    }

    fn status(&self, instance_id: &str) -> InstanceStatus {
        let Some((service, slot)) = self.find(instance_id) else {
            return InstanceStatus::Unknown;
        };
        let services = lock(&self.services);
        let Some(registered) = services.get(&service) else {
            return InstanceStatus::Unknown;
        };
        if !registered.slots.contains(&slot) {
            return InstanceStatus::Stopped { last_exit: None };
        }
        match registered.tasks.get(&slot) {
            Some(view) if view.state == TaskState::RUNNING => InstanceStatus::Running {
                pid: 0,
                restarts: view.restarts,
            },
            Some(view) if view.restarts > 0 => InstanceStatus::Restarting {
                restarts: view.restarts,
                last_exit: view.last_exit,
            },
            // Created, not running yet: Swarm is pulling or scheduling it.
            _ => InstanceStatus::Running {
                pid: 0,
                restarts: 0,
            },
        }
    }

    fn running(&self) -> Vec<String> {
        let docker = self.docker.clone();
        let owner = format!("{LABEL_OWNER}={}", self.config.owner);
        let listed = self.bridge.run(async move {
            docker
                .list_services(Some(ListServicesOptions {
                    filters: Some(HashMap::from([("label".to_owned(), vec![owner])])),
                    ..ListServicesOptions::default()
                }))
                .await
        });
        let services = match listed {
            Some(Ok(services)) => services,
            Some(Err(error)) => {
                warn!(message = "Cannot list the services.", %error);
                return Vec::new();
            }
            None => return Vec::new(),
        };
        let mut running = Vec::new();
        for service in services {
            let Some(spec) = service.spec else { continue };
            let Some(prefix) = spec
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_INSTANCE_PREFIX))
            else {
                continue;
            };
            let replicas = spec
                .mode
                .and_then(|mode| mode.replicated)
                .and_then(|replicated| replicated.replicas)
                .unwrap_or(0);
            for slot in 1..=replicas {
                running.push(format!("{prefix}-{slot}"));
            }
        }
        running.sort();
        running
    }

    fn logs(&self, instance_id: &str, n: usize) -> Result<Vec<LogLine>, DriverError> {
        let (source, task) = self.log_source(instance_id)?;
        let docker = self.docker.clone();
        let tail = self
            .bridge
            .run(async move { logs::tail(&docker, &source, n).await })
            .unwrap_or_else(|| Err(EngineError::other("the driver is shutting down".into())));
        match tail {
            Ok(lines) => Ok(log_lines(
                instance_id,
                lines.into_iter().map(|line| line.line),
            )),
            Err(error) if error.is_not_found() => Ok(Vec::new()),
            Err(error) => Err(DriverError::Engine {
                what: "cannot read the output",
                instance_id: instance_id.to_owned(),
                container: task,
                source: error,
            }),
        }
    }

    fn logs_after(
        &self,
        instance_id: &str,
        cursor: Option<LogCursor>,
    ) -> Result<(Vec<LogLine>, LogCursor), DriverError> {
        let (source, task) = self.log_source(instance_id)?;
        let read = logs::read_after(&self.bridge, &self.docker, &source, cursor);
        match read {
            Ok((lines, cursor)) => Ok((log_lines(instance_id, lines), cursor)),
            Err(error) => Err(DriverError::Engine {
                what: "cannot read the output",
                instance_id: instance_id.to_owned(),
                container: task,
                source: error,
            }),
        }
    }
}

/// Follows the engine's events (a reconcile per event of one of this driver's task containers)
/// and reconciles periodically, until the driver is dropped.
async fn follow(driver: std::sync::Weak<SwarmDriver>, mut shutdown: watch::Receiver<()>) {
    let Some((docker, owner, interval)) = driver.upgrade().map(|driver| {
        (
            driver.docker.clone(),
            driver.config.owner.clone(),
            driver.config.reconcile_interval,
        )
    }) else {
        return;
    };
    let filters = HashMap::from([
        ("type".to_owned(), vec!["container".to_owned()]),
        ("label".to_owned(), vec![format!("{LABEL_OWNER}={owner}")]),
    ]);
    let mut events = docker
        .events(Some(EventsOptions {
            filters: Some(filters.clone()),
            ..EventsOptions::default()
        }))
        .boxed();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
            event = events.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    warn!(message = "The engine's event stream failed; following it again.", %error);
                    tokio::time::sleep(interval).await;
                    events = docker
                        .events(Some(EventsOptions {
                            filters: Some(filters.clone()),
                            ..EventsOptions::default()
                        }))
                        .boxed();
                }
                None => {
                    tokio::time::sleep(interval).await;
                    events = docker
                        .events(Some(EventsOptions {
                            filters: Some(filters.clone()),
                            ..EventsOptions::default()
                        }))
                        .boxed();
                }
            },
        }
        let Some(driver) = driver.upgrade() else {
            return;
        };
        driver.reconcile().await;
    }
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

/// Standard base64 with padding (what the engine takes as a secret's `Data`).
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (idx, byte)| {
            n | u32::from(*byte) << (16 - 8 * idx)
        });
        for idx in 0..4 {
            if idx <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * idx)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Entries are inserted or replaced whole, so a panic elsewhere cannot leave the map torn.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

mod ingress;
pub use ingress::{IngressService, LABEL_INGRESS};

#[cfg(test)]
mod tests;
