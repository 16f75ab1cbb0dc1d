//! The environments of an app and preview environments: `rollway env list | destroy NAME`.
//! Destroying goes through `environments::destroy`, as `rollway destroy` does.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use client::wire::AppEnvView;

use crate::api::auth::Caller;
use crate::api::edge::known_environment;
use crate::api::error::{ApiError, ApiResult, Kind};
use crate::api::workloads::{app_envs, destroy_answer};
use crate::engine::{AppEnv, Engine};

/// `GET /v1/apps/{app}/environments` (viewer): every environment of the app, previews with their
/// base and expiry.
pub async fn environments(
    State(engine): State<Arc<Engine>>,
    Path(app): Path<String>,
) -> ApiResult<Vec<AppEnvView>> {
    crate::api::input::app_name(&app).map_err(|error| ApiError::bad_request(error.to_string()))?;
    let views = app_envs(&engine, Some(&app))?;
    if views.is_empty() {
        return Err(ApiError::not_found(format!(
            "no app `{app}` on this agent: deploy it first"
        )));
    }
    Ok(Json(views))
}

/// `DELETE /v1/apps/{app}/previews/{env}` (deployer, who makes previews): what `rollway destroy`
/// does, for a preview only; any other environment needs `rollway destroy --env` (admin).
pub async fn destroy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<AppEnvView> {
    known_environment(&engine, &app, &env)?;
    if engine
        .store
        .preview(&app, &env)
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::new(
            Kind::Invalid,
            "not_a_preview",
            format!(
                "`{env}` of `{app}` is not a preview; an environment of the manifest is destroyed with `rollway destroy --env {env}` (admin)"
            ),
        ));
    }
    destroy_answer(&engine, AppEnv::new(app, env), &caller.name).await
}
