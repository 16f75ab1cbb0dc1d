//! Benchmark helper for bench/proxy: runs the upstream (a minimal hyper HTTP/1.1 server answering
//! `/small` and `/64k`), the gRPC upstream (a minimal h2c server answering every call with one 5-byte
//! message and `grpc-status: 0`), or Rollway's proxy with one static route to either.
//!
//! Usage: `bench_proxy upstream LISTEN_ADDR`, `bench_proxy grpc-upstream LISTEN_ADDR` or
//! `bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR [WORKERS] [http1|h2c|grpc]`. The proxy serves as
//! `rollway proxy` does: one worker thread per core (`proxy::workers`) unless WORKERS says otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proxy::{InstanceId, InstanceSpec, Proxy, ProxyConfig, ReleaseId, RouteName, RouteSpec};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.get(1).map(String::as_str) {
        Some("upstream") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            runtime.block_on(upstream(listen))
        }
        Some("grpc-upstream") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            runtime.block_on(grpc_upstream(listen))
        }
        Some("proxy") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            let upstream: SocketAddr = args.get(3).ok_or("missing UPSTREAM_ADDR")?.parse()?;
            let workers = match args.get(4).map(String::as_str) {
                Some("0") | None => proxy::workers::default_workers(),
                Some(workers) => workers.parse()?,
            };
            let protocol = match args.get(5).map(String::as_str) {
                None | Some("http1") => proxy::UpstreamProtocol::Http1,
                Some("h2c") => proxy::UpstreamProtocol::H2c,
                Some("grpc") => proxy::UpstreamProtocol::Grpc,
                Some(other) => return Err(format!("unknown protocol `{other}`").into()),
            };
            runtime.block_on(proxy(listen, upstream, workers, protocol))
        }
        _ => Err(
            "usage: bench_proxy upstream|grpc-upstream LISTEN_ADDR | bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR [WORKERS] [http1|h2c|grpc]"
                .into(),
        ),
    }
}

async fn upstream(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    let small = Bytes::from_static(b"hello from upstream\n");
    let large = Bytes::from(vec![b'x'; 64 * 1024]);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let (small, large) = (small.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let body = if request.uri().path() == "/64k" {
                    large.clone()
                } else {
                    small.clone()
                };
                async move { Ok::<_, Infallible>(Response::new(Full::new(body))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Answers every call with the message `hello` and `grpc-status: 0` in the trailers, as a unary gRPC
/// method does.
async fn grpc_upstream(listen: SocketAddr) -> Result<(), Box<dyn std::error::Error>> {
    let listener = TcpListener::bind(listen).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|request: Request<Incoming>| async move {
                // Read the call's message before answering, as a server does.
                let _ = http_body_util::BodyExt::collect(request.into_body()).await;
                let mut trailers = hyper::HeaderMap::new();
                trailers.insert("grpc-status", hyper::header::HeaderValue::from_static("0"));
                let frames = [
                    Ok::<_, Infallible>(Frame::data(Bytes::from_static(b"\0\0\0\0\x05hello"))),
                    Ok(Frame::trailers(trailers)),
                ];
                let mut response =
                    Response::new(StreamBody::new(futures_util::stream::iter(frames)));
                response.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/grpc"),
                );
                Ok::<_, Infallible>(response)
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    protocol: proxy::UpstreamProtocol,
) -> Result<(), Box<dyn std::error::Error>> {
    let proxy = Proxy::new(ProxyConfig::default());
    let route = RouteName::new("bench");
    proxy.set_route(RouteSpec {
        name: route.clone(),
        hosts: Vec::new(),
        path_prefix: "/".to_owned(),
        settings: proxy::RouteSettings {
            protocol,
            ..proxy::RouteSettings::default()
        },
        edge: proxy::RouteEdge::default(),
    });
    let instance = InstanceId::new("upstream");
    proxy.add_instance(InstanceSpec {
        id: instance.clone(),
        route,
        release: ReleaseId::new("bench"),
        addr: upstream,
    })?;
    proxy.mark_ready(&instance)?;
    let listeners = proxy::workers::DataListeners::bind(listen, workers)?;
    proxy::workers::serve(listeners, proxy, CancellationToken::new())?
        .wait()
        .await?;
    Ok(())
}
