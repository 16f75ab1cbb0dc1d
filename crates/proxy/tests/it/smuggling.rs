//! Adversarial HTTP/1 cases (session 30, issue 20): raw bytes in through the real proxy, a raw
//! recording instance behind it, and per case what the instance saw and what the client got.
//!
//! The promises pinned: one client request is at most one instance request and its body's boundaries
//! are the proxy's (never the client's trick); the proxy's own fields appear exactly once, after the
//! client's of the same names were removed; the per-thread recycled header maps never carry a field of
//! one message into another; an instance's badly framed answer reaches the client well framed or as a
//! 502, never with bytes of another answer.
//!
//! Session 31 (round two, findings in bench/proxy/README.md): an invalid answer is a 502 after one send,
//! trailers go only to a client that said `TE: trailers`, the client-address fields of CDNs are the
//! proxy's to believe, a host must be `name[:port]`; and HTTP/2 from a raw client (frames written by
//! hand, the end of this file): malformed requests, `:authority` against `Host`, a body against its
//! `content-length`, CONTINUATION floods and rapid reset, over h2c and TLS; and an h2c instance's
//! malformed answer (a raw h2c instance, the end of this file). Round three: HTTP/2 field values with
//! whitespace at an end, `:scheme`, `:path` and CONNECT; `*` only for OPTIONS in HTTP/1 too.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use proxy::{ProxyConfig, RouteSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{HOST, TestProxy, h2_client};

/// What the instance answers a request: the bytes, and whether it closes after them.
struct Reply {
    bytes: Vec<u8>,
    close: bool,
}

type Script = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// An instance that reads requests (head, then a `Content-Length` or chunked body) on keep-alive
/// connections, records each one's raw bytes, and answers what `script` says for its head.
struct Recorder {
    addr: SocketAddr,
    /// Every request read, `(connection number, raw bytes)`.
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    /// Bytes left on a connection that were not a whole request when it ended.
    leftovers: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl Recorder {
    async fn start(script: impl Fn(&str) -> Reply + Send + Sync + 'static) -> Recorder {
        let script: Script = Arc::new(script);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let leftovers = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let recorder = Recorder {
            addr,
            requests: Arc::clone(&requests),
            leftovers: Arc::clone(&leftovers),
            connections: Arc::clone(&connections),
        };
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let number = connections.fetch_add(1, Ordering::SeqCst);
                let requests = Arc::clone(&requests);
                let leftovers = Arc::clone(&leftovers);
                let script = Arc::clone(&script);
                tokio::spawn(serve_recorded(stream, number, requests, leftovers, script));
            }
        });
        recorder
    }

    fn requests(&self) -> Vec<String> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, raw)| raw.clone())
            .collect()
    }

    /// The one request with `path` in its request line.
    fn request_for(&self, path: &str) -> String {
        let found: Vec<String> = self
            .requests()
            .into_iter()
            .filter(|raw| {
                raw.split("\r\n")
                    .next()
                    .is_some_and(|line| line.contains(path))
            })
            .collect();
        assert_eq!(found.len(), 1, "requests for {path}: {found:?}");
        found[0].clone()
    }

    /// The numbers of the connections that carried a request with `path` in its request line.
    fn connections_for(&self, path: &str) -> Vec<usize> {
        self.requests
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, raw)| {
                raw.split("\r\n")
                    .next()
                    .is_some_and(|line| line.contains(path))
            })
            .map(|(number, _)| *number)
            .collect()
    }

    fn leftovers(&self) -> Vec<String> {
        self.leftovers.lock().expect("lock").clone()
    }
}

async fn serve_recorded(
    mut stream: TcpStream,
    number: usize,
    requests: Arc<Mutex<Vec<(usize, String)>>>,
    leftovers: Arc<Mutex<Vec<String>>>,
    script: Script,
) {
    let mut buf = Vec::new();
    loop {
        let request = match read_one(&mut stream, &mut buf).await {
            Some(request) => request,
            None => {
                if !buf.is_empty() {
                    leftovers
                        .lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&buf).into_owned());
                }
                return;
            }
        };
        let text = String::from_utf8_lossy(&request).into_owned();
        requests.lock().expect("lock").push((number, text.clone()));
        let reply = script(&text);
        if stream.write_all(&reply.bytes).await.is_err() || reply.close {
            return;
        }
    }
}

/// Reads one request off `stream` (with what `buf` has already): `None` at the end of the stream.
async fn read_one(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    let head_end = loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let length = head
        .split("\r\n")
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head
        .split("\r\n")
        .any(|line| line.starts_with("transfer-encoding:") && line.contains("chunked"));
    let end = if chunked {
        // Chunk by chunk, then the trailer lines up to the empty line.
        let mut at = head_end;
        loop {
            let line_end = loop {
                if let Some(end) = find(&buf[at..], b"\r\n") {
                    break at + end;
                }
                fill(stream, buf).await?;
            };
            let line = String::from_utf8_lossy(&buf[at..line_end]).into_owned();
            let digits = line.split(';').next().unwrap_or("").trim();
            let size = usize::from_str_radix(digits, 16).ok()?;
            at = line_end + 2;
            if size == 0 {
                loop {
                    let line_end = loop {
                        if let Some(end) = find(&buf[at..], b"\r\n") {
                            break at + end;
                        }
                        fill(stream, buf).await?;
                    };
                    let empty = line_end == at;
                    at = line_end + 2;
                    if empty {
                        break;
                    }
                }
                break at;
            }
            while buf.len() < at + size + 2 {
                fill(stream, buf).await?;
            }
            at += size + 2;
        }
    } else {
        let end = head_end + length.unwrap_or(0);
        while buf.len() < end {
            fill(stream, buf).await?;
        }
        end
    };
    Some(buf.drain(..end).collect())
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

fn reply(bytes: &[u8]) -> Reply {
    Reply {
        bytes: bytes.to_vec(),
        close: false,
    }
}

/// `200` with body `ok`, kept alive.
fn ok(_: &str) -> Reply {
    reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
}

async fn proxy_to(recorder: &Recorder, config: ProxyConfig) -> TestProxy {
    let test_proxy = TestProxy::start_with(config, RouteSettings::default()).await;
    test_proxy.add_ready("raw", "R", recorder.addr);
    test_proxy
}

/// Sends raw bytes and reads until the proxy closes (bounded: a bug fails instead of hanging).
async fn exchange(proxy: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy kept the connection open")
        .expect("read");
    answer
}

/// One answer as the client read it.
#[derive(Debug)]
struct Answer {
    status: u16,
    /// Lowercased names, values as sent.
    fields: Vec<(String, String)>,
    body: Vec<u8>,
    /// Trailer lines of a chunked body, as sent.
    trailers: Vec<String>,
}

impl Answer {
    fn count(&self, name: &str) -> usize {
        self.fields.iter().filter(|(n, _)| n == name).count()
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the client's bytes as a sequence of strictly framed answers (`heads`: which of the requests,
/// in order, were HEAD), interim ones included; panics at any byte that is not part of a well-framed
/// answer.
fn answers(raw: &[u8], heads: &[bool]) -> Vec<Answer> {
    let mut rest = raw;
    let mut out = Vec::new();
    let mut finals = 0;
    while !rest.is_empty() {
        let mut fields = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut fields);
        let length = match parsed.parse(rest) {
            Ok(httparse::Status::Complete(length)) => length,
            other => panic!(
                "not a well-framed answer ({other:?}) at: {:?}\nall: {:?}",
                String::from_utf8_lossy(rest),
                String::from_utf8_lossy(raw)
            ),
        };
        let status = parsed.code.expect("status");
        let fields: Vec<(String, String)> = parsed
            .headers
            .iter()
            .map(|field| {
                (
                    field.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(field.value).into_owned(),
                )
            })
            .collect();
        rest = &rest[length..];
        let framing: Vec<&(String, String)> = fields
            .iter()
            .filter(|(name, _)| name == "content-length" || name == "transfer-encoding")
            .collect();
        assert!(
            framing.len() <= 1,
            "more than one framing field: {fields:?}"
        );
        let head_request = heads.get(finals).copied().unwrap_or(false);
        let no_body =
            (100..200).contains(&status) || status == 204 || status == 304 || head_request;
        let mut body = Vec::new();
        let mut trailers = Vec::new();
        if !no_body {
            match framing.first() {
                Some((name, value)) if name == "content-length" => {
                    let length: usize = value.parse().expect("content-length");
                    assert!(rest.len() >= length, "short body: {raw:?}");
                    body = rest[..length].to_vec();
                    rest = &rest[length..];
                }
                Some((_, value)) => {
                    assert_eq!(value, "chunked");
                    loop {
                        let line_end = find(rest, b"\r\n").expect("chunk line");
                        let size = usize::from_str_radix(
                            std::str::from_utf8(&rest[..line_end]).expect("size"),
                            16,
                        )
                        .expect("chunk size");
                        rest = &rest[line_end + 2..];
                        if size == 0 {
                            // Trailer lines, then the empty line.
                            loop {
                                let end = find(rest, b"\r\n").expect("end");
                                let line = String::from_utf8_lossy(&rest[..end]).into_owned();
                                rest = &rest[end + 2..];
                                if end == 0 {
                                    break;
                                }
                                trailers.push(line);
                            }
                            break;
                        }
                        body.extend_from_slice(&rest[..size]);
                        assert_eq!(&rest[size..size + 2], b"\r\n");
                        rest = &rest[size + 2..];
                    }
                }
                // Until the close.
                None => {
                    body = rest.to_vec();
                    rest = &[];
                }
            }
        }
        if status >= 200 || status == 101 {
            finals += 1;
        }
        out.push(Answer {
            status,
            fields,
            body,
            trailers,
        });
    }
    out
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|answer| answer.status).collect()
}

/// The header lines of a raw request, lowercased names, values trimmed.
fn lines(request: &str) -> Vec<(String, String)> {
    let head = request.split("\r\n\r\n").next().unwrap_or("");
    head.split("\r\n")
        .skip(1)
        .map(|line| match line.split_once(':') {
            Some((name, value)) => (name.to_ascii_lowercase(), value.trim().to_owned()),
            None => (line.to_owned(), String::new()),
        })
        .collect()
}

fn count(request: &str, name: &str) -> usize {
    lines(request).iter().filter(|(n, _)| n == name).count()
}

fn value<'a>(lines: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    lines
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
        .collect()
}

const SMUGGLED: &[u8] = b"GET /smuggled HTTP/1.1\r\nHost: demo.test\r\n\r\n";

