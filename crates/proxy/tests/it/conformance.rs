//! Conformance with RFC 9110/9112/9113 and common proxy practice, one case per item of issue 13 ("The
//! proxy is invisible to apps and clients"): raw bytes in over a `TcpStream`, and the bytes the instance
//! saw and the bytes the client got out.
//!
//! See: issue 13. The instance here is `RawInstance`, a byte recorder with a canned answer, so what the
//! proxy sends is checked byte for byte rather than through another HTTP library's reading of it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Empty, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{ProxyConfig, ReleaseId, RouteSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, h2_client};

/// An instance that records every request's raw bytes and answers each with `answer` (then closes, unless
/// the answer is a `101`, in which case it reads until the proxy closes and records that it did).
struct RawInstance {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
    saw_end: Arc<AtomicBool>,
}

impl RawInstance {
    async fn start(answer: &'static [u8]) -> RawInstance {
        RawInstance::start_with(answer, false).await
    }

    /// `silent`: read the request and never answer.
    async fn start_with(answer: &'static [u8], silent: bool) -> RawInstance {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicUsize::new(0));
        let saw_end = Arc::new(AtomicBool::new(false));
        let instance = RawInstance {
            addr,
            requests: Arc::clone(&requests),
            connections: Arc::clone(&connections),
            saw_end: Arc::clone(&saw_end),
        };
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                connections.fetch_add(1, Ordering::SeqCst);
                let requests = Arc::clone(&requests);
                let saw_end = Arc::clone(&saw_end);
                tokio::spawn(async move {
                    let Some(request) = read_request(&mut stream).await else {
                        return;
                    };
                    requests
                        .lock()
                        .expect("lock")
                        .push(String::from_utf8_lossy(&request).into_owned());
                    if silent {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                    if answer.starts_with(b"HTTP/1.1 101") {
                        let mut buffer = [0u8; 1024];
                        while let Ok(n) = stream.read(&mut buffer).await {
                            if n == 0 {
                                saw_end.store(true, Ordering::SeqCst);
                                break;
                            }
                        }
                    }
                });
            }
        });
        instance
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().expect("lock").clone()
    }

    /// The header lines of the only request received, lowercased names, in order.
    fn only_request_lines(&self) -> Vec<String> {
        let requests = self.requests();
        assert_eq!(requests.len(), 1, "{requests:?}");
        let head = requests[0]
            .split("\r\n\r\n")
            .next()
            .unwrap_or("")
            .to_owned();
        head.split("\r\n")
            .skip(1)
            .map(|line| match line.split_once(':') {
                Some((name, value)) => format!("{}: {}", name.to_ascii_lowercase(), value.trim()),
                None => line.to_owned(),
            })
            .collect()
    }
}

/// Reads one request: the head, then a `Content-Length` body or a chunked body up to its last chunk.
async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut request = Vec::new();
    let mut buffer = [0u8; 4096];
    let head_end = loop {
        if let Some(end) = find(&request, b"\r\n\r\n") {
            break end + 4;
        }
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return None;
        }
        request.extend_from_slice(&buffer[..n]);
    };
    let head = String::from_utf8_lossy(&request[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|value| value.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let body = &request[head_end..];
        let complete = match length {
            Some(length) => body.len() >= length,
            None if chunked => find(body, b"0\r\n\r\n").is_some(),
            None => true,
        };
        if complete {
            return Some(request);
        }
        let n = stream.read(&mut buffer).await.ok()?;
        if n == 0 {
            return Some(request);
        }
        request.extend_from_slice(&buffer[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Sends raw bytes to the proxy and reads until it closes (bounded, so a bug fails instead of hanging).
async fn exchange(proxy: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream.write_all(request).await.expect("write");
    read_to_end(&mut stream).await
}

async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy kept the connection open")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn proxy_to(
    instance: &RawInstance,
    config: ProxyConfig,
    settings: RouteSettings,
) -> TestProxy {
    let test_proxy = TestProxy::start_with(config, settings).await;
    test_proxy.add_ready("raw", "R", instance.addr);
    test_proxy
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";

fn header_count(answer: &str, name: &str) -> usize {
    let prefix = format!("{name}:");
    answer
        .split("\r\n")
        .filter(|line| line.to_ascii_lowercase().starts_with(&prefix))
        .count()
}

// 1. RFC 9113 section 8.2.3: cookies split over HTTP/2 fields reach an HTTP/1.1 app joined with "; ".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_http2_cookie_fields_are_joined_with_semicolons() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let mut sender = h2_client(test_proxy.addr).await;
    let request = Request::get(format!("http://{HOST}/"))
        .header("cookie", "a=1")
        .header("cookie", "b=2")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.status(), 200);
    let lines = instance.only_request_lines();
    let cookies: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("cookie:"))
        .collect();
    assert_eq!(cookies, ["cookie: a=1; b=2"], "{lines:?}");
}

// 2. An upgraded client that goes away is passed on to the instance at once, and the in-flight count
// (what a drain waits for) falls back to zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_an_upgraded_client_going_away_reaches_the_instance() {
    let instance = RawInstance::start(
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
    )
    .await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: demo.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .await
        .expect("write");
    let mut head = vec![0u8; 1024];
    let n = stream.read(&mut head).await.expect("read 101");
    assert!(head[..n].starts_with(b"HTTP/1.1 101 "), "{:?}", &head[..n]);
    let stats = || {
        test_proxy
            .proxy
            .stats(&ReleaseId::new("R"))
            .expect("stats")
            .in_flight
    };
    assert_eq!(stats(), 1);
    drop(stream);
    assert_eventually!(
        instance.saw_end.load(Ordering::SeqCst),
        "the instance never learnt that the client went away"
    );
    assert_eventually!(stats() == 0, "the tunnel still counts as in flight");
}

