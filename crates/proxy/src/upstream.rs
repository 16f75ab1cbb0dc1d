//! Connections from the proxy to instances: a small per-instance pool of HTTP/1.1 keep-alive connections,
//! or one shared multiplexed HTTP/2 (h2c) connection per instance and worker, and sending one request with
//! the information needed to decide on a retry.
//!
//! HTTP/1 requests go on the proxy's own client (`h1`), driven by the request's task; h2c requests and
//! HTTP/1 upgrades on hyper's.
//!
//! It does not choose instances nor decide retries (see `forward`); it only reports whether the request
//! came back unsent.

pub(crate) mod h1;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::Body;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::active::InterimSender;
use crate::body::{RequestBody, UpstreamBody};
use crate::config::{ProxyConfig, RouteSettings, UpstreamProtocol};
use crate::error::{ProxyError, UpstreamError};
use crate::instance::InstanceLive;

pub(crate) use h1::MAX_HEAD_BYTES;

/// Idle keep-alive connections of one instance, kept apart per worker thread (`crate::workers`): a
/// connection is used by the task of the request that took it, so one taken from its own thread's shard
/// is served on the thread that opened it. Threads that are not workers (a multi-thread runtime serving
/// through `serve`) share shard 0.
#[derive(Debug)]
pub(crate) struct ConnectionPool {
    // std Mutex: the critical section is a push or pop on a VecDeque, never held across an await, and per
    // instance and thread, so it is uncontended but for non-worker threads sharing shard 0.
    shards: Box<[Mutex<IdleShard>]>,
    // The h2c connection of each shard, for routes whose instances speak HTTP/2. std Mutex: a clone or a
    // replacement of the handle, never held across an await.
    shared_h2: Box<[Mutex<Option<Http2Sender>>]>,
}

/// The idle HTTP/1 connections of one shard. Oldest at the front: taken from the front too (the one idle
/// longest) and expired from the front, so every connection a steady load needs is reused well within
/// `upstream_idle_timeout`. Taking the most recently used instead left the bottom of the stack idle
/// whenever the number in flight dipped for a moment (an HTTP/2 client's hundred streams come and go), and
/// the sweep closed them only for the next peak to connect again: 1,170 connects in 6 s of a steady
/// 16 x 100-stream h2c load (bench/proxy/README.md, "Session 27: HTTP/2"). A quiet pool still empties
/// `upstream_idle_timeout` after its last request.
#[derive(Debug, Default)]
struct IdleShard {
    idle: VecDeque<IdleConnection>,
}

impl Default for ConnectionPool {
    fn default() -> ConnectionPool {
        ConnectionPool {
            shards: (0..crate::shard::shard_count())
                .map(|_| Mutex::default())
                .collect(),
            shared_h2: (0..crate::shard::shard_count())
                .map(|_| Mutex::default())
                .collect(),
        }
    }
}

type Http2Sender = http2::SendRequest<RequestBody>;

/// A failed send, and what it left of its request in the caller's slot (`GivenBack`).
pub(crate) struct SendFailure {
    pub(crate) error: ProxyError,
    /// Whether the request left in the caller's slot can be sent again.
    pub(crate) request: GivenBack,
}

/// What a failed send left of its request in the slot it was sent from (`send_with`). The request stays
/// in the caller's state through every attempt rather than moving into the send and back out with its
/// failure (352 bytes each way, and a `SendFailure` that size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GivenBack {
    /// Nothing of it reached the instance: it may go to any instance, whatever its method.
    Unsent,
    /// Some of it may have reached the instance, and it is whole again (its body was empty or held):
    /// `forward` sends it once more only when that is safe (an idempotent method). The proxy's HTTP/1
    /// client leaves it whole so that `forward` keeps no copy of every request's head for a retry.
    Whole,
    /// Nothing usable: its body was streamed out, or hyper's client (h2c, upgrades) kept it; the slot
    /// holds what is left, not to be sent.
    Nothing,
    /// An answer came, and was invalid: the request is not sent again (`forward` uses no copy of it
    /// either), whatever its method (nginx's `proxy_next_upstream` default leaves out `invalid_header`).
    Answered,
}

