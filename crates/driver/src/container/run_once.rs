//! One-off containers for release commands (migrations): same image, same env scheme as the
//! instances, output streamed to the caller, exit code returned, container and env file removed
//! afterwards, also when the caller drops the future half-way.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use bollard::Docker;
use bollard::query_parameters::{
    CreateContainerOptions, RemoveContainerOptions, WaitContainerOptions,
};
use futures_util::StreamExt;
use tracing::warn;

use super::engine::EngineError;
use super::{ContainerError, create, env_file, logs};

/// What a one-off container needs besides the engine.
pub(crate) struct RunOnce<'a> {
    pub(crate) image: &'a str,
    pub(crate) env: &'a [(String, String)],
    pub(crate) command: &'a str,
    /// Who the container runs as (see `create::run_as`).
    pub(crate) confinement: &'a crate::Confinement,
    pub(crate) owner: &'a str,
    pub(crate) network: Option<&'a str>,
    pub(crate) env_dir: &'a std::path::Path,
}

/// Runs the container to its end and returns its exit code (128 + signal when killed).
pub(crate) async fn run(
    docker: &Docker,
    request: RunOnce<'_>,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<i32, ContainerError> {
    let container = unique_name();
    let invalid = |reason: String| ContainerError::InvalidRunOnce {
        image: request.image.to_owned(),
        reason,
    };
    let invalid_names = env_file::invalid_names(request.env);
    if !invalid_names.is_empty() {
        return Err(invalid(format!(
            "env names that are not shell identifiers: {}",
            invalid_names.join(", ")
        )));
    }
    let image = super::image::inspect(docker, request.image).await?;
    let image_config = image.config.as_ref();
    let env_path = env_file::path(request.env_dir, &container);
    let body = create::run_once_body(
        request.image,
        request.command,
        request.confinement,
        request.env,
        image_config,
        request.owner,
        request.network,
        &env_path,
    )
    .map_err(invalid)?;
    let run_as = create::run_as(
        request.confinement,
        image_config.and_then(|config| config.user.as_deref()),
    );
    let reader = env_file::Reader::of_image_user(run_as.as_deref());

    let cleanup = Cleanup {
        docker: docker.clone(),
        container: container.clone(),
        env_path: env_path.clone(),
        armed: true,
    };
    env_file::write(&env_path, request.env, reader).map_err(|source| ContainerError::EnvFile {
        what: "cannot write the env file",
        container: container.clone(),
        path: env_path.clone(),
        source,
    })?;
    let engine_error = |what: &'static str| {
        let container = container.clone();
        let image = request.image.to_owned();
        move |source: bollard::errors::Error| ContainerError::RunOnce {
            what,
            image,
            container,
            source: EngineError::from(source),
        }
    };
    docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(container.clone()),
                ..CreateContainerOptions::default()
            }),
            body,
        )
        .await
        .map_err(engine_error("cannot create"))?;
    docker
        .start_container(&container, None)
        .await
        .map_err(engine_error("cannot start"))?;
    logs::follow(docker, &container, on_line)
        .await
        .map_err(|source| ContainerError::RunOnce {
            what: "cannot read the output",
            image: request.image.to_owned(),
            container: container.clone(),
            source,
        })?;
    let exit = wait(docker, &container)
        .await
        .map_err(engine_error("cannot wait for the end"))?;
    cleanup.now().await;
    Ok(exit)
}

/// The exit code, once the container has stopped.
async fn wait(docker: &Docker, container: &str) -> Result<i32, bollard::errors::Error> {
    let options = WaitContainerOptions {
        condition: "not-running".to_owned(),
    };
    let mut stream = docker.wait_container(container, Some(options));
    let code = match stream.next().await {
        Some(Ok(response)) => response.status_code,
        // bollard reports a non-zero exit as an error carrying the code.
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        Some(Err(error)) => return Err(error),
        None => {
            return Err(bollard::errors::Error::IOError {
                err: std::io::Error::other("the engine closed the wait without an exit code"),
            });
        }
    };
    Ok(i32::try_from(code).unwrap_or(i32::MAX))
}

/// `rollway-run-<pid>-<counter>-<nanos>`: unique on the engine across agents and restarts.
fn unique_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let counter = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    format!("rollway-run-{}-{counter}-{nanos}", std::process::id())
}

/// Removes the one-off container and its env file: explicitly at the end, or from `Drop` (on a
/// spawned task) when the caller dropped the future before the end.
struct Cleanup {
    docker: Docker,
    container: String,
    env_path: PathBuf,
    armed: bool,
}

impl Cleanup {
    async fn now(mut self) {
        self.armed = false;
        remove(&self.docker, &self.container, &self.env_path).await;
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Err(error) = env_file::remove(&self.env_path) {
            warn!(message = "Cannot remove the env file of a one-off container.", path = %self.env_path.display(), %error);
        }
        let docker = self.docker.clone();
        let container = std::mem::take(&mut self.container);
        let env_path = std::mem::take(&mut self.env_path);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { remove(&docker, &container, &env_path).await });
        } else {
            warn!(message = "One-off container left behind: no runtime to remove it.", container = %container);
        }
    }
}

pub(crate) async fn remove(docker: &Docker, container: &str, env_path: &std::path::Path) {
    let options = RemoveContainerOptions {
        force: true,
        ..RemoveContainerOptions::default()
    };
    match docker.remove_container(container, Some(options)).await {
        Ok(())
        | Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {}
        Err(error) => {
            warn!(message = "Cannot remove a one-off container.", container, %error);
        }
    }
    if let Err(error) = env_file::remove(env_path) {
        warn!(message = "Cannot remove the env file of a one-off container.", path = %env_path.display(), %error);
    }
}
