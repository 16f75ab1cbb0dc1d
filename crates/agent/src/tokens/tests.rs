//! Tests of token roles, generation, redaction and verification.

use super::*;

fn check_allows(role: Role, needed: Role, expected: bool) {
    assert_eq!(role.allows(needed), expected, "{role} allows {needed}");
}

#[test]
fn roles_are_ordered() {
    check_allows(Role::Viewer, Role::Viewer, true);
    check_allows(Role::Viewer, Role::Deployer, false);
    check_allows(Role::Viewer, Role::Admin, false);
    check_allows(Role::Deployer, Role::Viewer, true);
    check_allows(Role::Deployer, Role::Deployer, true);
    check_allows(Role::Deployer, Role::Approver, false);
    check_allows(Role::Deployer, Role::Admin, false);
    check_allows(Role::Approver, Role::Deployer, true);
    check_allows(Role::Approver, Role::Approver, true);
    check_allows(Role::Approver, Role::Admin, false);
    check_allows(Role::Admin, Role::Viewer, true);
    check_allows(Role::Admin, Role::Deployer, true);
    check_allows(Role::Admin, Role::Approver, true);
    check_allows(Role::Admin, Role::Admin, true);
}

#[test]
fn a_proxy_token_allows_only_the_proxy_routes_and_only_it_allows_them() {
    for role in Role::ALL {
        check_allows(role, Role::Proxy, role == Role::Proxy);
        check_allows(Role::Proxy, role, role == Role::Proxy);
    }
    assert!(!Role::Proxy.is_person());
    assert!(Role::ALL.iter().filter(|role| role.is_person()).count() == 4);
}

#[test]
fn roles_parse_and_print() {
    for role in Role::ALL {
        assert_eq!(role.to_string().parse::<Role>(), Ok(role));
    }
    assert_eq!("admin".parse::<Role>(), Ok(Role::Admin));
    let error = "Admin".parse::<Role>().expect_err("case matters");
    assert_eq!(
        error.to_string(),
        "unknown role `Admin`, expected `viewer`, `deployer`, `approver`, `admin` or `proxy`"
    );
    assert_eq!(
        serde_json::to_string(&Role::Deployer).ok().as_deref(),
        Some(r#""deployer""#)
    );
}

#[test]
fn generated_tokens_are_prefixed_random_and_hashed() {
    let (plain, token_hash) = generate();
    let (other, _) = generate();
    assert!(plain.expose().starts_with("rwy_"));
    assert_eq!(plain.expose().len(), "rwy_".len() + 64);
    assert!(
        plain.expose()["rwy_".len()..]
            .bytes()
            .all(|byte| byte.is_ascii_hexdigit())
    );
    assert_ne!(plain, other);
    assert_eq!(hash(plain.expose()), token_hash);
    assert_eq!(token_hash.as_str().len(), 64);
}

#[test]
fn plaintext_never_prints() {
    let (plain, _) = generate();
    assert_eq!(format!("{plain}"), "rwy_***");
    assert_eq!(format!("{plain:?}"), "rwy_***");
    assert_eq!(format!("{:?}", Some(&plain)), "Some(rwy_***)");
}

#[test]
fn hash_is_sha256_hex_of_the_plaintext() {
    // sha256("rwy_test"), computed independently with `printf rwy_test | sha256sum`.
    assert_eq!(
        hash("rwy_test").as_str(),
        "c17206174f2a5d034b3508a6300d493d01dd13b3bb92906e586f71f1cd36af17"
    );
}

#[test]
fn verify_finds_issued_tokens_and_skips_revoked_ones() {
    let store = Store::open_in_memory().expect("store");
    let (record, plain) = create(&store, "ci", Role::Deployer).expect("create");
    assert!(record.id.starts_with("t-"));
    assert_eq!((record.name.as_str(), record.role), ("ci", Role::Deployer));
    assert_eq!(store.count_tokens().expect("count"), 1);

    assert_eq!(verify(&store, plain.expose()), Some(record.clone()));
    assert_eq!(
        try_verify(&store, plain.expose()).expect("verify"),
        Some(record.clone())
    );
    assert_eq!(verify(&store, "rwy_0000"), None);
    assert_eq!(verify(&store, ""), None);
    assert_eq!(
        verify(&store, &record.hash),
        None,
        "the hash is not a token"
    );

    assert!(store.revoke_token(&record.id).expect("revoke"));
    assert_eq!(verify(&store, plain.expose()), None);
}
