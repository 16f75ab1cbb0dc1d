//! Body types: `RequestBody` streams a client's body to an instance under the size limit and read timeout
//! (or carries a small body `forward` read whole first); `ProxyBody` streams an answer back under the
//! route's idle timeout and releases what the request held when it ends.
//!
//! Neither buffers a large body: frames pass through one at a time.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::Notify;
use tokio::time::Sleep;

use crate::active::ActiveRequest;
use crate::error::UpstreamError;
use crate::instance::{InFlightGuard, InstanceLive};
use crate::stats::ReleaseStats;
use crate::upstream::IdleLimits;
use crate::upstream::h1::AnswerBody;

/// The body of every answer the proxy gives.
pub struct ProxyBody {
    kind: Kind,
    // Longest silence of the instance inside its answer, from the answer's head and then from every frame.
    idle: Option<IdleTimer>,
    // Where the HTTP/1 connection goes back when the upstream answer has been read to its end.
    checkin: Option<(Arc<InstanceLive>, IdleLimits)>,
    // Held until the body ends or is dropped: the instance's in-flight count (what a drain waits for) and
    // the connection's active-request count (what stops the idle timer).
    in_flight: Option<InFlightGuard>,
    active: Option<ActiveRequest>,
    // A gRPC answer not counted yet: its `grpc-status` comes in the trailers. Holds the stats to count it
    // in and the time to its head.
    grpc_pending: Option<(Arc<ReleaseStats>, Duration)>,
}

/// The answer body's idle timer. Its `Sleep` (an allocation) is made only when the instance keeps the
/// body waiting: most answers are whole by the first read and never wait, so until then only the deadline
/// is kept, and a frame that ends the body reads no clock.
struct IdleTimer {
    timeout: Duration,
    deadline: tokio::time::Instant,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl IdleTimer {
    /// A frame came: the silence counts again from `now`.
    fn restart(&mut self, now: tokio::time::Instant) {
        self.deadline = now + self.timeout;
        if let Some(sleep) = &mut self.sleep {
            sleep.as_mut().reset(self.deadline);
        }
    }

    /// Polls the deadline (armed on the first wait).
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        self.sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)))
            .as_mut()
            .poll(cx)
    }
}

/// Why a request body stopped.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("no request body data for {timeout:?}")]
    Timeout { timeout: Duration },
    #[error("reading the request body failed")]
    Client(#[source] ClientBodyError),
}

/// Why reading a client's body failed, as its connection's server reported it.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Only where a hyper server serves (tests).
    #[cfg(test)]
    #[error(transparent)]
    Hyper(hyper::Error),
    #[error(transparent)]
    H2(h2::Error),
    #[error(transparent)]
    Http1(crate::server::h1::BodyError),
}

