//! Unit tests of the edge controls: token-bucket arithmetic on an injected clock, bounded memory of the
//! per-client table, the order of refusals, and which `X-Forwarded-For` entry is believed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use hyper::header::{HeaderMap, HeaderValue};
use tokio::time::Instant;

use super::*;
use crate::config::ProxyConfig;

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP address")
}

fn per_second(requests: u32, burst: u32) -> RateLimit {
    RateLimit {
        requests,
        per: Duration::from_secs(1),
        burst,
    }
}

/// Sends `rate` requests per second for `seconds` from `client`, one every `1/rate` s; counts passes.
fn offered(table: &RateTable, limit: &RateLimit, client: IpAddr, rate: u32, seconds: u32) -> u32 {
    let start = Instant::now();
    let step = Duration::from_secs(1) / rate;
    (0..rate * seconds)
        .filter(|request_idx| {
            table
                .take(client, limit, start + step * *request_idx)
                .is_ok()
        })
        .count() as u32
}

#[test]
fn a_client_at_five_times_the_limit_gets_the_burst_then_the_rate() {
    let table = RateTable::default();
    let limit = per_second(20, 40);
    let passed = offered(&table, &limit, ip("192.0.2.1"), 100, 10);
    // 40 at once, then 20 per second for the remaining ~10 s.
    assert!((235..=242).contains(&passed), "{passed} passed");
}

#[test]
fn a_client_under_the_limit_is_never_refused() {
    let table = RateTable::default();
    let passed = offered(&table, &per_second(20, 20), ip("192.0.2.1"), 19, 10);
    assert_eq!(passed, 190);
}

#[test]
fn another_client_has_its_own_bucket() {
    let table = RateTable::default();
    let limit = per_second(20, 40);
    let now = Instant::now();
    for _ in 0..40 {
        assert!(table.take(ip("192.0.2.1"), &limit, now).is_ok());
    }
    assert!(table.take(ip("192.0.2.1"), &limit, now).is_err());
    assert!(table.take(ip("192.0.2.2"), &limit, now).is_ok());
}

#[test]
fn a_refusal_says_when_the_next_token_comes() {
    let table = RateTable::default();
    let limit = RateLimit {
        requests: 1,
        per: Duration::from_secs(2),
        burst: 1,
    };
    let now = Instant::now();
    assert_eq!(table.take(ip("192.0.2.1"), &limit, now), Ok(()));
    let wait = table
        .take(ip("192.0.2.1"), &limit, now + Duration::from_millis(500))
        .expect_err("the bucket is empty");
    assert_eq!(wait, Duration::from_millis(1500));
    assert_eq!(
        table.take(ip("192.0.2.1"), &limit, now + Duration::from_secs(2)),
        Ok(())
    );
}

#[test]
fn the_table_stays_bounded_when_many_addresses_pass_by() {
    let table = RateTable::with_capacity(160);
    let limit = per_second(20, 40);
    let start = Instant::now();
    for n in 0..10_000u32 {
        let client = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        let now = start + Duration::from_millis(u64::from(n));
        assert!(table.take(client, &limit, now).is_ok());
    }
    assert!(table.len() <= 160, "{} tracked", table.len());
}

#[test]
fn an_active_client_keeps_its_bucket_when_idle_ones_are_evicted() {
    // 32 addresses per shard. The table's hasher is random per run, so the counts are chosen for every
    // hash: 2,000 quiet clients fill each of the 16 shards (125 each on average), and 200 new ones put at
    // least one in the busy client's shard (all miss it with p = (15/16)^200 < 3e-6) but never 32 (mean
    // 12.5). 50 new clients (the first version of this test, 8 per shard) crossed the bound about 1 run in 100.
    let table = RateTable::with_capacity(512);
    let limit = RateLimit {
        requests: 1,
        per: Duration::from_secs(10),
        burst: 1,
    };
    let start = Instant::now();
    let client = |n: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
    // The quiet clients pass once and go quiet; their buckets are full again 10 s later.
    for n in 0..2_000 {
        assert!(table.take(client(n), &limit, start).is_ok());
    }
    assert_eq!(table.len(), 512, "every shard holds its bound");
    let busy = ip("192.0.2.1");
    assert!(
        table
            .take(busy, &limit, start + Duration::from_secs(9))
            .is_ok()
    );
    // New clients come when the quiet buckets are full: those make room, the busy one stays empty.
    for n in 10_000..10_200 {
        assert!(
            table
                .take(client(n), &limit, start + Duration::from_secs(15))
                .is_ok()
        );
    }
    assert!(table.len() <= 512, "{} tracked", table.len());
    assert!(
        table
            .take(busy, &limit, start + Duration::from_millis(15_500))
            .is_err(),
        "the busy client's empty bucket was evicted"
    );
}

