//! Retries: a killed instance costs no idempotent request; passive health takes it out and brings it back.

use std::time::Duration;

use proxy::{ErrorKind, InstanceId, ProxyConfig, ReleaseId};
use testkit::demo::DemoApp;
use testkit::load::Load;

use crate::assert_eventually;
use crate::support::{HOST, TestProxy, demo, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_of_two_instances_fails_no_idempotent_request() {
    let mut process_1 = demo("A");
    let process_2 = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    let proxy = &test_proxy.proxy;
    test_proxy.add_ready("a-1", "A", process_1.addr());
    test_proxy.add_ready("a-2", "A", process_2.addr());

    // Slow-ish requests so some are in flight on the killed instance when it dies.
    let load = Load::new(test_proxy.addr)
        .host(HOST)
        .path("/sleep?ms=20")
        .concurrency(8)
        .duration(Duration::from_secs(20))
        .start();
    let release = ReleaseId::new("A");
    assert_eventually!(
        proxy.stats(&release).expect("stats").total_requests() > 50,
        "no traffic reached release A"
    );
    process_1.kill9().expect("kill -9");
    let after_kill = proxy.stats(&release).expect("stats").total_requests();
    assert_eventually!(
        proxy.stats(&release).expect("stats").total_requests() > after_kill + 100,
        "traffic did not go on after the kill"
    );
    let report = load.stop().await;

    assert_eq!(report.failed, 0, "{report}");
    let stats = proxy.stats(&release).expect("stats");
    assert!(stats.error_count(ErrorKind::Retried) >= 1, "{stats:?}");
    // Passive health took the dead instance out.
    let table = proxy.routing_table();
    let dead = table.routes()[0].pools()[0]
        .instances()
        .iter()
        .find(|instance| instance.id() == &InstanceId::new("a-1"))
        .map(|instance| instance.is_down());
    assert_eq!(dead, Some(true), "{stats:?}");
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_out_instance_is_probed_back_in() {
    let config = ProxyConfig {
        passive_health: proxy::PassiveHealthConfig {
            consecutive_failures: 1,
            probe_interval: Duration::from_millis(50),
        },
        ..ProxyConfig::default()
    };
    // A port bound but not listening refuses connections, and nothing else (another test, a client's
    // source port) can take it meanwhile, which a merely free port does not promise.
    let holder = tokio::net::TcpSocket::new_v4().expect("socket");
    holder
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    let port = holder.local_addr().expect("local addr").port();
    let test_proxy = TestProxy::start(config).await;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let backup = demo("backup");
    test_proxy.add_ready("late", "A", addr);
    test_proxy.add_ready("backup", "A", backup.addr());
    let late_instance = || {
        test_proxy.proxy.routing_table().routes()[0].pools()[0]
            .instances()
            .iter()
            .find(|instance| instance.id().as_str() == "late")
            .map(|instance| instance.is_down())
    };

    // Nothing listens on `late` yet: its first connect fails, it is taken out, the request is retried.
    for _ in 0..20 {
        let response = get(test_proxy.addr, HOST, "/").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.body().as_ref(), b"backup\n");
        if late_instance() == Some(true) {
            break;
        }
    }
    assert_eq!(late_instance(), Some(true));
    drop(holder);
    let _late = DemoApp::new()
        .version("late")
        .port(port)
        .spawn()
        .expect("spawn");
    assert_eventually!(
        late_instance() == Some(false),
        "the probe never brought `late` back"
    );
    test_proxy.stop().await;
}
