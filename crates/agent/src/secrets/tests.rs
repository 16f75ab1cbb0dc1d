use std::collections::BTreeMap;

use super::*;

fn key() -> MasterKey {
    parse_key(&"ab".repeat(32)).expect("valid key")
}

#[test]
fn set_open_and_roll_back_to_an_earlier_version() {
    let store = Store::open_in_memory().expect("store");
    let key = key();
    let v1 = set(
        &store,
        &key,
        SecretName {
            app: "shop",
            env: "production",
            name: "JWT_SECRET",
        },
        &Secret::new("first-value".into()),
        "admin",
        1,
    )
    .expect("set");
    let v2 = set(
        &store,
        &key,
        SecretName {
            app: "shop",
            env: "production",
            name: "JWT_SECRET",
        },
        &Secret::new("second-value".into()),
        "admin",
        2,
    )
    .expect("set");
    assert_eq!((v1, v2), (1, 2));
    let now = snapshot(&store, "shop", "production").expect("snapshot");
    assert_eq!(
        now,
        BTreeMap::from([("JWT_SECRET".to_owned(), SecretVersion::Own(2))])
    );
    let earlier = BTreeMap::from([("JWT_SECRET".to_owned(), SecretVersion::Own(1))]);
    let opened = open_versions(&store, &key, "shop", "production", &earlier).expect("open");
    assert_eq!(opened["JWT_SECRET"].expose(), "first-value");
}

#[test]
fn unset_hides_the_name_but_keeps_old_versions() {
    let store = Store::open_in_memory().expect("store");
    let key = key();
    set(
        &store,
        &key,
        SecretName {
            app: "shop",
            env: "staging",
            name: "TOKEN",
        },
        &Secret::new("value-1234".into()),
        "admin",
        1,
    )
    .expect("set");
    assert!(unset(&store, "shop", "staging", "TOKEN", "admin", 2).expect("unset"));
    assert!(list(&store, "shop", "staging").expect("list").is_empty());
    let old = BTreeMap::from([("TOKEN".to_owned(), SecretVersion::Own(1))]);
    assert_eq!(
        open_versions(&store, &key, "shop", "staging", &old).expect("open")["TOKEN"].expose(),
        "value-1234"
    );
    assert!(!unset(&store, "shop", "staging", "TOKEN", "admin", 3).expect("unset twice"));
}

#[test]
fn a_ciphertext_cannot_be_moved_to_another_secret_or_opened_with_another_key() {
    let store = Store::open_in_memory().expect("store");
    set(
        &store,
        &key(),
        SecretName {
            app: "shop",
            env: "production",
            name: "A",
        },
        &Secret::new("value-a".into()),
        "admin",
        1,
    )
    .expect("set");
    let other = parse_key(&"cd".repeat(32)).expect("valid key");
    let versions = BTreeMap::from([("A".to_owned(), SecretVersion::Own(1))]);
    assert!(matches!(
        open_versions(&store, &other, "shop", "production", &versions),
        Err(SecretError::Decrypt { .. })
    ));
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2-long".into());
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    assert_eq!(
        Scrubber::new([secret]).scrub("token=hunter2-long!"),
        "token=***!"
    );
}

#[test]
fn the_scrubber_hides_every_version_of_every_secret() {
    let store = Store::open_in_memory().expect("store");
    let key = key();
    let set_value = |name: &'static str, value: &str| {
        set(
            &store,
            &key,
            SecretName {
                app: "shop",
                env: "production",
                name,
            },
            &Secret::new(value.to_owned()),
            "admin",
            1,
        )
        .expect("set");
    };
    set_value("DATABASE_URL", "postgres://u:old-password@db/shop");
    set_value("DATABASE_URL", "postgres://u:new-password@db/shop");
    set_value("JWT_SECRET", "jwt-canary");
    unset(&store, "shop", "production", "JWT_SECRET", "admin", 2).expect("unset");
    // Another environment's values are not this scrubber's business.
    set(
        &store,
        &key,
        SecretName {
            app: "shop",
            env: "staging",
            name: "OTHER",
        },
        &Secret::new("staging-only".into()),
        "admin",
        1,
    )
    .expect("set");
    let scrubber = Scrubber::for_environment(&store, &key, "shop", "production").expect("open");
    let table = [
        (
            "error: cannot connect to postgres://u:old-password@db/shop",
            "error: cannot connect to ***",
        ),
        (
            "connecting to postgres://u:new-password@db/shop (jwt-canary)",
            "connecting to *** (***)",
        ),
        ("staging-only stays", "staging-only stays"),
        ("nothing secret here", "nothing secret here"),
        ("", ""),
    ];
    for (line, expected) in table {
        assert_eq!(scrubber.scrub(line), expected, "{line}");
    }
}