#[test]
fn eviction_drops_the_refilled_buckets_and_then_the_least_recently_seen() {
    let start = Instant::now();
    let key = |n: u32| HashedAddr {
        hash: u64::from(n),
        addr: IpAddr::V4(Ipv4Addr::from(n)),
    };
    let bucket = |tokens: f64, secs: u64| Bucket {
        tokens,
        last: start + Duration::from_secs(secs),
    };
    // One token per 10 s, burst 1, looked at 15 s after the start.
    let now = start + Duration::from_secs(15);
    let mut shard = Shard::default();
    shard.insert(key(1), bucket(0.0, 0)); // refilled by now: same as no bucket
    shard.insert(key(2), bucket(0.0, 9)); // 0.6 tokens: active
    shard.insert(key(3), bucket(0.0, 12)); // 0.3 tokens: active
    evict(&mut shard, 1.0, 0.1, now, 3);
    let mut left: Vec<u32> = shard.keys().map(|key| key.hash as u32).collect();
    left.sort_unstable();
    assert_eq!(left, vec![2, 3], "only the refilled bucket goes");
    // All active and at the bound: the least recently seen goes.
    shard.insert(key(4), bucket(0.0, 14));
    evict(&mut shard, 1.0, 0.1, now, 3);
    let mut left: Vec<u32> = shard.keys().map(|key| key.hash as u32).collect();
    left.sort_unstable();
    assert_eq!(
        left,
        vec![3, 4],
        "the least recently seen active bucket goes"
    );
}

fn edge_with(change: impl FnOnce(&mut RouteEdge)) -> RouteEdge {
    let mut edge = RouteEdge::default();
    change(&mut edge);
    edge
}

fn admit(edge: &RouteEdge, client: &str, path: &str) -> Result<Admission, ErrorKindOf> {
    let table = RateTable::default();
    edge.admit(
        &RouteName::new("web"),
        &table,
        ip(client),
        path,
        Instant::now(),
        SystemTime::now,
    )
    .map_err(|error| ErrorKindOf(error.kind()))
}

#[derive(Debug, PartialEq, Eq)]
struct ErrorKindOf(crate::ids::ErrorKind);

fn maintenance(allow: &[&str]) -> Maintenance {
    Maintenance {
        page: Bytes::from_static(b"<p>back soon</p>"),
        retry_after: Duration::from_secs(30),
        allow: allow
            .iter()
            .map(|text| text.parse().expect("network"))
            .collect(),
        bypass_paths: vec!["/up".to_owned()],
    }
}

#[test]
fn edge_decisions() {
    use crate::ids::ErrorKind::{Forbidden, Maintenance as InMaintenance};
    let open = RouteEdge::default();
    assert!(open.is_open());
    assert_eq!(admit(&open, "192.0.2.1", "/"), Ok(Admission::Pass));

    let internal = edge_with(|edge| edge.allow = vec!["10.0.0.0/8".parse().expect("network")]);
    assert_eq!(admit(&internal, "10.1.2.3", "/"), Ok(Admission::Pass));
    assert_eq!(
        admit(&internal, "192.0.2.1", "/"),
        Err(ErrorKindOf(Forbidden))
    );
    // An IPv4 client seen on a dual-stack socket is the same client.
    assert_eq!(
        admit(&internal, "::ffff:10.1.2.3", "/"),
        Ok(Admission::Pass)
    );

    let down = edge_with(|edge| edge.maintenance = Some(maintenance(&["203.0.113.0/24"])));
    assert_eq!(
        admit(&down, "192.0.2.1", "/"),
        Err(ErrorKindOf(InMaintenance))
    );
    assert_eq!(admit(&down, "203.0.113.9", "/"), Ok(Admission::Pass));
    assert_eq!(admit(&down, "192.0.2.1", "/up"), Ok(Admission::Pass));
    assert_eq!(
        admit(&down, "192.0.2.1", "/up/more"),
        Err(ErrorKindOf(InMaintenance))
    );

    // The allow list comes first: maintenance is not shown to clients who may not use the route at all.
    let both = edge_with(|edge| {
        edge.allow = vec!["10.0.0.0/8".parse().expect("network")];
        edge.maintenance = Some(maintenance(&[]));
    });
    assert_eq!(admit(&both, "192.0.2.1", "/"), Err(ErrorKindOf(Forbidden)));

    let until = SystemTime::now() + Duration::from_secs(60);
    let paused = edge_with(|edge| edge.paused_until = Some(until));
    assert_eq!(
        admit(&paused, "192.0.2.1", "/"),
        Ok(Admission::Hold { until })
    );
    let ended = edge_with(|edge| {
        edge.paused_until = Some(SystemTime::now() - Duration::from_secs(1));
    });
    assert_eq!(admit(&ended, "192.0.2.1", "/"), Ok(Admission::Pass));
}

