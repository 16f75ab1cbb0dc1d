//! Off-host copies of backups on an S3-compatible store (AWS S3, Backblaze B2, Cloudflare R2,
//! MinIO): sealed on the agent ([`super::sealed`]), uploaded after the backup is taken with
//! retries and backoff, pruned to the same `keep`, fetched back when the local copy is gone.
//!
//! Requests are presigned with SigV4 by `rusty-s3` (path-style URLs, so any endpoint works) and
//! sent with the agent's hyper client. The credentials are secrets of the environment: they live
//! in a [`Secret`] and in the signature of a URL that is never logged or put in an error (errors
//! name the operation and the object key, and quote only the `<Code>` of an S3 error body).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt as _, TryStreamExt as _};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt as _, Empty, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rusty_s3::{Bucket, Credentials, S3Action as _, UrlStyle};

use super::sealed::{self, BackupKey, Header, SealError};
use crate::engine::{Engine, now_ms};
use crate::secrets::Secret;
use crate::store::{BackupRecord, NewEvent, RemoteCopy};

/// Upload attempts per backup, and the first backoff (doubled after each failure).
pub const UPLOAD_ATTEMPTS: u32 = 5;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// How long one request may take: listing and deleting, and moving a whole object.
const SMALL_REQUEST: Duration = Duration::from_secs(60);
const TRANSFER: Duration = Duration::from_secs(3600);
/// The extension of a sealed object.
pub const SEALED_EXTENSION: &str = "sealed";
/// Objects larger than one part go up as an S3 multipart upload (one PUT takes at most 5 GiB);
/// parts are this big, or bigger when an object would need more than [`MAX_PARTS`].
pub const PART_SIZE: u64 = 64 * 1024 * 1024;
pub const MAX_PARTS: u64 = 10_000;

/// One S3 bucket and prefix, with the credentials to reach it.
#[derive(Clone)]
pub struct Remote {
    bucket: Bucket,
    credentials: Credentials,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    shown: String,
    /// Invariant: at least 1.
    part_size: u64,
    http: Client<hyper_rustls::HttpsConnector<HttpConnector>, BoxBody<Bytes, std::io::Error>>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Remote({})", self.shown)
    }
}

/// An object under a prefix on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteObject {
    pub key: String,
    pub size: u64,
    pub last_modified: String,
}

