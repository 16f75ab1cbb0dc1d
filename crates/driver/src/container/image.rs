//! Images: build one from a context folder and a Dockerfile, pull one from a registry, and read
//! the content-addressed id a release records so that a moved tag cannot change what it runs.
//!
//! Output of the engine (build steps, pull progress) is handed to the caller line by line; none
//! of it is logged here.

use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use futures_util::StreamExt;

use super::ContainerError;
use super::engine::EngineError;

/// Credentials for a registry, taken from the app's secrets by the agent.
#[derive(Clone)]
pub struct RegistryCredentials {
    pub username: String,
    /// Never logged: `Debug` prints `***`.
    pub password: String,
    /// The registry's address (`registry.example.com`); `None` for the one in the reference.
    pub server: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"***")
            .field("server", &self.server)
            .finish()
    }
}

/// Builds `context_dir` with `dockerfile` (a path inside it) and tags the result `tag`. Returns
/// the image id (`sha256:...`).
pub(crate) async fn build(
    docker: &Docker,
    context_dir: &Path,
    dockerfile: &str,
    tag: &str,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ContainerError> {
    let context = pack_context(context_dir)
        .await
        .map_err(|source| ContainerError::Context {
            context_dir: context_dir.to_path_buf(),
            tag: tag.to_owned(),
            source,
        })?;
    let options = BuildImageOptions {
        dockerfile: dockerfile.to_owned(),
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        ..BuildImageOptions::default()
    };
    let build_error = |source: EngineError| ContainerError::Build {
        tag: tag.to_owned(),
        context_dir: context_dir.to_path_buf(),
        source,
    };
    let mut stream = docker.build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    let mut image_id = None;
    while let Some(info) = stream.next().await {
        let info = match info {
            Ok(info) => info,
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                return Err(ContainerError::BuildFailed {
                    tag: tag.to_owned(),
                    message: error,
                });
            }
            Err(error) => return Err(build_error(error.into())),
        };
        if let Some(detail) = info.error_detail.and_then(|detail| detail.message) {
            return Err(ContainerError::BuildFailed {
                tag: tag.to_owned(),
                message: detail,
            });
        }
        for text in [info.stream, info.status].into_iter().flatten() {
            for line in text.lines() {
                if !line.trim().is_empty() {
                    on_line(line);
                }
            }
        }
        if let Some(id) = info.aux.and_then(|aux| aux.id) {
            image_id = Some(id);
        }
    }
    match image_id {
        Some(id) => Ok(id),
        // Engines that do not send the id in `aux` still tagged the result.
        None => digest(docker, tag).await,
    }
}

/// The image's content-addressed id (`sha256:...`): `docker run <id>` runs exactly this image,
/// whatever its tags point at later.
pub(crate) async fn digest(docker: &Docker, reference: &str) -> Result<String, ContainerError> {
    let image = inspect(docker, reference).await?;
    image.id.ok_or_else(|| ContainerError::NoImageId {
        reference: reference.to_owned(),
    })
}

/// The engine's description of a local image (its config: user, entrypoint, command).
pub(crate) async fn inspect(
    docker: &Docker,
    reference: &str,
) -> Result<bollard::models::ImageInspect, ContainerError> {
    docker
        .inspect_image(reference)
        .await
        .map_err(|source| ContainerError::Inspect {
            reference: reference.to_owned(),
            source: source.into(),
        })
}

/// Pulls `reference` (with `credentials` when the registry needs them), handing progress lines
/// to `on_line`. Returns the pulled image's id.
pub(crate) async fn pull(
    docker: &Docker,
    reference: &str,
    credentials: Option<RegistryCredentials>,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ContainerError> {
    let (repository, tag) = split_reference(reference);
    let options = CreateImageOptions {
        from_image: Some(repository.to_owned()),
        tag: Some(tag.to_owned()),
        ..CreateImageOptions::default()
    };
    let credentials = credentials.map(|credentials| DockerCredentials {
        username: Some(credentials.username),
        password: Some(credentials.password),
        serveraddress: credentials.server,
        ..DockerCredentials::default()
    });
    let pull_error = |source: EngineError| ContainerError::Pull {
        reference: reference.to_owned(),
        source,
    };
    let mut stream = docker.create_image(Some(options), None, credentials);
    while let Some(info) = stream.next().await {
        let info = info.map_err(|error| pull_error(error.into()))?;
        let line = match (info.id, info.status) {
            (Some(id), Some(status)) => format!("{id}: {status}"),
            (None, Some(status)) => status,
            _ => continue,
        };
        on_line(&line);
    }
    digest(docker, reference).await
}

/// `(repository, tag or digest)` of a reference, for the pull API, which pulls every tag of a
/// repository when given none: `app` → `("app", "latest")`, `reg:5000/app:v1` →
/// `("reg:5000/app", "v1")`, `app@sha256:ab` → `("app", "sha256:ab")`.
pub(crate) fn split_reference(reference: &str) -> (&str, &str) {
    if let Some((repository, digest)) = reference.split_once('@') {
        return (repository, digest);
    }
    let last_slash = reference.rfind('/').map_or(0, |index| index + 1);
    match reference[last_slash..].rfind(':') {
        Some(colon) => (
            &reference[..last_slash + colon],
            &reference[last_slash + colon + 1..],
        ),
        None => (reference, "latest"),
    }
}

/// The build context as an uncompressed tar, packed off the runtime's worker threads.
///
/// Symlinks are stored as links, as `docker build` does. `.dockerignore` is not applied yet: keep
/// large folders out of the context directory.
async fn pack_context(context_dir: &Path) -> std::io::Result<Vec<u8>> {
    let dir: PathBuf = context_dir.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut builder = tar::Builder::new(Vec::new());
        builder.follow_symlinks(false);
        builder.mode(tar::HeaderMode::Deterministic);
        builder.append_dir_all(".", &dir)?;
        builder.into_inner()
    })
    .await
    .map_err(std::io::Error::other)?
}
