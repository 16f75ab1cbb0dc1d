use super::*;

fn reading(requests: u64, errors: u64, buckets: &[(u64, u64)]) -> Reading {
    Reading {
        requests,
        errors,
        buckets: buckets.to_vec(),
    }
}

#[test]
fn the_windowed_p99_forgets_what_came_before_the_window() {
    // 100 slow requests early in the release's life, then 1000 fast ones.
    let start = reading(100, 0, &[(1_000, 0), (100_000, 100), (1_000_000, 100)]);
    let now = reading(
        1_100,
        0,
        &[(1_000, 1_000), (100_000, 1_100), (1_000_000, 1_100)],
    );
    assert_eq!(
        now.sample().p99_us,
        100_000,
        "over its whole life the slow start dominates the p99"
    );
    let window = now.minus(&start);
    assert_eq!(window.sample().p99_us, 1_000);
    assert_eq!(window.sample().latency_count, 1_000);
    assert_eq!(window.sample().requests, 1_000);
}

#[test]
fn baselines_add_up_bucket_by_bucket() {
    let a = reading(10, 1, &[(1_000, 10), (2_000, 10)]);
    let b = reading(90, 2, &[(1_000, 0), (2_000, 90)]);
    let sum = Reading::default().plus(&a).plus(&b);
    assert_eq!(sum.requests, 100);
    assert_eq!(sum.errors, 3);
    assert_eq!(sum.sample().p99_us, 2_000);
    assert_eq!(Reading::default().sample().p99_us, 0, "no requests, no p99");
}

fn instance(
    release: ReleaseNumber,
    service: &str,
    phase: InstancePhase,
) -> crate::engine::RuntimeInstance {
    crate::engine::RuntimeInstance {
        release,
        service: service.to_owned(),
        port: 1,
        host: std::net::Ipv4Addr::LOCALHOST.into(),
        phase,
        warm_until: None,
        unhealthy: false,
    }
}

#[test]
fn only_the_release_that_served_just_before_stays_warm() {
    use InstancePhase::{Ready, Starting, Warm};
    let instances: std::collections::BTreeMap<String, crate::engine::RuntimeInstance> = [
        ("r1-web", instance(ReleaseNumber::new(1), "web", Warm)),
        (
            "r1-worker",
            instance(ReleaseNumber::new(1), "worker", Ready),
        ),
        ("r2-web", instance(ReleaseNumber::new(2), "web", Ready)),
        (
            "r2-worker",
            instance(ReleaseNumber::new(2), "worker", Ready),
        ),
        ("r3-web", instance(ReleaseNumber::new(3), "web", Ready)),
        (
            "r3-worker",
            instance(ReleaseNumber::new(3), "worker", Ready),
        ),
        ("r4-web", instance(ReleaseNumber::new(4), "web", Starting)),
    ]
    .into_iter()
    .map(|(id, instance)| (id.to_owned(), instance))
    .collect();
    let routed = std::collections::BTreeSet::from(["web".to_owned()]);
    let (warm, stop) = after_switch(
        &instances,
        ReleaseNumber::new(3),
        &[ReleaseNumber::new(2)],
        &routed,
    );
    assert_eq!(warm, ["r2-web"]);
    assert_eq!(stop, ["r1-web", "r1-worker", "r2-worker"]);
}
