//! The one place API errors become answers: `{ "error": { "code", "message" } }` with a status.
//!
//! Internal errors are logged here with their whole chain of causes, and answered with that chain
//! (the cause from the OS or SQLite, such as "database or disk is full"), so the person at the CLI
//! knows what went wrong without reading the agent's log. Answers that axum makes itself (an unknown
//! route, a wrong method, a body too large, a rejected extractor) pass through [`envelope`], so every
//! error of the API has the same shape.

use axum::Json;
use axum::extract::Request;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use client::wire::{ErrorBody, ErrorDetail};

use crate::api::input::InputError;
use crate::artifact::ArtifactError;
use crate::deploy::start::StartError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    pub fn unauthorized() -> Self {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid bearer token is required",
        )
    }

    pub fn forbidden(needed: &str, role: &str) -> Self {
        ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this needs role `{needed}`; the token has `{role}`"),
        )
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", what)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// An extractor's rejection (a malformed body, path or query), with the code of its status.
    pub fn from_rejection(rejection: impl IntoResponse + std::fmt::Display) -> Self {
        let message = rejection.to_string();
        let status = rejection.into_response().status();
        ApiError::new(status, code_for(status), message)
    }

    pub fn internal(error: impl std::error::Error + 'static) -> Self {
        let error = crate::report::chain(&error);
        tracing::error!(message = "Internal error in the API.", %error);
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("internal error: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<InputError> for ApiError {
    fn from(error: InputError) -> Self {
        if error.is_too_large() {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                error.to_string(),
            )
        } else {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_input",
                error.to_string(),
            )
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
    let mut answer = ApiError::new(status, code_for(status), message).into_response();
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
        let (status, code) = match &error {
            StartError::InvalidManifest(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_manifest")
            }
            StartError::UnknownEnvironment(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_environment")
            }
            StartError::MissingConfig { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "missing_config")
            }
            StartError::AppMismatch { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "app_mismatch"),
            StartError::UnknownArtifact(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unknown_artifact")
            }
            StartError::Locked { .. } => (StatusCode::CONFLICT, "locked"),
            StartError::RouteConflict(_) => (StatusCode::CONFLICT, "route_conflict"),
            StartError::NothingToRollBack(_) => (StatusCode::CONFLICT, "nothing_to_roll_back"),
            StartError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            StartError::Store(_) => return ApiError::internal(error),
        };
        ApiError::new(status, code, error.to_string())
    }
}

impl From<ArtifactError> for ApiError {
    fn from(error: ArtifactError) -> Self {
        let (status, code) = match &error {
            ArtifactError::InvalidDigest { .. } | ArtifactError::DigestMismatch { .. } => {
                (StatusCode::BAD_REQUEST, "bad_artifact")
            }
            ArtifactError::TooLarge { .. }
            | ArtifactError::UnpacksTooLarge { .. }
            | ArtifactError::ExpandsTooMuch { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, "artifact_too_large")
            }
            ArtifactError::UnsafeEntry { .. } => {
                (StatusCode::UNPROCESSABLE_ENTITY, "unsafe_artifact")
            }
            ArtifactError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            // The agent's disk, not the request: 5xx, so the CLI exits 1 (a runtime failure).
            ArtifactError::Io { source, .. }
                if source.kind() == std::io::ErrorKind::StorageFull =>
            {
                (StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage")
            }
            ArtifactError::DestinationExists { .. } | ArtifactError::Io { .. } => {
                return ApiError::internal(error);
            }
        };
        ApiError::new(status, code, crate::report::chain(&error))
    }
}

#[cfg(test)]
mod tests;