/// A `200` whose head has 150 `x-field-N` fields besides its framing ones.
fn answer_with_150_fields() -> &'static [u8] {
    let mut answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n".to_vec();
    for field_idx in 0..150 {
        answer.extend_from_slice(format!("x-field-{field_idx}: {field_idx}\r\n").as_bytes());
    }
    answer.extend_from_slice(b"\r\nok");
    answer.leak()
}

// 3. An answer with more than 100 header fields is passed on, not turned into a 502 against the release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_answers_with_many_header_fields_pass() {
    let instance = RawInstance::start(answer_with_150_fields()).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let n_fields = answer
        .split("\r\n")
        .filter(|line| line.starts_with("x-field-"))
        .count();
    assert_eq!(n_fields, 150);
    let stats = test_proxy.proxy.stats(&ReleaseId::new("R")).expect("stats");
    assert_eq!(
        (stats.requests.success, stats.requests.server_error),
        (1, 0)
    );
}

// A request's header-field limit is hyper's default, 100 (about HAProxy's 101): a head with 100 fields is
// forwarded, one with 101 gets 431 and never reaches the instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_with_more_than_100_header_fields_get_431() {
    let head_with_fields = |fields: usize| {
        let mut head = "GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n".to_owned();
        for field in 2..fields {
            head.push_str(&format!("x-field-{field}: {field}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(test_proxy.addr, head_with_fields(100).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let answer = exchange(test_proxy.addr, head_with_fields(101).as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(instance.requests().len(), 1);
}

// An answer's header fields beyond 100 are parsed again into the heap, up to the route's limit: every
// request is sent once, a POST as a GET (sessions up to 27 sent a GET twice the first time an instance
// answered with more than 100 fields).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_with_many_header_fields_pass_and_every_request_is_sent_once() {
    let answer = answer_with_150_fields();
    let fields_in = |answer: &str| {
        answer
            .split("\r\n")
            .filter(|line| line.starts_with("x-field-"))
            .count()
    };

    let posted_to = RawInstance::start(answer).await;
    let test_proxy = proxy_to(&posted_to, ProxyConfig::default(), RouteSettings::default()).await;
    let post = b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
    let answer_text = exchange(test_proxy.addr, post).await;
    assert!(answer_text.starts_with("HTTP/1.1 200 "), "{answer_text}");
    assert_eq!(fields_in(&answer_text), 150);
    assert_eq!(posted_to.requests().len(), 1);

    let got_from = RawInstance::start(answer).await;
    let test_proxy = proxy_to(&got_from, ProxyConfig::default(), RouteSettings::default()).await;
    let get = b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n";
    for (round, requests_seen) in [(1, 1), (2, 2)] {
        let answer_text = exchange(test_proxy.addr, get).await;
        assert!(answer_text.starts_with("HTTP/1.1 200 "), "{answer_text}");
        assert_eq!(fields_in(&answer_text), 150);
        assert_eq!(got_from.requests().len(), requests_seen, "round {round}");
    }
    let stats = test_proxy.proxy.stats(&ReleaseId::new("R")).expect("stats");
    assert_eq!(
        (stats.requests.success, stats.requests.server_error),
        (2, 0)
    );
}

/// The route's timeout to the answer head on a reused upstream connection, whose timer is kept from one
/// request to the next (`upstream::AnswerTimer`): a timer that fired while its connection sat idle does
/// not cut the next request early, a slow answer within the timeout is not cut, and a silent one is cut
/// at the timeout from its own start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_20_a_reused_upstream_connection_times_each_answer_from_its_own_request() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = Arc::clone(&connections);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                // On each connection: the first answer at once, the second after 200 ms, then silence.
                for delay in [Some(0), Some(200), None] {
                    if read_request(&mut stream).await.is_none() {
                        return;
                    }
                    let Some(delay) = delay else {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                        return;
                    };
                    tokio::time::sleep(Duration::from_millis(delay)).await;
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let settings = RouteSettings {
        timeout: Duration::from_millis(400),
        ..RouteSettings::default()
    };
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), settings).await;
    test_proxy.add_ready("raw", "R", addr);
    let get = b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n";

    let first = exchange(test_proxy.addr, get).await;
    assert!(first.starts_with("HTTP/1.1 200 "), "{first}");
    // Past the first request's deadline: its timer fires while the connection is idle in the pool.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let second = exchange(test_proxy.addr, get).await;
    assert!(second.starts_with("HTTP/1.1 200 "), "{second}");
    let started = std::time::Instant::now();
    let third = exchange(test_proxy.addr, get).await;
    let waited = started.elapsed();
    assert!(third.starts_with("HTTP/1.1 504 "), "{third}");
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // All three went on one upstream connection (and so on its one timer).
    assert_eq!(connections.load(Ordering::SeqCst), 1);
}

