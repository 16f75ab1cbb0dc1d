//! The registry's disk: content-addressed blobs, upload sessions, and per repository the manifests
//! it holds and its tags. It knows files and digests, not HTTP nor who may do what.
//!
//! Layout under the root (`<state>/registry`):
//! - `blobs/sha256/<hex>`: every blob and every manifest's bytes, written once, renamed into place
//!   only after its digest was checked;
//! - `uploads/<id>`: an upload in progress (its mtime is its last activity);
//! - `repositories/<name>/_manifests/<hex>`: the manifest's media type (the repository holds it);
//! - `repositories/<name>/_tags/<tag>` (a name component never starts with `_`): the digest the tag points to.

use std::io::{ErrorKind, Read as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};

/// A content digest; only `sha256:<64 lowercase hex>` is accepted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    pub fn parse(text: &str) -> Option<Digest> {
        let hex = text.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| Digest(hex.to_owned()))
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest(hex::encode(Sha256::digest(bytes)))
    }

    fn hex(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.0)
    }
}

/// A repository name as the distribution spec has it: path components of lowercase letters and
/// digits joined by `.`, `_` or `-` runs, at most 255 characters in all.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RepositoryName(String);

impl RepositoryName {
    pub fn parse(text: &str) -> Option<RepositoryName> {
        let component_ok = |component: &str| {
            let bytes = component.as_bytes();
            let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
            bytes.first().is_some_and(alnum)
                && bytes.last().is_some_and(alnum)
                && bytes
                    .iter()
                    .all(|b| alnum(b) || matches!(b, b'.' | b'_' | b'-'))
        };
        (!text.is_empty() && text.len() <= 255 && text.split('/').all(component_ok))
            .then(|| RepositoryName(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
pub fn is_tag(text: &str) -> bool {
    let bytes = text.as_bytes();
    let word = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    bytes.len() <= 128
        && bytes.first().is_some_and(word)
        && bytes.iter().all(|b| word(b) || matches!(b, b'.' | b'-'))
}

/// A manifest as stored: its bytes, digest and media type.
#[derive(Debug, Clone)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the registry cannot {action} `{path}`")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the content's digest is {actual}, not the {expected} the client named")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {0} is not in the registry")]
    BlobUnknown(Digest),
    #[error("upload `{0}` is not in progress (unknown, finished or expired)")]
    UploadUnknown(String),
}

impl StorageError {
    /// The disk (or the user's quota) is full.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StorageError::Io { source, .. }
            if matches!(source.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded))
    }
}

/// The registry's files. Cheap to clone: a path.
#[derive(Debug, Clone)]
pub struct Storage {
    root: PathBuf,
}

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_owned();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

impl Storage {
    /// Opens (and makes) the registry's folders under `root`.
    pub fn open(root: PathBuf) -> Result<Storage, StorageError> {
        let storage = Storage { root };
        for dir in [
            storage.root.join("blobs/sha256"),
            storage.uploads(),
            storage.root.join("repositories"),
        ] {
            std::fs::create_dir_all(&dir).map_err(io("make the folder", &dir))?;
        }
        Ok(storage)
    }

    fn uploads(&self) -> PathBuf {
        self.root.join("uploads")
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn repository(&self, name: &RepositoryName) -> PathBuf {
        self.root.join("repositories").join(name.as_str())
    }

    /// The blob's path and size, if the registry holds it. A blob asked for is touched: a sweep
    /// spares blobs touched within its grace, so a client that saw a blob exists can still
    /// reference it in the manifest it puts next.
    pub fn blob(&self, digest: &Digest) -> Option<(PathBuf, u64)> {
        let path = self.blob_path(digest);
        let file = std::fs::File::options().write(true).open(&path).ok()?;
        let _ = file.set_modified(SystemTime::now());
        let size = file.metadata().ok()?.len();
        Some((path, size))
    }

    /// Starts an upload: its id. Uploads idle for longer than `idle` are removed first; at most
    /// `max_sessions` may be in progress (`None` when that many are).
    pub fn start_upload(
        &self,
        idle: Duration,
        max_sessions: usize,
    ) -> Result<Option<String>, StorageError> {
        let uploads = self.uploads();
        let mut live = 0;
        for entry in std::fs::read_dir(&uploads).map_err(io("list the uploads in", &uploads))? {
            let Ok(entry) = entry else { continue };
            let stale = entry
                .metadata()
                .and_then(|metadata| metadata.modified())
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age > idle);
            if stale {
                let _ = std::fs::remove_file(entry.path());
            } else {
                live += 1;
            }
        }
        if live >= max_sessions {
            return Ok(None);
        }
        let mut random = [0u8; 16];
        getrandom::fill(&mut random).map_err(|error| StorageError::Io {
            action: "draw an upload id for",
            path: uploads.clone(),
            source: std::io::Error::other(error.to_string()),
        })?;
        let id = hex::encode(random);
        let path = uploads.join(&id);
        std::fs::File::create_new(&path).map_err(io("start the upload", &path))?;
        Ok(Some(id))
    }

