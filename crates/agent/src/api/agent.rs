//! The agent itself: liveness, what it is, its proxy, its metrics.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, State};
use client::wire::AgentInfo;

use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiResult, Kind};
use crate::api::views;
use crate::engine::Engine;

pub async fn healthz() -> &'static str {
    "ok"
}

pub async fn agent_info(State(engine): State<Arc<Engine>>) -> ApiResult<AgentInfo> {
    Ok(Json(AgentInfo {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        proxy: engine.proxy_addr.to_string(),
        state_dir: engine.paths.state_dir.display().to_string(),
        isolation: Some(views::isolation_view(&engine.isolation)),
        api_fingerprint: engine.api_fingerprint,
        followers: engine
            .proxy
            .followers_seen()
            .into_iter()
            .map(|seen| client::wire::FollowerView {
                proxy: seen.proxy,
                seen_ms_ago: u64::try_from(seen.seen_ago.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
    }))
}

/// `GET /v1/agent/certificate` (viewer): the API's certificate in PEM (public), which the nodes'
/// engines trust for the agent's registry; 404 when the API serves plain HTTP (loopback).
pub async fn api_certificate(
    State(engine): State<Arc<Engine>>,
) -> ApiResult<client::wire::ApiCertificateView> {
    let pem = engine.api_certificate.clone().ok_or_else(|| {
        ApiError::new(
            Kind::NotFound,
            "no_tls",
            "the agent's API serves plain HTTP on loopback: an engine on this host pulls from its registry without a certificate",
        )
    })?;
    Ok(Json(client::wire::ApiCertificateView { pem }))
}

/// `POST /v1/proxy/upgrade` (admin): a hot restart of the proxy onto the agent's binary.
pub async fn upgrade_proxy(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
) -> ApiResult<client::wire::ProxyUpgradeView> {
    let why = format!("{} asked for it", caller.name);
    let (previous_pid, _) = crate::proxy_supervisor::upgrade(&engine, &why)
        .await
        .map_err(|error| {
            ApiError::new(
                Kind::Unavailable,
                "proxy_upgrade_failed",
                format!(
                    "the new proxy did not take over, so the old one keeps serving: {}",
                    crate::report::chain(&error)
                ),
            )
        })?;
    Ok(Json(client::wire::ProxyUpgradeView {
        previous_pid,
        proxy: views::proxy_view(&engine.proxy.status()),
    }))
}

/// Prometheus text format (role viewer: scrape with a bearer token).
pub async fn metrics(State(engine): State<Arc<Engine>>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        crate::metrics::render(&engine).await,
    )
}
