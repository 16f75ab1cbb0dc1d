//! The one place API errors become answers: `{ "error": { "code", "message" } }` with a status.
//!
//! Internal errors are logged here with their whole chain of causes, and answered with that chain
//! (the cause from the OS or SQLite, such as "database or disk is full"), so the person at the CLI
//! knows what went wrong without reading the agent's log. Answers that axum makes itself (an unknown
//! route, a wrong method, a body too large, a rejected extractor) pass through [`envelope`], so every
//! error of the API has the same shape.

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use client::wire::{ErrorBody, ErrorDetail};
use serde::de::DeserializeOwned;

use crate::api::input::InputError;
use crate::artifact::ArtifactError;
use crate::backup::{BackupNowError, RestoreLiveError};
use crate::deploy::start::StartError;

/// What went wrong, as the API answers it. The kind decides the status; no handler picks one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// 400: the request cannot be read (malformed JSON, query or path).
    BadRequest,
    /// 401: no token, or one the agent does not know.
    Unauthorized,
    /// 403: the token may not do this.
    Forbidden,
    /// 404
    NotFound,
    /// 405
    MethodNotAllowed,
    /// 408: the client was too slow.
    Timeout,
    /// 409: the request is fine but the state of things refuses it.
    Conflict,
    /// 413
    TooLarge,
    /// 415
    UnsupportedMediaType,
    /// 422: the request was read but a value in it is refused.
    Invalid,
    /// 500: the agent failed; the message carries the chain of causes.
    Internal,
    /// 503: the agent cannot do it now (shutting down, the proxy did not take over).
    Unavailable,
    /// 507: the agent's disk is full.
    InsufficientStorage,
    /// An answer axum or hyper made with a status of its own (wrapped by [`envelope`]).
    Other(StatusCode),
}

impl Kind {
    pub fn status(self) -> StatusCode {
        match self {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::Unauthorized => StatusCode::UNAUTHORIZED,
            Kind::Forbidden => StatusCode::FORBIDDEN,
            Kind::NotFound => StatusCode::NOT_FOUND,
            Kind::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Kind::Timeout => StatusCode::REQUEST_TIMEOUT,
            Kind::Conflict => StatusCode::CONFLICT,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Kind::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Kind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Kind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Kind::Other(status) => status,
        }
    }

    /// The kind of an answer that has only a status (axum's own, an extractor's rejection).
    pub fn of_status(status: StatusCode) -> Kind {
        [
            Kind::BadRequest,
            Kind::Unauthorized,
            Kind::Forbidden,
            Kind::NotFound,
            Kind::MethodNotAllowed,
            Kind::Timeout,
            Kind::Conflict,
            Kind::TooLarge,
            Kind::UnsupportedMediaType,
            Kind::Invalid,
            Kind::Internal,
            Kind::Unavailable,
            Kind::InsufficientStorage,
        ]
        .into_iter()
        .find(|kind| kind.status() == status)
        .unwrap_or(Kind::Other(status))
    }
}

/// What a handler answers: a JSON body, or an error in the envelope.
pub type ApiResult<T> = Result<Json<T>, ApiError>;

#[derive(Debug)]
pub struct ApiError {
    pub kind: Kind,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: Kind, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            code,
            message: message.into(),
        }
    }

    /// The status this error is answered with (its kind's).
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            Kind::Unauthorized,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden(needed: &str, role: &str) -> Self {
        ApiError::new(
            Kind::Forbidden,
            "forbidden",
            format!("this needs role `{needed}`; the token has `{role}`"),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(Kind::NotFound, "not_found", what)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(Kind::BadRequest, "bad_request", message)
    }

    /// An answer with only a status and a message (see [`envelope`]), its code the status's.
    pub fn of_status(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError::new(Kind::of_status(status), code_for(status), message)
    }

    /// An extractor's rejection (a malformed body, path or query), with the code of its status.
    pub fn from_rejection(rejection: impl IntoResponse + std::fmt::Display) -> Self {
        let message = rejection.to_string();
        let status = rejection.into_response().status();
        ApiError::of_status(status, message)
    }

    pub fn internal(error: impl std::error::Error + 'static) -> Self {
        let error = crate::report::chain(&error);
        tracing::error!(message = "Internal error in the API.", %error);
        ApiError::new(
            Kind::Internal,
            "internal",
            format!("internal error: {error}"),
        )
    }
}

/// A JSON request body. A body that is not JSON, has a wrong type or misses a field, or is too
/// large is refused with an [`ApiError`] (so in the envelope), like every other error.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(ApiError::from(rejection)),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let message = rejection.body_text();
        match rejection {
            JsonRejection::JsonDataError(_) => {
                ApiError::new(Kind::Invalid, "invalid_body", message)
            }
            JsonRejection::JsonSyntaxError(_) => ApiError::bad_request(message),
            JsonRejection::MissingJsonContentType(_) => ApiError::new(
                Kind::UnsupportedMediaType,
                "unsupported_media_type",
                message,
            ),
            // Too large (413) or a body that could not be read: its own status.
            other => ApiError::from_rejection(other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (status, Json(body)).into_response()
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        if error.is_too_large() {
            ApiError::new(Kind::TooLarge, "too_large", error.to_string())
        } else {
            ApiError::new(Kind::Invalid, "invalid_input", error.to_string())
        }
    }
}

