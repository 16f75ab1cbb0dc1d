//! Client calls of a proxy that follows the agent (`rollway proxy --follow`, a proxy-role token):
//! the stream of desired states and the counter reports.

use std::ops::ControlFlow;

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Client, ClientError};
use crate::wire::{ProxyReport, ProxyStateLine};

const STATE_PATH: &str = "/v1/proxy/state";
const REPORT_PATH: &str = "/v1/proxy/report";

impl Client {
    /// `GET /v1/proxy/state`: hands each line to `on_line` as it arrives (the current desired
    /// state first, then every change, keep-alives between) until it breaks or the stream ends.
    /// A line that is not a `ProxyStateLine<S, T>` ends the stream with `ClientError::Decode`.
    pub async fn proxy_states<S: DeserializeOwned, T: DeserializeOwned>(
        &self,
        mut on_line: impl FnMut(ProxyStateLine<S, T>) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        let request = self.build(Method::GET, STATE_PATH, None, None)?;
        self.lines(request, |line| {
            let line: ProxyStateLine<S, T> =
                serde_json::from_slice(line).map_err(|source| ClientError::Decode {
                    path: STATE_PATH.to_owned(),
                    source,
                })?;
            Ok(on_line(line))
        })
        .await
    }

    /// `POST /v1/proxy/report`: this proxy's cumulative per-release counters.
    pub async fn proxy_report<R: Serialize>(
        &self,
        report: &ProxyReport<R>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(report).map_err(|source| ClientError::Decode {
            path: REPORT_PATH.to_owned(),
            source,
        })?;
        self.request_bytes(
            Method::POST,
            REPORT_PATH,
            Some(Bytes::from(body)),
            Some("application/json"),
        )
        .await
        .map(|_| ())
    }
}
