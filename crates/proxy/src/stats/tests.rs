//! Unit tests of the latency histogram and the per-release counters.

use std::time::Duration;

use super::*;

#[test]
fn bucket_index_is_the_smallest_bucket_whose_bound_holds_the_value() {
    for micros in [
        0u64, 1, 99, 100, 101, 141, 142, 200, 201, 999, 1_000, 123_456, 10_000_000,
    ] {
        let index = bucket_index(micros);
        assert!(
            bucket_bound(index) >= Duration::from_micros(micros),
            "{micros}"
        );
        if index > 0 {
            assert!(
                bucket_bound(index - 1) < Duration::from_micros(micros),
                "{micros}"
            );
        }
    }
    assert_eq!(bucket_index(u64::MAX), LATENCY_BUCKETS);
}

#[test]
fn bucket_index_is_exact_around_every_bound() {
    for bucket in 0..LATENCY_BUCKETS {
        let bound = bucket_bound(bucket);
        let micros = u64::try_from(bound.as_micros()).expect("bound in range");
        for value in [micros.saturating_sub(1), micros, micros + 1] {
            let index = bucket_index(value);
            let duration = Duration::from_micros(value);
            assert!(
                index == LATENCY_BUCKETS || bucket_bound(index) >= duration,
                "{value}"
            );
            assert!(index == 0 || bucket_bound(index - 1) < duration, "{value}");
        }
    }
}

#[test]
fn quantiles_come_from_the_histogram() {
    let stats = ReleaseStats::new(ReleaseId::new("demo@1"));
    for _ in 0..98 {
        stats.record_response(200, Duration::from_millis(1));
    }
    stats.record_response(503, Duration::from_millis(400));
    stats.record_response(404, Duration::from_millis(400));
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.requests.success, 98);
    assert_eq!(snapshot.requests.server_error, 1);
    assert_eq!(snapshot.requests.client_error, 1);
    assert_eq!(snapshot.total_requests(), 100);
    assert_eq!(snapshot.latency.count, 100);
    assert_eq!(snapshot.latency.p50, bucket_bound(bucket_index(1_000)));
    assert!(snapshot.latency.p50 >= Duration::from_millis(1));
    assert!(snapshot.latency.p99 >= Duration::from_millis(400));
    assert!(snapshot.latency.p99 < Duration::from_millis(566));
}

#[test]
fn errors_and_in_flight_are_counted() {
    let stats = ReleaseStats::new(ReleaseId::new("demo@1"));
    stats.record_error(ErrorKind::Connect);
    stats.record_error(ErrorKind::Connect);
    stats.in_flight_started();
    stats.in_flight_started();
    stats.in_flight_finished();
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.error_count(ErrorKind::Connect), 2);
    assert_eq!(snapshot.error_count(ErrorKind::UpstreamTimeout), 0);
    assert_eq!(snapshot.in_flight, 1);
}

#[test]
fn counts_of_every_worker_thread_are_summed() {
    let stats = std::sync::Arc::new(ReleaseStats::new(ReleaseId::new("demo@1")));
    // Worker threads count into their own shards; a thread that is no worker into shard 0. A request
    // that starts on one thread and ends on another still leaves nothing in flight.
    let threads: Vec<_> = (0..=crate::shard::shard_count())
        .map(|worker| {
            let stats = std::sync::Arc::clone(&stats);
            std::thread::spawn(move || {
                crate::shard::set_worker(worker);
                for _ in 0..1000 {
                    stats.record_response(200, Duration::from_micros(150));
                }
                stats.record_response(503, Duration::from_secs(1));
                stats.record_error(ErrorKind::Connect);
                stats.in_flight_started();
                stats.in_flight_started();
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("counting thread");
    }
    let n_threads = crate::shard::shard_count() as u64 + 1;
    for _ in 0..n_threads {
        stats.in_flight_finished();
    }
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.requests.success, 1000 * n_threads);
    assert_eq!(snapshot.requests.server_error, n_threads);
    assert_eq!(snapshot.total_requests(), 1001 * n_threads);
    assert_eq!(snapshot.error_count(ErrorKind::Connect), n_threads);
    assert_eq!(snapshot.in_flight, n_threads);
    assert_eq!(snapshot.latency.count, 1001 * n_threads);
    assert_eq!(
        snapshot.latency.sum,
        Duration::from_micros(150 * 1000 * n_threads) + Duration::from_secs(n_threads)
    );
    assert_eq!(snapshot.latency.p50, bucket_bound(bucket_index(150)));
}

#[test]
fn counters_of_two_workers_share_no_cache_line() {
    assert_eq!(std::mem::align_of::<Counters>() % 128, 0);
    assert_eq!(std::mem::size_of::<Counters>() % 128, 0);
}