/// Sends `request` followed by a pipelined `GET /smuggled` and checks that the proxy refused it with
/// `status` and closed, and that the instance saw neither it nor the pipelined request (nor any byte of
/// them).
async fn assert_refused(test_proxy: &TestProxy, recorder: &Recorder, request: &[u8], status: u16) {
    let mut bytes = request.to_vec();
    bytes.extend_from_slice(SMUGGLED);
    let raw = exchange(test_proxy.addr, &bytes).await;
    let got = answers(&raw, &[]);
    assert_eq!(
        statuses(&got),
        vec![status],
        "{:?} -> {:?}",
        String::from_utf8_lossy(request),
        String::from_utf8_lossy(&raw)
    );
    assert!(got[0].get("connection") == Some("close"), "{got:?}");
    assert!(
        recorder.requests().is_empty() && recorder.leftovers().is_empty(),
        "{:?} reached the instance: {:?} {:?}",
        String::from_utf8_lossy(request),
        recorder.requests(),
        recorder.leftovers()
    );
}

// --- Request framing ---------------------------------------------------------------------------------

/// Framing tricks in the head are refused before anything reaches the instance, and the connection
/// closes: the request pipelined after them is never read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_request_framing_is_refused_and_nothing_after_it_is_forwarded() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[(&[u8], u16)] = &[
        // CL + TE, in both orders, and with TE not last.
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        // TE whose last coding is not chunked, or chunked in the wrong field.
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: \"chunked\"\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        // Chunked twice, in one field or two (HAProxy: 400).
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        // Conflicting and malformed Content-Length.
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4, 5\r\n\r\nabcde", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: +4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: -4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4 4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 0x4\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4,\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: \r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 18446744073709551620\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\x0b\r\n\r\nabcd", 400),
        // Field syntax: obs-fold, space before the colon, empty name, NUL/CR in a value, bare CR.
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\n 5\r\n\r\nabcd", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nX-A: a\r\n\tb\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length\t: 4\r\n\r\nabcd", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\n: empty\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\rX-A: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\n\x00X-A: b\r\n\r\n", 400),
        // A request line with a bare CR or an extra word.
        (b"GET / HTTP/1.1 x\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET /\r HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET\t/ HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: demo.test\r\n\r\n", 400),
        (b"GET / http/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET / HTTP/1.10\r\nHost: demo.test\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET /a b HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET demo.test/ HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A\x00: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A: b\x0c\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A: b\x7f\r\n\r\n", 400),
        // Space before the colon of Host, whitespace before the first field line (RFC 9112 section
        // 2.2), a bare CR at a value's end, and a target that is no path: `*` is for OPTIONS only.
        (b"GET / HTTP/1.1\r\nHost : demo.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n Host: demo.test\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-A: b\r\r\n\r\n", 400),
        (b"GET * HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),
        (b"POST * HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 0\r\n\r\n", 400),
        (b"GET ?q HTTP/1.1\r\nHost: demo.test\r\n\r\n", 400),

    ];
    for (request, status) in cases {
        assert_refused(&test_proxy, &recorder, request, *status).await;
    }
    test_proxy.stop().await;
}

/// RFC 9112 section 6.1: a transfer coding the proxy does not apply itself cannot be dropped on the way
/// (the instance would read gzip bytes as the body): 501, as nginx 1.22 answers (HAProxy 2.6: 422).
/// Before session 30's probe the proxy decoded the chunks and dropped `gzip`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_a_transfer_coding_besides_chunked_is_refused() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n",
    ];
    for request in cases {
        assert_refused(&test_proxy, &recorder, request, 501).await;
    }
    test_proxy.stop().await;
}

/// The framings that are accepted reach the instance as one request, framed by the proxy: a single
/// `content-length` (leading zeros, repeats of the same number), or chunks without their extensions;
/// the request pipelined after the body is a request of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_request_framings_reach_the_instance_reframed_one_request_each() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[(&[u8], &str)] = &[
        (b"POST /a HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 005\r\n\r\nhello", "content-length: 5\r\n\r\nhello"),
        (b"POST /b HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "content-length: 5\r\n\r\nhello"),
        (b"POST /c HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5, 5\r\n\r\nhello", "content-length: 5\r\n\r\nhello"),
        (b"POST /d HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: Chunked\r\n\r\n5;a=\"b\\r\\n0\" ; c\r\nhello\r\n0;x=y\r\n\r\n", "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        (b"POST /e HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n0000000000000005\r\nhello\r\n0\r\n\r\n", "chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
        // Bare LFs end the head's lines (RFC 9112 section 2.2 lets a recipient take them); the
        // instance gets CRLFs.
        (b"POST /f HTTP/1.1\nHost: demo.test\nContent-Length: 5\n\nhello", "content-length: 5\r\n\r\nhello"),
    ];
    for (request, expected) in cases {
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(
            b"GET /next HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
        );
        let raw = exchange(test_proxy.addr, &bytes).await;
        assert_eq!(
            statuses(&answers(&raw, &[])),
            vec![200, 200],
            "{:?}",
            String::from_utf8_lossy(&raw)
        );
        let path = String::from_utf8_lossy(&request[5..7]).into_owned();
        let seen = recorder.request_for(&path);
        assert!(seen.ends_with(expected), "{seen:?}");
        assert_eq!(
            count(&seen, "content-length") + count(&seen, "transfer-encoding"),
            1,
            "{seen:?}"
        );
        assert!(!seen.contains(";a="), "chunk extensions went on: {seen:?}");
        assert!(
            !seen.replace("\r\n", "").contains('\n'),
            "bare LF reached the instance: {seen:?}"
        );
    }
    // Every request once, the pipelined ones included; nothing unframed.
    assert_eq!(recorder.requests().len(), cases.len() * 2);
    assert!(
        recorder.leftovers().is_empty(),
        "{:?}",
        recorder.leftovers()
    );
    test_proxy.stop().await;
}

/// A broken chunked body (bad or overlong size, bad chunk end, bare LF) ends the exchange: the instance
/// may have the head and the chunks before the break, never the request the client hid after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_chunked_body_never_lets_the_bytes_after_it_through_as_a_request() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[&[u8]] = &[
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n10000000000000005\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n5 5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n;5\r\nhello\r\n0\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\r\nhello\r\n0\r\n\r\n",
    ];
    for request in cases {
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(SMUGGLED);
        let raw = exchange(test_proxy.addr, &bytes).await;
        let got = answers(&raw, &[]);
        assert_eq!(got.len(), 1, "{:?}", String::from_utf8_lossy(&raw));
        assert!(
            got[0].status == 400 || got[0].status == 502,
            "{:?} -> {got:?}",
            String::from_utf8_lossy(request)
        );
    }
    // Give the instance's side a moment: any byte of the hidden request would be read by now.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let everything = format!("{:?}{:?}", recorder.requests(), recorder.leftovers());
    assert!(!everything.contains("smuggled"), "{everything}");
    assert!(
        recorder
            .requests()
            .iter()
            .all(|raw| raw.starts_with("POST /x ")),
        "{everything}"
    );
    test_proxy.stop().await;
}

/// Too long a head, or too many fields: 431, and nothing of it or after it reaches the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_heads_get_431_and_nothing_after_them_is_forwarded() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let mut long_line = b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-Long: ".to_vec();
    long_line.extend(std::iter::repeat_n(b'a', 70 * 1024));
    long_line.extend_from_slice(b"\r\n\r\n");
    assert_refused(&test_proxy, &recorder, &long_line, 431).await;
    let mut many = b"GET / HTTP/1.1\r\nHost: demo.test\r\n".to_vec();
    for index in 0..101 {
        many.extend_from_slice(format!("X-F{index}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_refused(&test_proxy, &recorder, &many, 431).await;
    let mut long_target = b"GET /".to_vec();
    long_target.extend(std::iter::repeat_n(b'a', 70 * 1024));
    long_target.extend_from_slice(b" HTTP/1.1\r\nHost: demo.test\r\n\r\n");
    assert_refused(&test_proxy, &recorder, &long_target, 431).await;
    test_proxy.stop().await;
}

/// An upgrade the instance refuses leaves the client's connection an HTTP one: the request pipelined
/// after it goes through the proxy as a request of its own (with the proxy's fields), never as raw
/// bytes on the instance's connection of the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_upgrade_the_instance_refused_the_next_request_is_proxied_not_tunnelled() {
    let recorder = Recorder::start(|head| {
        if head.starts_with("GET /ws") {
            reply(b"HTTP/1.1 426 Upgrade Required\r\ncontent-length: 4\r\n\r\nnope")
        } else {
            ok(head)
        }
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let raw = exchange(
        test_proxy.addr,
        b"GET /ws HTTP/1.1\r\nHost: demo.test\r\nConnection: Upgrade, X-Request-Id\r\nUpgrade: websocket\r\n\
          X-Forwarded-For: 192.0.2.1\r\nX-Request-Id: client\r\n\r\n\
          GET /after HTTP/1.1\r\nHost: demo.test\r\n\r\n\
          GET /ws-body HTTP/1.1\r\nHost: demo.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Content-Length: 42\r\n\r\nGET /in-body HTTP/1.1\r\nHost: demo.test\r\n\r\n\
          GET /last HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = answers(&raw, &[]);
    assert_eq!(statuses(&got), vec![426, 200, 426, 200], "{got:?}");
    for path in ["/ws ", "/after", "/ws-body", "/last"] {
        let seen = recorder.request_for(path);
        assert_proxy_fields_once(&lines(&seen));
        assert_eq!(
            value(&lines(&seen), "x-forwarded-for"),
            vec!["127.0.0.1"],
            "{seen:?}"
        );
    }
    // The id the instance got is the one the client's answer says (the client's own, which the proxy
    // takes as the request's id even when `Connection` names it: the proxy is that field's recipient).
    assert_eq!(
        value(&lines(&recorder.request_for("/ws ")), "x-request-id"),
        vec![got[0].get("x-request-id").expect("id")]
    );
    let with_body = recorder.request_for("/ws-body");
    assert!(
        with_body.ends_with("\r\n\r\nGET /in-body HTTP/1.1\r\nHost: demo.test\r\n\r\n"),
        "{with_body:?}"
    );
    assert_eq!(recorder.requests().len(), 4, "{:?}", recorder.requests());
    test_proxy.stop().await;
}

/// `Connection: close` and an HTTP/1.0 request without keep-alive end the connection after their
/// answer: what the client pipelined after them is never read as a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_after_a_closing_request_is_forwarded() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[&[u8]] = &[
        b"GET /c HTTP/1.1\r\nHost: demo.test\r\nConnection: keep-alive, close\r\n\r\n",
        b"GET /c HTTP/1.1\r\nHost: demo.test\r\nConnection: keep-alive\r\nConnection: Close\r\n\r\n",
        b"GET /c HTTP/1.0\r\nHost: demo.test\r\n\r\n",
        b"POST /c HTTP/1.0\r\nHost: demo.test\r\nContent-Length: 2\r\n\r\nhi",
    ];
    for request in cases {
        let mut bytes = request.to_vec();
        bytes.extend_from_slice(SMUGGLED);
        let raw = exchange(test_proxy.addr, &bytes).await;
        assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let requests = recorder.requests();
    assert_eq!(requests.len(), cases.len(), "{requests:?}");
    assert!(
        requests.iter().all(|raw| raw.contains(" /c ")),
        "{requests:?}"
    );
    test_proxy.stop().await;
}

/// An absolute-form target names the host (RFC 9112 section 3.2.2): it routes, and it is the `Host`
/// the instance gets, whatever `Host` field the client sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_target_is_the_host_the_instance_gets() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let raw = exchange(
        test_proxy.addr,
        b"GET http://demo.test/abs?q=1 HTTP/1.1\r\nHost: evil.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    let seen = recorder.request_for("/abs");
    assert!(seen.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{seen:?}");
    assert_proxy_fields_once(&lines(&seen));
    assert_eq!(value(&lines(&seen), "host"), vec!["demo.test"]);
    assert_eq!(value(&lines(&seen), "x-forwarded-host"), vec!["demo.test"]);
    // Another host in the target is not routed to this route, whatever `Host` says.
    let raw = exchange(
        test_proxy.addr,
        b"GET http://evil.test/other HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_ne!(statuses(&answers(&raw, &[]))[0], 200);
    assert_eq!(recorder.requests().len(), 1, "{:?}", recorder.requests());
    test_proxy.stop().await;
}

/// An instance that answers before it read a large body: the rest of the body, which the client may
/// have made look like requests, is never read as requests: the connection closes after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_leaves_no_body_bytes_to_be_read_as_requests() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let first_lines = Arc::new(Mutex::new(Vec::new()));
    let lines_seen = Arc::clone(&first_lines);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let lines_seen = Arc::clone(&lines_seen);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while find(&buf, b"\r\n\r\n").is_none() {
                    if fill(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                }
                let line = String::from_utf8_lossy(&buf)
                    .split("\r\n")
                    .next()
                    .unwrap_or("")
                    .to_owned();
                lines_seen.lock().expect("lock").push(line);
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly")
                    .await;
                // Reads (and drops) what else comes, until the proxy closes.
                while fill(&mut stream, &mut buf).await.is_some() {}
            });
        }
    });
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), RouteSettings::default()).await;
    test_proxy.add_ready("raw", "R", addr);
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut body =
        b"POST /upload HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    body.extend(std::iter::repeat_n(b'x', 100_000));
    stream.write_all(&body).await.expect("write");
    // The answer, then (as the client goes on) body bytes shaped as requests.
    let mut answer = Vec::new();
    while find(&answer, b"early").is_none() {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("the early answer")
            .expect("read");
        assert!(n > 0, "closed before the answer");
        answer.extend_from_slice(&chunk[..n]);
    }
    let mut rest = Vec::new();
    for _ in 0..100 {
        rest.extend_from_slice(SMUGGLED);
    }
    // The proxy may have closed already: a failed write is fine.
    let _ = stream.write_all(&rest).await;
    let mut tail = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut tail)).await;
    assert!(
        closed.is_ok(),
        "the connection stayed open after the early answer"
    );
    let all = [answer, tail].concat();
    let got = answers(&all, &[]);
    assert_eq!(statuses(&got), vec![200], "{got:?}");
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        *first_lines.lock().expect("lock"),
        vec!["POST /upload HTTP/1.1".to_owned()]
    );
    test_proxy.stop().await;
}

