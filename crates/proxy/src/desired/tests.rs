//! Unit tests of `desired`: the checks as a table, and `apply` on an in-memory proxy with no traffic.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;
use crate::config::ProxyConfig;
use crate::observed::{ObservedInstanceState, ObservedState};

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn instance(id: &str, port: u16, ready: bool) -> DesiredInstance {
    DesiredInstance {
        id: id.to_owned(),
        addr: addr(port),
        ready,
    }
}

fn pool(release: &str, weight: u8, instances: Vec<DesiredInstance>) -> DesiredPool {
    DesiredPool {
        release: release.to_owned(),
        weight,
        instances,
    }
}

fn route(name: &str, hosts: &[&str], paths: &[&str], pools: Vec<DesiredPool>) -> DesiredRoute {
    DesiredRoute {
        name: name.to_owned(),
        hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
        paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        drain_timeout_ms: 1_000,
        pools,
        ..DesiredRoute::new(name)
    }
}

fn state(routes: Vec<DesiredRoute>) -> DesiredState {
    DesiredState { routes }
}

/// The problems of a state on its own, rendered.
fn check(desired: DesiredState, expected: &[&str]) {
    let problems: Vec<String> = desired.problems().iter().map(ToString::to_string).collect();
    assert_eq!(problems, expected);
}

#[test]
fn problems_of_a_state_on_its_own() {
    check(
        state(vec![route(
            "web",
            &["demo.test"],
            &["/"],
            vec![pool("r1", 100, vec![instance("a", 1, true)])],
        )]),
        &[],
    );
    check(
        state(vec![
            route("web", &[], &["api"], vec![]),
            route("web", &["bad host"], &[], vec![]),
            route("", &[], &["/x"], vec![]),
        ]),
        &[
            "route `web`: path `api` must start with `/` and have no whitespace",
            "route `web` is listed twice",
            "route `web`: host `bad host` is empty or has whitespace",
            "route name `` is empty or has whitespace",
        ],
    );
    check(
        state(vec![
            route("web", &["Demo.test"], &["/api/"], vec![]),
            route("admin", &["demo.test:80"], &["/api"], vec![]),
        ]),
        &["host `demo.test` and path `/api` are routed by both `web` and `admin`"],
    );
    check(
        state(vec![route(
            "web",
            &[],
            &[],
            vec![
                pool("r1", 101, vec![instance("a", 1, true)]),
                pool(
                    "r1",
                    0,
                    vec![instance("a", 2, true), instance("b c", 3, false)],
                ),
                pool("", 0, vec![]),
            ],
        )]),
        &[
            "route `web`: weight 101 of release `r1` is above 100",
            "route `web`: release `r1` has two pools",
            "instance `a` is listed twice",
            "instance id `b c` is empty or has whitespace",
            "route `web`: release name is empty",
        ],
    );
}

#[test]
fn wire_format_has_defaults_and_refuses_unknown_fields() {
    let desired: DesiredState = serde_json::from_str(
        r#"{"routes":[{"name":"web","pools":[{"release":"r1","weight":100,
            "instances":[{"id":"a","addr":"127.0.0.1:1"}]}]}]}"#,
    )
    .expect("minimal state parses");
    assert_eq!(
        desired,
        state(vec![DesiredRoute {
            drain_timeout_ms: 30_000,
            ..route(
                "web",
                &[],
                &[],
                vec![pool("r1", 100, vec![instance("a", 1, false)])]
            )
        }])
    );
    let unknown = serde_json::from_str::<DesiredState>(r#"{"routes":[],"extra":1}"#);
    assert!(unknown.is_err(), "{unknown:?}");
}