impl ClientBodyError {
    /// Whether the body's framing was broken (a bad chunk), rather than the connection.
    pub(crate) fn is_malformed(&self) -> bool {
        match self {
            // hyper reports a bad chunk as invalid input or data.
            #[cfg(test)]
            ClientBodyError::Hyper(error) => {
                let mut cause: Option<&(dyn std::error::Error + 'static)> =
                    std::error::Error::source(error);
                while let Some(current) = cause {
                    if let Some(io_error) = current.downcast_ref::<std::io::Error>() {
                        return matches!(
                            io_error.kind(),
                            std::io::ErrorKind::InvalidInput | std::io::ErrorKind::InvalidData
                        );
                    }
                    cause = current.source();
                }
                false
            }
            // A stream whose framing h2 finds broken is reset by h2 itself: the client gets no answer
            // to it, so it is a client gone, not a 400 (as it was through hyper, whose error had no
            // cause below h2's).
            ClientBodyError::H2(_) => false,
            ClientBodyError::Http1(error) => {
                !matches!(error, crate::server::h1::BodyError::Incomplete)
            }
        }
    }
}

/// A client's request body as its connection's server gives it: `h2`'s stream for HTTP/2
/// (`server::h2_conn`), the proxy's own HTTP/1 connection's (`server::h1`) for HTTP/1, hyper's where a
/// hyper server serves (tests).
#[derive(Debug)]
pub(crate) enum ClientBody {
    #[cfg(test)]
    Hyper(Incoming),
    H2(crate::server::h2_conn::H2Body),
    Http1(crate::server::h1::H1Body),
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = ClientBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ClientBodyError>>> {
        match self.get_mut() {
            #[cfg(test)]
            ClientBody::Hyper(incoming) => Pin::new(incoming)
                .poll_frame(cx)
                .map(|polled| polled.map(|frame| frame.map_err(ClientBodyError::Hyper))),
            ClientBody::H2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|polled| polled.map(|frame| frame.map_err(ClientBodyError::H2))),
            ClientBody::Http1(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|polled| polled.map(|frame| frame.map_err(ClientBodyError::Http1))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            #[cfg(test)]
            ClientBody::Hyper(incoming) => incoming.is_end_stream(),
            ClientBody::H2(body) => body.is_end_stream(),
            ClientBody::Http1(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            #[cfg(test)]
            ClientBody::Hyper(incoming) => incoming.size_hint(),
            ClientBody::H2(body) => body.size_hint(),
            ClientBody::Http1(body) => body.size_hint(),
        }
    }
}

/// Why an answer body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum AnswerBodyError {
    #[error("reading the answer from the instance failed")]
    Upstream(#[source] UpstreamError),
    #[error("instance was cut in the middle of its answer")]
    Cut,
    #[error("instance sent nothing for {timeout:?} in the middle of its answer")]
    Idle { timeout: Duration },
}

/// A client's request body on its way to an instance.
pub struct RequestBody {
    inner: Option<ClientBody>,
    // A body read whole before the request was sent (see `ProxyConfig::request_buffer_bytes`).
    full: Option<Bytes>,
    limit: u64,
    received: u64,
    timeout: Duration,
    // Created on the first pending read, reset whenever data arrives.
    sleep: Option<Pin<Box<Sleep>>>,
    data_since_sleep: bool,
    // Notified whenever a chunk is taken on its way to the instance (see `upstream::answer_within`).
    progress: Option<Arc<Notify>>,
}

enum Kind {
    Empty,
    Full(Option<Bytes>),
    Upstream(Incoming),
    Http1(AnswerBody),
}

/// An instance's answer body: read by hyper's client (h2c, upgrades) or by the proxy's own HTTP/1
/// connection.
pub(crate) enum UpstreamBody {
    Hyper(Incoming),
    Http1(AnswerBody),
}

impl ProxyBody {
    pub fn empty() -> ProxyBody {
        ProxyBody::new(Kind::Empty)
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::new(Kind::Full(Some(bytes)))
    }

    /// `now` is when the answer's head came (the caller's clock reading): the idle timeout runs from it.
    pub(crate) fn upstream(
        upstream: UpstreamBody,
        checkin: Option<(Arc<InstanceLive>, IdleLimits)>,
        in_flight: Option<InFlightGuard>,
        idle_timeout: Duration,
        now: tokio::time::Instant,
    ) -> ProxyBody {
        let mut body = ProxyBody::new(match upstream {
            UpstreamBody::Hyper(incoming) => Kind::Upstream(incoming),
            UpstreamBody::Http1(answer) => Kind::Http1(answer),
        });
        body.checkin = checkin;
        body.in_flight = in_flight;
        body.idle = Some(IdleTimer {
            timeout: idle_timeout,
            deadline: now + idle_timeout,
            sleep: None,
        });
        body.finish_if_ended();
        body
    }

    /// Counts the answer in `stats` once its trailers tell its `grpc-status` (see `crate::grpc`).
    pub(crate) fn count_grpc_status(&mut self, stats: Arc<ReleaseStats>, latency: Duration) {
        self.grpc_pending = Some((stats, latency));
    }

    fn record_grpc(&mut self, grpc_status: Option<u32>) {
        if let Some((stats, latency)) = self.grpc_pending.take() {
            // No status at all is a broken answer: counted as UNKNOWN, a server error.
            let status = crate::grpc::counted_status(grpc_status.unwrap_or(2));
            stats.record_response(status, latency);
        }
    }

    pub(crate) fn attach_active(&mut self, active: ActiveRequest) {
        self.active = Some(active);
    }

