//! The client-facing HTTP/1.1 codec (issue 20): request heads parsed with httparse into `http`'s
//! request parts, request bodies decoded from the connection's read buffer (`Content-Length` or
//! chunked), and answer heads encoded with their framing, written with the body's first bytes in one
//! vectored write.
//!
//! This file is the codec, not the connection: it does no IO and knows no timers, and is tested against
//! scripted bytes (`h1/tests.rs`). The connection (`conn::ServerConn`: the socket, the order of pipelined
//! requests, 100-continue, upgrades) uses it; the timers stay in `server::TimedIo`, around the socket.

use std::io;
use std::mem::MaybeUninit;

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::http::request;
use hyper::{Method, Request, StatusCode, Uri, Version};

use crate::h1_fields::{parse_content_length, transfer_codings};

/// Header fields parsed on the stack; a head with more is parsed again into the heap, up to the limit.
const STACK_FIELDS: usize = 100;

/// The longest chunk-size line (size, extensions and CRLF): hyper bounds extensions too, as a chunked
/// body of tiny chunks with long extensions costs the proxy much for little body.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;

/// The limits a request head is read under (`ProxyConfig::max_header_bytes`,
/// `ProxyConfig::max_request_header_fields`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct HeadLimits {
    pub(crate) max_bytes: usize,
    pub(crate) max_fields: usize,
}

/// Why a request head was refused; every one closes the connection after its answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HeadError {
    #[error("request head is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request head has more than {limit} fields")]
    TooManyFields { limit: usize },
    #[error("malformed request head: {0}")]
    Malformed(&'static str),
    /// A transfer coding other than `chunked` (RFC 9112 section 6.1: 501, as nginx answers): the
    /// proxy would otherwise drop it on the way and the instance read coded bytes as the body.
    #[error("transfer coding other than chunked")]
    UnknownCoding,
}

impl HeadError {
    /// The status of its answer (RFC 6585 section 5 for the limits, RFC 9112 for the rest).
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            HeadError::TooLarge { .. } | HeadError::TooManyFields { .. } => {
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
            }
            HeadError::Malformed(_) => StatusCode::BAD_REQUEST,
            HeadError::UnknownCoding => StatusCode::NOT_IMPLEMENTED,
        }
    }
}

/// How a request's body is delimited (RFC 9112 section 6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFraming {
    /// This many bytes (0: no body).
    Length(u64),
    Chunked,
}

/// A parsed request head and what the connection needs to know of it.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub(crate) parts: request::Parts,
    pub(crate) framing: BodyFraming,
    /// Whether the client lets the connection carry another request after this one.
    pub(crate) keep_alive: bool,
    /// `Expect: 100-continue` on an HTTP/1.1 request with a body.
    pub(crate) expect_continue: bool,
    /// `Connection: upgrade` with an `Upgrade` field (RFC 9110 section 7.8), whatever the version:
    /// found in the pass over the fields, not looked up again.
    pub(crate) wants_upgrade: bool,
    /// `TE: trailers` (RFC 9110 section 10.1.4): the client takes an answer's trailer fields; without
    /// it they are dropped (RFC 9110 section 6.5.1 lets a server drop them; hyper sent them only then).
    pub(crate) wants_trailers: bool,
}

/// How much of an incomplete head in the read buffer was already looked at, so that a head that comes a
/// few bytes a read is not scanned and parsed again from its start at every read: that made a head
/// dripped a byte at a time cost work in the square of its length (a 64 KiB head ~4 billion byte
/// steps; hyper scanned only the new bytes, `is_complete_fast`). Reset when a head is taken.
///
/// One `u32` (an idle connection's task is kept small: `server::tests`): the bytes from the buffer's
/// start known to hold no end of the head (the buffer's length at the last look; saturated, which only
/// scans more).
///
/// Shared by both HTTP/1 sides: the client's request heads here, the instance's answer heads in
/// `upstream::h1::exchange` (an app that drips its head cost the same square there until session 31).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HeadScan {
    scanned: u32,
}

/// What `HeadScan::look` found in a buffer that may hold a head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadLook {
    /// A whole head, this many bytes long: parse it.
    Whole(usize),
    /// Not whole, but grown enough since the last parse (doubled, or at `max_bytes`) to parse what
    /// came for an early refusal.
    Check,
    /// Not whole: wait for more bytes.
    Wait,
}

