//! API tokens (admin).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::StatusCode;
use client::wire::{TokenCreated, TokenRequest, TokenView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson, ApiResult};
use crate::api::{input, views};
use crate::engine::Engine;
use crate::store::NewEvent;
use crate::tokens::{self, Role};

pub async fn tokens(State(engine): State<Arc<Engine>>) -> ApiResult<Vec<TokenView>> {
    let tokens = engine.store.tokens().map_err(ApiError::internal)?;
    Ok(Json(tokens.iter().map(views::token_view).collect()))
}

pub async fn create_token(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    ApiJson(request): ApiJson<TokenRequest>,
) -> Result<(StatusCode, Json<TokenCreated>), ApiError> {
    let role: Role = request
        .role
        .parse()
        .map_err(|error: tokens::ParseRoleError| ApiError::bad_request(error.to_string()))?;
    input::token_name(request.name.trim())?;
    let (record, plain) =
        tokens::create(&engine.store, request.name.trim(), role).map_err(ApiError::internal)?;
    engine.record(NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: "token.created".to_owned(),
        message: format!("{} created token `{}` ({role})", caller.name, record.name),
        data_json: "{}".to_owned(),
    });
    Ok((
        StatusCode::CREATED,
        Json(TokenCreated {
            id: record.id,
            name: record.name,
            role: role.to_string(),
            token: plain.expose().to_owned(),
        }),
    ))
}

pub async fn revoke_token(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    if !engine.store.revoke_token(&id).map_err(ApiError::internal)? {
        return Err(ApiError::not_found(format!("no token `{id}`")));
    }
    engine.record(NewEvent {
        app: None,
        environment: None,
        deployment_id: None,
        kind: "token.revoked".to_owned(),
        message: format!("{} revoked token `{id}`", caller.name),
        data_json: "{}".to_owned(),
    });
    Ok(StatusCode::NO_CONTENT)
}
