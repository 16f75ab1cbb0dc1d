//! HTTP/2: prior-knowledge h2c on the plain listener, and h2 and HTTP/1.1 over TLS chosen by ALPN.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{Proxy, ProxyConfig, RouteSpec};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{HOST, TestProxy, demo, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_proxied_to_an_http1_instance() {
    let process = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let stream = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    for _ in 0..3 {
        let request = Request::get(format!("http://{HOST}/"))
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = sender.send_request(request).await.expect("h2 request");
        assert_eq!(response.version(), Version::HTTP_2);
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.as_ref(), b"A\n");
    }
    test_proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_h2_and_http1_by_alpn() {
    let process = demo("A");
    let certified = rcgen::generate_simple_self_signed(vec![HOST.to_owned()]).expect("certificate");
    let certificate = CertificateDer::from(certified.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der()));
    let mut server_config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![certificate.clone()], key)
        .expect("server config");
    server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];

    let proxy = Proxy::new(ProxyConfig::default());
    proxy.set_route(RouteSpec {
        name: route(),
        hosts: vec![HOST.to_owned()],
        path_prefix: "/".to_owned(),
        settings: proxy::RouteSettings::default(),
        edge: proxy::RouteEdge::default(),
    });
    proxy
        .add_instance(proxy::InstanceSpec {
            id: proxy::InstanceId::new("a"),
            route: route(),
            release: proxy::ReleaseId::new("A"),
            addr: process.addr(),
        })
        .expect("add");
    proxy
        .mark_ready(&proxy::InstanceId::new("a"))
        .expect("ready");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(proxy::serve_tls(
        listener,
        proxy.clone(),
        Arc::new(server_config),
        shutdown.clone(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certificate).expect("root");
    for (alpn, version) in [
        (&b"h2"[..], Version::HTTP_2),
        (&b"http/1.1"[..], Version::HTTP_11),
    ] {
        let mut client_config = rustls::ClientConfig::builder()
            .with_root_certificates(roots.clone())
            .with_no_client_auth();
        client_config.alpn_protocols = vec![alpn.to_vec()];
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let tls = connector
            .connect(ServerName::try_from(HOST).expect("name"), tcp)
            .await
            .expect("TLS handshake");
        let request = Request::get(format!("https://{HOST}/"))
            .header("host", HOST)
            .body(Empty::<Bytes>::new())
            .expect("request");
        let response = if version == Version::HTTP_2 {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .expect("h2 handshake");
            tokio::spawn(connection);
            sender.send_request(request).await.expect("request")
        } else {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .expect("h1 handshake");
            tokio::spawn(connection);
            let mut request = request;
            *request.uri_mut() = "/".parse().expect("uri");
            sender.send_request(request).await.expect("request")
        };
        assert_eq!(response.version(), version);
        assert_eq!(response.status(), 200);
        let body = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        assert_eq!(body.as_ref(), b"A\n");
    }
    shutdown.cancel();
    server.await.expect("join").expect("serve_tls");
}