// 4. Time to the answer's head, silence inside an answer, body size and answer header fields are the
// route's own settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_limits_and_timeouts_are_per_route() {
    let silent = RawInstance::start_with(OK, true).await;
    let settings = RouteSettings {
        timeout: Duration::from_millis(300),
        max_body_bytes: 10,
        max_header_fields: 10,
        ..RouteSettings::default()
    };
    let test_proxy = proxy_to(&silent, ProxyConfig::default(), settings).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    let answer = exchange(
        test_proxy.addr,
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 11\r\nConnection: close\r\n\r\nhello world",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    test_proxy.stop().await;

    let mut many = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n".to_vec();
    for field_idx in 0..20 {
        many.extend_from_slice(format!("x-field-{field_idx}: {field_idx}\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\nok");
    let instance = RawInstance::start(many.leak()).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), settings).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
    test_proxy.stop().await;

    // A chunked answer that stops in the middle is cut after the route's idle timeout.
    let stalled = RawInstance::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n",
    )
    .await;
    let settings = RouteSettings {
        idle_timeout: Duration::from_millis(300),
        ..RouteSettings::default()
    };
    let test_proxy = proxy_to(&stalled, ProxyConfig::default(), settings).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains("hello"), "{answer}");
    assert!(!answer.ends_with("0\r\n\r\n"), "{answer}");
}

// 5. RFC 9112 section 3.2.2: the host that routes the request (an absolute-form target here) is the
// `Host` the app gets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_5a_the_routed_host_is_the_host_the_app_gets() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET http://demo.test/x HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lines = instance.only_request_lines();
    let hosts: Vec<&String> = lines
        .iter()
        .filter(|line| line.starts_with("host:"))
        .collect();
    assert_eq!(hosts, ["host: demo.test"], "{lines:?}");
    assert!(instance.requests()[0].starts_with("GET /x HTTP/1.1\r\n"));
}

// 5. RFC 9112 section 3.2: two `Host` fields are a 400, and the app never sees the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_5b_two_host_fields_are_a_400() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert_eq!(instance.requests().len(), 0);
}

