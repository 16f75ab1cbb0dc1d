//! The default maintenance page escapes the operator's message; edge fields reach the desired route.

use super::*;

#[test]
fn the_default_page_escapes_the_message() {
    let page = default_page(Some("<script>alert('x')</script> & \"more\""));
    assert!(
        page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;more&quot;")
    );
    assert!(!page.contains("<script>"));
    assert!(default_page(None).contains("back shortly"));
}

#[test]
fn maintenance_and_pause_reach_every_route_of_the_environment() {
    let route = RouteInfo {
        service: "web".to_owned(),
        hosts: vec!["shop.test".to_owned()],
        paths: Vec::new(),
        drain: Duration::from_secs(1),
        slow_start: Duration::ZERO,
        settings: proxy::RouteSettings::default(),
        edge: RouteEdgeInfo {
            rate_limit: Some(DesiredRateLimit {
                requests: 20,
                per_ms: 1000,
                burst: 40,
            }),
            allow: vec!["10.0.0.0/8".to_owned()],
            health_path: Some("/up".to_owned()),
        },
    };
    let env_edge = EnvEdge {
        maintenance: Some(MaintenanceMode {
            page_html: "<p>down</p>".to_owned(),
            message: None,
            custom_page: true,
            allow: vec!["203.0.113.0/24".to_owned()],
            retry_after_s: 60,
            since_ms: 0,
            by: "ops".to_owned(),
        }),
        pause: Some(Pause {
            until_ms: 10_000,
            since_ms: 0,
        }),
    };
    let mut desired = DesiredRoute::new("shop/production/web");
    apply(&mut desired, &route, Some(&env_edge), 5_000);
    assert_eq!(desired.allow, ["10.0.0.0/8"]);
    assert_eq!(desired.rate_limit.map(|limit| limit.burst), Some(40));
    let maintenance = desired.maintenance.clone().expect("maintenance");
    assert_eq!(maintenance.bypass_paths, ["/up"]);
    assert_eq!(maintenance.allow, ["203.0.113.0/24"]);
    assert_eq!(desired.paused_until_unix_ms, Some(10_000));
    assert!(desired.edge().maintenance.is_some());

    // A pause past its end is not sent: the proxy would let requests through anyway.
    let mut later = DesiredRoute::new("shop/production/web");
    apply(&mut later, &route, Some(&env_edge), 10_000);
    assert_eq!(later.paused_until_unix_ms, None);
}
