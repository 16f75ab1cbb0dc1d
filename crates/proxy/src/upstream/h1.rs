//! An HTTP/1.1 connection to an instance, driven by the task of the request that uses it.
//!
//! hyper's client ran a driver task per upstream connection and talked to it over channels: a request
//! went through a dispatch channel to that task, its answer head came back over a oneshot, and the
//! answer body over another channel, each hop a wake-up and a poll of another task. Here the request's
//! own future writes the request and reads the answer head, and the answer body (`AnswerBody`) reads
//! straight from the socket when the client's connection polls it. No task, no channel: the connection
//! is owned by the pool while idle, and by the request's future or its answer body while in use.
//!
//! Upgrades (WebSocket) stay on hyper's client (`upstream::send_upgrade`): they are rare, the tunnel
//! copies bytes on its own afterwards, and hyper hands the socket over cleanly.

use std::cell::{Cell, RefCell};
use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Version};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

use crate::active::InterimSender;
use crate::body::RequestBody;
use crate::error::UpstreamError;
use crate::h1_fields::{parse_content_length, transfer_codings};
use crate::server::h1::{HeadLook, HeadScan};

/// How much the read buffer grows by at first; doubled after each read that filled it, up to
/// `MAX_READ_CHUNK`, so a large answer is read in large reads (as hyper's adaptive read buffer did).
const READ_CHUNK: usize = 8 * 1024;
const MAX_READ_CHUNK: usize = 128 * 1024;

/// The largest answer head read, as hyper's client allowed (its default read buffer limit): a larger
/// one is an error (502).
pub(crate) const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;

/// Header fields parsed on the stack; an answer with more is parsed again into the heap, up to the
/// route's limit. 32, not 100: the ranges noted for them (`FieldAt`) are zeroed for every answer
/// (1.6 KB at 100, ~105 instructions), and an app's answer carries 5 to 20 fields.
const STACK_FIELDS: usize = 32;

/// The largest spare kept per thread (see `SPARES`): a head buffer of this many bytes, a header map of
/// this many fields. Larger ones are rare and freed as before.
const SPARE_HEAD_BYTES: usize = 16 * 1024;
const SPARE_FIELDS: usize = 128;

thread_local! {
    /// Per-thread spares, so that a small request allocates neither its head's buffer, nor its header
    /// maps, nor (mostly) the buffer its answer is read into: the buffer the last request's head was
    /// encoded into, once written out, the header maps of the last requests sent, once their answer's
    /// head came, and of the last answers written to HTTP/1 clients (`recycle_fields`; taken by the next
    /// answer heads and client request heads parsed, `fields_map`), and the read buffers of the last
    /// connections checked in. A thread keeps one head buffer and the maps and read buffers (8 KB each,
    /// usually) its batches of answers took since its sweep's last tick: those it did not need for a
    /// whole tick are freed (`trim_spares`; at most `SPARE_MAPS` and `SPARE_READ_BUFS` in a burst). See
    /// bench/proxy/README.md, "Session 29: the upstream side at 512 connections" and "Session 34: the
    /// workers kept even, and spares that last a busy moment".
    static SPARES: Spares = const {
        Spares {
            head: Cell::new(Vec::new()),
            fields: RefCell::new(Vec::new()),
            read: RefCell::new(Vec::new()),
            fields_low: Cell::new(0),
            read_low: Cell::new(0),
            taken: Cell::new(false),
        }
    };
}

struct Spares {
    head: Cell<Vec<u8>>,
    // Emptied header maps, up to `SPARE_MAPS`: several, as a thread parses the heads of other requests
    // between a request's parse and its answer's write.
    fields: RefCell<Vec<HeaderMap>>,
    // The read buffers the last connections checked in on this thread gave back (`release_buffers`),
    // up to `SPARE_READ_BUFS`: each empty, with the rest of the memory its answer was read into, so the
    // next answers are read into them without allocating (heads and bodies are shared slices of them, as
    // before). Several, as a connection holds its buffer from the answer's first read to its check-in
    // and many answers are read at once; one spare saved 0.45 of the 2 allocations. Only buffers that
    // never grew past `READ_CHUNK` are kept.
    read: RefCell<Vec<BytesMut>>,
    // The fewest maps and read buffers the thread had spare since its sweep's last tick
    // (`trim_spares`): that many were not needed for a whole tick, and are freed then.
    fields_low: Cell<usize>,
    read_low: Cell<usize>,
    // Whether a spare of any kind was taken since the sweep's last tick.
    taken: Cell<bool>,
}

/// The fields the proxy adds to an instance's answer in most cases, which its header map is made with
/// room for: its `x-request-id` (when the instance sent none) and, for an HTTP/2 client, its `date` (when
/// the instance sent none; HTTP/1 writes it beside the map). Rarer ones grow the map when added: HSTS on an
/// HTTPS route that sets it, `connection: close` to an HTTP/1 client while the proxy stops.
///
/// Not more: a map has room for at most 6 fields until it has 16 slots, and an HTTP/2 client's request
/// maps (made by `h2`, then kept by the thread, `recycle_fields`, for the next answers parsed) have 8 when
/// the request has few fields, as a load tool's do: with room for 8 more, every small answer's map was
/// made anew (2 allocations; bench/proxy/README.md, "Session 33: HTTP/2 to clients"). An HTTP/1 client's
/// request maps are made with more room (`server::h1`), so its answers find a spare map either way.
const ANSWER_ADDED_FIELDS: usize = 2;

/// At most how many emptied header maps a thread keeps (see `Spares::fields`): ~1.5 KB each for a
/// small head. Four overflowed under 8 connections on a thread (0.6 maps a request freed, and as many
/// allocated); sixteen under 64 and 512 (1.2 maps a request allocated: answers come back by the batch).
/// Those a thread did not need for a tick of its sweep are freed (`trim_spares`), so this bounds a burst.
const SPARE_MAPS: usize = 1024;

/// Keeps a header map whose fields are no longer needed (a request that has its answer, an answer
/// written to an HTTP/1 client), emptied, for the next head this thread parses.
pub(crate) fn recycle_fields(mut fields: HeaderMap) {
    if fields.capacity() == 0 || fields.capacity() > SPARE_FIELDS {
        return;
    }
    // Emptied first: its values share the buffers heads were read into, which must not be kept alive.
    fields.clear();
    // Ignored while the thread's locals are being torn down.
    let _ = SPARES.try_with(|spares| {
        if let Ok(mut maps) = spares.fields.try_borrow_mut()
            && maps.len() < SPARE_MAPS
        {
            maps.push(fields);
        }
    });
}

