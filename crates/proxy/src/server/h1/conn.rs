//! The client-facing HTTP/1.1 connection, driven in the connection's own task: reads request heads
//! (`h1::parse_head`), hands each request to the service, feeds the request's body from the socket as the
//! body is polled, and writes the answer with its head and first body bytes in one vectored write.
//!
//! Requests are answered one at a time, in order: a pipelined request waits in the read buffer. The
//! body is fed only when it is polled (hyper's "want"), so nothing is read ahead of the consumer, and
//! `Expect: 100-continue` is answered at that first poll. An answer with `101 Switching Protocols`
//! ends the connection's HTTP: the socket and the bytes read after the request head go to the request's
//! `PendingUpgrade`.
//!
//! The timers and interim answers are `server::TimedIo`'s, around this connection's socket; its release
//! timer tells the connection when to give its idle buffers back (`Hooks::activity`).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use atomic_waker::AtomicWaker;
use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, oneshot};

use crate::active::ConnectionActivity;

use super::{
    AnswerContext, AnswerFraming, BodyDecoder, BodyError, Decoded, HeadError, HeadLimits, HeadScan,
    OutBuf,
};

/// The read buffer grows by this much at first, doubled after each read that filled it, up to
/// `MAX_READ_CHUNK`: a 1 MiB upload is read in large reads, not 8 KiB ones.
// `u32`: beside `HeadScan`'s `u32` in one word of the connection (an idle connection's task is kept
// small, `server::tests`).
const READ_CHUNK: u32 = 8 * 1024;
const MAX_READ_CHUNK: u32 = 256 * 1024;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Closed by either side, or after an answer that closes it.
    Closed,
    /// Handed to a request's `PendingUpgrade` after a 101 answer.
    Upgraded,
    Failed(io::Error),
}

/// An HTTP/1.1 server connection over `io`.
pub(crate) struct ServerConn<S> {
    io: S,
    read_buf: BytesMut,
    read_chunk: u32,
    // How much of an incomplete head was looked at (`h1::parse_head_from`).
    head_scan: HeadScan,
    // Boxed: an idle connection's task keeps only a pointer (none once its buffers are released).
    out: Option<Box<OutBuf>>,
    limits: HeadLimits,
}

/// What the connection keeps of the request whose body it is feeding.
struct Feeder {
    decoder: BodyDecoder,
    sender: Option<mpsc::UnboundedSender<Result<Frame<Bytes>, BodyError>>>,
    want: Arc<Want>,
    expect_continue: bool,
    // Bytes of a `100 Continue` still to write.
    continue_out: &'static [u8],
    // The body could not be read to its end (a framing error, the client gone): close after the answer.
    broken: bool,
}

impl Feeder {
    /// Whether the body was read to its end (or failed): nothing more of it comes from the socket.
    fn is_done(&self) -> bool {
        self.sender.is_none() && (self.decoder.is_done() || self.broken)
    }
}

