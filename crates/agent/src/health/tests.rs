//! Health checks in each protocol against small in-process instances.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::*;

/// An h2c instance: `GET /up` answers 200; gRPC calls answer `message` with `grpc-status` in trailers.
async fn h2c_instance(message: &'static [u8], grpc_status: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |request: Request<Incoming>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", grpc_status.parse().expect("header value"));
                    let frames = if request.uri().path() == "/up" {
                        vec![Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"ok")))]
                    } else {
                        vec![
                            Ok(Frame::data(Bytes::from_static(message))),
                            Ok(Frame::trailers(trailers)),
                        ]
                    };
                    Ok::<_, Infallible>(Response::new(StreamBody::new(futures_util::stream::iter(
                        frames,
                    ))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

async fn check(addr: SocketAddr, path: &str, protocol: Protocol) -> Result<(), ProbeError> {
    probe(addr, path, "demo.test", Duration::from_secs(5), protocol).await
}

/// A failed check as a person reads it: the error and its causes.
fn text(error: ProbeError) -> String {
    crate::report::chain(&error)
}

#[tokio::test]
async fn grpc_and_h2c_instances_are_checked_in_their_protocol() {
    let serving = h2c_instance(&[0, 0, 0, 0, 2, 0x08, 0x01], "0").await;
    assert_eq!(
        check(serving, GRPC_HEALTH_CHECK, Protocol::Grpc)
            .await
            .map_err(text),
        Ok(())
    );
    assert_eq!(
        check(serving, "/up", Protocol::H2c).await.map_err(text),
        Ok(())
    );
    // An HTTP/1.1 check of an h2c-only instance fails: the protocol matters.
    assert!(check(serving, "/up", Protocol::Http1).await.is_err());

    let not_serving = h2c_instance(&[0, 0, 0, 0, 2, 0x08, 0x02], "0").await;
    assert_eq!(
        check(not_serving, GRPC_HEALTH_CHECK, Protocol::Grpc)
            .await
            .map_err(text),
        Err("call /grpc.health.v1.Health/Check did not answer SERVING".to_owned())
    );
    let failing = h2c_instance(&[], "14").await;
    assert_eq!(
        check(failing, "/app.Service/Ping", Protocol::Grpc)
            .await
            .map_err(text),
        Err("call /app.Service/Ping ended with grpc-status 14".to_owned())
    );
}
