//! Where each app environment's files live and which user it runs as: the agent's side of
//! promise 9 (a deployed app cannot read the agent's state, the master key, or another app's
//! files and environment).
//!
//! The state directory (store, tokens, artifacts, logs) is the agent's alone (0700). What apps
//! may touch lives beside it, in the apps directory (`<state>-apps`, 0711: it can be crossed,
//! not listed):
//!
//! ```text
//! <state>-apps/<app>/<environment>/      0710, the agent's, group: the app environment's
//!     builds/                            0710, the same
//!         <artifact>-<build key>/        a release folder (unpacked, built, run in): the app's
//!     tmp/                               0710, the same
//!         <instance id>/, commands/      private HOME and TMPDIR: the app's, 0700
//! ```
//!
//! The app owns its release and temp folders but none of the folders above them, so it cannot
//! swap one of them for a symbolic link that would send the agent's (root's) writes elsewhere;
//! its group lets it through them, and no other app. A release folder is handed over (`chown`)
//! before it is moved into place, while no app can reach into it.
//!
//! As root, each app environment gets its own numeric user (uid = gid) from systemd's dynamic
//! range, chosen by a hash of app and environment and moved on past uids that other app
//! environments already own. The owner of the app environment's folder is the record of the
//! choice, so it is stable across restarts without a store table. This module does not start
//! processes (the driver's [`driver::Confinement`] does).

use std::collections::BTreeSet;
use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use driver::{AppUser, Confinement, Isolation};

/// The uids (and gids) handed to app environments: systemd's range for `DynamicUser=`.
pub const FIRST_APP_UID: u32 = 61184;
pub const LAST_APP_UID: u32 = 65519;

/// The apps directory of a state directory: `<state>-apps`, its sibling.
pub fn apps_dir(state_dir: &Path) -> PathBuf {
    let mut name = state_dir.as_os_str().to_owned();
    name.push("-apps");
    PathBuf::from(name)
}

/// What a sandboxed app must not even see (Landlock already keeps it from opening them): the
/// state directory, where the proxy's control socket is, and the container engine's sockets.
pub fn hidden_from_apps(state_dir: &Path) -> Vec<PathBuf> {
    let mut hidden = vec![state_dir.to_path_buf()];
    hidden.extend(
        [
            "/var/run/docker.sock",
            "/run/docker.sock",
            "/run/podman/podman.sock",
        ]
        .iter()
        .map(PathBuf::from),
    );
    if let Some(runtime_dir) = std::env::var_os("XDG_RUNTIME_DIR") {
        hidden.push(PathBuf::from(runtime_dir).join("podman/podman.sock"));
    }
    if let Some(socket) = std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|host| host.strip_prefix("unix://").map(PathBuf::from))
    {
        hidden.push(socket);
    }
    hidden
}

/// Makes the apps directory crossable by app users (0711), as it must be before any instance
/// starts or is adopted: a service manager may have reset its mode.
pub fn prepare_apps_dir(apps_dir: &Path) -> std::io::Result<()> {
    make_dir(apps_dir, 0o711)
}

/// One app environment's place on this host: its folder and its user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppHome {
    pub dir: PathBuf,
    pub user: AppUser,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot prepare `{path}` for app `{app}` in `{environment}`")]
