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

use crate::support::{HOST, TestProxy, demo, h2_client, route};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_is_proxied_to_an_http1_instance() {
    let process = demo("A");
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", process.addr());
    let mut sender = h2_client(test_proxy.addr).await;
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

/// An HTTP/1 instance that answers every request with `total` bytes, made as hyper asks for them;
/// `produced` counts what it handed to hyper.
async fn endless_instance(
    total: usize,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];
    // A small send buffer (inherited by the accepted sockets): the kernel holds little of the answer.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_send_buffer_size(64 * 1024).expect("send buffer");
    socket
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let listener = socket.listen(64).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let produced = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&produced);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |_request| {
                    let counted = Arc::clone(&counted);
                    let chunks = futures_util::stream::unfold(0usize, move |sent| {
                        let counted = Arc::clone(&counted);
                        async move {
                            (sent < total).then(|| {
                                counted.fetch_add(CHUNK.len(), Ordering::Relaxed);
                                (
                                    Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                                        Bytes::from_static(&CHUNK),
                                    )),
                                    sent + CHUNK.len(),
                                )
                            })
                        }
                    });
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::StreamBody::new(chunks),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, produced)
}

/// One HTTP/2 frame: the 9-byte header, then the payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let length = u32::try_from(payload.len()).expect("frame length");
    let mut frame = length.to_be_bytes()[1..].to_vec();
    frame.extend_from_slice(&[kind, flags]);
    frame.extend_from_slice(&stream.to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

// A client that opens HTTP/2 streams with the largest windows there are and then stops reading cannot
// make the proxy buffer an answer without limit: what the proxy takes from the instance stays bounded
// by hyper's per-stream send buffer (`max_send_buf_size`), its client read buffer and the kernel's
// socket buffers (the proxy's receive buffer from each instance grows up to `tcp_rmem`'s 32 MiB here;
// the instance's send buffer and the client's receive buffer are kept small), far below the answers'
// 4 x 256 MiB.
// See: issue 20 (session 28, HTTP/2 to clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_http2_client_cannot_make_the_proxy_buffer_without_limit() {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncWriteExt;
    const ANSWER: usize = 256 * 1024 * 1024;
    const STREAMS: u32 = 4;
    let (addr, produced) = endless_instance(ANSWER).await;
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    test_proxy.add_ready("a", "A", addr);
    // A small receive buffer: the kernel holds little of what the proxy writes to the client.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .set_recv_buffer_size(64 * 1024)
        .expect("receive buffer");
    let mut client = socket.connect(test_proxy.addr).await.expect("connect");
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    // SETTINGS_INITIAL_WINDOW_SIZE = 2^31 - 1, and the connection's window raised as far.
    opening.extend(h2_frame(0x4, 0, 0, &[0, 4, 0x7f, 0xff, 0xff, 0xff]));
    opening.extend(h2_frame(
        0x8,
        0,
        0,
        &(0x7fff_ffff_u32 - 65_535).to_be_bytes(),
    ));
    for index in 0..STREAMS {
        // :method GET, :scheme http, then :path and :authority as literals (not indexed).
        let mut block = vec![0x82, 0x86, 0x04, 5];
        block.extend_from_slice(format!("/big{index}").as_bytes());
        block.extend_from_slice(&[0x01, u8::try_from(HOST.len()).expect("host length")]);
        block.extend_from_slice(HOST.as_bytes());
        // END_STREAM | END_HEADERS
        opening.extend(h2_frame(0x1, 0x5, 1 + 2 * index, &block));
    }
    client.write_all(&opening).await.expect("write");
    // The client never reads: wait until the instance is no longer asked for more.
    let mut last = 0;
    let mut still = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let now = produced.load(Ordering::Relaxed);
        still = if now == last && now > 0 { still + 1 } else { 0 };
        last = now;
        if still == 5 {
            break;
        }
    }
    assert_eq!(still, 5, "the proxy kept reading the answers: {last} bytes");
    let per_stream = last / STREAMS as usize;
    assert!(
        per_stream < 64 * 1024 * 1024,
        "the proxy took {last} bytes from the instance for a client that reads nothing"
    );
    drop(client);
    test_proxy.stop().await;
}