/// Why the remote could not be used. Never holds a URL or a credential.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("`backup.endpoint` `{endpoint}` is not a URL the agent can reach")]
    Endpoint { endpoint: String },
    #[error(
        "the secret `{name}` (`backup.{key}`) is not set in `{environment}`; set it with `rollway secrets set {name} --env {environment}`"
    )]
    SecretNotSet {
        key: &'static str,
        name: String,
        environment: String,
    },
    #[error("cannot {operation} `{key}` on {remote}")]
    Request {
        operation: &'static str,
        key: String,
        remote: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{remote} answered {status}{} to {operation} `{key}`", code.as_deref().map(|code| format!(" ({code})")).unwrap_or_default())]
    Status {
        operation: &'static str,
        key: String,
        remote: String,
        status: u16,
        /// The `<Code>` of the S3 error body.
        code: Option<String>,
    },
    #[error("{operation} `{key}` on {remote} took longer than {}s", timeout.as_secs())]
    Timeout {
        operation: &'static str,
        key: String,
        remote: String,
        timeout: Duration,
    },
    #[error("cannot {operation} `{}`", path.display())]
    File {
        operation: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{remote} sent a listing that is not S3's XML")]
    Listing { remote: String },
    #[error("{remote} did not {operation} `{key}`{}", code.as_deref().map(|code| format!(" ({code})")).unwrap_or_default())]
    Answer {
        operation: &'static str,
        key: String,
        remote: String,
        /// The `<Code>` of the S3 error body.
        code: Option<String>,
    },
    #[error(transparent)]
    Sealed(#[from] SealError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the sealing task ended early")]
    Task(#[source] tokio::task::JoinError),
    #[error("`[backup]` of this release has no `remote`")]
    NoRemote,
    #[error("no backup `{id}` on {remote}")]
    NotOnRemote { id: String, remote: String },
}

impl Remote {
    /// The remote of `[backup]`, with the credentials from `secrets` (the release's secrets).
    pub fn new(
        config: &manifest::BackupRemote,
        environment: &str,
        secrets: &std::collections::BTreeMap<String, Secret>,
    ) -> Result<Remote, RemoteError> {
        let secret = |key: &'static str, name: &String| {
            secrets
                .get(name)
                .cloned()
                .ok_or_else(|| RemoteError::SecretNotSet {
                    key,
                    name: name.clone(),
                    environment: environment.to_owned(),
                })
        };
        let access_key_id = secret("access_key_id", &config.access_key_id)?;
        let secret_access_key = secret("secret_access_key", &config.secret_access_key)?;
        Remote::with_credentials(config, &access_key_id, &secret_access_key)
    }

    /// The remote `config` describes, with these credentials (the names in `config` are not read).
    pub fn with_credentials(
        config: &manifest::BackupRemote,
        access_key_id: &Secret,
        secret_access_key: &Secret,
    ) -> Result<Remote, RemoteError> {
        let endpoint_error = || RemoteError::Endpoint {
            endpoint: config.endpoint.clone(),
        };
        let endpoint: url::Url = config.endpoint.parse().map_err(|_| endpoint_error())?;
        let bucket = Bucket::new(
            endpoint,
            UrlStyle::Path,
            config.bucket.clone(),
            config.region.clone(),
        )
        .map_err(|_| endpoint_error())?;
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .build();
        let shown = if config.prefix.is_empty() {
            format!("s3://{}", config.bucket)
        } else {
            format!("s3://{}/{}", config.bucket, config.prefix)
        };
        Ok(Remote {
            bucket,
            credentials: Credentials::new(
                access_key_id.expose().to_owned(),
                secret_access_key.expose().to_owned(),
            ),
            prefix: config.prefix.clone(),
            shown,
            part_size: PART_SIZE,
            http: Client::builder(TokioExecutor::new()).build(connector),
        })
    }

    /// This remote with another part size for multipart uploads (tests use small ones; S3 refuses
    /// parts under 5 MiB but the last).
    pub fn with_part_size(mut self, part_size: u64) -> Remote {
        self.part_size = part_size.max(1);
        self
    }

    /// `s3://bucket/prefix`.
    pub fn shown(&self) -> &str {
        &self.shown
    }

    /// The folder (key prefix ending in `/`) of an app environment's backups.
    pub fn folder(&self, app: &str, environment: &str) -> String {
        self.key(&format!("{app}/{environment}/"))
    }

    /// `prefix/rest`.
    pub fn key(&self, rest: &str) -> String {
        if self.prefix.is_empty() {
            rest.to_owned()
        } else {
            format!("{}/{rest}", self.prefix)
        }
    }

    /// Uploads the file at `path` as `key`, streamed from disk: one PUT up to the part size,
    /// a multipart upload above it.
    pub async fn put_file(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        let file_error = |source| RemoteError::File {
            operation: "read",
            path: path.to_owned(),
            source,
        };
        let file = tokio::fs::File::open(path).await.map_err(file_error)?;
        let size = file.metadata().await.map_err(file_error)?.len();
        if size > self.part_size {
            return self.put_multipart(key, path, size).await;
        }
        let url = self
            .bucket
            .put_object(Some(&self.credentials), key)
            .sign(TRANSFER);
        self.send("upload", key, put_body(url.as_str(), file, size), TRANSFER)
            .await
            .map(|_| ())
    }

    /// A multipart upload of the file at `path` (`size` bytes): started, sent part by part
    /// (each streamed from its place in the file), completed; aborted when any step fails, so no
    /// orphan parts are kept (and paid for) on the remote.
    async fn put_multipart(&self, key: &str, path: &Path, size: u64) -> Result<(), RemoteError> {
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), key)
            .sign(SMALL_REQUEST);
        let request = hyper::Request::post(url.as_str()).body(empty());
        let operation = "start a multipart upload of";
        let response = self.send(operation, key, request, SMALL_REQUEST).await?;
        let body = self.read_body(operation, key, response).await?;
        let upload_id = rusty_s3::actions::CreateMultipartUpload::parse_response(
            &String::from_utf8_lossy(&body),
        )
        .map_err(|_| RemoteError::Answer {
            operation,
            key: key.to_owned(),
            remote: self.shown.clone(),
            code: error_code(&body),
        })?
        .upload_id()
        .to_owned();
        let uploaded = match self.put_parts(key, path, size, &upload_id).await {
            Ok(etags) => self.complete_multipart(key, &upload_id, &etags).await,
            Err(error) => Err(error),
        };
        if uploaded.is_err() {
            let url = self
                .bucket
                .abort_multipart_upload(Some(&self.credentials), key, &upload_id)
                .sign(SMALL_REQUEST);
            let request = hyper::Request::delete(url.as_str()).body(empty());
            if let Err(error) = self
                .send("abort the multipart upload of", key, request, SMALL_REQUEST)
                .await
            {
                tracing::warn!(message = "Cannot abort a failed multipart upload; the remote keeps its parts until its own lifecycle rule removes them.", key, error = %crate::report::chain(&error));
            }
        }
        uploaded
    }

    /// Sends the parts of a multipart upload, in order; their ETags.
    async fn put_parts(
        &self,
        key: &str,
        path: &Path,
        size: u64,
        upload_id: &str,
    ) -> Result<Vec<String>, RemoteError> {
        use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};
        let part_size = self.part_size.max(size.div_ceil(MAX_PARTS));
        let n_parts = size.div_ceil(part_size);
        let mut etags = Vec::new();
        for part_idx in 0..n_parts {
            let file_error = |source| RemoteError::File {
                operation: "read",
                path: path.to_owned(),
                source,
            };
            let offset = part_idx * part_size;
            let length = part_size.min(size - offset);
            let mut file = tokio::fs::File::open(path).await.map_err(file_error)?;
            file.seek(std::io::SeekFrom::Start(offset))
                .await
                .map_err(file_error)?;
            // Part numbers start at 1; MAX_PARTS keeps them within u16.
            let part_number = u16::try_from(part_idx + 1).unwrap_or(u16::MAX);
            let url = self
                .bucket
                .upload_part(Some(&self.credentials), key, part_number, upload_id)
                .sign(TRANSFER);
            let response = self
                .send(
                    "upload a part of",
                    key,
                    put_body(url.as_str(), file.take(length), length),
                    TRANSFER,
                )
                .await?;
            let etag = response
                .headers()
                .get(hyper::header::ETAG)
                .and_then(|etag| etag.to_str().ok())
                .ok_or_else(|| RemoteError::Answer {
                    operation: "upload a part of",
                    key: key.to_owned(),
                    remote: self.shown.clone(),
                    code: Some("NoETag".to_owned()),
                })?;
            etags.push(etag.to_owned());
        }
        Ok(etags)
    }

    async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), RemoteError> {
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SMALL_REQUEST);
        let request = hyper::Request::post(url.as_str()).body(BoxBody::new(
            Full::new(Bytes::from(action.body())).map_err(|never| match never {}),
        ));
        let operation = "complete the multipart upload of";
        let response = self.send(operation, key, request, TRANSFER).await?;
        // S3 may answer 200 and still fail: the body says which.
        let body = self.read_body(operation, key, response).await?;
        rusty_s3::actions::CompleteMultipartUploadResponse::parse(&String::from_utf8_lossy(&body))
            .map(|_| ())
            .map_err(|_| RemoteError::Answer {
                operation,
                key: key.to_owned(),
                remote: self.shown.clone(),
                code: error_code(&body),
            })
    }

    /// Downloads `key` into a new file at `path`, streamed to disk.
    pub async fn get_file(&self, key: &str, path: &Path) -> Result<(), RemoteError> {
        let url = self
            .bucket
            .get_object(Some(&self.credentials), key)
            .sign(TRANSFER);
        let response = self
            .send("download", key, get(url.as_str()), TRANSFER)
            .await?;
        let file_error = |source| RemoteError::File {
            operation: "write",
            path: path.to_owned(),
            source,
        };
        let mut file = tokio::fs::File::create(path).await.map_err(file_error)?;
        let mut body = response.into_body().into_data_stream();
        let transfer = async {
            use tokio::io::AsyncWriteExt as _;
            while let Some(chunk) =
                body.try_next()
                    .await
                    .map_err(|source| RemoteError::Request {
                        operation: "download",
                        key: key.to_owned(),
                        remote: self.shown.clone(),
                        source: Box::new(source),
                    })?
            {
                file.write_all(&chunk).await.map_err(file_error)?;
            }
            file.sync_all().await.map_err(file_error)
        };
        tokio::time::timeout(TRANSFER, transfer)
            .await
            .map_err(|_| RemoteError::Timeout {
                operation: "download",
                key: key.to_owned(),
                remote: self.shown.clone(),
                timeout: TRANSFER,
            })?
    }

    /// Every object under `folder`, in key order.
    pub async fn list(&self, folder: &str) -> Result<Vec<RemoteObject>, RemoteError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        // A bucket folder of backups is small; the bound only stops a server that loops.
        for _ in 0..1000 {
            let mut action = self.bucket.list_objects_v2(Some(&self.credentials));
            action.with_prefix(folder);
            if let Some(token) = &token {
                action.with_continuation_token(token.clone());
            }
            let url = action.sign(SMALL_REQUEST);
            let response = self
                .send("list", folder, get(url.as_str()), SMALL_REQUEST)
                .await?;
            let body = self.read_body("list", folder, response).await?;
            let text = String::from_utf8_lossy(&body);
            let listing =
                rusty_s3::actions::ListObjectsV2::parse_response(&text).map_err(|_| {
                    RemoteError::Listing {
                        remote: self.shown.clone(),
                    }
                })?;
            objects.extend(listing.contents.into_iter().map(|object| RemoteObject {
                key: object.key,
                size: object.size.unwrap_or(0),
                last_modified: object.last_modified.unwrap_or_default(),
            }));
            match listing.next_continuation_token {
                Some(next) => token = Some(next),
                None => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    pub async fn delete(&self, key: &str) -> Result<(), RemoteError> {
        let url = self
            .bucket
            .delete_object(Some(&self.credentials), key)
            .sign(SMALL_REQUEST);
        let request = hyper::Request::delete(url.as_str()).body(empty());
        self.send("delete", key, request, SMALL_REQUEST)
            .await
            .map(|_| ())
    }

    async fn send(
        &self,
        operation: &'static str,
        key: &str,
        request: Result<hyper::Request<BoxBody<Bytes, std::io::Error>>, hyper::http::Error>,
        timeout: Duration,
    ) -> Result<hyper::Response<hyper::body::Incoming>, RemoteError> {
        let request_error =
            |source: Box<dyn std::error::Error + Send + Sync>| RemoteError::Request {
                operation,
                key: key.to_owned(),
                remote: self.shown.clone(),
                source,
            };
        let request = request.map_err(|error| request_error(Box::new(error)))?;
        let response = tokio::time::timeout(timeout, self.http.request(request))
            .await
            .map_err(|_| RemoteError::Timeout {
                operation,
                key: key.to_owned(),
                remote: self.shown.clone(),
                timeout,
            })?
            .map_err(|error| request_error(Box::new(error)))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = self
            .read_body(operation, key, response)
            .await
            .unwrap_or_default();
        Err(RemoteError::Status {
            operation,
            key: key.to_owned(),
            remote: self.shown.clone(),
            status: status.as_u16(),
            code: error_code(&body),
        })
    }

    async fn read_body(
        &self,
        operation: &'static str,
        key: &str,
        response: hyper::Response<hyper::body::Incoming>,
    ) -> Result<Bytes, RemoteError> {
        let collect =
            http_body_util::Limited::new(response.into_body(), 16 * 1024 * 1024).collect();
        tokio::time::timeout(SMALL_REQUEST, collect)
            .await
            .map_err(|_| RemoteError::Timeout {
                operation,
                key: key.to_owned(),
                remote: self.shown.clone(),
                timeout: SMALL_REQUEST,
            })?
            .map(|collected| collected.to_bytes())
            .map_err(|source| RemoteError::Request {
                operation,
                key: key.to_owned(),
                remote: self.shown.clone(),
                source,
            })
    }
}

/// A PUT of `length` bytes streamed from `reader`.
fn put_body(
    url: &str,
    reader: impl tokio::io::AsyncRead + Send + Sync + 'static,
    length: u64,
) -> Result<hyper::Request<BoxBody<Bytes, std::io::Error>>, hyper::http::Error> {
    let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024)
        .map(|chunk| chunk.map(Frame::data));
    hyper::Request::put(url)
        .header(hyper::header::CONTENT_LENGTH, length)
        .header(hyper::header::CONTENT_TYPE, "application/octet-stream")
        .body(BoxBody::new(StreamBody::new(stream)))
}