fn forwarded(values: &[&str]) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for value in values {
        headers.append(
            "x-forwarded-for",
            HeaderValue::from_str(value).expect("value"),
        );
    }
    headers
}

#[test]
fn client_address_believes_forwarded_for_only_from_trusted_proxies() {
    let config = ProxyConfig {
        trusted_proxies: vec!["10.0.0.0/8".parse().expect("network")],
        ..ProxyConfig::default()
    };
    let cases: &[(&str, &[&str], &str)] = &[
        // An untrusted peer's header is ignored: it could say anything.
        ("192.0.2.1", &["198.51.100.7"], "192.0.2.1"),
        // A trusted peer: the entry it added (the rightmost) is the client.
        ("10.0.0.1", &["198.51.100.7"], "198.51.100.7"),
        // A client that sends its own header to a trusted CDN cannot pick its address.
        ("10.0.0.1", &["1.2.3.4, 198.51.100.7"], "198.51.100.7"),
        // Several trusted hops: skip them all from the right.
        ("10.0.0.1", &["198.51.100.7, 10.0.0.2"], "198.51.100.7"),
        ("10.0.0.1", &["198.51.100.7", "10.0.0.2"], "198.51.100.7"),
        // Nothing forwarded, or garbage: the peer.
        ("10.0.0.1", &[], "10.0.0.1"),
        ("10.0.0.1", &["not-an-ip"], "10.0.0.1"),
        ("10.0.0.1", &["198.51.100.7, junk"], "10.0.0.1"),
    ];
    for (peer, values, expected) in cases {
        assert_eq!(
            client_addr(&config, ip(peer), &forwarded(values)),
            ip(expected),
            "peer {peer}, X-Forwarded-For {values:?}"
        );
    }
}

#[test]
fn desired_edge_problems() {
    let mut route = DesiredRoute::new("web");
    route.allow = vec!["10.0.0.0/8".into(), "10.0.0.0/33".into()];
    route.rate_limit = Some(DesiredRateLimit {
        requests: 0,
        per_ms: 1000,
        burst: 1,
    });
    route.maintenance = Some(DesiredMaintenance {
        page_html: "x".repeat(MAX_MAINTENANCE_PAGE_BYTES + 1),
        retry_after_s: 30,
        allow: vec!["nope".into()],
        bypass_paths: Vec::new(),
    });
    let found: Vec<String> = problems(&route).iter().map(ToString::to_string).collect();
    assert_eq!(
        found,
        [
            "route `web`: `10.0.0.0/33` is not an IP address or network (`10.0.0.0/8`)",
            "route `web`: `nope` is not an IP address or network (`10.0.0.0/8`)",
            "route `web`: rate limit 0 per 1000 ms with burst 1 needs all three above 0",
            "route `web`: maintenance page is 262145 bytes, more than the 262144 accepted",
        ]
    );
}

#[test]
fn the_wall_clock_is_read_only_for_a_paused_route() {
    let limited = edge_with(|edge| {
        edge.allow = vec!["192.0.2.0/24".parse().expect("network")];
        edge.rate_limit = Some(per_second(10, 10));
    });
    let table = RateTable::default();
    let admitted = limited.admit(
        &RouteName::new("web"),
        &table,
        ip("192.0.2.1"),
        "/",
        Instant::now(),
        || panic!("the wall clock was read for a route without a pause"),
    );
    assert_eq!(
        admitted.map_err(|error| ErrorKindOf(error.kind())),
        Ok(Admission::Pass)
    );
}