// 6. Trailers reach an HTTP/1.1 client that sent `TE: trailers`; interim answers (103 Early Hints) reach
// the client (next case).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_trailers_reach_a_client_that_asked_for_them() {
    let instance = RawInstance::start(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-checksum\r\nconnection: close\r\n\r\n2\r\nok\r\n0\r\nx-checksum: abc\r\n\r\n",
    )
    .await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nTE: trailers\r\nConnection: close, TE\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{answer}");
    let lines = instance.only_request_lines();
    assert!(lines.contains(&"te: trailers".to_owned()), "{lines:?}");
}

// An interim answer reaches the client as soon as the instance sends it, before the final answer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_early_hints_reach_the_client_before_the_answer() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        if read_request(&mut stream).await.is_none() {
            return;
        }
        let hints = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n";
        if stream.write_all(hints).await.is_err() || wait.await.is_err() {
            return;
        }
        let _ = stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            .await;
    });
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), RouteSettings::default()).await;
    test_proxy.add_ready("hints", "H", addr);
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let expected = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n";
    let mut hints = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut hints))
        .await
        .expect("no interim answer before the final one")
        .expect("read");
    assert_eq!(
        String::from_utf8_lossy(&hints),
        String::from_utf8_lossy(expected)
    );
    go_on.send(()).expect("instance waiting");
    let rest = read_to_end(&mut stream).await;
    assert!(rest.starts_with("HTTP/1.1 200 OK\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\nok"), "{rest}");
}

// Interim answers keep their place on a keep-alive connection: each lands before its own final answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_early_hints_on_a_keep_alive_connection_stay_in_order() {
    let instance = RawInstance::start(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut transcript = String::new();
    for last in [false, false, true] {
        let close = if last { "Connection: close\r\n" } else { "" };
        let request = format!("GET / HTTP/1.1\r\nHost: demo.test\r\n{close}\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        if last {
            transcript.push_str(&read_to_end(&mut stream).await);
            break;
        }
        // Read up to the end of this answer (its body is `ok`).
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\nok") {
            let mut buffer = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
                .await
                .expect("an answer")
                .expect("read");
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buffer[..n]);
        }
        transcript.push_str(&String::from_utf8_lossy(&answer));
    }
    let answers: Vec<&str> = transcript
        .split("HTTP/1.1 ")
        .filter(|part| !part.is_empty())
        .collect();
    assert_eq!(answers.len(), 6, "{transcript}");
    for pair in answers.chunks(2) {
        assert!(
            pair[0].starts_with("103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n"),
            "{transcript}"
        );
        assert!(
            pair[1].starts_with("200 OK\r\n") && pair[1].ends_with("\r\n\r\nok"),
            "{transcript}"
        );
    }
}

/// Reads one answer whose body is `ok` from a keep-alive connection.
async fn read_ok_answer(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    while !answer.ends_with(b"\r\n\r\nok") {
        let mut buffer = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

// An HTTP/1 keep-alive connection idle for a second releases its buffers and gets new ones
// when the client sends again: pipelined requests are all answered, in order, and the header-read
// timeout still answers a stalled head with 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_serves_after_its_idle_buffers_were_released() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET /1 HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .expect("write");
    assert!(
        read_ok_answer(&mut stream)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream
        .write_all(
            b"GET /2 HTTP/1.1\r\nHost: demo.test\r\n\r\nGET /3 HTTP/1.1\r\nHost: demo.test\r\n\r\n",
        )
        .await
        .expect("write");
    let second = read_ok_answer(&mut stream).await;
    let third = if second.matches("HTTP/1.1 200 ").count() == 2 {
        String::new()
    } else {
        read_ok_answer(&mut stream).await
    };
    assert_eq!(
        format!("{second}{third}").matches("HTTP/1.1 200 ").count(),
        2,
        "{second}{third}"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(b"GET /4 HT").await.expect("write");
    let answer = read_to_end(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    let paths: Vec<String> = instance
        .requests()
        .iter()
        .map(|request| request.lines().next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        paths,
        ["GET /1 HTTP/1.1", "GET /2 HTTP/1.1", "GET /3 HTTP/1.1"]
    );
}

// A connection that released its buffers while idle is still closed by the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_idle_connection_is_closed_at_the_idle_timeout() {
    let instance = RawInstance::start(OK).await;
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(2000),
        ..ProxyConfig::default()
    };
    let test_proxy = proxy_to(&instance, config, RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .expect("write");
    assert!(
        read_ok_answer(&mut stream)
            .await
            .starts_with("HTTP/1.1 200 ")
    );
    let started = tokio::time::Instant::now();
    let rest = read_to_end(&mut stream).await;
    assert_eq!(rest, "");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "closed after {:?}",
        started.elapsed()
    );
}

// The connection's timers move their deadline lazily (a later deadline does not reset the timer, an
// earlier one does): a request head that stalls right after an answer, while the timer is still set for
// the idle buffers' release, gets its 408 at the header-read timeout, not at the release or idle time.
// See: issue 20 (session 28, one timer reset per `release_after` instead of two per request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_stalling_right_after_a_keep_alive_answer_gets_408_at_the_header_read_timeout() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    for path in ["/1", "/2"] {
        stream
            .write_all(format!("GET {path} HTTP/1.1\r\nHost: demo.test\r\n\r\n").as_bytes())
            .await
            .expect("write");
        assert!(
            read_ok_answer(&mut stream)
                .await
                .starts_with("HTTP/1.1 200 ")
        );
    }
    stream.write_all(b"GET /3 HT").await.expect("write");
    let started = tokio::time::Instant::now();
    let answer = read_to_end(&mut stream).await;
    let elapsed = started.elapsed();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    // 300 ms header-read timeout (the idle timeout is 75 s; the bound leaves room for a loaded machine).
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(2),
        "answered 408 after {elapsed:?}"
    );
}

