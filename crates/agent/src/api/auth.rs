//! Bearer tokens: who is calling, and whether their role allows the route.
//!
//! `authenticate` runs on every `/v1` route and refuses a missing or unknown token (401); the
//! role layers in `router.rs` refuse a token whose role is too low (403).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::api::error::ApiError;
use crate::engine::Engine;
use crate::tokens::{self, Role};

/// The authenticated caller, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's id (`t-…`): who started a deployment, so that token cannot approve it.
    pub token_id: String,
    pub name: String,
    pub role: Role,
}

pub async fn authenticate(
    State(engine): State<Arc<Engine>>,
    mut request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return ApiError::unauthorized().into_response();
    };
    match tokens::try_verify(&engine.store, presented) {
        Ok(Some(record)) => {
            let role = record.role;
            request.extensions_mut().insert(Caller {
                token_id: record.id,
                name: record.name,
                role,
            });
            next.run(request).await
        }
        Ok(None) => ApiError::unauthorized().into_response(),
        Err(error) => ApiError::internal(error).into_response(),
    }
}

/// A layer function refusing callers below `needed`.
pub async fn require(needed: Role, request: Request, next: Next) -> Response {
    match request.extensions().get::<Caller>() {
        Some(caller) if caller.role.allows(needed) => next.run(request).await,
        Some(caller) => {
            ApiError::forbidden(&needed.to_string(), &caller.role.to_string()).into_response()
        }
        None => ApiError::unauthorized().into_response(),
    }
}