/// Whether the body's consumer waits for more, and the connection's waker to tell it so.
#[derive(Debug, Default)]
struct Want {
    wanted: AtomicBool,
    connection: AtomicWaker,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> ServerConn<S> {
    pub(crate) fn new(io: S, limits: HeadLimits, read_ahead: Bytes) -> ServerConn<S> {
        ServerConn {
            io,
            read_buf: BytesMut::from(&read_ahead[..]),
            read_chunk: READ_CHUNK,
            out: None,
            limits,
            head_scan: HeadScan::default(),
        }
    }

    /// Serves requests until the connection closes.
    ///
    /// Only the wait for a request head lives in this future (an idle keep-alive connection's task holds
    /// little more than the socket and its buffers); each exchange is boxed for its time.
    ///
    /// Not an `async fn`: an `async fn` keeps its arguments beside the locals they are moved into, and
    /// this future is most of an idle connection's task.
    #[allow(clippy::manual_async_fn)] // See above: an `async fn` would hold `self` twice.
    pub(crate) fn serve<'a, F, Fut, B, E>(
        mut self,
        mut service: F,
        hooks: Hooks<'a>,
    ) -> impl Future<Output = Ended> + 'a
    where
        F: FnMut(Request<H1Body>) -> Fut + 'a,
        Fut: Future<Output = Result<Response<B>, E>> + 'a,
        B: Body<Data = Bytes> + Unpin + 'a,
        E: std::fmt::Display + 'a,
    {
        async move {
            loop {
                // While idle only the socket and its buffers are kept: the exchanges (their heads, their
                // answers) live in a box made once the next request's first bytes are in.
                if self.read_buf.is_empty() {
                    let next =
                        std::future::poll_fn(|cx| match ready!(self.poll_next_bytes(cx, hooks)) {
                            Some(read) => Poll::Ready(read),
                            // Released already (the read registered the wake-up): wait on.
                            None => Poll::Pending,
                        });
                    match next.await {
                        Ok(0) => return Ended::Closed,
                        Ok(_) => {}
                        Err(error) => return Ended::Failed(error),
                    }
                }
                // One box for as long as requests keep coming, not one per request: the exchange's
                // state is most of a request's (6.4 KB with `forward`'s), and a box made per request
                // cost an allocation and a copy of all of it (the future is built on the stack, then
                // moved). It goes when the connection has been idle long enough to release its buffers.
                let busy = Box::pin(self.exchanges(&mut service, hooks));
                match busy.await {
                    Next::Request => {}
                    Next::End(ended) => {
                        if matches!(ended, Ended::Closed) {
                            let _ =
                                std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx))
                                    .await;
                        }
                        return ended;
                    }
                    Next::Switch(sender) => {
                        let read_ahead = self.read_buf.split().freeze();
                        let _ = sender.send(Upgraded {
                            io: Box::new(self.io),
                            read_ahead,
                        });
                        return Ended::Upgraded;
                    }
                }
            }
        }
    }

    /// Requests and their answers, from the rest of the first one's head, while requests keep coming:
    /// `Next::Request` once the connection has been idle long enough to release its buffers
    /// (`poll_next_bytes`). One loop, not a loop over an `exchange` future: awaiting that future moved
    /// all of its state (6.5 KB, most of it `forward`'s) twice per request.
    async fn exchanges<F, Fut, B, E>(&mut self, service: &mut F, hooks: Hooks<'_>) -> Next
    where
        F: FnMut(Request<H1Body>) -> Fut,
        Fut: Future<Output = Result<Response<B>, E>>,
        B: Body<Data = Bytes> + Unpin,
        E: std::fmt::Display,
    {
        loop {
            // One request, in a block of its own: what it holds (its answer's body, its count in
            // `ConnectionActivity`) is dropped before the wait for the next one.
            {
                let closing = hooks.closing;
                let head = match std::future::poll_fn(|cx| self.poll_head(cx)).await {
                    Ok(Some(head)) => head,
                    Ok(None) => return Next::End(Ended::Closed),
                    Err(HeadFailure::Refused(error)) => {
                        self.out().head = super::refusal(&error, &crate::forward::current_date());
                        let _ = std::future::poll_fn(|cx| self.poll_write_out(cx)).await;
                        return Next::End(Ended::Closed);
                    }
                    Err(HeadFailure::Io(error)) => return Next::End(Ended::Failed(error)),
                };
                // Built outside this future (`start`): a local of an async block that was ever borrowed
                // is kept in its state for as long as it is in scope, across the waits for the answer.
                let Started {
                    request,
                    mut feeder,
                    upgrade_sender,
                    head_request,
                    version,
                    keep_alive,
                    wants_trailers,
                } = start(head);
                // The service's future in a block of its own too: its storage ends with the answer's
                // head, and what is kept while the answer is written (its body, its framing) may take
                // the same bytes of the state.
                let response = {
                    // Pinned where it is made: `pin!` of a named future copied it into a second slot
                    // (one memcpy a request more, ~8 more L1 write misses; callgrind,
                    // bench/proxy/README.md).
                    let mut answer = std::pin::pin!(service(request));
                    // Whether the socket was read (or polled) while this request was in progress: the
                    // socket's wrapper (`TimedIo`) learns of a request only from such a read, and
                    // without one would keep the header-read timer after the answer instead of the
                    // idle one.
                    let mut touched = false;
                    std::future::poll_fn(|cx| {
                        loop {
                            if let Poll::Ready(response) = answer.as_mut().poll(cx) {
                                if !touched {
                                    let mut empty = ReadBuf::new(&mut []);
                                    let _ = Pin::new(&mut self.io).poll_read(cx, &mut empty);
                                }
                                return Poll::Ready(Ok(response));
                            }
                            if !ready!(self.poll_feed(cx, feeder.as_mut())).map_err(Some)? {
                                if feeder.as_ref().is_none_or(Feeder::is_done) {
                                    touched = true;
                                    if self.poll_client_gone(cx) {
                                        return Poll::Ready(Err(None));
                                    }
                                }
                                return Poll::Pending;
                            }
                        }
                    })
                    .await
                };
                let response = match response {
                    Ok(Ok(response)) => response,
                    Ok(Err(error)) => {
                        return Next::End(Ended::Failed(io::Error::other(error.to_string())));
                    }
                    // The client went away: its request is dropped.
                    Err(None) => return Next::End(Ended::Closed),
                    Err(Some(error)) => return Next::End(Ended::Failed(error)),
                };
                // Taken apart outside this future too (`answer_head`), for the same reason as `start`.
                let (mut body, framing, keep_alive, switching) = self.answer_head(
                    response,
                    feeder.as_mut(),
                    AnswerContext {
                        head_request,
                        request_version: version,
                        keep_alive: keep_alive && !closing.load(Ordering::Relaxed),
                    },
                );
                if switching {
                    if let Err(error) = std::future::poll_fn(|cx| self.poll_write_out(cx)).await {
                        return Next::End(Ended::Failed(error));
                    }
                    return match upgrade_sender {
                        Some(sender) => Next::Switch(sender),
                        None => Next::End(Ended::Closed),
                    };
                }
                // The framing lives here, across the polls of the answer (how much of its length is left).
                let mut framing = framing;
                let written = std::future::poll_fn(|cx| {
                    self.poll_answer(cx, &mut body, &mut framing, wants_trailers, feeder.as_mut())
                })
                .await;
                if let Err(error) = written {
                    return Next::End(Ended::Failed(error));
                }
                // A body not read to its end leaves the connection in the middle of a request.
                let body_whole = feeder
                    .as_ref()
                    .is_none_or(|feeder| feeder.decoder.is_done() && !feeder.broken);
                if !keep_alive || !body_whole {
                    return Next::End(Ended::Closed);
                }
                // The request ends with this block (its `ActiveRequest` is in the answer's body), and
                // its end wakes the socket's wrapper (`TimedIo`) so that the wrapper arms its idle
                // timer. That is this task, which reads the socket for the next request right below
                // (the read arms it) or parses a pipelined one: the wake-up would only poll the whole
                // task once more per request.
                if let Some(activity) = hooks.activity {
                    drop(activity.reader.take());
                }
            }
            if self.read_buf.is_empty() {
                match std::future::poll_fn(|cx| self.poll_next_bytes(cx, hooks)).await {
                    Some(Ok(0)) => return Next::End(Ended::Closed),
                    Some(Ok(_)) => {}
                    Some(Err(error)) => return Next::End(Ended::Failed(error)),
                    None => return Next::Request,
                }
            }
        }
    }

    /// Writes the answer's head into the out buffer (after what is left of a `100 Continue` begun) and
    /// gives back its body, its framing, whether the connection stays open, and whether the answer
    /// switches protocols. A function of its own, not code of the exchange's future: the answer's
    /// head is borrowed here, and a borrowed local of an async block is kept in its state (one more
    /// slot written per request, cold again by the connection's next request at many connections).
    fn answer_head<B: Body>(
        &mut self,
        response: Response<B>,
        feeder: Option<&mut Feeder>,
        context: AnswerContext,
    ) -> (B, AnswerFraming, bool, bool) {
        let (parts, body) = response.into_parts();
        let length = if body.is_end_stream() {
            Some(0)
        } else {
            body.size_hint().exact()
        };
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        let context = AnswerContext {
            keep_alive: context.keep_alive && !switching,
            ..context
        };
        // The final answer goes out now: no `100 Continue` after its head (it would land in the
        // answer's body; hyper sent one only before any answer), and one begun is finished before it.
        if let Some(feeder) = feeder {
            let begun = feeder.continue_out;
            self.out().head.extend_from_slice(begun);
            feeder.continue_out = b"";
            feeder.expect_continue = false;
        }
        let (framing, keep_alive) = super::encode_head(
            &mut self.out().head,
            parts.status,
            &parts.headers,
            length,
            context,
            &crate::forward::current_date(),
        );
        // Written: the answer's map parses a next head on this thread (no allocation for it then).
        let hyper::http::response::Parts {
            status: _, headers, ..
        } = parts;
        crate::upstream::h1::recycle_fields(headers);
        (body, framing, keep_alive, switching)
    }

    /// Reads until a whole request head is in the read buffer: `None` when the client closed between
    /// requests (or in the middle of a head: there is nobody to answer).
    fn poll_head(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<super::RequestHead>, HeadFailure>> {
        loop {
            if !self.read_buf.is_empty()
                && let Some(head) =
                    super::parse_head_from(&mut self.read_buf, self.limits, &mut self.head_scan)
                        .map_err(HeadFailure::Refused)?
            {
                return Poll::Ready(Ok(Some(head)));
            }
            if ready!(self.poll_fill(cx)).map_err(HeadFailure::Io)? == 0 {
                return Poll::Ready(Ok(None));
            }
        }
    }

    /// While a request waits for its answer and reads nothing more from the client: whether the
    /// client went away (end of stream or an error; a client's half-close is not waited on, as
    /// hyper's default). Reads what the client sends meanwhile (a pipelined request) into the read
    /// buffer, up to the head limit; the read also lets the socket's wrapper run (`TimedIo` writes
    /// queued interim answers on a read, and registers for a wake-up when one is queued).
    fn poll_client_gone(&mut self, cx: &mut Context<'_>) -> bool {
        while self.read_buf.len() < self.limits.max_bytes {
            match self.poll_fill(cx) {
                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// Waits for the next request's first bytes (`Ok(0)`: the client closed), idle meanwhile; `None`
    /// when it released its buffers (the socket's read is registered for a wake-up).
    fn poll_next_bytes(
        &mut self,
        cx: &mut Context<'_>,
        hooks: Hooks<'_>,
    ) -> Poll<Option<io::Result<usize>>> {
        let polled = if self.read_buf.capacity() == 0 {
            // Released: read into the stack, so that the buffer is made only once bytes come.
            let mut bytes = [0u8; 1024];
            let mut buf = ReadBuf::new(&mut bytes);
            Pin::new(&mut self.io).poll_read(cx, &mut buf).map_ok(|()| {
                self.read_buf.extend_from_slice(buf.filled());
                buf.filled().len()
            })
        } else {
            self.poll_fill(cx)
        };
        match polled {
            Poll::Ready(read) => {
                hooks.idle.store(false, Ordering::Relaxed);
                Poll::Ready(Some(read))
            }
            Poll::Pending => {
                hooks.idle.store(true, Ordering::Relaxed);
                // Idle long enough (`TimedIo`'s release timer): the buffers go back, and the next
                // request gets new ones.
                if hooks
                    .activity
                    .is_some_and(ConnectionActivity::take_idle_release)
                {
                    self.release_buffers();
                    return Poll::Ready(None);
                }
                Poll::Pending
            }
        }
    }

    /// Gives the read and write buffers' memory back while the connection waits for a request.
    fn release_buffers(&mut self) {
        if self.read_buf.capacity() > 0 || self.out.is_some() {
            self.read_buf = BytesMut::new();
            self.read_chunk = READ_CHUNK;
            self.out = None;
            crate::memory::buffers_released();
        }
    }

    /// Reads more bytes into the read buffer; `Ok(0)` is the client's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(self.read_chunk as usize);
        }
        let room = self.read_buf.capacity() - self.read_buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.io),
            cx,
            &mut self.read_buf
        ))?;
        if read == room && self.read_chunk < MAX_READ_CHUNK {
            self.read_chunk *= 2;
        }
        Poll::Ready(Ok(read))
    }

    /// Feeds the request's body when its consumer waits: `true` when something changed (the service
    /// should be polled again), `false` when there is nothing to do until a wake-up.
    fn poll_feed(
        &mut self,
        cx: &mut Context<'_>,
        feeder: Option<&mut Feeder>,
    ) -> Poll<io::Result<bool>> {
        let Some(feeder) = feeder else {
            return Poll::Ready(Ok(false));
        };
        let Some(sender) = feeder.sender.as_ref() else {
            return Poll::Ready(Ok(false));
        };
        if sender.is_closed() {
            // The body was dropped unread: the connection closes after the answer.
            feeder.sender = None;
            return Poll::Ready(Ok(false));
        }
        feeder.want.connection.register(cx.waker());
        if !feeder.want.wanted.load(Ordering::Acquire) {
            return Poll::Ready(Ok(false));
        }
        if feeder.expect_continue {
            if feeder.continue_out.is_empty() {
                feeder.continue_out = CONTINUE;
            }
            while !feeder.continue_out.is_empty() {
                let written = ready!(Pin::new(&mut self.io).poll_write(cx, feeder.continue_out))?;
                if written == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                feeder.continue_out = &feeder.continue_out[written..];
            }
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            feeder.expect_continue = false;
        }
        loop {
            let item = match feeder.decoder.decode(&mut self.read_buf, self.limits) {
                Ok(Decoded::Data(data)) => Some(Ok(Frame::data(data))),
                Ok(Decoded::Trailers(trailers)) => Some(Ok(Frame::trailers(trailers))),
                Ok(Decoded::End) => None,
                Ok(Decoded::More) => match ready!(self.poll_fill(cx)) {
                    Ok(0) => Some(Err(BodyError::Incomplete)),
                    Ok(_) => continue,
                    Err(_) => Some(Err(BodyError::Incomplete)),
                },
                Err(error) => Some(Err(error)),
            };
            feeder.want.wanted.store(false, Ordering::Release);
            match item {
                Some(Ok(frame)) => {
                    let _ = sender.send(Ok(frame));
                    if feeder.decoder.is_done() {
                        feeder.sender = None;
                    }
                }
                Some(Err(error)) => {
                    feeder.broken = true;
                    let _ = sender.send(Err(error));
                    feeder.sender = None;
                }
                None => feeder.sender = None,
            }
            return Poll::Ready(Ok(true));
        }
    }

    /// Writes what is in hand of the answer, in one vectored write where the socket takes it all.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_in_hand(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// Writes what is in hand, without a flush.
    fn poll_write_in_hand(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some(out) = self.out.as_deref_mut() else {
            return Poll::Ready(Ok(()));
        };
        while !out.is_empty() {
            let written = ready!(Pin::new(&mut self.io).poll_write_vectored(cx, &out.slices()))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            out.advance(written);
        }
        Poll::Ready(Ok(()))
    }

    fn out(&mut self) -> &mut OutBuf {
        self.out.get_or_insert_with(Box::default)
    }

    /// Writes the answer's head and body. A body frame ready with the head goes out in the same write;
    /// while the body waits, the request's body is fed (the instance may read it as it answers). The
    /// body's trailers go out only to a client that sent `TE: trailers` (`wants_trailers`).
    fn poll_answer<B>(
        &mut self,
        cx: &mut Context<'_>,
        body: &mut B,
        framing: &mut AnswerFraming,
        wants_trailers: bool,
        mut feeder: Option<&mut Feeder>,
    ) -> Poll<io::Result<()>>
    where
        B: Body<Data = Bytes> + Unpin,
    {
        loop {
            let mut waiting = false;
            if !self.out().ended && self.out().has_room(*framing) {
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                        Ok(data) => {
                            if !self.out().frame_data(framing, data) {
                                return Poll::Ready(Err(io::Error::other(
                                    "answer body longer than its length",
                                )));
                            }
                            // The pieces ready now go out together (`OutBuf`): take the next one
                            // first, while there is room.
                            continue;
                        }
                        Err(frame) => {
                            if let Ok(trailers) = frame.into_trailers() {
                                let trailers = wants_trailers.then_some(&trailers);
                                self.out().frame_end(*framing, trailers);
                                self.out().ended = true;
                            }
                        }
                    },
                    Poll::Ready(Some(Err(_))) => {
                        // What was sent stays sent; the client sees a cut answer.
                        let _ = ready!(self.poll_write_out(cx));
                        return Poll::Ready(Err(io::Error::other("answer body failed")));
                    }
                    Poll::Ready(None) => {
                        if matches!(*framing, AnswerFraming::Length(remaining) if remaining > 0) {
                            let _ = ready!(self.poll_write_out(cx));
                            return Poll::Ready(Err(io::Error::other(
                                "answer body shorter than its length",
                            )));
                        }
                        self.out().frame_end(*framing, None);
                        self.out().ended = true;
                    }
                    Poll::Pending => waiting = true,
                }
            }
            if self.out().ended || !waiting {
                ready!(self.poll_write_in_hand(cx))?;
                if self.out().ended {
                    ready!(Pin::new(&mut self.io).poll_flush(cx))?;
                    self.out().ended = false;
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            // The body waits: what is in hand goes out now, and the request's body is fed meanwhile.
            ready!(self.poll_write_in_hand(cx))?;
            ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            if !ready!(self.poll_feed(cx, feeder.as_deref_mut()))? {
                if feeder.as_deref().is_none_or(Feeder::is_done) && self.poll_client_gone(cx) {
                    return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
                }
                return Poll::Pending;
            }
        }
    }
}

