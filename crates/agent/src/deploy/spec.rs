//! What a release needs to run (loaded by `deploy::release`): its unpacked folder and
//! build, its instances' specs and environment, and the edits of the runtime view that go with
//! starting and stopping them.

use client::wire::ReleaseNumber;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use driver::InstanceSpec;
use manifest::{Health, ResolvedManifest, Service};

use crate::engine::{AppEnv, Engine, InstancePhase, RouteInfo, RuntimeInstance, Subject, now_ms};
use crate::secrets::{Scrubber, Secret};

use crate::store::{Deployment, InstanceRecord};
use client::wire::DeploymentEvent;

/// Why a release's images, commands or instances could not be prepared or run. Each says what
/// and where; its source (the OS, the driver, the store) is reached by `report::chain`.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error(transparent)]
    Drivers(Box<crate::drivers::DriversError>),
    #[error(transparent)]
    Store(Box<crate::store::StoreError>),
    #[error(transparent)]
    Home(#[from] crate::isolation::HomeError),
    #[error(transparent)]
    Target(#[from] crate::backup::TargetError),
    #[error("cannot open the secrets to hide them from output")]
    Scrubber(#[source] crate::secrets::SecretError),
    #[error("`{image}` uses `{{version}}`, which needs `VERSION` in `[env]`")]
    NoVersion { image: String },
    #[error("cannot pull `{reference}`")]
    Pull {
        reference: String,
        #[source]
        source: Box<driver::container::ContainerError>,
    },
    #[error("cannot build `{dockerfile}`")]
    BuildImage {
        dockerfile: String,
        #[source]
        source: Box<driver::container::ContainerError>,
    },
    #[error("cannot run the release command")]
    RunOnce(#[source] Box<driver::container::ContainerError>),
    #[error("cannot run the release command as a Swarm job")]
    Job(#[source] Box<driver::swarm::SwarmError>),
    #[error("the release command `{command}` exited with {code}; its last output:\n{tail}")]
    OneOffFailed {
        command: String,
        code: i32,
        tail: String,
    },
    #[error("cannot create `{}`", path.display())]
    CreateDir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot prepare the private temp folder of the {label}")]
    TempDir {
        label: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open `{}`", path.display())]
    OpenLog {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run the {label} `{command}`")]
    Spawn {
        label: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {label} has no output pipes")]
    NoPipes { label: String },
    #[error("cannot wait for the {label} to end")]
    Wait {
        label: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the {label} `{command}` ran longer than {seconds}s")]
    Timeout {
        label: String,
        command: String,
        seconds: u64,
    },
    #[error("the {label} `{command}` failed ({status}); its last output:\n{tail}")]
    CommandFailed {
        label: String,
        command: String,
        status: std::process::ExitStatus,
        tail: String,
    },
    #[error("the backup of `{target}` failed, so the release command did not run")]
    Backup {
        target: String,
        #[source]
        source: Box<crate::backup::CreateError>,
    },
    #[error("`{variable}` (named by `release.backup`) is not set for `{environment}`")]
    NoDatabase {
        variable: String,
        environment: String,
    },
    #[error("release folder `{}` has no parent", .0.display())]
    NoParent(std::path::PathBuf),
    #[error("cannot carry `{}` over to `{}`", from.display(), to.display())]
    CarryOver {
        from: std::path::PathBuf,
        to: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no service `{service}` in release {release}")]
    NoService {
        service: String,
        release: ReleaseNumber,
    },
    #[error("no free port for `{instance}`")]
    NoPort {
        instance: String,
        #[source]
        source: std::io::Error,
    },
    #[error("release {release} has no image recorded for service `{service}`: it was not prepared")]
    NoImage {
        release: ReleaseNumber,
        service: String,
    },
    #[error("secret `{name}` is not set for `{environment}`")]
    SecretNotSet { name: String, environment: String },
    #[error("the swarm driver needs a registry every node can pull from")]
    NoRegistry(#[from] crate::registry::NoClusterRegistry),
    #[error(
        "the engine does not trust the agent's registry at `{address}` (x509): on every node, save the output of `rollway registry ca` as `/etc/docker/certs.d/{address}/ca.crt`"
    )]
    RegistryUntrusted {
        address: String,
        #[source]
        source: Box<driver::swarm::SwarmError>,
    },
    #[error("cannot push the image of service `{service}` to the cluster's registry")]
    Push {
        service: String,
        #[source]
        source: Box<driver::swarm::SwarmError>,
    },
    #[error(
        "instance `{instance}` has no running task after {seconds}s: {}",
        no_task_reason(service, reason.as_deref())
    )]
    NoTask {
        instance: String,
        service: String,
        seconds: u64,
        /// What Swarm said of the task, if anything.
        reason: Option<String>,
    },
    #[error("`{name}` references unset {missing}")]
    Unset { name: String, missing: String },
    #[error("`{name}`: {reason}")]
    Syntax { name: String, reason: String },
}

impl From<crate::drivers::DriversError> for SpecError {
    fn from(error: crate::drivers::DriversError) -> SpecError {
        SpecError::Drivers(Box::new(error))
    }
}

impl From<crate::store::StoreError> for SpecError {
    fn from(error: crate::store::StoreError) -> SpecError {
        SpecError::Store(Box::new(error))
    }
}

/// How long a build command may run.
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a release command may run as a Swarm job.
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(3600);

// Loading a release moved to `deploy/release.rs`; these names stay for the other rooms.
pub use crate::deploy::release::{LoadedRelease, ReleaseConfig, load_release, resolve};

/// Pulls or builds the image of every container service of the release and records its id
/// (once per release: a rollback runs exactly these images even after a tag moved).
pub async fn prepare_images(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &mut LoadedRelease,
) -> Result<(), SpecError> {
    let containers: Vec<Service> = release
        .resolved
        .config
        .services
        .iter()
        .filter(|service| !matches!(service.source, manifest::ServiceSource::Run { .. }))
        .cloned()
        .collect();
    if containers.is_empty() {
        return Ok(());
    }
    let driver = engine.drivers.container().await?;
    let record = |event: DeploymentEvent| {
        engine.record_progress(Subject::deployment(deployment), &event);
    };
    let scrubber = scrubber(engine, deployment)?;
    for service in containers {
        if release.images.contains_key(&service.name) {
            continue;
        }
        let mut n_lines = 0usize;
        let mut on_line = |line: &str| {
            n_lines += 1;
            if n_lines <= MAX_OUTPUT_EVENTS {
                record(DeploymentEvent::Output {
                    line: scrubber.scrub(line).into_owned(),
                });
            }
        };
        let image = match &service.source {
            manifest::ServiceSource::Image { image, .. } => {
                let reference = image_reference(image, release)?;
                record(DeploymentEvent::PullImage {
                    service: service.name.clone(),
                    reference: reference.clone(),
                });
                match driver.image_digest(&reference).await {
                    Ok(id) => id,
                    Err(_) => driver
                        .pull_image(&reference, None, &mut on_line)
                        .await
                        .map_err(|source| SpecError::Pull {
                            reference: reference.clone(),
                            source: Box::new(source),
                        })?,
                }
            }
            manifest::ServiceSource::Dockerfile { dockerfile, .. } => {
                let tag = format!(
                    "rollway/{}-{}:{}",
                    deployment.app, deployment.environment, release.number
                );
                record(DeploymentEvent::BuildImage {
                    service: service.name.clone(),
                    dockerfile: dockerfile.clone(),
                });
                driver
                    .build_image(&workdir(engine, release), dockerfile, &tag, &mut on_line)
                    .await
                    .map_err(|source| SpecError::BuildImage {
                        dockerfile: dockerfile.clone(),
                        source: Box::new(source),
                    })?
            }
            manifest::ServiceSource::Run { .. } => continue,
        };
        let image = if release.resolved.driver == manifest::Driver::Swarm {
            push_to_registry(
                engine,
                deployment,
                release,
                &service.name,
                &image,
                &mut on_line,
            )
            .await?
        } else {
            image
        };
        engine.store.set_release_image(
            &deployment.app,
            &deployment.environment,
            release.number,
            &service.name,
            &image,
        )?;
        record(DeploymentEvent::Image {
            service: service.name.clone(),
            image: image.clone(),
        });
        // The deployment's loaded release is used by every later step: it learns the image too.
        release.images.insert(service.name.clone(), image);
    }
    Ok(())
}

/// Pushes a release's image to the cluster's registry ([`cluster_registry`]) as
/// `<registry>/<prefix>/<app>-<env>-<service>:r<N>` and answers the reference by digest, which
/// is what the release records and every node pulls.
async fn push_to_registry(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &LoadedRelease,
    service: &str,
    image: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<String, SpecError> {
    let registry = cluster_registry(engine, release)?;
    let swarm = engine.drivers.swarm().await?;
    let repository = format!(
        "{}/{}-{}-{service}",
        registry.prefix, deployment.app, deployment.environment
    );
    swarm
        .push_image(
            image,
            &repository,
            &crate::registry::release_tag(release.number),
            registry.push.as_ref(),
            on_line,
        )
        .await
        .map_err(|source| {
            // The agent's own registry, which the manager's engine does not trust yet: say the fix.
            let agents = engine
                .registry
                .address
                .as_ref()
                .filter(|address| registry.prefix.starts_with(&format!("{address}/")));
            match agents {
                Some(address) if crate::report::chain(&source).contains("x509") => {
                    SpecError::RegistryUntrusted {
                        address: address.clone(),
                        source: Box::new(source),
                    }
                }
                _ => SpecError::Push {
                    service: service.to_owned(),
                    source: Box::new(source),
                },
            }
        })
}

/// `{version}` in an image reference is the release's `VERSION` variable.
fn image_reference(image: &str, release: &LoadedRelease) -> Result<String, SpecError> {
    if !image.contains("{version}") {
        return Ok(image.to_owned());
    }
    let version = release
        .resolved
        .config
        .env
        .iter()
        .find(|(name, _)| name == "VERSION")
        .map(|(_, value)| value.clone())
        .ok_or_else(|| SpecError::NoVersion {
            image: image.to_owned(),
        })?;
    Ok(image.replace("{version}", &version))
}

/// Runs the release command once in the release folder, with the release's environment.
pub async fn run_release_command(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &LoadedRelease,
    command: &str,
) -> Result<(), SpecError> {
    let dir = workdir(engine, release);
    let mut env = base_env(release)?;
    env.push(("ROLLWAY_APP".to_owned(), deployment.app.clone()));
    env.push((
        "ROLLWAY_ENVIRONMENT".to_owned(),
        deployment.environment.clone(),
    ));
    env.push(("ROLLWAY_RELEASE".to_owned(), release.number.to_string()));
    // An app of containers runs its release command as a one-off container of its first image.
    let image = release
        .resolved
        .config
        .services
        .iter()
        .find_map(|service| release.images.get(&service.name));
    if let Some(image) = image {
        let driver = engine.drivers.container().await?;
        engine.record_progress(
            Subject::deployment(deployment),
            &DeploymentEvent::Command {
                label: format!("release command in a one-off container of {}", short(image)),
                command: command.to_owned(),
            },
        );
        let scrubber = scrubber(engine, deployment)?;
        let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
        let mut n_lines = 0usize;
        // As its app's user, or as the manifest's `user` of the service whose image it is.
        let confinement = driver::Confinement {
            user: Some(app_home(engine, &deployment.app, &deployment.environment)?.user),
            container_user: release
                .resolved
                .config
                .services
                .iter()
                .find(|service| release.images.get(&service.name) == Some(image))
                .and_then(|service| service.user.clone()),
            ..driver::Confinement::default()
        };
        let on_line = |line: &str| {
            let line = scrubber.scrub(line).into_owned();
            n_lines += 1;
            if n_lines <= MAX_OUTPUT_EVENTS {
                engine.record_progress(
                    Subject::deployment(deployment),
                    &DeploymentEvent::Output { line: line.clone() },
                );
            }
            tail.push_back(line);
            if tail.len() > 10 {
                tail.pop_front();
            }
        };
        let code = if release.resolved.driver == manifest::Driver::Swarm {
            // On the swarm: a one-off Swarm job (replicated-job) on the app's overlay network.
            let swarm = engine.drivers.swarm().await?;
            let key = AppEnv::new(deployment.app.clone(), deployment.environment.clone());
            let prefix = format!(
                "{}-{}-r{}-release-command",
                deployment.app, deployment.environment, release.number
            );
            let spec = InstanceSpec {
                instance_id: format!("{prefix}-1"),
                workdir: dir.clone(),
                command: command.to_owned(),
                env: env.clone(),
                port: 0,
                stop_timeout: Duration::from_secs(10),
                image: Some(image.clone()),
                confinement,
                cluster: Some(driver::swarm::ClusterSpec {
                    service: format!("rollway-{prefix}"),
                    slot: 1,
                    replicas: 1,
                    network: swarm_network(&key),
                    registry_auth: cluster_registry(engine, release)?.pull,
                    ..driver::swarm::ClusterSpec::default()
                }),
            };
            swarm
                .run_job(&spec, RELEASE_TIMEOUT, on_line)
                .await
                .map_err(|error| SpecError::Job(Box::new(error)))?
        } else {
            driver
                .run_once(image, &env, command, &confinement, on_line)
                .await
                .map_err(|error| SpecError::RunOnce(Box::new(error)))?
        };
        if code != 0 {
            let tail: Vec<String> = tail.iter().map(|line| format!("  | {line}")).collect();
            return Err(SpecError::OneOffFailed {
                command: command.to_owned(),
                code,
                tail: tail.join("\n"),
            });
        }
        return Ok(());
    }
    run_command(engine, deployment, &dir, "release command", command, &env).await
}

pub(crate) async fn run_build(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    dir: &Path,
    command: &str,
    env: &[(String, String)],
) -> Result<(), SpecError> {
    run_command(engine, deployment, dir, "build command", command, env).await
}

/// The scrubber of a deployment's app and environment (every version of every secret).
pub fn scrubber(engine: &Engine, deployment: &Deployment) -> Result<Scrubber, SpecError> {
    Scrubber::for_environment(
        &engine.store,
        &engine.master_key,
        &deployment.app,
        &deployment.environment,
    )
    .map_err(SpecError::Scrubber)
}

/// Most output lines of one command that become events (all of them go to the deployment's log).
const MAX_OUTPUT_EVENTS: usize = 200;

/// Runs `command` with `sh -c` in `dir`: its output goes to the deployment's log file and, line by
/// line, to the deployment's events (so `rollway deploy` shows it live).
async fn run_command(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    dir: &Path,
    label: &str,
    command: &str,
    env: &[(String, String)],
) -> Result<(), SpecError> {
    use tokio::io::AsyncBufReadExt as _;

    std::fs::create_dir_all(&engine.paths.deploy_logs).map_err(|source| SpecError::CreateDir {
        path: engine.paths.deploy_logs.clone(),
        source,
    })?;
    let confinement = driver::Confinement {
        // Build, release and smoke commands are the deploy's own work: below the serving
        // instances (`driver::priority`).
        nice: driver::priority::deploy_nice(),
        ..app_home(engine, &deployment.app, &deployment.environment)?.confinement(
            &engine.isolation,
            &engine.placement,
            "commands",
        )
    };
    confinement.prepare().map_err(|source| SpecError::TempDir {
        label: label.to_owned(),
        source,
    })?;
    let log_path = engine
        .paths
        .deploy_logs
        .join(format!("{}.log", deployment.id));
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|source| SpecError::OpenLog {
            path: log_path.clone(),
            source,
        })?;
    let record = |event: DeploymentEvent| {
        engine.record_progress(Subject::deployment(deployment), &event);
    };
    // Built before the command starts: it holds every version of every secret, so whatever the
    // command prints is scrubbed before it reaches the log file, an event or a failure reason.
    let scrubber = scrubber(engine, deployment)?;
    record(DeploymentEvent::Command {
        label: label.to_owned(),
        command: command.to_owned(),
    });
    // Short-lived and awaited inside the deploy step, unlike instances, so pipes are safe here.
    // Confined like the app's instances: its user, or the sandbox, and a private HOME/TMPDIR.
    let mut child = confinement
        .command(command, dir)
        .env_clear()
        .envs(confinement.inherited_env())
        .envs(
            env.iter()
                .map(|(key, value)| (key.as_str(), value.as_str())),
        )
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| SpecError::Spawn {
            label: label.to_owned(),
            command: command.to_owned(),
            source,
        })?;
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(SpecError::NoPipes {
            label: label.to_owned(),
        });
    };
    let mut out_lines = tokio::io::BufReader::new(stdout).lines();
    let mut err_lines = tokio::io::BufReader::new(stderr).lines();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut n_lines = 0usize;
    let run = async {
        let (mut out_open, mut err_open) = (true, true);
        while out_open || err_open {
            let line = tokio::select! {
                line = out_lines.next_line(), if out_open => match line {
                    Ok(Some(line)) => Some(line),
                    _ => { out_open = false; None }
                },
                line = err_lines.next_line(), if err_open => match line {
                    Ok(Some(line)) => Some(line),
                    _ => { err_open = false; None }
                },
            };
            let Some(line) = line else { continue };
            let line = scrubber.scrub(&line).into_owned();
            let _ = writeln!(log, "{line}");
            n_lines += 1;
            if n_lines <= MAX_OUTPUT_EVENTS {
                record(DeploymentEvent::Output { line: line.clone() });
            }
            tail.push_back(line);
            if tail.len() > 10 {
                tail.pop_front();
            }
        }
        child.wait().await
    };
    let status = match tokio::time::timeout(BUILD_TIMEOUT, run).await {
        Ok(status) => status.map_err(|source| SpecError::Wait {
            label: label.to_owned(),
            source,
        })?,
        Err(_) => {
            return Err(SpecError::Timeout {
                label: label.to_owned(),
                command: command.to_owned(),
                seconds: BUILD_TIMEOUT.as_secs(),
            });
        }
    };
    if status.success() {
        Ok(())
    } else {
        let tail: Vec<String> = tail.iter().map(|line| format!("  | {line}")).collect();
        Err(SpecError::CommandFailed {
            label: label.to_owned(),
            command: command.to_owned(),
            status,
            tail: tail.join("\n"),
        })
    }
}

/// Runs the smoke command against the new instances (`ROLLWAY_SMOKE_URL`: the first one,
/// `ROLLWAY_SMOKE_URLS`: all, space-separated) before any traffic reaches them.
pub async fn run_smoke(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &LoadedRelease,
    command: &str,
    instance_ids: &[String],
) -> Result<(), SpecError> {
    let runtime = engine.runtime(&AppEnv::new(
        deployment.app.clone(),
        deployment.environment.clone(),
    ));
    let urls: Vec<String> = instance_ids
        .iter()
        .filter_map(|id| runtime.instances.get(id))
        .filter(|instance| {
            release
                .resolved
                .config
                .routes
                .iter()
                .any(|route| route.service == instance.service)
        })
        .map(|instance| format!("http://{}", instance.addr()))
        .collect();
    let mut env = base_env(release)?;
    env.push((
        "ROLLWAY_SMOKE_URL".to_owned(),
        urls.first().cloned().unwrap_or_default(),
    ));
    env.push(("ROLLWAY_SMOKE_URLS".to_owned(), urls.join(" ")));
    env.push(("ROLLWAY_RELEASE".to_owned(), release.number.to_string()));
    let dir = workdir(engine, release);
    run_command(engine, deployment, &dir, "smoke command", command, &env).await
}

/// Backs up the database named by `variable` before the release command; the backup's id, or
/// `None` when there is no database yet.
pub async fn backup_before_release(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &LoadedRelease,
    variable: &str,
) -> Result<Option<String>, SpecError> {
    let target = database_target(engine, release, variable)?;
    let taken = crate::backup::create(
        engine,
        crate::backup::Request {
            app: &deployment.app,
            environment: &deployment.environment,
            release: Some(release.number),
            deployment_id: Some(&deployment.id),
            reason: crate::store::BackupReason::Release,
            target: &target,
            keep: release.resolved.config.backup.keep as usize,
            remote: crate::backup::remote::of_release(engine, release),
        },
    )
    .await
    .map_err(|source| SpecError::Backup {
        target: target.display(),
        source: Box::new(source),
    })?;
    let subject = Subject::deployment(deployment);
    match taken {
        crate::backup::Taken::Backup(record) => {
            engine.record_progress(
                subject,
                &DeploymentEvent::BackupTaken {
                    backup: record.id.clone(),
                    target: record.target.clone(),
                    size: record.size,
                },
            );
            Ok(Some(record.id))
        }
        crate::backup::Taken::NothingYet(reason) => {
            engine.record_progress(subject, &DeploymentEvent::BackupSkipped { reason });
            Ok(None)
        }
    }
}

/// The database a release's `variable` names, from its resolved environment (secrets included).
pub fn database_target(
    engine: &Engine,
    release: &LoadedRelease,
    variable: &str,
) -> Result<crate::backup::Target, SpecError> {
    let env = base_env(release)?;
    let url = env
        .iter()
        .find(|(name, _)| name == variable)
        .map(|(_, value)| value.clone())
        .ok_or_else(|| SpecError::NoDatabase {
            variable: variable.to_owned(),
            environment: release.resolved.environment.clone(),
        })?;
    Ok(crate::backup::Target::parse(
        &url,
        &workdir(engine, release),
    )?)
}

/// The folder a release's commands and instances run in, in its app environment's folder (the
/// manifest's app name is the deployed app's: `start` refuses a mismatch).
pub fn workdir(engine: &Engine, release: &LoadedRelease) -> std::path::PathBuf {
    let build = release
        .resolved
        .config
        .build
        .as_ref()
        .and_then(|build| build.command.as_deref());
    engine.paths.build_dir(
        &release.resolved.config.app.name,
        &release.resolved.environment,
        &release.artifact,
        build,
    )
}

/// After an upgrade from a version that kept release folders in the state directory
/// (`<state>/builds/<name>`): copies the release's folder to its place in the app environment's
/// folder and hands it to the app's user, so that an adopted instance that crashes can start
/// again. Nothing to do when the folder is in place or there is no old one.
pub fn carry_over_legacy_build(engine: &Engine, release: &LoadedRelease) -> Result<(), SpecError> {
    let dir = workdir(engine, release);
    let Some(name) = dir.file_name() else {
        return Ok(());
    };
    let legacy = engine.paths.state_dir.join("builds").join(name);
    if dir.exists() || !legacy.is_dir() {
        return Ok(());
    }
    let home = app_home(
        engine,
        &release.resolved.config.app.name,
        &release.resolved.environment,
    )?;
    let parent = dir
        .parent()
        .ok_or_else(|| SpecError::NoParent(dir.clone()))?;
    std::fs::create_dir_all(parent).map_err(|source| SpecError::CreateDir {
        path: parent.to_path_buf(),
        source,
    })?;
    let staging = parent.join(format!(".{}.carrying-over", release.number));
    let _ = std::fs::remove_dir_all(&staging);
    crate::isolation::copy_tree(&legacy, &staging)
        .and_then(|()| home.take_ownership(&staging))
        .and_then(|()| std::fs::rename(&staging, &dir))
        .map_err(|source| SpecError::CarryOver {
            from: legacy.clone(),
            to: dir.clone(),
            source,
        })?;
    tracing::info!(message = "Carried a release folder over from the state directory.", from = %legacy.display(), to = %dir.display());
    Ok(())
}

/// The app environment's folder and user, made on first use.
pub fn app_home(
    engine: &Engine,
    app: &str,
    environment: &str,
) -> Result<crate::isolation::AppHome, SpecError> {
    Ok(crate::isolation::AppHome::ensure(
        &engine.paths.apps,
        app,
        environment,
    )?)
}

/// `(service, replica index)` for every instance the release runs.
pub fn wanted_instances(resolved: &ResolvedManifest) -> Vec<(String, usize)> {
    resolved
        .config
        .services
        .iter()
        .flat_map(|service| {
            (0..service.replicas as usize).map(|index| (service.name.clone(), index))
        })
        .collect()
}

pub fn instance_id(key: &AppEnv, release: ReleaseNumber, service: &str, index: usize) -> String {
    format!(
        "{}-{}-r{release}-{service}-{}",
        key.app,
        key.environment,
        index + 1
    )
}

/// Starts one instance of `service` and records it as starting.
pub async fn start_instance(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: &LoadedRelease,
    service_name: &str,
    index: usize,
) -> Result<String, SpecError> {
    let id = instance_id(key, release.number, service_name, index);
    let service = release
        .resolved
        .config
        .service(service_name)
        .ok_or_else(|| SpecError::NoService {
            service: service_name.to_owned(),
            release: release.number,
        })?;
    let port = free_port().map_err(|source| SpecError::NoPort {
        instance: id.clone(),
        source,
    })?;
    let mut spec = instance_spec(engine, key, release, service, &id, port)?;
    if spec.image.is_none() && spec.cluster.is_none() {
        // The deploy's own work runs below the serving instances: a new process instance starts
        // lowered (where the agent may promote it back) and is promoted once it passes its gate
        // (`verify_instance` in the executor), before it takes traffic.
        spec.confinement.nice = driver::priority::instance_start_nice();
    }
    engine.with_runtime(key, |runtime| {
        runtime.instances.insert(
            id.clone(),
            RuntimeInstance {
                release: release.number,
                service: service_name.to_owned(),
                port,
                host: std::net::Ipv4Addr::LOCALHOST.into(),
                phase: InstancePhase::Starting,
                warm_until: None,
                unhealthy: false,
            },
        );
    });
    persist_instance(engine, key, &id);
    let on_swarm = spec.cluster.clone();
    let started = match engine.drivers.start(spec).await {
        Ok(()) => match &on_swarm {
            // The proxy reaches a task on its node, on the port the engine published for it.
            Some(cluster) => {
                task_address(engine, &id, &cluster.service, service.health.as_ref()).await
            }
            None => Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port))),
        },
        Err(error) => Err(error.into()),
    };
    let address = match started {
        Ok(address) => address,
        Err(error) => {
            // Nothing runs: forget it now rather than leave it `starting` for good.
            let _ = engine.drivers.stop(&id).await;
            engine.with_runtime(key, |runtime| runtime.instances.remove(&id));
            let _ = engine.store.remove_instance(&id);
            return Err(error);
        }
    };
    if on_swarm.is_some() {
        engine.with_runtime(key, |runtime| {
            if let Some(instance) = runtime.instances.get_mut(&id) {
                instance.host = address.ip();
                instance.port = address.port();
            }
        });
        persist_instance(engine, key, &id);
    }
    engine.record_progress(
        Subject::app(key),
        &DeploymentEvent::InstanceStarted {
            instance: id.clone(),
            port: address.port(),
        },
    );
    Ok(id)
}

/// The end of [`SpecError::NoTask`]'s message: what Swarm said, and what to do about an image a
/// node could not pull (Swarm reports a refused pull, an untrusted registry certificate included,
/// as `No such image`).
fn no_task_reason(service: &str, reason: Option<&str>) -> String {
    match reason {
        Some(reason)
            if reason.contains("No such image")
                || reason.contains("x509")
                || reason.contains("pull access denied") =>
        {
            format!(
                "Swarm says `{reason}`: a node could not pull the release's image; check that every node reaches the registry and trusts its certificate (for the agent's own registry: save the output of `rollway registry ca` as `/etc/docker/certs.d/HOST:PORT/ca.crt` on every node), then deploy again"
            )
        }
        Some(reason) => format!(
            "Swarm says `{reason}` (`docker service ps {service} --no-trunc` shows every attempt)"
        ),
        None => format!(
            "Swarm could not place or start it; `docker service ps {service} --no-trunc` says why"
        ),
    }
}

/// Waits until the swarm instance's task runs with a published port, bounded by the service's
/// `health.start_timeout` (60 s without a health check); answers its node's address and port.
async fn task_address(
    engine: &Engine,
    id: &str,
    service: &str,
    health: Option<&Health>,
) -> Result<std::net::SocketAddr, SpecError> {
    let patience = health.map_or(Duration::from_secs(60), |health| {
        health.start_timeout.as_std()
    });
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        if let Some(address) = engine.drivers.address(id) {
            return Ok(address);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(SpecError::NoTask {
                instance: id.to_owned(),
                service: service.to_owned(),
                seconds: patience.as_secs(),
                reason: engine.drivers.task_error(id),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The driver spec of an instance (also used to adopt it after a restart).
pub fn instance_spec(
    engine: &Engine,
    key: &AppEnv,
    release: &LoadedRelease,
    service: &Service,
    id: &str,
    port: u16,
) -> Result<InstanceSpec, SpecError> {
    let (command, image) =
        match &service.source {
            manifest::ServiceSource::Run { run } => (run.clone(), None),
            manifest::ServiceSource::Image { run, .. }
            | manifest::ServiceSource::Dockerfile { run, .. } => {
                let image = release.images.get(&service.name).cloned().ok_or_else(|| {
                    SpecError::NoImage {
                        release: release.number,
                        service: service.name.clone(),
                    }
                })?;
                (run.clone().unwrap_or_default(), Some(image))
            }
        };
    let mut env = base_env(release)?;
    for (name, value) in &service.env {
        let value = interpolate(name, value, &release.secrets)?;
        env.retain(|(existing, _)| existing != name);
        env.push((name.clone(), value));
    }
    env.push(("ROLLWAY_APP".to_owned(), key.app.clone()));
    env.push(("ROLLWAY_ENVIRONMENT".to_owned(), key.environment.clone()));
    env.push(("ROLLWAY_RELEASE".to_owned(), release.number.to_string()));
    env.push(("ROLLWAY_INSTANCE".to_owned(), id.to_owned()));
    let home = app_home(engine, &key.app, &key.environment)?;
    let confinement = if image.is_some() {
        // A container has its own file system and processes; it only needs a non-root user.
        driver::Confinement {
            user: Some(home.user),
            container_user: service.user.clone(),
            ..driver::Confinement::default()
        }
    } else {
        home.confinement(&engine.isolation, &engine.placement, id)
    };
    let cluster = if release.resolved.driver == manifest::Driver::Swarm {
        cluster_spec(key, service, id, cluster_registry(engine, release)?.pull)
    } else {
        None
    };
    Ok(InstanceSpec {
        instance_id: id.to_owned(),
        workdir: workdir(engine, release),
        command,
        env,
        port,
        stop_timeout: service.stop_timeout.as_std(),
        image,
        confinement,
        cluster,
    })
}

/// Where instance `id` (`<app>-<env>-r<N>-<service>-<slot>`) runs on the swarm: slot `<slot>`
/// of the Swarm service `rollway-<app>-<env>-r<N>-<service>` on the app environment's overlay.
fn cluster_spec(
    key: &AppEnv,
    service: &Service,
    id: &str,
    registry_auth: Option<driver::swarm::RegistryAuth>,
) -> Option<driver::swarm::ClusterSpec> {
    let (prefix, slot) = id.rsplit_once('-')?;
    let placement = &service.placement;
    let resources = placement.resources;
    Some(driver::swarm::ClusterSpec {
        service: format!("rollway-{prefix}"),
        slot: slot.parse().ok()?,
        replicas: service.replicas,
        network: swarm_network(key),
        constraints: placement.constraints.clone(),
        max_per_node: placement.max_per_node,
        nano_cpus: resources.and_then(|resources| resources.nano_cpus),
        memory_bytes: resources
            .and_then(|resources| resources.memory)
            .map(|memory| memory.bytes()),
        registry_auth,
    })
}

/// Where a swarm release's images go and how nodes pull them: the manifest's `[build] registry`
/// with its credentials (both ways), else `ROLLWAY_SWARM_REGISTRY`, else the agent's own registry
/// (`crate::registry::default_cluster_registry`).
fn cluster_registry(
    engine: &Engine,
    release: &LoadedRelease,
) -> Result<crate::registry::ClusterRegistry, SpecError> {
    match manifest_registry(release) {
        Some(registry) => {
            let auth = registry_auth(release)?;
            Ok(crate::registry::ClusterRegistry {
                prefix: registry.address(),
                push: auth.clone(),
                pull: auth,
            })
        }
        None => Ok(crate::registry::default_cluster_registry(&engine.registry)?),
    }
}

/// The manifest's registry (`[build] registry`), if any: where release images go instead of
/// `ROLLWAY_SWARM_REGISTRY` or the agent's.
fn manifest_registry(release: &LoadedRelease) -> Option<&manifest::Registry> {
    release.resolved.config.build.as_ref()?.registry.as_ref()
}

/// The credentials of the manifest's registry, read from the release's secrets (`None` for an
/// open registry or none named).
fn registry_auth(
    release: &LoadedRelease,
) -> Result<Option<driver::swarm::RegistryAuth>, SpecError> {
    let Some(registry) = manifest_registry(release) else {
        return Ok(None);
    };
    let Some(credentials) = &registry.credentials else {
        return Ok(None);
    };
    let secret = |name: &String| {
        release
            .secrets
            .get(name)
            .map(|secret| secret.expose().to_owned())
            .ok_or_else(|| SpecError::SecretNotSet {
                name: name.clone(),
                environment: release.resolved.environment.clone(),
            })
    };
    Ok(Some(driver::swarm::RegistryAuth {
        server: registry.host.clone(),
        username: secret(&credentials.user)?,
        password: secret(&credentials.password)?,
    }))
}

/// Removes what `sweep` names of an app environment's Swarm objects when `release` of it runs
/// on the swarm (nothing otherwise): the release-command job a killed agent left, or everything
/// of a destroyed environment. Logged, never fatal: the caller's own work is done.
pub async fn sweep_swarm(
    engine: &Arc<Engine>,
    key: &AppEnv,
    release: ReleaseNumber,
    sweep: driver::swarm::Sweep,
) {
    let on_swarm = load_release(engine, key, release)
        .is_ok_and(|release| release.resolved.driver == manifest::Driver::Swarm);
    if !on_swarm {
        return;
    }
    let swept = match engine.drivers.swarm().await {
        Ok(swarm) => swarm
            .sweep(&key.app, &key.environment, sweep)
            .await
            .map_err(|error| crate::report::chain(&error)),
        Err(error) => Err(crate::report::chain(&error)),
    };
    match swept {
        Ok(removed) if removed.is_empty() => {}
        Ok(removed) => {
            tracing::info!(message = "Removed the swarm's leftovers.", app = %key.app, environment = %key.environment, ?sweep, ?removed)
        }
        Err(error) => {
            tracing::error!(message = "Cannot remove the swarm's leftovers.", app = %key.app, environment = %key.environment, ?sweep, %error)
        }
    }
}

/// The attachable overlay network of an app environment on the swarm.
pub fn swarm_network(key: &AppEnv) -> String {
    format!("rollway-{}-{}", key.app, key.environment)
}

/// The app-wide variables: the manifest's `[env]` with `${NAME}` filled in from the release's
/// secrets, every listed secret under its own name, and the environment's flags as `FLAG_NAME`.
pub fn base_env(release: &LoadedRelease) -> Result<Vec<(String, String)>, SpecError> {
    let mut env: Vec<(String, String)> = Vec::new();
    // The backup remote's credentials are the agent's alone: an app (or a compromised one) that
    // held them could delete its off-host backups.
    // So are the registry's: an app could push over the images of every release.
    let registry = manifest_registry(release).and_then(|registry| registry.credentials.as_ref());
    let agent_only: Vec<&str> = release
        .resolved
        .config
        .backup
        .remote
        .iter()
        .flat_map(|remote| {
            [
                remote.access_key_id.as_str(),
                remote.secret_access_key.as_str(),
            ]
        })
        .chain(
            registry
                .into_iter()
                .flat_map(|credentials| [credentials.user.as_str(), credentials.password.as_str()]),
        )
        .collect();
    for name in &release.resolved.secrets {
        if agent_only.contains(&name.as_str()) {
            continue;
        }
        let value = release
            .secrets
            .get(name)
            .ok_or_else(|| SpecError::SecretNotSet {
                name: name.clone(),
                environment: release.resolved.environment.clone(),
            })?;
        env.push((name.clone(), value.expose().to_owned()));
    }
    for (name, value) in &release.resolved.config.env {
        let value = interpolate(name, value, &release.secrets)?;
        env.retain(|(existing, _)| existing != name);
        env.push((name.clone(), value));
    }
    for (flag, on) in &release.resolved.config.flags {
        env.push((format!("FLAG_{flag}"), on.to_string()));
    }
    Ok(env)
}

fn interpolate(
    name: &str,
    value: &str,
    secrets: &BTreeMap<String, Secret>,
) -> Result<String, SpecError> {
    manifest::interpolate::interpolate(value, |reference| {
        secrets
            .get(reference)
            .map(|secret| secret.expose().to_owned())
    })
    .map_err(|unresolved| match unresolved {
        manifest::interpolate::Unresolved::Missing(missing) => SpecError::Unset {
            name: name.to_owned(),
            missing: missing.join(", "),
        },
        manifest::interpolate::Unresolved::Syntax(reason) => SpecError::Syntax {
            name: name.to_owned(),
            reason,
        },
    })
}

/// The routes of a release's manifest, as the runtime keeps them.
pub fn routes(resolved: &ResolvedManifest) -> Vec<RouteInfo> {
    resolved
        .config
        .routes
        .iter()
        .map(|route| {
            let service = resolved.config.service(&route.service);
            RouteInfo {
                service: route.service.clone(),
                hosts: route.hosts.clone(),
                paths: route.paths.clone(),
                drain: service.map_or(manifest::defaults::DRAIN.as_std(), |service| {
                    service.drain.as_std()
                }),
                slow_start: route.slow_start.as_std(),
                settings: route_settings(route, service.map(|service| service.protocol)),
                edge: crate::edge::route_edge_info(route, service),
            }
        })
        .collect()
}

/// What the proxy is told about one route: the manifest's `[routes.X]` and the service's protocol.
fn route_settings(
    route: &manifest::Route,
    protocol: Option<manifest::Protocol>,
) -> proxy::RouteSettings {
    proxy::RouteSettings {
        timeout: route.timeout.as_std(),
        idle_timeout: route.idle_timeout.as_std(),
        max_body_bytes: route.max_body.bytes(),
        max_header_fields: usize::try_from(route.max_header_fields).unwrap_or(usize::MAX),
        protocol: match protocol.unwrap_or_default() {
            manifest::Protocol::Http1 => proxy::UpstreamProtocol::Http1,
            manifest::Protocol::H2c => proxy::UpstreamProtocol::H2c,
            manifest::Protocol::Grpc => proxy::UpstreamProtocol::Grpc,
        },
        tls: proxy::RouteTls {
            redirect: route.tls.is_on(),
            hsts_seconds: route.hsts.map(|hsts| hsts.as_std().as_secs()),
        },
        hold: route.hold.as_std(),
    }
}

/// One health check of an instance of `service` at `addr`, as its manifest says (path, host,
/// timeout, protocol); `None` when the service has no health check.
pub async fn check_instance(
    release: &LoadedRelease,
    service: &Service,
    addr: std::net::SocketAddr,
) -> Option<bool> {
    let health = service.health.as_ref()?;
    let host = health_host(&release.resolved, service, health);
    Some(
        crate::health::probe(
            addr,
            &health.path,
            &host,
            health.timeout.as_std(),
            service.protocol,
        )
        .await
        .is_ok(),
    )
}

/// Host header of health checks: `health.host`, else the route's first host, else `localhost`.
pub fn health_host(resolved: &ResolvedManifest, service: &Service, health: &Health) -> String {
    health.host.clone().unwrap_or_else(|| {
        resolved
            .config
            .routes
            .iter()
            .find(|route| route.service == service.name)
            .and_then(|route| route.hosts.first().cloned())
            .unwrap_or_else(|| "localhost".to_owned())
    })
}

pub fn set_phase(
    engine: &Engine,
    key: &AppEnv,
    id: &str,
    phase: InstancePhase,
    warm_until: Option<i64>,
) {
    engine.with_runtime(key, |runtime| {
        if let Some(instance) = runtime.instances.get_mut(id) {
            instance.phase = phase;
            instance.warm_until = warm_until;
        }
    });
    persist_instance(engine, key, id);
}

pub(crate) fn persist_instance(engine: &Engine, key: &AppEnv, id: &str) {
    let Some(instance) = engine.runtime(key).instances.get(id).cloned() else {
        return;
    };
    let record = InstanceRecord {
        instance_id: id.into(),
        app: key.app.clone(),
        environment: key.environment.clone(),
        release: instance.release,
        service: instance.service.clone(),
        port: instance.port,
        host: instance.host,
        state: instance.phase.as_str().to_owned(),
        warm_until: instance.warm_until,
        updated_at: now_ms(),
    };
    if let Err(error) = engine.store.upsert_instance(&record) {
        tracing::error!(message = "Cannot record an instance.", instance = %id, %error);
    }
}

/// Takes instances out of routing, lets them drain, then stops them. Routing first, always.
pub async fn stop_instances(engine: &Arc<Engine>, key: &AppEnv, ids: &[String]) {
    if ids.is_empty() {
        return;
    }
    let mut drain = Duration::ZERO;
    engine.with_runtime(key, |runtime| {
        for id in ids {
            if let Some(instance) = runtime.instances.get_mut(id) {
                instance.phase = InstancePhase::Warm;
            }
        }
        drain = runtime
            .routes
            .iter()
            .map(|route| route.drain)
            .max()
            .unwrap_or_default();
    });
    if engine.push_routes().await.is_ok() {
        wait_gone_from_proxy(engine, ids, drain).await;
    }
    for id in ids {
        if let Err(error) = engine.drivers.stop(id).await {
            tracing::warn!(message = "Cannot stop an instance.", instance = %id, %error);
        }
        engine.with_runtime(key, |runtime| runtime.instances.remove(id));
        let _ = engine.store.remove_instance(id);
    }
}

/// Waits (bounded by the drain time and a margin) until the proxy no longer holds `ids`.
pub async fn wait_gone_from_proxy(engine: &Engine, ids: &[String], drain: Duration) {
    let deadline = tokio::time::Instant::now() + drain + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        match engine.proxy.observed_instances().await {
            Ok(present) if !ids.iter().any(|id| present.contains(id)) => return,
            Ok(_) => {}
            Err(_) => return,
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn free_port() -> std::io::Result<u16> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", 0))?;
    Ok(listener.local_addr()?.port())
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

#[cfg(test)]
mod tests {
    use super::SpecError;

    fn no_task(reason: Option<&str>) -> String {
        SpecError::NoTask {
            instance: "shop-production-r3-web-1".to_owned(),
            service: "rollway-shop-production-r3-web".to_owned(),
            seconds: 60,
            reason: reason.map(str::to_owned),
        }
        .to_string()
    }

    #[test]
    fn a_task_without_a_pullable_image_names_swarms_reason_and_the_registry_fix() {
        let message = no_task(Some(
            "No such image: 10.0.0.5:7443/rollway/shop-production-web@sha256:ab12",
        ));
        assert!(
            message
                .contains("`No such image: 10.0.0.5:7443/rollway/shop-production-web@sha256:ab12`"),
            "{message}"
        );
        assert!(message.contains("rollway registry ca"), "{message}");
        assert!(message.contains("/etc/docker/certs.d/"), "{message}");
    }

    #[test]
    fn other_task_errors_are_quoted_and_silence_points_at_docker_service_ps() {
        let message = no_task(Some("no suitable node (insufficient resources on 2 nodes)"));
        assert!(
            message.contains("Swarm says `no suitable node (insufficient resources on 2 nodes)`"),
            "{message}"
        );
        assert!(!message.contains("registry ca"), "{message}");
        let message = no_task(None);
        assert!(
            message.contains("docker service ps rollway-shop-production-r3-web --no-trunc"),
            "{message}"
        );
    }
}
