//! `/v1/certs`: the HTTPS routes' certificates (never a key) and a forced renewal.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use client::wire::{CertSourceView, CertView};

use crate::api::auth::Caller;
use crate::api::error::{ApiError, Kind};
use crate::engine::Engine;
use crate::store::{CertRecord, CertSource, NewEvent};

#[derive(Debug, serde::Deserialize)]
pub struct CertsQuery {
    /// Only this environment's hosts.
    pub env: Option<String>,
}

pub async fn list(
    State(engine): State<Arc<Engine>>,
    Query(query): Query<CertsQuery>,
) -> Result<Json<Vec<CertView>>, ApiError> {
    let records = engine.store.certs().map_err(ApiError::internal)?;
    Ok(Json(
        records
            .iter()
            .filter(|record| {
                query
                    .env
                    .as_ref()
                    .is_none_or(|env| &record.environment == env)
            })
            .map(|record| view(&engine, record))
            .collect(),
    ))
}

/// Renews an ACME certificate now (`rollway certs renew HOST`), whatever its renewal time.
pub async fn renew(
    State(engine): State<Arc<Engine>>,
    Extension(caller): Extension<Caller>,
    Path(host): Path<String>,
) -> Result<Json<CertView>, ApiError> {
    let host = host.to_ascii_lowercase();
    let record = engine
        .store
        .cert(&host)
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("no certificate for host `{host}`")))?;
    if record.source != CertSource::Acme {
        return Err(ApiError::new(
            Kind::Conflict,
            "given_certificate",
            format!(
                "the certificate for `{host}` is given as secrets of `{}` in `{}`; renew it by setting new ones and deploying",
                record.app, record.environment
            ),
        ));
    }
    engine.record(NewEvent {
        app: Some(record.app.clone()),
        environment: Some(record.environment.clone()),
        deployment_id: None,
        kind: "cert.renew_requested".to_owned(),
        message: format!(
            "{} asked to renew the certificate for `{host}`",
            caller.name
        ),
        data_json: "{}".to_owned(),
    });
    match crate::certs::renew(&engine, &record).await {
        Ok(renewed) => Ok(Json(view(&engine, &renewed))),
        Err(error) => Err(ApiError::new(
            Kind::Other(StatusCode::BAD_GATEWAY),
            "renewal_failed",
            crate::report::chain(&error),
        )),
    }
}

fn view(engine: &Engine, record: &CertRecord) -> CertView {
    CertView {
        host: record.host.clone(),
        app: record.app.clone(),
        environment: record.environment.clone(),
        source: match record.source {
            CertSource::Acme => CertSourceView::Acme,
            CertSource::Given => CertSourceView::Given,
        },
        issuer: record.issuer.clone(),
        not_before: record.not_before,
        not_after: record.not_after,
        renew_at: (record.source == CertSource::Acme).then(|| {
            crate::certs::renew_at(
                record.not_before,
                record.not_after,
                engine.certs.config.renew_before,
            )
        }),
        renewed_at: record.renewed_at,
        last_error: record.last_error.clone(),
        next_attempt_at: record.next_attempt_at,
    }
}
