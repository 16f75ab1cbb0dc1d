//! The one place API errors become answers: `{ "error": { "code", "message" } }` with a status.
//!
//! Internal errors are logged here with their whole chain of causes, and answered with that chain
//! (the cause from the OS or SQLite, such as "database or disk is full"), so the person at the CLI
//! knows what went wrong without reading the agent's log.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use client::wire::{ErrorBody, ErrorDetail};

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