#[test]
fn route_settings_are_optional_on_the_wire_both_ways() {
    // A state written before route settings existed loads with the documented defaults.
    let old: DesiredState =
        serde_json::from_str(r#"{"routes":[{"name":"web","drain_timeout_ms":5000}]}"#)
            .expect("an older state parses");
    assert_eq!(old.routes[0].settings(), RouteSettings::default());
    // A state at the defaults is written without them, so an older proxy (unknown fields refused) takes it.
    let written = serde_json::to_string(&old).expect("serialize");
    assert_eq!(
        written,
        r#"{"routes":[{"name":"web","hosts":[],"paths":[],"drain_timeout_ms":5000,"pools":[]}]}"#
    );
    // Settings that differ from the defaults go through and come back.
    let mut route = DesiredRoute::new("api");
    route.set_settings(RouteSettings {
        timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(300),
        max_body_bytes: 1024,
        max_header_fields: 50,
        protocol: UpstreamProtocol::Grpc,
        tls: crate::RouteTls {
            redirect: true,
            hsts_seconds: Some(60),
        },
        hold: Duration::from_secs(3),
    });
    let written = serde_json::to_string(&state(vec![route.clone()])).expect("serialize");
    assert!(
        written.contains(r#""timeout_ms":5000,"idle_timeout_ms":300000,"max_body_bytes":1024,"max_header_fields":50,"protocol":"grpc","tls":{"redirect":true,"hsts_seconds":60},"hold_ms":3000"#),
        "{written}"
    );
    let read: DesiredState = serde_json::from_str(&written).expect("parse");
    assert_eq!(read.routes[0].settings(), route.settings());
}

#[tokio::test]
async fn applying_twice_is_a_noop() {
    let proxy = Proxy::new(ProxyConfig::default());
    let desired = state(vec![route(
        "web",
        &["demo.test"],
        &["/"],
        vec![
            pool(
                "r1",
                90,
                vec![instance("a", 1, true), instance("b", 2, false)],
            ),
            pool("r2", 10, vec![instance("c", 3, true)]),
        ],
    )]);
    let first = apply(&proxy, &desired).expect("first apply");
    assert_eq!(first.routes_set, ["web"]);
    assert_eq!(first.instances_added, ["a", "b", "c"]);
    assert_eq!(first.marked_ready, ["a", "c"]);
    // r1 got 100 as the route's first pool and r2 got 0: both are set.
    assert_eq!(
        first.weights_set,
        [
            ("web".to_owned(), "r1".to_owned(), 90),
            ("web".to_owned(), "r2".to_owned(), 10)
        ]
    );
    let second = apply(&proxy, &desired).expect("second apply");
    assert!(second.is_noop(), "{second:?}");
    assert_eq!(second, ApplyReport::default());

    let observed = ObservedState::read(&proxy);
    let states: Vec<(&str, ObservedInstanceState)> = observed.routes[0]
        .instances
        .iter()
        .map(|instance| (instance.id.as_str(), instance.state))
        .collect();
    assert_eq!(
        states,
        [
            ("a", ObservedInstanceState::Ready),
            ("b", ObservedInstanceState::Starting),
            ("c", ObservedInstanceState::Ready)
        ]
    );
}

#[tokio::test]
async fn absent_instances_drain_then_go_and_absent_routes_follow() {
    let proxy = Proxy::new(ProxyConfig::default());
    let with_a = state(vec![
        route(
            "web",
            &[],
            &["/"],
            vec![pool("r1", 100, vec![instance("a", 1, true)])],
        ),
        route(
            "admin",
            &[],
            &["/admin"],
            vec![pool("r1", 100, vec![instance("x", 4, true)])],
        ),
    ]);
    apply(&proxy, &with_a).expect("apply with a");
    let with_b = state(vec![route(
        "web",
        &[],
        &["/"],
        vec![pool("r2", 100, vec![instance("b", 2, true)])],
    )]);
    let report = apply(&proxy, &with_b).expect("apply with b");
    assert_eq!(report.instances_draining, ["a", "x"]);
    assert_eq!(report.routes_retiring, ["admin"]);
    // The drain's state change is synchronous: `a` takes no request from here on.
    let observed = ObservedState::read(&proxy);
    assert_ne!(
        observed.instance("a").map(|instance| instance.state),
        Some(ObservedInstanceState::Ready)
    );

    eventually(|| {
        let observed = ObservedState::read(&proxy);
        observed.instance("a").is_none()
            && observed.instance("x").is_none()
            && observed.route("admin").is_none()
    })
    .await;
    let observed = ObservedState::read(&proxy);
    assert_eq!(observed.routes.len(), 1);
    assert_eq!(
        observed.routes[0]
            .weights
            .iter()
            .map(|weight| (weight.release.as_str(), weight.weight))
            .collect::<Vec<_>>(),
        [("r2", 100)]
    );
    assert!(apply(&proxy, &with_b).expect("again").is_noop());
}

#[tokio::test]
async fn a_draining_or_changed_instance_is_refused_and_nothing_changes() {
    let proxy = Proxy::new(ProxyConfig::default());
    apply(
        &proxy,
        &state(vec![route(
            "web",
            &[],
            &[],
            vec![pool("r1", 100, vec![instance("a", 1, true)])],
        )]),
    )
    .expect("apply");
    let moved = state(vec![route(
        "web",
        &[],
        &[],
        vec![pool("r1", 100, vec![instance("a", 9, true)])],
    )]);
    let error = apply(&proxy, &moved).expect_err("a moved instance is refused");
    assert_eq!(
        error.to_string(),
        "desired state is invalid: instance `a` is live on route `web`, release `r1` at `127.0.0.1:1`; \
         an id is never reused for another one"
    );

    // Hold `a` in flight so its drain lasts.
    let table = proxy.routing_table();
    let guard = table.routes()[0].pick(&[]).expect("a is ready");
    apply(&proxy, &state(vec![route("web", &[], &[], vec![])])).expect("drop a");
    let back = state(vec![route(
        "web",
        &[],
        &[],
        vec![pool("r1", 100, vec![instance("a", 1, true)])],
    )]);
    let error = apply(&proxy, &back).expect_err("a draining instance is refused");
    assert!(
        matches!(error, ApplyError::Invalid { ref problems } if problems == &[Problem::InstanceDraining { instance: "a".into() }]),
        "{error}"
    );
    assert_eq!(
        ObservedState::read(&proxy)
            .instance("a")
            .map(|instance| instance.state),
        Some(ObservedInstanceState::Draining)
    );
    drop(guard);
    eventually(|| ObservedState::read(&proxy).instance("a").is_none()).await;
    // Once gone, the id may come back.
    assert_eq!(apply(&proxy, &back).expect("a again").marked_ready, ["a"]);
}

#[tokio::test]
async fn several_paths_become_one_proxy_route_each() {
    let proxy = Proxy::new(ProxyConfig::default());
    let desired = state(vec![route(
        "web",
        &["demo.test"],
        &["/api", "/admin"],
        vec![pool("r1", 100, vec![instance("a", 1, true)])],
    )]);
    let report = apply(&proxy, &desired).expect("apply");
    assert_eq!(report.routes_set, ["web /api", "web /admin"]);
    assert_eq!(report.instances_added, ["a /api", "a /admin"]);
    let table = proxy.routing_table();
    assert_eq!(
        table
            .route_for("demo.test", "/admin/x")
            .map(|route| route.name().to_string()),
        Some("web /admin".to_owned())
    );
    assert!(table.route_for("demo.test", "/other").is_none());

    let observed = ObservedState::read(&proxy);
    let routes: Vec<(&str, &str, Vec<&str>)> = observed
        .routes
        .iter()
        .map(|route| {
            (
                route.name.as_str(),
                route.path.as_str(),
                route
                    .instances
                    .iter()
                    .map(|instance| instance.id.as_str())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        routes,
        [("web", "/admin", vec!["a"]), ("web", "/api", vec!["a"])]
    );
    assert!(apply(&proxy, &desired).expect("again").is_noop());
}

/// Polls a condition (drains run in background tasks) for up to 10 s.
async fn eventually(condition: impl Fn() -> bool) {
    for _ in 0..1_000 {
        if condition() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met within 10 s");
}

#[tokio::test]
async fn only_new_ready_instances_weighted_in_on_a_serving_route_with_a_warm_path_are_warmed() {
    // (what the second state changes, instances `add_to_warm` answers and leaves added but not ready)
    let with_warm = |mut route: DesiredRoute| {
        route.warm_path = Some("/health".to_owned());
        route
    };
    let serving = || pool("r1", 100, vec![instance("a", 1, true)]);
    let cases: Vec<(&str, Option<DesiredRoute>, DesiredRoute, &[&str])> = vec![
        (
            "a switch to a new release",
            None,
            with_warm(route(
                "web",
                &[],
                &["/"],
                vec![pool("r2", 100, vec![instance("b", 2, true)])],
            )),
            &["b"],
        ),
        (
            "a canary step beside the serving release",
            None,
            with_warm(route(
                "web",
                &[],
                &["/"],
                vec![
                    pool("r1", 90, vec![instance("a", 1, true)]),
                    pool(
                        "r2",
                        10,
                        vec![instance("b", 2, true), instance("c", 3, true)],
                    ),
                ],
            )),
            &["b", "c"],
        ),
        (
            "no warm path",
            None,
            route(
                "web",
                &[],
                &["/"],
                vec![pool("r2", 100, vec![instance("b", 2, true)])],
            ),
            &[],
        ),
        (
            "a pool of weight 0",
            None,
            with_warm(route(
                "web",
                &[],
                &["/"],
                vec![serving(), pool("r2", 0, vec![instance("b", 2, true)])],
            )),
            &[],
        ),
        (
            "an instance not ready yet",
            None,
            with_warm(route(
                "web",
                &[],
                &["/"],
                vec![
                    pool("r1", 90, vec![instance("a", 1, true)]),
                    pool("r2", 10, vec![instance("b", 2, false)]),
                ],
            )),
            &[],
        ),
        (
            "the route's first release (nothing serves it)",
            Some(with_warm(route("web", &[], &["/"], Vec::new()))),
            with_warm(route(
                "web",
                &[],
                &["/"],
                vec![pool("r2", 100, vec![instance("b", 2, true)])],
            )),
            &[],
        ),
        (
            "a gRPC route",
            Some({
                let mut grpc = with_warm(route("web", &[], &["/"], vec![serving()]));
                grpc.protocol = UpstreamProtocol::Grpc;
                grpc
            }),
            {
                let mut grpc = with_warm(route(
                    "web",
                    &[],
                    &["/"],
                    vec![pool("r2", 100, vec![instance("b", 2, true)])],
                ));
                grpc.protocol = UpstreamProtocol::Grpc;
                grpc
            },
            &[],
        ),
    ];
    for (case, first, second, expected) in cases {
        let proxy = Proxy::new(ProxyConfig::default());
        let first = first.unwrap_or_else(|| route("web", &[], &["/"], vec![serving()]));
        apply(&proxy, &state(vec![first])).expect("first apply");
        let second = state(vec![second]);
        let targets = add_to_warm(&proxy, &second).expect("add to warm");
        let warmed: Vec<&str> = targets
            .iter()
            .map(|target| target.instance.id().as_str())
            .collect();
        assert_eq!(warmed, expected, "{case}");
        for target in &targets {
            assert_eq!(target.path, "/health", "{case}");
            assert_eq!(
                target.instance.state(),
                InstanceState::Starting,
                "{case}: a warmed instance takes no traffic before `apply`"
            );
        }
        // `apply` carries on from there as it would have.
        let report = apply(&proxy, &second).expect("second apply");
        let mut ready = report.marked_ready.clone();
        ready.retain(|id| expected.contains(&id.as_str()));
        assert_eq!(ready, expected, "{case}");
    }
}

#[test]
fn a_warm_path_is_a_path() {
    let mut bad = route("web", &[], &["/"], Vec::new());
    bad.warm_path = Some("health check".to_owned());
    check(
        state(vec![bad]),
        &["route `web`: path `health check` must start with `/` and have no whitespace"],
    );
}
