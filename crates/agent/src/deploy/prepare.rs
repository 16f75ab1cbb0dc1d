//! Preparing a release's folder: the artifact unpacked (once per artifact and build command) and
//! built, shared by every deployment that needs the same folder.
//!
//! Unpacking is blocking file work: it runs on tokio's blocking pool, never on the async workers
//! that serve the API, and at most [`MAX_UNPACKS`] at once. Deployments that need the same folder
//! (one artifact deployed twice at once to one environment) take turns on a per-folder lock: the first unpacks and
//! builds, the others find it built and reuse it. A failed unpack or build leaves nothing: the
//! artifact is unpacked into a temporary sibling renamed into place, and a folder whose build
//! failed is removed. Leftover temporary folders of a killed agent are removed at start
//! ([`clean_leftovers`]). This module does not start instances.
//!
//! Folders are per app environment (`<state>-apps/<app>/<env>/builds/`, see
//! [`crate::isolation`]): an artifact is unpacked into a root-only staging folder, handed over to
//! the app's user, and only then moved into place, where the app can reach it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use crate::artifact::ArtifactError;
use crate::deploy::fault;
use crate::deploy::spec::{self, LoadedRelease};
use crate::engine::Engine;
use crate::store::Deployment;

/// Most artifacts unpacked at once: each one is disk-bound, and the machine's blocking pool is
/// shared with the store and the API's uploads.
pub const MAX_UNPACKS: usize = 2;

/// The file whose presence says a folder is unpacked and built.
pub const BUILT_MARKER: &str = ".rollway-built";

/// Why a release's folder could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error("cannot unpack artifact `{digest}`")]
    Unpack {
        digest: String,
        #[source]
        source: ArtifactError,
    },
    #[error("cannot {operation} `{path}`")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the unpacking of artifact `{digest}` stopped")]
    Task {
        digest: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// The build command failed; its reason carries its output.
    #[error(transparent)]
    Build(Box<crate::deploy::spec::SpecError>),
    #[error(transparent)]
    Home(#[from] crate::isolation::HomeError),
}

impl From<crate::deploy::spec::SpecError> for PrepareError {
    fn from(error: crate::deploy::spec::SpecError) -> PrepareError {
        PrepareError::Build(Box::new(error))
    }
}

/// Unpacks the release's artifact into its folder and builds it, unless that was done before.
pub async fn prepare(
    engine: &Arc<Engine>,
    deployment: &Deployment,
    release: &LoadedRelease,
) -> Result<(), PrepareError> {
    let dir = spec::workdir(engine, release);
    let folder_lock = folder_lock(&dir);
    // tokio Mutex: held across the unpack and the build, which await.
    let _turn = folder_lock.lock().await;
    let built_marker = dir.join(BUILT_MARKER);
    let home = crate::isolation::AppHome::ensure(
        &engine.paths.apps,
        &deployment.app,
        &deployment.environment,
    )?;
    // Built here before, but under another user (an agent that was not root then): built again
    // below, rather than handing over a tree an app may be changing.
    let owned_by_another = rustix::process::geteuid().is_root()
        && std::fs::symlink_metadata(&dir)
            .is_ok_and(|metadata| std::os::unix::fs::MetadataExt::uid(&metadata) != home.user.uid);
    if built_marker.exists() && !owned_by_another {
        engine.record_progress(
            crate::engine::Subject::deployment(deployment),
            &client::wire::DeploymentEvent::Reused {
                artifact: release.artifact.clone(),
            },
        );
        return Ok(());
    }
    if dir.exists() {
        // Unpacked but never built (an agent killed mid-build): start again from the artifact.
        remove_blocking(dir.clone()).await?;
    }
    unpack(engine, &release.artifact, &dir, &home).await?;
    let command = release
        .resolved
        .config
        .build
        .as_ref()
        .and_then(|build| build.command.as_ref());
    let built = match command {
        Some(command) => {
            let env = spec::base_env(release).map_err(PrepareError::from)?;
            spec::run_build(engine, deployment, &dir, command, &env)
                .await
                .map_err(PrepareError::from)
        }
        None => Ok(()),
    };
    let marked = built.and_then(|()| {
        std::fs::write(&built_marker, b"").map_err(|source| PrepareError::Io {
            operation: "write",
            path: built_marker.clone(),
            source,
        })
    });
    if marked.is_err() {
        // A half-built folder is never reused; the next deploy unpacks afresh.
        let _ = remove_blocking(dir.clone()).await;
    }
    marked
}

/// Removes temporary unpack folders (`builds/.<name>.<random>.unpacking`) left by an agent that
/// was killed while unpacking. Called at start, before any deployment runs.
pub fn clean_leftovers(engine: &Engine) {
    let removed = crate::isolation::builds_dirs(&engine.paths.apps)
        .iter()
        .map(|builds| crate::artifact::remove_hidden_with_suffix(builds, ".unpacking"))
        .sum::<usize>()
        + engine.artifacts.clean_leftovers();
    if removed > 0 {
        tracing::info!(
            message = "Removed leftovers of interrupted unpacks and uploads.",
            removed
        );
    }
}

/// One permit per unpack in progress.
static UNPACKS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_UNPACKS);