    fn new(kind: Kind) -> ProxyBody {
        ProxyBody {
            kind,
            idle: None,
            checkin: None,
            in_flight: None,
            active: None,
            grpc_pending: None,
        }
    }

    /// Polls the instance's answer body.
    fn poll_upstream(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerBodyError>>> {
        match &mut self.kind {
            Kind::Upstream(incoming) => Pin::new(incoming).poll_frame(cx).map(|polled| {
                polled.map(|frame| frame.map_err(|error| AnswerBodyError::Upstream(error.into())))
            }),
            Kind::Http1(answer) => match Pin::new(answer).poll_frame(cx) {
                Poll::Ready(polled) => {
                    Poll::Ready(polled.map(|frame| frame.map_err(AnswerBodyError::Upstream)))
                }
                // hyper's connection task was aborted when its instance was cut; this body looks
                // when it waits for the instance (a lock: not on every frame), so a cut ends an
                // answer that still streams, and a silent one ends at the idle timeout.
                Poll::Pending
                    if self
                        .in_flight
                        .as_ref()
                        .is_some_and(|guard| guard.instance().cut.is_cancelled()) =>
                {
                    Poll::Ready(Some(Err(AnswerBodyError::Cut)))
                }
                Poll::Pending => Poll::Pending,
            },
            Kind::Empty | Kind::Full(_) => Poll::Ready(None),
        }
    }

    fn finish_if_ended(&mut self) {
        if self.is_end_stream() {
            self.finish();
        }
    }

    fn finish(&mut self) {
        if let Some((instance, limits)) = self.checkin.take()
            && let Kind::Http1(answer) = &mut self.kind
            && let Some(connection) = answer.take_reusable()
        {
            instance.connections.checkin(connection, limits);
        }
        self.in_flight = None;
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = AnswerBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AnswerBodyError>>> {
        let this = &mut *self;
        let polled = match &mut this.kind {
            Kind::Empty => Poll::Ready(None),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Kind::Upstream(_) | Kind::Http1(_) => match this.poll_upstream(cx) {
                Poll::Ready(polled) => {
                    // A frame that ends the body needs no timer after it (nor a clock read).
                    let more = matches!(polled, Some(Ok(_))) && !this.is_end_stream();
                    if more && let Some(idle) = &mut this.idle {
                        idle.restart(tokio::time::Instant::now());
                    }
                    Poll::Ready(polled)
                }
                Poll::Pending => match &mut this.idle {
                    Some(idle) => match idle.poll_expired(cx) {
                        Poll::Ready(()) => Poll::Ready(Some(Err(AnswerBodyError::Idle {
                            timeout: idle.timeout,
                        }))),
                        Poll::Pending => Poll::Pending,
                    },
                    None => Poll::Pending,
                },
            },
        };
        if this.grpc_pending.is_some() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(trailers) = frame.trailers_ref() {
                        this.record_grpc(crate::grpc::status(trailers));
                    }
                }
                Poll::Ready(None) | Poll::Ready(Some(Err(_))) => this.record_grpc(None),
                Poll::Pending => {}
            }
        }
        match &polled {
            Poll::Ready(None) => this.finish(),
            Poll::Ready(Some(Ok(_))) => this.finish_if_ended(),
            // An error mid-answer: the connection is not reusable; dropping the sender closes it.
            Poll::Ready(Some(Err(_))) => {
                this.kind = Kind::Empty;
                this.checkin = None;
                this.in_flight = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Empty => true,
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(incoming) => incoming.is_end_stream(),
            Kind::Http1(answer) => answer.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Empty => SizeHint::with_exact(0),
            Kind::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Kind::Full(None) => SizeHint::with_exact(0),
            Kind::Upstream(incoming) => incoming.size_hint(),
            Kind::Http1(answer) => answer.size_hint(),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // The client went away before the gRPC answer ended: counted as CANCELLED.
        if self.grpc_pending.is_some() {
            self.record_grpc(Some(1));
        }
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBody").finish_non_exhaustive()
    }
}

impl RequestBody {
    pub(crate) fn new(incoming: ClientBody, limit: u64, timeout: Duration) -> RequestBody {
        let inner = if incoming.is_end_stream() {
            None
        } else {
            Some(incoming)
        };
        RequestBody {
            inner,
            full: None,
            limit,
            received: 0,
            timeout,
            sleep: None,
            data_since_sleep: false,
            progress: None,
        }
    }