/// An empty header map for `fields` fields: one of the thread's spares when it has one.
pub(crate) fn fields_map(fields: usize) -> HeaderMap {
    let spare = SPARES
        .try_with(|spares| {
            let mut maps = spares.fields.try_borrow_mut().ok()?;
            let map = maps.pop()?;
            spares
                .fields_low
                .set(spares.fields_low.get().min(maps.len()));
            spares.taken.set(true);
            Some(map)
        })
        .ok()
        .flatten();
    match spare {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// An empty buffer for a request head of about `bytes` bytes: the thread's spare when it has one.
fn head_buf(bytes: usize) -> Vec<u8> {
    let mut buf = SPARES
        .try_with(|spares| {
            spares.taken.set(true);
            spares.head.take()
        })
        .unwrap_or_default();
    buf.reserve(bytes);
    buf
}

/// At most how many idle connections' read buffers a thread keeps (see `Spares::read`): eight ran out
/// under 64 and 512 client connections (0.7 buffers a request allocated, ~300 instructions). Those a
/// thread did not need for a tick of its sweep are freed (`trim_spares`): a busy thread keeps what its
/// batches take (8 KB each), an idle one none; this bounds a burst (8 MB).
const SPARE_READ_BUFS: usize = 1024;

/// Keeps an idle connection's empty read buffer for a next answer read on this thread.
fn recycle_read_buf(buf: BytesMut) {
    if buf.capacity() == 0 {
        return;
    }
    let _ = SPARES.try_with(|spares| {
        if let Ok(mut bufs) = spares.read.try_borrow_mut()
            && bufs.len() < SPARE_READ_BUFS
        {
            bufs.push(buf);
        }
    });
}

/// Frees the spares this thread did not need since the previous call (its sweep's tick,
/// `server::sweep_idle_upstreams`): as many read buffers and header maps as it had spare all along (the
/// least recently kept first), and every spare, the head buffer too, when it took none in that tick. A
/// busy thread keeps what its batches take; one that went quiet keeps nothing after a tick. Returns
/// whether it freed any.
pub(crate) fn trim_spares() -> bool {
    fn trim<T>(spares: &RefCell<Vec<T>>, low: &Cell<usize>, quiet: bool) -> bool {
        let Ok(mut spares) = spares.try_borrow_mut() else {
            return false;
        };
        let unused = if quiet {
            spares.len()
        } else {
            low.get().min(spares.len())
        };
        spares.drain(..unused);
        if spares.is_empty() && spares.capacity() > 0 {
            *spares = Vec::new();
        }
        low.set(spares.len());
        unused > 0
    }
    SPARES
        .try_with(|spares| {
            let quiet = !spares.taken.replace(false);
            let mut freed = trim(&spares.fields, &spares.fields_low, quiet);
            freed |= trim(&spares.read, &spares.read_low, quiet);
            if quiet {
                let head = spares.head.take();
                freed |= head.capacity() > 0;
            }
            freed
        })
        .unwrap_or(false)
}

/// One of the thread's spare read buffers, if it has one.
fn spare_read_buf() -> Option<BytesMut> {
    SPARES
        .try_with(|spares| {
            let mut bufs = spares.read.try_borrow_mut().ok()?;
            let buf = bufs.pop()?;
            spares.read_low.set(spares.read_low.get().min(bufs.len()));
            spares.taken.set(true);
            Some(buf)
        })
        .ok()
        .flatten()
}

/// Keeps a request head's buffer, written out, for the next head this thread encodes.
fn recycle_head_buf(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > SPARE_HEAD_BYTES {
        return;
    }
    buf.clear();
    let _ = SPARES.try_with(|spares| spares.head.set(buf));
}

/// An open HTTP/1.1 connection to an instance.
#[derive(Debug)]
pub(crate) struct Connection {
    stream: TcpStream,
    read_buf: BytesMut,
    read_chunk: usize,
    /// The timer of the route's timeout to an answer head, kept for the connection's next request
    /// (`upstream::AnswerTimer`); taken out while a request waits for its answer.
    pub(crate) answer_timer: Option<crate::upstream::AnswerTimer>,
}

impl Connection {
    pub(crate) fn new(stream: TcpStream) -> Connection {
        Connection {
            stream,
            read_buf: BytesMut::new(),
            read_chunk: READ_CHUNK,
            answer_timer: None,
        }
    }

    /// Whether an idle connection can carry another request: the instance neither closed it nor sent
    /// anything unasked. Costs no system call unless the socket was marked readable.
    pub(crate) fn is_reusable_idle(&mut self) -> bool {
        if !self.read_buf.is_empty() {
            return false;
        }
        let mut probe = [0u8; 1];
        matches!(self.stream.try_read(&mut probe), Err(error) if error.kind() == io::ErrorKind::WouldBlock)
    }

    /// Gives the read buffer's memory back while the connection sits idle in the pool: to the thread,
    /// for the next answer read on it (see `SPARES`).
    pub(crate) fn release_buffers(&mut self) {
        if self.read_buf.is_empty() {
            let buf = std::mem::take(&mut self.read_buf);
            // A buffer grown for a large answer is freed, not kept.
            if self.read_chunk == READ_CHUNK {
                recycle_read_buf(buf);
            }
            self.read_chunk = READ_CHUNK;
        }
    }

    #[cfg(test)]
    pub(crate) fn read_capacity(&self) -> usize {
        self.read_buf.capacity()
    }

    /// Reads more bytes into the read buffer; `Ok(0)` is the instance's end of stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() == 0
            && let Some(spare) = spare_read_buf()
        {
            self.read_buf = spare;
        }
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(self.read_chunk);
        }
        let room = self.read_buf.capacity() - self.read_buf.len();
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.stream),
            cx,
            &mut self.read_buf
        ))?;
        if read == room && self.read_chunk < MAX_READ_CHUNK {
            self.read_chunk *= 2;
        }
        Poll::Ready(Ok(read))
    }
}

/// What is left to write of a request: framing bytes in hand (`buf`: the head, a chunk's size line),
/// then body bytes as they came from the client (`data`, never copied), then the chunk's closing CRLF
/// (`tail`), all in one vectored write where the socket takes them; then the rest of its body.
struct Writer {
    buf: Vec<u8>,
    written: usize,
    data: Bytes,
    tail: &'static [u8],
    // The request body still to be read and framed; `None` once its end was framed.
    body: Option<RequestBody>,
    framing: RequestFraming,
    // Any byte of the request reached the socket (the request can no longer be given back).
    any_written: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestFraming {
    /// `Content-Length`: how many bytes are still due.
    Length(u64),
    Chunked,
}

impl Writer {
    fn is_done(&self) -> bool {
        self.body.is_none() && !self.in_hand()
    }

    fn in_hand(&self) -> bool {
        self.written < self.buf.len() || !self.data.is_empty() || !self.tail.is_empty()
    }