impl HeadScan {
    /// Whether a look was taken since the last whole head (a side that parses a first read straight
    /// away, as `upstream::h1` does, starts looking only once that parse found the head incomplete).
    pub(crate) fn is_started(self) -> bool {
        self.scanned > 0
    }

    /// Looks for the end of the head at the front of `buf` (not empty) in the bytes that came since the
    /// last look, and says whether to parse. Forgets what it looked at once it found a whole head.
    pub(crate) fn look(&mut self, buf: &[u8], max_bytes: usize) -> HeadLook {
        // A line end already scanned may start the head's end with the bytes that came since.
        let scanned = self.scanned as usize;
        if let Some(length) = head_end(buf, scanned.saturating_sub(2)) {
            *self = HeadScan::default();
            return HeadLook::Whole(length);
        }
        self.scanned = u32::try_from(buf.len()).unwrap_or(u32::MAX);
        // httparse says whether what came so far is already wrong or too much each time the buffer's
        // length reaches another power of two (at most twice the bytes of a whole parse, in all), and
        // at the limit.
        let doubled = scanned == 0 || buf.len().max(1).ilog2() > scanned.ilog2();
        if doubled || buf.len() >= max_bytes {
            HeadLook::Check
        } else {
            HeadLook::Wait
        }
    }
}

/// Parses one request head from the front of `buf` and removes it: `None` while incomplete.
#[cfg(test)]
pub(crate) fn parse_head(
    buf: &mut BytesMut,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    parse_head_from(buf, limits, &mut HeadScan::default())
}

