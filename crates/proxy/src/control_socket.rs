//! The proxy's control socket: HTTP/1.1 + JSON on a Unix domain socket, through which the agent sets the
//! desired routing and reads what the proxy observes.
//!
//! `PUT /v1/state` (body `DesiredState`) checks the state, saves it to `routes.json`, then applies it, and
//! answers the `ObservedState`; `GET /v1/state`, `GET /v1/stats` and `GET /healthz` only read. It has no
//! tokens: access is the socket file's mode (0600, set by `process`) in a directory of the same owner.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Proxy;
use crate::desired::{self, ApplyError, DesiredState};
use crate::observed::{ObservedReleaseStats, ObservedState};
use crate::routes_file::{RoutesFile, RoutesFileError};
use crate::slow_start::SlowStart;

/// The socket's file name inside the proxy's state directory.
pub const SOCKET_FILE_NAME: &str = "proxy.sock";

/// Largest `PUT /v1/state` body accepted; a few thousand instances fit in far less.
pub const MAX_STATE_BYTES: usize = 16 * 1024 * 1024;

/// Why one control request failed; `error_response` is the only place that turns it into an answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlRequestError {
    #[error("no such endpoint `{method} {path}`")]
    NotFound { method: Method, path: String },
    #[error("request body could not be read")]
    Body {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("request body is not a desired state")]
    Json {
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("desired state could not be saved")]
    Save(#[source] RoutesFileError),
    #[error("saving the desired state did not finish")]
    SaveTask(#[source] tokio::task::JoinError),
    #[error("the certificates cannot be served")]
    Tls(#[from] crate::tls::TlsError),
    #[error(
        "this proxy retired in favour of a successor; send the state to the successor's socket"
    )]
    Retired,
}

/// The answer to `GET /healthz`: which process answers, and where it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub pid: u32,
    /// The data listener's bound address (useful when it was given port 0).
    pub listen: Option<SocketAddr>,
    /// The TLS listener's bound address, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub https: Option<SocketAddr>,
    pub metrics: Option<SocketAddr>,
    /// Which executable file this process runs (`process::binary_identity`), so the agent can tell a
    /// proxy of an older binary and hand its sockets to a new one.
    #[serde(default)]
    pub binary: Option<String>,
}

/// Serves the control API on `listener` until `shutdown` is cancelled, then stops accepting and returns
/// once the requests in progress have been answered.
pub async fn serve_control(
    listener: UnixListener,
    proxy: Proxy,
    routes_file: RoutesFile,
    health: Health,
    shutdown: CancellationToken,
    retire: CancellationToken,
) -> io::Result<()> {
    // The state the proxy reloaded at its start (`process`), from which a first ramp starts.
    let applied = routes_file.load().ok().flatten();
    let server = Arc::new(ControlServer {
        proxy,
        routes_file,
        health,
        retire,
        apply: tokio::sync::Mutex::new(Applying {
            slow_start: SlowStart::new(applied),
            stepping: false,
        }),
    });
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(message = "Accepting a control connection failed.", %error);
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let server = Arc::clone(&server);
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let server = Arc::clone(&server);
                async move {
                    let answer = match server.answer(request).await {
                        Ok(answer) => answer,
                        Err(error) => error_response(&error),
                    };
                    Ok::<_, Infallible>(answer)
                }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(message = "Control connection ended with an error.", %error);
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// Turns a failed control request into its answer: `{ "error": { "code", "message" } }` with the status.
///
/// Internal errors keep their message: the only client is the socket's owner (the agent), and the
/// message names the file that could not be written.
pub fn error_response(error: &ControlRequestError) -> Response<Full<Bytes>> {
    let (status, code) = match error {
        ControlRequestError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
        ControlRequestError::Body { .. } => (StatusCode::BAD_REQUEST, "bad_body"),
        ControlRequestError::Json { .. } => (StatusCode::BAD_REQUEST, "bad_json"),
        ControlRequestError::Apply(ApplyError::Invalid { .. }) => {
            (StatusCode::UNPROCESSABLE_ENTITY, "invalid_state")
        }
        ControlRequestError::Apply(ApplyError::Control { .. }) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "apply_failed")
        }
        ControlRequestError::Retired => (StatusCode::CONFLICT, "retired"),
        ControlRequestError::Tls(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_tls"),
        ControlRequestError::Save(_) | ControlRequestError::SaveTask(_) => {
            (StatusCode::INTERNAL_SERVER_ERROR, "save_failed")
        }
    };
    if status.is_server_error() {
        tracing::error!(message = "Control request failed.", error = %ErrorChain(error));
    }
    #[derive(Serialize)]
    struct Body<'a> {
        error: Inner<'a>,
    }
    #[derive(Serialize)]
    struct Inner<'a> {
        code: &'a str,
        message: String,
    }
    let body = Body {
        error: Inner {
            code,
            message: ErrorChain(error).to_string(),
        },
    };
    json_response(status, &body)
}

