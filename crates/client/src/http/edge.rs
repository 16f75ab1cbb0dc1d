//! Client calls for an environment's edge controls: maintenance mode and pause.

use bytes::Bytes;
use hyper::Method;
use serde::Serialize;

use super::{Client, ClientError, decode};
use crate::wire::{EdgeView, MaintenanceRequest, PauseRequest};

impl Client {
    /// `PUT …/maintenance`: the environment's routes answer 503 with the page.
    pub async fn set_maintenance(
        &self,
        app: &str,
        env: &str,
        request: &MaintenanceRequest,
    ) -> Result<EdgeView, ClientError> {
        self.edge_call(Method::PUT, app, env, "maintenance", Some(request))
            .await
    }

    /// `DELETE …/maintenance`.
    pub async fn clear_maintenance(&self, app: &str, env: &str) -> Result<EdgeView, ClientError> {
        self.edge_call::<()>(Method::DELETE, app, env, "maintenance", None)
            .await
    }

    /// `PUT …/pause`: new requests wait in the proxy until `resume` or `max_ms`.
    pub async fn pause(&self, app: &str, env: &str, max_ms: u64) -> Result<EdgeView, ClientError> {
        self.edge_call(
            Method::PUT,
            app,
            env,
            "pause",
            Some(&PauseRequest { max_ms }),
        )
        .await
    }

    /// `DELETE …/pause`: held requests go on.
    pub async fn resume(&self, app: &str, env: &str) -> Result<EdgeView, ClientError> {
        self.edge_call::<()>(Method::DELETE, app, env, "pause", None)
            .await
    }

    async fn edge_call<B: Serialize>(
        &self,
        method: Method,
        app: &str,
        env: &str,
        control: &str,
        body: Option<&B>,
    ) -> Result<EdgeView, ClientError> {
        let path = format!("/v1/apps/{app}/environments/{env}/{control}");
        let body = body
            .map(|body| {
                serde_json::to_vec(body).map_err(|source| ClientError::Decode {
                    path: path.clone(),
                    source,
                })
            })
            .transpose()?;
        let content_type = body.as_ref().map(|_| "application/json");
        let bytes = self
            .request_bytes(method, &path, body.map(Bytes::from), content_type)
            .await?;
        decode(&path, &bytes)
    }
}
