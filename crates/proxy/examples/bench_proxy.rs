//! Benchmark helper for bench/proxy: runs either the upstream (a minimal hyper HTTP/1.1 server answering
//! `/small` and `/64k`) or Rollway's proxy with one static route to it.
//!
//! Usage: `bench_proxy upstream LISTEN_ADDR` or `bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR [WORKERS]`.
//! The proxy serves as `rollway proxy` does: one worker thread per core (`proxy::workers`) unless
//! WORKERS says otherwise.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
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
        Some("proxy") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            let upstream: SocketAddr = args.get(3).ok_or("missing UPSTREAM_ADDR")?.parse()?;
            let workers = match args.get(4) {
                Some(workers) => workers.parse()?,
                None => proxy::workers::default_workers(),
            };
            runtime.block_on(proxy(listen, upstream, workers))
        }
        _ => Err(
            "usage: bench_proxy upstream LISTEN_ADDR | bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR [WORKERS]"
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

async fn proxy(
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let proxy = Proxy::new(ProxyConfig::default());
    let route = RouteName::new("bench");
    proxy.set_route(RouteSpec {
        name: route.clone(),
        hosts: Vec::new(),
        path_prefix: "/".to_owned(),
        settings: proxy::RouteSettings::default(),
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
