//! The agent's own state off the host: `rollway agent backup` snapshots the store (SQLite's
//! `VACUUM INTO`, consistent while the agent runs), the artifacts and the API's TLS folder into
//! one tar, sealed like any backup ([`super::sealed`], a fresh backup key per snapshot sealed by
//! the master key in its header) and uploaded to `PREFIX/rollway-agent/`; `rollway agent restore`
//! fetches the newest (or a named) snapshot into a fresh state directory, given the master key.
//!
//! Never in a snapshot: the master key (it lives apart from the state directory), `admin.token`
//! (a clear token; the operator's CLI keeps its own), database backups (they have their own
//! remote copies), logs, instances and locks of the running agent.

use std::path::{Path, PathBuf};

use super::remote::{Remote, RemoteError, RemoteObject};
use super::sealed::{self, BackupKey, Header};
use crate::secrets::MasterKey;
use crate::store::BackupReason;

/// The folder under the remote's prefix that holds the agent's snapshots.
pub const FOLDER: &str = "rollway-agent/";
/// The store's file in a state directory and in a snapshot.
pub const STORE_FILE: &str = "rollway.db";
/// Folders of the state directory a snapshot carries besides the store.
pub const CARRIED: &[&str] = &["artifacts", crate::api::tls::DIR];
/// Snapshots kept on the remote.
pub const KEEP: usize = 14;
/// The header's kind for a snapshot of the agent's state.
pub const KIND: &str = "agent-state";
/// The variables holding the remote's credentials (never arguments: argv is public). They are
/// the agent's own: no app instance and not the proxy gets them.
pub const ACCESS_KEY_VAR: &str = "ROLLWAY_BACKUP_ACCESS_KEY_ID";
pub const SECRET_KEY_VAR: &str = "ROLLWAY_BACKUP_SECRET_ACCESS_KEY";

