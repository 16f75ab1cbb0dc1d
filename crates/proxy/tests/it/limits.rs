//! Limits and timeouts: oversized heads get 431, oversized bodies 413, slow clients 408.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use proxy::{ProxyConfig, RouteSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{HOST, TestProxy, demo, get, send};

fn config() -> ProxyConfig {
    ProxyConfig {
        max_header_bytes: 16 * 1024,
        header_read_timeout: Duration::from_millis(300),
        body_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    }
}

fn settings() -> RouteSettings {
    RouteSettings {
        max_body_bytes: 1024,
        ..RouteSettings::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431() {
    let process = demo("A");
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let request = Request::get("/")
        .header("host", HOST)
        .header("x-big", "x".repeat(32 * 1024))
        .body(Full::new(Bytes::new()))
        .expect("request");
    assert_eq!(send(test_proxy.addr, request).await.status(), 431);
    assert_eq!(get(test_proxy.addr, HOST, "/").await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_get_413_whether_announced_or_streamed() {
    let process = demo("A");
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    test_proxy.add_ready("a", "A", process.addr());

    let announced = Request::post("/echo")
        .header("host", HOST)
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .expect("request");
    assert_eq!(send(test_proxy.addr, announced).await.status(), 413);

    // Chunked, no length announced: the limit trips while streaming. The echo app answers as soon as it
    // has the head, so the client sees either 413 or an answer cut short, never the whole echo.
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        request.extend_from_slice(b"3e8\r\n");
        request.extend_from_slice(&[b'y'; 1000]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.expect("write");
    let answer = read_to_end(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 413 ") || !answer.ends_with("0\r\n\r\n"),
        "{answer}"
    );

    let small = Request::post("/echo")
        .header("host", HOST)
        .body(Full::new(Bytes::from_static(b"hello")))
        .expect("request");
    let echoed = send(test_proxy.addr, small).await;
    assert_eq!(
        (echoed.status().as_u16(), echoed.body().as_ref()),
        (200, &b"hello"[..])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_request_head_gets_408() {
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.te")
        .await
        .expect("write");
    let answer = read_to_end(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stalling_in_its_body_gets_408() {
    let process = demo("A");
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: demo.test\r\nContent-Length: 100\r\n\r\nonly a part",
        )
        .await
        .expect("write");
    let answer = read_to_end(&mut stream).await;
    // The echo app may have started its answer before the body stalled; either way the client is cut
    // off within the read timeout instead of holding the proxy.
    assert!(
        answer.starts_with("HTTP/1.1 408 ") || answer.starts_with("HTTP/1.1 200 "),
        "{answer}"
    );
    assert!(
        !answer.contains("only a part") || !answer.contains("0\r\n\r\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed() {
    let process = demo("A");
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    test_proxy.add_ready("a", "A", process.addr());
    // Silent from the start: closed without an answer.
    let mut silent = TcpStream::connect(test_proxy.addr).await.expect("connect");
    assert_eq!(read_to_end(&mut silent).await, "");
    // Idle after one request: closed after the idle timeout.
    let mut idle = TcpStream::connect(test_proxy.addr).await.expect("connect");
    idle.write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .expect("write");
    let answer = read_to_end(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with("A\n"), "{answer}");
}

/// Reads until the proxy closes the connection (bounded so a bug fails instead of hanging).
async fn read_to_end(stream: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the proxy kept the connection open")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}
