use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    assert_eq!(
        parse_retry_after("120", now),
        Some(now + Duration::from_secs(120))
    );
    assert_eq!(
        parse_retry_after(" 0 ", now),
        Some(now),
        "surrounding spaces are allowed"
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
        Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
    );
    for bad in ["", "soon", "-5", "1.5", "Sunday"] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
    }
}

/// A loopback HTTPS server that refuses everything with 429, `Retry-After: 120` and an ACME
/// problem document, as a rate-limited ACME server does. Returns its address and its CA file.
async fn refusing_server(dir: &std::path::Path) -> (std::net::SocketAddr, std::path::PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, cert.pem()).expect("ca file");
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        // Bounded: the test makes three requests (directory, nonce, account).
        for _ in 0..8 {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let Ok(mut tls) = acceptor.accept(stream).await else {
                continue;
            };
            let mut buffer = [0u8; 4096];
            let read = tls.read(&mut buffer).await.unwrap_or(0);
            let request = String::from_utf8_lossy(&buffer[..read]).into_owned();
            let base = format!("https://127.0.0.1:{}", addr.port());
            let answer = if request.starts_with("GET /dir ") {
                let body = format!(
                    r#"{{"newNonce":"{base}/nonce","newAccount":"{base}/account","newOrder":"{base}/order"}}"#
                );
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            } else if request.contains(" /nonce ") {
                "HTTP/1.1 200 OK\r\nReplay-Nonce: bm9uY2U\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
            } else {
                let body = r#"{"type":"urn:ietf:params:acme:error:rateLimited","detail":"too many new orders recently"}"#;
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: 120\r\nReplay-Nonce: bm9uY2U\r\nContent-Type: application/problem+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            };
            let _ = tls.write_all(answer.as_bytes()).await;
            let _ = tls.shutdown().await;
        }
    });
    (addr, ca)
}

#[tokio::test]
async fn a_rate_limited_refusal_leaves_its_retry_after_for_the_failure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, ca) = refusing_server(dir.path()).await;
    let seen = Arc::new(std::sync::Mutex::new(None));
    let client = RetryAfterClient {
        inner: http_client(Some(&ca)).expect("client"),
        seen: Arc::clone(&seen),
    };
    let before = SystemTime::now();
    let refused = Account::builder_with_http(Box::new(client))
        .create(
            &NewAccount {
                contact: &[],
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            format!("https://127.0.0.1:{}/dir", addr.port()),
            None,
        )
        .await;
    let Err(error) = refused else {
        panic!("a 429 made an account");
    };
    assert!(
        describe(&error).contains("too many new orders recently"),
        "the server's own reason: {}",
        describe(&error)
    );
    let noted = seen
        .lock()
        .expect("lock")
        .expect("the 429's Retry-After was noted");
    let wait = noted.duration_since(before).expect("in the future");
    assert!(
        (Duration::from_secs(119)..=Duration::from_secs(121)).contains(&wait),
        "{wait:?}"
    );
}