impl GivenBack {
    /// hyper's clients give a request back only when it was not sent: it goes back into the slot.
    fn unsent(slot: &mut Request<RequestBody>, request: Option<Request<RequestBody>>) -> GivenBack {
        match request {
            Some(request) => {
                *slot = request;
                GivenBack::Unsent
            }
            None => GivenBack::Nothing,
        }
    }
}

/// Takes the request out of `slot` for one of hyper's clients, which own what they send; an empty
/// request is left in its place until the request is given back (`GivenBack::unsent`).
fn take_request(slot: &mut Request<RequestBody>) -> Request<RequestBody> {
    std::mem::replace(slot, Request::new(RequestBody::empty()))
}

impl SendFailure {
    /// The instance's connection failed.
    fn upstream(instance: &InstanceLive, source: UpstreamError, request: GivenBack) -> SendFailure {
        SendFailure {
            error: ProxyError::Upstream {
                instance: instance.id().clone(),
                addr: instance.addr(),
                source,
            },
            request,
        }
    }

    /// No answer's head within the route's `timeout`.
    fn timed_out(
        instance: &InstanceLive,
        timeout: std::time::Duration,
        request: GivenBack,
    ) -> SendFailure {
        SendFailure {
            error: ProxyError::UpstreamTimeout {
                instance: instance.id().clone(),
                addr: instance.addr(),
                timeout,
            },
            request,
        }
    }
}

/// How many idle connections of an instance are kept, and for how long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleLimits {
    /// Over all shards (`ProxyConfig::upstream_max_idle_per_instance`).
    pub(crate) max: usize,
    /// `ProxyConfig::upstream_idle_timeout`.
    pub(crate) timeout: Duration,
}

#[derive(Debug)]
struct IdleConnection {
    connection: h1::Connection,
    idle_since: Instant,
}

impl ConnectionPool {
    /// Takes the connection idle longest that is still open, silent and young enough (see
    /// `IdleShard`); others are dropped on the way.
    fn checkout(&self, idle_timeout: Duration) -> Option<h1::Connection> {
        let now = Instant::now();
        let mut shard = self
            .shard()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some(mut idle) = shard.idle.pop_front() {
            if now.duration_since(idle.idle_since) < idle_timeout
                && idle.connection.is_reusable_idle()
            {
                return Some(idle.connection);
            }
        }
        None
    }

    /// Keeps `connection` for reuse on this thread; `limits.max` bounds the instance's idle connections
    /// over all shards (each gets its share, at least one). Connections idle past `limits.timeout` are
    /// dropped here too, so a burst's extra connections do not outlive it by long. Its read buffer is
    /// given back while it waits.
    pub(crate) fn checkin(&self, mut connection: h1::Connection, limits: IdleLimits) {
        let max_idle = limits.max.div_ceil(self.shards.len());
        if max_idle == 0 {
            return;
        }
        connection.release_buffers();
        let now = Instant::now();
        let mut shard = self
            .shard()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let idle = &mut shard.idle;
        while idle.front().is_some_and(|oldest| {
            idle.len() >= max_idle || now.duration_since(oldest.idle_since) >= limits.timeout
        }) {
            // The oldest is the likeliest to be closed by the app's keep-alive timeout.
            idle.pop_front();
        }
        idle.push_back(IdleConnection {
            connection,
            idle_since: now,
        });
    }

