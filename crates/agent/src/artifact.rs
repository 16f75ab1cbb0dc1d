//! Artifacts on the agent: content-addressed storage of packed app folders, and safe unpacking.
//! An artifact is stored only under the digest of its bytes, written atomically, and unpacked
//! only into a fresh folder with every entry checked. Building (the manifest's `build` command)
//! and pruning happen elsewhere; this module does not know releases.
//!
//! Artifacts are bounded (`ArtifactLimits`): a compressed size, an unpacked size, and an expansion
//! ratio watched while unpacking, so a decompression bomb is refused before it fills the disk.

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// A folder of artifacts: `<dir>/sha256/<digest>.tar.zst`.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    dir: PathBuf,
    limits: ArtifactLimits,
}

/// How large an artifact may be. The agent reads them from its environment
/// ([`ArtifactLimits::from_env`]); the defaults fit a web app with its dependencies vendored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArtifactLimits {
    /// Bytes of the stored `tar+zstd` (`ROLLWAY_ARTIFACT_MAX_SIZE`, default 1 GiB).
    pub max_compressed: u64,
    /// Bytes of the unpacked tar stream, headers included (`ROLLWAY_ARTIFACT_MAX_UNPACKED`,
    /// default 4 GiB).
    pub max_unpacked: u64,
    /// Most unpacked bytes per compressed byte (`ROLLWAY_ARTIFACT_MAX_RATIO`, default 200) once
    /// past [`RATIO_FLOOR`]: source code and dependencies compress 3-20 times; a zstd bomb
    /// thousands of times.
    pub max_ratio: u64,
}

/// Below this many unpacked bytes the expansion ratio is not judged: a tiny artifact of text
/// compresses well and is harmless.
pub const RATIO_FLOOR: u64 = 64 * 1024 * 1024;

impl Default for ArtifactLimits {
    fn default() -> Self {
        ArtifactLimits {
            max_compressed: 1 << 30,
            max_unpacked: 4 << 30,
            max_ratio: 200,
        }
    }
}

impl ArtifactLimits {
    /// The defaults, each overridden by its variable when that holds a whole number.
    pub fn from_env() -> ArtifactLimits {
        let read = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(default)
        };
        let defaults = ArtifactLimits::default();
        ArtifactLimits {
            max_compressed: read("ROLLWAY_ARTIFACT_MAX_SIZE", defaults.max_compressed),
            max_unpacked: read("ROLLWAY_ARTIFACT_MAX_UNPACKED", defaults.max_unpacked),
            max_ratio: read("ROLLWAY_ARTIFACT_MAX_RATIO", defaults.max_ratio),
        }
    }

    /// Most unpacked bytes allowed for an artifact of `compressed` bytes.
    fn unpacked_bound(&self, compressed: u64) -> u64 {
        let by_ratio = compressed.saturating_mul(self.max_ratio).max(RATIO_FLOOR);
        self.max_unpacked.min(by_ratio)
    }
}

