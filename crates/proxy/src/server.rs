//! Listeners: accepts connections (plain or TLS), serves HTTP/1.1 (the proxy's own connection, `h1`) and
//! HTTP/2 (`h2_conn`, over the `h2` crate) on them through `forward`, and enforces the header-read and idle
//! timeouts.
//!
//! The caller binds the listener (tests use `127.0.0.1:0`) and owns the shutdown signal.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes};
use hyper::Request;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::active::ConnectionActivity;
use crate::balance::{Balancer, Counted};
use crate::body::ClientBody;
use crate::control::Proxy;
use crate::forward::{self, ConnectionContext, Scheme};

pub(crate) mod h1;
pub(crate) mod h2_conn;

/// Serves plain HTTP (HTTP/1.1 and h2c) on `listener` until `shutdown` is cancelled, then stops
/// accepting, lets open requests finish, and returns when the last connection has closed.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(listener, proxy, shutdown, None, None).await
}

/// Serves HTTP/1.1 and HTTP/2 over TLS (ALPN `h2`, `http/1.1`) with the given rustls configuration.
pub async fn serve_tls(
    listener: TcpListener,
    proxy: Proxy,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_with(
        listener,
        proxy,
        shutdown,
        Some(tokio_rustls::TlsAcceptor::from(tls)),
        None,
    )
    .await
}

/// Serves HTTPS with the certificates of `proxy.tls()`, chosen by SNI and swapped without a restart
/// (`crate::tls`).
pub async fn serve_https(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tls = https_acceptor(&proxy)?;
    serve_with(listener, proxy, shutdown, Some(tls), None).await
}

fn https_acceptor(proxy: &Proxy) -> io::Result<tokio_rustls::TlsAcceptor> {
    let config = crate::tls::server_config(Arc::clone(proxy.tls())).map_err(io::Error::other)?;
    Ok(tokio_rustls::TlsAcceptor::from(config))
}

/// Every half `upstream_idle_timeout` (0.1 to 1 s), drops this thread's idle upstream
/// connections idle that long, in every instance's pool: after a burst (thousands of clients at
/// once, each request on its own upstream connection), the pools would otherwise keep every
/// connection and its buffers until the next request of the same instance on this thread. On the
/// same tick, collects this thread's heap when it is due (`memory::collect_if_due`).
pub(crate) async fn sweep_idle_upstreams(proxy: Proxy) {
    let timeout = proxy.config().upstream_idle_timeout;
    // Half the timeout: a connection is closed between one and one and a half timeouts idle.
    let every = (timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let expired: usize = proxy
            .instance_lives()
            .iter()
            .map(|instance| instance.connections.expire(timeout))
            .sum();
        if expired > 0 {
            tracing::debug!(message = "Idle upstream connections closed.", n = expired);
            crate::memory::upstream_connections_dropped(expired);
        }
        // The buffers and maps this thread kept for its next requests and did not need for a tick.
        if crate::upstream::h1::trim_spares() {
            crate::memory::freed();
        }
        // This worker's own heap, once it went quiet after freeing (`memory::collect_if_due`).
        crate::memory::collect_if_due(every);
    }
}

/// As `serve` (plain) or `serve_https` (HTTPS, with the certificates of `proxy.tls()`) for one worker of
/// `crate::workers`: the connections it accepts go to the least busy worker when it serves more
/// (`crate::balance`), and it serves those other workers hand it.
pub(crate) async fn serve_balanced(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
    https: bool,
    balancer: Balancer,
) -> io::Result<()> {
    let tls = https.then(|| https_acceptor(&proxy)).transpose()?;
    serve_with(listener, proxy, shutdown, tls, Some(balancer)).await
}

