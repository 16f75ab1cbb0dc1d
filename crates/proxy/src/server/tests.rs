//! Unit tests of the connection's task.

use super::*;

/// Every open connection's task holds `Connection::run`'s future, and an idle HTTP/1 keep-alive
/// connection holds little else (its hyper state is freed, `serve_http1`), so this size is most of
/// what each idle connection costs: 1,552 bytes before the socket's state and the states only HTTP/2
/// or a shutdown reach were boxed. At 400 bytes or less, the task (tokio's header and trailer around
/// the future, in 128-byte steps) takes 512 bytes.
// See: issue 20 (5,000 idle connections under 30 MB).
#[tokio::test]
async fn issue_20_an_idle_connections_task_is_small() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stream = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let proxy = Proxy::new(crate::config::ProxyConfig::default());
    let connection = Connection {
        builder: Arc::new(Builders::new(proxy.config())),
        client_addr: stream.local_addr().expect("address"),
        shutdown: CancellationToken::new(),
    };
    let run = connection.run(stream, &proxy, Scheme::Http, &TaskTracker::new());
    let size = std::mem::size_of_val(&run);
    assert!(size <= 400, "the connection's future is {size} bytes");
}

/// A worker thread that went quiet after a connection closed collects its own heap (mimalloc keeps
/// free pages in the heap of the thread that freed them until that thread collects; a collection on
/// another thread does not reach them), on its upstream sweep's tick.
// See: issue 20 (5,000 idle connections under 30 MB, as users run it).
#[tokio::test]
async fn issue_20_a_quiet_worker_collects_its_own_heap_after_a_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let proxy = Proxy::new(crate::config::ProxyConfig::default());
    let shutdown = CancellationToken::new();
    // On this test's (current-thread) runtime: the connections' tasks and the sweep run on this thread.
    let server = tokio::spawn(crate::serve(listener, proxy, shutdown.clone()));
    let tick = (crate::config::ProxyConfig::default().upstream_idle_timeout / 2)
        .clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Past the first tick, so that what this thread did before is collected or not due.
    tokio::time::sleep(tick * 3).await;
    let before = crate::memory::collections_here();

    let mut client = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nhost: nowhere.test\r\nconnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut answer = Vec::new();
    client.read_to_end(&mut answer).await.expect("answer");
    assert!(answer.starts_with(b"HTTP/1.1 "), "{answer:?}");
    drop(client);

    // Two ticks: one that sees the request, one quiet after it. (Only once: `memory`'s own tests; a
    // trim of another test of this process may add one here.)
    tokio::time::sleep(tick * 3).await;
    assert!(crate::memory::collections_here() > before);

    shutdown.cancel();
    server.await.expect("server task").expect("serve");
}