    /// Drops this thread's idle connections that have been idle `timeout` or longer, so the buffers
    /// of a burst's extra connections are freed once the proxy goes quiet (check-in expires them
    /// only while requests come); answers how many.
    pub(crate) fn expire(&self, timeout: Duration) -> usize {
        let now = Instant::now();
        let mut shard = self
            .shard()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut expired = 0;
        // Oldest at the front: they were pushed in order of their `idle_since`.
        while shard
            .idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.idle_since) >= timeout)
        {
            shard.idle.pop_front();
            expired += 1;
        }
        drop(shard);
        // Their read buffers went to the thread's spares, which the same sweep tick frees when unused
        // (`h1::trim_spares`).
        expired
    }

    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            *shard
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = IdleShard::default();
        }
        for shared in &self.shared_h2 {
            *shared
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()) = None;
        }
    }

    fn shard(&self) -> &Mutex<IdleShard> {
        &self.shards[crate::shard::current() % self.shards.len()]
    }

    fn shared_h2(&self) -> &Mutex<Option<Http2Sender>> {
        &self.shared_h2[crate::shard::current() % self.shared_h2.len()]
    }

    /// This thread's h2c connection to the instance, while it is open.
    fn h2_handle(&self) -> Option<Http2Sender> {
        let shared = self
            .shared_h2()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        shared
            .as_ref()
            .filter(|sender| !sender.is_closed())
            .cloned()
    }

    fn set_h2_handle(&self, sender: Option<Http2Sender>) {
        *self
            .shared_h2()
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = sender;
    }
}

/// Sends `request` to `instance`, on a pooled connection when one is ready, else on a new one. Returns the
/// answer's head and its body, which gives its connection back to the pool (`ProxyBody`) once read.
///
/// A pooled connection the app closed in the meantime gives the request back unsent; the next pooled or a
/// new connection is then tried, which is always safe. `interim` gets an HTTP/1 instance's interim
/// answers (other than 100 Continue).
pub(crate) async fn send(
    instance: &Arc<InstanceLive>,
    mut request: Request<RequestBody>,
    config: &ProxyConfig,
    settings: &RouteSettings,
    upgrade: bool,
    interim: Option<&InterimSender>,
) -> Result<Response<UpstreamBody>, SendFailure> {
    send_with(
        instance,
        &mut request,
        config,
        settings,
        upgrade,
        interim,
        None,
    )
    .await
}

/// `send`, with the proxy's own fields for an HTTP/1 instance written into the request's head by
/// `h1::start` rather than carried in its header map (`forward::prepare_request_headers` says which;
/// `None` for an upgrade or an HTTP/2 instance, whose fields are all in the map).
///
/// The request is sent from the caller's slot and stays there: a failure says in `GivenBack` whether what
/// the slot holds may be sent again.
#[allow(clippy::manual_async_fn)] // See `forward::forward`: an `async fn` would hold the request twice.
pub(crate) fn send_with(
    instance: &Arc<InstanceLive>,
    request: &mut Request<RequestBody>,
    config: &ProxyConfig,
    settings: &RouteSettings,
    upgrade: bool,
    interim: Option<&InterimSender>,
    added: Option<h1::AddedFields<'_>>,
) -> impl Future<Output = Result<Response<UpstreamBody>, SendFailure>> {
    async move {
        // Their fields are all in the request's header map.
        debug_assert!(
            added.is_none() || (settings.protocol == UpstreamProtocol::Http1 && !upgrade)
        );
        if settings.protocol != UpstreamProtocol::Http1 {
            // Boxed: its state (1.9 KB, most of it the h2 handshake's) would otherwise size every
            // request's future, HTTP/1 ones included; an h2c request allocates a lot anyway.
            return Box::pin(send_h2(instance, request, config, settings)).await;
        }
        if upgrade {
            // Rare, and boxed for the same reason.
            return Box::pin(send_upgrade(instance, request, config, settings)).await;
        }
        // Most requests have no body, or one held whole that goes with the head: no signal to allocate
        // then.
        let streamed = !request.body().is_end_stream() && request.body().held().is_none();
        let progress = streamed.then(|| request.body_mut().progress());
        loop {
            let pooled = instance.connections.checkout(config.upstream_idle_timeout);
            let reused = pooled.is_some();
            let mut connection = match pooled {
                Some(connection) => connection,
                // Boxed: a new connection is rare, and its state would size every request's future.
                None => match Box::pin(connect_tcp(instance, config)).await {
                    Ok(stream) => h1::Connection::new(stream),
                    Err(error) => {
                        return Err(SendFailure {
                            error,
                            request: GivenBack::Unsent,
                        });
                    }
                },
            };
            let mut timer = connection.answer_timer.take();
            let sent = {
                // Pinned where it is made, and waited on through the pin: handing the exchange's future
                // over by value copied it (536 bytes) on each of its moves into the wait's state.
                let exchange = std::pin::pin!(h1::exchange(
                    connection,
                    &mut *request,
                    settings.max_header_fields,
                    interim,
                    added,
                ));
                match progress.as_deref() {
                    None => answer_by(settings.timeout, &mut timer, exchange).await,
                    // Boxed: its state would size every request's future.
                    Some(progress) => {
                        Box::pin(answer_within(settings.timeout, progress, exchange)).await
                    }
                }
            };
            match sent {
                Some(Ok((head, mut body))) => {
                    body.keep_answer_timer(timer);
                    // The request is done with: its header map parses the thread's next answer head.
                    h1::recycle_fields(std::mem::take(request.headers_mut()));
                    return Ok(Response::from_parts(head, UpstreamBody::Http1(body)));
                }
                // A pooled connection found closed: the request is whole, try the next one.
                Some(Err(failure)) if failure.unsent && reused => {}
                Some(Err(failure)) => {
                    let given_back = if failure.unsent {
                        GivenBack::Unsent
                    } else if failure.answered {
                        // An invalid or cut answer is an answer: a 502, not a second send of the
                        // request (it was sent the same up to `max_attempts` times before session 31).
                        GivenBack::Answered
                    } else {
                        whole(streamed)
                    };
                    return Err(SendFailure::upstream(instance, failure.error, given_back));
                }
                None => {
                    return Err(SendFailure::timed_out(
                        instance,
                        settings.timeout,
                        whole(streamed),
                    ));
                }
            }
        }
    }
}

