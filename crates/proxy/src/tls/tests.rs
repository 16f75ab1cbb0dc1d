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

/// Moves TLS records between an in-memory client and server until neither has anything to send.
fn exchange(client: &mut rustls::ClientConnection, server: &mut rustls::ServerConnection) {
    for _ in 0..20 {
        let mut moved = false;
        while client.wants_write() {
            let mut buffer = Vec::new();
            client.write_tls(&mut buffer).expect("client writes");
            server
                .read_tls(&mut buffer.as_slice())
                .expect("server reads");
            server
                .process_new_packets()
                .expect("server accepts the records");
            moved = true;
        }
        while server.wants_write() {
            let mut buffer = Vec::new();
            server.write_tls(&mut buffer).expect("server writes");
            client
                .read_tls(&mut buffer.as_slice())
                .expect("client reads");
            client
                .process_new_packets()
                .expect("client accepts the records");
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("the handshake did not settle in 20 rounds");
}

/// One handshake of `client` against `server`; what kind it was and the suite the server chose.
fn handshake(
    client: &Arc<rustls::ClientConfig>,
    server: &Arc<rustls::ServerConfig>,
) -> (rustls::HandshakeKind, rustls::CipherSuite) {
    let name = rustls::pki_types::ServerName::try_from("a.test").expect("name");
    let mut client = rustls::ClientConnection::new(Arc::clone(client), name).expect("client");
    let mut server = rustls::ServerConnection::new(Arc::clone(server)).expect("server");
    exchange(&mut client, &mut server);
    assert!(!client.is_handshaking() && !server.is_handshaking());
    (
        server
            .handshake_kind()
            .expect("a finished handshake has a kind"),
        server
            .negotiated_cipher_suite()
            .expect("a finished handshake has a suite")
            .suite(),
    )
}

#[test]
fn a_session_ticket_from_one_worker_resumes_on_another_but_not_on_another_proxy() {
    let certificate = self_signed(&["a.test"]);
    let store = Arc::new(TlsStore::default());
    store
        .replace(TlsState {
            certificates: vec![certificate.clone()],
            ..TlsState::default()
        })
        .expect("a good set");
    let other_proxy = Arc::new(TlsStore::default());
    other_proxy
        .replace(TlsState {
            certificates: vec![certificate.clone()],
            ..TlsState::default()
        })
        .expect("a good set");
    // Two workers of one proxy each build their configuration, as `serve_https` does.
    let worker_0 = server_config(Arc::clone(&store)).expect("config");
    let worker_1 = server_config(Arc::clone(&store)).expect("config");
    let elsewhere = server_config(other_proxy).expect("config");

    let mut roots = rustls::RootCertStore::empty();
    for der in CertificateDer::pem_slice_iter(certificate.chain_pem.as_bytes()) {
        roots.add(der.expect("pem")).expect("a root");
    }
    // rustls's client lists AES-256-GCM-SHA384 first, as OpenSSL's does.
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );

    let (kind, suite) = handshake(&client, &worker_0);
    assert_eq!(kind, rustls::HandshakeKind::Full);
    assert_eq!(suite, rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert_eq!(
        handshake(&client, &worker_1).0,
        rustls::HandshakeKind::Resumed,
        "a ticket sealed by worker 0 resumes on worker 1"
    );
    // Another proxy's tickets are sealed with other keys: a full handshake, never a resumption.
    assert_eq!(
        handshake(&client, &elsewhere).0,
        rustls::HandshakeKind::Full
    );
}
