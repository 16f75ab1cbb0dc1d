use std::time::{Duration, Instant};

use client::wire::{ProxyId, ProxyReport};
use proxy::{ObservedReleaseStats, ReleaseId, ReleaseStats, sum_stats};

use super::{Followers, MAX_FOLLOWERS, STALE_AFTER};

/// A reading of `release` with `ok` 2xx and `failed` 5xx answers, `in_flight` open.
fn reading(release: &str, ok: u64, failed: u64, in_flight: u64) -> ObservedReleaseStats {
    let stats = ReleaseStats::new(ReleaseId::new(release));
    for _ in 0..ok {
        stats.record_response(200, Duration::from_millis(1));
    }
    for _ in 0..failed {
        stats.record_response(502, Duration::from_millis(1));
    }
    for _ in 0..in_flight {
        stats.in_flight_started();
    }
    ObservedReleaseStats::from(&stats.snapshot())
}

fn report(
    proxy: &str,
    incarnation: &str,
    releases: Vec<ObservedReleaseStats>,
) -> ProxyReport<ObservedReleaseStats> {
    ProxyReport {
        proxy: ProxyId::new(proxy),
        incarnation: incarnation.to_owned(),
        releases,
        tls_generation: 0,
    }
}

fn total(followers: &mut Followers, now: Instant, release: &str) -> (u64, u64, u64) {
    let sums = sum_stats(&followers.readings(now));
    sums.iter()
        .find(|stats| stats.release == release)
        .map_or((0, 0, 0), |stats| {
            (
                stats.total_requests(),
                stats.requests.server_error,
                stats.in_flight,
            )
        })
}

#[test]
fn a_follower_that_restarts_starts_a_new_series_and_the_sum_never_goes_down() {
    let mut followers = Followers::default();
    let start = Instant::now();
    followers
        .report(
            report("node-a", "one", vec![reading("app/prod@2", 10, 3, 1)]),
            start,
        )
        .expect("first report");
    followers
        .report(
            report("node-b", "x", vec![reading("app/prod@2", 5, 0, 0)]),
            start,
        )
        .expect("other follower");
    assert_eq!(total(&mut followers, start, "app/prod@2"), (18, 3, 1));

    // The same life counts on: the latest report replaces the previous one, nothing doubles.
    followers
        .report(
            report("node-a", "one", vec![reading("app/prod@2", 20, 3, 0)]),
            start,
        )
        .expect("later report");
    assert_eq!(total(&mut followers, start, "app/prod@2"), (28, 3, 0));

    // A new life (new incarnation) starts again from zero: the earlier life's counts stay.
    followers
        .report(
            report("node-a", "two", vec![reading("app/prod@2", 1, 1, 0)]),
            start,
        )
        .expect("restarted");
    assert_eq!(total(&mut followers, start, "app/prod@2"), (30, 4, 0));

    // Counters going down under the same incarnation are a restart as well, never a negative.
    followers
        .report(
            report("node-a", "two", vec![reading("app/prod@2", 0, 0, 0)]),
            start,
        )
        .expect("went down");
    assert_eq!(total(&mut followers, start, "app/prod@2"), (30, 4, 0));
    followers
        .report(
            report("node-a", "two", vec![reading("app/prod@2", 2, 0, 0)]),
            start,
        )
        .expect("counting again");
    assert_eq!(total(&mut followers, start, "app/prod@2"), (32, 4, 0));
}

#[test]
fn a_silent_follower_is_retired_with_its_counts_kept_and_its_in_flight_dropped() {
    let mut followers = Followers::default();
    let start = Instant::now();
    followers
        .report(
            report("node-a", "one", vec![reading("app/prod@1", 7, 2, 4)]),
            start,
        )
        .expect("report");
    assert_eq!(followers.seen(start).len(), 1);
    let later = start + STALE_AFTER;
    assert_eq!(total(&mut followers, later, "app/prod@1"), (9, 2, 0));
    assert!(followers.seen(later).is_empty());
    // Back with the same incarnation after being retired: a new entry, its counts on top.
    followers
        .report(
            report("node-a", "one", vec![reading("app/prod@1", 1, 0, 0)]),
            later,
        )
        .expect("back");
    assert_eq!(total(&mut followers, later, "app/prod@1"), (10, 2, 0));
}

