//! Deployments: starting a deploy or a rollback, reading one, and the signals to a running one
//! (promote, approve, abort).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use client::wire::{DeployRequest, DeploymentState, DeploymentView, RollbackRequest};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson, ApiResult, Kind};
use crate::api::{input, views};
use crate::deploy::executor::DeploymentData;
use crate::deploy::start;
use crate::engine::Engine;

pub async fn deploy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<DeployRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    input::manifest(&request.manifest)?;
    let deployment = start::deploy(
        &engine,
        &caller.name,
        &caller.token_id,
        &app,
        &env,
        &request,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(views::deployment_view(&deployment)),
    ))
}

pub async fn rollback(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    ApiJson(request): ApiJson<RollbackRequest>,
) -> Result<(StatusCode, Json<DeploymentView>), ApiError> {
    let deployment = start::rollback(
        &engine,
        &caller.name,
        &caller.token_id,
        &app,
        &env,
        &request,
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(views::deployment_view(&deployment)),
    ))
}

pub async fn deployment(
    State(engine): State<Arc<Engine>>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    Ok(Json(views::deployment_view(&deployment)))
}

/// Promote, abort and approve: a signal to a running deployment, checked against its state.
async fn signal(
    engine: &Engine,
    caller: &Caller,
    id: &str,
    make: fn(String) -> crate::engine::Signal,
    applies: fn(DeploymentState) -> bool,
    verb: &str,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    if !applies(deployment.state) {
        let allowed: Vec<&str> = DeploymentState::ALL
            .into_iter()
            .filter(|state| applies(*state))
            .map(DeploymentState::as_str)
            .collect();
        return Err(ApiError::new(
            Kind::Conflict,
            "wrong_state",
            format!(
                "deployment `{id}` is {}; it can be {verb} only while {}",
                deployment.state,
                allowed.join(" or ")
            ),
        ));
    }
    engine.signal(id, make(caller.name.clone()));
    Ok(Json(views::deployment_view(&deployment)))
}

pub async fn promote(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Promote { by },
        DeploymentState::can_be_promoted,
        "promoted",
    )
    .await
}

/// Approval needs role approver or admin (the route's layer) and a token other than the one
/// that started the deployment: nobody approves their own deploy.
pub async fn approve(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    let deployment = engine
        .store
        .deployment(&id)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no deployment `{id}`")))?;
    let data: DeploymentData = serde_json::from_str(&deployment.data_json).unwrap_or_default();
    match data.started_by_token {
        Some(starter) if starter == caller.token_id => {
            return Err(ApiError::new(
                Kind::Forbidden,
                "own_deployment",
                format!(
                    "the token that started deployment `{id}` cannot approve it; another token with role approver or admin must"
                ),
            ));
        }
        Some(_) => {}
        None => {
            return Err(ApiError::new(
                Kind::Forbidden,
                "unknown_starter",
                format!(
                    "deployment `{id}` does not record which token started it, so nobody can approve it; abort it and deploy again"
                ),
            ));
        }
    }
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Approve { by },
        DeploymentState::can_be_approved,
        "approved",
    )
    .await
}

pub async fn abort(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> ApiResult<DeploymentView> {
    signal(
        &engine,
        &caller,
        &id,
        |by| crate::engine::Signal::Abort { by },
        DeploymentState::can_be_aborted,
        "aborted",
    )
    .await
}
