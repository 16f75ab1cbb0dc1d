//! Artifacts: content-addressed uploads.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;

use crate::api::error::ApiError;
use crate::engine::{Engine, now_ms};

pub async fn artifact_exists(
    State(engine): State<Arc<Engine>>,
    Path(digest): Path<String>,
) -> Result<(), ApiError> {
    if engine.artifacts.has(&digest) {
        Ok(())
    } else {
        Err(ApiError::not_found(format!("no artifact `{digest}`")))
    }
}

pub async fn upload_artifact(
    State(engine): State<Arc<Engine>>,
    Path(digest): Path<String>,
    body: Bytes,
) -> Result<StatusCode, ApiError> {
    let size = body.len();
    let artifacts = engine.artifacts.clone();
    let stored_digest = digest.clone();
    tokio::task::spawn_blocking(move || artifacts.put(&stored_digest, &body))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let _ = engine.store.record_artifact(&digest, size as u64, now_ms());
    Ok(StatusCode::CREATED)
}