/// A `101` the client did not ask for is not an answer the proxy can pass on (the client's connection
/// would be left switched to nothing): 502. (nginx passes it on and closes; HAProxy refuses it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unasked_101_from_the_instance_is_a_502() {
    let recorder = Recorder::start(|_| Reply {
        bytes: b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: evil\r\n\r\nGET /raw HTTP/1.1\r\n\r\n".to_vec(),
        close: true,
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let raw = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = answers(&raw, &[]);
    assert_eq!(
        statuses(&got),
        vec![502],
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    test_proxy.stop().await;
}

// --- The proxy's own fields -----------------------------------------------------------------------------

/// The request's header lines as the instance got them, for a client request with `fields`.
async fn forwarded_lines(config: ProxyConfig, fields: &str) -> Vec<(String, String)> {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, config).await;
    let request =
        format!("GET /f HTTP/1.1\r\nHost: demo.test\r\n{fields}Connection: close\r\n\r\n");
    let raw = exchange(test_proxy.addr, request.as_bytes()).await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    let seen = recorder.request_for("/f");
    test_proxy.stop().await;
    lines(&seen)
}

fn assert_proxy_fields_once(lines: &[(String, String)]) {
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "host",
    ] {
        assert_eq!(value(lines, name).len(), 1, "{name} in {lines:?}");
    }
    // The proxy's fields come after the client's (an app reading the last one gets the proxy's).
    let first_own = lines
        .iter()
        .position(|(name, _)| name.starts_with("x-forwarded-") || name == "x-request-id")
        .expect("own fields");
    assert!(
        lines[first_own..]
            .iter()
            .all(|(name, _)| name.starts_with("x-forwarded-")
                || name == "x-request-id"
                || name == "host"
                || name == "content-length"
                || name == "transfer-encoding"),
        "{lines:?}"
    );
}

/// A client's `X-Request-Id` of any case is kept when usable (once), replaced when empty or over 200
/// bytes; two of them are one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_request_id_of_any_shape_is_there_exactly_once() {
    let long = "a".repeat(201);
    let cases: Vec<(String, Option<&str>)> = vec![
        (
            "x-REQUEST-id: mine, yours\r\n".to_owned(),
            Some("mine, yours"),
        ),
        (
            "X-Request-Id: one\r\nx-request-id: two\r\n".to_owned(),
            Some("one"),
        ),
        ("X-Request-Id:\r\n".to_owned(), None),
        (format!("X-Request-Id: {long}\r\n"), None),
    ];
    for (fields, expected) in cases {
        let lines = forwarded_lines(ProxyConfig::default(), &fields).await;
        assert_proxy_fields_once(&lines);
        let id = value(&lines, "x-request-id")[0];
        match expected {
            Some(expected) => assert_eq!(id, expected, "{fields:?}"),
            None => assert!(
                id.len() == 32 && id.bytes().all(|byte| byte.is_ascii_hexdigit()),
                "{fields:?}: {id:?}"
            ),
        }
    }
}

/// From a peer that is not trusted, every forwarding field of any case is replaced by the proxy's own;
/// from a trusted one, `X-Forwarded-For` is appended to and `-Host`/`-Proto` kept. Fields the client
/// names in `Connection`, the proxy's own names among them, go, and the proxy's are still there once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_fields_are_the_proxys_once_each_whatever_the_client_sends() {
    let spoof = "X-Forwarded-For: 192.0.2.1\r\nx-FORWARDED-for: 192.0.2.2\r\nX-Forwarded-Host: evil.test\r\n\
                 X-FORWARDED-PROTO: https\r\nForwarded: for=192.0.2.3\r\nX-Real-IP: 192.0.2.4\r\n";
    let lines = forwarded_lines(ProxyConfig::default(), spoof).await;
    assert_proxy_fields_once(&lines);
    assert_eq!(value(&lines, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(value(&lines, "x-forwarded-host"), vec!["demo.test"]);
    assert_eq!(value(&lines, "x-forwarded-proto"), vec!["http"]);
    assert!(value(&lines, "forwarded").is_empty() && value(&lines, "x-real-ip").is_empty());

    let trusted = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("network")],
        ..ProxyConfig::default()
    };
    let lines = forwarded_lines(trusted, spoof).await;
    for name in [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
    ] {
        assert_eq!(value(&lines, name).len(), 1, "{name} in {lines:?}");
    }
    assert_eq!(
        value(&lines, "x-forwarded-for"),
        vec!["192.0.2.1, 192.0.2.2, 127.0.0.1"]
    );
    assert_eq!(value(&lines, "x-forwarded-host"), vec!["evil.test"]);
    assert_eq!(value(&lines, "x-forwarded-proto"), vec!["https"]);

    // Hop-by-hop names: the proxy's own, Host, a framing field and a client field.
    let hop = "Connection: x-request-id, X-Forwarded-For, x-forwarded-host, host, x-secret\r\n\
               X-Request-Id: client\r\nX-Secret: 1\r\nX-Kept: 1\r\n";
    let lines = forwarded_lines(ProxyConfig::default(), hop).await;
    assert_proxy_fields_once(&lines);
    assert_eq!(value(&lines, "host"), vec!["demo.test"]);
    assert_eq!(value(&lines, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert!(value(&lines, "x-secret").is_empty(), "{lines:?}");
    assert!(value(&lines, "connection").is_empty(), "{lines:?}");
    assert_eq!(value(&lines, "x-kept"), vec!["1"]);
}

/// The client-address fields apps read besides `X-Forwarded-For` (`Client-IP`, `True-Client-IP`,
/// `CF-Connecting-IP`, `X-Real-IP`, `Forwarded`, ...) are dropped from a peer that is not a trusted
/// proxy, in any case, and passed on as they are from a trusted one (session 31: `Client-IP` and the
/// CDN ones reached the app from anyone, and Rails' `request.remote_ip` believes `Client-IP`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_address_fields_reach_the_app_only_from_a_trusted_proxy() {
    let names = [
        "client-ip",
        "x-client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-real-ip",
        "forwarded",
        "forwarded-for",
        "x-original-forwarded-for",
    ];
    let spoof: String = names
        .iter()
        .map(|name| format!("{}: 192.0.2.9\r\n", name.to_ascii_uppercase()))
        .collect();
    let lines = forwarded_lines(ProxyConfig::default(), &spoof).await;
    assert_proxy_fields_once(&lines);
    for name in names {
        assert!(value(&lines, name).is_empty(), "{name} in {lines:?}");
    }
    assert_eq!(value(&lines, "x-forwarded-for"), vec!["127.0.0.1"]);
    let trusted = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("network")],
        ..ProxyConfig::default()
    };
    let lines = forwarded_lines(trusted, &spoof).await;
    for name in names {
        assert_eq!(
            value(&lines, name),
            vec!["192.0.2.9"],
            "{name} in {lines:?}"
        );
    }
}

