//! The control API under `/v1`: every route and its role in `router.rs`, one error type, one
//! authentication layer, and the server that bounds what a client may hold: a capped number of
//! connections, headers within a deadline, bodies that keep moving.
//!
//! Beyond loopback it serves over TLS only (`tls.rs`: the certificate, and the rule that decides);
//! a failed handshake is logged and never reaches the router.

pub mod agent;
pub mod artifacts;
pub mod auth;
pub mod backups;
pub mod backups_remote;
pub mod certs;
pub mod deployments;
pub mod edge;
pub mod error;
pub mod events;
pub mod ingress;
pub mod input;
pub mod locks;
pub mod logs;
pub mod previews;
pub mod releases;
pub mod router;
pub mod secrets;
pub mod status;
pub mod tls;
pub mod tokens;
pub mod views;
pub mod workloads;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::Engine;

/// What one client may hold of the API server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request's head (line and headers) must arrive within this, counted from the
    /// connection's start or the end of the previous answer: slow and idle clients are cut off.
    pub header_timeout: Duration,
    /// Largest request head.
    pub max_header_bytes: usize,
    /// A request body that sends nothing for this long fails.
    pub body_idle_timeout: Duration,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long shutdown waits for open connections (event streams never end by themselves).
    pub shutdown_grace: Duration,
}

