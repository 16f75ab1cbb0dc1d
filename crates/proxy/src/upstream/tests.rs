//! The pool and the proxy's HTTP/1 client against instances scripted byte by byte on 127.0.0.1.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::body::ProxyBody;
use crate::error::UpstreamError;
use crate::ids::{InstanceId, ReleaseId};

/// One scripted answer: its bytes, and whether the instance closes the connection after writing them.
struct Answer {
    bytes: Vec<u8>,
    close: bool,
}

fn answer(bytes: impl AsRef<[u8]>) -> Answer {
    Answer {
        bytes: bytes.as_ref().to_vec(),
        close: false,
    }
}

fn closing(bytes: impl AsRef<[u8]>) -> Answer {
    Answer {
        bytes: bytes.as_ref().to_vec(),
        close: true,
    }
}

/// A scripted instance: reads each request (head and body) on any connection, writes the next answer of
/// the script; with none left it closes the connection. Counts connections, keeps the requests seen.
struct Script {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

async fn script(answers: Vec<Answer>) -> Script {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let answers = Arc::new(Mutex::new(VecDeque::from(answers)));
    let (counter, seen) = (Arc::clone(&accepted), Arc::clone(&requests));
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let (answers, seen) = (Arc::clone(&answers), Arc::clone(&seen));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(request) = read_request(&mut stream, &mut buf).await else {
                        return;
                    };
                    seen.lock().expect("lock").push(request);
                    let next = answers.lock().expect("lock").pop_front();
                    let Some(next) = next else {
                        return;
                    };
                    if stream.write_all(&next.bytes).await.is_err() || next.close {
                        return;
                    }
                }
            });
        }
    });
    Script {
        addr,
        accepted,
        requests,
    }
}

