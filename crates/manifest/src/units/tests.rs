use super::*;

#[test]
fn durations_parse_in_human_form() {
    let cases = [
        ("500ms", std::time::Duration::from_millis(500)),
        ("30s", std::time::Duration::from_secs(30)),
        ("5m", std::time::Duration::from_secs(300)),
        ("1h 30m", std::time::Duration::from_secs(5400)),
    ];
    for (text, expected) in cases {
        assert_eq!(text.parse::<Duration>(), Ok(Duration(expected)), "{text}");
    }
}

#[test]
fn durations_without_unit_are_refused() {
    assert_eq!("30".parse::<Duration>(), Err("`30` has no unit".to_owned()));
    assert!("fast".parse::<Duration>().is_err());
    assert!("".parse::<Duration>().is_err());
}

#[test]
fn ratios_accept_percentages_and_shares() {
    assert_eq!(Ratio::from_percent("1%").map(Ratio::get), Ok(0.01));
    assert_eq!(Ratio::from_percent("0.5%").map(Ratio::get), Ok(0.005));
    assert!(Ratio::from_percent("101%").is_err());
    assert!(Ratio::from_percent("1").is_err());
    assert_eq!(Ratio::new(1.5), None);
    assert_eq!(Ratio::new(f64::NAN), None);
}

#[test]
fn weights_are_bounded() {
    assert_eq!(Weight::new(0).map(Weight::get), Some(0));
    assert_eq!(Weight::new(100).map(Weight::get), Some(100));
    assert_eq!(Weight::new(101), None);
    assert_eq!(Weight::new(-1), None);
}

#[test]
fn schedules() {
    use crate::Schedule;
    assert_eq!(
        Schedule::parse("daily 03:00"),
        Ok(Schedule::Daily { hour: 3, minute: 0 })
    );
    assert_eq!(
        Schedule::parse("hourly :15"),
        Ok(Schedule::Hourly { minute: 15 })
    );
    assert!(Schedule::parse("daily 24:00").is_err());
    // 2026-11-23 04:10 UTC: the last daily 03:00 is today, the last hourly :15 was 03:15.
    let now = 1_795_407_000;
    assert_eq!(
        Schedule::Daily { hour: 3, minute: 0 }.last_due(now),
        1_795_402_800
    );
    assert_eq!(Schedule::Hourly { minute: 15 }.last_due(now), 1_795_403_700);
}