/// A request the HTTP/1 client tried: whole unless its body was streamed (`h1::exchange` takes a streamed
/// body out of the request once a byte is written, and leaves an empty or held one in place).
fn whole(streamed: bool) -> GivenBack {
    if streamed {
        GivenBack::Nothing
    } else {
        GivenBack::Whole
    }
}

/// Sends an upgrade request (WebSocket) on a new connection of hyper's HTTP/1 client, which hands the
/// socket over to the tunnel after a 101. Kept on hyper: upgrades are rare and long-lived, so the
/// per-request cost of its driver task does not matter, and its upgrade handling is proven.
async fn send_upgrade(
    instance: &Arc<InstanceLive>,
    slot: &mut Request<RequestBody>,
    config: &ProxyConfig,
    settings: &RouteSettings,
) -> Result<Response<UpstreamBody>, SendFailure> {
    let mut sender = match connect_upgrade(instance, config, settings.max_header_fields).await {
        Ok(sender) => sender,
        Err(error) => {
            return Err(SendFailure {
                error,
                request: GivenBack::Unsent,
            });
        }
    };
    let mut request = take_request(slot);
    let progress = (!request.body().is_end_stream()).then(|| request.body_mut().progress());
    let sent = answer_head(
        settings.timeout,
        progress.as_deref(),
        sender.try_send_request(request),
    )
    .await;
    match sent {
        Some(Ok(response)) => Ok(response.map(UpstreamBody::Hyper)),
        Some(Err(mut failure)) => {
            let unsent = failure.take_message();
            Err(SendFailure::upstream(
                instance,
                failure.into_error().into(),
                GivenBack::unsent(slot, unsent),
            ))
        }
        None => Err(SendFailure::timed_out(
            instance,
            settings.timeout,
            GivenBack::Nothing,
        )),
    }
}

/// Waits for an instance's answer head: within the route's timeout from the start for a request without
/// a body (`progress` is `None`), else as [`answer_within`] says.
async fn answer_head<F: std::future::Future>(
    timeout: Duration,
    progress: Option<&Notify>,
    answer: F,
) -> Option<F::Output> {
    match progress {
        None => tokio::time::timeout(timeout, answer).await.ok(),
        // Boxed: its state would size every request's future.
        Some(progress) => Box::pin(answer_within(timeout, progress, answer)).await,
    }
}