/// `parse_head` for a connection that keeps `scan` between its reads.
///
/// Two passes of httparse, as `upstream::h1::parse_head` does: the first finds where the head ends,
/// the second parses the head split off the buffer, so that the target and every value share it
/// instead of being copied. While the head is incomplete, only the new bytes are scanned for its end,
/// and httparse looks at it again (for an early 400 or 431) only once the buffer doubled.
pub(crate) fn parse_head_from(
    buf: &mut BytesMut,
    limits: HeadLimits,
    scan: &mut HeadScan,
) -> Result<Option<RequestHead>, HeadError> {
    let max_fields = limits.max_fields.max(1);
    // Empty lines before a request line are skipped (RFC 9112 section 2.2).
    loop {
        if buf.starts_with(b"\r\n") {
            buf.advance(2);
        } else if buf.starts_with(b"\n") {
            buf.advance(1);
        } else {
            break;
        }
        *scan = HeadScan::default();
    }
    let length = match scan.look(buf, limits.max_bytes) {
        HeadLook::Whole(length) => length,
        HeadLook::Wait => return Ok(None),
        HeadLook::Check => match first_pass(buf, max_fields, limits) {
            Ok(Some(length)) => length,
            Ok(None) => return Ok(None),
            Err(error) => {
                *scan = HeadScan::default();
                return Err(error);
            }
        },
    };
    *scan = HeadScan::default();
    if length > limits.max_bytes {
        return Err(HeadError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let head = buf.split_to(length).freeze();
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    let mut heap = Vec::new();
    let mut parsed = httparse::Request::new(&mut []);
    let outcome = match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut parsed,
        &head,
        &mut stack[..max_fields.min(STACK_FIELDS)],
    ) {
        // More fields than the stack holds, under a higher limit: parsed again into the heap.
        Err(httparse::Error::TooManyHeaders) if max_fields > STACK_FIELDS => {
            heap.resize_with(max_fields, MaybeUninit::uninit);
            parsed = httparse::Request::new(&mut []);
            httparse::ParserConfig::default().parse_request_with_uninit_headers(
                &mut parsed,
                &head,
                &mut heap,
            )
        }
        other => other,
    };
    match outcome {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(HeadError::Malformed("request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::TooManyFields {
                limit: limits.max_fields,
            });
        }
        Err(_) => return Err(HeadError::Malformed("request head")),
    }
    let (Some(method), Some(path), Some(minor)) = (parsed.method, parsed.path, parsed.version)
    else {
        return Err(HeadError::Malformed("request line"));
    };
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let uri = if path.starts_with('/') || method == Method::CONNECT {
        Uri::from_maybe_shared(head.slice_ref(path.as_bytes()))
    } else if path == "*" {
        // The asterisk form is for a server-wide `OPTIONS` only (RFC 9112 section 3.2.4).
        if method != Method::OPTIONS {
            return Err(HeadError::Malformed(
                "request target `*` of a method other than OPTIONS",
            ));
        }
        Ok(Uri::from_static("*"))
    } else {
        // An absolute form (`http://host/path`, RFC 9112 section 3.2.2).
        Uri::try_from(path)
    }
    .map_err(|_| HeadError::Malformed("request target"))?;
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Room for the fields `forward` may add (forwarded-for, request id, ...) without growing the map;
    // an emptied map of an earlier answer or request when the thread has one (no allocation then).
    let mut headers = crate::upstream::h1::fields_map(parsed.headers.len() + 6);
    let mut close = false;
    let mut keep_alive_token = false;
    let mut chunked_last = None;
    // Transfer codings over every `Transfer-Encoding` field: how many `chunked`, how many others.
    let mut chunked_codings = 0usize;
    let mut other_codings = false;
    let mut content_length = None;
    let mut bad_length = false;
    let mut expect_continue = false;
    let mut upgrade_field = false;
    let mut upgrade_token = false;
    let mut wants_trailers = false;
    for field in parsed.headers.iter() {
        let name =
            field_name(field.name.as_bytes()).map_err(|_| HeadError::Malformed("field name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice_ref(field.value))
            .map_err(|_| HeadError::Malformed("field value"))?;
        if name == header::CONTENT_LENGTH {
            match (parse_content_length(field.value), content_length) {
                (Some(length), None) => content_length = Some(length),
                (Some(length), Some(previous)) if length == previous => {}
                _ => bad_length = true,
            }
        } else if name == header::TRANSFER_ENCODING {
            let codings = transfer_codings(field.value);
            // Whether the last coding of the last field is chunked.
            chunked_last = Some(codings.chunked_last);
            chunked_codings += codings.chunked;
            other_codings |= codings.other;
        } else if name == header::CONNECTION {
            for token in field.value.split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep_alive_token |= token.eq_ignore_ascii_case(b"keep-alive");
                upgrade_token |= token.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name == header::UPGRADE {
            upgrade_field = true;
        } else if name == header::EXPECT {
            expect_continue |= field
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        } else if name == header::TE {
            // `trailers` among the codings (each may carry parameters: `gzip;q=0.5, trailers`).
            wants_trailers |= field.value.split(|byte| *byte == b',').any(|token| {
                token
                    .split(|byte| *byte == b';')
                    .next()
                    .is_some_and(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"trailers"))
            });
        }
        headers.append(name, value);
    }
    let framing = match (chunked_last, content_length, bad_length) {
        // RFC 9112 section 6.1: both is a smuggling attempt (or a broken client); section 6.3: a
        // request whose last coding is not chunked cannot be delimited.
        (Some(_), Some(_), _) | (Some(_), _, true) => {
            return Err(HeadError::Malformed(
                "both transfer-encoding and content-length",
            ));
        }
        (Some(_), None, false) if version == Version::HTTP_10 => {
            return Err(HeadError::Malformed(
                "transfer-encoding in an HTTP/1.0 request",
            ));
        }
        // Chunked applied twice (RFC 9112 section 6.1 forbids it; HAProxy answers 400).
        (Some(true), None, false) if chunked_codings > 1 => {
            return Err(HeadError::Malformed("chunked more than once"));
        }
        // The proxy decodes chunked only: another coding would be dropped on the way.
        (Some(true), None, false) if other_codings => return Err(HeadError::UnknownCoding),
        (Some(true), None, false) => BodyFraming::Chunked,
        (Some(false), None, false) => {
            return Err(HeadError::Malformed(
                "transfer-encoding does not end in chunked",
            ));
        }
        (None, _, true) => return Err(HeadError::Malformed("content-length")),
        (None, Some(length), false) => BodyFraming::Length(length),
        (None, None, false) => BodyFraming::Length(0),
    };
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive_token);
    let expect_continue =
        expect_continue && version == Version::HTTP_11 && framing != BodyFraming::Length(0);
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
        wants_upgrade: upgrade_field && upgrade_token,
        wants_trailers,
    }))
}