async fn serve_with(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut balancer: Option<Balancer>,
) -> io::Result<()> {
    crate::memory::configure_allocator();
    let config = proxy.config().clone();
    let builder = Arc::new(Builders::new(&config));
    let tracker = TaskTracker::new();
    // A worker thread sweeps its shard once, however many listeners it serves (`crate::workers`).
    let _sweep = (crate::shard::current() == 0).then(|| {
        tokio_util::task::AbortOnDropHandle::new(tokio::spawn(sweep_idle_upstreams(proxy.clone())))
    });
    let scheme = if tls.is_some() {
        Scheme::Https
    } else {
        Scheme::Http
    };
    let serve_one = |stream: TcpStream, client_addr: SocketAddr| {
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            builder: Arc::clone(&builder),
            client_addr,
            shutdown: shutdown.clone(),
            _counted: Counted::taken(),
        };
        match &tls {
            None => {
                tracker.spawn(connection.run(stream, &proxy, scheme, &tracker));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let header_read_timeout = config.header_read_timeout;
                let (proxy, connection_tracker) = (proxy.clone(), tracker.clone());
                tracker.spawn(async move {
                    match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            // A TLS-ALPN-01 validation only looks at the certificate: no HTTP follows.
                            if stream.get_ref().1.alpn_protocol() == Some(crate::tls::ACME_TLS_ALPN) {
                                return;
                            }
                            connection.run(stream, &proxy, scheme, &connection_tracker).await;
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(message = "TLS handshake failed.", %error, client = %client_addr);
                        }
                        Err(_elapsed) => {
                            tracing::debug!(message = "TLS handshake timed out.", client = %client_addr);
                        }
                    }
                });
            }
        }
    };
    loop {
        let (stream, client_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => match &balancer {
                    None => accepted,
                    Some(balancer) => match balancer.place(accepted.0, accepted.1) {
                        Some(here) => here,
                        None => continue,
                    },
                },
                Err(error) => {
                    // Typically EMFILE: back off instead of spinning, and keep serving.
                    tracing::warn!(message = "Accepting a connection failed.", %error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            Some(handed) = async { balancer.as_mut()?.handed().await } => handed,
            () = shutdown.cancelled() => break,
        };
        serve_one(stream, client_addr);
    }
    // Those other workers handed this one before it stopped taking them are served like the rest.
    if let Some(balancer) = &mut balancer {
        for (stream, client_addr) in balancer.close() {
            serve_one(stream, client_addr);
        }
    }
    // Closed now, not after the drain: a connection the kernel completed meanwhile would wait in a
    // backlog nothing accepts (the listener's other holders, if any, keep the socket open for the
    // next proxy: `crate::process`).
    drop(listener);
    tracker.close();
    tracker.wait().await;
    Ok(())
}

/// The limits of the HTTP/1 server (`h1`) and the HTTP/2 one (`h2_conn`), configured once per listener.
/// The protocol is chosen per connection from its first bytes (the HTTP/2 preface or not).
struct Builders {
    http1: h1::HeadLimits,
    http2: h2_conn::Settings,
}

impl Builders {
    fn new(config: &crate::config::ProxyConfig) -> Builders {
        let http1 = h1::HeadLimits {
            max_bytes: config.max_header_bytes,
            max_fields: config.max_request_header_fields,
        };
        Builders {
            http1,
            http2: h2_conn::Settings {
                max_header_list_size: u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX),
            },
        }
    }
}

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How long an HTTP/1 keep-alive connection stays idle before its read and write buffers are released
/// (`h1::ServerConn`); the connection itself stays open, and its next request gets new buffers.
const HTTP1_RELEASE_AFTER: Duration = Duration::from_secs(1);

/// What a connection's task keeps for itself (what its requests need is in `ConnectionContext`).
struct Connection {
    builder: Arc<Builders>,
    client_addr: SocketAddr,
    shutdown: CancellationToken,
    /// This worker's count of the connection (`crate::balance`), given back when the task ends.
    _counted: Counted,
}