#[test]
fn the_scrubber_prefers_the_longest_value_and_skips_short_ones() {
    let scrubber = Scrubber::new([
        Secret::new("abcd".into()),
        Secret::new("abcdefgh".into()),
        Secret::new("abc".into()),
    ]);
    assert_eq!(
        scrubber.scrub("x abcdefgh y abcd z abc"),
        "x *** y *** z abc"
    );
    assert_eq!(format!("{scrubber:?}"), "Scrubber(2 values)");
}

#[test]
fn a_stream_scrubber_replaces_a_value_split_across_chunks_and_bytes_that_are_not_utf8() {
    let scrubber = Scrubber::new([Secret::new("hunter2-canary".into())]);
    let mut stream = StreamScrubber::new(&scrubber);
    let mut shown = Vec::new();
    // Split inside the value, and inside a multibyte character before it.
    let text = "pass: é hunter2-canary done\n".as_bytes();
    let split = text.iter().position(|&b| b == 0xc3).expect("é") + 1;
    shown.extend(stream.push(&text[..split]));
    shown.extend(stream.push(&text[split..split + 9]));
    assert!(stream.holds(), "the start of the value is held back");
    shown.extend(stream.push(&text[split + 9..]));
    shown.extend(stream.flush());
    assert_eq!(
        String::from_utf8(shown).expect("utf8"),
        "pass: é *** done\n"
    );
    // A held prefix that never completes is shown on flush, unchanged.
    let mut stream = StreamScrubber::new(&scrubber);
    let mut shown = stream.push(b"prompt> hunt");
    assert_eq!(shown, b"prompt> ");
    shown.extend(stream.flush());
    assert_eq!(shown, b"prompt> hunt");
    // Not UTF-8 at all: still scrubbed.
    let mut bytes = vec![0xff, 0xfe];
    bytes.extend_from_slice(b"hunter2-canary");
    assert_eq!(scrubber.scrub_bytes(&bytes), [0xff, 0xfe, b'*', b'*', b'*']);
}

#[test]
fn a_preview_records_its_base_secrets_by_reference_and_its_own_win() {
    let store = Store::open_in_memory().expect("store");
    let key = key();
    let put = |env: &str, name: &str, value: &str| {
        set(
            &store,
            &key,
            SecretName {
                app: "shop",
                env,
                name,
            },
            &Secret::new(value.to_owned()),
            "admin",
            1,
        )
        .expect("set")
    };
    put("staging", "DB_PASSWORD", "staging-db-canary");
    put("staging", "API_KEY", "staging-api-key");
    put("preview-1", "API_KEY", "preview-api-key");
    store
        .put_preview(&crate::store::Preview {
            app: "shop".to_owned(),
            environment: "preview-1".to_owned(),
            base: "staging".to_owned(),
            created_by: "admin".to_owned(),
            created_at: 1,
            expires_at: 2,
        })
        .expect("preview");
    let versions = snapshot(&store, "shop", "preview-1").expect("snapshot");
    assert_eq!(
        versions,
        BTreeMap::from([
            ("API_KEY".to_owned(), SecretVersion::Own(1)),
            (
                "DB_PASSWORD".to_owned(),
                SecretVersion::Inherited {
                    environment: "staging".to_owned(),
                    version: 1
                }
            ),
        ])
    );
    // What the release stores holds no value, and the old form (a bare version) still reads.
    let json = serde_json::to_string(&versions).expect("json");
    assert!(
        !json.contains("canary") && !json.contains("api-key"),
        "{json}"
    );
    let old: BTreeMap<String, SecretVersion> =
        serde_json::from_str(r#"{"A":3}"#).expect("old form");
    assert_eq!(old["A"], SecretVersion::Own(3));
    let opened = open_versions(&store, &key, "shop", "preview-1", &versions).expect("open");
    assert_eq!(opened["DB_PASSWORD"].expose(), "staging-db-canary");
    assert_eq!(opened["API_KEY"].expose(), "preview-api-key");
    // The preview's output is scrubbed of its base's values too.
    let scrubber = Scrubber::for_environment(&store, &key, "shop", "preview-1").expect("scrub");
    assert_eq!(
        scrubber.scrub("db=staging-db-canary key=preview-api-key"),
        "db=*** key=***"
    );
}
