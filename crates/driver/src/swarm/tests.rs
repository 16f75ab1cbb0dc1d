use super::{ClusterSpec, RegistryAuth, base64};

#[test]
fn base64_is_the_standard_alphabet_with_padding() {
    let cases: &[(&[u8], &str)] = &[
        (b"", ""),
        (b"f", "Zg=="),
        (b"fo", "Zm8="),
        (b"foo", "Zm9v"),
        (b"foob", "Zm9vYg=="),
        (b"fooba", "Zm9vYmE="),
        (b"foobar", "Zm9vYmFy"),
        (&[0xff, 0xfe, 0x00], "//4A"),
    ];
    for (input, expected) in cases {
        assert_eq!(base64(input), *expected, "{input:?}");
    }
}

#[test]
fn registry_auth_debug_never_shows_the_password() {
    let auth = RegistryAuth {
        server: "registry.example.com:5000".to_owned(),
        username: "deployer".to_owned(),
        password: "canary-hunter2".to_owned(),
    };
    // Also inside the spec an instance carries (which the agent may log with `?`).
    let cluster = ClusterSpec {
        registry_auth: Some(auth.clone()),
        ..ClusterSpec::default()
    };
    for text in [
        format!("{auth:?}"),
        format!("{cluster:?}"),
        format!("{cluster:#?}"),
    ] {
        assert!(!text.contains("canary-hunter2"), "{text}");
        assert!(
            text.contains("deployer") && text.contains("<redacted>"),
            "{text}"
        );
    }
    let credentials = auth.credentials();
    assert_eq!(credentials.password.as_deref(), Some("canary-hunter2"));
    assert_eq!(
        credentials.serveraddress.as_deref(),
        Some("registry.example.com:5000")
    );
}