// Many keep-alive requests in a row each move the idle deadline later; the connection is still closed
// at the idle timeout counted from its last answer, neither earlier (a deadline of an earlier request)
// nor much later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_counts_from_the_last_of_many_keep_alive_requests() {
    let instance = RawInstance::start(OK).await;
    let config = ProxyConfig {
        idle_timeout: Duration::from_millis(1200),
        ..ProxyConfig::default()
    };
    let test_proxy = proxy_to(&instance, config, RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    for index in 0..12 {
        stream
            .write_all(format!("GET /{index} HTTP/1.1\r\nHost: demo.test\r\n\r\n").as_bytes())
            .await
            .expect("write");
        assert!(
            read_ok_answer(&mut stream)
                .await
                .starts_with("HTTP/1.1 200 ")
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // 12 x 150 ms: the connection outlived several idle timeouts counted from its early requests.
    let started = tokio::time::Instant::now();
    let rest = read_to_end(&mut stream).await;
    let elapsed = started.elapsed();
    assert_eq!(rest, "");
    // 1.2 s after the last answer, of which 150 ms have passed.
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(2500),
        "closed after {elapsed:?}"
    );
}

// 7. A trailing dot names the same host (a fully qualified name).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_7a_a_host_with_a_trailing_dot_is_routed() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test.\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(instance.requests().len(), 1);
}

// 7. Every `X-Forwarded-For` line of a trusted proxy is kept, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_7b_every_forwarded_for_line_of_a_trusted_proxy_is_kept() {
    let instance = RawInstance::start(OK).await;
    let config = ProxyConfig {
        trusted_proxies: vec!["127.0.0.0/8".parse().expect("network")],
        ..ProxyConfig::default()
    };
    let test_proxy = proxy_to(&instance, config, RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nX-Forwarded-For: 192.0.2.1\r\nX-Forwarded-For: 198.51.100.2\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lines = instance.only_request_lines();
    assert!(
        lines.contains(&"x-forwarded-for: 192.0.2.1, 198.51.100.2, 127.0.0.1".to_owned()),
        "{lines:?}"
    );
}

// 7. `Expect: 100-continue` with a body over the limit (the default 100 MiB) gets 413 at once, with no
// `100 Continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_7c_expect_continue_over_the_limit_gets_413_without_100() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 200000000\r\nExpect: 100-continue\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert_eq!(instance.requests().len(), 0);
}

// 7. Within the limit, the proxy answers `Expect: 100-continue` itself: the client gets one `100 Continue`,
// the instance gets the whole body and no expectation to answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_7d_expect_continue_within_the_limit_is_answered_by_the_proxy() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 5\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .expect("write head");
    let mut interim = vec![0u8; b"HTTP/1.1 100 Continue\r\n\r\n".len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut interim))
        .await
        .expect("no 100 Continue")
        .expect("read");
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    stream.write_all(b"hello").await.expect("write body");
    let answer = read_to_end(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lines = instance.only_request_lines();
    assert!(
        !lines.iter().any(|line| line.starts_with("expect:")),
        "{lines:?}"
    );
    assert!(instance.requests()[0].ends_with("\r\n\r\nhello"));
}

