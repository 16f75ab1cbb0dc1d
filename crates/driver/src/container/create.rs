//! What the driver asks the engine to create: container names, labels, and the create body of an
//! instance or a one-off container (entrypoint, published port, env-file mount, restart policy).
//!
//! Pure functions of the spec and the image's config; no engine calls here.

use std::collections::HashMap;
use std::path::Path;

use bollard::models::{
    ContainerCreateBody, HostConfig, ImageConfig, Mount, MountType, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};

use super::env_file;
use crate::{Confinement, InstanceSpec};

/// Every container the driver creates carries this label, with the driver's `owner` as value;
/// `running()` and the tests' cleanup select by it.
pub const LABEL_OWNER: &str = "dev.rollway.owner";
/// The instance id of an instance's container; how `adopt` and `running` find it.
pub const LABEL_INSTANCE: &str = "dev.rollway.instance";
/// App, environment and release, copied from the spec's `ROLLWAY_*` variables when present.
pub const LABEL_APP: &str = "dev.rollway.app";
pub const LABEL_ENVIRONMENT: &str = "dev.rollway.environment";
pub const LABEL_RELEASE: &str = "dev.rollway.release";
/// Marks a one-off container of [`super::ContainerDriver::run_once`].
pub const LABEL_RUN_ONCE: &str = "dev.rollway.run-once";

/// The env variables whose values become labels (name of variable, label).
const IDENTITY_LABELS: [(&str, &str); 3] = [
    ("ROLLWAY_APP", LABEL_APP),
    ("ROLLWAY_ENVIRONMENT", LABEL_ENVIRONMENT),
    ("ROLLWAY_RELEASE", LABEL_RELEASE),
];

/// The container of an instance: `rollway-<instance id>`.
pub(crate) fn container_name(instance_id: &str) -> String {
    format!("rollway-{instance_id}")
}

/// What the container runs: the entrypoint script that sources the env file, then `command`
/// (`/bin/sh -c <command>` when given, else the image's own entrypoint and command).
pub(crate) fn entrypoint_and_cmd(
    command: &str,
    image_config: Option<&ImageConfig>,
) -> Result<(Vec<String>, Vec<String>), String> {
    let entrypoint = vec![
        "/bin/sh".to_owned(),
        "-c".to_owned(),
        env_file::ENTRYPOINT_SCRIPT.to_owned(),
        env_file::ENTRYPOINT_NAME.to_owned(),
    ];
    let cmd: Vec<String> = if command.trim().is_empty() {
        let image_entrypoint = image_config
            .and_then(|config| config.entrypoint.clone())
            .unwrap_or_default();
        let image_cmd = image_config
            .and_then(|config| config.cmd.clone())
            .unwrap_or_default();
        image_entrypoint.into_iter().chain(image_cmd).collect()
    } else {
        vec!["/bin/sh".to_owned(), "-c".to_owned(), command.to_owned()]
    };
    if cmd.is_empty() {
        return Err("the image has no entrypoint or command, and the service gives none".into());
    }
    Ok((entrypoint, cmd))
}

/// The user a container runs as: the manifest's `user` when it says one; else the app's own
/// (`uid:gid`) when the image would run as root; else the image's non-root `USER`. `None` (the
/// image's root) only when no app user is given. The engine's socket is never mounted into a
/// container, so this user cannot reach the engine.
pub(crate) fn run_as(confinement: &Confinement, image_user: Option<&str>) -> Option<String> {
    if let Some(user) = &confinement.container_user {
        return Some(user.clone());
    }
    match env_file::Reader::of_image_user(image_user) {
        env_file::Reader::Root => confinement
            .user
            .map(|user| format!("{}:{}", user.uid, user.gid)),
        env_file::Reader::Uid(_) | env_file::Reader::Named => image_user.map(str::to_owned),
    }
}

