//! The waiting queue: with no ready instance, requests wait and go on as soon as one is ready; past the
//! bound they get 503 with Retry-After.

use std::time::Duration;

use proxy::{InstanceId, ProxyConfig, WaitingConfig};

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, demo, get};

fn config(max_wait: Duration, max_waiting: usize) -> ProxyConfig {
    ProxyConfig {
        waiting: WaitingConfig {
            max_wait,
            max_waiting,
            retry_after: Duration::from_secs(7),
        },
        ..ProxyConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_wait_for_the_first_ready_instance() {
    let process = demo("A");
    let test_proxy = TestProxy::start(config(Duration::from_secs(20), 100)).await;
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
    let test_proxy = TestProxy::start(config(Duration::from_millis(300), 100)).await;
    let response = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_queue_length_the_answer_is_503_at_once() {
    let test_proxy = TestProxy::start(config(Duration::from_secs(30), 2)).await;
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
