//! The registry's requests: `/v2/` and below, as Docker's engine pushes and pulls. One handler
//! parses the path (a repository name may hold slashes), checks the credential, and dispatches;
//! every error is the distribution spec's JSON (`{"errors":[{"code","message"}]}`).
//!
//! It does not authenticate with the API's bearer tokens, and the API's envelope never wraps it.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use base64::Engine as _;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::storage::{Digest, RepositoryName, StorageError, is_tag};
use crate::engine::Engine;
use crate::store::RegistryAccess;

/// The `/v2` routes, to merge beside the API's.
pub fn router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/v2", any(handle))
        .route("/v2/", any(handle))
        .route("/v2/{*path}", any(handle))
        .with_state(engine)
}

/// An error as the distribution spec answers it.
#[derive(Debug)]
pub struct OciError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl OciError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> OciError {
        OciError {
            status,
            code,
            message: message.into(),
        }
    }

    fn from_storage(error: &StorageError) -> OciError {
        let message = crate::report::chain(error);
        match error {
            StorageError::DigestMismatch { .. } => {
                OciError::new(StatusCode::BAD_REQUEST, "DIGEST_INVALID", message)
            }
            StorageError::BlobUnknown(_) => {
                OciError::new(StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN", message)
            }
            StorageError::UploadUnknown(_) => {
                OciError::new(StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN", message)
            }
            StorageError::Io { .. } if error.is_disk_full() => OciError::new(
                StatusCode::INSUFFICIENT_STORAGE,
                "BLOB_UPLOAD_INVALID",
                format!(
                    "{message}: the agent's disk is full; free space on it (old images go with `rollway` releases no longer kept) and push again"
                ),
            ),
            StorageError::Io { .. } => {
                tracing::error!(message = "Registry storage failed.", error = %message);
                OciError::new(StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN", message)
            }
        }
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message }]
        });
        let mut response = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"rollway\""),
            );
        }
        response
    }
}

/// What a path under `/v2/` names.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    Base,
    Blob(RepositoryName, String),
    UploadStart(RepositoryName),
    Upload(RepositoryName, String),
    Manifest(RepositoryName, String),
    Tags(RepositoryName),
}

fn parse_target(path: &str) -> Result<Target, OciError> {
    let rest = path.trim_start_matches("/v2").trim_start_matches('/');
    if rest.is_empty() {
        return Ok(Target::Base);
    }
    let name = |text: &str| {
        RepositoryName::parse(text).ok_or_else(|| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "NAME_INVALID",
                format!("`{text}` is not a repository name: lowercase letters and digits in components joined by `/`, separated by `.`, `_` or `-`, at most 255 characters"),
            )
        })
    };
    if let Some(repository) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return Ok(Target::UploadStart(name(repository)?));
    }
    if let Some((head, last)) = rest.rsplit_once('/') {
        if let Some(repository) = head.strip_suffix("/blobs/uploads") {
            return Ok(Target::Upload(name(repository)?, last.to_owned()));
        }
        if let Some(repository) = head.strip_suffix("/blobs") {
            return Ok(Target::Blob(name(repository)?, last.to_owned()));
        }
        if let Some(repository) = head.strip_suffix("/manifests") {
            return Ok(Target::Manifest(name(repository)?, last.to_owned()));
        }
        if let (Some(repository), "list") = (head.strip_suffix("/tags"), last) {
            return Ok(Target::Tags(name(repository)?));
        }
    }
    Err(OciError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        format!("`{path}` is not a registry route"),
    ))
}

/// The access the request's Basic credential gives.
fn authenticate(engine: &Engine, headers: &HeaderMap) -> Result<RegistryAccess, OciError> {
    let unauthorized = || {
        OciError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "the agent's registry needs its credential (HTTP Basic)",
        )
    };
    let encoded = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Basic "))
        .ok_or_else(unauthorized)?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .map(zeroize::Zeroizing::new)
        .ok_or_else(unauthorized)?;
    let (username, password) = decoded.split_once(':').ok_or_else(unauthorized)?;
    engine
        .registry
        .access(username, password)
        .ok_or_else(unauthorized)
}

