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
        _counted: crate::balance::Counted::taken(),
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

/// Counts the wake-ups of the future it polls (through a waker of its own that passes them on).
struct CountWakes<F> {
    inner: Pin<Box<F>>,
    wakes: Arc<std::sync::atomic::AtomicUsize>,
}

struct CountingWaker {
    wakes: Arc<std::sync::atomic::AtomicUsize>,
    inner: std::task::Waker,
}

impl std::task::Wake for CountingWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.wakes.fetch_add(1, Ordering::SeqCst);
        self.inner.wake_by_ref();
    }
}

impl<F: Future> Future for CountWakes<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let waker = std::task::Waker::from(Arc::new(CountingWaker {
            wakes: Arc::clone(&self.wakes),
            inner: cx.waker().clone(),
        }));
        self.inner.as_mut().poll(&mut Context::from_waker(&waker))
    }
}

/// A keep-alive request answered at once wakes its connection's task once (its bytes arriving): the
/// request's end, which happens in that task, does not wake it again (a whole poll of the task for
/// nothing, ~1,000 instructions per request).
// See: issue 20 (instructions per request).
#[tokio::test]
async fn issue_20_a_request_answered_at_once_wakes_its_connection_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let mut client = tokio::net::TcpStream::connect(listener.local_addr().expect("address"))
        .await
        .expect("connect");
    let (stream, client_addr) = listener.accept().await.expect("accept");
    let proxy = Proxy::new(crate::config::ProxyConfig::default());
    let connection = Connection {
        builder: Arc::new(Builders::new(proxy.config())),
        client_addr,
        shutdown: CancellationToken::new(),
        _counted: crate::balance::Counted::taken(),
    };
    let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let run = connection.run(stream, &proxy, Scheme::Http, &TaskTracker::new());
    let task = tokio::spawn(CountWakes {
        inner: Box::pin(run),
        wakes: Arc::clone(&wakes),
    });
    const REQUESTS: usize = 5;
    for _ in 0..REQUESTS {
        client
            .write_all(b"GET / HTTP/1.1\r\nhost: nowhere.test\r\n\r\n")
            .await
            .expect("request");
        // The answer (no route: the proxy's own), read to the end of its body.
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        let complete = |answer: &[u8]| {
            let text = String::from_utf8_lossy(answer).to_ascii_lowercase();
            let Some((head, body)) = text.split_once("\r\n\r\n") else {
                return false;
            };
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .expect("content-length");
            body.len() >= length
        };
        while !complete(&answer) {
            let n = tokio::time::timeout(Duration::from_secs(5), client.read(&mut buf))
                .await
                .expect("an answer")
                .expect("read");
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        assert!(answer.starts_with(b"HTTP/1.1 "));
    }
    // Let a wake-up that is due run.
    tokio::task::yield_now().await;
    let woken = wakes.load(Ordering::SeqCst);
    assert!(
        woken <= REQUESTS + 1,
        "{woken} wake-ups for {REQUESTS} requests"
    );
    task.abort();
}