/// Field names common in requests and answers that `http` has no constant for: `HeaderName::from_bytes`
/// makes each of them a new allocation (a copy of the lowered name) and its drop a free, ~300
/// instructions a field; a browser's request carries 3 to 7 of them (`sec-fetch-*`, `sec-ch-ua*`,
/// `priority`). These are shared static names instead (session 30).
static KNOWN_NAMES: [HeaderName; 19] = [
    HeaderName::from_static("priority"),
    HeaderName::from_static("sec-ch-ua"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("sec-purpose"),
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("x-powered-by"),
    HeaderName::from_static("sec-fetch-dest"),
    HeaderName::from_static("sec-fetch-mode"),
    HeaderName::from_static("sec-fetch-site"),
    HeaderName::from_static("sec-fetch-user"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("sec-ch-ua-mobile"),
    HeaderName::from_static("x-requested-with"),
    HeaderName::from_static("x-forwarded-host"),
    HeaderName::from_static("x-forwarded-proto"),
    HeaderName::from_static("sec-ch-ua-platform"),
    HeaderName::from_static("permissions-policy"),
    HeaderName::from_static("cross-origin-opener-policy"),
    HeaderName::from_static("cross-origin-resource-policy"),
];

/// A field's name as `HeaderName::from_bytes` makes it, a shared static one for `KNOWN_NAMES`.
pub(crate) fn field_name(name: &[u8]) -> Result<HeaderName, header::InvalidHeaderName> {
    // The `KNOWN_NAMES` of the name's length and first letter (they are in order of length); any other
    // name (most standard ones among them) goes straight to `http`'s own table.
    let candidates = match (name.len(), name.first().map_or(0, |byte| byte | 0x20)) {
        (8, b'p') => 0..1,
        (9, b's') => 1..2,
        (9, b'x') => 2..3,
        (11, b's') => 3..4,
        (12, b'x') => 4..6,
        // `sec-fetch-` and its 11th letter.
        (14, b's') => match name.get(10).map_or(0, |byte| byte | 0x20) {
            b'd' => 6..7,
            b'm' => 7..8,
            b's' => 8..9,
            b'u' => 9..10,
            _ => 0..0,
        },
        (15, b'x') => 10..11,
        (16, b's') => 11..12,
        (16, b'x') => 12..14,
        (17, b'x') => 14..15,
        (18, b's') => 15..16,
        (18, b'p') => 16..17,
        (26, b'c') => 17..18,
        (28, b'c') => 18..19,
        _ => 0..0,
    };
    if !candidates.is_empty() {
        // Known names are lowercase letters and `-`: setting bit 5 lowers a letter and keeps `-`, and
        // of the other bytes only CR (never valid in a name) would become one of them.
        let mut lower = [0u8; 28];
        let mut carriage_return = false;
        for (to, from) in lower.iter_mut().zip(name) {
            *to = from | 0x20;
            carriage_return |= *from == b'\r';
        }
        if !carriage_return {
            for known in &KNOWN_NAMES[candidates] {
                if known.as_str().as_bytes() == &lower[..name.len()] {
                    return Ok(known.clone());
                }
            }
        }
    }
    HeaderName::from_bytes(name)
}

/// Where a request head ends: after the first empty line (CRLF, or a bare LF as httparse allows). A
/// scan instead of a first httparse pass: the head is then parsed once, split off the buffer. Line ends
/// are found with `memchr` (16 or 32 bytes a step): a byte at a time cost ~5 instructions a byte, 2,000
/// a request for a browser's 500-byte head (session 30).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut from = from.min(buf.len());
    #[cfg(test)]
    tests::count_work(buf.len() - from);
    while let Some(at) = memchr::memchr(b'\n', &buf[from..]) {
        let line_end = from + at;
        match buf.get(line_end + 1) {
            Some(b'\n') => return Some(line_end + 2),
            Some(b'\r') if buf.get(line_end + 2) == Some(&b'\n') => return Some(line_end + 3),
            _ => from = line_end + 1,
        }
    }
    None
}

/// httparse over an incomplete head: `Some(length)` if it is whole after all, `None` while it is not
/// (and is not over the limits), or why it is refused already.
fn first_pass(
    buf: &[u8],
    max_fields: usize,
    limits: HeadLimits,
) -> Result<Option<usize>, HeadError> {
    #[cfg(test)]
    tests::count_work(buf.len());
    let mut stack = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; STACK_FIELDS];
    match parse_request(buf, &mut stack[..max_fields.min(STACK_FIELDS)]) {
        Ok(httparse::Status::Complete(length)) => Ok(Some(length)),
        Err(httparse::Error::TooManyHeaders) if max_fields > STACK_FIELDS => {
            let mut heap = Vec::with_capacity(max_fields);
            heap.resize_with(max_fields, MaybeUninit::uninit);
            match parse_request(buf, &mut heap) {
                Ok(httparse::Status::Complete(length)) => Ok(Some(length)),
                other => head_not_complete(other, buf.len(), limits).map(|_| None),
            }
        }
        other => head_not_complete(other, buf.len(), limits).map(|_| None),
    }
}

