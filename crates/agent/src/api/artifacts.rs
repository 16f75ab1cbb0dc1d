//! Artifacts: content-addressed uploads.

use std::sync::Arc;

use axum::body::Body;
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

/// Streams the body into the artifact store (never held in memory); the store stops an upload
/// as soon as it passes the agent's limit (`ROLLWAY_ARTIFACT_MAX_SIZE`) and refuses bytes whose
/// digest is not the path's.
pub async fn upload_artifact(
    State(engine): State<Arc<Engine>>,
    Path(digest): Path<String>,
    body: Body,
) -> Result<StatusCode, ApiError> {
    use futures_util::TryStreamExt as _;
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(stream));
    let artifacts = engine.artifacts.clone();
    let stored_digest = digest.clone();
    let size = tokio::task::spawn_blocking(move || artifacts.put_from(&stored_digest, reader))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::from)?;
    let _ = engine.store.record_artifact(&digest, size, now_ms());
    Ok(StatusCode::CREATED)
}