/// A framing field named in `Connection` does not change the body's framing: the instance gets the
/// body the proxy read, framed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_fields_named_in_connection_keep_the_body_framed() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let raw = exchange(
        test_proxy.addr,
        b"POST /cl HTTP/1.1\r\nHost: demo.test\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello\
          POST /te HTTP/1.1\r\nHost: demo.test\r\nConnection: transfer-encoding, close\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200, 200]);
    for path in ["/cl", "/te"] {
        let seen = recorder.request_for(path);
        assert_eq!(
            count(&seen, "content-length") + count(&seen, "transfer-encoding"),
            1,
            "{seen:?}"
        );
        assert!(seen.contains("hello"), "{seen:?}");
    }
    assert_eq!(recorder.requests().len(), 2);
    test_proxy.stop().await;
}

// --- Recycled header maps ----------------------------------------------------------------------------

/// Answers `GET /a...` with a canary field, every other request without.
fn canary_answers(head: &str) -> Reply {
    if head.starts_with("GET /a") {
        reply(b"HTTP/1.1 200 OK\r\nx-answer-canary: a\r\ncontent-length: 2\r\n\r\nok")
    } else {
        ok(head)
    }
}

fn assert_no_canary(recorder: &Recorder, path: &str, answer: &Answer) {
    let seen = recorder.request_for(path);
    assert!(
        !seen.to_ascii_lowercase().contains("canary"),
        "{path} carried a canary: {seen:?}"
    );
    assert_eq!(answer.count("x-answer-canary"), 0, "{path}: {answer:?}");
}