pub struct HomeError {
    pub app: String,
    pub environment: String,
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Allocations are read-check-create on the file system: one at a time in this process (the
/// state directory's lock keeps other agents out). std Mutex: no await inside.
static ALLOCATING: Mutex<()> = Mutex::new(());

impl AppHome {
    /// The app environment's folder and user, made on first use (owned by its user as root).
    pub fn ensure(apps_dir: &Path, app: &str, environment: &str) -> Result<AppHome, HomeError> {
        let app_dir = apps_dir.join(app);
        let dir = app_dir.join(environment);
        let error = |path: &Path| {
            let (app, environment, path) =
                (app.to_owned(), environment.to_owned(), path.to_owned());
            move |source| HomeError {
                app,
                environment,
                path,
                source,
            }
        };
        let _allocating = ALLOCATING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for crossable in [apps_dir, app_dir.as_path()] {
            make_dir(crossable, 0o711).map_err(error(crossable))?;
        }
        let root = rustix::process::geteuid().is_root();
        // The folder's group records the allocation.
        let recorded = std::fs::metadata(&dir)
            .ok()
            .map(|metadata| metadata.gid())
            .filter(|gid| (FIRST_APP_UID..=LAST_APP_UID).contains(gid));
        let uid = match recorded {
            Some(uid) => uid,
            None if root => {
                let taken = owners(apps_dir);
                first_free(preferred_uid(app, environment), &taken)
                    .ok_or_else(|| error(&dir)(std::io::Error::other("no free app uid left")))?
            }
            // Not root: nobody can own files as this uid; it is only the containers' user.
            None => preferred_uid(app, environment),
        };
        let user = AppUser { uid, gid: uid };
        for private in [dir.clone(), dir.join("builds"), dir.join("tmp")] {
            if root {
                make_dir(&private, 0o710).map_err(error(&private))?;
                // Owner first, so the folder is never the app's to swap.
                std::os::unix::fs::lchown(&private, Some(0), Some(uid)).map_err(error(&private))?;
            } else {
                make_dir(&private, 0o700).map_err(error(&private))?;
            }
        }
        Ok(AppHome { dir, user })
    }

    /// The folder releases of this app environment are unpacked, built and run in.
    pub fn builds(&self) -> PathBuf {
        self.dir.join("builds")
    }

    /// How a process of this app environment runs, with `name` its private temp folder
    /// (an instance id, or `commands` for build, release and smoke commands), in the apps' cgroup
    /// when the agent has a CPU placement.
    pub fn confinement(
        &self,
        isolation: &Isolation,
        placement: &driver::cgroup::Placement,
        name: &str,
    ) -> Confinement {
        Confinement {
            cgroup: placement.apps().cloned(),
            ..isolation.confinement(self.user, self.dir.join("tmp").join(name))
        }
    }

    /// Gives a release folder to the app's user, recursively. Call it before the folder is moved
    /// where the app can reach it: the folder is made 0700 first and handed over last, so no
    /// process of the app can swap anything inside while the walk runs. Nothing to do unless the
    /// agent is root, or when the folder is the user's already.
    pub fn take_ownership(&self, folder: &Path) -> std::io::Result<()> {
        let metadata = std::fs::symlink_metadata(folder)?;
        if !rustix::process::geteuid().is_root() || metadata.uid() == self.user.uid {
            return Ok(());
        }
        if !metadata.is_dir() {
            return Err(std::io::Error::other("not a folder"));
        }
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700))?;
        for entry in std::fs::read_dir(folder)? {
            chown_tree(&entry?.path(), self.user)?;
        }
        std::os::unix::fs::lchown(folder, Some(self.user.uid), Some(self.user.gid))
    }
}

/// Every app environment's `builds/` folder, for the start-up clean-up of interrupted unpacks.
pub fn builds_dirs(apps_dir: &Path) -> Vec<PathBuf> {
    let children = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .collect::<Vec<_>>()
    };
    children(apps_dir)
        .iter()
        .flat_map(|app| children(app))
        .map(|environment| environment.join("builds"))
        .filter(|builds| builds.is_dir())
        .collect()
}

/// The uid a hash of app and environment points at (FNV-1a: stable across Rust versions).
pub fn preferred_uid(app: &str, environment: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in app.bytes().chain([0]).chain(environment.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    FIRST_APP_UID + hash % (LAST_APP_UID - FIRST_APP_UID + 1)
}

/// The first uid from `preferred` on (wrapping around the range) that is not `taken`.
fn first_free(preferred: u32, taken: &BTreeSet<u32>) -> Option<u32> {
    let size = LAST_APP_UID - FIRST_APP_UID + 1;
    (0..size)
        .map(|step| FIRST_APP_UID + (preferred - FIRST_APP_UID + step) % size)
        .find(|uid| !taken.contains(uid))
}

/// The uids app environment folders (`<apps>/<app>/<environment>`) are allocated to (their
/// group).
fn owners(apps_dir: &Path) -> BTreeSet<u32> {
    let children = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .collect::<Vec<_>>()
    };
    children(apps_dir)
        .iter()
        .flat_map(|app| children(app))
        .filter_map(|dir| std::fs::symlink_metadata(dir).ok())
        .filter(|metadata| metadata.is_dir())
        .map(|metadata| metadata.gid())
        .collect()
}

fn make_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Copies a folder tree (files with their modes, folders, symbolic links as links) into `to`,
/// which must not exist yet; for release folders an earlier version kept in the state directory.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    let metadata = std::fs::symlink_metadata(from)?;
    if metadata.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from)?, to)
    } else if metadata.is_dir() {
        std::fs::create_dir(to)?;
        for entry in std::fs::read_dir(from)? {
            let entry = entry?;
            copy_tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        std::fs::set_permissions(to, metadata.permissions())
    } else {
        std::fs::copy(from, to).map(|_| ())
    }
}

/// `chown -R` that never follows a symbolic link (an app could plant one pointing anywhere).
fn chown_tree(path: &Path, user: AppUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    let metadata = std::fs::symlink_metadata(path)?;
    if metadata.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
