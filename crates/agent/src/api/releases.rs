//! Releases of an app environment.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use client::wire::ReleaseView;

use crate::api::error::{ApiError, ApiResult};
use crate::api::views;
use crate::engine::Engine;

pub async fn releases(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<ReleaseView>> {
    let current = engine
        .store
        .current(&app, &env)
        .map_err(ApiError::internal)?;
    let releases = engine
        .store
        .releases(&app, &env)
        .map_err(ApiError::internal)?;
    Ok(Json(
        releases
            .iter()
            .map(|release| views::release_view(release, current))
            .collect(),
    ))
}