// 8. Forwarding headers from a peer that is not a trusted proxy are dropped and replaced by the proxy's
// own, so an app cannot be fooled and gunicorn sees no contradictory scheme headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_forwarding_headers_from_clients_are_not_believed() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nForwarded: for=6.6.6.6;proto=https\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\nX-Forwarded-Ssl: on\r\nX-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let lines = instance.only_request_lines();
    let forwarding: Vec<&String> = lines
        .iter()
        .filter(|line| {
            line.starts_with("x-forwarded-")
                || line.starts_with("forwarded:")
                || line.starts_with("x-real-ip:")
        })
        .collect();
    assert_eq!(
        forwarding,
        [
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
            "x-forwarded-host: demo.test",
        ],
        "{lines:?}"
    );
}

fn short_timeouts() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    }
}

// 9. A bad chunk size is a 400: a status on the wire is always a standard one (no 499).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9a_a_bad_chunk_size_is_a_400() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

// 9. CONNECT is refused (405) and never reaches the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9b_connect_is_refused() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"CONNECT demo.test:443 HTTP/1.1\r\nHost: demo.test:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 405 "), "{answer}");
    assert!(answer.contains("allow: "), "{answer}");
    assert_eq!(instance.requests().len(), 0);
}

// 9. A connection that sends only the HTTP/2 preface is closed at the header-read timeout, as an HTTP/1.1
// one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9c_an_http2_preface_alone_is_held_to_the_header_read_timeout() {
    let test_proxy = TestProxy::start(short_timeouts()).await;
    // Preface and an empty SETTINGS frame, then nothing: `exchange` reads until the proxy closes.
    let answer = exchange(
        test_proxy.addr,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00",
    )
    .await;
    assert!(!answer.is_empty(), "the proxy's own SETTINGS come first");
}

// 9. A slow small body is read before an instance is picked: no instance connection is held, and the
// client gets its own 408 rather than a 504 blamed on the app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9d_a_slow_small_body_holds_no_instance() {
    let instance = RawInstance::start(OK).await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"POST / HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 10\r\n\r\nhello",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert_eq!(instance.connections.load(Ordering::SeqCst), 0);
    let stats = test_proxy.proxy.stats(&ReleaseId::new("R")).expect("stats");
    assert_eq!(stats.total_requests(), 0);
}

// 9. The route's timeout is the instance's time to answer, not the client's time to upload: a large body
// that keeps moving reaches the instance however long it takes in total, and its answer comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9f_a_long_upload_that_keeps_moving_is_not_a_504() {
    let instance = RawInstance::start(OK).await;
    let settings = RouteSettings {
        timeout: Duration::from_secs(2),
        ..RouteSettings::default()
    };
    let test_proxy = proxy_to(&instance, ProxyConfig::default(), settings).await;
    // 10 chunks of 16 KiB (more than the 64 KiB read before sending), 300 ms apart: 3 s in all, each
    // pause well inside the 2 s timeout.
    const CHUNK: usize = 16 * 1024;
    const N_CHUNKS: usize = 10;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: demo.test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        N_CHUNKS * CHUNK
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    let mut n_sent = 0;
    for _ in 0..N_CHUNKS {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A write fails only if the proxy gave up; its answer (read below) says why.
        if stream.write_all(&[b'x'; CHUNK]).await.is_err() {
            break;
        }
        n_sent += 1;
    }
    let answer = read_to_end(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 200 "),
        "after {n_sent} chunks: {answer}"
    );
    assert!(instance.requests()[0].ends_with(&"x".repeat(CHUNK)));
}

