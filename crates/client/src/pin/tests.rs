use super::*;

#[test]
fn fingerprint_reads_back_what_it_prints() {
    let fingerprint = Fingerprint::of_der(b"certificate");
    let text = fingerprint.to_string();
    assert!(
        text.starts_with("sha256:") && text.len() == 7 + 64,
        "{text}"
    );
    assert_eq!(text.parse::<Fingerprint>().ok(), Some(fingerprint));
    let with_colons = format!(
        "SHA256:{}",
        hex::encode_upper(fingerprint.0)
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":")
    );
    assert_eq!(with_colons.parse::<Fingerprint>().ok(), Some(fingerprint));
}

#[test]
fn fingerprint_refuses_what_is_not_one() {
    for text in [
        String::new(),
        "abcd".to_owned(),
        "sha256:abcd".to_owned(),
        "md5:00".to_owned(),
        format!("sha256:{}", "g".repeat(64)),
        format!("sha256:{}", "0".repeat(66)),
    ] {
        assert!(
            text.parse::<Fingerprint>().is_err(),
            "{text:?} was accepted"
        );
    }
}

#[test]
fn known_agents_round_trip_and_replace() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("config/rollway/known_agents");
    let mut known = KnownAgents::load(&path).expect("a missing file is empty");
    assert_eq!(known.get("agent.example:7443"), None);
    let first = Fingerprint::of_der(b"one");
    let second = Fingerprint::of_der(b"two");
    known.insert("Agent.Example:7443", first).expect("written");
    known.insert("other:7443", second).expect("written");
    known
        .insert("agent.example:7443", second)
        .expect("replaced");
    let again = KnownAgents::load(&path).expect("readable");
    assert_eq!(again.get("agent.example:7443"), Some(second));
    assert_eq!(again.get("other:7443"), Some(second));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&path)
        .expect("exists")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn known_agents_names_a_bad_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("known_agents");
    std::fs::write(&path, "# comment\n\nhost:1 sha256:zz\n").expect("written");
    let error = KnownAgents::load(&path).expect_err("a bad line is an error");
    assert!(error.to_string().contains("line 3"), "{error}");
}