fn parse_request<'b>(
    buf: &'b [u8],
    fields: &mut [MaybeUninit<httparse::Header<'b>>],
) -> httparse::Result<usize> {
    let mut request = httparse::Request::new(&mut []);
    httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut request, buf, fields)
}

/// The outcome of a first pass that did not find a whole head.
fn head_not_complete(
    parsed: httparse::Result<usize>,
    buffered: usize,
    limits: HeadLimits,
) -> Result<Option<RequestHead>, HeadError> {
    match parsed {
        Ok(httparse::Status::Partial) if buffered >= limits.max_bytes => Err(HeadError::TooLarge {
            limit: limits.max_bytes,
        }),
        Ok(_) => Ok(None),
        Err(httparse::Error::TooManyHeaders) => Err(HeadError::TooManyFields {
            limit: limits.max_fields,
        }),
        Err(_) => Err(HeadError::Malformed("request head")),
    }
}

/// Why a request body could not be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("chunk size line longer than {MAX_CHUNK_LINE} bytes")]
    ChunkLineTooLong,
    #[error("chunk data not followed by CRLF")]
    ChunkEnd,
    #[error("invalid or oversized trailer section")]
    Trailers,
    #[error("client closed the connection in the middle of the body")]
    Incomplete,
}

/// What the decoder found in the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes),
    Trailers(HeaderMap),
    /// The body's end (its bytes, framing included, are consumed; what follows is the next request).
    End,
    /// More bytes are needed.
    More,
}

/// Decodes one request body from the connection's read buffer, consuming exactly its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyDecoder {
    Length(u64),
    Chunked(ChunkState),
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkState {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

impl BodyDecoder {
    pub(crate) fn new(framing: BodyFraming) -> BodyDecoder {
        match framing {
            BodyFraming::Length(0) => BodyDecoder::Done,
            BodyFraming::Length(length) => BodyDecoder::Length(length),
            BodyFraming::Chunked => BodyDecoder::Chunked(ChunkState::Size),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        *self == BodyDecoder::Done
    }

    /// Bytes still due when known (a `Content-Length` body), for the body's size hint.
    pub(crate) fn remaining(&self) -> Option<u64> {
        match self {
            BodyDecoder::Length(remaining) => Some(*remaining),
            BodyDecoder::Done => Some(0),
            BodyDecoder::Chunked(_) => None,
        }
    }

    /// Takes the next piece of the body from `buf`. Data is split off the buffer, never copied.
    pub(crate) fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: HeadLimits,
    ) -> Result<Decoded, BodyError> {
        loop {
            match self {
                BodyDecoder::Done => return Ok(Decoded::End),
                BodyDecoder::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let take = (*remaining).min(buf.len() as u64) as usize;
                    let data = buf.split_to(take).freeze();
                    *remaining -= take as u64;
                    if *remaining == 0 {
                        *self = BodyDecoder::Done;
                    }
                    return Ok(Decoded::Data(data));
                }
                BodyDecoder::Chunked(state) => match *state {
                    ChunkState::Size => match parse_chunk_line(buf)? {
                        None => return Ok(Decoded::More),
                        Some((used, 0)) => {
                            buf.advance(used);
                            *state = ChunkState::Trailers;
                        }
                        Some((used, size)) => {
                            buf.advance(used);
                            *state = ChunkState::Data(size);
                        }
                    },
                    ChunkState::Data(remaining) => {
                        if buf.is_empty() {
                            return Ok(Decoded::More);
                        }
                        let take = remaining.min(buf.len() as u64) as usize;
                        let data = buf.split_to(take).freeze();
                        let left = remaining - take as u64;
                        *state = if left == 0 {
                            ChunkState::DataEnd
                        } else {
                            ChunkState::Data(left)
                        };
                        return Ok(Decoded::Data(data));
                    }
                    ChunkState::DataEnd => {
                        if buf.len() < 2 {
                            if buf.first().is_some_and(|byte| *byte != b'\r') {
                                return Err(BodyError::ChunkEnd);
                            }
                            return Ok(Decoded::More);
                        }
                        if &buf[..2] != b"\r\n" {
                            return Err(BodyError::ChunkEnd);
                        }
                        buf.advance(2);
                        *state = ChunkState::Size;
                    }
                    ChunkState::Trailers => {
                        // The common end: no trailers, just the empty line.
                        if buf.starts_with(b"\r\n") {
                            buf.advance(2);
                            *self = BodyDecoder::Done;
                            return Ok(Decoded::End);
                        }
                        let mut fields = [httparse::EMPTY_HEADER; 32];
                        match httparse::parse_headers(buf, &mut fields) {
                            Ok(httparse::Status::Complete((used, fields))) => {
                                if used > limits.max_bytes || fields.len() > limits.max_fields {
                                    return Err(BodyError::Trailers);
                                }
                                let mut trailers = HeaderMap::with_capacity(fields.len());
                                for field in fields.iter() {
                                    let name = HeaderName::from_bytes(field.name.as_bytes())
                                        .map_err(|_| BodyError::Trailers)?;
                                    let value = HeaderValue::from_bytes(field.value)
                                        .map_err(|_| BodyError::Trailers)?;
                                    trailers.append(name, value);
                                }
                                buf.advance(used);
                                *self = BodyDecoder::Done;
                                if trailers.is_empty() {
                                    return Ok(Decoded::End);
                                }
                                return Ok(Decoded::Trailers(trailers));
                            }
                            Ok(httparse::Status::Partial) if buf.len() < limits.max_bytes => {
                                return Ok(Decoded::More);
                            }
                            Ok(httparse::Status::Partial) | Err(_) => {
                                return Err(BodyError::Trailers);
                            }
                        }
                    }
                },
            }
        }
    }
}