/// One thread (a current-thread runtime: the proxy, its connections and the instance share it): a
/// field of request A or of its answer never shows in request B or its answer, on the same connection,
/// on another one, after an error answer, after a client that left mid-answer, and over HTTP/2.
#[tokio::test]
async fn recycled_header_maps_never_carry_a_field_into_the_next_message() {
    let recorder = Recorder::start(|head| {
        if head.starts_with("GET /a-bad") {
            reply(b"HTTP/1.1 200 OK\r\nx-answer-canary: a\r\ncontent-length: x\r\n\r\nok")
        } else if head.starts_with("GET /a-long") {
            let mut bytes =
                b"HTTP/1.1 200 OK\r\nx-answer-canary: a\r\ncontent-length: 4000000\r\n\r\n"
                    .to_vec();
            bytes.extend(std::iter::repeat_n(b'x', 4_000_000));
            reply(&bytes)
        } else {
            canary_answers(head)
        }
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let canary = "X-Request-Canary: a\r\nX-Request-Id: canary-id\r\nCookie: canary=1\r\n";

    // Same connection.
    let raw = exchange(
        test_proxy.addr,
        format!(
            "GET /a1 HTTP/1.1\r\nHost: demo.test\r\n{canary}\r\n\
             GET /b1 HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let got = answers(&raw, &[]);
    assert_eq!(statuses(&got), vec![200, 200]);
    assert_eq!(got[0].count("x-answer-canary"), 1);
    assert_no_canary(&recorder, "/b1", &got[1]);

    // Another connection.
    let raw = exchange(
        test_proxy.addr,
        format!("GET /a2 HTTP/1.1\r\nHost: demo.test\r\n{canary}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    let raw = exchange(
        test_proxy.addr,
        b"GET /b2 HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    let got = answers(&raw, &[]);
    assert_no_canary(&recorder, "/b2", &got[0]);

    // After an error answer (the instance's answer head is refused: 502).
    let raw = exchange(
        test_proxy.addr,
        format!("GET /a-bad HTTP/1.1\r\nHost: demo.test\r\n{canary}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![502]);
    let raw = exchange(
        test_proxy.addr,
        b"GET /b3 HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_no_canary(&recorder, "/b3", &answers(&raw, &[])[0]);

    // After a client that left in the middle of its answer.
    {
        let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
        stream
            .write_all(
                format!("GET /a-long HTTP/1.1\r\nHost: demo.test\r\n{canary}\r\n").as_bytes(),
            )
            .await
            .expect("write");
        let mut first = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut first))
            .await
            .expect("answer")
            .expect("read");
        assert!(first[..n].starts_with(b"HTTP/1.1 200"));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let raw = exchange(
        test_proxy.addr,
        b"GET /b4 HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_no_canary(&recorder, "/b4", &answers(&raw, &[])[0]);

    // HTTP/1 then HTTP/2 on the thread.
    let raw = exchange(
        test_proxy.addr,
        format!("GET /a5 HTTP/1.1\r\nHost: demo.test\r\n{canary}Connection: close\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    let mut sender = h2_client(test_proxy.addr).await;
    let request = Request::get(format!("http://{HOST}/b5"))
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 answer");
    assert_eq!(response.status(), 200);
    assert!(response.headers().get("x-answer-canary").is_none());
    let _ = response.into_body().collect().await;
    let seen = recorder.request_for("/b5");
    assert!(!seen.to_ascii_lowercase().contains("canary"), "{seen:?}");
    test_proxy.stop().await;
}

// --- Answers ---------------------------------------------------------------------------------------------

/// Pipelines `GET /first` (or HEAD) and `GET /second` and answers the first with `first`: what the
/// client reads, as answers (panics unless well framed).
async fn after_answer(first: &'static [u8], head_first: bool) -> (Vec<Answer>, Recorder) {
    let recorder = Recorder::start(move |head| {
        if head.contains(" /first ") {
            reply(first)
        } else {
            reply(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
        }
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let method = if head_first { "HEAD" } else { "GET" };
    let raw = exchange(
        test_proxy.addr,
        format!(
            "{method} /first HTTP/1.1\r\nHost: demo.test\r\n\r\n\
             GET /second HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    test_proxy.stop().await;
    (answers(&raw, &[head_first, false]), recorder)
}

/// Whatever the instance's first answer, the client gets it well framed (or a 502) and then the second
/// answer, whole: never bytes of the first answer in the second's place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn badly_framed_answers_reach_the_client_well_framed_or_as_502() {
    let cases: Vec<(&'static [u8], bool, u16)> = vec![
        // CL + TE: read by TE, the length dropped.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 200),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 1\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 200),
        // Codings the proxy does not decode (HAProxy: 502; nginx 1.22 drops `gzip` and passes the coded
        // bytes on as the body).
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 502),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\nok", false, 502),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", false, 502),
        // Bad and conflicting lengths.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2x\r\n\r\nok", false, 502),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok", false, 502),
        (b"HTTP/1.1 200 OK\r\ncontent-length: -2\r\n\r\nok", false, 502),
        // obs-fold, a space before the colon.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: a\r\n b\r\n\r\nok", false, 502),
        (b"HTTP/1.1 200 OK\r\ncontent-length : 2\r\n\r\nok", false, 502),
        // A body after a 204, a 304 and a HEAD answer, with another answer hidden after it.
        (b"HTTP/1.1 204 No Content\r\ncontent-length: 48\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle", false, 204),
        (b"HTTP/1.1 304 Not Modified\r\ncontent-length: 48\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle", false, 304),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 48\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle", true, 200),
        // A length shorter than what follows.
        (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nsmuggle", false, 200),
        // 1xx, then the final answer.
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </s>\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false, 200),
        // Chunks with extensions and trailers the client did not ask for.
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;x=y\r\nok\r\n0\r\nx-t: 1\r\n\r\n", false, 200),
        // Closes after the first answer.
        (b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok", false, 200),
    ];
    for (first, head_first, status) in cases {
        let (got, recorder) = after_answer(first, head_first).await;
        let finals: Vec<&Answer> = got.iter().filter(|answer| answer.status >= 200).collect();
        assert_eq!(
            finals
                .iter()
                .map(|answer| answer.status)
                .collect::<Vec<_>>(),
            vec![status, 200],
            "{:?} -> {got:?}",
            String::from_utf8_lossy(first)
        );
        assert_eq!(finals[1].body, b"second", "{got:?}");
        if status == 200 && !head_first {
            assert_eq!(finals[0].body, b"ok", "{got:?}");
        }
        assert!(
            got.iter().all(|answer| answer.status != 100),
            "100 Continue reached the client: {got:?}"
        );
        assert!(
            !got.iter()
                .any(|answer| String::from_utf8_lossy(&answer.body).contains("smuggle")),
            "{got:?}"
        );
        // Each request once: an invalid answer is an answer (502 at once), not a reason to send the
        // request again (nginx's `proxy_next_upstream` default, `error timeout`, leaves out
        // `invalid_header`; session 31: it was sent up to `max_attempts` times).
        let requests = recorder.requests();
        let (firsts, seconds): (Vec<&String>, Vec<&String>) = requests
            .iter()
            .partition(|raw| raw.starts_with("GET /first ") || raw.starts_with("HEAD /first "));
        assert_eq!(seconds.len(), 1, "{requests:?}");
        assert_eq!(
            firsts.len(),
            1,
            "{:?}: {requests:?}",
            String::from_utf8_lossy(first)
        );
        assert!(
            recorder.leftovers().is_empty(),
            "{:?}",
            recorder.leftovers()
        );
        // An instance connection with bytes left after an answer (or framed two ways) is not reused.
        let text = String::from_utf8_lossy(first);
        if text.contains("smuggle") || text.contains("content-length: 100\r\ntransfer") {
            let second = recorder.connections_for("/second");
            assert!(
                !recorder.connections_for("/first").contains(&second[0]),
                "{text:?}: the instance's connection was reused"
            );
            assert!(recorder.connections.load(Ordering::SeqCst) >= 2);
        }
    }
}

/// More answer fields than the route allows: 502, not a cut head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_with_too_many_fields_is_a_502() {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n".to_vec();
    for index in 0..600 {
        answer.extend_from_slice(format!("x-f{index}: v\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\nok");
    let answer: &'static [u8] = answer.leak();
    let (got, _) = after_answer(answer, false).await;
    assert_eq!(statuses(&got), vec![502, 200], "{got:?}");
}

/// Trailer fields that frame, route or authenticate a message, hop-by-hop ones, and (in a request) the
/// forwarding fields the proxy writes itself are not passed on in trailers, either way: an app or client
/// that merges trailers into the header section would believe them (RFC 9110 section 6.5.1; hyper's
/// client and server, which the proxy's own HTTP/1 code replaced in session 29, dropped the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_carry_no_framing_routing_or_forwarding_fields() {
    let recorder = Recorder::start(|_| {
        reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\n\
              x-checksum: 42\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\nset-cookie: a=b\r\n\
              connection: close\r\n\r\n",
        )
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let raw = exchange(
        test_proxy.addr,
        b"POST /t HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
          Trailer: x-checksum\r\nConnection: close, TE\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: 1\r\n\
          X-Forwarded-For: 192.0.2.66\r\nX-Request-Id: spoofed\r\nTrue-Client-IP: 192.0.2.67\r\nHost: evil.test\r\n\
          Content-Length: 5\r\nTransfer-Encoding: chunked\r\nAuthorization: Basic eA==\r\n\r\n",
    )
    .await;
    let got = answers(&raw, &[]);
    assert_eq!(statuses(&got), vec![200], "{got:?}");
    assert_eq!(
        got[0].trailers,
        vec!["x-checksum: 42".to_owned()],
        "{got:?}"
    );
    let seen = recorder.request_for("/t");
    let trailer_section = seen
        .split_once("\r\n0\r\n")
        .map(|(_, trailers)| trailers.to_ascii_lowercase())
        .expect("chunked");
    assert_eq!(trailer_section, "x-checksum: 1\r\n\r\n", "{seen:?}");
    test_proxy.stop().await;
}

/// An answer's trailers reach only a client that sent `TE: trailers` (RFC 9110 section 6.5.1: a
/// recipient may drop them, and one that did not ask may not expect fields after the body; hyper sent
/// them only then). Without it the body ends with the last chunk and an empty trailer section.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trailers_reach_only_a_client_that_said_te_trailers() {
    let recorder = Recorder::start(|_| {
        reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\n\r\n2\r\nok\r\n0\r\n\
              x-checksum: 42\r\n\r\n",
        )
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: &[(&str, &[&str])] = &[
        ("", &[]),
        ("TE: gzip\r\n", &[]),
        ("TE: trailers\r\n", &["x-checksum: 42"]),
        ("TE: gzip;q=0.5, Trailers\r\n", &["x-checksum: 42"]),
    ];
    for (te, trailers) in cases {
        let raw = exchange(
            test_proxy.addr,
            format!("GET /t HTTP/1.1\r\nHost: demo.test\r\n{te}Connection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        let got = answers(&raw, &[]);
        assert_eq!(statuses(&got), vec![200], "{te:?}: {got:?}");
        assert_eq!(got[0].body, b"ok", "{te:?}: {got:?}");
        assert_eq!(&got[0].trailers, trailers, "{te:?}: {got:?}");
    }
    test_proxy.stop().await;
}

/// A request whose body the proxy will not read (413: over the route's limit) is answered with
/// `connection: close`, and the connection closes: the unread body is never read as requests, and the
/// client knows not to send more on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_before_an_unread_body_says_the_connection_closes() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut request =
        b"POST /big HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 200000000\r\n\r\n".to_vec();
    for _ in 0..10 {
        request.extend_from_slice(SMUGGLED);
    }
    stream.write_all(&request).await.expect("write");
    let mut raw = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
    assert!(read.is_ok(), "the connection stayed open");
    let got = answers(&raw, &[]);
    assert_eq!(statuses(&got), vec![413], "{got:?}");
    assert_eq!(got[0].get("connection"), Some("close"), "{got:?}");
    assert!(recorder.requests().is_empty(), "{:?}", recorder.requests());
    test_proxy.stop().await;
}

/// `Upgrade: h2c` is not passed on (nginx 1.22 drops it, HAProxy 2.6 passes it on): an instance that took it would switch the
/// client's connection to HTTP/2 straight to the app, every later request on it past the proxy's
/// routing and its forwarding fields ("h2c smuggling"). The request goes on as a plain one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_not_passed_on() {
    let recorder = Recorder::start(|head| {
        if head.to_ascii_lowercase().contains("upgrade: h2c") {
            Reply {
                bytes: b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n"
                    .to_vec(),
                close: false,
            }
        } else {
            ok(head)
        }
    })
    .await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    for upgrade in ["h2c", "H2C", " h2c , h2c"] {
        let request = format!(
            "GET /h2c HTTP/1.1\r\nHost: demo.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
             Upgrade: {upgrade}\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n\
             GET /after HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n"
        );
        let raw = exchange(test_proxy.addr, request.as_bytes()).await;
        assert_eq!(
            statuses(&answers(&raw, &[])),
            vec![200, 200],
            "{upgrade:?}: {:?}",
            String::from_utf8_lossy(&raw)
        );
    }
    for seen in recorder.requests() {
        let lines = lines(&seen);
        assert!(
            value(&lines, "upgrade").is_empty() && value(&lines, "http2-settings").is_empty(),
            "{seen:?}"
        );
    }
    assert_eq!(recorder.requests().len(), 6);
    test_proxy.stop().await;
}

/// A streamed request body that ends short (the client gone) or breaks (a bad chunk) leaves its
/// instance connection in the middle of a request: it is closed, never pooled, so the next request is
/// never read by the instance as the rest of that body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_cut_short_never_leaves_its_instance_connection_to_the_next_request() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let mut short =
        b"POST /short HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 300000\r\n\r\n".to_vec();
    short.extend(std::iter::repeat_n(b'x', 150_000));
    let mut broken =
        b"POST /broken HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..10 {
        broken.extend_from_slice(b"4000\r\n");
        broken.extend(std::iter::repeat_n(b'y', 0x4000));
        broken.extend_from_slice(b"\r\n");
    }
    broken.extend_from_slice(b"zz\r\n");
    for (request, next) in [(short, "/next-1"), (broken, "/next-2")] {
        let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
        stream.write_all(&request).await.expect("write");
        // Let the head and the first bytes reach the instance, then end the client's side.
        tokio::time::sleep(Duration::from_millis(200)).await;
        stream.shutdown().await.expect("shutdown");
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut raw)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        let raw = exchange(
            test_proxy.addr,
            format!("GET {next} HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
        let seen = recorder.request_for(next);
        assert!(seen.starts_with(&format!("GET {next} ")), "{seen:?}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The cut requests never completed at the instance; their connections ended with their partial bytes.
    let requests = recorder.requests();
    assert_eq!(
        requests.len(),
        2,
        "{:?}",
        requests
            .iter()
            .map(|r| &r[..40.min(r.len())])
            .collect::<Vec<_>>()
    );
    let leftovers = recorder.leftovers();
    assert!(
        leftovers
            .iter()
            .any(|left| left.starts_with("POST /short ")),
        "{}",
        leftovers.len()
    );
    assert!(
        leftovers
            .iter()
            .any(|left| left.starts_with("POST /broken ")),
        "{}",
        leftovers.len()
    );
    test_proxy.stop().await;
}

/// An answer whose body breaks after its head went out (a bad chunk, a length the instance does not
/// keep) is cut, and the client's connection closes: the client sees a truncated answer (no last
/// chunk, fewer bytes than the length), never the next answer in its place, and the request it
/// pipelined is not sent on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_body_breaking_mid_way_cuts_the_answer_and_closes() {
    let cases: [(&'static [u8], &str); 3] = [
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\nzz\r\nHTTP/1.1 200 OK\r\n", "chunked"),
        (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX\r\n0\r\n\r\n", "chunked"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nok", "content-length: 10"),
    ];
    for (first, framing) in cases {
        let recorder = Recorder::start(move |head| {
            if head.contains(" /first ") {
                Reply {
                    bytes: first.to_vec(),
                    close: true,
                }
            } else {
                reply(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nsecond")
            }
        })
        .await;
        let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
        let raw = exchange(
            test_proxy.addr,
            b"GET /first HTTP/1.1\r\nHost: demo.test\r\n\r\n\
              GET /second HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
        )
        .await;
        let text = String::from_utf8_lossy(&raw).into_owned();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text:?}");
        assert!(text.contains(framing), "{text:?}");
        assert_eq!(text.matches("HTTP/1.1").count(), 1, "{text:?}");
        assert!(
            !text.contains("second") && !text.ends_with("0\r\n\r\n"),
            "{text:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            recorder
                .requests()
                .iter()
                .all(|raw| raw.starts_with("GET /first ")),
            "{:?}",
            recorder.requests()
        );
        test_proxy.stop().await;
    }
}

/// `100 Continue` is an interim answer: once the final answer's head went out it is never written (it
/// would land in the answer's body, and the client read the rest of the body as another answer). Here
/// the instance answers at once, before the client sent its body, and the answer's body comes in two
/// pieces: the 100 was written between them about every other time (the connection's feeder wrote it
/// whenever the instance's writer first wanted the body, even after the answer's head). Eight times, on
/// new connections, to catch that race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_100_continue_is_written_after_the_final_answer_head() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while find(&buf, b"\r\n\r\n").is_none() {
                    if fill(&mut stream, &mut buf).await.is_none() {
                        return;
                    }
                }
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello")
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let _ = stream.write_all(b"world").await;
                while fill(&mut stream, &mut buf).await.is_some() {}
            });
        }
    });
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), RouteSettings::default()).await;
    test_proxy.add_ready("raw", "R", addr);
    for _ in 0..8 {
        let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
        stream
            .write_all(
                b"POST /early HTTP/1.1\r\nHost: demo.test\r\nExpect: 100-continue\r\n\
                  Content-Length: 100000\r\n\r\n",
            )
            .await
            .expect("write");
        let mut raw = Vec::new();
        while find(&raw, b"world").is_none() && raw.len() < 4096 {
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
                .await
                .expect("the answer")
                .expect("read");
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&raw).into_owned();
        let final_at = text.find("HTTP/1.1 200").expect("final answer");
        assert!(
            !text[final_at..].contains("100 Continue"),
            "100 Continue after the final answer's head: {text:?}"
        );
        assert!(text.ends_with("\r\n\r\nhelloworld"), "{text:?}");
    }
    test_proxy.stop().await;
}

/// An HTTP/2 client's request reaches an HTTP/1 instance with the proxy's own fields once each and the
/// client's spoofs of them gone, its cookies in one field, and no HTTP/2-only or hop-by-hop field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_gets_the_proxys_fields_once() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let mut sender = h2_client(test_proxy.addr).await;
    let request = Request::post(format!("http://{HOST}/h2"))
        .header("x-forwarded-for", "192.0.2.1")
        .header("x-forwarded-host", "evil.test")
        .header("x-forwarded-proto", "https")
        .header("forwarded", "for=192.0.2.2")
        .header("x-request-id", "from-h2")
        .header("te", "trailers")
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(http_body_util::Full::new(Bytes::from_static(b"hello")))
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 answer");
    assert_eq!(response.status(), 200);
    let seen = recorder.request_for("/h2");
    let lines = lines(&seen);
    assert_proxy_fields_once(&lines);
    assert_eq!(value(&lines, "x-forwarded-for"), vec!["127.0.0.1"]);
    assert_eq!(value(&lines, "x-forwarded-host"), vec!["demo.test"]);
    assert_eq!(value(&lines, "x-forwarded-proto"), vec!["http"]);
    assert_eq!(value(&lines, "x-request-id"), vec!["from-h2"]);
    assert_eq!(value(&lines, "cookie"), vec!["a=1; b=2"]);
    assert!(value(&lines, "forwarded").is_empty(), "{seen:?}");
    assert_eq!(value(&lines, "content-length"), vec!["5"], "{seen:?}");
    assert!(seen.ends_with("\r\n\r\nhello"), "{seen:?}");
    test_proxy.stop().await;
}

// --- HTTP/2 as an attacker (session 31) ---------------------------------------------------------------
//
// A raw h2c client (prior knowledge): frames and HPACK literals written by hand, so a request can carry
// what a well-behaved client library refuses to send (uppercase names, connection fields, pseudo-header
// fields out of place, bytes illegal in HTTP/1). Answers are read as far as the cases need: each stream's
// `:status` (or its RST_STREAM code), and the connection's GOAWAY.

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0;
const HEADERS: u8 = 1;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const GOAWAY: u8 = 7;
const CONTINUATION: u8 = 9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PROTOCOL_ERROR: u32 = 1;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("frame length");
    let mut out = length.to_be_bytes()[1..].to_vec();
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 section 5.1), `first` holding the prefix's flags.
fn hpack_int(out: &mut Vec<u8>, first: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, new names, no Huffman: the bytes go as given.
fn block(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        hpack_int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name);
        hpack_int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value);
    }
    out
}

/// A GET's pseudo-header fields for `path` on the test host, then `fields`.
fn get_block(path: &str, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut all: Vec<(&[u8], &[u8])> = vec![
        (b":method", b"GET"),
        (b":scheme", b"http"),
        (b":authority", HOST.as_bytes()),
        (b":path", path.as_bytes()),
    ];
    all.extend_from_slice(fields);
    block(&all)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum StreamEnd {
    /// The answer's `:status` (the stream ended, or its head came and the rest did not matter).
    Status(u16),
    Reset(u32),
}

#[derive(Debug, Default)]
struct H2Outcome {
    streams: std::collections::BTreeMap<u32, StreamEnd>,
    /// The GOAWAY's error code, if one came.
    goaway: Option<u32>,
    /// Whether the proxy closed the connection.
    closed: bool,
}

/// The `:status` of an answer's header block: h2's encoder sends it first, indexed when the static
/// table has it, else as a literal with the static name (Huffman-coded digits).
fn status_of(block: &[u8]) -> u16 {
    let static_status = |index: u8| match index {
        8 => 200,
        9 => 204,
        10 => 206,
        11 => 304,
        12 => 400,
        13 => 404,
        14 => 500,
        other => panic!("not a :status index: {other}"),
    };
    let first = block[0];
    if first & 0x80 != 0 {
        return static_status(first & 0x7f);
    }
    // A literal whose name is static entry 8 (`:status`): with (0x48) or without (0x08) indexing.
    assert!(first & 0x3f == 8 || first & 0x0f == 8, "{block:?}");
    let huffman = block[1] & 0x80 != 0;
    let length = usize::from(block[1] & 0x7f);
    let value = &block[2..2 + length];
    let digits = if huffman {
        // Digits only (RFC 7541 appendix B): 0-2 are 5 bits, 3-9 are 6 bits.
        let mut bits = value
            .iter()
            .flat_map(|byte| (0..8).rev().map(move |bit| (byte >> bit) & 1));
        let mut digits = String::new();
        while digits.len() < 3 {
            let mut code = 0u8;
            for _ in 0..5 {
                code = code << 1 | bits.next().expect("bits");
            }
            if code <= 2 {
                digits.push(char::from(b'0' + code));
            } else {
                code = code << 1 | bits.next().expect("bits");
                digits.push(char::from(b'0' + code - 0x19 + 3));
            }
        }
        digits
    } else {
        String::from_utf8_lossy(value).into_owned()
    };
    digits.parse().expect("status digits")
}

/// Sends the preface, an empty SETTINGS and `frames` on a new h2c connection, and reads until every
/// stream of `expect` ended (answered or reset; none: not looked at), a GOAWAY came, or the proxy
/// closed.
async fn h2_raw(proxy: SocketAddr, frames: &[u8], expect: &[u32]) -> H2Outcome {
    let stream = TcpStream::connect(proxy).await.expect("connect");
    h2_raw_over(stream, frames, expect).await
}

/// `h2_raw` over a connection made already (TLS with ALPN `h2`, for one).
async fn h2_raw_over<S>(stream: S, frames: &[u8], expect: &[u32]) -> H2Outcome
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend_from_slice(frames);
    // Written beside the reads: a large flood must not block on a proxy that stopped reading.
    let (mut reader, mut writer) = tokio::io::split(stream);
    let write = async {
        let _ = writer.write_all(&out).await;
        std::future::pending::<()>().await
    };
    let read = async {
        let mut outcome = H2Outcome::default();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 16384];
        loop {
            while buf.len() >= 9 {
                let length =
                    usize::from(buf[0]) << 16 | usize::from(buf[1]) << 8 | usize::from(buf[2]);
                if buf.len() < 9 + length {
                    break;
                }
                let (kind, flags) = (buf[3], buf[4]);
                let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                let payload = buf[9..9 + length].to_vec();
                buf.drain(..9 + length);
                match kind {
                    HEADERS => {
                        let status = status_of(&payload);
                        if status >= 200 {
                            outcome.streams.insert(id, StreamEnd::Status(status));
                        }
                        let _ = flags;
                    }
                    RST_STREAM => {
                        let code = u32::from_be_bytes(payload[..4].try_into().expect("code"));
                        outcome.streams.entry(id).or_insert(StreamEnd::Reset(code));
                    }
                    GOAWAY => {
                        outcome.goaway =
                            Some(u32::from_be_bytes(payload[4..8].try_into().expect("code")));
                        return outcome;
                    }
                    _ => {}
                }
            }
            // No stream to wait for: until the GOAWAY or the close.
            if !expect.is_empty() && expect.iter().all(|id| outcome.streams.contains_key(id)) {
                return outcome;
            }
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    outcome.closed = true;
                    return outcome;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), async {
        tokio::select! {
            outcome = read => outcome,
            () = write => unreachable!(),
        }
    })
    .await
    .expect("the proxy neither answered nor closed")
}

/// One request on stream 1: its header block in one HEADERS frame, ending the stream.
async fn h2_one(proxy: SocketAddr, block: &[u8]) -> H2Outcome {
    h2_raw(
        proxy,
        &frame(HEADERS, END_HEADERS | END_STREAM, 1, block),
        &[1],
    )
    .await
}

/// Malformed requests (RFC 9113 section 8.1.1, 8.2, 8.3) are a stream error, and nothing of them
/// reaches the instance: connection-specific fields, uppercase names, pseudo-header fields after
/// regular ones, unknown or repeated pseudo-header fields, bytes that are illegal in field values (an
/// HTTP/1 instance would read CR LF as the end of a field), a `:path` that cannot be a request line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http2_requests_are_stream_errors_and_never_reach_the_instance() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let injected: &[u8] = b"1\r\nx-injected: 1";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "transfer-encoding",
            get_block("/m", &[(b"transfer-encoding", b"chunked")]),
        ),
        (
            "connection",
            get_block("/m", &[(b"connection", b"keep-alive")]),
        ),
        (
            "keep-alive",
            get_block("/m", &[(b"keep-alive", b"timeout=5")]),
        ),
        ("upgrade", get_block("/m", &[(b"upgrade", b"websocket")])),
        (
            "proxy-connection",
            get_block("/m", &[(b"proxy-connection", b"close")]),
        ),
        ("te: gzip", get_block("/m", &[(b"te", b"gzip")])),
        ("uppercase name", get_block("/m", &[(b"X-Upper", b"1")])),
        ("space in name", get_block("/m", &[(b"x a", b"1")])),
        ("colon in name", get_block("/m", &[(b"x:a", b"1")])),
        ("empty name", get_block("/m", &[(b"", b"1")])),
        ("CR LF in value", get_block("/m", &[(b"x-a", injected)])),
        (
            "LF in value",
            get_block("/m", &[(b"x-a", b"1\nx-injected: 1")]),
        ),
        ("NUL in value", get_block("/m", &[(b"x-a", b"1\0")])),
        (
            "pseudo after regular",
            block(&[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b"x-a", b"1"),
                (b":authority", HOST.as_bytes()),
                (b":path", b"/m"),
            ]),
        ),
        ("unknown pseudo", get_block("/m", &[(b":x", b"1")])),
        ("response pseudo", get_block("/m", &[(b":status", b"200")])),
        (
            "two paths",
            block(&[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", HOST.as_bytes()),
                (b":path", b"/m"),
                (b":path", b"/other"),
            ]),
        ),
        (
            "no path",
            block(&[
                (b":method", b"GET"),
                (b":scheme", b"http"),
                (b":authority", HOST.as_bytes()),
            ]),
        ),
        ("space in path", get_block("/m HTTP/1.1\r\nx: y", &[])),
        ("path not absolute", get_block("m", &[])),
    ];
    for (name, block) in &cases {
        let outcome = h2_one(test_proxy.addr, block).await;
        let end = outcome.streams.get(&1);
        assert!(
            matches!(end, Some(StreamEnd::Reset(PROTOCOL_ERROR)))
                || matches!(end, Some(StreamEnd::Status(400)))
                || outcome.goaway == Some(PROTOCOL_ERROR),
            "{name}: {outcome:?}"
        );
        eprintln!("{name}: {outcome:?}");
    }
    assert!(
        recorder.requests().is_empty() && recorder.leftovers().is_empty(),
        "{:?} {:?}",
        recorder.requests(),
        recorder.leftovers()
    );
    test_proxy.stop().await;
}

