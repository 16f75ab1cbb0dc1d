//! Client calls for issue 19: cron jobs and runs, one-off commands, the apps on the agent.

use std::ops::ControlFlow;

use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::Method;

use super::{Client, ClientError, api_error, decode};
use crate::wire::{AppEnvView, CronJobsView, CronRunView, RunFrame, RunRequest};

impl Client {
    /// `GET /v1/apps`.
    pub async fn apps(&self) -> Result<Vec<AppEnvView>, ClientError> {
        self.get("/v1/apps").await
    }

    /// `DELETE /v1/apps/{app}/environments/{env}?confirm=APP` (admin).
    pub async fn destroy(&self, app: &str, env: &str) -> Result<AppEnvView, ClientError> {
        let path = format!("/v1/apps/{app}/environments/{env}?confirm={app}");
        let bytes = self
            .request_bytes(Method::DELETE, &path, None, None)
            .await?;
        decode(&path, &bytes)
    }

    /// `GET /v1/apps/{app}/environments`: every environment of the app, previews with their base.
    pub async fn environments(&self, app: &str) -> Result<Vec<AppEnvView>, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments")).await
    }

    /// `DELETE /v1/apps/{app}/previews/{env}` (deployer): what `destroy` does, for a preview.
    pub async fn destroy_preview(&self, app: &str, env: &str) -> Result<AppEnvView, ClientError> {
        let path = format!("/v1/apps/{app}/previews/{env}");
        let bytes = self
            .request_bytes(Method::DELETE, &path, None, None)
            .await?;
        decode(&path, &bytes)
    }

    /// `GET …/cron`.
    pub async fn cron_jobs(&self, app: &str, env: &str) -> Result<CronJobsView, ClientError> {
        self.get(&format!("/v1/apps/{app}/environments/{env}/cron"))
            .await
    }

    /// `GET …/cron/{job}/runs?limit=N`, newest first.
    pub async fn cron_runs(
        &self,
        app: &str,
        env: &str,
        job: &str,
        limit: u32,
    ) -> Result<Vec<CronRunView>, ClientError> {
        self.get(&format!(
            "/v1/apps/{app}/environments/{env}/cron/{job}/runs?limit={limit}"
        ))
        .await
    }

    /// `POST …/cron/{job}/runs`: runs the job now.
    pub async fn run_cron_job(
        &self,
        app: &str,
        env: &str,
        job: &str,
    ) -> Result<CronRunView, ClientError> {
        self.post(
            &format!("/v1/apps/{app}/environments/{env}/cron/{job}/runs"),
            &serde_json::json!({}),
        )
        .await
    }

    /// `POST …/run/interactive` with `Upgrade: rollway-run` (`request.tty` set): the connection
    /// once the agent switched protocols (see [`crate::wire::TTY_UPGRADE`] for what it speaks).
    pub async fn run_interactive(
        &self,
        app: &str,
        env: &str,
        request: &RunRequest,
    ) -> Result<hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let path = format!("/v1/apps/{app}/environments/{env}/run/interactive");
        let body = serde_json::to_vec(request).map_err(|source| ClientError::Decode {
            path: path.clone(),
            source,
        })?;
        let mut http_request = self.build(
            Method::POST,
            &path,
            Some(Bytes::from(body)),
            Some("application/json"),
        )?;
        let headers = http_request.headers_mut();
        headers.insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("upgrade"),
        );
        headers.insert(
            hyper::header::UPGRADE,
            hyper::header::HeaderValue::from_static(crate::wire::TTY_UPGRADE),
        );
        let response = self
            .http
            .request(http_request)
            .await
            .map_err(|source| self.unreachable(source))?;
        let status = response.status();
        if status != hyper::StatusCode::SWITCHING_PROTOCOLS {
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(|source| self.unreachable(source))?
                .to_bytes();
            return Err(api_error(status, &bytes));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|source| self.unreachable(source))?;
        Ok(hyper_util::rt::TokioIo::new(upgraded))
    }

    /// `POST …/run`: a one-off command; `on_frame` gets every frame of its answer in order until
    /// it returns `Break` or the answer ends.
    pub async fn run_command(
        &self,
        app: &str,
        env: &str,
        request: &RunRequest,
        mut on_frame: impl FnMut(RunFrame) -> ControlFlow<()>,
    ) -> Result<(), ClientError> {
        let path = format!("/v1/apps/{app}/environments/{env}/run");
        let body = serde_json::to_vec(request).map_err(|source| ClientError::Decode {
            path: path.clone(),
            source,
        })?;
        let request = self.build(
            Method::POST,
            &path,
            Some(Bytes::from(body)),
            Some("application/json"),
        )?;
        self.lines(request, |line| {
            let frame: RunFrame = decode(&path, line)?;
            Ok(on_frame(frame))
        })
        .await
    }
}
