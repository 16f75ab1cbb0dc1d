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