fn empty() -> BoxBody<Bytes, std::io::Error> {
    BoxBody::new(Empty::new().map_err(|never| match never {}))
}

fn get(url: &str) -> Result<hyper::Request<BoxBody<Bytes, std::io::Error>>, hyper::http::Error> {
    hyper::Request::get(url).body(empty())
}

/// The `<Code>` of an S3 error body: nothing else of it is quoted (AWS echoes the access key id
/// and the string to sign in some error bodies).
fn error_code(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let start = text.find("<Code>")? + "<Code>".len();
    let end = start + text[start..].find("</Code>")?;
    let code = &text[start..end];
    (code.len() <= 64 && code.bytes().all(|byte| byte.is_ascii_alphanumeric()))
        .then(|| code.to_owned())
}

/// The remote of a release's `[backup]`, or an error when it has none or it cannot be built.
pub fn require(release: &crate::deploy::spec::LoadedRelease) -> Result<Remote, RemoteError> {
    let config = release
        .resolved
        .config
        .backup
        .remote
        .as_ref()
        .ok_or(RemoteError::NoRemote)?;
    Remote::new(config, &release.resolved.environment, &release.secrets)
}

/// The remote a backup taken for `release` is copied to: `None` when `[backup]` has none; when it
/// cannot be built (a credential not set), `None` and a `backup.upload_failed` event (an alert).
pub fn of_release(engine: &Engine, release: &crate::deploy::spec::LoadedRelease) -> Option<Remote> {
    match require(release) {
        Ok(remote) => Some(remote),
        Err(RemoteError::NoRemote) => None,
        Err(error) => {
            engine.record(NewEvent {
                app: Some(release.resolved.config.app.name.clone()),
                environment: Some(release.resolved.environment.clone()),
                deployment_id: None,
                kind: "backup.upload_failed".to_owned(),
                message: format!(
                    "backups are not copied off the host: {}",
                    crate::report::chain(&error)
                ),
                data_json: "{}".to_owned(),
            });
            None
        }
    }
}

