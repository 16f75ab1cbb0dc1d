use super::*;

fn ms(text: &str) -> i64 {
    text.parse::<jiff::Timestamp>()
        .expect("a timestamp")
        .as_millisecond()
}

#[test]
fn ticks_are_read_in_the_schedule_zone_across_daylight_saving() {
    let check = |schedule: &str, tz: Option<&str>, after: &str, expected: &str| {
        let schedule = CronSchedule::parse(schedule, tz).expect("a schedule");
        assert_eq!(
            schedule.next_after(ms(after)),
            Some(ms(expected)),
            "{schedule} after {after}"
        );
    };
    check(
        "*/5 * * * *",
        None,
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:05:00Z",
    );
    check(
        "@hourly",
        None,
        "2026-01-01T00:30:00Z",
        "2026-01-01T01:00:00Z",
    );
    check(
        "@daily",
        None,
        "2026-01-01T00:00:00Z",
        "2026-01-02T00:00:00Z",
    );
    // 06:00 in Paris is 05:00 UTC in winter and 04:00 UTC in summer (DST began 2026-03-29).
    check(
        "0 6 * * *",
        Some("Europe/Paris"),
        "2026-03-27T12:00:00Z",
        "2026-03-28T05:00:00Z",
    );
    check(
        "0 6 * * *",
        Some("Europe/Paris"),
        "2026-03-28T12:00:00Z",
        "2026-03-29T04:00:00Z",
    );
}

#[test]
fn the_last_tick_at_or_before_includes_the_instant_itself() {
    let schedule = CronSchedule::parse("0 * * * *", None).expect("a schedule");
    assert_eq!(
        schedule.last_at_or_before(ms("2026-01-01T03:00:00Z")),
        Some(ms("2026-01-01T03:00:00Z"))
    );
    assert_eq!(
        schedule.last_at_or_before(ms("2026-01-01T03:59:59Z")),
        Some(ms("2026-01-01T03:00:00Z"))
    );
}

#[test]
fn seconds_are_refused_without_the_test_switch() {
    // The test binary never sets the variable.
    assert_eq!(
        CronSchedule::parse("* * * * * *", None).map(|_| ()),
        Err(ScheduleError::Seconds)
    );
}