/// Parses a chunk-size line (`1a;name=value\r\n`, RFC 9112 section 7.1): `(bytes used, size)`, or
/// `None` while incomplete. Extensions are skipped, bounded with the line by `MAX_CHUNK_LINE`; a bare
/// LF, a control byte, an empty or overlong size is refused.
fn parse_chunk_line(buf: &[u8]) -> Result<Option<(usize, u64)>, BodyError> {
    let mut size: u64 = 0;
    let mut digits = 0;
    let mut index = 0;
    while let Some(&byte) = buf.get(index) {
        let value = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            b'A'..=b'F' => byte - b'A' + 10,
            _ => break,
        };
        digits += 1;
        if digits > 16 {
            return Err(BodyError::ChunkSize);
        }
        size = size << 4 | u64::from(value);
        index += 1;
    }
    if index == buf.len() {
        return if index > MAX_CHUNK_LINE {
            Err(BodyError::ChunkLineTooLong)
        } else {
            Ok(None)
        };
    }
    if digits == 0 {
        return Err(BodyError::ChunkSize);
    }
    // Optional whitespace, then extensions, up to the CRLF.
    let mut in_extension = false;
    while let Some(&byte) = buf.get(index) {
        if index >= MAX_CHUNK_LINE {
            return Err(BodyError::ChunkLineTooLong);
        }
        match byte {
            b'\r' => {
                return match buf.get(index + 1) {
                    None => Ok(None),
                    Some(b'\n') => Ok(Some((index + 2, size))),
                    Some(_) => Err(BodyError::ChunkSize),
                };
            }
            b';' => in_extension = true,
            b' ' | b'\t' => {}
            b'\n' => return Err(BodyError::ChunkSize),
            _ if in_extension
                && (byte == b'\t' || (0x20..0x7f).contains(&byte) || byte >= 0x80) => {}
            _ => return Err(BodyError::ChunkSize),
        }
        index += 1;
    }
    if index >= MAX_CHUNK_LINE {
        return Err(BodyError::ChunkLineTooLong);
    }
    Ok(None)
}

/// How an answer's body goes on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AnswerFraming {
    /// No body bytes at all (HEAD, 1xx, 204, 304): whatever the body yields is dropped.
    None,
    /// Exactly this many bytes.
    Length(u64),
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and a body of unknown length).
    Close,
}

/// What the answer's encoding needs to know of its request and the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AnswerContext {
    pub(crate) head_request: bool,
    pub(crate) request_version: Version,
    /// The request let the connection stay open, and the connection is not closing (a drain, an error).
    pub(crate) keep_alive: bool,
}