/// A request as the service gets it, and what the connection keeps of it for its answer.
struct Started {
    request: Request<H1Body>,
    feeder: Option<Feeder>,
    upgrade_sender: Option<oneshot::Sender<Upgraded>>,
    head_request: bool,
    version: Version,
    keep_alive: bool,
    wants_trailers: bool,
}

/// The request of a head, its body fed by the connection (`Feeder`) when it has one.
///
/// Not code of the exchange's future: a local of an async block that was ever borrowed (`parts.method
/// == ..`, `request.extensions_mut()`) is kept in the block's state for as long as it is in scope,
/// across the wait for the answer. The head's parts and the request were each one more slot of the
/// exchange's state written per request, ~8 cache lines that are cold again by the connection's next
/// request at many connections (bench/proxy/README.md, "Session 32: the HTTP/1 exchange").
fn start(head: super::RequestHead) -> Started {
    let super::RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade,
        wants_trailers,
    } = head;
    let head_request = parts.method == Method::HEAD;
    let version = parts.version;
    let upgrade = (version == Version::HTTP_11 && wants_upgrade).then(oneshot::channel::<Upgraded>);
    let decoder = BodyDecoder::new(framing);
    let (body, feeder) = if decoder.is_done() {
        (H1Body::empty(), None)
    } else {
        let (sender, receiver) = mpsc::unbounded_channel();
        let want = Arc::new(Want::default());
        let body = H1Body {
            receiver: Some(receiver),
            want: Some(Arc::clone(&want)),
            remaining: decoder.remaining(),
        };
        let feeder = Feeder {
            decoder,
            sender: Some(sender),
            want,
            expect_continue,
            continue_out: b"",
            broken: false,
        };
        (body, Some(feeder))
    };
    let mut request = Request::from_parts(parts, body);
    let upgrade_sender = upgrade.map(|(sender, receiver)| {
        request
            .extensions_mut()
            .insert(PendingUpgrade(Arc::new(std::sync::Mutex::new(Some(
                receiver,
            )))));
        sender
    });
    Started {
        request,
        feeder,
        upgrade_sender,
        head_request,
        version,
        keep_alive,
        wants_trailers,
    }
}

