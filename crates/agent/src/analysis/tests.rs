use super::*;

fn bounds() -> Bounds {
    Bounds {
        min_requests: 50,
        max_error_rate: 0.01,
        max_p99_us: Some(800_000),
        baseline_margin: 0.01,
        latency_margin: 2.0,
    }
}

fn sample(requests: u64, errors: u64, p99_ms: u64) -> Sample {
    Sample {
        requests,
        errors,
        p99_us: p99_ms * 1000,
        latency_count: requests,
    }
}

/// One helper: a release and a baseline in, the verdict's name out.
fn check(release: Sample, baseline: Option<Sample>, expected: &str) {
    let verdict = evaluate(release, baseline, &bounds());
    assert_eq!(
        verdict.name(),
        expected,
        "{release:?} vs {baseline:?}: {verdict}"
    );
}

#[test]
fn verdicts() {
    let healthy_baseline = Some(sample(10_000, 10, 40));
    // Below min_requests nothing is decided, however bad it looks.
    check(sample(49, 49, 40), healthy_baseline, "inconclusive");
    // A hard-failing release is caught in a few requests past the minimum.
    check(sample(50, 25, 40), healthy_baseline, "fail");
    // 5% errors: caught within a few hundred requests.
    check(sample(300, 15, 40), healthy_baseline, "fail");
    // A clean release passes once the evidence is in, but not on the first 50 requests.
    check(sample(50, 0, 40), healthy_baseline, "inconclusive");
    check(sample(2_000, 0, 40), healthy_baseline, "pass");
    // 3x slower than the baseline fails on latency even under the absolute bound.
    check(sample(200, 0, 120), healthy_baseline, "fail");
    // A few milliseconds are noise, even when several times the baseline's.
    check(sample(2_000, 0, 4), Some(sample(10_000, 10, 1)), "pass");
    // Above the absolute latency bound.
    check(sample(200, 0, 900), None, "fail");
}

#[test]
fn a_release_worse_than_its_baseline_fails_under_the_absolute_bound() {
    let bounds = Bounds {
        max_error_rate: 0.2,
        ..bounds()
    };
    let clean_baseline = Some(sample(20_000, 0, 40));
    let verdict = evaluate(sample(1_000, 50, 40), clean_baseline, &bounds);
    assert!(verdict.is_fail(), "{verdict}");
    assert!(verdict.to_string().contains("baseline"), "{verdict}");
}

#[test]
fn healthy_releases_at_half_a_percent_rarely_fail() {
    // Deterministic spread of 0.5% errors, judged after every request like the agent does.
    let mut fails = 0;
    for n in 50..5_000u64 {
        let errors = n / 200;
        if evaluate(
            sample(n, errors, 40),
            Some(sample(10_000, 50, 40)),
            &bounds(),
        )
        .is_fail()
        {
            fails += 1;
        }
    }
    assert_eq!(fails, 0);
}

#[test]
fn sprt_boundaries() {
    assert_eq!(sprt(0, 10_000, 0.005, 0.01), Sprt::AcceptH0);
    assert_eq!(sprt(100, 1_000, 0.005, 0.01), Sprt::AcceptH1);
    assert_eq!(sprt(1, 20, 0.005, 0.01), Sprt::Continue);
    assert_eq!(
        sprt(1, 20, 0.0, 0.01),
        Sprt::Continue,
        "degenerate hypotheses decide nothing"
    );
}

/// The p99 bound a verdict reports is the one `evaluate` applied: at the bound the release
/// passes on latency, one microsecond above it fails, for every way the bound comes about.
#[test]
fn the_applied_p99_bound_is_where_evaluate_starts_failing() {
    let no_absolute = Bounds {
        max_p99_us: None,
        ..bounds()
    };
    let us = |requests: u64, p99_us: u64| Sample {
        requests,
        errors: 0,
        p99_us,
        latency_count: requests,
    };
    // (bounds, baseline, the expected p99 bound in µs)
    let cases = [
        // The baseline's 2x (80 ms) is below the absolute 800 ms.
        (bounds(), Some(us(10_000, 40_000)), Some(80_000)),
        // The baseline's 2x (1.2 s) is above the absolute 800 ms.
        (bounds(), Some(us(10_000, 600_000)), Some(800_000)),
        // A fast baseline: the noise allowance (1 ms + 20 ms) is above its 2x.
        (no_absolute, Some(us(10_000, 1_000)), Some(21_000)),
        // A fractional margin rounds down to the whole microsecond.
        (
            Bounds {
                latency_margin: 1.5,
                ..no_absolute
            },
            Some(us(10_000, 40_003)),
            Some(60_004),
        ),
        // No baseline: only the absolute bound.
        (bounds(), None, Some(800_000)),
        // A baseline with too few measured requests does not count.
        (no_absolute, Some(us(10, 40_000)), None),
        (no_absolute, None, None),
    ];
    for (bounds, baseline, expected) in cases {
        let applied = applied_bounds(&us(100_000, 0), baseline.as_ref(), &bounds);
        assert_eq!(applied.max_p99_us, expected, "{bounds:?} {baseline:?}");
        assert_eq!(applied.max_error_share, bounds.max_error_rate);
        let Some(bound) = expected else {
            assert_eq!(
                evaluate(us(100_000, 10_000_000), baseline, &bounds).name(),
                "pass",
                "no latency bound applied: {baseline:?}"
            );
            continue;
        };
        assert_eq!(
            evaluate(us(100_000, bound), baseline, &bounds).name(),
            "pass",
            "at the bound {bound}: {baseline:?}"
        );
        assert!(
            evaluate(us(100_000, bound + 1), baseline, &bounds).is_fail(),
            "above the bound {bound}: {baseline:?}"
        );
    }
    // Too few measured requests of the release itself: no latency bound applies.
    let few = Sample {
        latency_count: 10,
        ..us(100_000, 0)
    };
    assert_eq!(applied_bounds(&few, None, &bounds()).max_p99_us, None);
}

/// A p99 is judged from a hundred latencies at least, whatever `min_requests` says: below that it
/// is the slowest request, and one slow request (a new instance's first) must not roll a healthy
/// release back. At a hundred, the slowest alone no longer makes the p99.
#[test]
fn one_slow_request_is_not_a_slow_release() {
    let low_minimum = Bounds {
        min_requests: 50,
        ..bounds()
    };
    let baseline = Sample {
        requests: 10_000,
        errors: 0,
        p99_us: 5_000,
        latency_count: 10_000,
    };
    // 99 requests, the slowest at 2 s: its p99 is that one request.
    let cold = Sample {
        requests: 99,
        errors: 0,
        p99_us: 2_000_000,
        latency_count: 99,
    };
    let applied = applied_bounds(&cold, Some(&baseline), &low_minimum);
    assert_eq!(applied.max_p99_us, None);
    assert!(!evaluate(cold, Some(baseline), &low_minimum).is_fail());
    // A hundred: a p99 that high means two slow requests at least, and it fails.
    let slow = Sample {
        requests: 100,
        latency_count: 100,
        ..cold
    };
    assert_eq!(
        applied_bounds(&slow, Some(&baseline), &low_minimum).max_p99_us,
        Some(25_000)
    );
    assert!(evaluate(slow, Some(baseline), &low_minimum).is_fail());
    // A baseline of fewer than a hundred latencies gives no relative bound either.
    let young_baseline = Sample {
        latency_count: 99,
        ..baseline
    };
    let no_absolute = Bounds {
        max_p99_us: None,
        ..low_minimum
    };
    assert_eq!(
        applied_bounds(&slow, Some(&young_baseline), &no_absolute).max_p99_us,
        None
    );
}
