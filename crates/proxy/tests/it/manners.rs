//! Proxy manners: forwarded headers, request ids, hop-by-hop headers, and `/metrics`.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proxy::{ProxyConfig, ReleaseId};
use tokio::net::TcpListener;

use crate::support::{HOST, TestProxy, demo, get, send};

/// An upstream that answers with the request headers it received, one `name: value` per line.
async fn header_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|request: Request<Incoming>| async move {
                    let mut lines = String::new();
                    for (name, value) in request.headers() {
                        lines.push_str(&format!("{name}: {}\n", value.to_str().unwrap_or("?")));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(lines))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn header_lines(body: &Bytes) -> Vec<String> {
    String::from_utf8_lossy(body)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_and_request_ids_are_set_and_hop_by_hop_headers_go() {
    let upstream = header_echo().await;
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("echo", "E", upstream);

    let request = Request::get("/")
        .header("host", HOST)
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("x-end-to-end", "kept")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = send(test_proxy.addr, request).await;
    let lines = header_lines(response.body());
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert_eq!(request_id.len(), 32);
    assert!(
        lines.contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"x-forwarded-proto: http".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&format!("x-forwarded-host: {HOST}")),
        "{lines:?}"
    );
    assert!(lines.contains(&format!("host: {HOST}")), "{lines:?}");
    assert!(
        lines.contains(&format!("x-request-id: {request_id}")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"x-end-to-end: kept".to_owned()),
        "{lines:?}"
    );
    for hop in ["x-hop", "keep-alive", "connection"] {
        assert!(
            !lines
                .iter()
                .any(|line| line.starts_with(&format!("{hop}:"))),
            "{hop} in {lines:?}"
        );
    }

    // A client's own request id is kept; its forwarding chain is not believed (no trusted proxy).
    let request = Request::get("/")
        .header("host", HOST)
        .header("x-request-id", "client-chosen")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = send(test_proxy.addr, request).await;
    let lines = header_lines(response.body());
    assert_eq!(response.headers()["x-request-id"], "client-chosen");
    assert!(
        lines.contains(&"x-request-id: client-chosen".to_owned()),
        "{lines:?}"
    );
    assert!(
        lines.contains(&"x-forwarded-for: 127.0.0.1".to_owned()),
        "{lines:?}"
    );
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_hosts_get_404_and_metrics_count_per_release() {
    let process = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", process.addr());
    for _ in 0..3 {
        assert_eq!(get(test_proxy.addr, HOST, "/").await.status(), 200);
    }
    assert_eq!(get(test_proxy.addr, "other.test", "/").await.status(), 404);

    let stats = test_proxy.proxy.stats(&ReleaseId::new("A")).expect("stats");
    assert_eq!(
        (stats.requests.success, stats.latency.count, stats.in_flight),
        (3, 3, 0)
    );
    let metrics = proxy::metrics::render(&test_proxy.proxy);
    assert!(
        metrics.contains("rollway_proxy_requests_total{release=\"A\",class=\"2xx\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rollway_proxy_request_duration_seconds_count{release=\"A\"} 3\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("rollway_proxy_errors_total{release=\"\",kind=\"no_route\"} 1\n"),
        "{metrics}"
    );

    // The same text on a metrics listener.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let metrics_addr = listener.local_addr().expect("addr");
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(proxy::metrics::serve_metrics(
        listener,
        test_proxy.proxy.clone(),
        shutdown.clone(),
    ));
    let response = get(metrics_addr, "localhost", "/metrics").await;
    assert_eq!(
        response.headers()["content-type"],
        proxy::metrics::CONTENT_TYPE
    );
    assert!(String::from_utf8_lossy(response.body()).contains("class=\"2xx\"} 3\n"));
    shutdown.cancel();
    server.await.expect("join").expect("metrics server");
    test_proxy.stop().await;
}

/// Large answers on one keep-alive connection to a client that reads in small pieces: every answer
/// arrives whole and the connection stays open for the next request (the proxy's own HTTP/1 server
/// once closed it after an answer that took more than one poll of its body: session 29).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_answers_to_a_slow_reader_keep_the_connection_alive() {
    use tokio::io::AsyncWriteExt;

    const SIZE: usize = 1024 * 1024;
    let process = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let mut stream = tokio::net::TcpStream::connect(test_proxy.addr)
        .await
        .expect("connect");
    for request in 0..5 {
        stream
            .write_all(format!("GET /bytes/{SIZE} HTTP/1.1\r\nHost: {HOST}\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut received = Vec::new();
        let mut buffer = vec![0u8; 16 * 1024];
        let body_start = loop {
            if let Some(end) = received.windows(4).position(|window| window == b"\r\n\r\n") {
                break end + 4;
            }
            let n = read_some(&mut stream, &mut buffer).await;
            assert!(n > 0, "request {request}: closed before the answer's head");
            received.extend_from_slice(&buffer[..n]);
        };
        let head = String::from_utf8_lossy(&received[..body_start]).to_lowercase();
        assert!(head.starts_with("http/1.1 200 "), "{head}");
        assert!(
            head.contains(&format!("content-length: {SIZE}\r\n")),
            "{head}"
        );
        assert!(!head.contains("connection: close"), "{head}");
        let mut body = received.len() - body_start;
        while body < SIZE {
            let n = read_some(&mut stream, &mut buffer).await;
            assert!(
                n > 0,
                "request {request}: closed after {body} of {SIZE} body bytes"
            );
            body += n;
            // Slower than the proxy writes: its writes wait for the client.
            tokio::time::sleep(std::time::Duration::from_micros(200)).await;
        }
        assert_eq!(body, SIZE, "request {request}: exactly the answer's length");
    }
}

async fn read_some(stream: &mut tokio::net::TcpStream, buffer: &mut [u8]) -> usize {
    use tokio::io::AsyncReadExt;
    tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(buffer))
        .await
        .expect("the proxy answered in time")
        .expect("read")
}
