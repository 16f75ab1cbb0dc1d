//! The API server's limits, with short timeouts: slow heads get a 408 in the envelope while other
//! clients are served, stalled bodies fail, idle connections are cut, the connection cap holds.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::routing::{get, post};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::*;
use crate::api::router::tests::{call, parse};

const TIMEOUT: Duration = Duration::from_millis(400);

async fn start(max_connections: usize) -> (SocketAddr, CancellationToken) {
    let app = Router::new()
        .route("/ok", get(|| async { "ok" }))
        .route(
            "/echo",
            post(|Json(value): Json<serde_json::Value>| async move { Json(value) }),
        )
        .layer(axum::middleware::from_fn(error::envelope));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let limits = Limits {
        header_timeout: TIMEOUT,
        max_header_bytes: 8 * 1024,
        body_idle_timeout: TIMEOUT,
        max_connections,
        shutdown_grace: Duration::from_secs(1),
    };
    tokio::spawn(serve_router(listener, app, limits, shutdown.clone()));
    (addr, shutdown)
}

async fn read_all(tcp: &mut TcpStream) -> Vec<u8> {
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut raw)).await;
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_byte_by_byte_past_the_timeout_gets_a_408_while_others_are_served() {
    let (addr, _shutdown) = start(64).await;
    let slow = tokio::spawn(async move {
        let mut tcp = TcpStream::connect(addr).await.expect("connect");
        let head = b"GET /ok HTTP/1.1\r\nhost: test\r\nx-padding: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
        for byte in head {
            if tcp.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        parse(&read_all(&mut tcp).await)
    });
    // Meanwhile, other clients are served at once.
    for _ in 0..5 {
        let answer = call(addr, "GET", "/ok", None, b"").await;
        assert_eq!((answer.status, answer.body.as_str()), (200, "ok"));
    }
    let answer = slow.await.expect("slow client");
    assert_eq!(answer.status, 408, "{answer:?}");
    let error = answer.envelope("slow head").error;
    assert_eq!(error.code, "timeout");
    assert!(error.message.contains("400 ms"), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_too_large_gets_a_431() {
    let (addr, _shutdown) = start(64).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "GET /ok HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let answer = parse(&read_all(&mut tcp).await);
    assert_eq!(answer.status, 431, "{answer:?}");
    assert_eq!(answer.envelope("large head").error.code, "too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_fails_in_the_envelope() {
    let (addr, _shutdown) = start(64).await;
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let head = "POST /echo HTTP/1.1\r\nhost: test\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"a\":";
    tcp.write_all(head.as_bytes()).await.expect("write");
    let answer = parse(&read_all(&mut tcp).await);
    assert_eq!(answer.status, 408, "{answer:?}");
    let error = answer.envelope("stalled body").error;
    assert_eq!(error.code, "timeout");
    assert!(
        error.message.contains("sent nothing for 400 ms"),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_cut_and_the_cap_holds() {
    let (addr, _shutdown) = start(2).await;
    // Two connections that say nothing take both places (the listener accepts in connection order, so
    // they are taken before the third). The clock starts before they connect: each is cut at least
    // TIMEOUT after, whatever the machine's load. (Started after a 50 ms sleep, it failed the bound
    // when the sleep took 200 ms.)
    let started = tokio::time::Instant::now();
    let mut idle = Vec::new();
    for _ in 0..2 {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let answer = call(addr, "GET", "/ok", None, b"").await;
    assert_eq!(answer.status, 200, "{answer:?}");
    // The third waited for an idle one to be cut.
    assert!(started.elapsed() >= TIMEOUT, "{:?}", started.elapsed());
    for mut tcp in idle {
        let answer = parse(&read_all(&mut tcp).await);
        assert_eq!(answer.status, 408, "{answer:?}");
    }
    // A keep-alive connection left idle after an answer is closed too.
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    tcp.write_all(b"GET /ok HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let raw = read_all(&mut tcp).await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
}

#[test]
fn the_connection_cap_keeps_half_the_descriptors() {
    assert_eq!(connection_cap(Some(256)), 128);
    assert_eq!(connection_cap(Some(1024)), 512);
    assert_eq!(connection_cap(Some(4)), 4);
    assert_eq!(connection_cap(Some(1 << 20)), 1024);
    assert_eq!(connection_cap(None), 1024);
}

/// Over TLS: a client that opens a connection and never finishes its handshake is cut at the
/// header deadline and gives its place back (the cap is one here); a client speaking plain HTTP
/// to the TLS port gets no HTTP answer, only the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_cut_at_the_deadline_and_frees_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = tls::load(
        dir.path(),
        &crate::secrets::MasterKey::generate(),
        &tls::CertSource::SelfSigned,
        &[],
    )
    .expect("self-signed API TLS");
    let app = Router::new().route("/ok", get(|| async { "ok" }));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let shutdown = CancellationToken::new();
    let limits = Limits {
        header_timeout: TIMEOUT,
        max_header_bytes: 8 * 1024,
        body_idle_timeout: TIMEOUT,
        max_connections: 1,
        shutdown_grace: Duration::from_secs(1),
    };
    tokio::spawn(serve_router_tls(
        listener,
        app,
        limits,
        Some(tls.acceptor),
        shutdown.clone(),
    ));
    // Half a ClientHello's record header, then nothing.
    let mut stalled = TcpStream::connect(addr).await.expect("connect");
    stalled.write_all(&[0x16, 0x03, 0x01]).await.expect("write");
    // The only place is taken: a second client waits for it.
    let mut plain = TcpStream::connect(addr).await.expect("connect");
    plain
        .write_all(b"GET /ok HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .expect("write");
    let cut = read_all(&mut stalled).await;
    assert!(
        !cut.windows(4).any(|window| window == b"HTTP"),
        "the stalled handshake got an HTTP answer: {cut:?}"
    );
    // Its place freed, the plain-HTTP client is taken, refused by TLS, and closed: it reads the
    // end of the stream (maybe after an alert), never an HTTP answer and never "ok".
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        let mut raw = Vec::new();
        let _ = plain.read_to_end(&mut raw).await;
        raw
    })
    .await
    .expect("the second client was never taken: the stalled one kept its place");
    assert!(
        !answer.windows(4).any(|window| window == b"HTTP"),
        "plain HTTP reached the router: {}",
        String::from_utf8_lossy(&answer)
    );
    shutdown.cancel();
}
