//! Tables of names and values the API accepts and refuses.

use super::*;

#[test]
fn app_and_environment_names() {
    let long = "a".repeat(64);
    let table: &[(&str, bool)] = &[
        ("logistix", true),
        ("my-app-2", true),
        ("production", true),
        ("", false),
        ("../../etc", false),
        ("..", false),
        ("a/b", false),
        ("Prod", false),
        ("2fast", false),
        ("-x", false),
        ("app name", false),
        ("app\0", false),
        (&long, false),
    ];
    for (name, accepted) in table {
        assert_eq!(app_name(name).is_ok(), *accepted, "app `{name}`");
        assert_eq!(environment_name(name).is_ok(), *accepted, "env `{name}`");
    }
    let error = app_name(&"a".repeat(5_000)).expect_err("too long");
    assert_eq!(
        error.to_string(),
        "the app name is 5000 characters long; at most 100 are accepted"
    );
}

#[test]
fn secret_names() {
    let table: &[(&str, Option<&str>)] = &[
        ("DATABASE_URL", None),
        ("_PRIVATE", None),
        ("S3_KEY", None),
        ("PGPASSWORD", None),
        ("LDAP_URL", None),
        ("", Some("the secret name is empty")),
        ("database_url", Some("is not a valid secret name")),
        ("1KEY", Some("is not a valid secret name")),
        ("A-B", Some("is not a valid secret name")),
        ("A B", Some("is not a valid secret name")),
        ("PORT", Some("Rollway sets it for each instance")),
        ("PATH", Some("it says where commands are found")),
        ("LD_PRELOAD", Some("`LD_*` variables")),
        ("LD_LIBRARY_PATH", Some("`LD_*` variables")),
        ("ROLLWAY_TOKEN", Some("Rollway's own")),
    ];
    for (name, refusal) in table {
        match (secret_name(name), refusal) {
            (Ok(()), None) => {}
            (Err(error), Some(expected)) => {
                assert!(
                    error.to_string().contains(expected),
                    "`{name}`: {error} lacks {expected}"
                )
            }
            (outcome, expected) => panic!("`{name}`: {outcome:?}, expected {expected:?}"),
        }
    }
    assert!(matches!(
        secret_name(&"A".repeat(5_000)),
        Err(InputError::TooLong { len: 5_000, .. })
    ));
}

#[test]
fn secret_values() {
    let table: &[(String, Result<(), InputError>)] = &[
        ("hunter22".to_owned(), Ok(())),
        ("abcd".to_owned(), Ok(())),
        ("äöüß".to_owned(), Ok(())),
        ("x".repeat(MAX_SECRET_VALUE), Ok(())),
        ("".to_owned(), Err(InputError::SecretTooShort { len: 0 })),
        ("abc".to_owned(), Err(InputError::SecretTooShort { len: 3 })),
        ("ab\0cd".to_owned(), Err(InputError::SecretHasNul)),
        (
            "x".repeat(MAX_SECRET_VALUE + 1),
            Err(InputError::SecretTooLarge {
                len: MAX_SECRET_VALUE + 1,
            }),
        ),
    ];
    for (value, expected) in table {
        assert_eq!(&secret_value(value), expected, "{} bytes", value.len());
    }
    assert!(
        secret_value("abc")
            .expect_err("short")
            .to_string()
            .contains("at least 4")
    );
}

#[test]
fn token_names() {
    let table: &[(String, bool)] = &[
        ("ci".to_owned(), true),
        ("Deploy bot (staging)".to_owned(), true),
        ("".to_owned(), false),
        ("a\nb".to_owned(), false),
        ("x".repeat(MAX_NAME), true),
        ("x".repeat(MAX_NAME + 1), false),
        ("x".repeat(50 * 1024 * 1024 / 1024), false),
    ];
    for (name, accepted) in table {
        assert_eq!(token_name(name).is_ok(), *accepted, "{name:?}");
    }
}

#[test]
fn manifests() {
    assert_eq!(manifest(&"#".repeat(MAX_MANIFEST)), Ok(()));
    assert_eq!(
        manifest(&"#".repeat(MAX_MANIFEST + 1)),
        Err(InputError::ManifestTooLarge {
            len: MAX_MANIFEST + 1
        })
    );
}