/// Encodes an answer head into `buf` and answers its body framing and whether the connection may carry
/// another request after it. `length` is the body's exact length when known (its size hint).
///
/// Framing fields are the codec's own: `content-length` is written from `length` (or kept as the
/// instance gave it for HEAD and 304, where no body follows), `transfer-encoding: chunked` when the
/// length is unknown and the client speaks HTTP/1.1. `date` is added where the answer has none.
pub(crate) fn encode_head(
    buf: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
    context: AnswerContext,
    date: &HeaderValue,
) -> (AnswerFraming, bool) {
    let no_body = context.head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        AnswerFraming::None
    } else if let Some(length) = length {
        AnswerFraming::Length(length)
    } else if context.request_version == Version::HTTP_11 {
        AnswerFraming::Chunked
    } else {
        AnswerFraming::Close
    };
    // `Connection: close` is found in the pass over the fields below (no lookup of its own).
    let mut close = false;
    match status.as_u16() {
        // The common ones in one piece.
        200 => buf.extend_from_slice(b"HTTP/1.1 200 OK\r\n"),
        304 => buf.extend_from_slice(b"HTTP/1.1 304 Not Modified\r\n"),
        _ => {
            buf.extend_from_slice(b"HTTP/1.1 ");
            buf.extend_from_slice(status.as_str().as_bytes());
            buf.push(b' ');
            buf.extend_from_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
    }
    let mut has_date = false;
    let mut kept_length = false;
    for (name, value) in headers {
        if name == header::CONTENT_LENGTH {
            // Kept where no body follows and the length describes the representation (HEAD, 304),
            // never on 1xx and 204 (RFC 9110 section 8.6).
            let keep = no_body
                && !kept_length
                && status != StatusCode::NO_CONTENT
                && !status.is_informational();
            if !keep {
                continue;
            }
            kept_length = true;
        } else if name == header::TRANSFER_ENCODING {
            continue;
        } else if name == header::CONNECTION {
            // `close` (from `error::error_response`, or an instance's) ends the connection after this
            // answer, and is written once below; other tokens (`upgrade`) go out as they are.
            let mut other = false;
            for token in value.as_bytes().split(|byte| *byte == b',') {
                let token = token.trim_ascii();
                let is_close = token.eq_ignore_ascii_case(b"close");
                close |= is_close;
                other |=
                    !token.is_empty() && !is_close && !token.eq_ignore_ascii_case(b"keep-alive");
            }
            if !other {
                continue;
            }
        } else if name == header::DATE {
            has_date = true;
        }
        buf.extend_from_slice(name.as_str().as_bytes());
        buf.extend_from_slice(b": ");
        buf.extend_from_slice(value.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    let keep_alive = context.keep_alive && !close && framing != AnswerFraming::Close;
    match framing {
        AnswerFraming::Length(length) => {
            push_content_length(buf, length);
        }
        AnswerFraming::Chunked => buf.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // A HEAD answer says the length a GET would have had, when it is known.
        AnswerFraming::None if context.head_request && !kept_length => {
            if let Some(length) = length.filter(|length| *length > 0) {
                push_content_length(buf, length);
            }
        }
        AnswerFraming::None | AnswerFraming::Close => {}
    }
    if !has_date {
        buf.extend_from_slice(b"date: ");
        buf.extend_from_slice(date.as_bytes());
        buf.extend_from_slice(b"\r\n");
    }
    if !keep_alive && !status.is_informational() {
        buf.extend_from_slice(b"connection: close\r\n");
    } else if keep_alive && context.request_version == Version::HTTP_10 {
        buf.extend_from_slice(b"connection: keep-alive\r\n");
    }
    buf.extend_from_slice(b"\r\n");
    (framing, keep_alive)
}

/// `content-length: N\r\n`, without the formatting machinery (a few hundred instructions a request).
fn push_content_length(buf: &mut Vec<u8>, length: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = length;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf.extend_from_slice(b"content-length: ");
    buf.extend_from_slice(&digits[at..]);
    buf.extend_from_slice(b"\r\n");
}

/// What is left to write of an answer: framing bytes in hand (`head`: the answer's head, a chunk's size
/// line), then body bytes as they came (`data`, never copied), then a chunk's closing CRLF (`tail`), in
/// one vectored write where the socket takes them all (as `upstream::h1`'s request writer).
///
/// A body framed by its length (or by the close) may have several pieces in hand, up to
/// [`MAX_PIECES`] and [`MAX_IN_HAND`] bytes: the pieces an instance's answer has ready at once go out in
/// one write, as hyper's server queued them (one write per piece took 5 writes per 64 KiB answer where
/// hyper's took 2, session 29). A chunked body has one piece at a time (its size line is in `head`).
#[derive(Debug, Default)]
pub(crate) struct OutBuf {
    pub(crate) head: Vec<u8>,
    written: usize,
    pub(crate) data: std::collections::VecDeque<Bytes>,
    in_hand: usize,
    pub(crate) tail: &'static [u8],
    // The answer's end is framed (set and cleared by the connection).
    pub(crate) ended: bool,
}

/// Most body pieces in hand for one write.
pub(crate) const MAX_PIECES: usize = 8;
/// Most body bytes in hand before they are written.
pub(crate) const MAX_IN_HAND: usize = 256 * 1024;

impl OutBuf {
    pub(crate) fn is_empty(&self) -> bool {
        self.written == self.head.len() && self.data.is_empty() && self.tail.is_empty()
    }

    /// Whether another piece of a body framed as `framing` may be taken before a write.
    pub(crate) fn has_room(&self, framing: AnswerFraming) -> bool {
        self.tail.is_empty()
            && match framing {
                AnswerFraming::Chunked => self.data.is_empty(),
                _ => self.data.len() < MAX_PIECES && self.in_hand < MAX_IN_HAND,
            }
    }

    /// The bytes in hand, in order, for one vectored write (empty slices after them).
    pub(crate) fn slices(&self) -> [io::IoSlice<'_>; MAX_PIECES + 2] {
        let mut slices = [io::IoSlice::new(&[]); MAX_PIECES + 2];
        slices[0] = io::IoSlice::new(&self.head[self.written..]);
        let mut at = 1;
        for piece in self.data.iter().take(MAX_PIECES) {
            slices[at] = io::IoSlice::new(piece);
            at += 1;
        }
        slices[at] = io::IoSlice::new(self.tail);
        slices
    }

    /// Marks `n` bytes of `head`, `data` and `tail`, in that order, as written; once all is written
    /// the head buffer is cleared for reuse (its capacity kept).
    pub(crate) fn advance(&mut self, n: usize) {
        let from_head = (self.head.len() - self.written).min(n);
        self.written += from_head;
        let mut left = n - from_head;
        while left > 0
            && let Some(piece) = self.data.front_mut()
        {
            let from_piece = piece.len().min(left);
            piece.advance(from_piece);
            self.in_hand -= from_piece;
            left -= from_piece;
            if piece.is_empty() {
                self.data.pop_front();
            }
        }
        let from_tail = self.tail.len().min(left);
        self.tail = &self.tail[from_tail..];
        if self.is_empty() {
            self.head.clear();
            self.written = 0;
        }
    }

    /// Puts a piece of the body in hand, framed for `framing`; `false` when it is more than a
    /// `Content-Length` framing has left (`remaining` is counted down).
    pub(crate) fn frame_data(&mut self, framing: &mut AnswerFraming, data: Bytes) -> bool {
        if data.is_empty() {
            return true;
        }
        match framing {
            AnswerFraming::None => return true,
            AnswerFraming::Length(remaining) => {
                let length = data.len() as u64;
                if length > *remaining {
                    return false;
                }
                *remaining -= length;
            }
            AnswerFraming::Chunked => {
                use std::io::Write;
                let _ = write!(self.head, "{:x}\r\n", data.len());
                self.tail = b"\r\n";
            }
            AnswerFraming::Close => {}
        }
        self.in_hand += data.len();
        self.data.push_back(data);
        true
    }

    /// Frames the body's end (the last chunk and trailers, when chunked).
    pub(crate) fn frame_end(&mut self, framing: AnswerFraming, trailers: Option<&HeaderMap>) {
        if framing == AnswerFraming::Chunked {
            self.head.extend_from_slice(b"0\r\n");
            if let Some(trailers) = trailers {
                crate::upstream::h1::encode_trailers(&mut self.head, trailers, false);
            }
            self.head.extend_from_slice(b"\r\n");
        }
    }
}

/// The answer to a refused head (`HeadError`), whole: the connection closes after it.
pub(crate) fn refusal(error: &HeadError, date: &HeaderValue) -> Vec<u8> {
    let status = error.status();
    let body = format!(
        "{} {}\n",
        status.as_str(),
        status.canonical_reason().unwrap_or("")
    );
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let mut buf = Vec::with_capacity(160 + body.len());
    encode_head(
        &mut buf,
        status,
        &headers,
        Some(body.len() as u64),
        AnswerContext {
            head_request: false,
            request_version: Version::HTTP_11,
            keep_alive: false,
        },
        date,
    );
    buf.extend_from_slice(body.as_bytes());
    buf
}

mod conn;

pub(crate) use conn::{Ended, H1Body, Hooks, Io, PendingUpgrade, ServerConn, Upgraded};

#[cfg(test)]
pub(crate) mod tests;