/// The agent's backup key: opened from the store, or made and kept on first use.
pub fn backup_key(engine: &Engine) -> Result<BackupKey, RemoteError> {
    if let Some(sealed) = engine.store.sealed_backup_key()? {
        return Ok(BackupKey::open(&engine.master_key, &sealed)?);
    }
    let key = BackupKey::generate(&engine.master_key);
    let kept = engine
        .store
        .keep_sealed_backup_key(key.sealed(), now_ms())?;
    Ok(BackupKey::open(&engine.master_key, &kept)?)
}

/// The object name of a backup: `ID.EXT.sealed`.
pub fn object_name(record: &BackupRecord) -> String {
    let extension = std::path::Path::new(&record.path)
        .extension()
        .and_then(|extension| extension.to_str())
        .unwrap_or("bin");
    format!("{}.{extension}.{SEALED_EXTENSION}", record.id)
}

/// The backup id of an object key (`…/ID.EXT.sealed`), if it is one.
pub fn backup_id(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let stem = name.strip_suffix(&format!(".{SEALED_EXTENSION}"))?;
    stem.split('.').next().filter(|id| !id.is_empty())
}

fn header(record: &BackupRecord) -> Header {
    Header {
        id: record.id.clone(),
        kind: record.kind.as_str().to_owned(),
        app: record.app.clone(),
        environment: record.environment.clone(),
        release: record.release.map(|release| release.get()),
        reason: record.reason.as_str().to_owned(),
        target: record.target.clone(),
        size: record.size,
        sha256: record.sha256.clone(),
        created_at: record.created_at,
    }
}

