//! HTTP/2 client connections, served with the `h2` crate directly: the connection, its streams (each a
//! `forward::handle` future, then its answer's body) polled in the connection's task, request bodies over
//! `h2::RecvStream`, answers sent under HTTP/2's flow control, and the keep-alive ping.
//!
//! It is not an HTTP/2 implementation (framing, HPACK, flow-control windows, stream states, the limits on
//! resets and CONTINUATION frames are all `h2`'s), and it knows nothing of routing (`forward`). It is what
//! hyper's HTTP/2 server layer (`hyper::proto::h2::server`) did for the proxy, without what the proxy did
//! not use (an executor, upgrades, CONNECT tunnels, adaptive windows, its `Incoming` body), and without its
//! removal of connection-specific fields from every answer: `forward` removes them from instances'
//! answers and the proxy's own answers to HTTP/2 requests have none (`error::error_response`), so none
//! reaches this module (checked in debug builds). Measured in bench/proxy/README.md, "Session 32: HTTP/2
//! without hyper's server layer" and "Session 33: HTTP/2 to clients".
//!
//! A stream is polled only when it was woken (`FuturesUnordered`), and all of a connection's streams run on
//! its thread. A stream that panics ends alone (its dropped `SendResponse` resets it), as its own task did.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use h2::server::{Connection, SendResponse};
use h2::{Ping, PingPong, Reason, RecvStream, SendStream};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{CONTENT_LENGTH, HeaderValue};
use hyper::{HeaderMap, Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::body::{ClientBody, ProxyBody};
use crate::h1_fields::parse_content_length;

/// The connection-level settings the proxy's HTTP/2 server announces and keeps.
#[derive(Clone, Copy, Debug)]
pub(super) struct Settings {
    pub(super) max_header_list_size: u32,
}

/// Streams an HTTP/2 client may have open at once (HAProxy allows 100; hyper's default was 200).
const MAX_STREAMS: u32 = 100;

/// The answer bytes an HTTP/2 stream holds for a client that does not read: with `MAX_STREAMS`, at most
/// 25 MiB of send buffers per connection. 64 KiB halved the rate of 64 KiB answers (more, smaller writes;
/// bench/proxy/README.md, "Session 29: HTTP/2 to clients"); 256 KiB measured as 400 KiB did.
const SEND_BUFFER: usize = 256 * 1024;

/// Receive windows, connection and stream (the spec's 64 KiB is too small for uploads; as hyper had).
const WINDOW: u32 = 1024 * 1024;

/// Largest frame the proxy accepts (the spec's minimum, as hyper had).
const MAX_FRAME: u32 = 16 * 1024;

/// Streams the client may make the proxy reset for its errors before the connection is closed (a bound
/// on a flood of malformed requests; as hyper had).
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// A connection silent this long is sent a PING; one whose PONG does not come within as long again is
/// closed (as hyper's `keep_alive_interval` of 20 s with its 20 s timeout did).
const KEEP_ALIVE: Duration = Duration::from_secs(20);

/// How many times one poll goes round the connection and its streams before it yields: each round writes
/// the answers of the streams the previous one finished and starts the streams the client sent meanwhile.
const ROUNDS_PER_POLL: usize = 4;

/// The HTTP/2 server's configuration of `h2`.
pub(super) fn builder(settings: Settings) -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(WINDOW)
        .initial_connection_window_size(WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_header_list_size(settings.max_header_list_size)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_send_buffer_size(SEND_BUFFER)
        .max_concurrent_streams(MAX_STREAMS);
    builder
}

/// One HTTP/2 connection after its handshake: the `h2` connection, its running streams, its keep-alive.
pub(super) struct Served<T, M, F> {
    connection: Connection<T, Bytes>,
    streams: FuturesUnordered<Stream<F>>,
    /// Makes a stream's future of its request (`forward::handle`, boxed as it is made).
    start: M,
    keep_alive: KeepAlive,
    /// Streams accepted so far: the keep-alive's sign of life.
    accepted: u64,
}

impl<T, M, F> Served<T, M, F>
where
    T: AsyncRead + AsyncWrite + Unpin,
    M: FnMut(Request<ClientBody>) -> Pin<Box<F>>,
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
{
    pub(super) fn new(connection: Connection<T, Bytes>, start: M) -> Self {
        Self::with_keep_alive(connection, start, KEEP_ALIVE)
    }

    /// As `new`, with another keep-alive period (tests).
    fn with_keep_alive(mut connection: Connection<T, Bytes>, start: M, period: Duration) -> Self {
        let keep_alive = KeepAlive {
            ping_pong: connection.ping_pong(),
            period,
            sleep: Box::pin(tokio::time::sleep(period)),
            awaiting_pong: false,
            accepted_at_tick: 0,
        };
        Served {
            connection,
            streams: FuturesUnordered::new(),
            start,
            keep_alive,
            accepted: 0,
        }
    }

    /// Sends GOAWAY: the streams open go on to their ends, the client opens no more.
    pub(super) fn graceful_shutdown(&mut self) {
        self.connection.graceful_shutdown();
    }

    /// Polls the connection (accepting the streams the client opened), then its streams, then the
    /// connection again while streams started or ended (their answers are then written in this poll, not
    /// after a wake-up). Ready when the connection ended; its streams may still be running (`finish`).
    pub(super) fn poll_connection(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), h2::Error>> {
        // Once per poll, not per round: its timer's waker is the same for every round.
        self.keep_alive
            .poll(cx, &mut self.connection, self.accepted);
        for _ in 0..ROUNDS_PER_POLL {
            let mut started = false;
            loop {
                match self.connection.poll_accept(cx) {
                    Poll::Ready(Some(Ok((request, reply)))) => {
                        self.accepted += 1;
                        started = true;
                        // A request that ended with its head has no body: its fields are not
                        // looked up (`h2` resets a stream whose `content-length` says otherwise).
                        let remaining = if request.body().is_end_stream() {
                            Some(0)
                        } else {
                            content_length(request.headers())
                        };
                        let request =
                            request.map(|recv| ClientBody::H2(H2Body::new(recv, remaining)));
                        let future = (self.start)(request);
                        self.streams.push(Stream {
                            reply,
                            state: StreamState::Service(future),
                        });
                    }
                    Poll::Ready(Some(Err(error))) => return Poll::Ready(Err(error)),
                    Poll::Ready(None) => return Poll::Ready(Ok(())),
                    Poll::Pending => break,
                }
            }
            // Every stream just started is polled before this returns: nothing else would wake a future
            // that was never polled.
            let mut ended = false;
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {
                ended = true;
            }
            if !started && !ended {
                return Poll::Pending;
            }
        }
        // Still busy: the next poll comes after the runtime's other tasks had their turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Drives the streams that are left to their ends (after the connection ended).
    pub(super) async fn finish(&mut self) {
        std::future::poll_fn(|cx| {
            while let Poll::Ready(Some(())) = self.streams.poll_next_unpin(cx) {}
            if self.streams.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
    }
}

/// The keep-alive PING: sent when no stream was opened for a period (`KEEP_ALIVE`); the connection is
/// closed when its PONG does not come within another (a client gone without a FIN, or one that stopped reading).
struct KeepAlive {
    ping_pong: Option<PingPong>,
    period: Duration,
    // Boxed: one allocation per connection, made at its handshake.
    sleep: Pin<Box<Sleep>>,
    awaiting_pong: bool,
    accepted_at_tick: u64,
}

impl KeepAlive {
    fn poll<T: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        connection: &mut Connection<T, Bytes>,
        accepted: u64,
    ) {
        let Some(ping_pong) = &mut self.ping_pong else {
            return;
        };
        if self.awaiting_pong {
            match ping_pong.poll_pong(cx) {
                Poll::Ready(Ok(_pong)) => {
                    self.awaiting_pong = false;
                    self.sleep.as_mut().reset(Instant::now() + self.period);
                }
                // The connection failed: `poll_accept` reports it.
                Poll::Ready(Err(_)) => {
                    self.ping_pong = None;
                    return;
                }
                Poll::Pending => {}
            }
        }
        if self.sleep.as_mut().poll(cx).is_pending() {
            return;
        }
        if self.awaiting_pong {
            tracing::debug!(message = "HTTP/2 keep-alive timed out, closing the connection.");
            connection.abrupt_shutdown(Reason::NO_ERROR);
            self.ping_pong = None;
            return;
        }
        self.sleep.as_mut().reset(Instant::now() + self.period);
        if accepted != self.accepted_at_tick {
            self.accepted_at_tick = accepted;
        } else if ping_pong.send_ping(Ping::opaque()).is_ok() {
            self.awaiting_pong = true;
            // Registers for the PONG.
            let _ = ping_pong.poll_pong(cx);
        }
        // Registers the timer again.
        let _ = self.sleep.as_mut().poll(cx);
    }
}

/// One stream: the wait for its answer (`forward::handle`), then its answer's body.
struct Stream<F> {
    reply: SendResponse<Bytes>,
    state: StreamState<F>,
}

#[expect(
    clippy::large_enum_variant,
    reason = "a stream lives in its node of the stream set, boxed once; boxing the body would add an allocation per stream"
)]
enum StreamState<F> {
    Service(Pin<Box<F>>),
    Body {
        send: SendStream<Bytes>,
        body: ProxyBody,
        // A chunk taken from the body, waiting for the stream's send capacity.
        waiting: Option<(Bytes, bool)>,
    },
}

impl<F> Future for Stream<F>
where
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        // A stream that panics ends alone: its future is dropped, and its dropped reply resets it.
        std::panic::catch_unwind(AssertUnwindSafe(|| this.poll_stream(cx)))
            .unwrap_or(Poll::Ready(()))
    }
}