/// Waits for an instance's answer head to a request without a body on the proxy's HTTP/1 client:
/// within `timeout` from now, on the connection's `timer` (made at its first request, kept with it).
/// `tokio::time::timeout` registered a timer in the runtime's wheel and removed it again for every
/// request (about 750 instructions of a small request's 25 000, and two locks).
async fn answer_by<F: std::future::Future>(
    timeout: Duration,
    timer: &mut Option<AnswerTimer>,
    answer: F,
) -> Option<F::Output> {
    let Some(deadline) = Instant::now().checked_add(timeout) else {
        // Further than a clock can say: never.
        return Some(answer.await);
    };
    let mut answer = std::pin::pin!(answer);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = answer.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        let timer = timer.get_or_insert_with(|| AnswerTimer::new(deadline));
        if timer.poll_until(deadline, cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
    })
    .await
}

/// The timer of an upstream connection's answer-head timeout, reused from one request to the next.
///
/// Its wheel entry moves only when a deadline comes earlier than where it is set (`at`); a later one is
/// compared, and a timer that fires before the current deadline is set again to it. Each request's
/// deadline is later than the last one's, so under a steady load the timer is set about once per route
/// timeout instead of registered and removed for every request (as `server::TimedIo`'s timer). While
/// its connection is idle in the pool, a timer that fires wakes the task that last waited on it, once,
/// for nothing.
#[derive(Debug)]
pub(crate) struct AnswerTimer {
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    at: Instant,
}

impl AnswerTimer {
    fn new(deadline: Instant) -> AnswerTimer {
        AnswerTimer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            at: deadline,
        }
    }

    /// Ready once `deadline` has passed.
    fn poll_until(&mut self, deadline: Instant, cx: &mut Context<'_>) -> Poll<()> {
        if deadline < self.at {
            self.at = deadline;
            self.sleep.as_mut().reset(deadline);
        }
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            // It fired at `at`, so every deadline up to that has passed.
            if deadline <= self.at {
                return Poll::Ready(());
            }
            self.at = deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }
}

/// Waits for an instance's answer head to a request with a body. The route's timeout runs from the last
/// chunk of the request body the connection took: a large upload that keeps moving is not cut, and an
/// instance that stops reading the body, or answering, is.
async fn answer_within<F: std::future::Future>(
    timeout: Duration,
    progress: &Notify,
    answer: F,
) -> Option<F::Output> {
    tokio::pin!(answer);
    loop {
        tokio::select! {
            output = &mut answer => return Some(output),
            () = progress.notified() => {}
            () = tokio::time::sleep(timeout) => return None,
        }
    }
}

/// Sends `request` on this thread's h2c connection to the instance, opening it first when there is none.
/// A shared connection found closed gives the request back unsent, and one new connection is tried.
async fn send_h2(
    instance: &Arc<InstanceLive>,
    slot: &mut Request<RequestBody>,
    config: &ProxyConfig,
    settings: &RouteSettings,
) -> Result<Response<UpstreamBody>, SendFailure> {
    loop {
        let shared = instance.connections.h2_handle();
        let reused = shared.is_some();
        let mut sender = match shared {
            Some(sender) => sender,
            None => match connect_h2(instance, config, settings).await {
                Ok(sender) => {
                    instance.connections.set_h2_handle(Some(sender.clone()));
                    sender
                }
                Err(error) => {
                    return Err(SendFailure {
                        error,
                        request: GivenBack::Unsent,
                    });
                }
            },
        };
        if reused && sender.ready().await.is_err() {
            instance.connections.set_h2_handle(None);
            continue;
        }
        // Most requests have no body: no signal to allocate then.
        let mut request = take_request(slot);
        let progress = (!request.body().is_end_stream()).then(|| request.body_mut().progress());
        let sent = answer_head(
            settings.timeout,
            progress.as_deref(),
            sender.try_send_request(request),
        )
        .await;
        match sent {
            Some(Ok(response)) => return Ok(response.map(UpstreamBody::Hyper)),
            Some(Err(mut failure)) => {
                if sender.is_closed() {
                    instance.connections.set_h2_handle(None);
                }
                match failure.take_message() {
                    Some(unsent) if reused => *slot = unsent,
                    unsent => {
                        let error = failure.into_error();
                        let given_back = if unsent.is_none() && is_invalid_h2_answer(&error) {
                            GivenBack::Answered
                        } else {
                            GivenBack::unsent(slot, unsent)
                        };
                        return Err(SendFailure::upstream(instance, error.into(), given_back));
                    }
                }
            }
            None => {
                return Err(SendFailure::timed_out(
                    instance,
                    settings.timeout,
                    GivenBack::Nothing,
                ));
            }
        }
    }
}