impl Connection {
    /// The connection's task.
    ///
    /// Its future is most of what an idle connection costs, so it is kept small (the size is tested):
    /// the socket's state is boxed, the states only a shutdown or HTTP/2 reach are boxed, and this is
    /// not an `async fn` (an `async fn` keeps its arguments beside the locals they are moved into).
    fn run<S>(
        self,
        stream: S,
        proxy: &Proxy,
        scheme: Scheme,
        tracker: &TaskTracker,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Counted for `memory`'s trim after a burst of closes.
        let open = crate::memory::OpenConnection::new();
        let config = proxy.config();
        let activity = Arc::new(ConnectionActivity::default());
        // Boxed: the socket's state moves between this task's frames and the connection that serves it
        // (`h1::ServerConn`, `h2_conn`'s connection), and each place that can hold it would otherwise
        // keep room for all of it in every connection's task.
        let io = Box::new(TimedIo::new(
            stream,
            Arc::clone(&activity),
            config.header_read_timeout,
            config.idle_timeout,
        ));
        let context = Arc::new(ConnectionContext {
            proxy: proxy.clone(),
            client_addr: self.client_addr,
            client_ip: forward::client_ip_value(self.client_addr),
            trusted_peer: config.trusts(self.client_addr.ip()),
            scheme,
            tracker: tracker.clone(),
            closing: AtomicBool::new(false),
            request_id_named: AtomicBool::new(false),
        });
        let mut io = io;
        async move {
            let _open = open;
            // Set when the process stops accepting (`ConnectionContext::closing`).
            let closing = &context.closing;
            // Nothing of hyper's exists until the client's first bytes say which protocol it speaks.
            // A connection accepted just before the process stopped accepting may have its request on
            // the way: it gets the same grace as an idle keep-alive one (its answer then says
            // `connection: close`), rather than being closed under the client. The read goes on across
            // the shutdown (never dropped half-way: a partly read HTTP/2 preface would be lost).
            let http2 = match read_first(&mut io, &self.shutdown, closing).await {
                Some(Ok(Some(http2))) => http2,
                Some(Ok(None)) | None => return,
                Some(Err(error)) => {
                    tracing::debug!(message = "Reading from a connection failed.", %error, client = %self.client_addr);
                    return;
                }
            };
            if http2 {
                // Boxed: HTTP/2's connection state would otherwise size every connection's task, HTTP/1
                // ones included (idle connections are mostly HTTP/1 keep-alive).
                Box::pin(self.serve_http2(io, &context, &activity)).await;
            } else {
                self.serve_http1(io, &context, &activity).await;
            }
        }
    }

    /// Serves HTTP/2 streams (`h2_conn`) until the connection ends; on shutdown, sends GOAWAY (which
    /// clients retry safely) and lets the open streams finish.
    async fn serve_http2<S>(
        &self,
        io: Box<TimedIo<S>>,
        context: &Arc<ConnectionContext>,
        activity: &Arc<ConnectionActivity>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let handshake = h2_conn::builder(self.builder.http2).handshake::<_, Bytes>(io);
        tokio::pin!(handshake);
        let mut closing = false;
        let handshaken = tokio::select! {
            handshaken = &mut handshake => handshaken,
            () = self.shutdown.cancelled() => {
                // GOAWAY needs the connection: it goes once the handshake is done.
                closing = true;
                handshake.await
            }
        };
        let connection = match handshaken {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(message = "HTTP/2 handshake failed.", %error, client = %self.client_addr);
                return;
            }
        };
        let start = |request: Request<ClientBody>| {
            // Counted here, synchronously, so the IO wrapper sees the request before it next reads.
            let active = activity.start();
            crate::memory::request_started();
            // Boxed: the stream set moves the stream's state, and the forwarding future is large (a
            // pointer is cheaper to move). Made in its box (allocated first, then written):
            // `Box::pin(future)` made it on the stack and copied all of it (3.4 KB, most of it not yet
            // in use) into the box.
            Box::into_pin(Box::write(
                Box::new_uninit(),
                forward::handle(request, Arc::clone(context), active),
            ))
        };
        let mut served = h2_conn::Served::new(connection, start);
        let ended = if closing {
            None
        } else {
            tokio::select! {
                result = std::future::poll_fn(|cx| served.poll_connection(cx)) => Some(result),
                () = self.shutdown.cancelled() => None,
            }
        };
        let result = match ended {
            Some(result) => result,
            None => {
                served.graceful_shutdown();
                std::future::poll_fn(|cx| served.poll_connection(cx)).await
            }
        };
        if let Err(error) = result {
            tracing::debug!(message = "Connection ended with an error.", %error, client = %self.client_addr);
        }
        served.finish().await;
    }

    /// Serves HTTP/1 requests with the proxy's own connection (`h1::ServerConn`) until it closes. A
    /// connection idle for `HTTP1_RELEASE_AFTER` gives its buffers back (`TimedIo` asks for it); the
    /// connection itself stays open, and its next request gets new buffers.
    ///
    /// Not an `async fn`, for the size of the connection's task (see `run`).
    fn serve_http1<'a, S>(
        &'a self,
        mut io: Box<TimedIo<S>>,
        context: &'a Arc<ConnectionContext>,
        activity: &'a Arc<ConnectionActivity>,
    ) -> impl Future<Output = ()> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        io.release_after = Some(HTTP1_RELEASE_AFTER);
        async move {
            let closing = &context.closing;
            let idle = AtomicBool::new(false);
            let hooks = h1::Hooks {
                closing,
                idle: &idle,
                activity: Some(activity),
            };
            let service = |request: Request<h1::H1Body>| {
                // Counted here, synchronously, so the IO wrapper sees the request before it next reads.
                let active = activity.start();
                crate::memory::request_started();
                forward::handle(request.map(ClientBody::Http1), Arc::clone(context), active)
            };
            let connection = h1::ServerConn::new(io, self.builder.http1, Bytes::new());
            let serving = connection.serve(service, hooks);
            tokio::pin!(serving);
            let ended = serve_until_shutdown(serving.as_mut(), &self.shutdown, activity).await;
            let ended = match ended {
                Some(ended) => ended,
                None => {
                    closing.store(true, Ordering::Relaxed);
                    // Boxed, as every state only a shutdown reaches.
                    match Box::pin(drain_http1(serving.as_mut(), &idle)).await {
                        Some(ended) => ended,
                        None => return,
                    }
                }
            };
            if let h1::Ended::Failed(error) = ended {
                tracing::debug!(message = "Connection ended with an error.", %error, client = %self.client_addr);
            }
        }
    }
}

