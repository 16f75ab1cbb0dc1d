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