/// Why an artifact could not be stored or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("`{digest}` is not a sha256 digest (64 lowercase hex digits)")]
    InvalidDigest { digest: String },
    #[error("artifact bytes have digest `{actual}`, not `{expected}`")]
    DigestMismatch { expected: String, actual: String },
    #[error("artifact `{digest}` is not stored")]
    NotFound { digest: String },
    #[error("cannot unpack into `{path}`: it already exists")]
    DestinationExists { path: PathBuf },
    #[error("artifact `{digest}` has an unsafe entry `{entry}`: {reason}")]
    UnsafeEntry {
        digest: String,
        entry: String,
        reason: &'static str,
    },
    #[error(
        "the artifact ({size} bytes or more) is larger than the agent's limit of {limit} bytes (`ROLLWAY_ARTIFACT_MAX_SIZE`); leave build output and data out with `.rollwayignore`"
    )]
    TooLarge { size: u64, limit: u64 },
    #[error(
        "artifact `{digest}` unpacks to more than {limit} bytes (the agent's limit, `ROLLWAY_ARTIFACT_MAX_UNPACKED`); leave build output and data out with `.rollwayignore`"
    )]
    UnpacksTooLarge { digest: String, limit: u64 },
    #[error(
        "artifact `{digest}` expands more than {ratio} times its {compressed} compressed bytes: refused as a decompression bomb (`ROLLWAY_ARTIFACT_MAX_RATIO` raises the bound)"
    )]
    ExpandsTooMuch {
        digest: String,
        compressed: u64,
        ratio: u64,
    },
    #[error("the upload broke off before its end")]
    Receive {
        #[source]
        source: io::Error,
    },
    #[error("cannot {operation} `{path}`")]
    Io {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ArtifactStore {
    /// A store rooted at `dir`; folders are created on the first `put`.
    pub fn new(dir: impl Into<PathBuf>) -> ArtifactStore {
        ArtifactStore {
            dir: dir.into(),
            limits: ArtifactLimits::default(),
        }
    }

    /// The same store, bounded by `limits`.
    pub fn with_limits(mut self, limits: ArtifactLimits) -> ArtifactStore {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> ArtifactLimits {
        self.limits
    }

    /// Removes what an interrupted `put` left (`.<digest>.<random>.tmp`); called at agent start,
    /// before anything writes. Returns how many were removed.
    pub fn clean_leftovers(&self) -> usize {
        remove_hidden_with_suffix(&self.dir.join("sha256"), ".tmp")
    }

    /// Where artifact `digest` is (or would be) stored.
    pub fn path(&self, digest: &str) -> Result<PathBuf, ArtifactError> {
        check_digest(digest)?;
        Ok(self.dir.join("sha256").join(format!("{digest}.tar.zst")))
    }

    /// Stores `bytes` as artifact `digest` (see [`ArtifactStore::put_from`]).
    pub fn put(&self, digest: &str, bytes: &[u8]) -> Result<(), ArtifactError> {
        self.put_from(digest, bytes).map(drop)
    }

    /// Stores what `reader` gives as artifact `digest`, after checking that it is: a mismatch is
    /// refused. The bytes go straight to a temporary file, hashed and counted on the way, so an
    /// upload never sits in memory and one past the limit stops as soon as it passes it. Atomic
    /// (temporary file, fsync, rename, fsync of the folder), so a crash leaves either the whole
    /// artifact or none. Storing a digest that is already there changes nothing. Returns the size.
    pub fn put_from(&self, digest: &str, mut reader: impl Read) -> Result<u64, ArtifactError> {
        let path = self.path(digest)?;
        let folder = self.dir.join("sha256");
        fs::create_dir_all(&folder).map_err(io_error("create", &folder))?;
        let temporary = folder.join(format!(".{digest}.{}.tmp", random_suffix()));
        let written = self
            .write_checked(digest, &mut reader, &temporary)
            .and_then(|size| {
                if path.is_file() {
                    // Stored meanwhile (or before): the same bytes, by their digest.
                    let _ = fs::remove_file(&temporary);
                    return Ok(size);
                }
                fs::rename(&temporary, &path).map_err(io_error("rename", &temporary))?;
                sync_dir(&folder)?;
                Ok(size)
            });
        if written.is_err() {
            // Best effort: the temporary file holds nothing anyone will read.
            let _ = fs::remove_file(&temporary);
        }
        written
    }

    /// Copies `reader` into `temporary` (synced), refusing more than the limit and bytes whose
    /// digest is not `digest`.
    fn write_checked(
        &self,
        digest: &str,
        reader: &mut impl Read,
        temporary: &Path,
    ) -> Result<u64, ArtifactError> {
        let limit = self.limits.max_compressed;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(temporary)
            .map_err(io_error("create", temporary))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = match reader.read(&mut buffer) {
                Ok(0) => break,
                Ok(read) => read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(source) => {
                    return Err(ArtifactError::Receive { source });
                }
            };
            size = size.saturating_add(read as u64);
            if size > limit {
                return Err(ArtifactError::TooLarge { size, limit });
            }
            hasher.update(&buffer[..read]);
            file.write_all(&buffer[..read])
                .map_err(io_error("write", temporary))?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return Err(ArtifactError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        file.sync_all().map_err(io_error("sync", temporary))?;
        Ok(size)
    }

    /// Whether artifact `digest` is stored. An invalid digest is never stored.
    pub fn has(&self, digest: &str) -> bool {
        self.path(digest).is_ok_and(|path| path.is_file())
    }

    /// Unpacks artifact `digest` into `dest`, which must not exist yet.
    ///
    /// Every entry is checked before it is written: only files, directories and symlinks; no
    /// absolute path, no `..`, nothing written through a symlink; no symlink pointing outside
    /// `dest`. tar's `unpack_in` guards against traversal on top of that. The artifact is unpacked into a temporary sibling of
    /// `dest`, renamed into place when complete, so `dest` never holds half an artifact.
    /// Modification times are set to now, not the artifact's 0: some tools (Python's zipfile,
    /// hence pip) refuse files dated before 1980.
    pub fn unpack(&self, digest: &str, dest: &Path) -> Result<(), ArtifactError> {
        let path = self.path(digest)?;
        if !path.is_file() {
            return Err(ArtifactError::NotFound {
                digest: digest.to_owned(),
            });
        }
        if fs::symlink_metadata(dest).is_ok() {
            return Err(ArtifactError::DestinationExists {
                path: dest.to_owned(),
            });
        }
        let file_name = dest.file_name().map_or_else(
            || "artifact".into(),
            |name| name.to_string_lossy().into_owned(),
        );
        let parent = match dest.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(io_error("create", &parent))?;
        let temporary = parent.join(format!(".{file_name}.{}.unpacking", random_suffix()));
        fs::create_dir(&temporary).map_err(io_error("create", &temporary))?;
        let unpacked = unpack_into(digest, &path, &temporary, &self.limits)
            .and_then(|()| fs::rename(&temporary, dest).map_err(io_error("rename", &temporary)));
        if let Err(error) = unpacked {
            // Best effort: a leftover `.unpacking` folder is garbage, never mistaken for `dest`.
            let _ = fs::remove_dir_all(&temporary);
            return Err(error);
        }
        Ok(())
    }
}

/// Checks that `digest` is 64 lowercase hex digits, which also makes it safe in a file name.
pub fn check_digest(digest: &str) -> Result<(), ArtifactError> {
    let valid = digest.len() == 64
        && digest
            .bytes()
            .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
    if valid {
        Ok(())
    } else {
        Err(ArtifactError::InvalidDigest {
            digest: digest.to_owned(),
        })
    }
}

/// Removes the hidden entries (`.name…suffix`) of `dir`, files or folders; a missing `dir` has none.
pub fn remove_hidden_with_suffix(dir: &Path, suffix: &str) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with('.') && name.ends_with(suffix)) {
            continue;
        }
        let path = entry.path();
        let result = if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            fs::remove_dir_all(&path)
        } else {
            fs::remove_file(&path)
        };
        match result {
            Ok(()) => removed += 1,
            Err(error) => {
                tracing::warn!(message = "Cannot remove a leftover.", path = %path.display(), %error)
            }
        }
    }
    removed
}