/// What the connection shares with its task: the process's stop (`closing`: answers then close the
/// connection), whether it waits for a request head (`idle`: a drain may close it then), and the
/// request count and release timer of its `TimedIo`.
#[derive(Clone, Copy)]
pub(crate) struct Hooks<'a> {
    pub(crate) closing: &'a AtomicBool,
    pub(crate) idle: &'a AtomicBool,
    pub(crate) activity: Option<&'a ConnectionActivity>,
}

/// What follows an exchange.
enum Next {
    Request,
    End(Ended),
    Switch(oneshot::Sender<Upgraded>),
}

enum HeadFailure {
    Refused(HeadError),
    Io(io::Error),
}

/// A request body read from the client's connection, fed by the connection as it is polled.
#[derive(Debug)]
pub(crate) struct H1Body {
    receiver: Option<mpsc::UnboundedReceiver<Result<Frame<Bytes>, BodyError>>>,
    want: Option<Arc<Want>>,
    // Bytes still due of a `Content-Length` body.
    remaining: Option<u64>,
}

impl H1Body {
    pub(crate) fn empty() -> H1Body {
        H1Body {
            receiver: None,
            want: None,
            remaining: Some(0),
        }
    }
}

impl Body for H1Body {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        let Some(receiver) = this.receiver.as_mut() else {
            return Poll::Ready(None);
        };
        match receiver.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if let (Ok(frame), Some(remaining)) = (&item, this.remaining.as_mut())
                    && let Some(data) = frame.data_ref()
                {
                    *remaining = remaining.saturating_sub(data.len() as u64);
                }
                if item.is_err() {
                    this.receiver = None;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                this.receiver = None;
                this.remaining = Some(0);
                Poll::Ready(None)
            }
            Poll::Pending => {
                if let Some(want) = &this.want
                    && !want.wanted.swap(true, Ordering::AcqRel)
                {
                    want.connection.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.receiver.is_none() || self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(remaining) => SizeHint::with_exact(remaining),
            None => SizeHint::default(),
        }
    }
}

/// In a request that asks to switch protocols: the client's connection, once the answer said 101.
/// (A request's extensions must be `Clone`: the receiver is shared, and taken once. Upgrades only, as
/// hyper's `OnUpgrade`; never on a plain request's path.)
#[derive(Debug, Clone)]
pub(crate) struct PendingUpgrade(Arc<std::sync::Mutex<Option<oneshot::Receiver<Upgraded>>>>);

impl PendingUpgrade {
    /// The receiver of the upgraded connection; `None` when already taken.
    pub(crate) fn take(&self) -> Option<oneshot::Receiver<Upgraded>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }
}

/// The client's connection after a 101 answer: the bytes it sent after its request head first, then
/// the socket.
pub(crate) struct Upgraded {
    io: Box<dyn Io>,
    read_ahead: Bytes,
}

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

impl std::fmt::Debug for Upgraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upgraded")
            .field("read_ahead", &self.read_ahead.len())
            .finish_non_exhaustive()
    }
}

impl AsyncRead for Upgraded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.read_ahead.is_empty() {
            let n = buf.remaining().min(this.read_ahead.len());
            buf.put_slice(&this.read_ahead[..n]);
            this.read_ahead.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Upgraded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