impl<F> Unpin for Stream<F> {}

impl<F> Stream<F>
where
    F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
{
    fn poll_stream(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            match &mut self.state {
                StreamState::Service(future) => {
                    let response = match future.as_mut().poll(cx) {
                        Poll::Ready(Ok(response)) => response,
                        Poll::Ready(Err(never)) => match never {},
                        // The client may reset the stream while its answer is awaited: the request is
                        // then given up (its future dropped).
                        Poll::Pending => {
                            return match self.reply.poll_reset(cx) {
                                Poll::Ready(reset) => {
                                    tracing::debug!(message = "The client reset a stream.", ?reset);
                                    Poll::Ready(())
                                }
                                Poll::Pending => Poll::Pending,
                            };
                        }
                    };
                    let (head, body) = response.into_parts();
                    let mut head = Response::from_parts(head, ());
                    // No answer carries a field HTTP/2 forbids (RFC 9113 section 8.2.2), which `h2` would
                    // refuse (the stream then reset instead of answered): `forward` removes an
                    // instance's, and the proxy's own answers to HTTP/2 requests have none
                    // (`error::error_response`). Not looked for here: a pass over every answer's fields.
                    debug_assert!(
                        !crate::forward::has_hop_by_hop(head.headers()),
                        "{:?}",
                        head.headers()
                    );
                    if body.is_end_stream() {
                        if let Err(error) = self.reply.send_response(head, true) {
                            tracing::debug!(message = "Sending an HTTP/2 answer failed.", %error);
                            self.reply.send_reset(Reason::INTERNAL_ERROR);
                        }
                        return Poll::Ready(());
                    }
                    if let Some(length) = body.size_hint().exact() {
                        head.headers_mut()
                            .entry(CONTENT_LENGTH)
                            .or_insert_with(|| HeaderValue::from(length));
                    }
                    let send = match self.reply.send_response(head, false) {
                        Ok(send) => send,
                        Err(error) => {
                            tracing::debug!(message = "Sending an HTTP/2 answer failed.", %error);
                            self.reply.send_reset(Reason::INTERNAL_ERROR);
                            return Poll::Ready(());
                        }
                    };
                    // The forwarding future is done: its box goes now, not with the answer's body.
                    self.state = StreamState::Body {
                        send,
                        body,
                        waiting: None,
                    };
                }
                StreamState::Body {
                    send,
                    body,
                    waiting,
                } => {
                    return match send_body(cx, send, body, waiting) {
                        Poll::Ready(Ok(())) => Poll::Ready(()),
                        Poll::Ready(Err(error)) => {
                            tracing::debug!(message = "Sending an HTTP/2 answer's body failed.", %error);
                            Poll::Ready(())
                        }
                        Poll::Pending => Poll::Pending,
                    };
                }
            }
        }
    }
}