/// Counts the bytes read through it and fails once they pass `limit`, so no single entry can
/// write past the bound either.
struct Bounded<R> {
    inner: R,
    read: Arc<AtomicU64>,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let total = self.read.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if total > self.limit {
            return Err(io::Error::other("the artifact unpacks past its bound"));
        }
        Ok(n)
    }
}

fn unpack_into(
    digest: &str,
    archive_path: &Path,
    dest: &Path,
    limits: &ArtifactLimits,
) -> Result<(), ArtifactError> {
    let file = fs::File::open(archive_path).map_err(io_error("open", archive_path))?;
    let compressed = file
        .metadata()
        .map_err(io_error("read", archive_path))?
        .len();
    if compressed > limits.max_compressed {
        return Err(ArtifactError::TooLarge {
            size: compressed,
            limit: limits.max_compressed,
        });
    }
    let bound = limits.unpacked_bound(compressed);
    let unpacked_bytes = Arc::new(AtomicU64::new(0));
    // Any error once past the bound is the bound's doing, whatever tar made of it.
    let past_bound = |error: ArtifactError| {
        if unpacked_bytes.load(Ordering::Relaxed) <= bound {
            error
        } else if bound < limits.max_unpacked {
            ArtifactError::ExpandsTooMuch {
                digest: digest.to_owned(),
                compressed,
                ratio: limits.max_ratio,
            }
        } else {
            ArtifactError::UnpacksTooLarge {
                digest: digest.to_owned(),
                limit: limits.max_unpacked,
            }
        }
    };
    let decoder = zstd::Decoder::new(file).map_err(io_error("decompress", archive_path))?;
    let bounded = Bounded {
        inner: decoder,
        read: unpacked_bytes.clone(),
        limit: bound,
    };
    entries_into(digest, archive_path, bounded, dest).map_err(past_bound)
}

