//! Off-host backups and restore drills: the remote's sealed backups of an environment, and
//! `verify` (a drill into a scratch database; the live one is never touched).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use client::wire::{RemoteBackupView, TableRows, VerifyRequest, VerifyView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson, ApiResult};
use crate::backup::remote::{self, RemoteError};
use crate::backup::verify::{self, VerifyError};
use crate::engine::Engine;

/// The sealed backups of (app, env) on the current release's remote, newest first.
pub async fn remote_backups(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<RemoteBackupView>> {
    let release = crate::backup::live_release(&engine, &app, &env).map_err(VerifyError::from)?;
    let remote = remote::require(&release)?;
    let objects = remote.list(&remote.folder(&app, &env)).await?;
    let local = engine
        .store
        .backups(&app, &env)
        .map_err(ApiError::internal)?;
    let mut views: Vec<RemoteBackupView> = objects
        .into_iter()
        .filter_map(|object| {
            let id = remote::backup_id(&object.key)?.to_owned();
            let local = local
                .iter()
                .any(|record| record.id == id && std::path::Path::new(&record.path).exists());
            Some(RemoteBackupView {
                id,
                key: object.key,
                size: object.size,
                last_modified: object.last_modified,
                local,
            })
        })
        .collect();
    views.sort_by(|a, b| b.id.cmp(&a.id));
    Ok(Json(views))
}

/// A restore drill of a backup (or the newest): checks, row counts, the app's own check.
pub async fn verify_backup(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<VerifyRequest>,
) -> ApiResult<VerifyView> {
    let drill = verify::run(&engine, &app, &env, request.id.as_deref(), &caller.name).await?;
    Ok(Json(VerifyView {
        backup: drill.backup,
        kind: drill.kind.as_str().to_owned(),
        passed: drill.passed,
        checks: drill.checks,
        tables: drill
            .tables
            .into_iter()
            .map(|(table, rows)| TableRows { table, rows })
            .collect(),
    }))
}

impl From<RemoteError> for ApiError {
    fn from(error: RemoteError) -> Self {
        ApiError::new(
            crate::api::error::Kind::Conflict,
            "remote_failed",
            crate::report::chain(&error),
        )
    }
}

impl From<VerifyError> for ApiError {
    fn from(error: VerifyError) -> Self {
        ApiError::new(
            crate::api::error::Kind::Conflict,
            "verify_failed",
            crate::report::chain(&error),
        )
    }
}
