//! The waiting queue: with no routable instance (none ready, or the only one refusing connections),
//! requests that were not sent are held and go on as soon as one is ready; past the route's hold or
//! the queue's length they get 503 with Retry-After; a held request whose client goes away is dropped.

use std::time::Duration;

use proxy::{ErrorKind, InstanceId, ProxyConfig, ReleaseId, RouteSettings, WaitingConfig};
use testkit::demo::DemoApp;
use testkit::load::Load;
use tokio::io::AsyncWriteExt;

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, demo, get};

/// A proxy whose route holds a request at most `hold`, and at most `max_waiting` of them at once.
async fn start(hold: Duration, max_waiting: usize) -> TestProxy {
    let config = ProxyConfig {
        waiting: WaitingConfig {
            max_waiting,
            retry_after: Duration::from_secs(7),
        },
        ..ProxyConfig::default()
    };
    let settings = RouteSettings {
        hold,
        ..RouteSettings::default()
    };
    TestProxy::start_with(config, settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_the_first_ready_instance() {
    let process = demo("A");
    let test_proxy = start(Duration::from_secs(20), 100).await;
    test_proxy.add("a", "A", process.addr());

    let addr = test_proxy.addr;
    let waiting: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, HOST, "/").await }))
        .collect();
    assert_eventually!(
        test_proxy.proxy.waiting()[0].1 == 5,
        "requests are not waiting: {:?}",
        test_proxy.proxy.waiting()
    );
    test_proxy
        .proxy
        .mark_ready(&InstanceId::new("a"))
        .expect("ready");
    for request in waiting {
        let response = request.await.expect("join");
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"A\n");
    }
    assert_eq!(test_proxy.proxy.waiting()[0].1, 0);
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_wait_bound_the_answer_is_503_with_retry_after() {
    let test_proxy = start(Duration::from_millis(300), 100).await;
    let response = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_length_the_answer_is_503_at_once() {
    let test_proxy = start(Duration::from_secs(30), 2).await;
    let addr = test_proxy.addr;
    let _waiting: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, HOST, "/").await }))
        .collect();
    assert_eventually!(
        test_proxy.proxy.waiting()[0].1 == 2,
        "requests are not waiting"
    );
    let response = get(addr, HOST, "/").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
}

/// The only instance killed under load (kill -9: it refuses connections), then started again on its
/// port: the requests it refused were never sent, so they are held, not failed, and go on when it
/// answers again. Each request is counted once, on its release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_refused_by_the_only_instance_are_held_until_it_answers_again() {
    const HOLD: Duration = Duration::from_secs(30);
    let mut process = demo("A");
    let addr = process.addr();
    let test_proxy = start(HOLD, 100).await;
    let proxy = &test_proxy.proxy;
    test_proxy.add_ready("a", "A", addr);
    // The clients wait longer than the proxy holds: a request held too long is the proxy's 503, not a
    // client that gave up. With the default 5 s, the first request held waited for the assertion below,
    // a new process's start and a probe interval, and a loaded machine made that a timeout.
    let load = Load::new(test_proxy.addr)
        .host(HOST)
        .concurrency(4)
        .timeout(HOLD + Duration::from_secs(10))
        .duration(Duration::from_secs(60))
        .start();
    let release = ReleaseId::new("A");
    assert_eventually!(
        proxy.stats(&release).expect("stats").total_requests() > 50,
        "no traffic reached release A"
    );
    process.kill9().expect("kill -9");
    // The port stays this test's while the instance is dead: bound, not listening, so a connection to
    // it is refused as to a dead process, and no other test's `bind 127.0.0.1:0` (nor an outgoing
    // connection's local port) takes it before the instance starts again on it.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved.set_reuseaddr(true).expect("SO_REUSEADDR");
    reserved.bind(addr).expect("keep the dead instance's port");
    assert_eventually!(
        proxy.waiting()[0].1 > 0,
        "no request is held while the only instance is dead: {}",
        load.snapshot()
    );
    assert_eq!(load.snapshot().failed, 0, "{}", load.snapshot());
    drop(reserved);
    let _again = DemoApp::new()
        .version("A")
        .port(addr.port())
        .spawn()
        .expect("spawn the instance again");
    load.wait_for_more(
        100,
        Duration::from_secs(10),
        "traffic once the instance answered again",
    )
    .await;
    let report = load.stop().await;
    assert_eq!(report.failed, 0, "{report}");
    assert_eq!(proxy.waiting()[0].1, 0);
    let stats = proxy.stats(&release).expect("stats");
    assert_eq!(stats.total_requests(), report.total, "{stats:?}");
    assert_eq!(
        stats.error_count(ErrorKind::NoReadyInstance),
        0,
        "{stats:?}"
    );
    assert!(stats.error_count(ErrorKind::Retried) >= 1, "{stats:?}");
    test_proxy.stop().await;
}

/// A held request whose client goes away leaves the queue at once, and is not sent later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_whose_client_goes_away_is_dropped() {
    let process = demo("A");
    let test_proxy = start(Duration::from_secs(30), 100).await;
    test_proxy.add("a", "A", process.addr());
    let mut client = tokio::net::TcpStream::connect(test_proxy.addr)
        .await
        .expect("connect");
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: demo.test\r\n\r\n")
        .await
        .expect("write");
    assert_eventually!(
        test_proxy.proxy.waiting()[0].1 == 1,
        "the request is not held: {:?}",
        test_proxy.proxy.waiting()
    );
    drop(client);
    assert_eventually!(
        test_proxy.proxy.waiting()[0].1 == 0,
        "the request of a client gone is still held"
    );
    test_proxy
        .proxy
        .mark_ready(&InstanceId::new("a"))
        .expect("ready");
    let response = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(response.status(), 200);
    let stats = test_proxy.proxy.stats(&ReleaseId::new("A")).expect("stats");
    assert_eq!(
        stats.total_requests(),
        1,
        "only the later request was sent: {stats:?}"
    );
    test_proxy.stop().await;
}
