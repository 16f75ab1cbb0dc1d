//! Connections from the proxy to instances: a small per-instance pool of HTTP/1.1 keep-alive connections,
//! and sending one request with the information needed to decide on a retry.
//!
//! It does not choose instances nor decide retries (see `forward`); it only reports whether the request
//! came back unsent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::body::RequestBody;
use crate::config::{ProxyConfig, RouteSettings};
use crate::error::ProxyError;
use crate::instance::InstanceLive;

/// Idle keep-alive connections of one instance, kept apart per worker thread (`crate::workers`): a
/// connection's driver task runs on the thread that opened it, so a request that takes a connection from
/// its own thread's shard never hands off to another thread. Threads that are not workers (a
/// multi-thread runtime serving through `serve`) share shard 0.
#[derive(Debug)]
pub(crate) struct ConnectionPool {
    // std Mutex: the critical section is a push or pop on a Vec, never held across an await, and per
    // instance and thread, so it is uncontended but for non-worker threads sharing shard 0.
    shards: Box<[Mutex<Vec<IdleConnection>>]>,
}

impl Default for ConnectionPool {
    fn default() -> ConnectionPool {
        ConnectionPool {
            shards: (0..crate::workers::shard_count())
                .map(|_| Mutex::default())
                .collect(),
        }
    }
}

/// A connection that has carried a request and can carry another once its answer is read.
pub(crate) type Sender = http1::SendRequest<RequestBody>;

/// A failed send. `request` is the request given back when nothing of it reached the instance.
pub(crate) struct SendFailure {
    pub(crate) error: ProxyError,
    pub(crate) request: Option<Request<RequestBody>>,
}

#[derive(Debug)]
struct IdleConnection {
    sender: Sender,
    idle_since: Instant,
}

impl ConnectionPool {
    /// Takes the most recently used connection that is still open and young enough.
    fn checkout(&self, idle_timeout: Duration) -> Option<Sender> {
        let now = Instant::now();
        let mut idle = self
            .shard()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(connection) = idle.pop() {
            if now.duration_since(connection.idle_since) < idle_timeout
                && !connection.sender.is_closed()
            {
                return Some(connection.sender);
            }
        }
        None
    }

    /// Keeps `sender` for reuse on this thread; `max_idle` bounds the instance's idle connections over
    /// all shards (each gets its share, at least one).
    pub(crate) fn checkin(&self, sender: Sender, max_idle: usize) {
        if sender.is_closed() {
            return;
        }
        let max_idle = max_idle.div_ceil(self.shards.len());
        if max_idle == 0 {
            return;
        }
        let mut idle = self
            .shard()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() >= max_idle {
            // Drop the oldest: it is the likeliest to be closed by the app's keep-alive timeout.
            idle.remove(0);
        }
        idle.push(IdleConnection {
            sender,
            idle_since: Instant::now(),
        });
    }

    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .clear();
        }
    }

    fn shard(&self) -> &Mutex<Vec<IdleConnection>> {
        &self.shards[crate::workers::current() % self.shards.len()]
    }
}

/// Sends `request` to `instance`, on a pooled connection when one is ready, else on a new one. Returns the
/// response head and the connection, to be checked in once the response body has been read.
///
/// A pooled connection the app closed in the meantime gives the request back unsent; the next pooled or a
/// new connection is then tried, which is always safe.
pub(crate) async fn send(
    instance: &Arc<InstanceLive>,
    mut request: Request<RequestBody>,
    config: &ProxyConfig,
    settings: &RouteSettings,
    upgrade: bool,
) -> Result<(Response<Incoming>, Sender), SendFailure> {
    loop {
        let pooled = if upgrade {
            None
        } else {
            instance.connections.checkout(config.upstream_idle_timeout)
        };
        let reused = pooled.is_some();
        let mut sender = match pooled {
            Some(sender) => sender,
            None => match connect(instance, config, settings).await {
                Ok(sender) => sender,
                Err(error) => {
                    return Err(SendFailure {
                        error,
                        request: Some(request),
                    });
                }
            },
        };
        if reused && sender.ready().await.is_err() {
            continue;
        }
        let sent = tokio::time::timeout(settings.timeout, sender.try_send_request(request)).await;
        match sent {
            Ok(Ok(response)) => return Ok((response, sender)),
            Ok(Err(mut failure)) => match failure.take_message() {
                Some(unsent) if reused => request = unsent,
                unsent => {
                    return Err(SendFailure {
                        error: ProxyError::Upstream {
                            instance: instance.id().clone(),
                            addr: instance.addr(),
                            source: failure.into_error(),
                        },
                        request: unsent,
                    });
                }
            },
            Err(_elapsed) => {
                return Err(SendFailure {
                    error: ProxyError::UpstreamTimeout {
                        instance: instance.id().clone(),
                        addr: instance.addr(),
                        timeout: settings.timeout,
                    },
                    request: None,
                });
            }
        }
    }
}

/// Opens a new HTTP/1.1 connection to the instance. Its driver task ends when the connection closes or
/// the instance is cut.
async fn connect(
    instance: &Arc<InstanceLive>,
    config: &ProxyConfig,
    settings: &RouteSettings,
) -> Result<Sender, ProxyError> {
    let connect_error = |source| ProxyError::Connect {
        instance: instance.id().clone(),
        addr: instance.addr(),
        source,
    };
    let stream = match tokio::time::timeout(
        config.upstream_connect_timeout,
        TcpStream::connect(instance.addr()),
    )
    .await
    {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(connect_error(error)),
        Err(_elapsed) => return Err(connect_error(std::io::ErrorKind::TimedOut.into())),
    };
    // Requests and small answers are single writes; Nagle would add up to 40 ms to each.
    let _ = stream.set_nodelay(true);
    let (sender, connection) = http1::Builder::new()
        .max_headers(settings.max_header_fields)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream {
            instance: instance.id().clone(),
            addr: instance.addr(),
            source,
        })?;
    let cut = instance.cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = connection.with_upgrades() => {}
            () = cut.cancelled() => {}
        }
    });
    Ok(sender)
}
