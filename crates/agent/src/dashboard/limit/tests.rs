use super::*;

fn ip(text: &str) -> Option<IpAddr> {
    Some(text.parse().expect("an address"))
}

#[test]
fn the_eleventh_attempt_within_a_minute_waits_for_the_oldest_failure_to_expire() {
    let limiter = LoginLimiter::default();
    let start = Instant::now();
    for i in 0..MAX_FAILURES as u64 {
        let at = start + Duration::from_secs(i);
        assert_eq!(limiter.check(ip("192.0.2.7"), at), Ok(()), "attempt {i}");
        limiter.failed(ip("192.0.2.7"), at);
    }
    // Ten failures at 0..9 s: at 10 s the next attempt waits until the first leaves (60 s).
    let now = start + Duration::from_secs(10);
    assert_eq!(
        limiter.check(ip("192.0.2.7"), now),
        Err(Duration::from_secs(50))
    );
    // Another address is not held back.
    assert_eq!(limiter.check(ip("192.0.2.8"), now), Ok(()));
    // The wait is never announced as zero seconds.
    assert_eq!(
        limiter.check(ip("192.0.2.7"), start + Duration::from_millis(59_900)),
        Err(Duration::from_secs(1))
    );
    // Once the first failure left the window, the address may try again.
    assert_eq!(
        limiter.check(ip("192.0.2.7"), start + Duration::from_secs(60)),
        Ok(())
    );
}

#[test]
fn ipv6_counts_by_its_64_and_mapped_ipv4_as_ipv4() {
    let limiter = LoginLimiter::default();
    let now = Instant::now();
    for i in 0..MAX_FAILURES {
        // Every failure from another address of the same /64.
        limiter.failed(ip(&format!("2001:db8:1:2::{i:x}")), now);
    }
    assert!(limiter.check(ip("2001:db8:1:2:ffff::1"), now).is_err());
    assert_eq!(limiter.check(ip("2001:db8:1:3::1"), now), Ok(()));
    for _ in 0..MAX_FAILURES {
        limiter.failed(ip("::ffff:192.0.2.9"), now);
    }
    assert!(limiter.check(ip("192.0.2.9"), now).is_err());
}

#[test]
fn past_the_tracked_addresses_new_ones_share_one_count() {
    let limiter = LoginLimiter::default();
    let now = Instant::now();
    for i in 0..MAX_CLIENTS as u32 {
        limiter.failed(Some(IpAddr::V4((0x0a00_0000 + i).into())), now);
    }
    for i in 0..MAX_FAILURES as u32 {
        limiter.failed(Some(IpAddr::V4((0xc000_0200 + i).into())), now);
    }
    // Two unknown addresses, each with one failure of its own: both held by the shared count.
    assert!(limiter.check(ip("198.51.100.1"), now).is_err());
    assert!(limiter.check(None, now).is_err());
    // Known ones keep their own count; once the window passed, the map is pruned.
    assert_eq!(limiter.check(ip("10.0.0.1"), now), Ok(()));
    let later = now + WINDOW;
    limiter.failed(ip("198.51.100.1"), later);
    assert_eq!(limiter.lock().len(), 1);
    assert_eq!(limiter.check(ip("198.51.100.2"), later), Ok(()));
}
