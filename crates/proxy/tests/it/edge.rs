//! Edge controls on a live proxy: a paused route holds requests in the waiting queue (bounded in time
//! and count, then 503) and lets them go on when a new snapshot lifts the pause; maintenance and rate
//! limit answers carry their headers; metrics count them by kind.

use std::time::{Duration, SystemTime};

use proxy::{ProxyConfig, RouteEdge, RouteSettings, RouteSpec, WaitingConfig};

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, demo, get, route};

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

fn set_edge(test_proxy: &TestProxy, edge: RouteEdge) {
    test_proxy.proxy.set_route(RouteSpec {
        name: route(),
        hosts: vec![HOST.to_owned()],
        path_prefix: "/".to_owned(),
        settings: test_proxy.settings,
        edge,
    });
}

fn paused_for(duration: Duration) -> RouteEdge {
    RouteEdge {
        paused_until: Some(SystemTime::now() + duration),
        ..RouteEdge::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_route_holds_requests_until_a_snapshot_lifts_the_pause() {
    let process = demo("A");
    let test_proxy = start(Duration::from_secs(20), 100).await;
    test_proxy.add_ready("a", "A", process.addr());
    set_edge(&test_proxy, paused_for(Duration::from_secs(60)));
    let addr = test_proxy.addr;
    let held: Vec<_> = (0..5)
        .map(|_| tokio::spawn(async move { get(addr, HOST, "/").await }))
        .collect();
    assert_eventually!(
        test_proxy.proxy.waiting()[0].1 == 5,
        "requests are not held: {:?}",
        test_proxy.proxy.waiting()
    );
    assert!(held.iter().all(|request| !request.is_finished()));
    set_edge(&test_proxy, RouteEdge::default());
    for request in held {
        let response = request.await.expect("join");
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"A\n");
    }
    assert_eq!(test_proxy.proxy.waiting()[0].1, 0);
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_ends_by_itself_at_its_end_time() {
    let process = demo("A");
    let test_proxy = start(Duration::from_secs(20), 100).await;
    test_proxy.add_ready("a", "A", process.addr());
    set_edge(&test_proxy, paused_for(Duration::from_millis(500)));
    let response = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(response.status(), 200);
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_past_the_wait_bound_or_the_queue_length_answers_503() {
    let process = demo("A");
    let test_proxy = start(Duration::from_millis(300), 2).await;
    test_proxy.add_ready("a", "A", process.addr());
    set_edge(&test_proxy, paused_for(Duration::from_secs(60)));
    let response = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "7");

    let long = start(Duration::from_secs(20), 2).await;
    long.add_ready("a", "A", process.addr());
    set_edge(&long, paused_for(Duration::from_secs(60)));
    let addr = long.addr;
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, HOST, "/").await }))
        .collect();
    assert_eventually!(long.proxy.waiting()[0].1 == 2, "requests are not held");
    let refused = get(long.addr, HOST, "/").await;
    assert_eq!(
        refused.status(),
        503,
        "the third request finds the queue full"
    );
    set_edge(&long, RouteEdge::default());
    for request in held {
        assert_eq!(request.await.expect("join").status(), 200);
    }
    let metrics = proxy::metrics::render(&long.proxy);
    assert!(metrics.contains("queue_full"), "{metrics}");
    long.stop().await;
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_rate_limit_answers_carry_their_headers() {
    let process = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", process.addr());
    set_edge(
        &test_proxy,
        RouteEdge {
            maintenance: Some(proxy::Maintenance {
                page: bytes::Bytes::from_static(b"<p>later</p>"),
                retry_after: Duration::from_secs(120),
                allow: Vec::new(),
                bypass_paths: vec!["/health".to_owned()],
            }),
            ..RouteEdge::default()
        },
    );
    let page = get(test_proxy.addr, HOST, "/").await;
    assert_eq!(page.status(), 503);
    assert_eq!(page.headers()["retry-after"], "120");
    assert_eq!(page.headers()["cache-control"], "no-store");
    assert_eq!(page.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.body().as_ref(), b"<p>later</p>");
    assert_eq!(get(test_proxy.addr, HOST, "/health").await.status(), 200);

    set_edge(
        &test_proxy,
        RouteEdge {
            rate_limit: Some(proxy::RateLimit {
                requests: 1,
                per: Duration::from_secs(10),
                burst: 2,
            }),
            ..RouteEdge::default()
        },
    );
    let statuses: Vec<u16> = {
        let mut statuses = Vec::new();
        for _ in 0..3 {
            statuses.push(get(test_proxy.addr, HOST, "/").await.status().as_u16());
        }
        statuses
    };
    assert_eq!(statuses, [200, 200, 429]);
    let limited = get(test_proxy.addr, HOST, "/").await;
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|value| value.parse().ok())
        .expect("numeric Retry-After");
    assert!((1..=10).contains(&retry_after), "{retry_after}");
    test_proxy.stop().await;
}
