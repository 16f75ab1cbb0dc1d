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
    assert_eq!(now, BTreeMap::from([("JWT_SECRET".to_owned(), 2)]));
    let earlier = BTreeMap::from([("JWT_SECRET".to_owned(), 1)]);
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
    let old = BTreeMap::from([("TOKEN".to_owned(), 1)]);
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
    let versions = BTreeMap::from([("A".to_owned(), 1)]);
    assert!(matches!(
        open_versions(&store, &other, "shop", "production", &versions),
        Err(SecretError::Decrypt { .. })
    ));
}

#[test]
fn secrets_never_print() {
    let secret = Secret::new("hunter2-long".into());
    assert_eq!(format!("{secret} {secret:?}"), "*** ***");
    assert_eq!(scrub("token=hunter2-long!", &[secret]), "token=***!");
}
