//! The routes of proxies that follow the agent (role proxy, see `tokens::Role`): the stream of
//! desired states (`GET /v1/proxy/state`) and their counter reports (`POST /v1/proxy/report`).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use client::wire::{
    MAX_PROXY_ID_LEN, MAX_PROXY_REPORT_RELEASES, PROXY_KEEPALIVE_SECS, ProxyId, ProxyReport,
    ProxyStateLine,
};
use proxy::{DesiredState, ObservedReleaseStats};
use tokio::sync::watch;

use crate::api::error::{ApiError, ApiJson, Kind};
use crate::engine::Engine;
use crate::proxy_link::PublishedTls;

/// The longest release name a report may carry (the proxy's own are `app/env@N`).
const MAX_RELEASE_NAME: usize = 256;

/// `GET /v1/proxy/state`: newline-delimited [`ProxyStateLine`]s. The desired state the agent's
/// proxy last accepted first (as soon as there is one), then its TLS set (certificates with their
/// private keys and the pending ACME challenge answers, as soon as there is one), then each new one
/// of either, whole; a keep-alive line after [`PROXY_KEEPALIVE_SECS`] without a change, so a
/// follower notices a dead link. Ends when the agent stops. Role proxy only (`tokens::Role`): the
/// TLS lines hold private keys, so no other role reads this stream, and nothing here logs a line.
pub async fn state_stream(State(engine): State<Arc<Engine>>) -> Response {
    let follow = Follow {
        states: engine.proxy.subscribe(),
        tls: engine.proxy.subscribe_tls(),
        engine,
        state_sent: false,
        tls_sent: false,
    };
    let stream = futures_util::stream::unfold(follow, |mut follow| async move {
        let line = follow.next_line().await?;
        let line = match &line {
            ProxyStateLine::State(state) => ProxyStateLine::State(&**state),
            ProxyStateLine::Tls(tls) => ProxyStateLine::Tls(&**tls),
            ProxyStateLine::KeepAlive => ProxyStateLine::KeepAlive,
        };
        let mut bytes = serde_json::to_vec(&line).unwrap_or_default();
        bytes.push(b'\n');
        Some((Ok::<_, Infallible>(bytes::Bytes::from(bytes)), follow))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response()
}

type Line = ProxyStateLine<Arc<DesiredState>, Arc<PublishedTls>>;

/// One follower's stream: what it was sent so far.
struct Follow {
    states: watch::Receiver<Option<Arc<DesiredState>>>,
    tls: watch::Receiver<Option<Arc<PublishedTls>>>,
    engine: Arc<Engine>,
    state_sent: bool,
    tls_sent: bool,
}

impl Follow {
    /// The next line: the current state, then the current TLS set, when not sent yet; else the
    /// next change of either; a keep-alive when the wait is longer than the keep-alive period;
    /// `None` when the agent stops.
    async fn next_line(&mut self) -> Option<Line> {
        if !self.state_sent
            && let Some(state) = self.states.borrow_and_update().clone()
        {
            self.state_sent = true;
            return Some(ProxyStateLine::State(state));
        }
        if !self.tls_sent
            && let Some(tls) = self.tls.borrow_and_update().clone()
        {
            self.tls_sent = true;
            return Some(ProxyStateLine::Tls(tls));
        }
        let changed = async {
            tokio::select! {
                changed = self.states.changed() => changed.map(|()| true),
                changed = self.tls.changed() => changed.map(|()| false),
            }
        };
        let changed = tokio::select! {
            () = self.engine.shutdown.cancelled() => return None,
            changed = tokio::time::timeout(Duration::from_secs(PROXY_KEEPALIVE_SECS), changed) => changed,
        };
        match changed {
            Err(_elapsed) => Some(ProxyStateLine::KeepAlive),
            Ok(Err(_closed)) => None,
            Ok(Ok(true)) => {
                self.state_sent = true;
                Some(
                    self.states
                        .borrow_and_update()
                        .clone()
                        .map_or(ProxyStateLine::KeepAlive, ProxyStateLine::State),
                )
            }
            Ok(Ok(false)) => {
                self.tls_sent = true;
                Some(
                    self.tls
                        .borrow_and_update()
                        .clone()
                        .map_or(ProxyStateLine::KeepAlive, ProxyStateLine::Tls),
                )
            }
        }
    }
}

/// `POST /v1/proxy/report`: a following proxy's cumulative per-release counters, added to the
/// agent's own proxy's wherever counters are read (`ProxyLink::stats`). 204 when taken.
pub async fn report(
    State(engine): State<Arc<Engine>>,
    ApiJson(report): ApiJson<ProxyReport<ObservedReleaseStats>>,
) -> Result<StatusCode, ApiError> {
    let invalid = |message: String| ApiError::new(Kind::Invalid, "invalid", message);
    if !ProxyId::is_valid(&report.proxy) {
        return Err(invalid(format!(
            "`proxy` must be 1 to {MAX_PROXY_ID_LEN} characters of A-Z a-z 0-9 . _ - : (the proxy's `--id`)"
        )));
    }
    if !ProxyId::is_valid(&report.incarnation) {
        return Err(invalid(format!(
            "`incarnation` must be 1 to {MAX_PROXY_ID_LEN} characters of A-Z a-z 0-9 . _ - :"
        )));
    }
    if report.releases.len() > MAX_PROXY_REPORT_RELEASES {
        return Err(invalid(format!(
            "a report lists at most {MAX_PROXY_REPORT_RELEASES} releases, this one {}",
            report.releases.len()
        )));
    }
    if let Some(long) = report
        .releases
        .iter()
        .find(|release| release.release.len() > MAX_RELEASE_NAME)
    {
        return Err(invalid(format!(
            "a release name is at most {MAX_RELEASE_NAME} bytes, one has {}",
            long.release.len()
        )));
    }
    engine.proxy.follower_report(report).map_err(|refused| {
        ApiError::new(Kind::Conflict, "too_many_proxies", refused.to_string())
    })?;
    Ok(StatusCode::NO_CONTENT)
}