/// The create body of an instance's container.
pub(crate) fn instance_body(
    spec: &InstanceSpec,
    image: &str,
    image_config: Option<&ImageConfig>,
    owner: &str,
    network: Option<&str>,
    env_path: &Path,
) -> Result<ContainerCreateBody, String> {
    let (entrypoint, cmd) = entrypoint_and_cmd(&spec.command, image_config)?;
    let user = run_as(
        &spec.confinement,
        image_config.and_then(|config| config.user.as_deref()),
    );
    let mut labels = HashMap::from([
        (LABEL_OWNER.to_owned(), owner.to_owned()),
        (LABEL_INSTANCE.to_owned(), spec.instance_id.clone()),
    ]);
    insert_identity_labels(&mut labels, &spec.env);
    let port = format!("{}/tcp", spec.port);
    let port_bindings = HashMap::from([(
        port.clone(),
        Some(vec![PortBinding {
            // Loopback only: the proxy on this host is the instance's only client.
            host_ip: Some("127.0.0.1".to_owned()),
            host_port: Some(spec.port.to_string()),
        }]),
    )]);
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        user,
        // The only variable the engine sees; everything else is in the env file.
        env: Some(vec![format!("PORT={}", spec.port)]),
        labels: Some(labels),
        exposed_ports: Some(vec![port]),
        host_config: Some(HostConfig {
            port_bindings: Some(port_bindings),
            // The engine restarts a crashed instance, also while no agent runs; see the
            // module documentation of `container` for why not Rollway's own supervisor.
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::UNLESS_STOPPED),
                maximum_retry_count: None,
            }),
            ..common_host_config(network, env_path)
        }),
        ..ContainerCreateBody::default()
    })
}

/// App, environment and release labels from the `ROLLWAY_*` variables of `env` (the last
/// value of each wins, as in the env file).
fn insert_identity_labels(labels: &mut HashMap<String, String>, env: &[(String, String)]) {
    for (variable, label) in IDENTITY_LABELS {
        if let Some((_, value)) = env.iter().rev().find(|(name, _)| name == variable) {
            labels.insert(label.to_owned(), value.clone());
        }
    }
}

/// The create body of a one-off container: no port, no restart. Labelled with app,
/// environment and release like an instance, so a restarted agent finds the one-off container
/// of a release command it was killed during ([`super::ContainerDriver::remove_run_once`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_once_body(
    image: &str,
    command: &str,
    confinement: &Confinement,
    env: &[(String, String)],
    image_config: Option<&ImageConfig>,
    owner: &str,
    network: Option<&str>,
    env_path: &Path,
) -> Result<ContainerCreateBody, String> {
    let (entrypoint, cmd) = entrypoint_and_cmd(command, image_config)?;
    let mut labels = HashMap::from([
        (LABEL_OWNER.to_owned(), owner.to_owned()),
        (LABEL_RUN_ONCE.to_owned(), "true".to_owned()),
    ]);
    insert_identity_labels(&mut labels, env);
    Ok(ContainerCreateBody {
        image: Some(image.to_owned()),
        entrypoint: Some(entrypoint),
        cmd: Some(cmd),
        user: run_as(
            confinement,
            image_config.and_then(|config| config.user.as_deref()),
        ),
        env: Some(Vec::new()),
        labels: Some(labels),
        host_config: Some(common_host_config(network, env_path)),
        ..ContainerCreateBody::default()
    })
}

/// The env-file mount, an init process, and the network.
fn common_host_config(network: Option<&str>, env_path: &Path) -> HostConfig {
    HostConfig {
        // A `Mounts` bind (unlike `Binds`) fails when the file is missing instead of creating
        // an empty directory in its place.
        mounts: Some(vec![Mount {
            target: Some(env_file::MOUNT_PATH.to_owned()),
            source: Some(env_path.display().to_string()),
            typ: Some(MountType::BIND),
            read_only: Some(true),
            ..Mount::default()
        }]),
        // The engine's tiny init as PID 1 forwards the stop signal to the app and reaps
        // zombies; without it an app that is PID 1 ignores SIGTERM unless it handles it.
        init: Some(true),
        network_mode: network.map(str::to_owned),
        ..HostConfig::default()
    }
}