/// Polls `serving` until it ends (`Some`) or `shutdown` is cancelled (`None`).
///
/// The shutdown's wait is polled only when it woke the task (through `activity`'s waker,
/// `ConnectionActivity::shutdown_woken`), not at every wake-up of the connection's task as a `select!`
/// would: each poll of it takes the token's lock (its `is_cancelled`) and the lock of its waiter list,
/// and the task wakes about three times per keep-alive request.
///
/// Not an `async fn`, and the wait boxed, for the size of the connection's task (see `run`).
fn serve_until_shutdown<'a, F: Future<Output = h1::Ended>>(
    mut serving: Pin<&'a mut F>,
    shutdown: &'a CancellationToken,
    activity: &'a Arc<ConnectionActivity>,
) -> impl Future<Output = Option<h1::Ended>> + 'a {
    let mut cancelled = Box::pin(shutdown.cancelled());
    // The task's waker as last registered; `None` before the first poll.
    let mut registered: Option<std::task::Waker> = None;
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(ended) = serving.as_mut().poll(cx) {
            return Poll::Ready(Some(ended));
        }
        // Registered before the flag is read: a shutdown after the read wakes this task again. (A
        // task's waker rarely changes: compared, not registered again, at each poll.)
        let first = registered.is_none();
        if !registered
            .as_ref()
            .is_some_and(|known| known.will_wake(cx.waker()))
        {
            activity.shutdown_task.register(cx.waker());
            registered = Some(cx.waker().clone());
        }
        if first || activity.take_shutdown_woken() {
            let waker = std::task::Waker::from(Arc::clone(activity));
            if cancelled
                .as_mut()
                .poll(&mut Context::from_waker(&waker))
                .is_ready()
            {
                return Poll::Ready(None);
            }
        }
        Poll::Pending
    })
}