struct ControlServer {
    proxy: Proxy,
    routes_file: RoutesFile,
    health: Health,
    /// Cancelled by `POST /v1/retire`: the process hands over to a successor.
    retire: CancellationToken,
    // tokio Mutex: held across the save (a blocking task) so that two PUTs save and apply in one order and
    // the file always holds the state applied last; the steps of a slow start take it too.
    apply: tokio::sync::Mutex<Applying>,
}

/// What the apply lock guards besides the order of applies.
struct Applying {
    slow_start: SlowStart,
    /// Whether a task steps the ramps (`step_ramps`).
    stepping: bool,
}

impl ControlServer {
    async fn answer(
        self: &Arc<Self>,
        request: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, ControlRequestError> {
        let method = request.method().clone();
        let path = request.uri().path().to_owned();
        match (&method, path.as_str()) {
            (&Method::GET, "/healthz") => Ok(json_response(StatusCode::OK, &self.health)),
            (&Method::GET, "/v1/state") => Ok(json_response(
                StatusCode::OK,
                &ObservedState::read(&self.proxy),
            )),
            (&Method::GET, "/v1/stats") => {
                let stats: Vec<ObservedReleaseStats> = self
                    .proxy
                    .all_stats()
                    .iter()
                    .map(ObservedReleaseStats::from)
                    .collect();
                Ok(json_response(StatusCode::OK, &stats))
            }
            (&Method::POST, "/v1/retire") => {
                // No routing change may land here any more: it would be lost with this process.
                let _serialised = self.apply.lock().await;
                let stats: Vec<ObservedReleaseStats> = self
                    .proxy
                    .all_stats()
                    .iter()
                    .map(ObservedReleaseStats::from)
                    .collect();
                tracing::info!(message = "Retiring: a successor takes the listeners.");
                self.retire.cancel();
                Ok(json_response(StatusCode::OK, &stats))
            }
            (&Method::PUT, "/v1/state") if self.retire.is_cancelled() => {
                Err(ControlRequestError::Retired)
            }
            // The served certificates, keys included: for a successor taking over (the socket is 0600
            // and its directory the proxy's own). Never logged.
            (&Method::GET, "/v1/tls") => {
                Ok(json_response(StatusCode::OK, &self.proxy.tls().state()))
            }
            (&Method::PUT, "/v1/tls") => {
                let body = Limited::new(request.into_body(), MAX_STATE_BYTES)
                    .collect()
                    .await
                    .map_err(|source| ControlRequestError::Body { source })?
                    .to_bytes();
                let state: crate::tls::TlsState = serde_json::from_slice(&body)
                    .map_err(|source| ControlRequestError::Json { source })?;
                self.proxy.tls().replace(state)?;
                Ok(json_response(StatusCode::OK, &self.proxy.tls().hosts()))
            }
            (&Method::PUT, "/v1/state") => {
                let body = Limited::new(request.into_body(), MAX_STATE_BYTES)
                    .collect()
                    .await
                    .map_err(|source| ControlRequestError::Body { source })?
                    .to_bytes();
                let desired: DesiredState = serde_json::from_slice(&body)
                    .map_err(|source| ControlRequestError::Json { source })?;
                let observed = self.put_state(desired).await?;
                Ok(json_response(StatusCode::OK, &observed))
            }
            _ => Err(ControlRequestError::NotFound { method, path }),
        }
    }

    /// Checks, saves, then applies: a state is on disk before any of it takes effect, and a state the
    /// proxy would refuse is never saved. A release weighted in on a serving route with a slow start
    /// gets the first step of its ramp now; a task applies the next steps (`step_ramps`).
    async fn put_state(
        self: &Arc<Self>,
        desired: DesiredState,
    ) -> Result<ObservedState, ControlRequestError> {
        let mut applying = self.apply.lock().await;
        let problems = desired.check(&self.proxy);
        if !problems.is_empty() {
            return Err(ApplyError::Invalid { problems }.into());
        }
        let routes_file = self.routes_file.clone();
        let to_save = desired.clone();
        tokio::task::spawn_blocking(move || routes_file.save(&to_save))
            .await
            .map_err(ControlRequestError::SaveTask)?
            .map_err(ControlRequestError::Save)?;
        let mut now_state = applying
            .slow_start
            .receive(desired, tokio::time::Instant::now());
        if !now_state.check(&self.proxy).is_empty() {
            // A step the proxy cannot take (an instance the ramp keeps was drained meanwhile): the state
            // as received, at once.
            now_state = applying.slow_start.end_ramps().unwrap_or(now_state);
        }
        // New instances that this state weights in on a serving route are added first, not ready, and
        // warmed (`crate::warm`), so that the switch finds their connections open.
        let warm = desired::add_to_warm(&self.proxy, &now_state)?;
        crate::warm::warm(&self.proxy, &warm, crate::warm::WARM_BOUND).await;
        desired::apply(&self.proxy, &now_state)?;
        applying
            .slow_start
            .applied(now_state, tokio::time::Instant::now());
        if applying.slow_start.ramping() && !applying.stepping {
            applying.stepping = true;
            tokio::spawn(Arc::clone(self).step_ramps());
        }
        Ok(ObservedState::read(&self.proxy))
    }

    /// Applies each step of the ramps in progress when it is due, until none is left; runs on even when
    /// the agent that sent the state is gone. A proxy retiring stops stepping: its successor applies the
    /// saved state, which is the ramp's end.
    async fn step_ramps(self: Arc<Self>) {
        loop {
            let due = {
                let applying = self.apply.lock().await;
                applying.slow_start.next_step(tokio::time::Instant::now())
            };
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
            let mut applying = self.apply.lock().await;
            if self.retire.is_cancelled() || !applying.slow_start.ramping() {
                applying.stepping = false;
                return;
            }
            let mut state = applying.slow_start.current(tokio::time::Instant::now());
            if !state.check(&self.proxy).is_empty()
                && let Some(received) = applying.slow_start.end_ramps()
            {
                state = received;
            }
            match desired::apply(&self.proxy, &state) {
                Ok(_) => applying
                    .slow_start
                    .applied(state, tokio::time::Instant::now()),
                Err(error) => {
                    tracing::error!(message = "A slow-start step could not be applied; the ramp ends.", error = %ErrorChain(&error));
                    applying.slow_start.end_ramps();
                }
            }
        }
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response<Full<Bytes>> {
    let bytes = match serde_json::to_vec(body) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!(message = "Serialising a control answer failed.", %error);
            let mut response = Response::new(Full::new(Bytes::from_static(
                br#"{"error":{"code":"internal","message":"answer could not be serialised"}}"#,
            )));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            return response;
        }
    };
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Displays an error and its sources, joined by `: `.
struct ErrorChain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}