/// One lock per release folder, so two deployments never unpack or build into the same one.
/// std Mutex: held for the map lookup only. Entries are a path and a lock each, one per folder
/// ever prepared since start: small.
static FOLDER_LOCKS: LazyLock<Mutex<BTreeMap<PathBuf, Arc<tokio::sync::Mutex<()>>>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

fn folder_lock(dir: &Path) -> Arc<tokio::sync::Mutex<()>> {
    let mut locks = FOLDER_LOCKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    locks.entry(dir.to_owned()).or_default().clone()
}

/// Unpacks into a staging sibling (`.NAME.unpacking`), hands it over to the app's user while no
/// app can reach into it, then moves it into place.
async fn unpack(
    engine: &Engine,
    digest: &str,
    dir: &Path,
    home: &crate::isolation::AppHome,
) -> Result<(), PrepareError> {
    // The semaphore is never closed, so acquiring only waits.
    let _permit = UNPACKS.acquire().await;
    let artifacts = engine.artifacts.clone();
    let name = dir.file_name().map_or_else(
        || "release".into(),
        |name| name.to_string_lossy().into_owned(),
    );
    let staging = dir.with_file_name(format!(".{name}.unpacking"));
    let (owned_digest, owned_dir, home) = (digest.to_owned(), dir.to_owned(), home.clone());
    tokio::task::spawn_blocking(move || {
        // The deploy's own work, below the serving instances; the pool thread is restored after.
        let _lowered = driver::priority::LoweredThread::new();
        fault::unpack_delay();
        let io = |operation: &'static str, path: &Path| {
            let path = path.to_owned();
            move |source| PrepareError::Io {
                operation,
                path,
                source,
            }
        };
        if staging.exists() {
            std::fs::remove_dir_all(&staging).map_err(io("clear", &staging))?;
        }
        artifacts
            .unpack(&owned_digest, &staging)
            .map_err(|source| PrepareError::Unpack {
                digest: short(&owned_digest).to_owned(),
                source,
            })?;
        home.take_ownership(&staging)
            .map_err(io("hand over to the app's user", &staging))?;
        std::fs::rename(&staging, &owned_dir).map_err(io("move into place", &staging))
    })
    .await
    .map_err(|source| PrepareError::Task {
        digest: digest.to_owned(),
        source,
    })?
}

async fn remove_blocking(dir: PathBuf) -> Result<(), PrepareError> {
    let path = dir.clone();
    tokio::task::spawn_blocking(move || std::fs::remove_dir_all(&path))
        .await
        .map_err(|source| PrepareError::Io {
            operation: "clear",
            path: dir.clone(),
            source: std::io::Error::other(source),
        })?
        .map_err(|source| PrepareError::Io {
            operation: "clear",
            path: dir,
            source,
        })
}

fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