/// A scratch folder for sealed files in the state directory.
fn outgoing_dir(engine: &Engine) -> Result<PathBuf, RemoteError> {
    let dir = engine.paths.state_dir.join("backups").join(".remote");
    std::fs::create_dir_all(&dir).map_err(|source| RemoteError::File {
        operation: "create",
        path: dir.clone(),
        source,
    })?;
    Ok(dir)
}

/// Seals `record`'s file, uploads it, records where, and prunes the remote to `keep`.
pub async fn upload_once(
    engine: &Arc<Engine>,
    remote: &Remote,
    record: &BackupRecord,
    keep: usize,
) -> Result<RemoteCopy, RemoteError> {
    let key = backup_key(engine)?;
    let sealed_path = outgoing_dir(engine)?.join(object_name(record));
    let (header, from, to) = (
        header(record),
        PathBuf::from(&record.path),
        sealed_path.clone(),
    );
    let (size, sha256) =
        tokio::task::spawn_blocking(move || sealed::seal_file(&key, &header, &from, &to))
            .await
            .map_err(RemoteError::Task)??;
    let object = format!(
        "{}{}",
        remote.folder(&record.app, &record.environment),
        object_name(record)
    );
    let uploaded = remote.put_file(&object, &sealed_path).await;
    let _ = std::fs::remove_file(&sealed_path);
    uploaded?;
    let copy = RemoteCopy {
        key: object,
        sha256,
        size,
        uploaded_at: now_ms(),
    };
    engine.store.set_backup_remote(&record.id, &copy)?;
    prune(remote, &record.app, &record.environment, keep).await?;
    Ok(copy)
}