/// A request whose `:authority` and `Host` disagree is a 400 (RFC 9113 section 8.3.1), either way round,
/// so what routes it is what reaches the app: `:authority` when there is one (as `Host`), else `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_authority_and_host_that_disagree_are_a_400() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let request =
        |path: &'static str, authority: Option<&'static str>, host: Option<&'static str>| {
            let mut fields: Vec<(&[u8], &[u8])> = vec![(b":method", b"GET"), (b":scheme", b"http")];
            if let Some(authority) = authority {
                fields.push((b":authority", authority.as_bytes()));
            }
            fields.push((b":path", path.as_bytes()));
            if let Some(host) = host {
                fields.push((b"host", host.as_bytes()));
            }
            block(&fields)
        };
    let cases = [
        ("/a1", Some(HOST), Some("evil.test"), 400, None),
        ("/a2", Some("evil.test"), Some(HOST), 400, None),
        ("/a3", None, Some(HOST), 200, Some(HOST)),
        (
            "/a4",
            Some("DEMO.test"),
            Some("demo.TEST"),
            200,
            Some("DEMO.test"),
        ),
        (
            "/a5",
            Some("demo.test:8080"),
            None,
            200,
            Some("demo.test:8080"),
        ),
    ];
    for (path, authority, host, status, seen_host) in cases {
        let outcome = h2_one(test_proxy.addr, &request(path, authority, host)).await;
        assert_eq!(
            outcome.streams.get(&1),
            Some(&StreamEnd::Status(status)),
            "{path}: {outcome:?}"
        );
        match seen_host {
            Some(seen_host) => {
                let lines = lines(&recorder.request_for(path));
                assert_eq!(value(&lines, "host"), vec![seen_host], "{path}");
            }
            None => assert!(recorder.connections_for(path).is_empty(), "{path}"),
        }
    }
    test_proxy.stop().await;
}