// The proxy's own HTTP/2 answers carry a `date` (hyper's HTTP/2 server no longer adds it: `forward` does,
// in the lookup that marks it for HPACK), as its HTTP/1 ones do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_http2_answers_carry_a_date() {
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    let mut sender = h2_client(test_proxy.addr).await;
    let request = Request::get("http://unrouted.test/")
        .body(Empty::<Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 request");
    assert_eq!(response.status(), 404);
    let date = response
        .headers()
        .get("date")
        .expect("a date")
        .to_str()
        .expect("text");
    assert!(date.len() == 29 && date.ends_with(" GMT"), "{date}");
    test_proxy.stop().await;
}

/// Reads frames from `client` until the HEADERS frame of `stream`, answering the server's SETTINGS; its
/// header block (the proxy's answers are small: one frame, no padding).
async fn h2_answer_block(client: &mut TcpStream, stream: u32) -> Vec<u8> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut head = [0u8; 9];
        client
            .read_exact(&mut head)
            .await
            .expect("a frame's header");
        let length = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; length];
        client
            .read_exact(&mut payload)
            .await
            .expect("a frame's payload");
        if kind == 0x4 && flags & 0x1 == 0 {
            client
                .write_all(&h2_frame(0x4, 0x1, 0, &[]))
                .await
                .expect("settings ack");
        }
        if kind == 0x1 && id == stream {
            return payload;
        }
    }
}

// Every HTTP/2 answer's `x-request-id` is new, so HPACK sends it as a literal (never indexed, session 27);
// its name, though, goes into the connection's header table with the first answer, and every later
// answer names it by its index instead of as a literal (~9 bytes fewer per answer, and h2 Huffman-codes
// a literal name on every answer). See: issue 20 (session 31, HTTP/2 to clients).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_answers_after_the_first_name_the_request_id_by_its_table_index() {
    use tokio::io::AsyncWriteExt;
    let test_proxy = TestProxy::start(ProxyConfig::default()).await;
    let mut client = TcpStream::connect(test_proxy.addr).await.expect("connect");
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(h2_frame(0x4, 0, 0, &[]));
    client.write_all(&opening).await.expect("preface");
    let authority = b"unrouted.test";
    let mut blocks = Vec::new();
    // The proxy keeps a client's usable id.
    for (index, id) in ["id-aa", "id-ac", "id-ae"].iter().enumerate() {
        // :method GET, :scheme http, :path /, :authority as a literal, then `x-request-id` as a literal
        // with a literal name, neither indexed.
        let mut block = vec![0x82, 0x86, 0x84, 0x01, 13];
        block.extend_from_slice(authority);
        block.extend_from_slice(&[0x00, 12]);
        block.extend_from_slice(b"x-request-id");
        block.push(u8::try_from(id.len()).expect("id length"));
        block.extend_from_slice(id.as_bytes());
        let stream = 1 + 2 * u32::try_from(index).expect("index");
        // END_STREAM | END_HEADERS; one stream at a time, so the answers are encoded in this order.
        client
            .write_all(&h2_frame(0x1, 0x5, stream, &block))
            .await
            .expect("request");
        let answer = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            h2_answer_block(&mut client, stream),
        )
        .await
        .expect("an answer within 10 s");
        blocks.push(answer);
    }
    // `x-request-id` Huffman-coded (RFC 7541, appendix B), as a literal name is sent: in the first answer
    // (which adds the field to the table), in no later one (a 1-2 byte index instead).
    const NAME: [u8; 9] = [0xf2, 0xb5, 0x85, 0xed, 0x69, 0x50, 0x95, 0x8d, 0x27];
    let names = |block: &Vec<u8>| block.windows(NAME.len()).filter(|w| *w == NAME).count();
    assert_eq!(names(&blocks[0]), 1, "{blocks:02x?}");
    assert_eq!(names(&blocks[1]), 0, "{blocks:02x?}");
    assert_eq!(names(&blocks[2]), 0, "{blocks:02x?}");
    drop(client);
    test_proxy.stop().await;
}
