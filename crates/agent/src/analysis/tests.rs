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
