//! The codec against scripted clients: every request is also fed one byte at a time, and must parse
//! to the same thing as when it arrives whole.

use super::*;

thread_local! {
    /// Bytes looked at by `head_end` and httparse's first passes over incomplete heads, on this thread.
    static WORK: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Counts bytes looked at (`head_end`, first passes; `upstream::h1`'s answer head parses too).
pub(crate) fn count_work(bytes: usize) {
    WORK.with(|work| work.set(work.get() + bytes));
}

/// The bytes looked at on this thread since the last call.
pub(crate) fn take_work() -> usize {
    WORK.with(|work| work.replace(0))
}

/// A head that comes a byte at a time is looked at in work linear in its length (it was quadratic:
/// every read scanned it for its end and parsed it again from its start).
#[test]
fn a_head_dripped_a_byte_at_a_time_costs_work_linear_in_its_length() {
    let mut head = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for index in 0..4 {
        head.extend_from_slice(format!("X-Long-{index}: ").as_bytes());
        head.extend(std::iter::repeat_n(b'v', 4000));
        head.extend_from_slice(b"\r\n");
    }
    for index in 0..40 {
        head.extend_from_slice(format!("X-{index}: v\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\nGET /next HTTP/1.1\r\n");
    let whole = head.len() - "GET /next HTTP/1.1\r\n".len();
    let mut buf = BytesMut::new();
    let mut scan = HeadScan::default();
    WORK.with(|work| work.set(0));
    let mut parsed = None;
    for (index, byte) in head.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        if let Some(found) = parse_head_from(&mut buf, LIMITS, &mut scan).expect("valid") {
            parsed = Some((index, found));
            break;
        }
    }
    let (index, found) = parsed.expect("the head completed");
    assert_eq!(index + 1, whole);
    assert_eq!(found.parts.headers.len(), 45);
    let work = WORK.with(std::cell::Cell::get);
    assert!(
        work < 8 * whole,
        "{work} bytes looked at for a {whole}-byte head"
    );
    // A malformed head is still refused before its end, within twice its bytes.
    let mut buf = BytesMut::new();
    let mut scan = HeadScan::default();
    let mut refused = None;
    for (index, byte) in b"GET / HTTP/1.1\r\nBad Name: x\r\nMore: fields to come\r\n"
        .iter()
        .enumerate()
    {
        buf.extend_from_slice(&[*byte]);
        if let Err(error) = parse_head_from(&mut buf, LIMITS, &mut scan) {
            refused = Some((index, error));
            break;
        }
    }
    let (index, error) = refused.expect("refused before the end");
    assert!(index < 2 * 20, "{index}");
    assert_eq!(error.status(), StatusCode::BAD_REQUEST);
}

const LIMITS: HeadLimits = HeadLimits {
    max_bytes: 64 * 1024,
    max_fields: 100,
};

fn date() -> HeaderValue {
    HeaderValue::from_static("Mon, 07 Dec 2026 06:00:00 GMT")
}

/// Feeds `bytes` one at a time; answers the head once complete and what is left in the buffer.
fn parse_byte_by_byte(
    bytes: &[u8],
    limits: HeadLimits,
) -> Result<(RequestHead, BytesMut), HeadError> {
    let mut buf = BytesMut::new();
    for (index, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        if let Some(head) = parse_head(&mut buf, limits)? {
            buf.extend_from_slice(&bytes[index + 1..]);
            return Ok((head, buf));
        }
    }
    panic!(
        "the head never completed: {:?}",
        String::from_utf8_lossy(bytes)
    );
}

fn parse_whole(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse_head(&mut BytesMut::from(bytes), LIMITS)
}

/// A decoded body: its data, its trailers, and the bytes after it.
type DecodedBody = (Vec<u8>, Option<HeaderMap>, Vec<u8>);

/// Decodes a whole body from `bytes` fed one at a time: its data, its trailers, what is left after it.
fn decode_byte_by_byte(framing: BodyFraming, bytes: &[u8]) -> Result<DecodedBody, BodyError> {
    let mut decoder = BodyDecoder::new(framing);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut trailers = None;
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf, LIMITS)? {
            Decoded::Data(bytes) => data.extend_from_slice(&bytes),
            Decoded::Trailers(fields) => trailers = Some(fields),
            Decoded::End => {
                assert!(decoder.is_done());
                assert_eq!(decoder.remaining(), Some(0));
                return Ok((data, trailers, [&buf[..], &bytes[fed..]].concat()));
            }
            Decoded::More => {
                let Some(byte) = bytes.get(fed) else {
                    return Err(BodyError::Incomplete);
                };
                buf.extend_from_slice(&[*byte]);
                fed += 1;
            }
        }
    }
}

#[test]
fn a_head_split_anywhere_parses_once_whole_sharing_the_read_bytes() {
    let request =
        b"GET /a/b?c=d HTTP/1.1\r\nHost: example.com\r\nX-Long: value with spaces\r\n\r\n";
    let (head, rest) = parse_byte_by_byte(request, LIMITS).expect("parsed");
    assert!(rest.is_empty());
    assert_eq!(head.parts.method, Method::GET);
    assert_eq!(head.parts.uri, "/a/b?c=d");
    assert_eq!(head.parts.version, Version::HTTP_11);
    assert_eq!(head.parts.headers["host"], "example.com");
    assert_eq!(head.parts.headers["x-long"], "value with spaces");
    assert_eq!(head.framing, BodyFraming::Length(0));
    assert!(head.keep_alive);
    assert!(!head.expect_continue);
}

#[test]
fn pipelined_requests_come_out_one_at_a_time_with_their_bodies() {
    let bytes = b"POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /two HTTP/1.1\r\nHost: a\r\n\r\nHEAD /three HTTP/1.1\r\nHost: a\r\n\r\n";
    let (first, rest) = parse_byte_by_byte(bytes, LIMITS).expect("first");
    assert_eq!(first.parts.uri, "/one");
    let (data, trailers, rest) = decode_byte_by_byte(first.framing, &rest).expect("first body");
    assert_eq!(data, b"hello");
    assert!(trailers.is_none());
    let (second, rest) = parse_byte_by_byte(&rest, LIMITS).expect("second");
    assert_eq!(second.parts.uri, "/two");
    assert_eq!(second.framing, BodyFraming::Length(0));
    let (third, rest) = parse_byte_by_byte(&rest, LIMITS).expect("third");
    assert_eq!(third.parts.method, Method::HEAD);
    assert!(rest.is_empty());
}

#[test]
fn a_chunked_body_with_extensions_and_trailers_decodes_to_its_data_and_fields() {
    let bytes = b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;name=value;flag\r\nhello\r\n1A ; spaced = \"quoted;ext\"\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        0\r\nX-Checksum: 42\r\nX-Other: yes\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    let (head, rest) = parse_byte_by_byte(bytes, LIMITS).expect("head");
    assert_eq!(head.framing, BodyFraming::Chunked);
    let (data, trailers, rest) = decode_byte_by_byte(head.framing, &rest).expect("body");
    assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
    let trailers = trailers.expect("trailers");
    assert_eq!(trailers["x-checksum"], "42");
    assert_eq!(trailers["x-other"], "yes");
    assert!(
        rest.starts_with(b"GET /next"),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );
}

#[test]
fn a_chunked_body_without_trailers_ends_at_its_empty_line() {
    let (data, trailers, rest) =
        decode_byte_by_byte(BodyFraming::Chunked, b"3\r\nabc\r\n0\r\n\r\nNEXT").expect("body");
    assert_eq!(data, b"abc");
    assert!(trailers.is_none());
    assert_eq!(rest, b"NEXT");
}

#[test]
fn bad_chunks_are_refused() {
    let cases: &[(&[u8], BodyError)] = &[
        (b"xyz\r\n", BodyError::ChunkSize),
        (b"\r\n", BodyError::ChunkSize),
        (b"11111111111111111\r\n", BodyError::ChunkSize),
        (b"5\nhello\r\n0\r\n\r\n", BodyError::ChunkSize),
        (b"5\r\nhelloXX0\r\n\r\n", BodyError::ChunkEnd),
        (b"5 x\r\nhello\r\n", BodyError::ChunkSize),
        (b"5\r\nhello\r\n0\r\nbad field\r\n\r\n", BodyError::Trailers),
        (b"5\r\nhel", BodyError::Incomplete),
    ];
    for (bytes, expected) in cases {
        let decoded = decode_byte_by_byte(BodyFraming::Chunked, bytes);
        assert_eq!(
            decoded.as_ref().err(),
            Some(expected),
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
    let mut long_extension = b"5;".to_vec();
    long_extension.resize(MAX_CHUNK_LINE + 10, b'x');
    assert_eq!(
        decode_byte_by_byte(BodyFraming::Chunked, &long_extension).err(),
        Some(BodyError::ChunkLineTooLong)
    );
    let mut many_digits = vec![b'0'; MAX_CHUNK_LINE + 10];
    many_digits.push(b'\r');
    assert!(decode_byte_by_byte(BodyFraming::Chunked, &many_digits).is_err());
}

#[test]
fn oversized_trailers_are_refused() {
    let limits = HeadLimits {
        max_bytes: 64,
        max_fields: 100,
    };
    let mut decoder = BodyDecoder::new(BodyFraming::Chunked);
    let mut buf = BytesMut::from(&b"0\r\nX-Big: "[..]);
    buf.extend_from_slice(&[b'a'; 100]);
    assert_eq!(decoder.decode(&mut buf, limits), Err(BodyError::Trailers));
}

#[test]
fn content_length_and_transfer_encoding_together_are_refused_as_smuggling() {
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n Folded: x\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
    ];
    for request in cases {
        let error = parse_whole(request).expect_err(&String::from_utf8_lossy(request));
        assert_eq!(error.status(), StatusCode::BAD_REQUEST, "{error}");
    }
    let same = parse_whole(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")
        .expect("a repeated equal length is one length")
        .expect("whole");
    assert_eq!(same.framing, BodyFraming::Length(5));
}

/// Only `chunked` is decoded: another coding before it is a 501 (it would be dropped on the way),
/// `chunked` twice a 400; empty list elements are ignored (RFC 9110 section 5.6.1).
#[test]
fn transfer_codings_other_than_one_chunked_are_refused() {
    let cases: &[(&[u8], StatusCode)] = &[
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n", StatusCode::NOT_IMPLEMENTED),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", StatusCode::BAD_REQUEST),
        (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", StatusCode::BAD_REQUEST),
    ];
    for (request, status) in cases {
        let error = parse_whole(request).expect_err(&String::from_utf8_lossy(request));
        assert_eq!(error.status(), *status, "{error}");
    }
    let head = parse_whole(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: , Chunked\r\n\r\n")
        .expect("an empty element is ignored")
        .expect("whole");
    assert_eq!(head.framing, BodyFraming::Chunked);
}

#[test]
fn oversized_heads_and_too_many_fields_get_431() {
    let limits = HeadLimits {
        max_bytes: 128,
        max_fields: 4,
    };
    // Incomplete and already over the limit: refused without waiting for the rest.
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nX-Big: "[..]);
    buf.extend_from_slice(&[b'a'; 200]);
    let error = parse_head(&mut buf, limits).expect_err("too large");
    assert_eq!(error.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Complete in one read but over the limit.
    let mut whole = b"GET / HTTP/1.1\r\nX-Big: ".to_vec();
    whole.extend_from_slice(&[b'a'; 200]);
    whole.extend_from_slice(b"\r\n\r\n");
    let error = parse_head(&mut BytesMut::from(&whole[..]), limits).expect_err("too large");
    assert_eq!(error, HeadError::TooLarge { limit: 128 });
    let five = b"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
    let error = parse_head(&mut BytesMut::from(&five[..]), limits).expect_err("too many");
    assert_eq!(error, HeadError::TooManyFields { limit: 4 });
    assert_eq!(error.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
}

#[test]
fn more_fields_than_the_stack_holds_parse_under_a_higher_limit() {
    let mut request = b"GET / HTTP/1.1\r\n".to_vec();
    for index in 0..150 {
        request.extend_from_slice(format!("X-{index}: {index}\r\n").as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    let limits = HeadLimits {
        max_bytes: 64 * 1024,
        max_fields: 200,
    };
    let (head, _) = parse_byte_by_byte(&request, limits).expect("parsed");
    assert_eq!(head.parts.headers.len(), 150);
    assert_eq!(head.parts.headers["x-149"], "149");
    let error = parse_head(&mut BytesMut::from(&request[..]), LIMITS).expect_err("over 100");
    assert_eq!(error, HeadError::TooManyFields { limit: 100 });
}

#[test]
fn keep_alive_follows_the_version_and_the_connection_field() {
    let cases: &[(&[u8], bool)] = &[
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            false,
        ),
        (
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, Close\r\n\r\n",
            false,
        ),
        (b"GET / HTTP/1.0\r\nHost: a\r\n\r\n", false),
        (
            b"GET / HTTP/1.0\r\nHost: a\r\nConnection: keep-alive\r\n\r\n",
            true,
        ),
        (
            b"GET / HTTP/1.0\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n",
            false,
        ),
    ];
    for (request, keep_alive) in cases {
        let head = parse_whole(request).expect("parsed").expect("whole");
        assert_eq!(
            head.keep_alive,
            *keep_alive,
            "{:?}",
            String::from_utf8_lossy(request)
        );
    }
}

#[test]
fn expect_continue_is_noted_only_for_an_http_11_request_with_a_body() {
    let with_body =
        b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\n";
    assert!(
        parse_whole(with_body)
            .expect("parsed")
            .expect("whole")
            .expect_continue
    );
    let without_body = b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n";
    assert!(
        !parse_whole(without_body)
            .expect("parsed")
            .expect("whole")
            .expect_continue
    );
    let old = b"PUT / HTTP/1.0\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n";
    assert!(
        !parse_whole(old)
            .expect("parsed")
            .expect("whole")
            .expect_continue
    );
}

#[test]
fn leading_empty_lines_and_absolute_targets_are_accepted() {
    let head = parse_whole(b"\r\nGET http://example.com/x?y HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .expect("parsed")
        .expect("whole");
    assert_eq!(head.parts.uri.host(), Some("example.com"));
    assert_eq!(head.parts.uri.path(), "/x");
    let connect = parse_whole(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .expect("parsed")
        .expect("whole");
    assert_eq!(
        connect.parts.uri.authority().map(|a| a.as_str()),
        Some("example.com:443")
    );
}

fn context(version: Version, keep_alive: bool, head_request: bool) -> AnswerContext {
    AnswerContext {
        head_request,
        request_version: version,
        keep_alive,
    }
}

fn encode(
    status: StatusCode,
    headers: &[(&'static str, &'static str)],
    length: Option<u64>,
    context: AnswerContext,
) -> (String, AnswerFraming, bool) {
    let mut map = HeaderMap::new();
    for (name, value) in headers {
        map.append(*name, HeaderValue::from_static(value));
    }
    let mut buf = Vec::new();
    let (framing, keep_alive) = encode_head(&mut buf, status, &map, length, context, &date());
    (String::from_utf8(buf).expect("ascii"), framing, keep_alive)
}

#[test]
fn answers_are_framed_by_length_chunks_or_close() {
    let (head, framing, keep_alive) = encode(
        StatusCode::OK,
        &[("content-type", "text/plain"), ("content-length", "999")],
        Some(5),
        context(Version::HTTP_11, true, false),
    );
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\ndate: Mon, 07 Dec 2026 06:00:00 GMT\r\n\r\n"
    );
    assert_eq!((framing, keep_alive), (AnswerFraming::Length(5), true));
    let (head, framing, _) = encode(
        StatusCode::OK,
        &[("transfer-encoding", "chunked"), ("date", "then")],
        None,
        context(Version::HTTP_11, true, false),
    );
    assert_eq!(
        head,
        "HTTP/1.1 200 OK\r\ndate: then\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    assert_eq!(framing, AnswerFraming::Chunked);
    // An HTTP/1.0 client cannot read chunks: the body ends with the connection.
    let (head, framing, keep_alive) = encode(
        StatusCode::OK,
        &[],
        None,
        context(Version::HTTP_10, true, false),
    );
    assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    assert_eq!((framing, keep_alive), (AnswerFraming::Close, false));
}

#[test]
fn an_http_10_keep_alive_client_is_told_the_connection_stays_open() {
    let (head, framing, keep_alive) = encode(
        StatusCode::OK,
        &[],
        Some(2),
        context(Version::HTTP_10, true, false),
    );
    assert!(head.contains("content-length: 2\r\n"), "{head}");
    assert!(head.ends_with("connection: keep-alive\r\n\r\n"), "{head}");
    assert_eq!((framing, keep_alive), (AnswerFraming::Length(2), true));
    let (head, _, keep_alive) = encode(
        StatusCode::OK,
        &[],
        Some(2),
        context(Version::HTTP_10, false, false),
    );
    assert!(head.ends_with("connection: close\r\n\r\n"), "{head}");
    assert!(!keep_alive);
}

#[test]
fn head_204_and_304_answers_have_no_body_framing() {
    let (head, framing, keep_alive) = encode(
        StatusCode::OK,
        &[("content-length", "1234")],
        Some(1234),
        context(Version::HTTP_11, true, true),
    );
    assert_eq!(
        head.matches("content-length: 1234\r\n").count(),
        1,
        "{head}"
    );
    assert_eq!((framing, keep_alive), (AnswerFraming::None, true));
    let (head, framing, _) = encode(
        StatusCode::OK,
        &[],
        Some(42),
        context(Version::HTTP_11, true, true),
    );
    assert!(head.contains("content-length: 42\r\n"), "{head}");
    assert_eq!(framing, AnswerFraming::None);
    let (head, framing, _) = encode(
        StatusCode::NO_CONTENT,
        &[("content-length", "0")],
        None,
        context(Version::HTTP_11, true, false),
    );
    assert!(!head.contains("content-length"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(framing, AnswerFraming::None);
    let (head, framing, _) = encode(
        StatusCode::NOT_MODIFIED,
        &[("etag", "\"x\"")],
        None,
        context(Version::HTTP_11, true, false),
    );
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(framing, AnswerFraming::None);
}

#[test]
fn a_connection_close_in_the_answer_closes_and_is_written_once() {
    let (head, _, keep_alive) = encode(
        StatusCode::BAD_REQUEST,
        &[("connection", "close")],
        Some(0),
        context(Version::HTTP_11, true, false),
    );
    assert_eq!(head.matches("connection").count(), 1, "{head}");
    assert!(!keep_alive);
    let (head, _, _) = encode(
        StatusCode::SWITCHING_PROTOCOLS,
        &[("connection", "upgrade"), ("upgrade", "websocket")],
        None,
        context(Version::HTTP_11, true, false),
    );
    assert!(head.contains("connection: upgrade\r\n"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
}

#[test]
fn refusals_say_their_status_and_close() {
    let answer = refusal(&HeadError::TooManyFields { limit: 100 }, &date());
    let answer = String::from_utf8(answer).expect("ascii");
    assert!(
        answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{answer}"
    );
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert!(
        answer.ends_with("\r\n\r\n431 Request Header Fields Too Large\n"),
        "{answer}"
    );
    let answer = String::from_utf8(refusal(&HeadError::Malformed("x"), &date())).expect("ascii");
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
}

#[test]
fn partial_writes_leave_the_rest_of_head_data_and_crlf_in_order() {
    let whole = b"HEAD4\r\ndata\r\n";
    for first in 0..=whole.len() {
        for second in 0..=(whole.len() - first) {
            let mut out = OutBuf {
                head: b"HEAD".to_vec(),
                ..OutBuf::default()
            };
            let mut framing = AnswerFraming::Chunked;
            assert!(out.frame_data(&mut framing, Bytes::from_static(b"data")));
            let left = |out: &OutBuf| -> Vec<u8> {
                out.slices()
                    .iter()
                    .flat_map(|slice| slice.to_vec())
                    .collect()
            };
            assert_eq!(left(&out), whole);
            out.advance(first);
            assert_eq!(left(&out), &whole[first..], "after {first}");
            out.advance(second);
            assert_eq!(
                left(&out),
                &whole[first + second..],
                "after {first}, {second}"
            );
            out.advance(whole.len());
            assert!(out.is_empty());
            assert!(out.head.is_empty(), "the head buffer is reset once written");
        }
    }
}

#[test]
fn body_bytes_go_out_without_a_copy_and_within_their_length() {
    let mut out = OutBuf::default();
    let mut framing = AnswerFraming::Length(10);
    let data = Bytes::from(vec![7u8; 6]);
    assert!(out.frame_data(&mut framing, data.clone()));
    assert_eq!(out.data[0].as_ptr(), data.as_ptr(), "the body was copied");
    assert_eq!(framing, AnswerFraming::Length(4));
    out.advance(6);
    assert!(
        !out.frame_data(&mut framing, Bytes::from(vec![0u8; 5])),
        "over the length"
    );
    let chunked = AnswerFraming::Chunked;
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    out.frame_end(chunked, Some(&trailers));
    assert_eq!(out.head, b"0\r\ngrpc-status: 0\r\n\r\n");
    // A HEAD answer's body is dropped, not framed.
    let mut none = AnswerFraming::None;
    let mut out = OutBuf::default();
    assert!(out.frame_data(&mut none, Bytes::from_static(b"dropped")));
    assert!(out.is_empty());
}

#[test]
fn content_lengths_are_written_in_decimal() {
    for length in [0, 7, 10, 1234, 1 << 20, u64::MAX] {
        let mut buf = Vec::new();
        push_content_length(&mut buf, length);
        assert_eq!(buf, format!("content-length: {length}\r\n").as_bytes());
    }
}

#[test]
fn a_head_ends_at_its_first_empty_line_with_crlf_or_bare_lf() {
    assert_eq!(
        head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody", 0),
        Some(27)
    );
    assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nbody", 0), Some(24));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
    for request in [
        &b"GET / HTTP/1.1\nHost: a\n\nBODY"[..],
        b"\r\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\nBODY",
    ] {
        let (head, rest) = parse_byte_by_byte(request, LIMITS).expect("parsed");
        assert_eq!(head.parts.headers["host"], "a");
        assert_eq!(&rest[..], b"BODY");
    }
}

// Session 30: a request head is parsed into an emptied map given back by an earlier answer (no
// allocation), with none of that answer's fields.
#[test]
fn a_request_head_is_parsed_into_a_recycled_map_with_only_its_own_fields() {
    let mut answer = HeaderMap::with_capacity(60);
    answer.insert("x-from-the-answer", HeaderValue::from_static("1"));
    let recycled = answer.capacity();
    // Small enough to be kept (`upstream::h1::SPARE_FIELDS`).
    assert!((60..=128).contains(&recycled), "{recycled}");
    crate::upstream::h1::recycle_fields(answer);
    let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nX-Own: 2\r\n\r\n"[..]);
    let head = parse_head(&mut buf, LIMITS).expect("valid").expect("whole");
    let headers = &head.parts.headers;
    // A fresh map for 2 fields (and room for 6 more) would hold far fewer.
    assert_eq!(headers.capacity(), recycled);
    assert_eq!(headers.len(), 2, "{headers:?}");
    assert!(headers.get("x-from-the-answer").is_none());
    assert_eq!(headers["x-own"], "2");
}

// Session 30: the common names `http` has no constant for are the shared static ones (no allocation),
// whatever their case; every other name is as `HeaderName::from_bytes` makes it, bad ones refused.
#[test]
fn known_field_names_are_shared_statics_and_others_as_http_makes_them() {
    for known in &KNOWN_NAMES {
        let upper = known.as_str().to_ascii_uppercase();
        for spelling in [known.as_str(), upper.as_str()] {
            let name = field_name(spelling.as_bytes()).expect("valid");
            assert_eq!(name, *known);
            assert_eq!(
                name.as_str().as_ptr(),
                known.as_str().as_ptr(),
                "{spelling}"
            );
        }
    }
    for other in [
        "content-length",
        "Content-Type",
        "x-forwarded-fox",
        "sec-fetch-desk",
        "a",
        "transfer-encoding",
    ] {
        assert_eq!(
            field_name(other.as_bytes()).ok(),
            HeaderName::from_bytes(other.as_bytes()).ok()
        );
    }
    assert!(field_name(b"sec-fetch dest").is_err());
    assert!(field_name(b"sec\rfetch-dest").is_err());
    assert!(field_name(b"x_forwarded-for").is_ok_and(|name| name == "x_forwarded-for"));
    assert!(field_name(b"").is_err());
}

// Session 30: whether a request asks for an upgrade is found in the pass over its fields: an `Upgrade`
// field and an `upgrade` option in any `Connection` field, in any case, both needed.
#[test]
fn an_upgrade_needs_both_the_field_and_the_connection_option() {
    let wants = |head: &[u8]| {
        let mut buf = BytesMut::from(head);
        parse_head(&mut buf, LIMITS)
            .expect("valid")
            .expect("whole")
            .wants_upgrade
    };
    assert!(wants(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n"
    ));
    assert!(wants(
        b"GET / HTTP/1.1\r\nUPGRADE: h2c\r\nConnection: close\r\nconnection: UPGRADE\r\n\r\n"
    ));
    assert!(!wants(
        b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n"
    ));
    assert!(!wants(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n\r\n"
    ));
    assert!(!wants(
        b"GET / HTTP/1.1\r\nConnection: upgraded\r\nUpgrade: websocket\r\n\r\n"
    ));
}

// Session 30: the common status lines are written in one piece, the others as before.
#[test]
fn status_lines_are_the_same_in_one_piece_or_in_parts() {
    let date = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
    let context = AnswerContext {
        head_request: false,
        request_version: Version::HTTP_11,
        keep_alive: true,
    };
    for (code, line) in [
        (200, "HTTP/1.1 200 OK\r\n"),
        (304, "HTTP/1.1 304 Not Modified\r\n"),
        (404, "HTTP/1.1 404 Not Found\r\n"),
        (599, "HTTP/1.1 599 <none>\r\n"),
    ] {
        let mut buf = Vec::new();
        let status = StatusCode::from_u16(code).expect("status");
        encode_head(&mut buf, status, &HeaderMap::new(), Some(0), context, &date);
        assert!(
            buf.starts_with(line.as_bytes()),
            "{}",
            String::from_utf8_lossy(&buf)
        );
    }
}

// Session 30: the scan for the head's end (`memchr`, many bytes a step) ends where httparse's parse of
// the same bytes ends, for heads long enough for the wide steps, whatever their line ends and wherever
// they fall.
#[test]
fn the_head_end_scan_agrees_with_httparse_on_long_heads() {
    for fields in [1, 7, 12, 40] {
        for pad in 0..40 {
            for bare_lf in [false, true] {
                let eol: &[u8] = if bare_lf { b"\n" } else { b"\r\n" };
                let mut head = b"GET /index.html HTTP/1.1".to_vec();
                head.extend_from_slice(eol);
                for field in 0..fields {
                    head.extend_from_slice(format!("x-field-{field}: ").as_bytes());
                    head.extend(std::iter::repeat_n(b'v', (pad + field) % 37));
                    // A lone CR inside a value would be refused; a field may end in the other style.
                    head.extend_from_slice(if field % 3 == 1 { b"\n" } else { eol });
                }
                head.extend_from_slice(eol);
                let length = head.len();
                head.extend_from_slice(b"BODY\r\n\r\nMORE\n\n");
                let mut fields_buf = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; 64];
                let parsed = parse_request(&head, &mut fields_buf);
                assert_eq!(parsed, Ok(httparse::Status::Complete(length)));
                assert_eq!(
                    head_end(&head, 0),
                    Some(length),
                    "{fields} fields, pad {pad}"
                );
                assert_eq!(head_end(&head[..length - 1], 0), None);
            }
        }
    }
}

/// Pieces of a body framed by its length are taken together, up to `MAX_PIECES`, and leave in order
/// across any partial writes; a chunked body takes one piece at a time (its size line is in the head).
#[test]
fn ready_pieces_of_a_sized_body_go_out_in_one_write() {
    let mut out = OutBuf {
        head: b"HEAD".to_vec(),
        ..OutBuf::default()
    };
    let mut framing = AnswerFraming::Length(100);
    let pieces: Vec<Bytes> = (b'a'..=b'c')
        .map(|byte| Bytes::from(vec![byte; 3]))
        .collect();
    for piece in &pieces {
        assert!(out.has_room(framing));
        assert!(out.frame_data(&mut framing, piece.clone()));
    }
    assert_eq!(framing, AnswerFraming::Length(91));
    let left = |out: &OutBuf| -> Vec<u8> {
        out.slices()
            .iter()
            .flat_map(|slice| slice.to_vec())
            .collect()
    };
    let whole = b"HEADaaabbbccc";
    assert_eq!(left(&out), whole);
    // Each piece is its own slice, uncopied.
    assert_eq!(out.slices()[2].as_ptr(), pieces[1].as_ptr());
    for step in [2, 3, 1, 4, 3] {
        let before = left(&out);
        out.advance(step);
        assert_eq!(left(&out), &before[step..]);
    }
    assert!(out.is_empty());
    // Room ends at MAX_PIECES pieces.
    for _ in 0..MAX_PIECES {
        assert!(out.has_room(framing));
        assert!(out.frame_data(&mut framing, Bytes::from_static(b"x")));
    }
    assert!(!out.has_room(framing));
    out.advance(MAX_PIECES);
    assert!(out.has_room(framing));
    // Chunked: one piece, then no room until it is written.
    let mut chunked = AnswerFraming::Chunked;
    assert!(out.frame_data(&mut chunked, Bytes::from_static(b"data")));
    assert!(!out.has_room(chunked));
    assert_eq!(left(&out), b"4\r\ndata\r\n");
}
