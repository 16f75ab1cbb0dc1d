//! Active health checks: an HTTP GET of the health path on an instance, and the gate that waits for
//! N consecutive passes per instance.
//!
//! The check sends the route's first host (or `health.host`) as Host, so apps that filter hosts
//! (Django ALLOWED_HOSTS, Rails host authorization) answer the check as they answer users.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::rt::TokioIo;
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
}

/// One GET of the health path; Ok for any 2xx answer within `timeout`.
pub async fn probe(
    addr: SocketAddr,
    path: &str,
    host: &str,
    timeout: Duration,
) -> Result<(), String> {
    let attempt = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|error| format!("connect to {addr}: {error}"))?;
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
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "GET {path} took longer than {}",
            humantime_short(timeout)
        )),
    }
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
        match probe(addr, &check.path, &check.host, check.timeout).await {
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