    /// Marks `n` bytes of `buf`, `data` and `tail`, in that order, as written.
    fn advance(&mut self, n: usize) {
        let from_buf = (self.buf.len() - self.written).min(n);
        self.written += from_buf;
        let from_data = self.data.len().min(n - from_buf);
        self.data.advance(from_data);
        let from_tail = self.tail.len().min(n - from_buf - from_data);
        self.tail = &self.tail[from_tail..];
    }

    /// Writes what is in hand and frames more of the body, until done or the socket or the body is not
    /// ready. Errors carry whether nothing was written at all.
    fn poll_write(
        &mut self,
        stream: &mut TcpStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), UpstreamError>> {
        loop {
            while self.in_hand() {
                let slices = [
                    io::IoSlice::new(&self.buf[self.written..]),
                    io::IoSlice::new(&self.data),
                    io::IoSlice::new(self.tail),
                ];
                match Pin::new(&mut *stream).poll_write_vectored(cx, &slices) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(UpstreamError::Io(
                            io::ErrorKind::WriteZero.into(),
                        )));
                    }
                    Poll::Ready(Ok(n)) => {
                        self.advance(n);
                        self.any_written = true;
                    }
                    Poll::Ready(Err(error)) => return Poll::Ready(Err(UpstreamError::Io(error))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            self.buf.clear();
            self.written = 0;
            let Some(body) = self.body.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.frame_data(data)?,
                    Err(frame) => {
                        if let (Ok(trailers), RequestFraming::Chunked) =
                            (frame.into_trailers(), self.framing)
                        {
                            self.buf.extend_from_slice(b"0\r\n");
                            encode_trailers(&mut self.buf, &trailers, true);
                            self.buf.extend_from_slice(b"\r\n");
                            self.body = None;
                        }
                    }
                },
                Some(Err(error)) => {
                    self.body = None;
                    return Poll::Ready(Err(UpstreamError::RequestBody(error)));
                }
                None => {
                    self.body = None;
                    match self.framing {
                        RequestFraming::Chunked => self.buf.extend_from_slice(b"0\r\n\r\n"),
                        RequestFraming::Length(0) => {}
                        RequestFraming::Length(_) => {
                            return Poll::Ready(Err(UpstreamError::RequestBodyLength));
                        }
                    }
                }
            }
        }
    }

    /// Puts a chunk of the body in hand, framed: as it is with a `Content-Length`, between its size line
    /// and a CRLF when chunked.
    fn frame_data(&mut self, data: Bytes) -> Result<(), UpstreamError> {
        if data.is_empty() {
            return Ok(());
        }
        match &mut self.framing {
            RequestFraming::Length(remaining) => {
                let length = data.len() as u64;
                if length > *remaining {
                    return Err(UpstreamError::RequestBodyLength);
                }
                *remaining -= length;
            }
            RequestFraming::Chunked => {
                use std::io::Write;
                let _ = write!(self.buf, "{:x}\r\n", data.len());
                self.tail = b"\r\n";
            }
        }
        self.data = data;
        Ok(())
    }
}

/// Encodes the trailer fields that may be passed on (`is_passable_trailer`); `request`: trailers of a
/// request (to an instance), else of an answer (to a client).
pub(crate) fn encode_trailers(buf: &mut Vec<u8>, trailers: &HeaderMap, request: bool) {
    for (name, value) in trailers {
        // A value with whitespace at an end came over HTTP/2, malformed (RFC 9113 section 8.2.1): too late
        // for a 400 (the head and body went on), so the field is left out, as a forbidden name is.
        if !is_passable_trailer(name, request)
            || crate::forward::has_edge_whitespace(value.as_bytes())
        {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
}

/// Whether a trailer field may be passed on: not one that frames, routes, authenticates or controls a
/// message (RFC 9110 section 6.5.1; the list hyper's HTTP/1 code, which this replaced, dropped), nor a
/// hop-by-hop one, nor in a request one of the forwarding fields the proxy writes itself (an app that
/// merges trailers into the header section would believe a client's).
fn is_passable_trailer(name: &HeaderName, request: bool) -> bool {
    let framing_or_control = matches!(
        *name,
        header::AUTHORIZATION
            | header::CACHE_CONTROL
            | header::CONTENT_ENCODING
            | header::CONTENT_LENGTH
            | header::CONTENT_RANGE
            | header::CONTENT_TYPE
            | header::HOST
            | header::MAX_FORWARDS
            | header::SET_COOKIE
            | header::TRAILER
            | header::TRANSFER_ENCODING
            | header::TE
            | header::CONNECTION
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
    ) || matches!(name.as_str(), "keep-alive" | "proxy-connection");
    let forwarding = request
        && (crate::forward::is_client_forwarding_header(name) || name.as_str() == "x-request-id");
    !framing_or_control && !forwarding
}

/// How an answer's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AnswerFraming {
    /// This many bytes left (0: no body, or read to its end).
    Length(u64),
    Chunked(ChunkState),
    /// Until the instance closes.
    Close,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A failed exchange: `unsent` when no byte of the request was written (the request, still whole,
/// may go on another connection); `answered` when a byte of an answer was read (an invalid or cut
/// answer is an answer: the request is not sent again, nginx's `proxy_next_upstream` default).
pub(crate) struct ExchangeError {
    pub(crate) error: UpstreamError,
    pub(crate) unsent: bool,
    pub(crate) answered: bool,
}

/// Writes `request` on `connection` and reads the answer's head. On success the request's body has
/// been moved into the answer body (what the instance has not taken of it yet is written while the
/// answer is read); on an unsent failure the request is left whole.
pub(crate) async fn exchange(
    mut connection: Connection,
    request: &mut Request<RequestBody>,
    max_fields: usize,
    interim: Option<&InterimSender>,
    added: Option<AddedFields<'_>>,
) -> Result<(hyper::http::response::Parts, AnswerBody), ExchangeError> {
    let head_request = *request.method() == Method::HEAD;
    let (mut writer, mut body_in_request) = start(request, added);
    let mut writing = true;
    // Whether a byte of the answer came (an interim one included).
    let mut answered = false;
    // How much of an incomplete answer head was looked at: one dripped a byte a read costs linear work.
    let mut scan = HeadScan::default();
    let parsed = std::future::poll_fn(|cx| {
        if writing {
            let mut polled = writer.poll_write(&mut connection.stream, cx);
            // The body is taken from the request once a byte of its head is out: from then on the
            // request cannot be given back anyway.
            if body_in_request && writer.any_written {
                body_in_request = false;
                writer.body = Some(std::mem::replace(request.body_mut(), RequestBody::empty()));
                polled = writer.poll_write(&mut connection.stream, cx);
            }
            match polled {
                Poll::Ready(Ok(())) => {
                    writing = false;
                    // Written out: the next request's head goes in the same buffer.
                    recycle_head_buf(std::mem::take(&mut writer.buf));
                }
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ExchangeError {
                        unsent: !writer.any_written,
                        error,
                        answered,
                    }));
                }
                Poll::Pending => {}
            }
        }
        loop {
            if !connection.read_buf.is_empty() {
                match next_head(
                    &mut connection.read_buf,
                    &mut scan,
                    max_fields,
                    head_request,
                ) {
                    Ok(Some(Parsed::Final(parts, framing, keep_alive))) => {
                        return Poll::Ready(Ok((parts, framing, keep_alive)));
                    }
                    Ok(Some(Parsed::Interim(status, mut headers))) => {
                        // 100 Continue is hop-by-hop (hyper answered the client's own); others (103
                        // Early Hints) go on to an HTTP/1.1 client.
                        if status != StatusCode::CONTINUE
                            && let Some(interim) = interim
                        {
                            crate::forward::strip_hop_by_hop(&mut headers, false);
                            interim.send(status, &headers);
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        return Poll::Ready(Err(ExchangeError {
                            error,
                            unsent: false,
                            answered: true,
                        }));
                    }
                }
            }
            match connection.poll_fill(cx) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(ExchangeError {
                        // A pooled connection the instance closed before it read anything: unsent
                        // only when not a byte of the request went out.
                        unsent: !writer.any_written,
                        error: UpstreamError::ClosedBeforeAnswer,
                        answered,
                    }));
                }
                Poll::Ready(Ok(_)) => answered = true,
                Poll::Ready(Err(error)) => {
                    return Poll::Ready(Err(ExchangeError {
                        unsent: !writer.any_written,
                        error: UpstreamError::Io(error),
                        answered,
                    }));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    })
    .await;
    let (parts, framing, keep_alive) = parsed?;
    // What the instance has not taken of the request yet goes on beside the answer.
    let writer = (!writer.is_done()).then(|| Box::new(writer));
    Ok((
        parts,
        AnswerBody {
            connection: Some(connection),
            framing,
            keep_alive,
            writer,
            failed: None,
        },
    ))
}

/// The proxy's own fields for an HTTP/1 instance (`forward::prepare_request_headers`), written by
/// `start` straight after the request's other fields instead of going through its header map: hashing
/// four names of 12 to 17 bytes into the map and encoding them out of it again cost about 1,100
/// instructions a request, writing them here about 100 (session 30).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AddedFields<'a> {
    pub(crate) forwarded_for: &'a HeaderValue,
    pub(crate) forwarded_proto: &'static str,
    pub(crate) forwarded_host: &'a HeaderValue,
    pub(crate) request_id: &'a HeaderValue,
}

