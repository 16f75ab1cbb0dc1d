//! Unit tests of route matching and instance choice.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::ids::InstanceState;
use crate::stats::ReleaseStats;

fn route(name: &str, hosts: &[&str], prefix: &str, pools: Vec<Pool>) -> Route {
    Route::new(
        RouteSpec {
            name: RouteName::new(name),
            hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
            path_prefix: prefix.to_owned(),
            settings: RouteSettings::default(),
            edge: crate::edge::RouteEdge::default(),
        },
        pools,
        Arc::new(RouteLive::default()),
    )
}

fn pool(release: &str, weight: u8, instances: &[(&str, InstanceState)]) -> Pool {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    let instances = instances
        .iter()
        .map(|(id, state)| {
            let live = InstanceLive::new(InstanceId::new(*id), ReleaseId::new(release), addr);
            live.set_state(*state);
            Arc::new(live)
        })
        .collect();
    Pool::new(
        ReleaseId::new(release),
        weight,
        instances,
        Arc::new(ReleaseStats::new(ReleaseId::new(release))),
    )
}

fn check_route(table: &RoutingTable, host: &str, path: &str, expected: Option<&str>) {
    let found = table
        .route_for(host, path)
        .map(|route| route.name().as_str());
    assert_eq!(found, expected, "{host}{path}");
}

#[test]
fn host_then_longest_prefix_wins() {
    let table = RoutingTable::new(vec![
        route("web", &["app.test"], "/", vec![]),
        route("api", &["app.test"], "/api", vec![]),
        route("fallback", &[], "/", vec![]),
    ]);
    check_route(&table, "app.test", "/", Some("web"));
    check_route(&table, "app.test", "/api", Some("api"));
    check_route(&table, "app.test", "/api/v1", Some("api"));
    check_route(&table, "app.test", "/apix", Some("web"));
    check_route(&table, "other.test", "/api", Some("fallback"));
}

#[test]
fn hosts_are_normalised() {
    assert_eq!(normalise_host("App.Test:8080"), "app.test");
    assert_eq!(normalise_host("[::1]:8080"), "[::1]");
    assert_eq!(normalise_host("app.test"), "app.test");
    assert_eq!(normalise_host("App.Test.:8080"), "app.test");
    assert_eq!(normalise_host("app.test."), "app.test");
}

#[test]
fn only_ready_instances_of_weighted_pools_are_picked() {
    let route = route(
        "web",
        &[],
        "/",
        vec![
            pool("old", 0, &[("old-1", InstanceState::Ready)]),
            pool(
                "new",
                100,
                &[
                    ("new-1", InstanceState::Starting),
                    ("new-2", InstanceState::Ready),
                ],
            ),
        ],
    );
    for _ in 0..20 {
        let guard = route.pick(&[]).expect("an instance");
        assert_eq!(guard.instance().id().as_str(), "new-2");
    }
    assert!(route.pick(&[InstanceId::new("new-2")]).is_none());
}

#[test]
fn least_outstanding_requests_wins_inside_a_pool() {
    let route = route(
        "web",
        &[],
        "/",
        vec![pool(
            "r",
            100,
            &[
                ("busy", InstanceState::Ready),
                ("free", InstanceState::Ready),
            ],
        )],
    );
    let mut held = Vec::new();
    // Whatever the first choice, loads stay balanced: never two more on one than on the other.
    for _ in 0..10 {
        held.push(route.pick(&[]).expect("an instance"));
        let on_busy = held
            .iter()
            .filter(|guard| guard.instance().id().as_str() == "busy")
            .count();
        let on_free = held.len() - on_busy;
        assert!(on_busy.abs_diff(on_free) <= 1, "{on_busy} vs {on_free}");
    }
}

#[test]
fn weights_split_traffic_between_pools() {
    let route = route(
        "web",
        &[],
        "/",
        vec![
            pool("stable", 75, &[("s", InstanceState::Ready)]),
            pool("canary", 25, &[("c", InstanceState::Ready)]),
        ],
    );
    let n_canary = (0..4000)
        .filter(|_| {
            route
                .pick(&[])
                .expect("an instance")
                .instance()
                .id()
                .as_str()
                == "c"
        })
        .count();
    // 25% of 4000 is 1000; six standard deviations (~27 each) either side.
    assert!((840..1160).contains(&n_canary), "{n_canary}");
}

#[test]
fn every_host_of_a_large_table_finds_its_own_route() {
    // Hosts that differ in one byte, in their length, or past the first eight bytes.
    let hosts: Vec<String> = (0..2000)
        .map(|n| match n % 4 {
            0 => format!("app{n}.test"),
            1 => format!("a{n}"),
            2 => format!("{n}.a-long-shared-suffix.example.com"),
            _ => "x".repeat(n / 4 + 1),
        })
        .collect();
    let mut routes: Vec<Route> = hosts
        .iter()
        .map(|host| route(host, &[host.as_str()], "/", vec![]))
        .collect();
    routes.push(route("fallback", &[], "/", vec![]));
    let table = RoutingTable::new(routes);
    for host in &hosts {
        check_route(&table, host, "/", Some(host));
    }
    check_route(&table, "app.test", "/", Some("fallback"));
    check_route(&table, "", "/", Some("fallback"));
    check_route(&table, &"x".repeat(501), "/", Some("fallback"));
}
