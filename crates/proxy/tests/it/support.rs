//! Shared harness: a proxy on 127.0.0.1:0 with one route, demo-app instances, raw HTTP helpers and
//! `assert_eventually!`.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use proxy::{
    InstanceId, InstanceSpec, Proxy, ProxyConfig, ReleaseId, RouteName, RouteSettings, RouteSpec,
};
use testkit::demo::{DemoApp, DemoProcess};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const HOST: &str = "demo.test";

/// Retries a condition until it holds or the patience (`ROLLWAY_TEST_PATIENCE_MS`, default 10 s) runs out.
#[macro_export]
macro_rules! assert_eventually {
    ($condition:expr, $($message:tt)+) => {{
        let patience = std::env::var("ROLLWAY_TEST_PATIENCE_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map_or(std::time::Duration::from_secs(10), std::time::Duration::from_millis);
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if $condition {
                break;
            }
            if tokio::time::Instant::now() > deadline {
                panic!($($message)+);
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }};
}

/// A proxy serving on 127.0.0.1:0, with route `web` for host `demo.test`.
pub struct TestProxy {
    pub proxy: Proxy,
    pub addr: SocketAddr,
    /// The settings of route `web`.
    pub settings: RouteSettings,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestProxy {
    pub async fn start(config: ProxyConfig) -> TestProxy {
        TestProxy::start_with(config, RouteSettings::default()).await
    }

    /// A proxy whose route `web` has `settings`.
    pub async fn start_with(config: ProxyConfig, settings: RouteSettings) -> TestProxy {
        let proxy = TestProxy::web(config, settings);
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(proxy::serve(listener, proxy.clone(), shutdown.clone()));
        TestProxy {
            proxy,
            addr,
            settings,
            shutdown,
            server: Some(server),
        }
    }

    /// A proxy served as the proxy process serves it: `workers` worker threads
    /// (`proxy::workers::serve`), each on its own runtime and listener.
    pub async fn start_workers(config: ProxyConfig, workers: usize) -> TestProxy {
        let settings = RouteSettings::default();
        let proxy = TestProxy::web(config, settings);
        let listeners =
            proxy::workers::DataListeners::bind("127.0.0.1:0".parse().expect("addr"), workers)
                .expect("bind 127.0.0.1:0");
        let addr = listeners.local_addr();
        let shutdown = CancellationToken::new();
        let running = proxy::workers::serve(listeners, proxy.clone(), shutdown.clone())
            .expect("start the workers");
        TestProxy {
            proxy,
            addr,
            settings,
            shutdown,
            server: Some(tokio::spawn(running.wait())),
        }
    }

    fn web(config: ProxyConfig, settings: RouteSettings) -> Proxy {
        let proxy = Proxy::new(config);
        proxy.set_route(RouteSpec {
            name: route(),
            hosts: vec![HOST.to_owned()],
            path_prefix: "/".to_owned(),
            settings,
            edge: proxy::RouteEdge::default(),
        });
        proxy
    }

    /// Adds an instance of `release` at `addr` and marks it ready.
    pub fn add_ready(&self, instance: &str, release: &str, addr: SocketAddr) {
        self.add(instance, release, addr);
        self.proxy
            .mark_ready(&InstanceId::new(instance))
            .expect("mark ready");
    }

    pub fn add(&self, instance: &str, release: &str, addr: SocketAddr) {
        self.proxy
            .add_instance(InstanceSpec {
                id: InstanceId::new(instance),
                route: route(),
                release: ReleaseId::new(release),
                addr,
            })
            .expect("add instance");
    }

    /// Stops accepting (what a retiring proxy does), without waiting for the connections to end.
    pub fn stop_accepting(&self) {
        self.shutdown.cancel();
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            let stopped = tokio::time::timeout(Duration::from_secs(20), server).await;
            assert!(
                matches!(stopped, Ok(Ok(Ok(())))),
                "proxy did not stop cleanly: {stopped:?}"
            );
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn route() -> RouteName {
    RouteName::new("web")
}

pub fn demo(version: &str) -> DemoProcess {
    DemoApp::new()
        .version(version)
        .spawn()
        .expect("spawn demo-app")
}

/// One request on a new HTTP/1.1 connection; returns the answer with its body read.
/// An HTTP/2 client connection (prior knowledge) to `addr`, driven by a task of its own.
pub async fn h2_client<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(connection);
    sender
}

pub async fn get(addr: SocketAddr, host: &str, path: &str) -> Response<Bytes> {
    let request = Request::get(path)
        .header(hyper::header::HOST, host)
        .body(Empty::<Bytes>::new())
        .expect("request");
    send(addr, request).await
}

pub async fn send<B>(addr: SocketAddr, request: Request<B>) -> Response<Bytes>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to proxy");
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    let response = sender.send_request(request).await.expect("send request");
    let (head, body) = response.into_parts();
    let body = body.collect().await.expect("read body").to_bytes();
    Response::from_parts(head, body)
}