impl AddedFields<'_> {
    /// The fields as `(name, value)` pairs, in the order they are written.
    pub(crate) fn pairs(&self) -> [(&'static str, &[u8]); 4] {
        [
            ("x-forwarded-for", self.forwarded_for.as_bytes()),
            ("x-forwarded-proto", self.forwarded_proto.as_bytes()),
            ("x-forwarded-host", self.forwarded_host.as_bytes()),
            ("x-request-id", self.request_id.as_bytes()),
        ]
    }

    fn encoded_len(&self) -> usize {
        self.pairs()
            .iter()
            .map(|(name, value)| name.len() + value.len() + 4)
            .sum()
    }

    fn encode(&self, buf: &mut Vec<u8>) {
        for (name, value) in self.pairs() {
            buf.extend_from_slice(name.as_bytes());
            buf.extend_from_slice(b": ");
            buf.extend_from_slice(value);
            buf.extend_from_slice(b"\r\n");
        }
    }
}

/// Encodes the request's head (and a body held whole) into one buffer, with `added` after the
/// request's fields. Answers whether the body is streamed after it (it stays in the request until then).
fn start(request: &Request<RequestBody>, added: Option<AddedFields<'_>>) -> (Writer, bool) {
    let body = request.body();
    let end_stream = body.is_end_stream();
    let held = body.held();
    let framing = if end_stream {
        RequestFraming::Length(0)
    } else if let Some(length) = body.size_hint().exact() {
        RequestFraming::Length(length)
    } else {
        RequestFraming::Chunked
    };
    let path = request
        .uri()
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    let headers = request.headers();
    // An estimate, not a pass over the fields to sum their lengths: the thread's spare buffer has
    // held earlier heads, and a longer head grows it once.
    let mut buf = head_buf(
        256 + path.len() + 48 * headers.len() + added.as_ref().map_or(0, AddedFields::encoded_len),
    );
    buf.extend_from_slice(request.method().as_str().as_bytes());
    buf.push(b' ');
    buf.extend_from_slice(path.as_bytes());
    buf.extend_from_slice(b" HTTP/1.1\r\n");
    let mut had_length = false;
    for (name, value) in headers {
        // The framing fields are the proxy's own, from the body it sends.
        if name == header::CONTENT_LENGTH {
            had_length = true;
            continue;
        }
        if name == header::TRANSFER_ENCODING {
            continue;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if let Some(added) = added {
        added.encode(&mut buf);
    }
    match framing {
        // An empty body keeps the client's `content-length: 0` (some apps want it on a POST).
        RequestFraming::Length(0) if end_stream => {
            if had_length {
                buf.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(length) => {
            use std::io::Write;
            let _ = write!(buf, "content-length: {length}\r\n");
        }
        RequestFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    buf.extend_from_slice(b"\r\n");
    let mut framing = framing;
    // A held body goes out with the head, in the same write, without a copy.
    let data = match held {
        Some(held) => {
            framing = RequestFraming::Length(0);
            held.clone()
        }
        None => Bytes::new(),
    };
    let streamed = !end_stream && held.is_none();
    (
        Writer {
            buf,
            written: 0,
            data,
            tail: b"",
            body: None,
            framing,
            any_written: false,
        },
        streamed,
    )
}

enum Parsed {
    Final(hyper::http::response::Parts, AnswerFraming, bool),
    Interim(StatusCode, HeaderMap),
}

/// `parse_head` for an exchange that keeps `scan` between its reads: an incomplete head is scanned only
/// in the bytes that came since the last read, and parsed again (for an early 502) only at doubling
/// lengths and at the limit (`server::h1::HeadScan`, the client side's; before session 31 every read
/// parsed the whole buffer again, work in the square of a dripped head's length).
fn next_head(
    buf: &mut BytesMut,
    scan: &mut HeadScan,
    max_fields: usize,
    head_request: bool,
) -> Result<Option<Parsed>, UpstreamError> {
    // Most answer heads come whole in the first read: parsed at once, with no scan before (a scan of
    // every answer head cost ~100 instructions a request). One that did not is scanned once whole,
    // then only in its new bytes.
    let started = scan.is_started();
    if started && scan.look(buf, MAX_HEAD_BYTES) == HeadLook::Wait {
        return Ok(None);
    }
    let parsed = parse_head(buf, max_fields, head_request);
    match parsed {
        Ok(None) if !started => {
            scan.look(buf, MAX_HEAD_BYTES);
        }
        Ok(None) => {}
        _ => *scan = HeadScan::default(),
    }
    parsed
}

/// Parses one answer head from the front of `buf` and removes it: `None` while incomplete.
///
/// One pass of `httparse`, into field arrays left uninitialised (hyper's way: a zeroed array of 100
/// fields cost more than a parse), that notes where each field lies; the head is then split off the
/// buffer and every value shares it instead of being copied. (A second pass over the split head did the
/// same for 740 more instructions per answer.) The fields are looked at for framing and keep-alive as
/// they go into the map, not looked up again.
fn parse_head(
    buf: &mut BytesMut,
    max_fields: usize,
    head_request: bool,
) -> Result<Option<Parsed>, UpstreamError> {
    let mut stack_at = [FieldAt::default(); STACK_FIELDS];
    let mut heap_at = Vec::new();
    let found = {
        let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
        match parse_fields(
            buf,
            &mut stack[..max_fields.min(STACK_FIELDS)],
            &mut stack_at,
        ) {
            Ok(httparse::Status::Complete(found)) => found,
            Err(httparse::Error::TooManyHeaders) if max_fields > STACK_FIELDS => {
                let mut heap = Vec::with_capacity(max_fields);
                heap.resize_with(max_fields, MaybeUninit::uninit);
                heap_at.resize(max_fields, FieldAt::default());
                match parse_fields(buf, &mut heap, &mut heap_at) {
                    Ok(httparse::Status::Complete(found)) => found,
                    other => return head_not_complete(other, buf.len(), max_fields),
                }
            }
            other => return head_not_complete(other, buf.len(), max_fields),
        }
    };
    if found.length > MAX_HEAD_BYTES {
        return Err(UpstreamError::HeadTooLarge);
    }
    let fields = if heap_at.is_empty() {
        &stack_at[..found.fields]
    } else {
        &heap_at[..found.fields]
    };
    let head = buf.split_to(found.length).freeze();
    let status = StatusCode::from_u16(found.code)
        .map_err(|_| UpstreamError::InvalidHead(httparse::Error::Status))?;
    let version = if found.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the fields the proxy adds to most answers (`ANSWER_ADDED_FIELDS`) without growing the map.
    let mut headers = fields_map(fields.len() + ANSWER_ADDED_FIELDS);
    let mut close = false;
    let mut keep_alive_token = false;
    let mut transfer_encoding = None;
    // Any transfer coding but one `chunked` over every field (`gzip, chunked`, `chunked, chunked`).
    let mut unknown_coding = false;
    let mut chunked_codings = 0usize;
    let mut content_length = None;
    let mut bad_length = false;
    for at in fields {
        let (Some(name), Some(field_value)) = (head.get(at.name()), head.get(at.value())) else {
            return Err(UpstreamError::InvalidHead(httparse::Error::HeaderName));
        };
        let name = crate::server::h1::field_name(name)
            .map_err(|_| UpstreamError::InvalidHead(httparse::Error::HeaderName))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field_value))
            .map_err(|_| UpstreamError::InvalidHead(httparse::Error::HeaderValue))?;
        if name == header::CONTENT_LENGTH {
            match (parse_content_length(field_value), content_length) {
                (Some(length), None) => content_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => bad_length = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            let codings = transfer_codings(field_value);
            // Whether the last coding of the last field is chunked.
            transfer_encoding = Some(codings.chunked_last);
            chunked_codings += codings.chunked;
            unknown_coding |= codings.other;
        } else if name == header::CONNECTION {
            for token in field_value.split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        }
        headers.append(name, value);
    }
    if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
        return Ok(Some(Parsed::Interim(status, headers)));
    }
    // This client never asks to switch protocols (upgrades go through hyper's, `send_upgrade`): a 101
    // would leave the client's connection switched to nothing (HAProxy answers 502 too).
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamError::InvalidHead(httparse::Error::Status));
    }
    // A transfer coding the proxy does not decode would be dropped on the way to the client, and the
    // coded bytes passed as the body (HAProxy answers 502; RFC 9112 section 6.1).
    if transfer_encoding.is_some()
        && (unknown_coding || chunked_codings > 1)
        && !head_request
        && status != StatusCode::NO_CONTENT
        && status != StatusCode::NOT_MODIFIED
    {
        return Err(UpstreamError::InvalidHead(httparse::Error::HeaderValue));
    }
    let mut keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        AnswerFraming::Done
    } else if let Some(chunked_last) = transfer_encoding {
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            // Both: a message smuggling risk; read by Transfer-Encoding and not reused.
            keep_alive = false;
        }
        if chunked_last {
            AnswerFraming::Chunked(ChunkState::Size)
        } else {
            keep_alive = false;
            AnswerFraming::Close
        }
    } else if bad_length {
        return Err(UpstreamError::InvalidContentLength);
    } else if let Some(length) = content_length {
        if length == 0 {
            AnswerFraming::Done
        } else {
            AnswerFraming::Length(length)
        }
    } else {
        keep_alive = false;
        AnswerFraming::Close
    };
    let mut parts = hyper::Response::new(()).into_parts().0;
    parts.status = status;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(Parsed::Final(parts, framing, keep_alive)))
}

