use super::*;

const MINUTE: i64 = 60_000;

/// The ticks (in minutes) a pass starts, with their triggers.
type Ticks = Vec<(i64, CronTrigger)>;

/// One case: (last, from, now, after_restart, catch_up) in minutes → the ticks (minutes) and
/// triggers started, for `* * * * *`.
fn check(last: Option<i64>, from: i64, now: i64, after_restart: bool, catch_up: bool) -> Ticks {
    let schedule = manifest::cron::CronSchedule::parse("* * * * *", None).expect("a schedule");
    due_ticks(
        &schedule,
        catch_up,
        last.map(|minutes| minutes * MINUTE),
        from * MINUTE,
        now * MINUTE,
        after_restart,
    )
    .into_iter()
    .map(|(tick, trigger)| (tick / MINUTE, trigger))
    .collect()
}

#[test]
fn due_ticks_table() {
    use CronTrigger::{CatchUp, Schedule};
    let cases: &[(&str, Ticks, Ticks)] = &[
        (
            "while up, every tick after the last one runs, in order",
            check(Some(10), 0, 12, false, true),
            vec![(11, Schedule), (12, Schedule)],
        ),
        (
            "a job never run starts at its first tick from when it was seen",
            check(None, 10, 12, false, true),
            vec![(10, Schedule), (11, Schedule), (12, Schedule)],
        ),
        (
            "after a restart, the latest missed tick runs once, then the ones since the start",
            check(Some(5), 10, 11, true, true),
            vec![(9, CatchUp), (10, Schedule), (11, Schedule)],
        ),
        (
            "without catch_up, ticks missed while down are skipped",
            check(Some(5), 10, 11, true, false),
            vec![(10, Schedule), (11, Schedule)],
        ),
        (
            "nothing was missed: no catch-up run",
            check(Some(9), 10, 10, true, true),
            vec![(10, Schedule)],
        ),
        (
            "a tick already recorded never runs again",
            check(Some(12), 0, 12, false, true),
            vec![],
        ),
        (
            "ticks before the agent started are not caught up later than its first look",
            check(Some(5), 10, 10, false, true),
            vec![(10, Schedule)],
        ),
        (
            "a clock jump collapses into the latest tick",
            check(Some(0), 0, 10_000, false, true),
            vec![(10_000, Schedule)],
        ),
    ];
    for (case, got, expected) in cases {
        assert_eq!(got, expected, "{case}");
    }
}