fn entries_into(
    digest: &str,
    archive_path: &Path,
    stream: impl Read,
    dest: &Path,
) -> Result<(), ArtifactError> {
    let read_error = io_error("read", archive_path);
    let mut archive = tar::Archive::new(stream);
    archive.set_preserve_permissions(false);
    archive.set_preserve_mtime(false);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(false);
    let entries = archive.entries().map_err(&read_error)?;
    // The symlinks unpacked so far: no later entry may be written through one.
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    for entry in entries {
        let mut entry = entry.map_err(&read_error)?;
        let entry_path = entry.path().map_err(&read_error)?.into_owned();
        let unsafe_entry = |reason| ArtifactError::UnsafeEntry {
            digest: digest.to_owned(),
            entry: entry_path.display().to_string(),
            reason,
        };
        let normalized = normalized_entry_path(&entry_path).map_err(unsafe_entry)?;
        if normalized
            .ancestors()
            .any(|ancestor| symlinks.contains(ancestor))
        {
            return Err(unsafe_entry("its path goes through a symlink"));
        }
        let is_symlink = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Directory => false,
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(&read_error)?
                    .ok_or_else(|| unsafe_entry("it is a symlink without a target"))?;
                check_symlink_target(&normalized, &target).map_err(unsafe_entry)?;
                true
            }
            _ => {
                return Err(unsafe_entry(
                    "only files, directories and symlinks are allowed",
                ));
            }
        };
        let unpacked = entry
            .unpack_in(dest)
            .map_err(io_error("unpack into", dest))?;
        if !unpacked {
            return Err(unsafe_entry("it would be written outside the destination"));
        }
        if is_symlink {
            symlinks.insert(normalized);
        }
    }
    Ok(())
}

/// An entry's path without `.` components. Refused: absolute paths, `..`, and an empty path.
fn normalized_entry_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut normalized = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(name) => normalized.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err("its path contains `..`"),
            Component::RootDir | Component::Prefix(_) => return Err("its path is absolute"),
        }
    }
    if normalized.as_os_str().is_empty() {
        return Err("its path is empty");
    }
    Ok(normalized)
}

/// A symlink must point inside the destination. Its target may climb with leading `..` no
/// higher than the destination, then only descend: `..` after a name could climb out of a
/// symlinked folder. This holds because the folders holding a symlink are real folders (no entry
/// is written through a symlink) and every symlink it may pass through was checked the same way.
fn check_symlink_target(link: &Path, target: &Path) -> Result<(), &'static str> {
    let mut depth = link
        .parent()
        .map_or(0, |parent| parent.components().count());
    let mut descending = false;
    for component in target.components() {
        match component {
            Component::Normal(_) => descending = true,
            Component::CurDir => {}
            Component::ParentDir if descending => {
                return Err("it is a symlink whose target has `..` after a name");
            }
            Component::ParentDir => {
                depth = depth
                    .checked_sub(1)
                    .ok_or("it is a symlink pointing outside the artifact")?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err("it is a symlink to an absolute path");
            }
        }
    }
    Ok(())
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> Result<(), ArtifactError> {
    #[cfg(unix)]
    {
        fs::File::open(dir)
            .and_then(|file| file.sync_all())
            .map_err(io_error("sync", dir))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// A suffix that keeps concurrent temporary names apart. Falls back to the process id and a
/// counter should the OS fail to give random bytes.
fn random_suffix() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_ok() {
        return hex::encode(bytes);
    }
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{count}", std::process::id())
}

fn io_error(operation: &'static str, path: &Path) -> impl Fn(io::Error) -> ArtifactError {
    let path = path.to_owned();
    move |source| ArtifactError::Io {
        operation,
        path: path.clone(),
        source,
    }
}

#[cfg(test)]
mod tests;