/// Where one field of a head lies in it: its name's and its value's byte ranges.
#[derive(Debug, Clone, Copy, Default)]
struct FieldAt {
    name: (u32, u32),
    value: (u32, u32),
}

impl FieldAt {
    fn name(self) -> std::ops::Range<usize> {
        self.name.0 as usize..self.name.1 as usize
    }

    fn value(self) -> std::ops::Range<usize> {
        self.value.0 as usize..self.value.1 as usize
    }
}

/// A whole head found by `parse_fields`.
struct Found {
    length: usize,
    code: u16,
    version: Option<u8>,
    /// How many of the `FieldAt`s it filled.
    fields: usize,
}

/// One pass of `httparse` over `buf` with room for `fields.len()` fields; a whole head notes where each
/// of its fields lies in `at` (as long as `fields`).
fn parse_fields<'b>(
    buf: &'b [u8],
    fields: &mut [MaybeUninit<httparse::Header<'b>>],
    at: &mut [FieldAt],
) -> httparse::Result<Found> {
    #[cfg(test)]
    crate::server::h1::tests::count_work(buf.len());
    let mut answer = httparse::Response::new(&mut []);
    let length = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut answer,
        buf,
        fields,
    )? {
        httparse::Status::Complete(length) => length,
        httparse::Status::Partial => return Ok(httparse::Status::Partial),
    };
    // Every name and value is a slice of `buf`; a head is at most `MAX_HEAD_BYTES` (checked by the
    // caller before the ranges are used), so its offsets fit in a u32.
    let base = buf.as_ptr() as usize;
    let range = |part: &[u8]| {
        let start = (part.as_ptr() as usize).wrapping_sub(base);
        (start as u32, start.wrapping_add(part.len()) as u32)
    };
    for (field, at) in answer.headers.iter().zip(at.iter_mut()) {
        *at = FieldAt {
            name: range(field.name.as_bytes()),
            value: if field.value.is_empty() {
                (0, 0)
            } else {
                range(field.value)
            },
        };
    }
    Ok(httparse::Status::Complete(Found {
        length,
        code: answer.code.unwrap_or(0),
        version: answer.version,
        fields: answer.headers.len().min(at.len()),
    }))
}