/// Whether hyper's h2c client failed because the instance sent what HTTP/2 forbids (a malformed answer):
/// h2 itself reset the stream or sent GOAWAY with PROTOCOL_ERROR (an uppercase field name in an answer is
/// a local GOAWAY). Such a request was answered, badly, and is not sent again (it was, up to
/// `max_attempts` times, before session 31); the instance's own reset or GOAWAY (a refused stream, a
/// graceful shutdown) or a dead connection still lets an idempotent request go to another instance.
fn is_invalid_h2_answer(error: &hyper::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(error);
    while let Some(current) = cause {
        if let Some(h2) = current.downcast_ref::<h2::Error>() {
            return !h2.is_remote()
                && !h2.is_io()
                && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR);
        }
        cause = current.source();
    }
    false
}

/// Opens a new h2c (prior knowledge) connection to the instance. Its driver task ends when the connection
/// closes or the instance is cut.
async fn connect_h2(
    instance: &Arc<InstanceLive>,
    config: &ProxyConfig,
    settings: &RouteSettings,
) -> Result<Http2Sender, ProxyError> {
    let stream = connect_tcp(instance, config).await?;
    let max_header_list_size =
        u32::try_from(settings.max_header_fields.saturating_mul(1024)).unwrap_or(u32::MAX);
    let (sender, connection) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(max_header_list_size)
        .keep_alive_interval(Some(Duration::from_secs(20)))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream {
            instance: instance.id().clone(),
            addr: instance.addr(),
            source: source.into(),
        })?;
    drive(connection, instance);
    Ok(sender)
}

/// Opens a TCP connection to the instance within the connect timeout.
async fn connect_tcp(
    instance: &Arc<InstanceLive>,
    config: &ProxyConfig,
) -> Result<TcpStream, ProxyError> {
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
    Ok(stream)
}

/// hyper's default limit of header fields per HTTP/1 message; up to it, hyper parses into arrays on the
/// stack.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Sets the upgrade client's limit of header fields per message. hyper's own default (100)
/// is left unset: any explicit limit makes hyper allocate and fill two arrays of that many entries for
/// every message it parses (for 200 and 500 fields, 17% of the proxy's instructions per request).
fn limit_header_fields(builder: &mut http1::Builder, max: usize) {
    if max != HYPER_DEFAULT_MAX_HEADERS {
        builder.max_headers(max);
    }
}

/// Opens a new connection of hyper's HTTP/1.1 client for an upgrade request, parsing answers of up to
/// `max_header_fields` fields. Its driver task ends when the connection closes or the instance is cut.
async fn connect_upgrade(
    instance: &Arc<InstanceLive>,
    config: &ProxyConfig,
    max_header_fields: usize,
) -> Result<http1::SendRequest<RequestBody>, ProxyError> {
    let stream = connect_tcp(instance, config).await?;
    let mut builder = http1::Builder::new();
    limit_header_fields(&mut builder, max_header_fields);
    let (sender, connection) = builder
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|source| ProxyError::Upstream {
            instance: instance.id().clone(),
            addr: instance.addr(),
            source: source.into(),
        })?;
    drive(connection.with_upgrades(), instance);
    Ok(sender)
}

/// Runs a connection's driver task until the connection closes or the instance is cut. A second task
/// watches the cut and aborts the driver: it wakes once or twice in the connection's life, where a cut
/// polled beside the connection took a lock at every wake-up of the driver (2% of the instructions of a
/// small request).
fn drive<F>(connection: F, instance: &InstanceLive)
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut driver = tokio::spawn(connection);
    let cut = instance.cut.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut driver => {}
            () = cut.cancelled() => driver.abort(),
        }
    });
}

#[cfg(test)]
mod tests;
