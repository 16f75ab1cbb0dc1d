//! Active health checks: an HTTP GET of the health path on an instance (HTTP/1.1 or h2c, or a gRPC call
//! for a gRPC service), and the gate that waits for N consecutive passes per instance.
//!
//! The check sends the route's first host (or `health.host`) as Host, so apps that filter hosts
//! (Django ALLOWED_HOSTS, Rails host authorization) answer the check as they answer users.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use manifest::Protocol;
use tokio::net::TcpStream;

/// What to check and how often.
#[derive(Debug, Clone)]
pub struct Check {
    pub path: String,
    pub host: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes needed.
    pub healthy: u32,
    /// How long the instance may take to pass.
    pub start_timeout: Duration,
    /// What the instance speaks; decides how it is checked (see `probe`).
    pub protocol: Protocol,
}

/// Why one check of an instance failed. Its text (with `report::chain`) is what a deployment's
/// reason and the gate's "last check" say.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("connect to {addr}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{handshake} with {addr}")]
    Handshake {
        /// `handshake` (HTTP/1.1) or `h2c handshake`.
        handshake: &'static str,
        addr: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("health request for `{path}`")]
    Request {
        path: String,
        #[source]
        source: hyper::http::Error,
    },
    /// Sending the request or reading the answer failed.
    #[error("{method} {path}")]
    Exchange {
        /// `GET`, or `call` for gRPC.
        method: &'static str,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path} answered {status}")]
    Status {
        method: &'static str,
        path: String,
        status: hyper::StatusCode,
    },
    #[error("call {path} ended with grpc-status {code}")]
    GrpcStatus { path: String, code: u32 },
    #[error("call {path} ended without a grpc-status")]
    NoGrpcStatus { path: String },
    #[error("call {path} did not answer SERVING")]
    NotServing { path: String },
    #[error("GET {path} took longer than {timeout}")]
    Timeout { path: String, timeout: String },
}

/// Why an instance did not pass the health gate.
#[derive(Debug, thiserror::Error)]
pub enum GateError<E: std::error::Error + 'static> {
    /// `alive` said the instance is gone (crashed, exited).
    #[error(transparent)]
    Down(E),
    #[error("not healthy within {within} (last check: {last_check})")]
    Unhealthy {
        within: String,
        /// The last failed check, as text (`no check ran` when none did).
        last_check: String,
    },
}

/// One check of an instance within `timeout`, in the service's protocol: for `http1` and `h2c` a GET of
/// the health path, healthy on any 2xx; for `grpc` a unary call of the method the path names (such as
/// `/grpc.health.v1.Health/Check`) with an empty request, healthy when it ends with `grpc-status` 0 (and,
/// for the standard health method, answers `SERVING`).
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    host: &str,
    timeout: Duration,
    protocol: Protocol,
) -> Result<(), ProbeError> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|source| ProbeError::Connect { addr, source })?;
        match protocol {
            Protocol::Http1 => probe_http1(stream, addr, path, host).await,
            Protocol::H2c | Protocol::Grpc => probe_h2c(stream, addr, path, host, protocol).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            path: path.to_owned(),
            timeout: humantime_short(timeout),
        }),
    }
}

async fn probe_http1(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> Result<(), ProbeError> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProbeError::Handshake {
            handshake: "handshake",
            addr,
            source,
        })?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "rollway-health")
        .body(Empty::<Bytes>::new())
        .map_err(|source| ProbeError::Request {
            path: path.to_owned(),
            source,
        })?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| ProbeError::Exchange {
            method: "GET",
            path: path.to_owned(),
            source,
        })?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(ProbeError::Status {
            method: "GET",
            path: path.to_owned(),
            status,
        })
    }
}

/// The standard gRPC health method; its answer must say `SERVING`.
const GRPC_HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";