/// The outcome of a first pass that did not find a whole head.
fn head_not_complete(
    parsed: httparse::Result<Found>,
    buffered: usize,
    max_fields: usize,
) -> Result<Option<Parsed>, UpstreamError> {
    match parsed {
        Ok(httparse::Status::Partial) if buffered >= MAX_HEAD_BYTES => {
            Err(UpstreamError::HeadTooLarge)
        }
        Ok(_) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            Err(UpstreamError::TooManyFields { limit: max_fields })
        }
        Err(error) => Err(UpstreamError::InvalidHead(error)),
    }
}

/// An answer's body, read from the instance's connection as it is polled. Gives the connection back
/// (`into_reusable`) once read to its end when it can carry another request.
pub(crate) struct AnswerBody {
    connection: Option<Connection>,
    framing: AnswerFraming,
    keep_alive: bool,
    // The rest of the request, written while the answer is read (an app may answer before it read the
    // whole body, e.g. one that echoes as it reads).
    writer: Option<Box<Writer>>,
    // An error to end the answer with at the next poll (see `fail`).
    failed: Option<UpstreamError>,
}

impl AnswerBody {
    /// Gives the answer-head timer back to the connection, for its next request.
    pub(crate) fn keep_answer_timer(&mut self, timer: Option<crate::upstream::AnswerTimer>) {
        if let Some(connection) = self.connection.as_mut() {
            connection.answer_timer = timer;
        }
    }

    /// The connection, when the answer was read to its end, the request written whole, neither side
    /// asked to close and nothing more was sent.
    pub(crate) fn take_reusable(&mut self) -> Option<Connection> {
        if self.framing != AnswerFraming::Done || !self.keep_alive || self.writer.is_some() {
            return None;
        }
        let connection = self.connection.take()?;
        connection.read_buf.is_empty().then_some(connection)
    }