/// Removes the oldest sealed backups of (app, env) on the remote beyond `keep`. Backup ids start
/// with their creation time in milliseconds, so key order is age order.
pub async fn prune(
    remote: &Remote,
    app: &str,
    environment: &str,
    keep: usize,
) -> Result<usize, RemoteError> {
    let objects = remote.list(&remote.folder(app, environment)).await?;
    let mut backups: Vec<&RemoteObject> = objects
        .iter()
        .filter(|object| backup_id(&object.key).is_some())
        .collect();
    backups.sort_by(|a, b| b.key.cmp(&a.key));
    let mut removed = 0;
    for old in backups.into_iter().skip(keep.max(1)) {
        remote.delete(&old.key).await?;
        removed += 1;
    }
    Ok(removed)
}

/// The backups whose upload this process started (done, failed or running). std Mutex: inserts
/// and lookups only, no await inside.
static STARTED: std::sync::Mutex<Option<std::collections::HashSet<String>>> =
    std::sync::Mutex::new(None);

fn start_once(id: &str) -> bool {
    let mut started = STARTED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    started
        .get_or_insert_with(Default::default)
        .insert(id.to_owned())
}

/// Uploads the backups of (app, env) that have no remote copy and whose upload this process never
/// started: those whose upload a restart or a crash cut short. Each gets one more round of
/// retries per life of the agent, so a remote that stays down alerts once per backup, not per pass.
pub fn upload_pending(engine: &Arc<Engine>, remote: &Remote, app: &str, env: &str, keep: usize) {
    let Ok(backups) = engine.store.backups(app, env) else {
        return;
    };
    for record in backups.into_iter().take(keep.max(1)) {
        let uploaded = engine
            .store
            .backup_remote(&record.id)
            .ok()
            .flatten()
            .is_some();
        if uploaded || !Path::new(&record.path).exists() {
            continue;
        }
        spawn_upload(engine, remote.clone(), record, keep);
    }
}