/// Why a snapshot was not taken or not restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("`{}` has no store (`{STORE_FILE}`): is it the agent's state directory?", path.display())]
    NoStore { path: PathBuf },
    #[error("cannot snapshot the store `{}`", path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot {operation} `{}`", path.display())]
    File {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{}` already holds a store: restore into a new, empty state directory (the running agent's is never overwritten)",
        path.display()
    )]
    NotFresh { path: PathBuf },
    #[error("no snapshot of the agent's state on {remote}{}", id.as_deref().map(|id| format!(" named `{id}`")).unwrap_or_default())]
    NoSnapshot { remote: String, id: Option<String> },
    #[error("`{key}` is not a snapshot of an agent's state")]
    NotAgentState { key: String },
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error(transparent)]
    Sealed(#[from] sealed::SealError),
    #[error("the snapshot task ended early")]
    Task(#[source] tokio::task::JoinError),
}

/// A snapshot on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub id: String,
    pub key: String,
    /// Size of the sealed object.
    pub size: u64,
    pub sha256: String,
}

/// Snapshots `state_dir`, seals it with `master`, uploads it and prunes the remote to [`KEEP`].
/// `reason`: `manual` (`rollway agent backup`) or `schedule` (the agent's own schedule).
pub async fn backup(
    state_dir: &Path,
    master: &MasterKey,
    remote: &Remote,
    reason: BackupReason,
) -> Result<Snapshot, StateError> {
    let store = state_dir.join(STORE_FILE);
    if !store.is_file() {
        return Err(StateError::NoStore {
            path: state_dir.to_owned(),
        });
    }
    let id = format!("s-{}-{}", crate::engine::now_ms(), super::random_suffix());
    // Inside the state directory: the agent can always write there (its parent may be root's, as
    // `/var/lib` is in the container image), and a snapshot carries only the store and `CARRIED`.
    let work = tempfile::Builder::new()
        .prefix(".rollway-agent-backup-")
        .tempdir_in(state_dir)
        .map_err(|source| StateError::File {
            operation: "create a scratch folder in",
            path: state_dir.to_owned(),
            source,
        })?;
    let tar_path = work.path().join("state.tar");
    let sealed_path = work
        .path()
        .join(format!("{id}.tar.{}", super::remote::SEALED_EXTENSION));
    let key = BackupKey::generate(master);
    let (dir, tar, sealed_to, id_for_header) = (
        state_dir.to_owned(),
        tar_path.clone(),
        sealed_path.clone(),
        id.clone(),
    );
    let (size, sha256) =
        tokio::task::spawn_blocking(move || -> Result<(u64, String), StateError> {
            let snapshot = tar.with_file_name(STORE_FILE);
            vacuum_into(&dir.join(STORE_FILE), &snapshot)?;
            write_tar(&dir, &snapshot, &tar)?;
            let (size, sha256) = super::file_digest(&tar).map_err(|error| StateError::File {
                operation: "read",
                path: tar.clone(),
                source: std::io::Error::other(error.to_string()),
            })?;
            let header = Header {
                id: id_for_header,
                kind: KIND.to_owned(),
                app: String::new(),
                environment: String::new(),
                release: None,
                reason: reason.as_str().to_owned(),
                target: dir.display().to_string(),
                size,
                sha256,
                created_at: crate::engine::now_ms(),
            };
            Ok(sealed::seal_file(&key, &header, &tar, &sealed_to)?)
        })
        .await
        .map_err(StateError::Task)??;
    let object = remote.key(&format!(
        "{FOLDER}{id}.tar.{}",
        super::remote::SEALED_EXTENSION
    ));
    remote.put_file(&object, &sealed_path).await?;
    prune(remote).await?;
    Ok(Snapshot {
        id,
        key: object,
        size,
        sha256,
    })
}

/// The snapshots on the remote, newest first.
pub async fn list(remote: &Remote) -> Result<Vec<RemoteObject>, StateError> {
    let mut objects: Vec<RemoteObject> = remote
        .list(&remote.key(FOLDER))
        .await?
        .into_iter()
        .filter(|object| super::remote::backup_id(&object.key).is_some())
        .collect();
    objects.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(objects)
}

async fn prune(remote: &Remote) -> Result<(), StateError> {
    for old in list(remote).await?.into_iter().skip(KEEP) {
        remote.delete(&old.key).await?;
    }
    Ok(())
}

/// Restores the newest snapshot (or `id`) into the new state directory `state_dir`; returns the
/// snapshot's header.
pub async fn restore(
    state_dir: &Path,
    master: std::sync::Arc<MasterKey>,
    remote: &Remote,
    id: Option<&str>,
) -> Result<Header, StateError> {
    if state_dir.join(STORE_FILE).exists() {
        return Err(StateError::NotFresh {
            path: state_dir.to_owned(),
        });
    }
    let snapshots = list(remote).await?;
    let chosen = match id {
        Some(id) => snapshots
            .iter()
            .find(|object| super::remote::backup_id(&object.key) == Some(id)),
        None => snapshots.first(),
    }
    .ok_or_else(|| StateError::NoSnapshot {
        remote: remote.shown().to_owned(),
        id: id.map(str::to_owned),
    })?;
    create_private_dir(state_dir)?;
    let work = tempfile::Builder::new()
        .prefix(".rollway-agent-restore-")
        .tempdir_in(state_dir)
        .map_err(|source| StateError::File {
            operation: "create a scratch folder in",
            path: state_dir.to_owned(),
            source,
        })?;
    let sealed_path = work.path().join("state.sealed");
    let tar_path = work.path().join("state.tar");
    remote.get_file(&chosen.key, &sealed_path).await?;
    let (from, to) = (sealed_path.clone(), tar_path.clone());
    let header = tokio::task::spawn_blocking(move || sealed::open_file(&master, &from, &to))
        .await
        .map_err(StateError::Task)??;
    if header.kind != KIND {
        return Err(StateError::NotAgentState {
            key: chosen.key.clone(),
        });
    }
    let (dir, tar) = (state_dir.to_owned(), tar_path.clone());
    tokio::task::spawn_blocking(move || unpack(&tar, &dir))
        .await
        .map_err(StateError::Task)??;
    Ok(header)
}

fn create_private_dir(dir: &Path) -> Result<(), StateError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir).map_err(|source| StateError::File {
        operation: "create",
        path: dir.to_owned(),
        source,
    })?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|source| {
        StateError::File {
            operation: "make private",
            path: dir.to_owned(),
            source,
        }
    })
}

/// A consistent copy of the store while the agent may be writing: `VACUUM INTO`.
fn vacuum_into(store: &Path, to: &Path) -> Result<(), StateError> {
    let snapshot_error = |source| StateError::Snapshot {
        path: store.to_owned(),
        source,
    };
    let connection =
        rusqlite::Connection::open_with_flags(store, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(snapshot_error)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(30))
        .map_err(snapshot_error)?;
    connection
        .execute("VACUUM INTO ?1", [to.display().to_string()])
        .map_err(snapshot_error)?;
    Ok(())
}

fn write_tar(state_dir: &Path, store_snapshot: &Path, to: &Path) -> Result<(), StateError> {
    let file_error = |operation, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::File {
            operation,
            path,
            source,
        }
    };
    let file = std::fs::File::create(to).map_err(file_error("create", to))?;
    let mut builder = tar::Builder::new(std::io::BufWriter::new(file));
    builder.follow_symlinks(false);
    builder
        .append_path_with_name(store_snapshot, STORE_FILE)
        .map_err(file_error("archive", store_snapshot))?;
    for folder in CARRIED {
        let path = state_dir.join(folder);
        if path.is_dir() {
            builder
                .append_dir_all(folder, &path)
                .map_err(file_error("archive", &path))?;
        }
    }
    let writer = builder.into_inner().map_err(file_error("write", to))?;
    let file = writer.into_inner().map_err(|error| StateError::File {
        operation: "write",
        path: to.to_owned(),
        source: error.into_error(),
    })?;
    file.sync_all().map_err(file_error("write", to))
}

/// Unpacks a snapshot's tar into `state_dir` (entries that would land outside it are refused by
/// `tar::Entry::unpack_in`).
fn unpack(tar_path: &Path, state_dir: &Path) -> Result<(), StateError> {
    let file_error = |operation, path: &Path| {
        let path = path.to_owned();
        move |source| StateError::File {
            operation,
            path,
            source,
        }
    };
    let file = std::fs::File::open(tar_path).map_err(file_error("read", tar_path))?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    archive.set_preserve_permissions(true);
    for entry in archive.entries().map_err(file_error("read", tar_path))? {
        let mut entry = entry.map_err(file_error("read", tar_path))?;
        entry
            .unpack_in(state_dir)
            .map_err(file_error("unpack into", state_dir))?;
    }
    Ok(())
}