/// After the process stopped accepting: an HTTP/1 connection gets its next answer with
/// `connection: close`; only one that stays idle through the grace, or is idle after it, is closed
/// under the client (`None`).
async fn drain_http1<F: Future<Output = h1::Ended>>(
    mut serving: Pin<&mut F>,
    idle: &AtomicBool,
) -> Option<h1::Ended> {
    tokio::select! {
        ended = serving.as_mut() => return Some(ended),
        () = tokio::time::sleep(HTTP1_DRAIN_GRACE) => {}
    }
    std::future::poll_fn(|cx| {
        if let Poll::Ready(ended) = serving.as_mut().poll(cx) {
            return Poll::Ready(Some(ended));
        }
        if idle.load(Ordering::Relaxed) {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// Reads a new connection's first bytes (`TimedIo::read_ahead` with `sniff`), across a shutdown too;
/// `None` when the process stopped accepting and they did not come within the grace. A function of its
/// own so that its states overlap the serving ones in the connection's task.
async fn read_first<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut TimedIo<S>,
    shutdown: &CancellationToken,
    closing: &AtomicBool,
) -> Option<io::Result<Option<bool>>> {
    let read = io.read_ahead(true);
    tokio::pin!(read);
    tokio::select! {
        first = &mut read => Some(first),
        () = shutdown.cancelled() => {
            closing.store(true, Ordering::Relaxed);
            // Boxed, as every state only a shutdown reaches: the timer would size every task.
            Box::pin(tokio::time::timeout(HTTP1_DRAIN_GRACE, &mut read)).await.ok()
        }
    }
}

/// How long an HTTP/1 keep-alive connection may stay idle after the process stopped accepting before
/// it is closed: a client sending meanwhile is answered (with `connection: close`) instead of finding
/// the connection closed under it.
const HTTP1_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// The downstream socket with the two timers a silent client needs: a header-read timeout (answered 408
/// when part of a request head arrived, closed silently when nothing did) and an idle timeout between
/// requests. Both sleep while a request is in progress (`ConnectionActivity`); body read timeouts are the
/// request body's job.
struct TimedIo<S> {
    inner: S,
    activity: Arc<ConnectionActivity>,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    phase: Phase,
    protocol: Protocol,
    sleep: Pin<Box<Sleep>>,
    // Bytes of the 408 answer still to write, once the header-read timeout fired.
    timeout_answer: Option<&'static [u8]>,
    // Interim answer bytes taken from `ConnectionActivity::interim` and partly written.
    interim_out: Vec<u8>,
    // Whether hyper wrote bytes it has not flushed since. Hyper flushes only once its own buffer is
    // empty, so after a successful flush nothing of an earlier answer can still follow: only then may an
    // interim answer go out.
    unflushed: bool,
    // Whether the last write or flush could not go through: hyper then still holds answer bytes.
    write_blocked: bool,
    // Bytes read but not yet given to the connection that serves them (the first bytes that chose the
    // protocol); returned before the socket is read again.
    rewind: Bytes,
    // For HTTP/1: how long an idle keep-alive connection waits before it asks its server to release its
    // buffers (`ConnectionActivity::take_idle_release`, taken by `h1::ServerConn`).
    release_after: Option<Duration>,
    // Whether the idle timer is set to `release_after` rather than the idle timeout.
    release_armed: bool,
    idle_deadline: Instant,
    // When the current phase's timeout falls due. The timer (`sleep`) is moved only when this comes
    // earlier than where it is set (`timer_at`); a later deadline is only written down, and a timer that
    // fires before it is set again to it (`poll_deadline`). A keep-alive request moves the deadline
    // twice (the idle or release time after its answer, the header-read timeout at its first byte), and
    // each later than the last: the timer is then reset about once per `release_after` instead of twice
    // per request.
    deadline: Instant,
    timer_at: Instant,
    // The waker the timer holds since its last poll (`None` after it moved): polling it again for the
    // same task before it fires changes nothing, and cost ~120 instructions per request.
    timer_waker: Option<std::task::Waker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head; `started` once some byte of it arrived.
    Header { started: bool },
    /// Between requests on a keep-alive connection.
    Idle,
    /// A request is in progress.
    Busy,
    /// The timeout fired; the connection reads as closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    Http2,
}

const REQUEST_TIMEOUT_ANSWER: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 20\r\nconnection: close\r\n\r\n408 Request Timeout\n";

impl<S> TimedIo<S> {
    fn new(
        inner: S,
        activity: Arc<ConnectionActivity>,
        header_read_timeout: Duration,
        idle_timeout: Duration,
    ) -> Self {
        let deadline = Instant::now() + header_read_timeout;
        TimedIo {
            inner,
            activity,
            header_read_timeout,
            idle_timeout,
            phase: Phase::Header { started: false },
            protocol: Protocol::Unknown,
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            timeout_answer: None,
            interim_out: Vec::new(),
            unflushed: false,
            write_blocked: false,
            rewind: Bytes::new(),
            release_after: None,
            release_armed: false,
            idle_deadline: deadline,
            deadline,
            timer_at: deadline,
            timer_waker: None,
        }
    }

    /// Sets when the current phase's timeout falls due; the timer itself moves only when it would fire
    /// too late.
    fn set_deadline(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if deadline < self.timer_at {
            self.timer_at = deadline;
            self.sleep.as_mut().reset(deadline);
            self.timer_waker = None;
        }
    }

    /// Ready once `deadline` has passed. A timer that fired for an earlier deadline is set again to the
    /// current one.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.sleep.is_elapsed()
            && self
                .timer_waker
                .as_ref()
                .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        loop {
            // Unconstrained: a timer out of the task's budget would answer `Pending` without holding
            // the waker, and not be polled again.
            if std::pin::pin!(tokio::task::unconstrained(self.sleep.as_mut()))
                .poll(cx)
                .is_pending()
            {
                self.timer_waker = Some(cx.waker().clone());
                return Poll::Pending;
            }
            // It fired at `timer_at`, so every deadline up to that has passed.
            if self.deadline <= self.timer_at {
                return Poll::Ready(());
            }
            self.timer_at = self.deadline;
            self.sleep.as_mut().reset(self.deadline);
            self.timer_waker = None;
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TimedIo<S> {
    /// Reads the client's next bytes into `rewind` (given back by the next reads) without hyper's
    /// buffers: `None` when the connection ended first. With `sniff`, reads until the bytes either are
    /// the HTTP/2 preface (`Some(true)`) or cannot be (`Some(false)`).
    async fn read_ahead(&mut self, sniff: bool) -> io::Result<Option<bool>> {
        let mut buf = [0u8; H2_PREFACE.len()];
        let mut filled = 0;
        while filled < buf.len() {
            let read = std::future::poll_fn(|cx| {
                let mut read_buf = ReadBuf::new(&mut buf[filled..]);
                ready!(Pin::new(&mut *self).poll_read(cx, &mut read_buf))?;
                Poll::Ready(Ok::<_, io::Error>(read_buf.filled().len()))
            })
            .await?;
            if read == 0 {
                break;
            }
            filled += read;
            if !sniff || !H2_PREFACE.starts_with(&buf[..filled]) {
                break;
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        self.rewind = Bytes::copy_from_slice(&buf[..filled]);
        Ok(Some(&buf[..filled] == H2_PREFACE))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.phase == Phase::Closed {
            return Poll::Ready(Ok(()));
        }
        if let Some(remaining) = this.timeout_answer {
            return this.poll_write_timeout_answer(cx, remaining);
        }
        if !this.rewind.is_empty() {
            // Counted by the timers when they were read.
            let n = buf.remaining().min(this.rewind.len());
            buf.put_slice(&this.rewind[..n]);
            this.rewind.advance(n);
            return Poll::Ready(Ok(()));
        }
        // Errors and back-pressure show up again on hyper's own next write.
        let _ = this.poll_interim(cx);
        if this.activity.active.load(Ordering::Acquire) > 0 {
            this.phase = Phase::Busy;
            this.activity.reader.register(cx.waker());
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        if this.phase == Phase::Busy {
            this.phase = Phase::Idle;
            let now = Instant::now();
            this.idle_deadline = now + this.idle_timeout;
            match this.release_after {
                Some(after) if after < this.idle_timeout => {
                    this.release_armed = true;
                    this.set_deadline(now + after);
                }
                _ => this.set_deadline(this.idle_deadline),
            }
        }
        let filled_before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[filled_before..];
                if !read.is_empty() {
                    if this.protocol == Protocol::Unknown {
                        this.protocol = if read.starts_with(b"PRI ") {
                            Protocol::Http2
                        } else {
                            Protocol::Http1
                        };
                    }
                    match (this.phase, this.protocol) {
                        // Until its first request, an HTTP/2 connection is held to the header-read
                        // timeout as an HTTP/1.1 one is: a preface and settings are not a request.
                        (Phase::Header { .. }, Protocol::Http2) => {
                            this.phase = Phase::Header { started: true };
                        }
                        // HTTP/2 frames between streams (pings, window updates) are not a request head.
                        (_, Protocol::Http2) => {}
                        (Phase::Idle, _) => {
                            this.phase = Phase::Header { started: true };
                            this.release_armed = false;
                            this.set_deadline(Instant::now() + this.header_read_timeout);
                        }
                        (Phase::Header { .. }, _) => this.phase = Phase::Header { started: true },
                        _ => {}
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                // Registers the waker for the last request's end too, in case it is still being dropped.
                this.activity.reader.register(cx.waker());
                if this.activity.active.load(Ordering::Acquire) > 0 {
                    return Poll::Pending;
                }
                if this.poll_deadline(cx).is_pending() {
                    return Poll::Pending;
                }
                if this.release_armed {
                    // Idle long enough: ask the connection to leave hyper (unless hyper still holds
                    // answer bytes), and keep the idle timeout.
                    this.release_armed = false;
                    if this.phase == Phase::Idle
                        && !this.write_blocked
                        && !this.unflushed
                        && this.interim_out.is_empty()
                    {
                        this.activity.release_idle();
                        cx.waker().wake_by_ref();
                    }
                    this.deadline = this.idle_deadline;
                    if this.poll_deadline(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                match this.phase {
                    Phase::Header { started: true } if this.protocol == Protocol::Http1 => {
                        this.poll_write_timeout_answer(cx, REQUEST_TIMEOUT_ANSWER)
                    }
                    _ => {
                        this.phase = Phase::Closed;
                        Poll::Ready(Ok(()))
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TimedIo<S> {
    /// Writes queued interim answers, when no byte of an earlier answer can still follow them.
    fn poll_interim(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.interim_out.is_empty() {
            if self.unflushed || !self.activity.interim_queued.load(Ordering::Acquire) {
                return Poll::Ready(Ok(()));
            }
            let mut queued = self
                .activity
                .interim
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            self.activity.interim_queued.store(false, Ordering::Relaxed);
            if queued.is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.interim_out = std::mem::take(&mut *queued);
        }
        while !self.interim_out.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, &self.interim_out) {
                Poll::Ready(Ok(0)) => {
                    self.interim_out.clear();
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(n)) => {
                    self.interim_out.drain(..n);
                }
                Poll::Ready(Err(error)) => {
                    self.interim_out.clear();
                    return Poll::Ready(Err(error));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    /// Notes whether a write or flush is blocked (hyper then holds bytes it has not written yet).
    fn track_blocked<T>(&mut self, poll: Poll<T>) -> Poll<T> {
        self.write_blocked = poll.is_pending();
        poll
    }

    /// Before hyper writes: finish an interim answer on the wire, or drop queued ones that can no longer
    /// be ordered before the final answer.
    fn poll_before_write(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.unflushed && self.interim_out.is_empty() {
            if self.activity.interim_queued.load(Ordering::Acquire) {
                let mut queued = self
                    .activity
                    .interim
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.activity.interim_queued.store(false, Ordering::Relaxed);
                queued.clear();
            }
            return Poll::Ready(Ok(()));
        }
        self.poll_interim(cx)
    }

    /// Writes the 408 answer straight to the socket (hyper is between messages, writing nothing), then
    /// reports end of stream so hyper closes the connection.
    fn poll_write_timeout_answer(
        &mut self,
        cx: &mut Context<'_>,
        mut remaining: &'static [u8],
    ) -> Poll<io::Result<()>> {
        while !remaining.is_empty() {
            match Pin::new(&mut self.inner).poll_write(cx, remaining) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => break,
                Poll::Ready(Ok(n)) => remaining = &remaining[n..],
                Poll::Pending => {
                    self.timeout_answer = Some(remaining);
                    return Poll::Pending;
                }
            }
        }
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        self.timeout_answer = None;
        self.phase = Phase::Closed;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_before_write(cx))?;
        let written = {
            let poll = Pin::new(&mut this.inner).poll_write(cx, buf);
            this.track_blocked(poll)
        };
        let written = ready!(written)?;
        this.unflushed |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        ready!(this.poll_before_write(cx))?;
        let written = {
            let poll = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
            this.track_blocked(poll)
        };
        let written = ready!(written)?;
        this.unflushed |= written > 0;
        Poll::Ready(Ok(written))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let flushed = {
            let poll = Pin::new(&mut this.inner).poll_flush(cx);
            this.track_blocked(poll)
        };
        ready!(flushed)?;
        this.unflushed = false;
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