async fn handle(State(engine): State<Arc<Engine>>, request: Request) -> Response {
    let mut response = match dispatch(&engine, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static("registry/2.0"),
    );
    response
}

async fn dispatch(engine: &Arc<Engine>, request: Request) -> Result<Response, OciError> {
    let access = authenticate(engine, request.headers())?;
    let method = request.method().clone();
    let target = parse_target(request.uri().path())?;
    let reads = method == Method::GET || method == Method::HEAD;
    if !reads && access != RegistryAccess::Push {
        return Err(OciError::new(
            StatusCode::FORBIDDEN,
            "DENIED",
            "this credential of the agent's registry may pull only",
        ));
    }
    let query: Vec<(String, String)> = request
        .uri()
        .query()
        .and_then(|query| serde_urlencoded::from_str(query).ok())
        .unwrap_or_default();
    let param = |name: &str| {
        query
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone())
    };
    let head = method == Method::HEAD;
    match (method, target) {
        (Method::GET | Method::HEAD, Target::Base) => {
            Ok((StatusCode::OK, axum::Json(serde_json::json!({}))).into_response())
        }
        (Method::GET | Method::HEAD, Target::Blob(_, digest)) => {
            get_blob(engine, &digest, head).await
        }
        (Method::POST, Target::UploadStart(name)) => match (param("digest"), param("mount")) {
            (Some(digest), _) => {
                let id = start_upload(engine)?;
                let body = request.into_body();
                finish_upload(engine, &name, &id, &digest, body).await
            }
            (None, Some(mount)) if existing_blob(engine, &mount).is_some() => {
                Ok(created(&name, &mount))
            }
            _ => {
                let id = start_upload(engine)?;
                Ok(upload_accepted(&name, &id, 0))
            }
        },
        (Method::PATCH, Target::Upload(name, id)) => {
            let (path, size) = upload(engine, &id)?;
            if let Some(range) = request.headers().get(header::CONTENT_RANGE) {
                let start = range
                    .to_str()
                    .ok()
                    .and_then(|range| range.trim_start_matches("bytes=").split('-').next())
                    .and_then(|start| start.trim().parse::<u64>().ok());
                if start != Some(size) {
                    return Err(OciError::new(
                        StatusCode::RANGE_NOT_SATISFIABLE,
                        "BLOB_UPLOAD_INVALID",
                        format!("the chunk must start at byte {size} of upload `{id}`"),
                    ));
                }
            }
            let size = append(engine, &id, &path, size, request.into_body()).await?;
            Ok(upload_accepted(&name, &id, size))
        }
        (Method::PUT, Target::Upload(name, id)) => {
            let digest = param("digest").ok_or_else(|| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    "DIGEST_INVALID",
                    "finishing an upload needs `?digest=sha256:...`",
                )
            })?;
            finish_upload(engine, &name, &id, &digest, request.into_body()).await
        }
        (Method::GET, Target::Upload(name, id)) => {
            let (_, size) = upload(engine, &id)?;
            let mut response = upload_accepted(&name, &id, size);
            *response.status_mut() = StatusCode::NO_CONTENT;
            Ok(response)
        }
        (Method::DELETE, Target::Upload(_, id)) => {
            upload(engine, &id)?;
            engine.registry.storage.cancel_upload(&id);
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Method::GET | Method::HEAD, Target::Manifest(name, reference)) => {
            let manifest = engine
                .registry
                .storage
                .manifest(&name, &reference)
                .ok_or_else(|| {
                    OciError::new(
                        StatusCode::NOT_FOUND,
                        "MANIFEST_UNKNOWN",
                        format!("`{}` has no manifest `{reference}`", name.as_str()),
                    )
                })?;
            let length = manifest.bytes.len();
            let body = if head {
                Body::empty()
            } else {
                Body::from(manifest.bytes)
            };
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, manifest.media_type)
                .header(header::CONTENT_LENGTH, length)
                .header("docker-content-digest", manifest.digest.to_string())
                .body(body)
                .unwrap_or_default())
        }
        (Method::PUT, Target::Manifest(name, reference)) => {
            put_manifest(engine, &name, &reference, request).await
        }
        (Method::GET, Target::Tags(name)) => Ok(axum::Json(serde_json::json!({
            "name": name.as_str(),
            "tags": engine.registry.storage.tags(&name),
        }))
        .into_response()),
        (method, _) => Err(OciError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            format!("the agent's registry does not take `{method}` here"),
        )),
    }
}