/// A host that is not `name[:port]` is a 400 whichever way it comes (HTTP/1 `Host`, an absolute target,
/// HTTP/2 `:authority`), and reaches no app: routing reads the name before the last `:`, and an app
/// that parses the host as a URL authority reads the name after an `@`, so `demo.test:80@evil.test` was
/// routed to demo.test and its app saw evil.test (session 31).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_is_not_name_and_port_is_a_400_and_reaches_no_app() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let invalid = [
        "demo.test:80@evil.test",
        "evil@demo.test",
        "demo.test:x",
        "demo.test/evil",
        "demo.test:80:81",
        "demo.test\\evil",
        "[::1",
    ];
    for host in invalid {
        let raw = exchange(
            test_proxy.addr,
            format!("GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answers(&raw, &[])), vec![400], "Host {host:?}");
        if !host.contains(['/', '\\', '[']) {
            let raw = exchange(
                test_proxy.addr,
                format!(
                    "GET http://{host}/h HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n"
                )
                .as_bytes(),
            )
            .await;
            assert_eq!(statuses(&answers(&raw, &[])), vec![400], "target {host:?}");
            let outcome = h2_one(
                test_proxy.addr,
                &block(&[
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":authority", host.as_bytes()),
                    (b":path", b"/h"),
                ]),
            )
            .await;
            // h2 itself resets a stream whose `:authority` is no URI authority (`a:80:81`).
            assert!(
                matches!(
                    outcome.streams.get(&1),
                    Some(StreamEnd::Status(400) | StreamEnd::Reset(PROTOCOL_ERROR))
                ),
                "{host:?}: {outcome:?}"
            );
        }
    }
    assert!(recorder.requests().is_empty(), "{:?}", recorder.requests());
    // Valid ones still route: a port, a trailing dot, any case.
    for host in ["demo.test:8080", "DEMO.test.", "demo.test:"] {
        let raw = exchange(
            test_proxy.addr,
            format!("GET /h HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        assert_eq!(statuses(&answers(&raw, &[])), vec![200], "Host {host:?}");
    }
    test_proxy.stop().await;
}

/// An HTTP/2 body longer or shorter than its `content-length` is a stream error (RFC 9113 section
/// 8.1.1), and no byte of it reaches the instance: not a head promising a length that never comes, not
/// bytes past the length that an HTTP/1 instance would read as its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_that_disagrees_with_its_content_length_reaches_no_instance() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let post = |length: &'static [u8]| {
        block(&[
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", HOST.as_bytes()),
            (b":path", b"/cl"),
            (b"content-length", length),
        ])
    };
    let cases: [(&[u8], &[u8]); 4] = [
        (b"10", b"hello"),
        (b"2", b"okGET /smuggled HTTP/1.1\r\nHost: demo.test\r\n\r\n"),
        (b"0", b"hello"),
        (b"5", b""),
    ];
    for (length, data) in cases {
        let frames = if data.is_empty() {
            frame(HEADERS, END_HEADERS | END_STREAM, 1, &post(length))
        } else {
            let mut frames = frame(HEADERS, END_HEADERS, 1, &post(length));
            frames.extend(frame(DATA, END_STREAM, 1, data));
            frames
        };
        let outcome = h2_raw(test_proxy.addr, &frames, &[1]).await;
        assert_eq!(
            outcome.streams.get(&1),
            Some(&StreamEnd::Reset(PROTOCOL_ERROR)),
            "{length:?}: {outcome:?}"
        );
    }
    // The next request is answered, and it is the only one the instance saw, whole.
    let outcome = h2_one(test_proxy.addr, &get_block("/after", &[])).await;
    assert_eq!(outcome.streams.get(&1), Some(&StreamEnd::Status(200)));
    test_proxy.stop().await;
    assert_eq!(recorder.requests().len(), 1, "{:?}", recorder.requests());
    assert!(
        recorder.leftovers().is_empty(),
        "{:?}",
        recorder.leftovers()
    );
}

/// Floods end the connection with a GOAWAY (ENHANCE_YOUR_CALM, or a frame size error for one frame over
/// the limit) and nothing of them reaches the instance: a header list over `max_header_bytes` split over
/// CONTINUATION frames, endless empty CONTINUATION frames (CVE-2024-27316's shape), and requests reset as
/// soon as they are sent (rapid reset, CVE-2023-44487; h2 allows 20 reset before they were accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_end_in_goaway_and_reach_no_instance() {
    const ENHANCE_YOUR_CALM: u32 = 11;
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let mut fields = frame(HEADERS, 0, 1, &get_block("/cont", &[]));
    let field = block(&[(b"x-f", "v".repeat(1000).as_bytes())]);
    for _ in 0..2000 {
        fields.extend(frame(CONTINUATION, 0, 1, &field));
    }
    let mut empty = frame(HEADERS, 0, 1, &get_block("/cont0", &[]));
    for _ in 0..100_000 {
        empty.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    let mut resets = Vec::new();
    for index in 0..1000u32 {
        let id = 2 * index + 1;
        resets.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block(&format!("/r{index}"), &[]),
        ));
        resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    resets.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        2001,
        &get_block("/last", &[]),
    ));
    for (name, frames, last) in [
        ("continuation fields", fields, 1),
        ("continuation empty", empty, 1),
        ("rapid reset", resets, 2001),
    ] {
        let outcome = h2_raw(test_proxy.addr, &frames, &[last]).await;
        assert_eq!(
            outcome.goaway,
            Some(ENHANCE_YOUR_CALM),
            "{name}: {outcome:?}"
        );
    }
    test_proxy.stop().await;
    // The resets' requests whose stream was accepted before its reset came may have gone on: h2 counts
    // only those reset before they were accepted, so a few may pass, never most.
    let reached = recorder.requests();
    assert!(
        reached.iter().all(|raw| raw.starts_with("GET /r")) && reached.len() <= 100,
        "{} reached: {:?}",
        reached.len(),
        reached.first()
    );
}

/// Over TLS (ALPN `h2`) the same server takes the same attacks the same way: a malformed request, a
/// disagreeing `Host`, an invalid host, rapid reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_over_tls_refuses_the_same_attacks() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let certified = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).expect("certificate");
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .expect("server config");
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(proxy::serve_tls(
        listener,
        test_proxy.proxy.clone(),
        Arc::new(server_config),
        shutdown.clone(),
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).expect("root");
    let mut client_config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    client_config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let connect = || async {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        connector
            .connect(ServerName::try_from(HOST).expect("name"), tcp)
            .await
            .expect("TLS handshake")
    };
    let one = |block: Vec<u8>| frame(HEADERS, END_HEADERS | END_STREAM, 1, &block);
    let outcome = h2_raw_over(
        connect().await,
        &one(get_block("/t1", &[(b"transfer-encoding", b"chunked")])),
        &[1],
    )
    .await;
    assert_eq!(
        outcome.streams.get(&1),
        Some(&StreamEnd::Reset(PROTOCOL_ERROR)),
        "{outcome:?}"
    );
    let outcome = h2_raw_over(
        connect().await,
        &one(get_block("/t2", &[(b"host", b"evil.test")])),
        &[1],
    )
    .await;
    assert_eq!(
        outcome.streams.get(&1),
        Some(&StreamEnd::Status(400)),
        "{outcome:?}"
    );
    let invalid = block(&[
        (b":method", b"GET"),
        (b":scheme", b"https"),
        (b":authority", b"demo.test:443@evil.test"),
        (b":path", b"/t3"),
    ]);
    let outcome = h2_raw_over(connect().await, &one(invalid), &[1]).await;
    assert_eq!(
        outcome.streams.get(&1),
        Some(&StreamEnd::Status(400)),
        "{outcome:?}"
    );
    let mut resets = Vec::new();
    for index in 0..1000u32 {
        let id = 2 * index + 1;
        resets.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/r", &[]),
        ));
        resets.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    let outcome = h2_raw_over(connect().await, &resets, &[]).await;
    assert_eq!(outcome.goaway, Some(11), "{outcome:?}");
    // The valid one is answered.
    let outcome = h2_raw_over(connect().await, &one(get_block("/t4", &[])), &[1]).await;
    assert_eq!(
        outcome.streams.get(&1),
        Some(&StreamEnd::Status(200)),
        "{outcome:?}"
    );
    shutdown.cancel();
    server.await.expect("join").expect("serve_tls");
    test_proxy.stop().await;
    let reached = recorder.requests();
    assert!(
        reached
            .iter()
            .all(|raw| raw.starts_with("GET /r ") || raw.starts_with("GET /t4 "))
            && reached.len() <= 101,
        "{} reached: {:?}",
        reached.len(),
        reached.first()
    );
}

/// An h2c instance that answers every request with `answer` (a header block), counting the requests
/// (HEADERS frames) it got over all its connections.
async fn h2c_instance(answer: Vec<u8>) -> (SocketAddr, Arc<AtomicUsize>) {
    h2c_instance_or_hang_up(Some(answer)).await
}

