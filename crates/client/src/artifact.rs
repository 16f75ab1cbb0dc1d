//! Packing an app folder into an artifact: a reproducible tar, compressed with zstd, named by
//! the SHA-256 of its bytes.
//! Walking honours `.gitignore` (in a git repository or not) and `.rollwayignore`, and never
//! takes `.git/`. This module does not upload, store or unpack artifacts: the agent does.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// A packed app folder.
#[derive(Clone, PartialEq, Eq)]
pub struct Artifact {
    /// SHA-256 in hex of `bytes`: the artifact's name everywhere.
    pub digest: String,
    /// The compressed tar.
    pub bytes: Vec<u8>,
    /// How many files (regular files and symlinks) the tar holds; directories are not counted.
    pub n_files: usize,
    /// `bytes.len()`.
    pub size: u64,
}

/// The name of the ignore file read next to `.gitignore` files, with the same syntax.
pub const IGNORE_FILE_NAME: &str = ".rollwayignore";

/// The zstd level: fast to pack on a laptop, and the bytes are the same on every machine.
pub const ZSTD_LEVEL: i32 = 3;

/// Why a folder could not be packed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("cannot pack `{path}`: not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot pack `{path}`: its name is not UTF-8")]
    NonUtf8Path { path: PathBuf },
    #[error("cannot walk `{path}`")]
    Walk {
        path: PathBuf,
        #[source]
        source: ignore::Error,
    },
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot add `{path}` to the archive")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot compress the archive of `{path}`")]
    Compress {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl std::fmt::Debug for Artifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Artifact")
            .field("digest", &self.digest)
            .field("n_files", &self.n_files)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Packs `dir` into an artifact.
///
/// Reproducible: entries are sorted by path and carry normalized metadata (mtime 0, uid and gid
/// 0, no user or group names, mode 0755 for directories and executables, 0644 otherwise), so
/// the same content gives the same bytes, and the same digest, on every machine.
/// Symlinks are kept as symlinks (the agent refuses those that point outside the folder).
/// Empty directories are kept.
///
/// Ignored: what `.gitignore` files (in the folder and its parents, git repository or not),
/// `.git/info/exclude`, the user's global git excludes and `.rollwayignore` files say, the way
/// git would, and every `.git` entry. The global excludes make the result depend on the machine,
/// but a `.env` a user ignores everywhere must not be shipped (promise 7).
pub fn pack(dir: &Path) -> Result<Artifact, ArtifactError> {
    if !dir.is_dir() {
        return Err(ArtifactError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let entries = walk(dir)?;
    let mut builder = tar::Builder::new(Vec::new());
    let mut n_files = 0;
    for entry in &entries {
        append(&mut builder, entry)?;
        if !matches!(entry.kind, EntryKind::Directory) {
            n_files += 1;
        }
    }
    let archive_error = |source| ArtifactError::Archive {
        path: dir.to_owned(),
        source,
    };
    let tar_bytes = builder.into_inner().map_err(archive_error)?;

    let compress_error = |source| ArtifactError::Compress {
        path: dir.to_owned(),
        source,
    };
    let mut encoder = zstd::Encoder::new(Vec::new(), ZSTD_LEVEL).map_err(compress_error)?;
    encoder.write_all(&tar_bytes).map_err(compress_error)?;
    let bytes = encoder.finish().map_err(compress_error)?;

    Ok(Artifact {
        digest: hex::encode(Sha256::digest(&bytes)),
        size: bytes.len() as u64,
        bytes,
        n_files,
    })
}

/// One file, symlink or directory to put in the tar.
struct Entry {
    /// Relative to the packed folder, with `/` separators. Invariant: not empty.
    archive_path: String,
    disk_path: PathBuf,
    kind: EntryKind,
}

enum EntryKind {
    Directory,
    File { executable: bool },
    Symlink,
}

/// Left out of every artifact (see `walk`).
pub const MANIFEST_FILE_NAME: &str = "rollway.toml";

/// The entries of `dir` that are not ignored, sorted by their path in the archive.
fn walk(dir: &Path) -> Result<Vec<Entry>, ArtifactError> {
    let walker = ignore::WalkBuilder::new(dir)
        // Dotfiles are part of the app (`.python-version`, `.npmrc`); ignore files decide.
        .hidden(false)
        .git_ignore(true)
        .git_global(true)
        .git_exclude(true)
        // A folder that is not (yet) a git repository still has its `.gitignore` honoured.
        .require_git(false)
        .ignore(false)
        .parents(true)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE_NAME)
        .filter_entry(|entry| entry.file_name() != ".git")
        .build();
    let mut entries = Vec::new();
    for result in walker {
        let entry = result.map_err(|source| ArtifactError::Walk {
            path: dir.to_owned(),
            source,
        })?;
        if entry.depth() == 0 {
            continue;
        }
        // The manifest travels beside the artifact, not in it: a change of config or flags alone
        // then keeps the same digest, and the agent reuses the artifact and its build.
        if entry.depth() == 1 && entry.file_name() == MANIFEST_FILE_NAME {
            continue;
        }
        let disk_path = entry.path().to_owned();
        let Ok(relative) = disk_path.strip_prefix(dir) else {
            continue;
        };
        let Some(archive_path) = archive_path(relative) else {
            return Err(ArtifactError::NonUtf8Path { path: disk_path });
        };
        let read_error = |source| ArtifactError::Read {
            path: disk_path.clone(),
            source,
        };
        let metadata = std::fs::symlink_metadata(&disk_path).map_err(read_error)?;
        let file_type = metadata.file_type();
        let kind = if file_type.is_dir() {
            EntryKind::Directory
        } else if file_type.is_symlink() {
            EntryKind::Symlink
        } else if file_type.is_file() {
            EntryKind::File {
                executable: is_executable(&metadata),
            }
        } else {
            // Sockets, fifos and devices are no part of an app.
            continue;
        };
        entries.push(Entry {
            archive_path,
            disk_path,
            kind,
        });
    }
    entries.sort_by(|left, right| left.archive_path.cmp(&right.archive_path));
    Ok(entries)
}

fn append(builder: &mut tar::Builder<Vec<u8>>, entry: &Entry) -> Result<(), ArtifactError> {
    let read_error = |source| ArtifactError::Read {
        path: entry.disk_path.clone(),
        source,
    };
    let archive_error = |source| ArtifactError::Archive {
        path: entry.disk_path.clone(),
        source,
    };
    let mut header = tar::Header::new_gnu();
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    match entry.kind {
        EntryKind::Directory => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
            header.set_size(0);
            builder
                .append_data(&mut header, &entry.archive_path, std::io::empty())
                .map_err(archive_error)
        }
        EntryKind::File { executable } => {
            // Read whole so that the size in the header is the size of what follows it, even
            // if the file changes while it is packed.
            let mut contents = Vec::new();
            std::fs::File::open(&entry.disk_path)
                .and_then(|mut file| file.read_to_end(&mut contents))
                .map_err(read_error)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(if executable { 0o755 } else { 0o644 });
            header.set_size(contents.len() as u64);
            builder
                .append_data(&mut header, &entry.archive_path, contents.as_slice())
                .map_err(archive_error)
        }
        EntryKind::Symlink => {
            let target = std::fs::read_link(&entry.disk_path).map_err(read_error)?;
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_mode(0o777);
            header.set_size(0);
            builder
                .append_link(&mut header, &entry.archive_path, target)
                .map_err(archive_error)
        }
    }
}

/// `relative` with `/` separators, whatever the platform; `None` if it is not UTF-8 (its bytes
/// would not survive the trip to another platform).
fn archive_path(relative: &Path) -> Option<String> {
    let components: Option<Vec<&str>> = relative
        .components()
        .map(|component| component.as_os_str().to_str())
        .collect();
    Some(components?.join("/"))
}

#[cfg(unix)]
fn is_executable(metadata: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    metadata.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_metadata: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests;