#[test]
fn more_followers_than_the_limit_are_refused_until_one_is_retired() {
    let mut followers = Followers::default();
    let start = Instant::now();
    for n in 0..MAX_FOLLOWERS {
        followers
            .report(report(&format!("node-{n}"), "i", Vec::new()), start)
            .expect("within the limit");
    }
    let refused = followers
        .report(report("one-too-many", "i", Vec::new()), start)
        .expect_err("over the limit");
    assert!(refused.to_string().contains("one-too-many"), "{refused}");
    // A known follower still reports.
    followers
        .report(
            report("node-0", "i", Vec::new()),
            start + Duration::from_secs(1),
        )
        .expect("a known one");
    // Once the others are silent long enough, there is room again.
    followers
        .report(report("one-too-many", "i", Vec::new()), start + STALE_AFTER)
        .expect("room again");
}

#[test]
fn two_running_proxies_with_one_id_are_each_counted_once() {
    // Clones of one server image both report as `node`: their reports interleave. Keyed by id
    // alone, every report would look like a restart and add the other's counts again.
    let mut followers = Followers::default();
    let start = Instant::now();
    for second in 1..=5u64 {
        let now = start + Duration::from_secs(second);
        followers
            .report(
                report(
                    "node",
                    "one",
                    vec![reading("app/prod@2", 10 * second, 0, 1)],
                ),
                now,
            )
            .expect("first process");
        followers
            .report(
                report("node", "two", vec![reading("app/prod@2", second, 0, 2)]),
                now,
            )
            .expect("second process");
    }
    let now = start + Duration::from_secs(5);
    assert_eq!(total(&mut followers, now, "app/prod@2"), (55, 0, 3));
    assert_eq!(followers.seen(now).len(), 1, "one line per id");
}

#[test]
fn a_restarted_follower_counts_no_request_in_flight_of_its_dead_life() {
    let mut followers = Followers::default();
    let start = Instant::now();
    followers
        .report(
            report("node-a", "one", vec![reading("app/prod@2", 10, 0, 4)]),
            start,
        )
        .expect("first life");
    let later = start + Duration::from_secs(2);
    followers
        .report(
            report("node-a", "two", vec![reading("app/prod@2", 1, 0, 1)]),
            later,
        )
        .expect("second life");
    // The first life's 10 stay counted, its 4 in flight died with it.
    assert_eq!(total(&mut followers, later, "app/prod@2"), (11, 0, 1));
    assert_eq!(followers.seen(later).len(), 1);
}

#[test]
fn a_follower_is_behind_on_tls_until_it_reports_the_generation_and_a_retired_one_is_not_waited_for()
{
    let start = Instant::now();
    let mut followers = Followers::default();
    let with = |proxy: &str, generation: u64| ProxyReport {
        tls_generation: generation,
        ..report(proxy, "1", Vec::new())
    };
    // Nobody follows: nobody is behind.
    assert_eq!(followers.behind_tls(7, start), Vec::<ProxyId>::new());
    followers.report(with("a", 6), start).expect("taken");
    followers.report(with("b", 7), start).expect("taken");
    assert_eq!(followers.behind_tls(7, start), vec![ProxyId::new("a")]);
    // A newer generation than asked is caught up too.
    followers
        .report(with("a", 8), start + Duration::from_secs(1))
        .expect("taken");
    assert_eq!(
        followers.behind_tls(7, start + Duration::from_secs(1)),
        Vec::<ProxyId>::new()
    );
    assert_eq!(
        followers.behind_tls(8, start + Duration::from_secs(1)),
        vec![ProxyId::new("b")]
    );
    // `b` goes silent: once retired it is no longer waited for.
    let later = start + STALE_AFTER + Duration::from_secs(1);
    followers.report(with("a", 8), later).expect("taken");
    assert_eq!(followers.behind_tls(8, later), Vec::<ProxyId>::new());
}

#[test]
fn the_dead_life_of_a_restarted_follower_is_not_waited_for_on_tls() {
    let start = Instant::now();
    let mut followers = Followers::default();
    let with = |incarnation: &str, generation: u64| ProxyReport {
        tls_generation: generation,
        ..report("node-a", incarnation, Vec::new())
    };
    followers.report(with("one", 3), start).expect("first life");
    // It restarts and serves the newest set; its first life never reports again.
    let later = start + Duration::from_secs(1);
    followers
        .report(with("two", 4), later)
        .expect("second life");
    let after = start + super::REPORTING + Duration::from_secs(1);
    followers
        .report(with("two", 4), after)
        .expect("second life again");
    assert_eq!(followers.behind_tls(4, after), Vec::<ProxyId>::new());
}