    /// The upload's file and its size so far.
    pub fn upload(&self, id: &str) -> Result<(PathBuf, u64), StorageError> {
        let valid = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit());
        let path = self.uploads().join(id);
        match std::fs::metadata(&path) {
            Ok(metadata) if valid => Ok((path, metadata.len())),
            _ => Err(StorageError::UploadUnknown(id.to_owned())),
        }
    }

    pub fn cancel_upload(&self, id: &str) {
        if let Ok((path, _)) = self.upload(id) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// Ends upload `id`: its content must have `expected` as digest; then it is the blob.
    /// On a mismatch the upload is removed.
    pub fn finish_upload(&self, id: &str, expected: &Digest) -> Result<u64, StorageError> {
        let (path, size) = self.upload(id)?;
        let result = self.commit_file(&path, expected);
        if result.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        result.map(|()| size)
    }

    /// Hashes `file` and, when it is `expected`, moves it into the blobs (atomic rename).
    fn commit_file(&self, file: &Path, expected: &Digest) -> Result<(), StorageError> {
        let mut reader = std::fs::File::open(file).map_err(io("read the upload", file))?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0u8; 256 * 1024];
        loop {
            let n = reader
                .read(&mut buffer)
                .map_err(io("read the upload", file))?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        let actual = Digest(hex::encode(hasher.finalize()));
        if actual != *expected {
            return Err(StorageError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        reader.sync_all().map_err(io("sync the upload", file))?;
        let target = self.blob_path(expected);
        std::fs::rename(file, &target).map_err(io("store the blob", &target))
    }

    /// Writes small content (a manifest) as a blob under its digest.
    fn put_bytes(&self, bytes: &[u8]) -> Result<Digest, StorageError> {
        let digest = Digest::of(bytes);
        let target = self.blob_path(&digest);
        if target.exists() {
            let _ = std::fs::File::options()
                .write(true)
                .open(&target)
                .and_then(|file| file.set_modified(SystemTime::now()));
            return Ok(digest);
        }
        write_atomic(&target, bytes)?;
        Ok(digest)
    }

    /// Puts a manifest into `name`, under `tag` when given. Every blob it references must be
    /// held already (`BlobUnknown` names the first that is not).
    pub fn put_manifest(
        &self,
        name: &RepositoryName,
        tag: Option<&str>,
        media_type: &str,
        bytes: &[u8],
        references: &[Digest],
    ) -> Result<Digest, StorageError> {
        if let Some(missing) = references
            .iter()
            .find(|digest| !self.blob_path(digest).exists())
        {
            return Err(StorageError::BlobUnknown(missing.clone()));
        }
        let digest = self.put_bytes(bytes)?;
        let repository = self.repository(name);
        let manifests = repository.join("_manifests");
        std::fs::create_dir_all(&manifests).map_err(io("make the folder", &manifests))?;
        write_atomic(&manifests.join(digest.hex()), media_type.as_bytes())?;
        if let Some(tag) = tag {
            let tags = repository.join("_tags");
            std::fs::create_dir_all(&tags).map_err(io("make the folder", &tags))?;
            write_atomic(&tags.join(tag), digest.to_string().as_bytes())?;
        }
        Ok(digest)
    }

    /// The digest a tag or digest reference of `name` names, if `name` holds it.
    pub fn resolve(&self, name: &RepositoryName, reference: &str) -> Option<Digest> {
        let repository = self.repository(name);
        let digest = match Digest::parse(reference) {
            Some(digest) => digest,
            None if is_tag(reference) => {
                let text =
                    std::fs::read_to_string(repository.join("_tags").join(reference)).ok()?;
                Digest::parse(text.trim())?
            }
            None => return None,
        };
        repository
            .join("_manifests")
            .join(digest.hex())
            .exists()
            .then_some(digest)
    }

    /// The manifest a tag or digest of `name` names.
    pub fn manifest(&self, name: &RepositoryName, reference: &str) -> Option<StoredManifest> {
        let digest = self.resolve(name, reference)?;
        let media_type =
            std::fs::read_to_string(self.repository(name).join("_manifests").join(digest.hex()))
                .ok()?;
        let bytes = std::fs::read(self.blob_path(&digest)).ok()?;
        Some(StoredManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Removes `tag` of `name` and, when no other tag of `name` points to its manifest, the
    /// manifest from `name` (its blobs go at the next [`Storage::sweep`]). Whether it was there.
    pub fn remove_tag(&self, name: &RepositoryName, tag: &str) -> Result<bool, StorageError> {
        if !is_tag(tag) {
            return Ok(false);
        }
        let Some(digest) = self.resolve(name, tag) else {
            return Ok(false);
        };
        let tags = self.repository(name).join("_tags");
        let tag_path = tags.join(tag);
        std::fs::remove_file(&tag_path).map_err(io("remove the tag", &tag_path))?;
        let still_tagged = std::fs::read_dir(&tags)
            .map_err(io("list the tags in", &tags))?
            .filter_map(Result::ok)
            .any(|entry| {
                std::fs::read_to_string(entry.path())
                    .is_ok_and(|text| text.trim() == digest.to_string())
            });
        if !still_tagged {
            let manifest = self.repository(name).join("_manifests").join(digest.hex());
            std::fs::remove_file(&manifest).map_err(io("remove the manifest", &manifest))?;
        }
        Ok(true)
    }

    /// The tags of `name`, sorted.
    pub fn tags(&self, name: &RepositoryName) -> Vec<String> {
        let mut tags: Vec<String> = std::fs::read_dir(self.repository(name).join("_tags"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|entry| entry.file_name().into_string().ok())
            .collect();
        tags.sort();
        tags
    }

    /// Removes every blob no manifest of any repository references (nor is one) and that was not
    /// written or asked for within `grace` (an image being pushed). Answers how many and the
    /// bytes freed.
    pub fn sweep(&self, grace: Duration) -> Result<(usize, u64), StorageError> {
        let mut referenced = std::collections::BTreeSet::new();
        let mut repositories = vec![self.root.join("repositories")];
        while let Some(dir) = repositories.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.filter_map(Result::ok) {
                let path = entry.path();
                if entry.file_name() == "_manifests" {
                    for manifest in std::fs::read_dir(&path)
                        .map_err(io("list the manifests in", &path))?
                        .filter_map(Result::ok)
                    {
                        let Some(digest) = manifest
                            .file_name()
                            .to_str()
                            .and_then(|hex| Digest::parse(&format!("sha256:{hex}")))
                        else {
                            continue;
                        };
                        if let Ok(bytes) = std::fs::read(self.blob_path(&digest)) {
                            referenced.extend(super::manifest_references(&bytes));
                        }
                        referenced.insert(digest);
                    }
                } else if entry.file_name() != "_tags" && path.is_dir() {
                    repositories.push(path);
                }
            }
        }
        let blobs = self.root.join("blobs/sha256");
        let (mut removed, mut freed) = (0, 0);
        for entry in std::fs::read_dir(&blobs)
            .map_err(io("list the blobs in", &blobs))?
            .filter_map(Result::ok)
        {
            let Some(digest) = entry
                .file_name()
                .to_str()
                .and_then(|hex| Digest::parse(&format!("sha256:{hex}")))
            else {
                continue;
            };
            let Ok(metadata) = entry.metadata() else {
                continue;
            };
            let recent = metadata
                .modified()
                .ok()
                .and_then(|modified| modified.elapsed().ok())
                .is_none_or(|age| age < grace);
            if referenced.contains(&digest) || recent {
                continue;
            }
            if std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
                freed += metadata.len();
            }
        }
        Ok((removed, freed))
    }
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, renames it into place.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StorageError> {
    use std::io::Write as _;
    let mut random = [0u8; 8];
    let _ = getrandom::fill(&mut random);
    let temp = path.with_file_name(format!(".tmp-{}", hex::encode(random)));
    let written = (|| {
        let mut file = std::fs::File::create_new(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    written.map_err(|source| {
        let _ = std::fs::remove_file(&temp);
        StorageError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        }
    })
}
