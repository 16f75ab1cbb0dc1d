//! `ControlClient`: the agent's side of the proxy's control socket (one HTTP/1.1 request per connection
//! over a Unix domain socket, JSON both ways).
//!
//! It does not retry or start a proxy: a refused connection means no proxy runs there, and the caller
//! decides what to do about it.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::control_socket::Health;
use crate::desired::DesiredState;
use crate::observed::{ObservedReleaseStats, ObservedState};

/// Time one request may take, connecting included, unless `with_timeout` says otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of one proxy's control socket. Cheap to clone; holds no connection between calls.
#[derive(Debug, Clone)]
pub struct ControlClient {
    socket_path: PathBuf,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlClientError {
    #[error("cannot connect to the proxy's control socket `{}`", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("control request `{method} {path}` to `{}` failed", socket.display())]
    Http {
        socket: PathBuf,
        method: Method,
        path: &'static str,
        #[source]
        source: hyper::Error,
    },
    #[error("control request `{method} {path}` to `{}` got no answer within {timeout:?}", socket.display())]
    Timeout {
        socket: PathBuf,
        method: Method,
        path: &'static str,
        timeout: Duration,
    },
    #[error("proxy refused `{method} {path}` with {status} `{code}`: {message}")]
    Refused {
        method: Method,
        path: &'static str,
        status: StatusCode,
        code: String,
        message: String,
    },
    #[error("answer to `{method} {path}` is not the expected JSON")]
    Decode {
        method: Method,
        path: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("desired state could not be encoded")]
    Encode(#[source] serde_json::Error),
}

impl ControlClient {
    pub fn new(socket_path: impl Into<PathBuf>) -> ControlClient {
        ControlClient {
            socket_path: socket_path.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> ControlClient {
        self.timeout = timeout;
        self
    }

    pub fn socket_path(&self) -> &Path {
        &self.socket_path
    }

    /// Sets the whole desired routing; answers what the proxy routes once it is applied (instances that
    /// left are `draining` at that point).
    pub async fn put_state(
        &self,
        desired: &DesiredState,
    ) -> Result<ObservedState, ControlClientError> {
        let body = serde_json::to_vec(desired).map_err(ControlClientError::Encode)?;
        self.call(Method::PUT, "/v1/state", Some(body)).await
    }

    /// Replaces the certificates and ACME challenge answers served (`crate::tls`); answers the hosts
    /// with a certificate.
    pub async fn put_tls(
        &self,
        state: &crate::tls::TlsState,
    ) -> Result<Vec<String>, ControlClientError> {
        let body = serde_json::to_vec(state).map_err(ControlClientError::Encode)?;
        self.call(Method::PUT, "/v1/tls", Some(body)).await
    }

    /// The certificates served now, keys included (a successor takes them over).
    pub async fn tls(&self) -> Result<crate::tls::TlsState, ControlClientError> {
        self.call(Method::GET, "/v1/tls", None).await
    }

    pub async fn state(&self) -> Result<ObservedState, ControlClientError> {
        self.call(Method::GET, "/v1/state", None).await
    }

    pub async fn stats(&self) -> Result<Vec<ObservedReleaseStats>, ControlClientError> {
        self.call(Method::GET, "/v1/stats", None).await
    }

    /// Asks the proxy to retire in favour of a successor (a hot restart): it answers its counters, then
    /// stops accepting, gives up its sockets and pid file, finishes what it has in flight and exits.
    pub async fn retire(&self) -> Result<Vec<ObservedReleaseStats>, ControlClientError> {
        self.call(Method::POST, "/v1/retire", None).await
    }

    /// Succeeds when a proxy answers on the socket: its process id and where it serves.
    pub async fn healthz(&self) -> Result<Health, ControlClientError> {
        self.call(Method::GET, "/healthz", None).await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<T, ControlClientError> {
        let exchange = self.exchange(method.clone(), path, body);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_elapsed| ControlClientError::Timeout {
                socket: self.socket_path.clone(),
                method: method.clone(),
                path,
                timeout: self.timeout,
            })??;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct ErrorBody {
                error: ErrorInner,
            }
            #[derive(Deserialize)]
            struct ErrorInner {
                code: String,
                message: String,
            }
            let (code, message) = match serde_json::from_slice::<ErrorBody>(&bytes) {
                Ok(body) => (body.error.code, body.error.message),
                Err(_) => (
                    "unknown".to_owned(),
                    String::from_utf8_lossy(&bytes).into_owned(),
                ),
            };
            return Err(ControlClientError::Refused {
                method,
                path,
                status,
                code,
                message,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| ControlClientError::Decode {
            method,
            path,
            source,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &'static str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ControlClientError> {
        let http_error = |source| ControlClientError::Http {
            socket: self.socket_path.clone(),
            method: method.clone(),
            path,
            source,
        };
        let stream = UnixStream::connect(&self.socket_path)
            .await
            .map_err(|source| ControlClientError::Connect {
                socket: self.socket_path.clone(),
                source,
            })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http_error)?;
        // The connection task ends when the answer is read and `sender` is dropped.
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(message = "Control client connection ended with an error.", %error);
            }
        });
        let mut request = Request::new(Full::new(Bytes::from(body.unwrap_or_default())));
        *request.method_mut() = method.clone();
        *request.uri_mut() = hyper::Uri::from_static(path);
        let headers = request.headers_mut();
        // HTTP/1.1 requires a Host; the socket has no name, so say so.
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = sender.send_request(request).await.map_err(http_error)?;
        let status = response.status();
        let bytes = response
            .into_body()
            .collect()
            .await
            .map_err(http_error)?
            .to_bytes();
        Ok((status, bytes))
    }
}