fn parse_digest(text: &str) -> Result<Digest, OciError> {
    Digest::parse(text).ok_or_else(|| {
        OciError::new(
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
            format!("`{text}` is not a digest: `sha256:` and 64 lowercase hex digits"),
        )
    })
}

fn existing_blob(engine: &Engine, digest: &str) -> Option<(std::path::PathBuf, u64)> {
    engine.registry.storage.blob(&Digest::parse(digest)?)
}

async fn get_blob(engine: &Engine, digest: &str, head: bool) -> Result<Response, OciError> {
    let digest = parse_digest(digest)?;
    let unknown = || {
        OciError::new(
            StatusCode::NOT_FOUND,
            "BLOB_UNKNOWN",
            format!("blob {digest} is not in the agent's registry"),
        )
    };
    let (path, size) = engine.registry.storage.blob(&digest).ok_or_else(unknown)?;
    let body = if head {
        Body::empty()
    } else {
        let file = tokio::fs::File::open(&path).await.map_err(|_| unknown())?;
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
            file,
            256 * 1024,
        ))
    };
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, size)
        .header("docker-content-digest", digest.to_string())
        .body(body)
        .unwrap_or_default())
}

fn start_upload(engine: &Engine) -> Result<String, OciError> {
    let registry = &engine.registry;
    registry
        .storage
        .start_upload(registry.limits.upload_idle, registry.limits.max_uploads)
        .map_err(|error| OciError::from_storage(&error))?
        .ok_or_else(|| {
            OciError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                format!(
                    "{} uploads are in progress on the agent's registry already; retry when one ends",
                    registry.limits.max_uploads
                ),
            )
        })
}

fn upload(engine: &Engine, id: &str) -> Result<(std::path::PathBuf, u64), OciError> {
    engine
        .registry
        .storage
        .upload(id)
        .map_err(|error| OciError::from_storage(&error))
}

/// Appends `body` to upload `id` (at `size` bytes so far); the upload's new size. Over the blob
/// limit, on a full disk or a broken body, the upload is removed.
async fn append(
    engine: &Engine,
    id: &str,
    path: &std::path::Path,
    mut size: u64,
    body: Body,
) -> Result<u64, OciError> {
    let max = engine.registry.limits.max_blob;
    let result: Result<u64, OciError> = async {
        let io_error = |source: std::io::Error| {
            OciError::from_storage(&StorageError::Io {
                action: "write the upload",
                path: path.to_owned(),
                source,
            })
        };
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(path)
            .await
            .map_err(io_error)?;
        let mut stream = body.into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|error| {
                OciError::new(
                    StatusCode::BAD_REQUEST,
                    "BLOB_UPLOAD_INVALID",
                    format!("the upload's body broke off: {error}"),
                )
            })?;
            size += chunk.len() as u64;
            if size > max {
                return Err(OciError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "SIZE_INVALID",
                    format!(
                        "a blob may be at most {max} bytes in the agent's registry (`{}`)",
                        super::MAX_BLOB_VAR
                    ),
                ));
            }
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        Ok(size)
    }
    .await;
    if result.is_err() {
        engine.registry.storage.cancel_upload(id);
    }
    result
}

async fn finish_upload(
    engine: &Arc<Engine>,
    name: &RepositoryName,
    id: &str,
    digest: &str,
    body: Body,
) -> Result<Response, OciError> {
    let expected = match parse_digest(digest) {
        Ok(expected) => expected,
        Err(error) => {
            engine.registry.storage.cancel_upload(id);
            return Err(error);
        }
    };
    let (path, size) = upload(engine, id)?;
    append(engine, id, &path, size, body).await?;
    let storage = engine.registry.storage.clone();
    let id = id.to_owned();
    let committed = {
        let expected = expected.clone();
        tokio::task::spawn_blocking(move || storage.finish_upload(&id, &expected)).await
    };
    match committed {
        Ok(Ok(_)) => Ok(created(name, &expected.to_string())),
        Ok(Err(error)) => Err(OciError::from_storage(&error)),
        Err(error) => Err(OciError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "UNKNOWN",
            format!("the upload's check failed: {error}"),
        )),
    }
}