async fn probe_h2c(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    host: &str,
    protocol: Protocol,
) -> Result<(), ProbeError> {
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|source| ProbeError::Handshake {
        handshake: "h2c handshake",
        addr,
        source,
    })?;
    let driver = tokio::spawn(connection);
    let uri = format!("http://{host}{path}");
    let request = if protocol == Protocol::Grpc {
        // An empty message: no compression flag, zero length.
        Request::post(&uri)
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .header(hyper::header::USER_AGENT, "rollway-health")
            .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
    } else {
        Request::get(&uri)
            .header(hyper::header::USER_AGENT, "rollway-health")
            .body(Full::new(Bytes::new()))
    }
    .map_err(|source| ProbeError::Request {
        path: path.to_owned(),
        source,
    })?;
    let method = if protocol == Protocol::Grpc {
        "call"
    } else {
        "GET"
    };
    let response = sender
        .send_request(request)
        .await
        .map_err(|source| ProbeError::Exchange {
            method,
            path: path.to_owned(),
            source,
        })?;
    let status = response.status();
    let head_grpc_status = grpc_status(response.headers());
    let collected =
        response
            .into_body()
            .collect()
            .await
            .map_err(|source| ProbeError::Exchange {
                method,
                path: path.to_owned(),
                source,
            })?;
    driver.abort();
    if !status.is_success() {
        return Err(ProbeError::Status {
            method,
            path: path.to_owned(),
            status,
        });
    }
    if protocol != Protocol::Grpc {
        return Ok(());
    }
    let trailer_grpc_status = collected.trailers().and_then(grpc_status);
    match head_grpc_status.or(trailer_grpc_status) {
        Some(0) => {}
        Some(code) => {
            return Err(ProbeError::GrpcStatus {
                path: path.to_owned(),
                code,
            });
        }
        None => {
            return Err(ProbeError::NoGrpcStatus {
                path: path.to_owned(),
            });
        }
    }
    // HealthCheckResponse { status: SERVING } is field 1, varint 1, after the 5-byte message prefix.
    let message = collected.to_bytes();
    if path == GRPC_HEALTH_CHECK && message.get(5..) != Some(&[0x08, 0x01][..]) {
        return Err(ProbeError::NotServing {
            path: path.to_owned(),
        });
    }
    Ok(())
}

fn grpc_status(headers: &hyper::HeaderMap) -> Option<u32> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Waits until `addr` passes `check.healthy` checks in a row. `alive` is asked between checks so a
/// crashed instance fails the gate at once instead of at the timeout.
pub async fn gate<E: std::error::Error + 'static>(
    addr: SocketAddr,
    check: &Check,
    alive: impl FnMut() -> Result<(), E>,
) -> Result<(), GateError<E>> {
    let pace = Pace {
        interval: check.interval,
        healthy: check.healthy,
        start_timeout: check.start_timeout,
    };
    gate_by(&pace, alive, || async {
        probe(
            addr,
            &check.path,
            &check.host,
            check.timeout,
            check.protocol,
        )
        .await
        .map_err(|error| crate::report::chain(&error))
    })
    .await
}

/// How a gate checks: every `interval`, `healthy` passes in a row, within `start_timeout`.
pub struct Pace {
    pub interval: Duration,
    pub healthy: u32,
    pub start_timeout: Duration,
}

/// The one health gate, whatever the check is (an HTTP probe, a worker's command): `check` is
/// run until it passes `pace.healthy` times in a row; `alive` is asked before each check so a
/// crashed instance fails the gate at once instead of at the timeout.
pub async fn gate_by<E, Checked>(
    pace: &Pace,
    mut alive: impl FnMut() -> Result<(), E>,
    mut check: impl FnMut() -> Checked,
) -> Result<(), GateError<E>>
where
    E: std::error::Error + 'static,
    Checked: std::future::Future<Output = Result<(), String>>,
{
    let deadline = tokio::time::Instant::now() + pace.start_timeout;
    let mut passes = 0;
    let mut last_error = String::from("no check ran");
    loop {
        alive().map_err(GateError::Down)?;
        match check().await {
            Ok(()) => {
                passes += 1;
                if passes >= pace.healthy {
                    return Ok(());
                }
            }
            Err(error) => {
                passes = 0;
                last_error = error;
            }
        }
        if tokio::time::Instant::now() + pace.interval > deadline {
            return Err(GateError::Unhealthy {
                within: humantime_short(pace.start_timeout),
                last_check: last_error,
            });
        }
        tokio::time::sleep(pace.interval).await;
    }
}

fn humantime_short(duration: Duration) -> String {
    if duration.as_millis().is_multiple_of(1000) {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests;
