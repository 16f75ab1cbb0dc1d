use super::*;

const DAY: i64 = 24 * 3600 * 1000;

#[test]
fn renewal_starts_30_days_before_expiry_or_at_two_thirds_of_a_short_life() {
    // 90 days (Let's Encrypt): 30 days before the end, day 60.
    assert_eq!(renew_at(0, 90 * DAY, None), 60 * DAY);
    // A year: 30 days before the end, before 2/3.
    assert_eq!(renew_at(0, 365 * DAY, None), 335 * DAY);
    // 6 days (short-lived): 2/3 of the life, day 4, not 24 days before it began.
    assert_eq!(renew_at(0, 6 * DAY, None), 4 * DAY);
    // A window longer than the life: at once (the test's way to force renewals).
    assert!(renew_at(10 * DAY, 100 * DAY, Some(Duration::from_secs(200 * 86_400))) <= 10 * DAY);
}

#[test]
fn backoff_doubles_from_a_minute_to_six_hours_and_retry_after_wins_when_longer() {
    assert_eq!(next_backoff(0, None), Duration::from_secs(60));
    assert_eq!(next_backoff(1, None), Duration::from_secs(120));
    assert_eq!(next_backoff(3, None), Duration::from_secs(480));
    assert_eq!(next_backoff(30, None), BACKOFF_MAX);
    assert_eq!(
        next_backoff(0, Some(Duration::from_secs(3600))),
        Duration::from_secs(3600)
    );
    assert_eq!(
        next_backoff(3, Some(Duration::from_secs(1))),
        Duration::from_secs(480)
    );
}

#[test]
fn a_certificate_covers_its_names_and_one_label_under_a_wildcard() {
    let names = vec!["a.test".to_owned(), "*.b.test".to_owned()];
    assert!(covers(&names, "a.test"));
    assert!(covers(&names, "A.TEST"));
    assert!(covers(&names, "x.b.test"));
    assert!(!covers(&names, "b.test"));
    assert!(!covers(&names, "y.x.b.test"));
    assert!(!covers(&names, "c.test"));
}

#[test]
fn directory_names_and_urls() {
    assert_eq!(directory_url("production"), LETS_ENCRYPT_PRODUCTION);
    assert_eq!(directory_url("staging"), LETS_ENCRYPT_STAGING);
    assert_eq!(
        directory_url("https://ca.internal/acme/directory"),
        "https://ca.internal/acme/directory"
    );
}

#[test]
fn facts_read_names_issuer_and_validity() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["a.test".to_owned(), "*.b.test".to_owned()])
            .expect("params");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Issuer");
    let cert = params.self_signed(&key).expect("cert");
    let read = facts(&cert.pem()).expect("facts");
    assert_eq!(read.names, ["a.test", "*.b.test"]);
    assert_eq!(read.issuer, "Test Issuer");
    assert!(read.not_after > read.not_before);
    assert!(facts("not a certificate").is_err());
}

#[test]
fn the_expiry_alert_comes_once_a_day_per_host() {
    let certs = Certs::new(CertsConfig::new("staging", None, None, true));
    assert!(certs.first_alert_today("a.test", 0));
    assert!(!certs.first_alert_today("a.test", DAY - 1));
    assert!(certs.first_alert_today("b.test", DAY - 1));
    assert!(certs.first_alert_today("a.test", DAY));
}