    /// The client's body as the request arrives, before its route's limits are known (`limit`): the
    /// request it is in can then become the upstream request where it lies (`forward::handle`).
    pub(crate) fn client(incoming: ClientBody) -> RequestBody {
        RequestBody::new(incoming, u64::MAX, Duration::ZERO)
    }

    /// The route's limits: the most bytes the instance is sent, and the longest pause of the client.
    /// Set before the body is first read; the body is then as `new` would have made it.
    pub(crate) fn limit(&mut self, limit: u64, timeout: Duration) {
        self.limit = limit;
        self.timeout = timeout;
        if self.inner.as_ref().is_some_and(ClientBody::is_end_stream) {
            self.inner = None;
        }
    }

    /// The client's body, taken out unread (a refused request's, to discard it); `None` when nothing of
    /// it was left to come.
    pub(crate) fn take_client(&mut self) -> Option<ClientBody> {
        self.inner.take()
    }

    pub(crate) fn empty() -> RequestBody {
        RequestBody {
            inner: None,
            full: None,
            limit: 0,
            received: 0,
            timeout: Duration::ZERO,
            sleep: None,
            data_since_sleep: false,
            progress: None,
        }
    }

    /// A body already read whole.
    pub(crate) fn full(bytes: Bytes) -> RequestBody {
        let mut body = RequestBody::empty();
        body.full = (!bytes.is_empty()).then_some(bytes);
        body
    }

    /// The body when it was read whole (and not taken yet).
    pub(crate) fn held(&self) -> Option<&Bytes> {
        self.full.as_ref()
    }

    /// A signal notified each time a chunk of the body is taken by the connection to the instance.
    pub(crate) fn progress(&mut self) -> Arc<Notify> {
        Arc::clone(self.progress.get_or_insert_with(Arc::default))
    }

    fn made_progress(&self) {
        if let Some(progress) = &self.progress {
            progress.notify_one();
        }
    }

    /// Reads the whole body (under its limit and pause timeout), for a body small enough to be held.
    pub(crate) async fn read_whole(mut self) -> Result<Bytes, RequestBodyError> {
        let mut collected = bytes::BytesMut::new();
        while let Some(frame) = http_body_util::BodyExt::frame(&mut self).await {
            if let Ok(data) = frame?.into_data() {
                collected.extend_from_slice(&data);
            }
        }
        Ok(collected.freeze())
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = &mut *self;
        if let Some(full) = this.full.take() {
            this.made_progress();
            return Poll::Ready(Some(Ok(Frame::data(full))));
        }
        let Some(incoming) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        match Pin::new(incoming).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if this.received > this.limit {
                        this.inner = None;
                        return Poll::Ready(Some(Err(RequestBodyError::TooLarge {
                            limit: this.limit,
                        })));
                    }
                }
                this.data_since_sleep = true;
                this.made_progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(error))) => {
                this.inner = None;
                Poll::Ready(Some(Err(RequestBodyError::Client(error))))
            }
            Poll::Ready(None) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Poll::Pending => {
                let deadline = tokio::time::Instant::now() + this.timeout;
                let sleep = match &mut this.sleep {
                    Some(sleep) => {
                        if this.data_since_sleep {
                            sleep.as_mut().reset(deadline);
                        }
                        sleep
                    }
                    None => this
                        .sleep
                        .insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.data_since_sleep = false;
                ready!(sleep.as_mut().poll(cx));
                this.inner = None;
                Poll::Ready(Some(Err(RequestBodyError::Timeout {
                    timeout: this.timeout,
                })))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_none() && self.inner.as_ref().is_none_or(ClientBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        if let Some(full) = &self.full {
            return SizeHint::with_exact(full.len() as u64);
        }
        self.inner
            .as_ref()
            .map_or(SizeHint::with_exact(0), ClientBody::size_hint)
    }
}

impl fmt::Debug for RequestBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}
