//! Secrets of an app environment: names and versions out, values only in.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use client::wire::{SecretValue, SecretView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson, ApiResult};
use crate::api::input;
use crate::engine::{Engine, now_ms};
use crate::store::NewEvent;

pub async fn secrets(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<Vec<SecretView>> {
    let metas = crate::secrets::list(&engine.store, &app, &env).map_err(ApiError::internal)?;
    Ok(Json(
        metas
            .into_iter()
            .map(|meta| SecretView {
                name: meta.name,
                version: meta.version,
                created_by: meta.created_by,
                created_at: meta.created_at,
            })
            .collect(),
    ))
}

pub async fn set_secret(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, name)): Path<(String, String, String)>,
    ApiJson(body): ApiJson<SecretValue>,
) -> ApiResult<SecretView> {
    // The name was checked with the path (`input::check_path`).
    input::secret_value(&body.value)?;
    let value = crate::secrets::Secret::new(body.value);
    let now = now_ms();
    let version = crate::secrets::set(
        &engine.store,
        &engine.master_key,
        crate::secrets::SecretName {
            app: &app,
            env: &env,
            name: &name,
        },
        &value,
        &caller.name,
        now,
    )
    .map_err(ApiError::internal)?;
    engine.record(NewEvent {
        app: Some(app.clone()),
        environment: Some(env.clone()),
        deployment_id: None,
        kind: "secret.set".to_owned(),
        message: format!("{} set secret {name} (version {version})", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(Json(SecretView {
        name,
        version,
        created_by: caller.name,
        created_at: now,
    }))
}

pub async fn unset_secret(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env, name)): Path<(String, String, String)>,
) -> Result<StatusCode, ApiError> {
    if !crate::secrets::unset(&engine.store, &app, &env, &name, &caller.name, now_ms())
        .map_err(ApiError::internal)?
    {
        return Err(ApiError::not_found(format!(
            "no secret `{name}` set for `{app}` in `{env}`"
        )));
    }
    engine.record(NewEvent {
        app: Some(app),
        environment: Some(env),
        deployment_id: None,
        kind: "secret.unset".to_owned(),
        message: format!("{} unset secret {name}", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(StatusCode::NO_CONTENT)
}