/// `h2c_instance`, or with `None` one that closes its connection on each request's HEADERS frame.
async fn h2c_instance_or_hang_up(answer: Option<Vec<u8>>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&requests);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let requests = Arc::clone(&counted);
            let answer = answer.clone();
            tokio::spawn(async move {
                let mut out = frame(SETTINGS, 0, 0, &[]);
                out.extend(frame(SETTINGS, 1, 0, &[]));
                if stream.write_all(&out).await.is_err() {
                    return;
                }
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16384];
                let mut preface = false;
                loop {
                    if !preface && buf.len() >= PREFACE.len() {
                        buf.drain(..PREFACE.len());
                        preface = true;
                    }
                    while preface && buf.len() >= 9 {
                        let length = usize::from(buf[0]) << 16
                            | usize::from(buf[1]) << 8
                            | usize::from(buf[2]);
                        if buf.len() < 9 + length {
                            break;
                        }
                        let kind = buf[3];
                        let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                        buf.drain(..9 + length);
                        if kind == HEADERS {
                            requests.fetch_add(1, Ordering::SeqCst);
                            let Some(answer) = &answer else {
                                return;
                            };
                            let reply = frame(HEADERS, END_HEADERS | END_STREAM, id, answer);
                            if stream.write_all(&reply).await.is_err() {
                                return;
                            }
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, requests)
}

/// A GET an h2c instance hung up on goes again, whole, to another instance: hyper's client keeps the
/// request it sent, so `forward` rebuilds it from its copy of the head (`replay_head`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_an_h2c_instance_hung_up_on_is_sent_again_to_another() {
    const MAX_ROUNDS: usize = 64;
    let h2c = RouteSettings {
        protocol: proxy::UpstreamProtocol::H2c,
        ..RouteSettings::default()
    };
    let (hangs_up, hung_up_on) = h2c_instance_or_hang_up(None).await;
    let (answering, answered) = h2c_instance_or_hang_up(Some(vec![0x88])).await;
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), h2c).await;
    test_proxy.add_ready("hangs-up", "R", hangs_up);
    test_proxy.add_ready("answers", "R", answering);
    let get = b"GET /again HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n";
    // The instance is picked at random: more requests (bounded) until one reached the one that hangs up.
    let mut gets = 0;
    while gets < 4 || (hung_up_on.load(Ordering::SeqCst) == 0 && gets < MAX_ROUNDS) {
        gets += 1;
        let got = answers(&exchange(test_proxy.addr, get).await, &[]);
        assert_eq!(statuses(&got), vec![200], "{got:?}");
    }
    assert!(
        hung_up_on.load(Ordering::SeqCst) >= 1,
        "no GET reached the instance that hangs up"
    );
    assert_eq!(
        answered.load(Ordering::SeqCst),
        gets,
        "every GET answered once"
    );
    test_proxy.stop().await;
}

/// A malformed answer from an h2c instance (an uppercase field name, RFC 9113 section 8.2.1) is a 502
/// after one send, as an HTTP/1 instance's invalid head is: before session 31 the GET was sent 3 times
/// (`forward` replayed its copy). A well-formed answer from the same kind of instance goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_instances_malformed_answer_is_a_502_after_one_send() {
    let h2c = || RouteSettings {
        protocol: proxy::UpstreamProtocol::H2c,
        ..RouteSettings::default()
    };
    let get = b"GET /x HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n";
    // `:status: 200` (static index 8), then one more field.
    let answer = |name: &[u8]| {
        let mut answer = vec![0x88];
        answer.extend(block(&[(name, b"1")]));
        answer
    };
    for (name, status) in [(&b"X-Bad"[..], 502), (&b"x-good"[..], 200)] {
        let (addr, requests) = h2c_instance(answer(name)).await;
        let test_proxy = TestProxy::start_with(ProxyConfig::default(), h2c()).await;
        test_proxy.add_ready("h2c", "R", addr);
        let got = answers(&exchange(test_proxy.addr, get).await, &[]);
        assert_eq!(statuses(&got), vec![status], "{got:?}");
        assert_eq!(requests.load(Ordering::SeqCst), 1, "{name:?}");
        test_proxy.stop().await;
    }
}

/// A header block of `:method`, then `:scheme` and `:authority` (the test host) when given, `:path`
/// when given, then `fields`.
fn request_block(
    method: &[u8],
    scheme: Option<&[u8]>,
    authority: bool,
    path: Option<&[u8]>,
    fields: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut all: Vec<(&[u8], &[u8])> = vec![(b":method", method)];
    if let Some(scheme) = scheme {
        all.push((b":scheme", scheme));
    }
    if authority {
        all.push((b":authority", HOST.as_bytes()));
    }
    if let Some(path) = path {
        all.push((b":path", path));
    }
    all.extend_from_slice(fields);
    block(&all)
}

/// RFC 9113 section 8.2.1: a field value with a space or tab at either end is malformed; h2 lets it
/// through, and before session 31's third round it reached an HTTP/1 app as is (`x-a:  1`). A 400 now,
/// and nothing reaches the instance; whitespace inside a value is fine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_field_value_with_whitespace_at_an_end_is_a_400_and_reaches_no_instance() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let cases: [(&str, &[u8]); 5] = [
        ("/w1", b" 1"),
        ("/w2", b"1 "),
        ("/w3", b"\t1"),
        ("/w4", b"1\t"),
        ("/w5", b" "),
    ];
    for (path, value) in cases {
        let fields: [(&[u8], &[u8]); 2] = [(b"accept", b"*/*"), (b"x-a", value)];
        let outcome = h2_one(test_proxy.addr, &get_block(path, &fields)).await;
        assert_eq!(
            outcome.streams.get(&1),
            Some(&StreamEnd::Status(400)),
            "{path}: {outcome:?}"
        );
    }
    // Inside a value, and an empty value: passed on as they came.
    let fields: [(&[u8], &[u8]); 3] = [(b"x-a", b"1 \t2"), (b"x-b", b""), (b"x-c", b"a, b")];
    let outcome = h2_one(test_proxy.addr, &get_block("/inner", &fields)).await;
    assert_eq!(outcome.streams.get(&1), Some(&StreamEnd::Status(200)));
    let lines = lines(&recorder.request_for("/inner"));
    assert_eq!(value(&lines, "x-a"), vec!["1 \t2"]);
    test_proxy.stop().await;
    assert_eq!(recorder.requests().len(), 1, "{:?}", recorder.requests());
}

/// RFC 9113 section 8.3.1 for `:scheme` and `:path`, and CONNECT: what an HTTP/1 instance could not take
/// as a request line, or what the proxy does not serve, is a 400 (or h2's own RST_STREAM
/// PROTOCOL_ERROR); `OPTIONS *` is the one target that is not a path, both ways (HTTP/1 too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_scheme_or_path_the_proxy_does_not_serve_reaches_no_instance() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let http: Option<&[u8]> = Some(b"http");
    let refused = [
        // Before session 31's third round each of the 400s reached the instance.
        (
            "gopher",
            request_block(b"GET", Some(b"gopher"), true, Some(b"/s1"), &[]),
            StreamEnd::Status(400),
        ),
        (
            "not a scheme",
            request_block(b"GET", Some(b"1x"), true, Some(b"/s2"), &[]),
            StreamEnd::Status(400),
        ),
        (
            "query without path",
            request_block(b"GET", http, true, Some(b"?q=s3"), &[]),
            StreamEnd::Status(400),
        ),
        (
            "GET *",
            request_block(b"GET", http, true, Some(b"*"), &[]),
            StreamEnd::Status(400),
        ),
        (
            "empty path",
            request_block(b"GET", http, true, Some(b""), &[]),
            StreamEnd::Reset(PROTOCOL_ERROR),
        ),
        // A proxy that is not a forward proxy has nothing to tunnel to.
        (
            "CONNECT",
            request_block(b"CONNECT", None, true, None, &[]),
            StreamEnd::Status(405),
        ),
        // Extended CONNECT (RFC 8441) is off: h2 resets it.
        (
            "CONNECT with :protocol",
            request_block(
                b"CONNECT",
                http,
                true,
                Some(b"/s4"),
                &[(b":protocol", b"websocket")],
            ),
            StreamEnd::Reset(PROTOCOL_ERROR),
        ),
    ];
    for (name, block, end) in &refused {
        let outcome = h2_one(test_proxy.addr, block).await;
        assert_eq!(outcome.streams.get(&1), Some(end), "{name}: {outcome:?}");
    }
    assert!(
        recorder.requests().is_empty() && recorder.leftovers().is_empty(),
        "{:?} {:?}",
        recorder.requests(),
        recorder.leftovers()
    );
    let served = [
        (
            "/ok1",
            request_block(b"GET", http, true, Some(b"/ok1"), &[]),
        ),
        (
            "/ok2",
            request_block(b"GET", Some(b"https"), true, Some(b"/ok2"), &[]),
        ),
        (
            "/ok3",
            request_block(b"GET", Some(b"HTTP"), true, Some(b"/ok3"), &[]),
        ),
        // h2 drops a fragment before the proxy sees it: routing and the app both read `/ok4`.
        (
            "/ok4",
            request_block(b"GET", http, true, Some(b"/ok4#fragment"), &[]),
        ),
        (
            "OPTIONS *",
            request_block(b"OPTIONS", http, true, Some(b"*"), &[]),
        ),
    ];
    for (path, block) in &served {
        let outcome = h2_one(test_proxy.addr, block).await;
        assert_eq!(
            outcome.streams.get(&1),
            Some(&StreamEnd::Status(200)),
            "{path}: {outcome:?}"
        );
        let seen = recorder.request_for(path);
        assert!(!seen.contains('#'), "{seen:?}");
        // `:scheme` is not what the app is told: over h2c from an untrusted peer it is `http`.
        assert_eq!(value(&lines(&seen), "x-forwarded-proto"), vec!["http"]);
    }
    assert!(
        recorder
            .request_for("OPTIONS *")
            .starts_with("OPTIONS * HTTP/1.1\r\n")
    );
    // HTTP/1 the same: `*` only for OPTIONS (`GET *` is refused in the framing test).
    let raw = exchange(
        test_proxy.addr,
        b"OPTIONS * HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    // A fragment in an HTTP/1 target is dropped as over HTTP/2: routing and the app read `/ok5`.
    let raw = exchange(
        test_proxy.addr,
        b"GET /ok5#fragment HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answers(&raw, &[])), vec![200]);
    assert!(
        recorder
            .request_for("/ok5")
            .starts_with("GET /ok5 HTTP/1.1\r\n")
    );
    test_proxy.stop().await;
    assert_eq!(recorder.requests().len(), 7, "{:?}", recorder.requests());
}

/// HTTP/2 request trailers with a value that has whitespace at an end (RFC 9113 section 8.2.1): the head
/// and body went on already, so the field is left out of the trailers the instance gets, as a forbidden
/// name is; the others pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_request_trailers_with_whitespace_at_an_end_are_left_out() {
    let recorder = Recorder::start(ok).await;
    let test_proxy = proxy_to(&recorder, ProxyConfig::default()).await;
    let head = request_block(b"POST", Some(b"http"), true, Some(b"/rt"), &[]);
    let mut frames = frame(HEADERS, END_HEADERS, 1, &head);
    frames.extend(frame(DATA, 0, 1, b"hello"));
    let trailers = block(&[(b"x-t", b" 1"), (b"x-u", b"2"), (b"x-v", b"3\t")]);
    frames.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailers));
    let outcome = h2_raw(test_proxy.addr, &frames, &[1]).await;
    assert_eq!(outcome.streams.get(&1), Some(&StreamEnd::Status(200)));
    let seen = recorder.request_for("/rt");
    let trailer_section = seen
        .split_once("\r\n0\r\n")
        .map(|(_, trailers)| trailers.to_owned())
        .expect("chunked");
    assert_eq!(trailer_section, "x-u: 2\r\n\r\n", "{seen:?}");
    test_proxy.stop().await;
}