// 9. An app's own `X-Request-Id` on its answer is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_9e_the_apps_request_id_is_kept() {
    let instance = RawInstance::start(
        b"HTTP/1.1 200 OK\r\nx-request-id: app-1\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    )
    .await;
    let test_proxy = proxy_to(&instance, short_timeouts(), RouteSettings::default()).await;
    let answer = exchange(
        test_proxy.addr,
        b"GET / HTTP/1.1\r\nHost: demo.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(header_count(&answer, "x-request-id"), 1, "{answer}");
    assert!(answer.contains("x-request-id: app-1\r\n"), "{answer}");
}

// 10. A route whose instances speak h2c gets HTTP/2 upstream, whatever the client spoke: the instance sees
// `:authority` and no `Host`, and its trailers reach an HTTP/1.1 client that asked for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_13_h2c_instances_get_http2() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|request: Request<Incoming>| async move {
                    let seen = format!(
                        "{:?} {} host={:?}",
                        request.version(),
                        request.uri(),
                        request.headers().get("host")
                    );
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("x-checksum", hyper::header::HeaderValue::from_static("abc"));
                    let body = StreamBody::new(futures_util::stream::iter([
                        Ok::<_, Infallible>(Frame::data(Bytes::from(seen))),
                        Ok(Frame::trailers(trailers)),
                    ]));
                    let mut response = Response::new(body);
                    response.headers_mut().insert(
                        "trailer",
                        hyper::header::HeaderValue::from_static("x-checksum"),
                    );
                    Ok::<_, Infallible>(response)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let settings = RouteSettings {
        protocol: proxy::UpstreamProtocol::H2c,
        ..RouteSettings::default()
    };
    let test_proxy = TestProxy::start_with(ProxyConfig::default(), settings).await;
    test_proxy.add_ready("h2", "H", addr);
    let answer = exchange(
        test_proxy.addr,
        b"GET /x?y=1 HTTP/1.1\r\nHost: demo.test\r\nTE: trailers\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(
        answer.contains("HTTP/2.0 http://demo.test/x?y=1 host=None"),
        "{answer}"
    );
    assert!(answer.ends_with("0\r\nx-checksum: abc\r\n\r\n"), "{answer}");
}

/// An instance that read a request and hung up without answering: an idempotent request goes once more,
/// whole and byte for byte the same (its request id too), to the other instance; a POST, which the first
/// one may have acted on, is not sent again (502).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_an_instance_hung_up_on_goes_whole_to_another_and_a_post_does_not() {
    const ROUNDS: usize = 6;
    const MAX_ROUNDS: usize = 64;
    let hangs_up = RawInstance::start(b"").await;
    let answers = RawInstance::start(OK).await;
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("hangs-up", "R", hangs_up.addr);
    test_proxy.add_ready("answers", "R", answers.addr);

    // The instance is picked at random for each request: at least ROUNDS requests, and more (bounded)
    // until one reached the instance that hangs up, so that the test does not depend on the draw.
    let mut posts_answered = 0;
    let mut posts = 0;
    while posts < ROUNDS || (hangs_up.requests().is_empty() && posts < MAX_ROUNDS) {
        posts += 1;
        let answer = exchange(
            test_proxy.addr,
            b"POST /once HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nping",
        )
        .await;
        if answer.starts_with("HTTP/1.1 200 ") {
            posts_answered += 1;
        } else {
            assert!(answer.starts_with("HTTP/1.1 502 "), "{answer}");
        }
    }
    let posts_hung_up = hangs_up.requests().len();
    assert!(
        posts_hung_up >= 1,
        "no POST reached the instance that hangs up"
    );
    assert_eq!(
        posts_hung_up + posts_answered,
        posts,
        "a POST was sent twice"
    );
    assert_eq!(answers.requests().len(), posts_answered);

    let before = (hangs_up.requests().len(), answers.requests().len());
    let mut gets = 0;
    while gets < ROUNDS || (hangs_up.requests().len() == before.0 && gets < MAX_ROUNDS) {
        gets += 1;
        let answer = exchange(
            test_proxy.addr,
            b"GET /again HTTP/1.1\r\nHost: demo.test\r\nX-Canary: kept\r\nConnection: close\r\n\r\n",
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    }
    let gets_hung_up = &hangs_up.requests()[before.0..];
    let gets_answered = &answers.requests()[before.1..];
    assert_eq!(gets_answered.len(), gets, "{gets_answered:?}");
    assert!(
        !gets_hung_up.is_empty(),
        "no GET reached the instance that hangs up"
    );
    for hung_up in gets_hung_up {
        assert!(hung_up.contains("x-canary: kept"), "{hung_up}");
        assert!(
            gets_answered.contains(hung_up),
            "the retry differs from the first send:\n{hung_up}\nanswered: {gets_answered:?}"
        );
    }
    test_proxy.stop().await;
}
