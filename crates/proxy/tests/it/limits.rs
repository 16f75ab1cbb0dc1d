//! Limits and timeouts: oversized heads get 431, oversized bodies 413, slow clients 408.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use proxy::{ProxyConfig, RouteSettings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{HOST, TestProxy, demo, get, h2_client, send};

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

/// Over HTTP/2 too: an announced length over the limit is a 413 before any body is read, a small body
/// is echoed, and a request that ends with its head (no body, no `content-length` looked up) is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_announced_over_the_limit_gets_413_and_a_small_one_is_echoed() {
    let process = demo("A");
    let test_proxy = TestProxy::start_with(config(), settings()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let mut sender = h2_client(test_proxy.addr).await;
    let mut exchange = async |method: &str, body: &'static [u8], length: Option<usize>| {
        let path = if method == "GET" { "/" } else { "/echo" };
        let mut request = Request::builder()
            .method(method)
            .uri(format!("http://{HOST}{path}"));
        if let Some(length) = length {
            request = request.header("content-length", length);
        }
        let request = request
            .body(Full::new(Bytes::from_static(body)))
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 answer");
        let status = response.status().as_u16();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        (status, body)
    };
    const LARGE: &[u8] = &[b'x'; 4096];
    assert_eq!(exchange("POST", LARGE, Some(LARGE.len())).await.0, 413);
    assert_eq!(
        exchange("POST", b"hello", Some(5)).await,
        (200, Bytes::from_static(b"hello"))
    );
    assert_eq!(
        exchange("GET", b"", None).await,
        (200, Bytes::from_static(b"A\n"))
    );
    test_proxy.stop().await;
}

/// The limit trips after the instance started its answer (an app that answers before it read the whole
/// body): the exchange ends at once, the answer cut and both connections closed, instead of the proxy
/// waiting for an answer the instance cannot end (it waits for the rest of the body) until the route's
/// idle timeout (60 s here). `oversized_bodies_get_413_whether_announced_or_streamed` met this path only
/// when the machine was loaded (1 run in 12 pinned to a busy CPU); here it is taken every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_after_the_answer_began_ends_the_exchange_at_once() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let instance_addr = listener.local_addr().expect("addr");
    let (closed_tx, closed_rx) = tokio::sync::oneshot::channel::<usize>();
    tokio::spawn(async move {
        let Ok((mut stream, _)) = listener.accept().await else {
            return;
        };
        // Answers as soon as the request head is in, then reads the body until the proxy closes.
        let mut seen = Vec::new();
        let mut buffer = [0u8; 4096];
        while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buffer[..n]),
            }
        }
        let head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nbegun\r\n";
        if stream.write_all(head).await.is_err() {
            return;
        }
        let mut body = seen.len();
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body += n,
            }
        }
        let _ = closed_tx.send(body);
    });
    let settings = RouteSettings {
        max_body_bytes: 1024,
        idle_timeout: Duration::from_secs(60),
        timeout: Duration::from_secs(60),
        ..RouteSettings::default()
    };
    let test_proxy = TestProxy::start_with(config(), settings).await;
    test_proxy.add_ready("a", "A", instance_addr);

    let mut stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut request =
        b"POST /echo HTTP/1.1\r\nHost: demo.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    request.extend_from_slice(b"64\r\n");
    request.extend_from_slice(&[b'y'; 100]);
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).await.expect("write");
    // The answer has begun before the body goes over the limit.
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while !answer.ends_with(b"5\r\nbegun\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buffer))
            .await
            .expect("the answer's start")
            .expect("read");
        assert_ne!(read, 0, "closed before the answer began: {answer:?}");
        answer.extend_from_slice(&buffer[..read]);
    }
    // Within the proxy's body read timeout (300 ms), keep it busy with more chunks than the limit.
    for _ in 0..4 {
        let mut chunk = b"1f4\r\n".to_vec();
        chunk.extend_from_slice(&[b'z'; 500]);
        chunk.extend_from_slice(b"\r\n");
        if stream.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let rest = read_to_end(&mut stream).await;
    let whole = format!("{}{rest}", String::from_utf8_lossy(&answer));
    assert!(whole.starts_with("HTTP/1.1 200 "), "{whole}");
    assert!(
        !whole.ends_with("0\r\n\r\n"),
        "the cut answer was ended as whole: {whole}"
    );
    // The instance's connection was closed too, and it never got more than the limit of the body.
    let body = tokio::time::timeout(Duration::from_secs(10), closed_rx)
        .await
        .expect("the proxy kept the instance's connection open")
        .expect("instance task");
    assert!(body < 1024 + 1024, "the instance got {body} bytes");
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

/// An upstream that holds every request until `release` is set, and counts its open connections.
async fn gated_upstream(
    release: tokio::sync::watch::Receiver<bool>,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let open = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&open);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let open = Arc::clone(&counted);
            let release = release.clone();
            open.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let mut release = release.clone();
                    async move {
                        let _ = release.wait_for(|released| *released).await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, open)
}

/// A burst that needed one upstream connection per request leaves them pooled; once they have been
/// idle `upstream_idle_timeout` the proxy closes them by itself (no further request comes to expire
/// them at check-in), so their buffers do not stay with an idle proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_idle_upstream_connections_are_closed_when_the_proxy_goes_quiet() {
    let test_proxy = TestProxy::start(quick_idle_upstreams()).await;
    burst_then_quiet(test_proxy).await;
}

/// The same on worker threads, as the proxy process serves: each worker sweeps its own share of the
/// pool (`proxy::workers`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_idle_upstream_connections_are_closed_when_the_workers_go_quiet() {
    let test_proxy = TestProxy::start_workers(quick_idle_upstreams(), 2).await;
    burst_then_quiet(test_proxy).await;
}

fn quick_idle_upstreams() -> ProxyConfig {
    ProxyConfig {
        upstream_idle_timeout: Duration::from_millis(300),
        ..ProxyConfig::default()
    }
}

async fn burst_then_quiet(test_proxy: TestProxy) {
    use std::sync::atomic::Ordering;
    const BURST: usize = 16;
    let (release, gate) = tokio::sync::watch::channel(false);
    let (upstream, open) = gated_upstream(gate).await;
    test_proxy.add_ready("gated", "G", upstream);

    let requests: Vec<_> = (0..BURST)
        .map(|_| tokio::spawn(get(test_proxy.addr, HOST, "/")))
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while open.load(Ordering::SeqCst) < BURST {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the burst did not open {BURST} upstream connections: {}",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    release.send_replace(true);
    for request in requests {
        assert_eq!(request.await.expect("request task").status(), 200);
    }
    // Pooled, then closed by the proxy once idle long enough.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while open.load(Ordering::SeqCst) > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} idle upstream connections are still open",
            open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next request opens a new one and is answered.
    assert_eq!(get(test_proxy.addr, HOST, "/").await.status(), 200);
    test_proxy.stop().await;
}