fn created(name: &RepositoryName, digest: &str) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/blobs/{digest}", name.as_str()),
        )
        .header("docker-content-digest", digest)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn upload_accepted(name: &RepositoryName, id: &str, size: u64) -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(
            header::LOCATION,
            format!("/v2/{}/blobs/uploads/{id}", name.as_str()),
        )
        .header(header::RANGE, format!("0-{}", size.saturating_sub(1)))
        .header("docker-upload-uuid", id)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

async fn put_manifest(
    engine: &Arc<Engine>,
    name: &RepositoryName,
    reference: &str,
    request: Request,
) -> Result<Response, OciError> {
    let media_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| {
            OciError::new(
                StatusCode::BAD_REQUEST,
                "MANIFEST_INVALID",
                "a manifest needs its media type as Content-Type",
            )
        })?;
    let max = engine.registry.limits.max_manifest;
    let bytes = axum::body::to_bytes(request.into_body(), max)
        .await
        .map_err(|_| {
            OciError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "SIZE_INVALID",
                format!("a manifest may be at most {max} bytes"),
            )
        })?;
    if serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        return Err(OciError::new(
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
            "the manifest is not JSON",
        ));
    }
    let tag = match Digest::parse(reference) {
        Some(named) if named != Digest::of(&bytes) => {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "DIGEST_INVALID",
                format!(
                    "the manifest's digest is {}, not {named}",
                    Digest::of(&bytes)
                ),
            ));
        }
        Some(_) => None,
        None if is_tag(reference) => Some(reference),
        None => {
            return Err(OciError::new(
                StatusCode::BAD_REQUEST,
                "TAG_INVALID",
                format!(
                    "`{reference}` is neither a digest nor a tag (`[A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}`)"
                ),
            ));
        }
    };
    let references = super::manifest_references(&bytes);
    let digest = {
        let _guard = engine
            .registry
            .manifests
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        engine
            .registry
            .storage
            .put_manifest(name, tag, &media_type, &bytes, &references)
            .map_err(|error| OciError::from_storage(&error))?
    };
    Ok(Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            format!("/v2/{}/manifests/{digest}", name.as_str()),
        )
        .header("docker-content-digest", digest.to_string())
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_targets() {
        let name = |text: &str| RepositoryName::parse(text).expect("name");
        let cases = [
            ("/v2/", Target::Base),
            ("/v2", Target::Base),
            (
                "/v2/rollway/shop-prod-web/blobs/uploads/",
                Target::UploadStart(name("rollway/shop-prod-web")),
            ),
            (
                "/v2/a/blobs/uploads/abc",
                Target::Upload(name("a"), "abc".into()),
            ),
            (
                "/v2/a/b/blobs/sha256:00",
                Target::Blob(name("a/b"), "sha256:00".into()),
            ),
            (
                "/v2/a/manifests/r1",
                Target::Manifest(name("a"), "r1".into()),
            ),
            ("/v2/a/tags/list", Target::Tags(name("a"))),
            // A repository may be called like a route's word.
            (
                "/v2/blobs/manifests/r1",
                Target::Manifest(name("blobs"), "r1".into()),
            ),
        ];
        for (path, target) in cases {
            assert_eq!(parse_target(path).expect(path), target, "{path}");
        }
        for bad in [
            "/v2/A/manifests/x",
            "/v2/../x/manifests/y",
            "/v2/a//b/manifests/y",
            "/v2/_x/manifests/y",
        ] {
            assert_eq!(
                parse_target(bad).expect_err(bad).code,
                "NAME_INVALID",
                "{bad}"
            );
        }
        assert_eq!(
            parse_target("/v2/a/nothing").expect_err("route").code,
            "NOT_FOUND"
        );
    }
}