/// Uploads `record` in the background after it was taken: retried with backoff; the outcome is an
/// event (`backup.uploaded`, or `backup.upload_failed`, which alerts). At most once per backup per
/// life of the agent.
pub fn spawn_upload(engine: &Arc<Engine>, remote: Remote, record: BackupRecord, keep: usize) {
    if !start_once(&record.id) {
        return;
    }
    let engine = engine.clone();
    tokio::spawn(async move {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let outcome = loop {
            match upload_once(&engine, &remote, &record, keep).await {
                Ok(copy) => break Ok(copy),
                Err(error) if attempt >= UPLOAD_ATTEMPTS => break Err(error),
                Err(error) => {
                    tracing::warn!(message = "Backup upload failed; retrying.", backup = %record.id, attempt, error = %crate::report::chain(&error));
                    tokio::time::sleep(backoff).await;
                    backoff *= 2;
                    attempt += 1;
                }
            }
        };
        let (kind, message) = match outcome {
            Ok(copy) => (
                "backup.uploaded",
                format!(
                    "backup {} uploaded to {} as `{}` ({} bytes encrypted, sha256 {})",
                    record.id,
                    remote.shown(),
                    copy.key,
                    copy.size,
                    copy.sha256
                ),
            ),
            Err(error) => (
                "backup.upload_failed",
                format!(
                    "backup {} was not uploaded to {} after {attempt} attempts: {}",
                    record.id,
                    remote.shown(),
                    crate::report::chain(&error)
                ),
            ),
        };
        engine.record(NewEvent {
            app: Some(record.app.clone()),
            environment: Some(record.environment.clone()),
            deployment_id: None,
            kind: kind.to_owned(),
            message,
            data_json: "{}".to_owned(),
        });
    });
}

/// Downloads the sealed backup `key` and opens it into `to`; returns its header (the plaintext's
/// sha256 is checked against it).
pub async fn fetch(
    engine: &Arc<Engine>,
    remote: &Remote,
    key: &str,
    to: &Path,
) -> Result<Header, RemoteError> {
    let sealed_path = outgoing_dir(engine)?.join(format!("fetch-{}", super::random_suffix()));
    let fetched = remote.get_file(key, &sealed_path).await;
    let opened = match fetched {
        Ok(()) => {
            let (engine, from, to) = (engine.clone(), sealed_path.clone(), to.to_owned());
            tokio::task::spawn_blocking(move || sealed::open_file(&engine.master_key, &from, &to))
                .await
                .map_err(RemoteError::Task)
                .and_then(|opened| opened.map_err(RemoteError::from))
        }
        Err(error) => Err(error),
    };
    let _ = std::fs::remove_file(&sealed_path);
    opened
}

/// The object key of backup `id` of (app, env) on the remote.
pub async fn find(
    remote: &Remote,
    app: &str,
    environment: &str,
    id: &str,
) -> Result<String, RemoteError> {
    remote
        .list(&remote.folder(app, environment))
        .await?
        .into_iter()
        .find(|object| backup_id(&object.key) == Some(id))
        .map(|object| object.key)
        .ok_or_else(|| RemoteError::NotOnRemote {
            id: id.to_owned(),
            remote: remote.shown().to_owned(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names_give_back_their_backup_id() {
        assert_eq!(
            backup_id("db/shop/production/b-17-ab12.sqlite.sealed"),
            Some("b-17-ab12")
        );
        assert_eq!(backup_id("b-17-ab12.dump.sealed"), Some("b-17-ab12"));
        assert_eq!(backup_id("db/shop/production/notes.txt"), None);
        assert_eq!(backup_id("db/shop/production/.sealed"), None);
    }

    #[test]
    fn only_the_code_of_an_error_body_is_quoted() {
        let body = b"<Error><Code>SignatureDoesNotMatch</Code><AWSAccessKeyId>AKIACANARY</AWSAccessKeyId></Error>";
        assert_eq!(error_code(body).as_deref(), Some("SignatureDoesNotMatch"));
        assert_eq!(error_code(b"<Code>a b</Code>"), None);
        assert_eq!(error_code(b"not xml"), None);
    }
}
