//! `routes.json`: the last desired state a proxy accepted, written atomically before it is applied and
//! read back when the proxy process starts, so a restarted proxy routes at once without its agent.
//!
//! It holds routing only (no stats, no drains in progress) and never a secret.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::desired::DesiredState;

/// The file's name inside the proxy's state directory.
pub const ROUTES_FILE_NAME: &str = "routes.json";

/// Version of the file's layout; a proxy refuses a file written by a newer layout than it knows.
const FORMAT: u32 = 1;

/// `routes.json` in one state directory.
#[derive(Debug, Clone)]
pub struct RoutesFile {
    path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum RoutesFileError {
    #[error("cannot read `{}`", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("`{}` is not a routing snapshot", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{}` has format {format}; this proxy knows format {FORMAT}", path.display())]
    NewerFormat { path: PathBuf, format: u32 },
    #[error("cannot write `{}`", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Contents {
    format: u32,
    state: DesiredState,
}

impl RoutesFile {
    pub fn in_dir(state_dir: &Path) -> RoutesFile {
        RoutesFile {
            path: state_dir.join(ROUTES_FILE_NAME),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The saved state, or `None` when no state was ever saved.
    pub fn load(&self) -> Result<Option<DesiredState>, RoutesFileError> {
        let text = match fs::read(&self.path) {
            Ok(text) => text,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(RoutesFileError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        // Read the format first, so a newer layout is reported as such rather than as a parse error.
        #[derive(Deserialize)]
        struct Header {
            format: u32,
        }
        let header: Header =
            serde_json::from_slice(&text).map_err(|source| RoutesFileError::Parse {
                path: self.path.clone(),
                source,
            })?;
        if header.format > FORMAT {
            return Err(RoutesFileError::NewerFormat {
                path: self.path.clone(),
                format: header.format,
            });
        }
        let contents: Contents =
            serde_json::from_slice(&text).map_err(|source| RoutesFileError::Parse {
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(contents.state))
    }

    /// Replaces the saved state atomically: a reader (or a crash at any point) sees the old file or the
    /// new one, never a mix. Blocking: call it from `spawn_blocking` inside a runtime.
    pub fn save(&self, state: &DesiredState) -> Result<(), RoutesFileError> {
        let contents = Contents {
            format: FORMAT,
            state: state.clone(),
        };
        // Serialising plain data to a Vec cannot fail; map it anyway rather than unwrap.
        let text =
            serde_json::to_vec_pretty(&contents).map_err(|source| RoutesFileError::Write {
                path: self.path.clone(),
                source: io::Error::other(source),
            })?;
        let temporary = self.path.with_extension("json.tmp");
        let write_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| RoutesFileError::Write { path, source }
        };
        // Owner-only like the rest of the state directory, though it holds addresses, never a secret.
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(write_error(&temporary))?;
        file.write_all(&text).map_err(write_error(&temporary))?;
        file.sync_all().map_err(write_error(&temporary))?;
        drop(file);
        fs::rename(&temporary, &self.path).map_err(write_error(&self.path))?;
        // The rename is durable only once the directory entry is.
        if let Some(dir) = self.path.parent() {
            fs::File::open(dir)
                .and_then(|dir| dir.sync_all())
                .map_err(write_error(dir))?;
        }
        Ok(())
    }
}