/// Sends `body` on `send` under the stream's flow control: a chunk is taken from the body only once the
/// last one went (the client's window bounds what is held), trailers end the stream, a body error resets
/// it, and so does the client's reset end it.
fn send_body(
    cx: &mut Context<'_>,
    send: &mut SendStream<Bytes>,
    body: &mut ProxyBody,
    waiting: &mut Option<(Bytes, bool)>,
) -> Poll<Result<(), Box<dyn std::error::Error + Send + Sync>>> {
    loop {
        // Registered while the body or the window is awaited, so that a reset wakes the stream.
        if let Poll::Ready(reset) = send.poll_reset(cx) {
            return Poll::Ready(Err(match reset {
                Ok(reason) => format!("the client reset the stream ({reason})").into(),
                Err(error) => error.into(),
            }));
        }
        if waiting.is_some() {
            while send.capacity() == 0 {
                match ready!(send.poll_capacity(cx)) {
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Poll::Ready(Err(error.into())),
                    None => {
                        return Poll::Ready(Err("the stream was closed before its answer".into()));
                    }
                }
            }
            if let Some((data, end)) = waiting.take() {
                send.send_data(data, end)?;
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            continue;
        }
        // The next frame is taken before any capacity is asked for: capacity reserved ahead of data
        // would hold the connection's window against other streams (hyper#4003).
        match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    let end = body.is_end_stream();
                    if data.is_empty() {
                        send.send_data(data, end)?;
                        if end {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A minimal claim: h2 raises it to what is buffered in `send_data`.
                    send.reserve_capacity(1);
                    *waiting = Some((data, end));
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        send.reserve_capacity(0);
                        send.send_trailers(trailers)?;
                        return Poll::Ready(Ok(()));
                    }
                }
            },
            Some(Err(error)) => {
                let error: Box<dyn std::error::Error + Send + Sync> = error.into();
                send.send_reset(reset_reason(&*error));
                return Poll::Ready(Err(error));
            }
            None => {
                send.send_data(Bytes::new(), true)?;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The reason a stream is reset with for a body error: an HTTP/2 error's own (an upstream HTTP/2
/// stream's reset passed on), INTERNAL_ERROR otherwise.
fn reset_reason(error: &(dyn std::error::Error + 'static)) -> Reason {
    let mut cause = Some(error);
    while let Some(current) = cause {
        if let Some(reason) = current
            .downcast_ref::<h2::Error>()
            .and_then(h2::Error::reason)
        {
            return reason;
        }
        cause = current.source();
    }
    Reason::INTERNAL_ERROR
}

/// The request's `content-length`, when its every value says the same valid length (`h2` refuses a
/// stream whose DATA does not add up to it).
fn content_length(headers: &HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = parse_content_length(values.next()?.as_bytes())?;
    for value in values {
        if parse_content_length(value.as_bytes())? != first {
            return None;
        }
    }
    Some(first)
}

/// A client's HTTP/2 request body: DATA frames as they come (each given back to the client's window as it
/// is taken), then the trailers.
#[derive(Debug)]
pub(crate) struct H2Body {
    recv: RecvStream,
    // Bytes still to come when the request said how many (`content-length`); `Some(0)` for a request that
    // ended with its headers.
    remaining: Option<u64>,
    data_done: bool,
}

impl H2Body {
    /// `remaining`: the bytes the request said are to come (`content-length`), `Some(0)` for one that
    /// ended with its head.
    fn new(recv: RecvStream, remaining: Option<u64>) -> H2Body {
        H2Body {
            recv,
            remaining,
            data_done: false,
        }
    }
}

impl Body for H2Body {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        let this = self.get_mut();
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    if let Some(remaining) = &mut this.remaining {
                        *remaining = remaining.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                // A reset with NO_ERROR is an early end of the body (RFC 9113 section 8.1), not a failure.
                Some(Err(error)) if error.reason() == Some(Reason::NO_ERROR) => {
                    return Poll::Ready(None);
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(trailers) => Poll::Ready(trailers.map(|trailers| Ok(Frame::trailers(trailers)))),
            Err(error) if error.reason() == Some(Reason::NO_ERROR) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::strip_hop_by_hop;
    use hyper::header::{CONNECTION, HeaderName, TE, TRANSFER_ENCODING, UPGRADE};

    #[test]
    fn a_content_length_counts_only_when_every_value_agrees() {
        let cases: &[(&[&str], Option<u64>)] = &[
            (&[], None),
            (&["0"], Some(0)),
            (&["42"], Some(42)),
            (&["42", "42"], Some(42)),
            (&["42", "43"], None),
            (&["-1"], None),
            (&["+4"], None),
            (&[""], None),
            (&["18446744073709551615"], None),
            (&["4 2"], None),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for value in *values {
                headers.append(CONTENT_LENGTH, HeaderValue::from_static(value));
            }
            assert_eq!(content_length(&headers), *expected, "{values:?}");
        }
    }

    #[test]
    fn connection_specific_fields_leave_an_answer_with_those_connection_names() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("text/plain"));
        headers.insert("x-drop-me", HeaderValue::from_static("1"));
        headers.insert("x-keep-me", HeaderValue::from_static("1"));
        headers.insert(CONNECTION, HeaderValue::from_static("close, x-drop-me"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut headers, false);
        let mut left: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "x-keep-me"]);
        // Each alone is found too.
        for name in [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "te",
        ] {
            let mut headers = HeaderMap::new();
            headers.insert("content-type", HeaderValue::from_static("text/plain"));
            headers.insert(HeaderName::from_static(name), HeaderValue::from_static("x"));
            strip_hop_by_hop(&mut headers, false);
            assert_eq!(headers.len(), 1, "{name}");
        }
    }

    #[test]
    fn a_body_error_resets_with_an_http2_reason_found_in_its_causes() {
        let h2_error = h2::Error::from(Reason::REFUSED_STREAM);
        assert_eq!(reset_reason(&h2_error), Reason::REFUSED_STREAM);
        #[derive(Debug, thiserror::Error)]
        #[error("the instance's answer failed")]
        struct Wrapper(#[source] h2::Error);
        assert_eq!(
            reset_reason(&Wrapper(h2::Error::from(Reason::CANCEL))),
            Reason::CANCEL,
            "found through the chain of causes"
        );
        let other = std::io::Error::other("an instance went away");
        assert_eq!(reset_reason(&other), Reason::INTERNAL_ERROR);
    }

    /// Serves one connection over `io` with `start` until it ends: the proxy's side of the tests below.
    async fn serve_until_end<M, F>(
        io: tokio::io::DuplexStream,
        start: M,
        keep_alive: Duration,
    ) -> Result<(), h2::Error>
    where
        M: FnMut(Request<ClientBody>) -> Pin<Box<F>>,
        F: Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>,
    {
        let settings = Settings {
            max_header_list_size: 16 * 1024,
        };
        let connection = builder(settings).handshake::<_, Bytes>(io).await?;
        let mut served = Served::with_keep_alive(connection, start, keep_alive);
        let result = std::future::poll_fn(|cx| served.poll_connection(cx)).await;
        served.finish().await;
        result
    }

    /// A stream's future that reads its request body whole and answers with what it read: its bytes,
    /// and its trailers' `checksum`.
    fn echo_size(
        request: Request<ClientBody>,
    ) -> Pin<Box<impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>>> {
        Box::pin(async move {
            use http_body_util::BodyExt;
            let mut body = request.into_body();
            let mut bytes = 0;
            let mut checksum = None;
            while let Some(frame) = body.frame().await {
                let frame = frame.expect("the body arrives");
                if let Some(data) = frame.data_ref() {
                    bytes += data.len();
                }
                if let Some(trailers) = frame.trailers_ref() {
                    checksum = trailers.get("checksum").cloned();
                }
            }
            let checksum = checksum.map(|value| value.to_str().unwrap_or("?").to_owned());
            let answer = format!("{bytes} {}", checksum.as_deref().unwrap_or("none"));
            Ok(Response::new(ProxyBody::full(Bytes::from(answer))))
        })
    }

    /// The proxy's own error answers reach an HTTP/2 client as answers (not stream resets): those that
    /// close an HTTP/1 connection carry no `connection` field over HTTP/2, which `h2` would refuse to send
    /// (this module no longer looks for one), and the connection stays open for the client's next streams.
    #[tokio::test]
    async fn the_proxys_own_error_answers_reach_an_http2_client_and_its_connection_stays() {
        fn refuse(
            request: Request<ClientBody>,
        ) -> Pin<Box<impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>>>
        {
            let error = match request.uri().path() {
                "/bad" => crate::error::ProxyError::BadRequest {
                    reason: crate::error::BadRequestReason::HostMismatch,
                },
                "/large" => crate::error::ProxyError::BodyTooLarge { limit: 1 },
                _ => crate::error::ProxyError::HeadersTooLarge { limit: 1 },
            };
            let answer = crate::error::error_response(&error, request.version());
            Box::pin(async move { Ok(answer) })
        }
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve_until_end(server_io, refuse, KEEP_ALIVE));
        let (mut client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        let connection = tokio::spawn(connection);
        for (path, status) in [
            ("/bad", 400),
            ("/large", 413),
            ("/head", 431),
            ("/bad", 400),
        ] {
            let request = Request::get(format!("http://proxy.test{path}"))
                .body(())
                .expect("a request");
            let (answer, _) = client.send_request(request, true).expect("sent");
            let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("answered in time")
                .expect("an answer, not a reset");
            assert_eq!(answer.status(), status, "{path}");
            assert!(answer.headers().get(CONNECTION).is_none(), "{path}");
            let mut body = answer.into_body();
            let mut text = Vec::new();
            while let Some(data) = body.data().await {
                text.extend_from_slice(&data.expect("answer data"));
            }
            assert!(
                String::from_utf8_lossy(&text).starts_with(&status.to_string()),
                "{path}: {text:?}"
            );
        }
        assert!(!connection.is_finished(), "the connection stays open");
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection ends once the client is gone")
            .expect("no panic")
            .expect("no connection error");
    }

    /// A request body's size is the request's `content-length`, 0 for a request that ended with its
    /// head (its fields not looked up), and unknown for one that announced none.
    #[tokio::test]
    async fn a_request_bodys_size_is_its_announced_length_or_0_when_it_ended_with_its_head() {
        fn size(
            request: Request<ClientBody>,
        ) -> Pin<Box<impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>>>
        {
            let exact = request.body().size_hint().exact();
            Box::pin(async move {
                Ok(Response::new(ProxyBody::full(Bytes::from(format!(
                    "{exact:?}"
                )))))
            })
        }
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve_until_end(server_io, size, KEEP_ALIVE));
        let (mut client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        // (content-length, body, ends with its head), and the size the proxy's side sees.
        let cases: &[(Option<&str>, &[u8], bool, &str)] = &[
            (None, b"", true, "Some(0)"),
            (Some("0"), b"", true, "Some(0)"),
            (Some("5"), b"hello", false, "Some(5)"),
            (None, b"hello", false, "None"),
        ];
        for (length, body, ends, expected) in cases {
            let mut request = Request::post("http://proxy.test/size");
            if let Some(length) = length {
                request = request.header(CONTENT_LENGTH, *length);
            }
            let request = request.body(()).expect("a request");
            let (answer, mut send) = client.send_request(request, *ends).expect("sent");
            if !*ends {
                send.send_data(Bytes::from_static(body), true)
                    .expect("data");
            }
            let answer = tokio::time::timeout(Duration::from_secs(10), answer)
                .await
                .expect("answered in time")
                .expect("an answer");
            let mut answer = answer.into_body();
            let mut text = Vec::new();
            while let Some(data) = answer.data().await {
                text.extend_from_slice(&data.expect("answer data"));
            }
            assert_eq!(
                String::from_utf8_lossy(&text),
                *expected,
                "{length:?} {ends}"
            );
        }
        drop(client);
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection ends once the client is gone")
            .expect("no panic")
            .expect("no connection error");
    }

    /// An upload larger than both receive windows (1 MiB) arrives whole: the body gives each DATA frame
    /// back to the client's windows as it is taken. Its trailers follow its data.
    #[tokio::test]
    async fn an_upload_larger_than_the_windows_arrives_whole_with_its_trailers() {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve_until_end(server_io, echo_size, KEEP_ALIVE));
        let (mut client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        let request = Request::post("http://proxy.test/upload")
            .body(())
            .expect("a request");
        let (answer, mut send) = client.send_request(request, false).expect("sent");
        const UPLOAD: usize = 3 * 1024 * 1024 + 17;
        // Sent in pieces as the proxy's windows open (h2 would buffer the rest meanwhile).
        let mut left = UPLOAD;
        while left > 0 {
            send.reserve_capacity(left);
            let capacity = std::future::poll_fn(|cx| send.poll_capacity(cx))
                .await
                .expect("capacity")
                .expect("no error");
            let piece = capacity.min(left);
            send.send_data(Bytes::from(vec![b'x'; piece]), false)
                .expect("data");
            left -= piece;
        }
        let mut trailers = HeaderMap::new();
        trailers.insert("checksum", HeaderValue::from_static("c0ffee"));
        send.send_trailers(trailers).expect("trailers");
        let answer = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .expect("answered in time")
            .expect("an answer");
        assert_eq!(answer.status(), 200);
        let mut body = answer.into_body();
        let mut text = Vec::new();
        while let Some(data) = body.data().await {
            let data = data.expect("answer data");
            let _ = body.flow_control().release_capacity(data.len());
            text.extend_from_slice(&data);
        }
        assert_eq!(String::from_utf8_lossy(&text), format!("{UPLOAD} c0ffee"));
        // The client's connection ends (GOAWAY) once nothing of it is held.
        drop((client, send, body));
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the connection ends once the client is gone")
            .expect("no panic")
            .expect("no connection error");
    }

    /// A client that answers no PING (gone without a FIN, or not reading) is closed after one silent
    /// keep-alive period and one more waiting for the PONG; one that answers stays, however long it is
    /// silent. (Periods of 50 ms here, 20 s in the proxy.)
    #[tokio::test]
    async fn a_silent_client_is_pinged_and_closed_only_when_its_pong_does_not_come() {
        const PERIOD: Duration = Duration::from_millis(50);
        // Answers PINGs: its connection is driven.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve_until_end(server_io, echo_size, PERIOD));
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        let mut connection = tokio::spawn(connection);
        // Twenty periods: it was pinged (ten times) and answered each.
        tokio::time::sleep(PERIOD * 20).await;
        assert!(!server.is_finished(), "a client that answers PINGs stays");
        assert!(!connection.is_finished());
        drop(client);
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut connection).await;

        // Answers nothing: its connection is never driven after the handshake.
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(serve_until_end(server_io, echo_size, PERIOD));
        let (_client, _connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("closed for its missing PONG")
            .expect("no panic")
            .expect("closed without an error");
    }
}
