//! Backups of an app environment's database: list, take, restore.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use client::wire::{BackupView, RestoreView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult};
use crate::engine::Engine;
use crate::store::NewEvent;

fn backup_view(record: &crate::store::BackupRecord) -> BackupView {
    BackupView {
        id: record.id.clone(),
        release: record.release,
        reason: record.reason.as_str().to_owned(),
        kind: record.kind.as_str().to_owned(),
        target: record.target.clone(),
        size: record.size,
        sha256: record.sha256.clone(),
        created_at: record.created_at,
        remote: None,
    }
}

pub async fn backups(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<BackupView>> {
    let records = engine
        .store
        .backups(&app, &env)
        .map_err(ApiError::internal)?;
    Ok(Json(
        records
            .iter()
            .map(|record| BackupView {
                remote: engine
                    .store
                    .backup_remote(&record.id)
                    .ok()
                    .flatten()
                    .map(|copy| copy.key),
                ..backup_view(record)
            })
            .collect(),
    ))
}

pub async fn create_backup(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> Result<(StatusCode, Json<BackupView>), ApiError> {
    let record =
        crate::backup::on_demand(&engine, &app, &env, crate::store::BackupReason::Manual).await?;
    engine.record(NewEvent {
        app: Some(app),
        environment: Some(env),
        deployment_id: None,
        kind: "backup.created".to_owned(),
        message: format!(
            "{} took backup {} of {} ({} bytes)",
            caller.name, record.id, record.target, record.size
        ),
        data_json: "{}".to_owned(),
    });
    Ok((StatusCode::CREATED, Json(backup_view(&record))))
}

pub async fn restore_backup(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, id)): Path<(String, String, String)>,
) -> ApiResult<RestoreView> {
    let mut fetched = None;
    let record = match engine
        .store
        .backup(&id)
        .map_err(ApiError::internal)?
        .filter(|record| record.app == app && record.environment == env)
    {
        Some(record) => record,
        // Not known on this agent (a new host): the release's remote may have it.
        None => {
            let (record, step) = crate::backup::record_from_remote(&engine, &app, &env, &id)
                .await?
                .ok_or_else(|| {
                    ApiError::not_found(format!("no backup `{id}` of `{app}` in `{env}`"))
                })?;
            fetched = Some(step);
            record
        }
    };
    let mut steps = crate::backup::restore_live(&engine, &record).await?;
    if let Some(step) = fetched {
        steps.insert(0, step);
    }
    engine.record(NewEvent {
        app: Some(app),
        environment: Some(env),
        deployment_id: None,
        kind: "backup.restored".to_owned(),
        message: format!("{} restored backup {id}: {}", caller.name, steps.join("; ")),
        data_json: "{}".to_owned(),
    });
    Ok(Json(RestoreView { backup: id, steps }))
}
