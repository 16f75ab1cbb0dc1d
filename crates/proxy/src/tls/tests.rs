use super::*;

fn self_signed(hosts: &[&str]) -> TlsCertificate {
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(
        hosts
            .iter()
            .map(|host| (*host).to_owned())
            .collect::<Vec<_>>(),
    )
    .expect("params");
    let cert = params.self_signed(&key).expect("cert");
    TlsCertificate {
        hosts: hosts.iter().map(|host| (*host).to_owned()).collect(),
        chain_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

fn leaf(store: &TlsStore, host: &str) -> Option<Vec<u8>> {
    store
        .for_host(host)
        .map(|key| key.cert.first().expect("a leaf").to_vec())
}

#[test]
fn each_host_gets_its_own_certificate_and_a_wildcard_covers_one_label() {
    let a = self_signed(&["a.test"]);
    let wild = self_signed(&["*.b.test"]);
    let store = TlsStore::default();
    store
        .replace(TlsState {
            certificates: vec![a.clone(), wild.clone()],
            ..TlsState::default()
        })
        .expect("valid set");
    let a_der = leaf(&store, "a.test").expect("a.test served");
    let wild_der = leaf(&store, "x.b.test").expect("x.b.test served by the wildcard");
    assert_ne!(a_der, wild_der);
    assert_eq!(
        leaf(&store, "A.TEST."),
        Some(a_der),
        "case and trailing dot"
    );
    assert_eq!(
        leaf(&store, "y.x.b.test"),
        None,
        "a wildcard covers one label"
    );
    assert_eq!(leaf(&store, "c.test"), None);
}

#[test]
fn a_bad_set_changes_nothing_and_its_error_names_the_host_not_the_key() {
    let good = self_signed(&["a.test"]);
    let store = TlsStore::default();
    store
        .replace(TlsState {
            certificates: vec![good.clone()],
            ..TlsState::default()
        })
        .expect("valid set");
    let before = leaf(&store, "a.test");
    // The key of another certificate.
    let other = self_signed(&["b.test"]);
    let mismatched = TlsCertificate {
        hosts: vec!["b.test".to_owned()],
        chain_pem: other.chain_pem.clone(),
        key_pem: good.key_pem.clone(),
    };
    let error = store
        .replace(TlsState {
            certificates: vec![self_signed(&["c.test"]), mismatched],
            ..TlsState::default()
        })
        .expect_err("mismatched key");
    let text = error.to_string();
    assert!(text.contains("b.test"), "{text}");
    assert!(!text.contains("PRIVATE KEY-----\n"), "{text}");
    assert_eq!(
        leaf(&store, "a.test"),
        before,
        "the served set is unchanged"
    );
    assert_eq!(
        leaf(&store, "c.test"),
        None,
        "nothing of the refused set is served"
    );

    let garbage = TlsCertificate {
        hosts: vec!["d.test".to_owned()],
        chain_pem: "not a pem".to_owned(),
        key_pem: good.key_pem.clone(),
    };
    let error = store
        .replace(TlsState {
            certificates: vec![garbage],
            ..TlsState::default()
        })
        .expect_err("no certificate");
    assert!(error.to_string().contains("d.test"), "{error}");
}

#[test]
fn debug_output_never_shows_a_key() {
    let certificate = self_signed(&["a.test"]);
    let state = TlsState {
        certificates: vec![certificate.clone()],
        tls_alpn01: vec![certificate.clone()],
        http01: vec![Http01Answer {
            token: "t".to_owned(),
            key_authorization: "t.thumb".to_owned(),
        }],
    };
    let printed = format!("{state:?}");
    assert!(!printed.contains("PRIVATE KEY"), "{printed}");
    assert!(!printed.contains(&certificate.key_pem), "{printed}");
}

#[test]
fn http01_answers_only_pending_tokens() {
    let store = TlsStore::default();
    store
        .replace(TlsState {
            http01: vec![Http01Answer {
                token: "tok".to_owned(),
                key_authorization: "tok.thumb".to_owned(),
            }],
            ..TlsState::default()
        })
        .expect("valid");
    assert_eq!(store.http01("tok").as_deref(), Some("tok.thumb"));
    assert_eq!(store.http01("other"), None);
    store.replace(TlsState::default()).expect("empty");
    assert_eq!(store.http01("tok"), None);
}
