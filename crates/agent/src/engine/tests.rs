//! The runtime view against a proxy that refuses: a refused change is undone.

use super::*;

/// An engine in `dir` whose proxy is not running: every push fails.
fn engine_without_proxy(dir: &std::path::Path) -> Engine {
    let paths = Paths::new(dir.to_owned());
    let driver = Arc::new(
        driver::process::ProcessDriver::new(paths.instances.clone()).expect("process driver"),
    );
    let (events, _) = broadcast::channel(16);
    let store = Arc::new(Store::open_in_memory().expect("store"));
    let master_key = crate::secrets::MasterKey::generate();
    let registry = crate::registry::Registry::for_test(dir, &store, &master_key);
    Engine {
        store,
        drivers: crate::drivers::Drivers::new(driver),
        proxy: ProxyLink::new(
            dir.join("proxy"),
            std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        ),
        proxy_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        artifacts: ArtifactStore::new(dir.join("artifacts")),
        master_key,
        registry,
        placement: driver::cgroup::Placement::Off {
            reason: "a test".to_owned(),
        },
        isolation: driver::Isolation::None {
            user: "test".to_owned(),
            reason: "tests start no app".to_owned(),
        },
        paths,
        events,
        runtimes: Mutex::new(BTreeMap::new()),
        proxy_push: tokio::sync::Mutex::new(()),
        shutdown: CancellationToken::new(),
        signalled: tokio::sync::Notify::new(),
        counters: Mutex::new(crate::metrics::Counters::default()),
        certs: crate::certs::Certs::new(crate::certs::CertsConfig::new(
            "production",
            None,
            None,
            false,
        )),
        api_fingerprint: None,
        api_certificate: None,
        edge: Mutex::new(BTreeMap::new()),
        cron: crate::cron::CronRuns::default(),
    }
}

#[tokio::test]
async fn a_change_the_proxy_refuses_is_undone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_without_proxy(dir.path());
    let key = AppEnv::new("shop", "production");
    let serving = RouteInfo {
        service: "web".to_owned(),
        hosts: vec!["shop.localhost".to_owned()],
        paths: Vec::new(),
        drain: Duration::from_secs(1),
        slow_start: Duration::ZERO,
        settings: proxy::RouteSettings::default(),
        edge: crate::edge::RouteEdgeInfo::default(),
    };
    engine.with_runtime(&key, |runtime| {
        runtime.routes = vec![serving.clone()];
        runtime.weights = vec![(ReleaseNumber::new(1), 100)];
    });
    let refused = engine
        .change_routing(&key, |runtime| {
            runtime.routes[0].hosts.clear();
            runtime.weights = vec![(ReleaseNumber::new(2), 100)];
        })
        .await;
    assert!(refused.is_err(), "no proxy runs, so the push fails");
    let runtime = engine.runtime(&key);
    assert_eq!(runtime.routes, vec![serving]);
    assert_eq!(runtime.weights, vec![(ReleaseNumber::new(1), 100)]);
}

#[test]
fn a_routes_slow_start_reaches_the_proxy_and_zero_is_left_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let engine = engine_without_proxy(dir.path());
    let key = AppEnv::new("shop", "production");
    let route = |slow_start| RouteInfo {
        service: "web".to_owned(),
        hosts: vec!["shop.localhost".to_owned()],
        paths: Vec::new(),
        drain: Duration::from_secs(1),
        slow_start,
        settings: proxy::RouteSettings::default(),
        edge: crate::edge::RouteEdgeInfo::default(),
    };
    engine.with_runtime(&key, |runtime| {
        runtime.routes = vec![route(Duration::from_millis(1_500))];
        runtime.weights = vec![(ReleaseNumber::new(1), 100)];
    });
    assert_eq!(engine.desired_state().routes[0].slow_start_ms, 1_500);
    engine.with_runtime(&key, |runtime| {
        runtime.routes = vec![route(Duration::ZERO)];
    });
    let state = engine.desired_state();
    assert_eq!(state.routes[0].slow_start_ms, 0);
    // Off, the field is not sent: a proxy of before slow start takes the state.
    let json = serde_json::to_string(&state).expect("state as JSON");
    assert!(!json.contains("slow_start"), "{json}");
}