impl Limits {
    /// The defaults, with the connection cap taken from the file descriptor limit: half of it
    /// stays in reserve for the store, instance logs, the proxy's socket and child processes.
    pub fn from_fd_limit() -> Limits {
        let fd_limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        Limits {
            header_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            body_idle_timeout: Duration::from_secs(30),
            max_connections: connection_cap(fd_limit),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Half the file descriptor limit, between 4 and 1024.
pub fn connection_cap(fd_limit: Option<u64>) -> usize {
    let half = fd_limit.map_or(u64::MAX, |limit| limit / 2);
    usize::try_from(half.clamp(4, 1024)).unwrap_or(1024)
}

/// Serves the API on `listener` until `shutdown` fires. The caller binds (tests use port 0).
pub async fn serve(
    listener: TcpListener,
    engine: Arc<Engine>,
    tls: Option<tls::ApiTls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = Limits::from_fd_limit();
    tracing::info!(
        message = "API limits.",
        max_connections = limits.max_connections,
        header_timeout_ms = u64::try_from(limits.header_timeout.as_millis()).unwrap_or(u64::MAX)
    );
    let trends = Arc::new(crate::dashboard::Trends::default());
    tokio::spawn(crate::dashboard::trends::run(
        engine.clone(),
        trends.clone(),
    ));
    let app =
        router::router_with_trends(engine, trends).layer(axum::middleware::from_fn(log_request));
    let acceptor = tls.map(|tls| tls.acceptor);
    serve_router_tls(listener, app, limits, acceptor, shutdown).await
}

/// Serves `app` under `limits` in plain HTTP: the accept loop, one task per connection.
pub async fn serve_router(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    serve_router_tls(listener, app, limits, None, shutdown).await
}

/// [`serve_router`], over TLS when `tls` is given: the handshake must end within the header
/// deadline, and a failed one ends the connection before any request is read.
pub async fn serve_router_tls(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = app.layer(axum::middleware::from_fn(move |request, next| {
        limit_body(limits.body_idle_timeout, request, next)
    }));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors (EMFILE) or a connection reset before accept: wait
                    // a little rather than spin.
                    tracing::warn!(message = "Cannot accept an API connection.", %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // Progress events are small writes: without TCP_NODELAY, Nagle and the client's delayed
        // ACK hold each one ~40 ms (measured in bench/deploy).
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            match tls {
                None => serve_connection(tcp, peer, app, limits, shutdown).await,
                Some(acceptor) => {
                    match tokio::time::timeout(limits.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            serve_connection(stream, peer, app, limits, shutdown).await;
                        }
                        // A client that does not trust the certificate (a pin that differs), or
                        // one speaking plain HTTP: nothing of it reaches the router.
                        Ok(Err(error)) => tracing::warn!(
                            message = "API TLS handshake failed.",
                            peer = %peer,
                            %error
                        ),
                        Err(_) => tracing::warn!(
                            message = "API TLS handshake timed out.",
                            peer = %peer
                        ),
                    }
                }
            }
            drop(permit);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(limits.shutdown_grace, connections.wait()).await;
    Ok(())
}

/// One connection: the first head under our own deadline (so a slow client gets a 408 in the
/// envelope), then hyper, whose header timeout also closes a connection left idle.
async fn serve_connection<S: Io>(
    mut tcp: S,
    peer: std::net::SocketAddr,
    app: Router,
    limits: Limits,
    shutdown: CancellationToken,
) {
    let head = match read_head(&mut tcp, &limits).await {
        Ok(head) => head,
        Err(HeadError::Closed) => return,
        Err(HeadError::TimedOut) => {
            let message = format!(
                "the request head did not arrive within {} ms",
                limits.header_timeout.as_millis()
            );
            let _ = write_refusal(&mut tcp, "408 Request Timeout", "timeout", &message).await;
            return;
        }
        Err(HeadError::TooLarge) => {
            let message = format!(
                "the request head is larger than {} bytes",
                limits.max_header_bytes
            );
            let _ = write_refusal(
                &mut tcp,
                "431 Request Header Fields Too Large",
                "too_large",
                &message,
            )
            .await;
            return;
        }
    };
    let io = TokioIo::new(Prefixed {
        prefix: head,
        read: 0,
        inner: tcp,
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    // Upgrades: `rollway run -i` turns its connection into a terminal session.
    // Each request carries the peer's address (`ConnectInfo`), which sign-in counts failures by.
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        hyper::service::Service::call(&app, request)
    });
    let connection = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => {}
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// A connection the API serves: TCP, or TLS over TCP.
trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for S {}

/// One line per API request (method, path, status), after the answer: what arrived, never a
/// header or a body (tokens and secret values travel there).
async fn log_request(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    tracing::info!(
        message = "API request.",
        method = %method,
        path = %path,
        status = response.status().as_u16()
    );
    response
}

enum HeadError {
    Closed,
    TimedOut,
    TooLarge,
}

/// Reads until the end of the first request head (an empty line), within the header deadline.
async fn read_head<S: Io>(tcp: &mut S, limits: &Limits) -> Result<Vec<u8>, HeadError> {
    let deadline = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(deadline);
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        tokio::select! {
            read = tcp.read(&mut chunk) => match read {
                Ok(0) | Err(_) => return Err(HeadError::Closed),
                Ok(n) => {
                    let scan_from = head.len().saturating_sub(3);
                    head.extend_from_slice(&chunk[..n]);
                    if ends_head(&head[scan_from..]) {
                        return Ok(head);
                    }
                    if head.len() > limits.max_header_bytes {
                        return Err(HeadError::TooLarge);
                    }
                }
            },
            () = &mut deadline => return Err(HeadError::TimedOut),
        }
    }
}

/// Whether `bytes` hold the blank line that ends a head (`\r\n\r\n`, or bare `\n\n`).
fn ends_head(bytes: &[u8]) -> bool {
    bytes.windows(2).enumerate().any(|(idx, pair)| {
        pair == b"\n\n" || (pair == b"\n\r" && bytes.get(idx + 2) == Some(&b'\n'))
    })
}

/// An answer written before hyper has the connection, in the error envelope, then close.
async fn write_refusal<S: Io>(
    tcp: &mut S,
    status_line: &str,
    code: &str,
    message: &str,
) -> std::io::Result<()> {
    let body = serde_json::to_string(&client::wire::ErrorBody {
        error: client::wire::ErrorDetail {
            code: code.to_owned(),
            message: message.to_owned(),
        },
    })
    .unwrap_or_default();
    let answer = format!(
        "HTTP/1.1 {status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(answer.as_bytes()).await?;
    tcp.shutdown().await
}

/// A stream whose first bytes were already read: they are read again first.
struct Prefixed<S> {
    prefix: Vec<u8>,
    read: usize,
    inner: S,
}

impl<S: Io> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let rest = &this.prefix[this.read..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: Io> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A layer: every request body fails once nothing of it arrived for `idle`, and the answer is
/// then a 408 in the envelope, whatever the handler made of the failed read.
async fn limit_body(idle: Duration, request: Request, next: Next) -> Response {
    let stalled = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| {
        Body::new(IdleTimeoutBody {
            inner: body,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            stalled: stalled.clone(),
        })
    });
    let response = next.run(request).await;
    if stalled.load(Ordering::Relaxed) && !response.status().is_success() {
        return error::ApiError::new(
            error::Kind::Timeout,
            "timeout",
            BodyStalled(idle).to_string(),
        )
        .into_response();
    }
    response
}

/// A request body that keeps a deadline: `idle` after the last part that arrived.
struct IdleTimeoutBody {
    inner: Body,
    idle: Duration,
    timer: Pin<Box<tokio::time::Sleep>>,
    /// Set when the deadline passed, for `limit_body`'s answer.
    stalled: Arc<AtomicBool>,
}

/// The error of a body that stopped arriving.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {} ms", .0.as_millis())]
struct BodyStalled(Duration);

impl hyper::body::Body for IdleTimeoutBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next_deadline = tokio::time::Instant::now() + this.idle;
                this.timer.as_mut().reset(next_deadline);
                Poll::Ready(frame)
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    this.stalled.store(true, Ordering::Relaxed);
                    Poll::Ready(Some(Err(axum::Error::new(BodyStalled(this.idle)))))
                }
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
