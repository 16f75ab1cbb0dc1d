//! Route claims as data: the claims of the others, a release's routes, the conflict (or none).

use std::time::Duration;

use super::*;

fn route(service: &str, hosts: &[&str], paths: &[&str]) -> RouteInfo {
    RouteInfo {
        service: service.to_owned(),
        hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
        paths: paths.iter().map(|path| (*path).to_owned()).collect(),
        drain: Duration::from_secs(1),
        slow_start: Duration::ZERO,
        settings: proxy::RouteSettings::default(),
        edge: crate::edge::RouteEdgeInfo::default(),
    }
}

fn key(app: &str, env: &str) -> AppEnv {
    AppEnv::new(app, env)
}

/// The conflict's message when `ours` (of `app` in `env`) joins `others`, or `None`.
fn check(
    others: &[(&str, &str, RouteInfo)],
    app: &str,
    env: &str,
    ours: &[RouteInfo],
) -> Option<String> {
    let mut claims: BTreeMap<AppEnv, Vec<RouteInfo>> = BTreeMap::new();
    for (other_app, other_env, route) in others {
        claims
            .entry(key(other_app, other_env))
            .or_default()
            .push(route.clone());
    }
    conflict(&claims, &key(app, env), ours).map(|conflict| conflict.to_string())
}

#[test]
fn two_hostless_apps_conflict_and_the_help_says_what_to_add() {
    assert_eq!(
        check(
            &[("shop", "production", route("web", &[], &[]))],
            "blog",
            "production",
            &[route("web", &[], &[])]
        )
        .as_deref(),
        Some(
            "route `web` of `blog` in `production` answers any host on path `/`, which `web` of `shop` in `production` already routes; add `hosts = [\"blog.localhost\"]` under [routes.web]"
        )
    );
}

#[test]
fn one_app_in_two_environments_needs_a_host_per_environment() {
    let message = check(
        &[(
            "shop",
            "development",
            route("web", &["shop.localhost"], &[]),
        )],
        "shop",
        "staging",
        &[route("web", &["Shop.localhost:8080"], &[])],
    )
    .expect("a conflict");
    assert!(message.contains("host `shop.localhost`"), "{message}");
    assert!(
        message.contains("add `routes = { web = { hosts = [\"shop-staging.localhost\"] } }` under [environments.staging]"),
        "{message}"
    );
}

#[test]
fn distinct_hosts_or_paths_do_not_conflict() {
    let others = [
        ("shop", "production", route("web", &["shop.example"], &[])),
        ("api", "production", route("web", &[], &["/api"])),
    ];
    assert_eq!(
        check(
            &others,
            "blog",
            "production",
            &[route("web", &["blog.example"], &[])]
        ),
        None
    );
    // "Any host" beside specific hosts: the specific ones win, as in the proxy.
    assert_eq!(
        check(&others, "blog", "production", &[route("web", &[], &["/"])]),
        None
    );
    assert!(
        check(
            &others,
            "blog",
            "production",
            &[route("web", &[], &["/api/"])]
        )
        .is_some()
    );
}

#[test]
fn a_redeploy_does_not_conflict_with_itself() {
    assert_eq!(
        check(
            &[("shop", "production", route("web", &[], &[]))],
            "shop",
            "production",
            &[route("web", &[], &[])]
        ),
        None
    );
}