/// Reads one request (its head and its body, by content-length or chunked) from `stream`.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Vec<u8>> {
    loop {
        if let Some(end) = buf.windows(4).position(|window| window == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let total = if let Some(length) = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length: "))
            {
                end + 4 + length.trim().parse::<usize>().ok()?
            } else if head.contains("transfer-encoding: chunked") {
                match buf[end + 4..]
                    .windows(5)
                    .position(|window| window == b"0\r\n\r\n")
                {
                    Some(at) => end + 4 + at + 5,
                    None => usize::MAX,
                }
            } else {
                end + 4
            };
            if buf.len() >= total {
                return Some(buf.drain(..total).collect());
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

fn instance(addr: SocketAddr) -> Arc<InstanceLive> {
    Arc::new(InstanceLive::new(
        InstanceId::new("i"),
        ReleaseId::new("r"),
        addr,
    ))
}

fn get(path: &str) -> Request<RequestBody> {
    let mut request = Request::new(RequestBody::empty());
    *request.uri_mut() = path.parse().expect("uri");
    request
        .headers_mut()
        .insert(hyper::header::HOST, "app".parse().expect("host"));
    request
}

fn limits() -> IdleLimits {
    IdleLimits {
        max: 64,
        timeout: Duration::from_secs(60),
    }
}

/// Sends `request` and reads the whole answer as the client's connection would (a `ProxyBody` that
/// checks the connection in at its end): status, body, trailers.
async fn exchange_with(
    instance: &Arc<InstanceLive>,
    request: Request<RequestBody>,
    settings: &RouteSettings,
) -> Result<(StatusCode, Bytes, Option<hyper::HeaderMap>), String> {
    let config = ProxyConfig::default();
    let response = send(instance, request, &config, settings, false, None)
        .await
        .map_err(|failure| failure.error.to_string())?;
    let (head, body) = response.into_parts();
    let body = ProxyBody::upstream(
        body,
        Some((Arc::clone(instance), limits())),
        None,
        Duration::from_secs(5),
        tokio::time::Instant::now(),
    );
    let collected = body.collect().await.map_err(|error| error.to_string())?;
    let trailers = collected.trailers().cloned();
    Ok((head.status, collected.to_bytes(), trailers))
}

use hyper::StatusCode;

async fn exchange(
    instance: &Arc<InstanceLive>,
    request: Request<RequestBody>,
) -> Result<(StatusCode, Bytes, Option<hyper::HeaderMap>), String> {
    exchange_with(instance, request, &RouteSettings::default()).await
}

fn idle_count(instance: &InstanceLive) -> usize {
    instance
        .connections
        .shard()
        .lock()
        .expect("lock")
        .idle
        .len()
}

#[tokio::test]
async fn content_length_answers_reuse_one_connection_for_sequential_requests() {
    let answers = (0..5)
        .map(|n| answer(format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr{n}")))
        .collect();
    let script = script(answers).await;
    let instance = instance(script.addr);
    for n in 0..5 {
        let (status, body, _) = exchange(&instance, get("/a?b")).await.expect("answer");
        assert_eq!(status, 200);
        assert_eq!(body, format!("r{n}"));
    }
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
    let requests = script.requests.lock().expect("lock");
    assert_eq!(requests.len(), 5);
    // No body: no framing field.
    assert_eq!(requests[0], b"GET /a?b HTTP/1.1\r\nhost: app\r\n\r\n");
}

#[tokio::test]
async fn chunked_answers_with_extensions_and_trailers_are_read_and_reused() {
    let script = script(vec![
        answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
             5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 42\r\n\r\n",
        ),
        answer("HTTP/1.1 200 OK\r\ntransfer-encoding: Chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ])
    .await;
    let instance = instance(script.addr);
    let (status, body, trailers) = exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(status, 200);
    assert_eq!(body, "hello world");
    assert_eq!(trailers.expect("trailers")["x-checksum"], "42");
    assert_eq!(idle_count(&instance), 1);
    let (_, body, trailers) = exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(body, "abc");
    assert!(trailers.is_none());
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_close_delimited_answer_is_read_to_the_end_and_its_connection_not_reused() {
    let script = script(vec![
        closing("HTTP/1.1 200 OK\r\n\r\nuntil the end"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"),
    ])
    .await;
    let instance = instance(script.addr);
    let (_, body, _) = exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(body, "until the end");
    assert_eq!(idle_count(&instance), 0);
    exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body_and_keep_the_connection() {
    let script = script(vec![
        answer("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"),
        answer("HTTP/1.1 204 No Content\r\n\r\n"),
        answer("HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
    ])
    .await;
    let instance = instance(script.addr);
    let mut head = get("/");
    *head.method_mut() = hyper::Method::HEAD;
    let (status, body, _) = exchange(&instance, head).await.expect("HEAD");
    assert_eq!((status.as_u16(), body.len()), (200, 0));
    let (status, body, _) = exchange(&instance, get("/")).await.expect("204");
    assert_eq!((status.as_u16(), body.len()), (204, 0));
    let (status, body, _) = exchange(&instance, get("/")).await.expect("304");
    assert_eq!((status.as_u16(), body.len()), (304, 0));
    let (_, body, _) = exchange(&instance, get("/")).await.expect("200");
    assert_eq!(body, "ok");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped_before_the_final_one() {
    let script = script(vec![answer(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n\
         HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone",
    )])
    .await;
    let instance = instance(script.addr);
    let (status, body, _) = exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(status, 200);
    assert_eq!(body, "done");
}

#[tokio::test]
async fn duplicate_content_lengths_must_agree_and_be_numbers() {
    let script = script(vec![
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2, 2\r\n\r\nok"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok"),
    ])
    .await;
    let instance = instance(script.addr);
    let (_, body, _) = exchange(&instance, get("/")).await.expect("equal lengths");
    assert_eq!(body, "ok");
    for _ in 0..2 {
        let error = exchange(&instance, get("/"))
            .await
            .expect_err("a bad content-length is a 502");
        assert!(
            error.contains("connection failed before an answer"),
            "{error}"
        );
    }
}

fn many_fields(n: usize) -> String {
    let mut head = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for index in 1..n {
        head.push_str(&format!("x-field-{index}: {index}\r\n"));
    }
    head.push_str("\r\nok");
    head
}

#[tokio::test]
async fn answers_up_to_the_route_field_limit_are_served_and_more_fields_are_an_error() {
    let settings = RouteSettings {
        max_header_fields: 150,
        ..RouteSettings::default()
    };
    let script = script(vec![
        answer(many_fields(100)),
        answer(many_fields(150)),
        answer(many_fields(151)),
    ])
    .await;
    let instance = instance(script.addr);
    for fields in [100, 150] {
        let (status, _, _) = exchange_with(&instance, get("/"), &settings)
            .await
            .unwrap_or_else(|error| panic!("{fields} fields: {error}"));
        assert_eq!(status, 200);
    }
    let response = send(
        &instance,
        get("/"),
        &ProxyConfig::default(),
        &settings,
        false,
        None,
    )
    .await;
    let Err(failure) = response else {
        panic!("151 fields over a limit of 150 must fail");
    };
    assert!(matches!(
        failure.error,
        ProxyError::Upstream {
            source: UpstreamError::TooManyFields { limit: 150 },
            ..
        }
    ));
    assert_eq!(
        crate::error::error_response(&failure.error, hyper::Version::HTTP_11).status(),
        StatusCode::BAD_GATEWAY
    );
    // Under hyper's default of 100 as well.
    let small = RouteSettings {
        max_header_fields: 10,
        ..RouteSettings::default()
    };
    let script = script_many(11).await;
    let instance = super::tests::instance(script.addr);
    let error = exchange_with(&instance, get("/"), &small)
        .await
        .expect_err("11 fields over 10");
    assert!(error.contains("connection failed"), "{error}");
}

async fn script_many(fields: usize) -> Script {
    script(vec![answer(many_fields(fields))]).await
}

#[tokio::test]
async fn an_answer_head_larger_than_the_limit_is_an_error() {
    let big = "x".repeat(MAX_HEAD_BYTES);
    let script = script(vec![answer(format!(
        "HTTP/1.1 200 OK\r\nx-big: {big}\r\ncontent-length: 0\r\n\r\n"
    ))])
    .await;
    let instance = instance(script.addr);
    let response = send(
        &instance,
        get("/"),
        &ProxyConfig::default(),
        &RouteSettings::default(),
        false,
        None,
    )
    .await;
    assert!(matches!(
        response,
        Err(SendFailure {
            error: ProxyError::Upstream {
                source: UpstreamError::HeadTooLarge,
                ..
            },
            // Answered (badly): `forward` does not send it again (session 31).
            request: GivenBack::Answered,
        })
    ));
}

#[tokio::test]
async fn a_pooled_connection_the_instance_closed_gives_the_request_to_a_new_connection() {
    let script = script(vec![
        closing("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr1"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nr2"),
    ])
    .await;
    let instance = instance(script.addr);
    let (_, body, _) = exchange(&instance, get("/")).await.expect("first");
    assert_eq!(body, "r1");
    // The answer did not say close: the connection went to the pool, and the instance closed it.
    assert_eq!(idle_count(&instance), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, body, _) = exchange(&instance, get("/")).await.expect("second");
    assert_eq!(body, "r2");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
}

// Session 30: the proxy's own fields (`forward::prepare_request_headers`) are written after the
// request's, in the head's one write, the framing field last.
#[tokio::test]
async fn the_proxys_own_fields_are_written_after_the_requests_fields() {
    let script = script(vec![answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let instance = instance(script.addr);
    let ip = hyper::header::HeaderValue::from_static("192.0.2.7");
    let host = hyper::header::HeaderValue::from_static("app");
    let id = hyper::header::HeaderValue::from_static("id-1");
    let added = h1::AddedFields {
        forwarded_for: &ip,
        forwarded_proto: "https",
        forwarded_host: &host,
        request_id: &id,
    };
    let mut request = get("/p");
    *request.method_mut() = hyper::Method::POST;
    *request.body_mut() = RequestBody::full(Bytes::from_static(b"abc"));
    let config = ProxyConfig::default();
    let response = super::send_with(
        &instance,
        &mut request,
        &config,
        &RouteSettings::default(),
        false,
        None,
        Some(added),
    )
    .await
    .map_err(|failure| failure.error.to_string())
    .expect("answer");
    assert_eq!(response.status(), 200);
    let requests = script.requests.lock().expect("lock");
    assert_eq!(
        String::from_utf8_lossy(&requests[0]),
        "POST /p HTTP/1.1\r\nhost: app\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\
         x-forwarded-host: app\r\nx-request-id: id-1\r\ncontent-length: 3\r\n\r\nabc"
    );
}

#[tokio::test]
async fn a_refused_connection_leaves_the_request_in_the_slot_unsent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let instance = instance(addr);
    let mut request = get("/a?b");
    let config = ProxyConfig::default();
    let settings = RouteSettings::default();
    let sent = send_with(
        &instance,
        &mut request,
        &config,
        &settings,
        false,
        None,
        None,
    )
    .await;
    let Err(failure) = sent else {
        panic!("nothing listens on {addr}");
    };
    assert!(
        matches!(failure.error, ProxyError::Connect { .. }),
        "{}",
        failure.error
    );
    assert_eq!(failure.request, GivenBack::Unsent);
    assert_eq!(request.uri(), "/a?b");
    assert_eq!(request.headers()[hyper::header::HOST], "app");
}

#[tokio::test]
async fn a_request_the_instance_closed_on_unanswered_stays_whole_in_the_slot() {
    // A new connection (nothing to retry inside the send): the instance reads the request and closes.
    let script = script(vec![closing("")]).await;
    let instance = instance(script.addr);
    let mut request = get("/p");
    *request.method_mut() = hyper::Method::PUT;
    *request.body_mut() = RequestBody::full(Bytes::from_static(b"abc"));
    let config = ProxyConfig::default();
    let settings = RouteSettings::default();
    let sent = send_with(
        &instance,
        &mut request,
        &config,
        &settings,
        false,
        None,
        None,
    )
    .await;
    let Err(failure) = sent else {
        panic!("the instance closed without an answer");
    };
    assert_eq!(failure.request, GivenBack::Whole, "{}", failure.error);
    assert_eq!(request.method(), hyper::Method::PUT);
    assert_eq!(request.uri(), "/p");
    assert_eq!(request.headers()[hyper::header::HOST], "app");
    assert_eq!(
        request.body().held(),
        Some(&Bytes::from_static(b"abc")),
        "the held body stays for a replay"
    );
}

#[test]
fn issue_20_a_send_and_its_failure_do_not_hold_the_request() {
    let request_size = std::mem::size_of::<Request<RequestBody>>();
    let failure_size = std::mem::size_of::<SendFailure>();
    // Before session 31's `s31-state`, the request moved into the send and came back in its failure
    // (`GivenBack::Unsent(request)`): 352 bytes in both, and in the `Result` every answer is returned in.
    assert!(
        failure_size < request_size,
        "a failure {failure_size} bytes, a request {request_size}"
    );
    let instance = instance(SocketAddr::from(([127, 0, 0, 1], 9)));
    let mut request = get("/");
    let config = ProxyConfig::default();
    let settings = RouteSettings::default();
    let sending = send_with(
        &instance,
        &mut request,
        &config,
        &settings,
        false,
        None,
        None,
    );
    let sending_size = std::mem::size_of_val(&sending);
    drop(sending);
    let result_size = std::mem::size_of::<Result<Response<UpstreamBody>, SendFailure>>();
    let answer_size = std::mem::size_of::<Response<UpstreamBody>>();
    assert!(
        result_size <= answer_size + 8,
        "the send's result {result_size} bytes, an answer {answer_size}"
    );
    // The send's own state (the exchange's future, the timer, the pool's connection) was 1,384 bytes in
    // a stable debug build with the request in it, 1,040 without.
    assert!(
        sending_size + 256 < 1384,
        "the send's state {sending_size} bytes, a request {request_size}"
    );
}

#[tokio::test]
async fn a_pooled_connection_closed_at_write_gives_the_request_back_unsent() {
    // Taken from the pool without the probe (as when the close arrives between the probe and the
    // write): the instance's reset makes the write or the read fail before any byte was taken.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (peer, _) = accepted.expect("accept");
    // Linger 0: the close is a reset.
    rustix::net::sockopt::set_socket_linger(&peer, Some(Duration::ZERO)).expect("linger");
    drop(peer);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let connection = h1::Connection::new(stream.expect("connect"));
    let mut request = get("/");
    let result = h1::exchange(connection, &mut request, 100, None, None).await;
    let Err(failure) = result else {
        panic!("a reset connection cannot answer");
    };
    assert!(
        failure.unsent,
        "nothing reached the instance: {}",
        failure.error
    );
}

#[tokio::test]
async fn an_answer_cut_short_is_an_error_and_its_connection_is_not_reused() {
    let script = script(vec![
        closing("HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"),
    ])
    .await;
    let instance = instance(script.addr);
    let error = exchange(&instance, get("/")).await.expect_err("cut short");
    assert!(error.contains("reading the answer"), "{error}");
    assert_eq!(idle_count(&instance), 0);
    exchange(&instance, get("/"))
        .await
        .expect("next on a new connection");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn bytes_after_the_answer_keep_the_connection_out_of_the_pool() {
    let script = script(vec![
        answer("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokXYZ"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"),
    ])
    .await;
    let instance = instance(script.addr);
    let (_, body, _) = exchange(&instance, get("/")).await.expect("answer");
    assert_eq!(body, "ok");
    assert_eq!(idle_count(&instance), 0);
    exchange(&instance, get("/")).await.expect("next");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn connection_close_and_http_1_0_answers_are_not_reused() {
    let script = script(vec![
        answer("HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\na"),
        answer("HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nb"),
        answer("HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 1\r\n\r\nc"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nd"),
    ])
    .await;
    let instance = instance(script.addr);
    for (expected, idle) in [("a", 0), ("b", 0), ("c", 1)] {
        let (_, body, _) = exchange(&instance, get("/")).await.expect("answer");
        assert_eq!(body, expected);
        assert_eq!(idle_count(&instance), idle, "after {expected}");
    }
    exchange(&instance, get("/")).await.expect("d");
    assert_eq!(script.accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_body_held_whole_goes_with_its_length_in_the_same_write_as_the_head() {
    let script = script(vec![answer(
        "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n",
    )])
    .await;
    let instance = instance(script.addr);
    let mut request = Request::new(RequestBody::full(Bytes::from_static(b"hello")));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = "/upload".parse().expect("uri");
    request
        .headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, "5".parse().expect("length"));
    let (status, _, _) = exchange(&instance, request).await.expect("answer");
    assert_eq!(status, 201);
    let requests = script.requests.lock().expect("lock");
    assert_eq!(
        requests[0],
        b"POST /upload HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello"
    );
}

#[tokio::test]
async fn an_idle_connection_gives_its_read_buffer_back() {
    let script = script(vec![answer(
        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    )])
    .await;
    let instance = instance(script.addr);
    exchange(&instance, get("/")).await.expect("answer");
    let shard = instance.connections.shard().lock().expect("lock");
    let idle = shard.idle.front().expect("pooled");
    assert_eq!(idle.connection.read_capacity(), 0);
}

#[tokio::test]
async fn checkin_drops_connections_idle_past_the_timeout_and_keeps_the_newest_within_the_cap() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pool = ConnectionPool::default();
    let shards = pool.shards.len();
    // The three check-ins must come within the timeout of each other, whatever the machine's load: a
    // stall of 100 ms (the timeout before) between two of them dropped one more and failed the cap's count.
    let limits = IdleLimits {
        max: 2 * shards,
        timeout: Duration::from_secs(2),
    };
    let mut peers = Vec::new();
    for _ in 0..3 {
        let (connection, peer) = open(&listener).await;
        peers.push(peer);
        pool.checkin(connection, limits);
    }
    // The cap (two per shard) dropped the oldest.
    assert_eq!(pool.shard().lock().expect("lock").idle.len(), 2);
    tokio::time::sleep(limits.timeout + Duration::from_millis(50)).await;
    let (connection, peer) = open(&listener).await;
    peers.push(peer);
    pool.checkin(connection, limits);
    // Both older ones were idle past the timeout: only the newest is kept.
    assert_eq!(pool.shard().lock().expect("lock").idle.len(), 1);
    assert!(pool.checkout(limits.timeout).is_some());
    assert!(pool.checkout(limits.timeout).is_none());
}

/// An open connection to a listener that accepts and keeps it.
async fn open(listener: &TcpListener) -> (h1::Connection, TcpStream) {
    let addr = listener.local_addr().expect("addr");
    let (stream, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    (
        h1::Connection::new(stream.expect("connect")),
        accepted.expect("accept").0,
    )
}

#[tokio::test]
async fn checkout_skips_a_connection_the_instance_closed_or_wrote_to() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pool = ConnectionPool::default();
    let (closed, peer) = open(&listener).await;
    drop(peer);
    let (chatty, mut peer_chatty) = open(&listener).await;
    peer_chatty.write_all(b"HTTP/1.1 408").await.expect("write");
    let (good, _peer_good) = open(&listener).await;
    pool.checkin(closed, limits());
    pool.checkin(chatty, limits());
    pool.checkin(good, limits());
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(pool.checkout(limits().timeout).is_some());
    assert!(pool.checkout(limits().timeout).is_none());
}

#[tokio::test]
async fn checkout_takes_the_connection_idle_longest_so_a_steady_load_reuses_them_all() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let pool = ConnectionPool::default();
    let limits = IdleLimits {
        max: 16 * pool.shards.len(),
        timeout: Duration::from_secs(10),
    };
    let mut peers = Vec::new();
    let mut between = Vec::new();
    for _ in 0..3 {
        let (connection, peer) = open(&listener).await;
        peers.push(peer);
        pool.checkin(connection, limits);
        tokio::time::sleep(Duration::from_millis(5)).await;
        between.push(Instant::now());
    }
    let idle_since = |pool: &ConnectionPool| -> Vec<Instant> {
        let shard = pool.shard().lock().expect("lock");
        shard.idle.iter().map(|idle| idle.idle_since).collect()
    };
    // One request at a time: each takes the oldest and checks it back in as the newest, so all three
    // take turns and none stays idle longer than the others.
    for (round, checked_in_before) in between.iter().enumerate() {
        let connection = pool.checkout(limits.timeout).expect("an idle connection");
        let left = idle_since(&pool);
        assert_eq!(left.len(), 2);
        assert!(
            left[0] >= *checked_in_before,
            "round {round}: the oldest connection was taken"
        );
        pool.checkin(connection, limits);
    }
    assert!(idle_since(&pool).iter().all(|since| *since >= between[2]));
}

/// A client's request with a streamed body, as hyper's server hands it over: `RequestBody::new` needs
/// hyper's `Incoming`, so a one-request hyper server on 127.0.0.1 receives `raw` and gives the request.
async fn client_request(raw: &'static [u8]) -> Request<RequestBody> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (given, taken) = tokio::sync::oneshot::channel();
    let given = Arc::new(Mutex::new(Some(given)));
    tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let service = hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
            let given = Arc::clone(&given);
            async move {
                let (parts, body) = request.into_parts();
                let body = RequestBody::new(
                    crate::body::ClientBody::Hyper(body),
                    1 << 20,
                    Duration::from_secs(5),
                );
                if let Some(given) = given.lock().expect("lock").take() {
                    let _ = given.send(Request::from_parts(parts, body));
                }
                // Held open while the request's body is read elsewhere.
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Empty::<
                    Bytes,
                >::new()))
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
    let mut client = TcpStream::connect(addr).await.expect("connect");
    client.write_all(raw).await.expect("write");
    let request = taken.await.expect("request");
    // The client's socket stays open (the body is read through it).
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(client);
    });
    request
}

#[tokio::test]
async fn streamed_request_bodies_go_chunked_or_with_their_length() {
    let script = script(vec![
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\na"),
        answer("HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nb"),
    ])
    .await;
    let instance = instance(script.addr);
    let chunked = client_request(
        b"POST /up HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
    )
    .await;
    let (_, body, _) = exchange(&instance, chunked).await.expect("chunked");
    assert_eq!(body, "a");
    let length =
        client_request(b"PUT /up HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello").await;
    let (_, body, _) = exchange(&instance, length).await.expect("length");
    assert_eq!(body, "b");
    let requests = script.requests.lock().expect("lock");
    let first = String::from_utf8_lossy(&requests[0]).into_owned();
    assert!(
        first.starts_with("POST /up HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n"),
        "{first}"
    );
    // The chunks as the connection took them (hyper's server may join them), and the last one.
    let chunks = &first[first.find("\r\n\r\n").expect("head") + 4..];
    let mut data = String::new();
    let mut rest = chunks;
    loop {
        let (size, after) = rest.split_once("\r\n").expect("chunk size");
        let size = usize::from_str_radix(size, 16).expect("hex");
        if size == 0 {
            assert_eq!(after, "\r\n");
            break;
        }
        data.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    assert_eq!(data, "abcde");
    assert_eq!(
        requests[1],
        b"PUT /up HTTP/1.1\r\nhost: app\r\ncontent-length: 5\r\n\r\nhello"
    );
    assert_eq!(script.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cut_instance_ends_an_answer_that_is_still_streaming() {
    // An endless chunked answer: one chunk now, another after the cut.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (cut_done, wait_cut) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf).await.expect("request");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\none\r\n")
            .await
            .expect("write");
        let _ = wait_cut.await;
        let _ = stream.write_all(b"3\r\ntwo\r\n").await;
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let instance = instance(addr);
    instance.set_state(crate::ids::InstanceState::Ready);
    let stats = Arc::new(crate::stats::ReleaseStats::new(ReleaseId::new("r")));
    let guard = InstanceLive::try_acquire(&instance, &stats).expect("ready");
    let config = ProxyConfig::default();
    let response = send(
        &instance,
        get("/"),
        &config,
        &RouteSettings::default(),
        false,
        None,
    )
    .await
    .unwrap_or_else(|failure| panic!("{}", failure.error));
    let (_, body) = response.into_parts();
    let mut body = ProxyBody::upstream(
        body,
        Some((Arc::clone(&instance), limits())),
        Some(guard),
        Duration::from_secs(5),
        tokio::time::Instant::now(),
    );
    let first = body.frame().await.expect("a frame").expect("data");
    assert_eq!(first.into_data().expect("data"), "one");
    instance.cut.cancel();
    let _ = cut_done.send(());
    let mut ended = false;
    for _ in 0..3 {
        match tokio::time::timeout(Duration::from_secs(2), body.frame()).await {
            Ok(Some(Err(crate::body::AnswerBodyError::Cut))) => {
                ended = true;
                break;
            }
            Ok(Some(Ok(_))) => {}
            other => panic!("expected the cut to end the answer, got {other:?}"),
        }
    }
    assert!(ended);
    assert_eq!(instance.in_flight(), 0);
}

#[tokio::test]
async fn a_large_answer_is_read_whole_in_growing_reads() {
    let body = "y".repeat(1 << 20);
    let script = script(vec![answer(format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    ))])
    .await;
    let instance = instance(script.addr);
    let config = ProxyConfig::default();
    let response = send(
        &instance,
        get("/"),
        &config,
        &RouteSettings::default(),
        false,
        None,
    )
    .await
    .unwrap_or_else(|failure| panic!("{}", failure.error));
    let UpstreamBody::Http1(mut answer) = response.into_body() else {
        panic!("an HTTP/1 answer");
    };
    let (mut received, mut frames, mut largest) = (0, 0, 0);
    while let Some(frame) = answer.frame().await {
        let data = frame.expect("frame").into_data().expect("data");
        received += data.len();
        largest = largest.max(data.len());
        frames += 1;
    }
    assert_eq!(received, 1 << 20);
    // Reads grew past the first 8 KiB (how far depends on how fast the bytes come).
    assert!(
        largest > 8 * 1024,
        "{frames} frames, the largest {largest} bytes"
    );
}

/// An instance that answers with a chunked head, then writes `chunks` one every `gap`, then stays silent.
async fn chunked_then_silent(chunks: usize, gap: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("accept");
        let mut buf = Vec::new();
        read_request(&mut stream, &mut buf).await.expect("request");
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .expect("write");
        for _ in 0..chunks {
            tokio::time::sleep(gap).await;
            let _ = stream.write_all(b"1\r\nx\r\n").await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    addr
}

/// Reads `body` until it ends, fails or 3 s pass: the data read and how it stopped.
async fn read_until_stopped(mut body: ProxyBody) -> (usize, String) {
    let mut data = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), body.frame()).await {
            Ok(Some(Ok(frame))) => data += frame.into_data().map_or(0, |bytes| bytes.len()),
            Ok(Some(Err(error))) => return (data, error.to_string()),
            Ok(None) => return (data, "end".to_owned()),
            Err(_) => return (data, "still waiting".to_owned()),
        }
    }
}

#[tokio::test]
async fn an_answer_body_silent_for_the_idle_timeout_ends_and_each_frame_restarts_it() {
    // Frames every 100 ms for 1.2 s: longer than the idle timeout in all, never silent that long. A gap
    // of 900 ms between two frames (a stalled machine) would end it early; with a 300 ms timeout, 200 ms
    // did.
    let idle = Duration::from_secs(1);
    let addr = chunked_then_silent(12, Duration::from_millis(100)).await;
    let instance = instance(addr);
    let config = ProxyConfig::default();
    let response = send(
        &instance,
        get("/"),
        &config,
        &RouteSettings::default(),
        false,
        None,
    )
    .await
    .unwrap_or_else(|failure| panic!("{}", failure.error));
    let (_, body) = response.into_parts();
    let body = ProxyBody::upstream(body, None, None, idle, Instant::now());
    let (data, last_frame, stopped) = read_until_stopped_timed(body).await;
    assert_eq!(data, 12);
    assert!(stopped.contains("sent nothing"), "{stopped}");
    // Ended by the silence after the last frame (every frame came, so not before it: the frames alone
    // took 1.2 s, longer than the timeout), the timeout after it (the timer restarts as the frame is
    // read, just before this clock reading), and not long after: a timer that ran twice as long would
    // end it 2 s after. Measured from the last frame, not from the head, so that a slow sender moves
    // neither bound.
    let ended = Instant::now();
    let silence = ended - last_frame.expect("frames came");
    assert!(
        silence >= idle - Duration::from_millis(100),
        "{silence:?} after the last frame"
    );
    assert!(silence < idle * 2, "{silence:?} after the last frame");
}

/// `read_until_stopped`, with the time the last data frame was read.
async fn read_until_stopped_timed(mut body: ProxyBody) -> (usize, Option<Instant>, String) {
    let mut data = 0;
    let mut last_frame = None;
    loop {
        match tokio::time::timeout(Duration::from_secs(3), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                data += frame.into_data().map_or(0, |bytes| bytes.len());
                last_frame = Some(Instant::now());
            }
            Ok(Some(Err(error))) => return (data, last_frame, error.to_string()),
            Ok(None) => return (data, last_frame, "end".to_owned()),
            Err(_) => return (data, last_frame, "still waiting".to_owned()),
        }
    }
}

#[tokio::test]
async fn an_answer_body_s_idle_timeout_runs_from_the_head_s_time() {
    // The head came (as the caller read its clock) a second ago and nothing since: already idle too long.
    let addr = chunked_then_silent(0, Duration::ZERO).await;
    let instance = instance(addr);
    let config = ProxyConfig::default();
    let response = send(
        &instance,
        get("/"),
        &config,
        &RouteSettings::default(),
        false,
        None,
    )
    .await
    .unwrap_or_else(|failure| panic!("{}", failure.error));
    let (_, body) = response.into_parts();
    // An idle timeout longer than `read_until_stopped`'s 3 s patience: counted from now instead of from
    // the head's time, the body would be "still waiting". (With 500 ms and a bound of 400 ms, a stall
    // of 400 ms failed it.)
    let idle = Duration::from_secs(5);
    let now = Instant::now();
    let head_time = now
        .checked_sub(idle + Duration::from_secs(1))
        .unwrap_or(now);
    let body = ProxyBody::upstream(body, None, None, idle, head_time);
    let started = Instant::now();
    let (data, stopped) = read_until_stopped(body).await;
    assert_eq!(data, 0);
    assert!(stopped.contains("sent nothing"), "{stopped}");
    assert!(started.elapsed() < idle, "{:?}", started.elapsed());
}