    /// Ends the answer with `error`, at the next poll: the client's connection first sends what it
    /// already has of the answer (hyper's server drops its unsent buffer when a body fails), so a client
    /// sees as much of a cut answer as the instance sent.
    fn fail(
        &mut self,
        cx: &mut Context<'_>,
        error: UpstreamError,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        self.connection = None;
        self.keep_alive = false;
        self.failed = Some(error);
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Body for AnswerBody {
    type Data = Bytes;
    type Error = UpstreamError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = &mut *self;
        if let Some(error) = this.failed.take() {
            this.framing = AnswerFraming::Done;
            return Poll::Ready(Some(Err(error)));
        }
        if this.framing == AnswerFraming::Done {
            return Poll::Ready(None);
        }
        let Some(connection) = this.connection.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(writer) = this.writer.as_mut() {
            match writer.poll_write(&mut connection.stream, cx) {
                Poll::Ready(Ok(())) => this.writer = None,
                Poll::Ready(Err(UpstreamError::RequestBody(error))) => {
                    // The client's side of the body broke off (over the route's limit, a stalled or
                    // gone client): the instance will never get the rest of its request, so an answer
                    // that waits for it would not end before the route's idle timeout. The exchange
                    // ends here, the answer cut and the instance's connection closed.
                    this.writer = None;
                    return this.fail(cx, UpstreamError::RequestBody(error));
                }
                Poll::Ready(Err(_)) => {
                    // The instance stopped taking the body; its answer may still be whole.
                    this.writer = None;
                    this.keep_alive = false;
                }
                Poll::Pending => {}
            }
        }
        loop {
            let buf = &mut connection.read_buf;
            match &mut this.framing {
                AnswerFraming::Done => return Poll::Ready(None),
                AnswerFraming::Length(remaining) if !buf.is_empty() => {
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        this.framing = AnswerFraming::Done;
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                AnswerFraming::Close if !buf.is_empty() => {
                    let data = buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                AnswerFraming::Chunked(state) if !buf.is_empty() => match *state {
                    ChunkState::Size => match httparse::parse_chunk_size(buf) {
                        Ok(httparse::Status::Complete((used, 0))) => {
                            buf.advance(used);
                            *state = ChunkState::Trailers;
                            continue;
                        }
                        Ok(httparse::Status::Complete((used, size))) => {
                            buf.advance(used);
                            *state = ChunkState::Data(size);
                            continue;
                        }
                        Ok(httparse::Status::Partial) if buf.len() < 4096 => {}
                        Ok(httparse::Status::Partial) | Err(_) => {
                            return this.fail(cx, UpstreamError::InvalidChunk);
                        }
                    },
                    ChunkState::Data(remaining) => {
                        let take = remaining.min(buf.len() as u64) as usize;
                        let data = buf.split_to(take).freeze();
                        let left = remaining - take as u64;
                        *state = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    ChunkState::DataEnd => {
                        if buf.len() >= 2 {
                            if &buf[..2] != b"\r\n" {
                                return this.fail(cx, UpstreamError::InvalidChunk);
                            }
                            buf.advance(2);
                            *state = ChunkState::Size;
                            continue;
                        }
                    }
                    ChunkState::Trailers => {
                        let mut fields = [httparse::EMPTY_HEADER; 32];
                        match httparse::parse_headers(buf, &mut fields) {
                            Ok(httparse::Status::Complete((used, fields))) => {
                                let mut trailers = HeaderMap::with_capacity(fields.len());
                                for field in fields.iter() {
                                    if let (Ok(name), Ok(value)) = (
                                        HeaderName::from_bytes(field.name.as_bytes()),
                                        HeaderValue::from_bytes(field.value),
                                    ) {
                                        trailers.append(name, value);
                                    }
                                }
                                buf.advance(used);
                                this.framing = AnswerFraming::Done;
                                if trailers.is_empty() {
                                    return Poll::Ready(None);
                                }
                                return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                            }
                            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => {}
                            Ok(httparse::Status::Partial) | Err(_) => {
                                return this.fail(cx, UpstreamError::InvalidChunk);
                            }
                        }
                    }
                },
                _ => {}
            }
            match ready!(connection.poll_fill(cx)) {
                Ok(0) => {
                    if this.framing == AnswerFraming::Close {
                        this.framing = AnswerFraming::Done;
                        this.keep_alive = false;
                        return Poll::Ready(None);
                    }
                    return this.fail(cx, UpstreamError::ClosedMidAnswer);
                }
                Ok(_) => {}
                Err(error) => return this.fail(cx, UpstreamError::Io(error)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.framing == AnswerFraming::Done
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            AnswerFraming::Length(remaining) => SizeHint::with_exact(remaining),
            AnswerFraming::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

impl std::fmt::Debug for AnswerBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AnswerBody")
            .field("framing", &self.framing)
            .field("keep_alive", &self.keep_alive)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod writer_tests {
    use super::*;

    fn writer(buf: &[u8], data: &'static [u8], tail: &'static [u8]) -> Writer {
        Writer {
            buf: buf.to_vec(),
            written: 0,
            data: Bytes::from_static(data),
            tail,
            body: None,
            framing: RequestFraming::Chunked,
            any_written: false,
        }
    }

    fn left(writer: &Writer) -> Vec<u8> {
        [&writer.buf[writer.written..], &writer.data[..], writer.tail].concat()
    }

    /// A partial write can end anywhere in the size line, the body bytes or the closing CRLF; what is
    /// left is always the rest, in order, whatever the split.
    #[test]
    fn partial_writes_leave_the_rest_of_size_line_data_and_crlf_in_order() {
        let whole = b"4\r\ndata\r\n";
        for first in 0..=whole.len() {
            for second in 0..=(whole.len() - first) {
                let mut writer = writer(b"4\r\n", b"data", b"\r\n");
                writer.advance(first);
                assert_eq!(left(&writer), &whole[first..], "after {first}");
                writer.advance(second);
                assert_eq!(
                    left(&writer),
                    &whole[first + second..],
                    "after {first} then {second}"
                );
                writer.advance(whole.len());
                assert!(!writer.in_hand());
                assert!(writer.is_done());
            }
        }
    }

    #[test]
    fn a_chunk_is_framed_without_copying_its_bytes() {
        let mut writer = writer(b"", b"", b"");
        let data = Bytes::from(vec![7u8; 100_000]);
        writer.frame_data(data.clone()).expect("framed");
        assert_eq!(writer.buf, b"186a0\r\n");
        assert_eq!(writer.data.as_ptr(), data.as_ptr(), "the chunk was copied");
        assert_eq!(writer.tail, b"\r\n");
    }
}

#[cfg(test)]
mod head_tests {
    use super::*;

    fn parse(raw: &[u8], max_fields: usize) -> (BytesMut, hyper::http::response::Parts, bool) {
        let mut buf = BytesMut::from(raw);
        match parse_head(&mut buf, max_fields, false) {
            Ok(Some(Parsed::Final(parts, _, keep_alive))) => (buf, parts, keep_alive),
            Ok(Some(Parsed::Interim(status, _))) => panic!("interim {status}"),
            Ok(None) => panic!("incomplete"),
            Err(error) => panic!("{error}"),
        }
    }

    /// One pass over the head: every field lands in the map with its own value (empty ones and
    /// repeated names too), the body's bytes stay in the buffer, and a recycled request map brings none
    /// of its fields along.
    #[test]
    fn a_head_is_parsed_in_one_pass_into_the_recycled_map_with_only_its_own_fields() {
        let mut request_fields = HeaderMap::new();
        request_fields.insert("x-from-the-request", HeaderValue::from_static("1"));
        recycle_fields(request_fields);
        let (buf, parts, keep_alive) = parse(
            b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Empty:\r\nSet-Cookie: a\r\n\
              X-Other:  b \r\nSet-Cookie: c\r\n\r\nhi",
            100,
        );
        assert_eq!(&buf[..], b"hi");
        assert!(keep_alive);
        assert_eq!(parts.status, StatusCode::CREATED);
        assert_eq!(parts.version, Version::HTTP_11);
        let headers = &parts.headers;
        assert_eq!(headers.len(), 5, "{headers:?}");
        assert!(headers.get("x-from-the-request").is_none());
        assert_eq!(
            headers.get("content-length").map(HeaderValue::as_bytes),
            Some(&b"2"[..])
        );
        assert_eq!(
            headers.get("x-empty").map(HeaderValue::as_bytes),
            Some(&b""[..])
        );
        assert_eq!(
            headers.get("x-other").map(HeaderValue::as_bytes),
            Some(&b"b"[..])
        );
        let cookies: Vec<&[u8]> = headers
            .get_all("set-cookie")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert_eq!(cookies, [&b"a"[..], &b"c"[..]]);
    }

    /// An answer head that comes a byte at a time is looked at in work linear in its length, as a
    /// request head is (`server::h1::HeadScan`): every read parsed the whole buffer again before
    /// session 31 (a 16 KiB head dripped: ~130 million bytes parsed). A head that is wrong is still
    /// refused before its end.
    #[test]
    fn an_answer_head_dripped_a_byte_at_a_time_costs_work_linear_in_its_length() {
        let mut head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n".to_vec();
        for index in 0..4 {
            head.extend_from_slice(format!("X-Long-{index}: ").as_bytes());
            head.extend(std::iter::repeat_n(b'v', 4000));
            head.extend_from_slice(b"\r\n");
        }
        for index in 0..40 {
            head.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\nok");
        let whole = head.len() - 2;
        let mut buf = BytesMut::new();
        let mut scan = HeadScan::default();
        crate::server::h1::tests::take_work();
        let mut parsed = None;
        for (index, byte) in head.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            if let Some(found) = next_head(&mut buf, &mut scan, 100, false).expect("valid") {
                parsed = Some((index, found));
                break;
            }
        }
        let (index, found) = parsed.expect("the head completed");
        assert_eq!(index + 1, whole);
        let Parsed::Final(parts, _, _) = found else {
            panic!("interim");
        };
        assert_eq!(parts.headers.len(), 45);
        // 131,328 bytes (8.0x) in session 31: the new bytes' scans, the parses at doubling lengths and
        // the whole parse; every read parsing the whole buffer again looked at 136,897,557.
        let work = crate::server::h1::tests::take_work();
        assert!(
            work < 10 * whole,
            "{work} bytes looked at for a {whole}-byte head"
        );
        // A malformed head is refused before its end.
        let mut buf = BytesMut::new();
        let mut scan = HeadScan::default();
        let raw = b"HTTP/1.1 200 OK\r\nBad Name: x\r\nMore: fields to come\r\n";
        let refused = raw.iter().position(|byte| {
            buf.extend_from_slice(&[*byte]);
            next_head(&mut buf, &mut scan, 100, false).is_err()
        });
        assert!(refused.is_some_and(|index| index < 2 * 24), "{refused:?}");
    }

    /// A small answer's head is parsed into the map an HTTP/2 client's small request left (`h2` makes it
    /// with room for 6 fields), and the fields the proxy adds to it fit there too: neither the parse nor
    /// the additions make a new map (with room asked for 8 more, each answer's was made anew).
    #[test]
    fn a_small_answer_and_its_added_fields_fit_in_a_recycled_http2_request_map() {
        let mut request = HeaderMap::new();
        for (name, value) in [("user-agent", "h2load"), ("host", "a"), ("accept", "*/*")] {
            request.append(name, HeaderValue::from_static(value));
        }
        let recycled = request.capacity();
        assert_eq!(recycled, 6, "as h2 makes it");
        recycle_fields(request);
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\
               x-version: 1\r\nserver: app\r\n\r\nok"[..],
        );
        let Ok(Some(Parsed::Final(mut parts, _, _))) = parse_head(&mut buf, 100, false) else {
            panic!("a final answer");
        };
        assert_eq!(parts.headers.capacity(), recycled, "the recycled map");
        assert_eq!(parts.headers.len(), 4);
        // What `forward` adds to an HTTP/2 client's answer from an instance that sent neither.
        parts
            .headers
            .insert("x-request-id", HeaderValue::from_static("1"));
        parts
            .headers
            .insert(header::DATE, HeaderValue::from_static("now"));
        assert_eq!(parts.headers.capacity(), recycled, "not grown");
        assert_eq!(parts.headers.len(), 4 + ANSWER_ADDED_FIELDS);
    }

    #[test]
    fn an_incomplete_head_leaves_the_buffer_as_it_was() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"[..]);
        assert!(matches!(parse_head(&mut buf, 100, false), Ok(None)));
        assert_eq!(&buf[..], b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
    }

    /// A 101 (this client never asks to switch) and transfer codings besides one `chunked` are refused;
    /// a HEAD, 204 or 304 answer has no body to decode, whatever its coding says.
    #[test]
    fn an_unasked_101_and_unknown_transfer_codings_are_refused() {
        let refused: &[&[u8]] = &[
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\nConnection: upgrade\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        ];
        for raw in refused {
            let mut buf = BytesMut::from(*raw);
            assert!(
                parse_head(&mut buf, 100, false).is_err(),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: gzip\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, 100, false),
            Ok(Some(Parsed::Final(..)))
        ));
        let mut buf =
            BytesMut::from(&b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&mut buf, 100, true),
            Ok(Some(Parsed::Final(..)))
        ));
    }

    /// More fields than fit on the stack: the second pass into the heap notes them all.
    #[test]
    fn a_head_with_more_fields_than_the_stack_holds_is_parsed_whole() {
        let mut raw = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n".to_vec();
        for n in 0..150 {
            raw.extend_from_slice(format!("x-field-{n}: value {n}\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        let (buf, parts, keep_alive) = parse(&raw, 200);
        assert!(buf.is_empty());
        assert!(!keep_alive, "HTTP/1.0 without keep-alive");
        assert_eq!(parts.headers.len(), 151);
        assert_eq!(
            parts.headers.get("x-field-149").map(HeaderValue::as_bytes),
            Some(&b"value 149"[..])
        );
    }
}

#[cfg(test)]
mod spare_tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn connected() -> (Connection, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (
            Connection::new(stream.expect("connect")),
            accepted.expect("accept").0,
        )
    }

    /// A pooled connection holds no read buffer: the next answer read on the thread goes into it.
    #[tokio::test]
    async fn the_next_answer_is_read_into_the_buffer_a_pooled_connection_gave_back() {
        let (mut pooled, _peer) = connected().await;
        pooled.read_buf = BytesMut::with_capacity(READ_CHUNK);
        let given = pooled.read_buf.as_ptr();
        pooled.release_buffers();
        assert_eq!(pooled.read_capacity(), 0);

        let (mut next, mut peer) = connected().await;
        peer.write_all(b"abc").await.expect("write");
        let read = std::future::poll_fn(|cx| next.poll_fill(cx))
            .await
            .expect("read");
        assert_eq!(read, 3);
        assert_eq!(&next.read_buf[..], b"abc");
        assert_eq!(next.read_buf.as_ptr(), given, "a new buffer was allocated");
    }

    /// Spares a thread did not need for a whole tick of its sweep are freed, the least recently kept
    /// first; those its requests took are kept; a quiet thread keeps none.
    #[test]
    fn spares_not_needed_for_a_tick_are_freed() {
        let spares = || {
            SPARES.with(|spares| {
                (
                    spares.fields.borrow().len(),
                    spares.read.borrow().len(),
                    spares.head.take().capacity() > 0,
                )
            })
        };
        let head = |capacity| {
            SPARES.with(|spares| spares.head.set(Vec::with_capacity(capacity)));
        };
        std::thread::spawn(move || {
            for _ in 0..3 {
                recycle_fields(HeaderMap::with_capacity(4));
                recycle_read_buf(BytesMut::with_capacity(READ_CHUNK));
            }
            // A busy tick (spares taken and given back): those that came in during it are kept.
            recycle_fields(fields_map(4));
            recycle_read_buf(spare_read_buf().expect("a spare read buffer"));
            assert!(!trim_spares());
            head(64);
            assert_eq!(spares(), (3, 3, true));
            // One of each taken during the next tick: two of each were not needed.
            let map = fields_map(4);
            let buf = spare_read_buf().expect("a spare read buffer");
            head(64);
            assert!(trim_spares());
            assert_eq!(
                spares(),
                (0, 0, true),
                "the head buffer stays: the thread was busy"
            );
            recycle_fields(map);
            recycle_read_buf(buf);
            // A tick with nothing taken: everything goes, the head buffer too.
            head(64);
            assert!(trim_spares());
            assert_eq!(spares(), (0, 0, false));
            assert!(!trim_spares(), "nothing left to free");
        })
        .join()
        .expect("the test thread");
    }

    /// A buffer grown for a large answer is freed, not kept.
    #[tokio::test]
    async fn a_grown_read_buffer_is_not_kept() {
        let (mut pooled, _peer) = connected().await;
        pooled.read_buf = BytesMut::with_capacity(4 * READ_CHUNK);
        pooled.read_chunk = 4 * READ_CHUNK;
        pooled.release_buffers();
        assert!(spare_read_buf().is_none());
    }
}