/// The code of an error answer with `status`, for answers that carry none of their own.
pub fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "timeout",
        StatusCode::CONFLICT => "conflict",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "invalid_body",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        status if status.is_server_error() => "internal",
        _ => "error",
    }
}

/// Largest body of an answer that `envelope` reads to wrap it (axum's rejections are one line).
const MAX_WRAPPED_BODY: usize = 16 * 1024;

/// A layer around the whole API: an error answer that is not already JSON (axum's own 404, 405,
/// 413 and extractor rejections) becomes the envelope, its text the message.
pub async fn envelope(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path: String = request.uri().path().chars().take(200).collect();
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|value| value.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = match axum::body::to_bytes(response.into_body(), MAX_WRAPPED_BODY).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_owned(),
        Err(_) => String::new(),
    };
    let message = match (status, text.is_empty()) {
        (StatusCode::NOT_FOUND, true) => format!("no route `{method} {path}`"),
        (StatusCode::METHOD_NOT_ALLOWED, true) => match &allow {
            Some(allow) => format!(
                "`{path}` does not take `{method}`; it takes {}",
                allow.to_str().unwrap_or("other methods")
            ),
            None => format!("`{path}` does not take `{method}`"),
        },
        (_, true) => status.canonical_reason().unwrap_or("error").to_lowercase(),
        (_, false) => text,
    };
    let mut answer = ApiError::of_status(status, message).into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// The answer to a path no route matches (after authentication: see `router.rs`).
pub async fn no_route(request: Request) -> ApiError {
    let path: String = request.uri().path().chars().take(200).collect();
    ApiError::not_found(format!("no route `{} {path}`", request.method()))
}

impl From<StartError> for ApiError {
    fn from(error: StartError) -> Self {
        let (kind, code) = match &error {
            StartError::InvalidManifest(_) => (Kind::Invalid, "invalid_manifest"),
            StartError::UnknownEnvironment(_) => (Kind::Invalid, "unknown_environment"),
            StartError::MissingConfig { .. } => (Kind::Invalid, "missing_config"),
            StartError::AppMismatch { .. } => (Kind::Invalid, "app_mismatch"),
            StartError::UnknownArtifact(_) => (Kind::Invalid, "unknown_artifact"),
            StartError::Locked { .. } => (Kind::Conflict, "locked"),
            StartError::RouteConflict(_) => (Kind::Conflict, "route_conflict"),
            StartError::NothingToRollBack(_) => (Kind::Conflict, "nothing_to_roll_back"),
            StartError::Preview(_) => (Kind::Invalid, "invalid_preview"),
            StartError::PreviewConflict(_) => (Kind::Conflict, "preview_conflict"),
            StartError::ShuttingDown => (Kind::Unavailable, "shutting_down"),
            StartError::Store(_) => return ApiError::internal(error),
        };
        ApiError::new(kind, code, error.to_string())
    }
}

impl From<ArtifactError> for ApiError {
    fn from(error: ArtifactError) -> Self {
        let (kind, code) = match &error {
            ArtifactError::InvalidDigest { .. } | ArtifactError::DigestMismatch { .. } => {
                (Kind::BadRequest, "bad_artifact")
            }
            ArtifactError::Receive { .. } => (Kind::BadRequest, "upload_broken"),
            ArtifactError::TooLarge { .. }
            | ArtifactError::UnpacksTooLarge { .. }
            | ArtifactError::ExpandsTooMuch { .. } => (Kind::TooLarge, "artifact_too_large"),
            ArtifactError::UnsafeEntry { .. } => (Kind::Invalid, "unsafe_artifact"),
            ArtifactError::NotFound { .. } => (Kind::NotFound, "not_found"),
            // The agent's disk, not the request: 5xx, so the CLI exits 1 (a runtime failure).
            ArtifactError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                (Kind::InsufficientStorage, "insufficient_storage")
            }
            ArtifactError::DestinationExists { .. } | ArtifactError::Io { .. } => {
                return ApiError::internal(error);
            }
        };
        ApiError::new(kind, code, crate::report::chain(&error))
    }
}

impl From<BackupNowError> for ApiError {
    fn from(error: BackupNowError) -> Self {
        ApiError::new(
            Kind::Conflict,
            "backup_failed",
            crate::report::chain(&error),
        )
    }
}

impl From<RestoreLiveError> for ApiError {
    fn from(error: RestoreLiveError) -> Self {
        ApiError::new(
            Kind::Conflict,
            "restore_failed",
            crate::report::chain(&error),
        )
    }
}

#[cfg(test)]
mod tests;
