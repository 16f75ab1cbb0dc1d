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
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| format!("connect to {addr}: {error}"))?;
        match protocol {
            Protocol::Http1 => probe_http1(stream, addr, path, host).await,
            Protocol::H2c | Protocol::Grpc => probe_h2c(stream, addr, path, host, protocol).await,
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "GET {path} took longer than {}",
            humantime_short(timeout)
        )),
    }
}

async fn probe_http1(
    stream: TcpStream,
    addr: SocketAddr,
    path: &str,
    host: &str,
) -> Result<(), String> {
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|error| format!("handshake with {addr}: {error}"))?;
    let driver = tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "rollway-health")
        .body(Empty::<Bytes>::new())
        .map_err(|error| format!("health request for `{path}`: {error}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("GET {path}: {error}"))?;
    let status = response.status();
    let _ = response.into_body().collect().await;
    driver.abort();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {status}"))
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
) -> Result<(), String> {
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(stream),
    )
    .await
    .map_err(|error| format!("h2c handshake with {addr}: {error}"))?;
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
    .map_err(|error| format!("health request for `{path}`: {error}"))?;
    let method = if protocol == Protocol::Grpc {
        "call"
    } else {
        "GET"
    };
    let response = sender
        .send_request(request)
        .await
        .map_err(|error| format!("{method} {path}: {error}"))?;
    let status = response.status();
    let head_grpc_status = grpc_status(response.headers());
    let collected = response
        .into_body()
        .collect()
        .await
        .map_err(|error| format!("{method} {path}: {error}"))?;
    driver.abort();
    if !status.is_success() {
        return Err(format!("{method} {path} answered {status}"));
    }
    if protocol != Protocol::Grpc {
        return Ok(());
    }
    let trailer_grpc_status = collected.trailers().and_then(grpc_status);
    match head_grpc_status.or(trailer_grpc_status) {
        Some(0) => {}
        Some(code) => return Err(format!("call {path} ended with grpc-status {code}")),
        None => return Err(format!("call {path} ended without a grpc-status")),
    }
    // HealthCheckResponse { status: SERVING } is field 1, varint 1, after the 5-byte message prefix.
    let message = collected.to_bytes();
    if path == GRPC_HEALTH_CHECK && message.get(5..) != Some(&[0x08, 0x01][..]) {
        return Err(format!("call {path} did not answer SERVING"));
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
pub async fn gate(
    addr: SocketAddr,
    check: &Check,
    mut alive: impl FnMut() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + check.start_timeout;
    let mut passes = 0;
    let mut last_error = String::from("no check ran");
    loop {
        alive()?;
        match probe(
            addr,
            &check.path,
            &check.host,
            check.timeout,
            check.protocol,
        )
        .await
        {
            Ok(()) => {
                passes += 1;
                if passes >= check.healthy {
                    return Ok(());
                }
            }
            Err(error) => {
                passes = 0;
                last_error = error;
            }
        }
        if tokio::time::Instant::now() + check.interval > deadline {
            return Err(format!(
                "not healthy within {} (last check: {last_error})",
                humantime_short(check.start_timeout)
            ));
        }
        tokio::time::sleep(check.interval).await;
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
