//! Benchmark helper for bench/proxy: runs the upstream (a minimal hyper HTTP/1.1 server answering
//! `/small` and `/64k`), the gRPC upstream (a minimal h2c server answering every call with one 5-byte
//! message and `grpc-status: 0`), or Rollway's proxy with one static route to either.
//!
//! Usage: `bench_proxy upstream LISTEN_ADDR`, `bench_proxy grpc-upstream LISTEN_ADDR` or
//! `bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR[,UPSTREAM_ADDR...] [WORKERS] [http1|h2c|grpc]
//! [open|limited|deployed]`. The proxy serves as `rollway proxy` does: one worker thread per core
//! (`proxy::workers`) unless WORKERS says otherwise. `limited` gives the route a per-client rate limit
//! that the benchmark never reaches (a million a second), so its cost is the bucket's, not refusals'.
//! `deployed` configures the route the way the agent configures a deployed app's (`DEPLOYED_HOST`):
//! a `DesiredState` applied with `proxy::apply`, as the proxy process does with the agent's
//! `PUT /v1/state`: a Host route, one pool (a release) with one instance per upstream address, a rate
//! limit taking a token per request, an allow list and `max_body`, as `bench/proxy/deployed.sh`'s
//! manifest asks for.
//!
//! `switch` is the proxy's side of a blue-green deploy, driven the way the agent drives it: the routing is
//! set with `proxy::apply` (what the control socket's `PUT /v1/state` runs) to a Host route
//! (`bench.localhost`, the deployed benchmark's edge controls: an allow list and a rate limit never
//! reached) with release 1 on the A instances. Each SIGUSR1 switches: one more `apply` lists only the
//! next release, on the other pair of instances (added, ready, weight 100; the serving ones drain, 5 s
//! bound), and from the first switch on the release statistics are read every second as the agent's
//! analysis does (`GET /v1/stats`). Each switch prints `switched RELEASE UNIX_MS APPLY_US`.

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

// The allocator `rollway` runs with (`proxy::memory`).
#[global_allocator]
static ALLOCATOR: proxy::memory::Allocator = proxy::memory::ALLOCATOR;

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
            let upstreams = addrs(args.get(3).ok_or("missing UPSTREAM_ADDR")?)?;
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
            let mode = match args.get(6).map(String::as_str) {
                None | Some("open") => Mode::Open,
                Some("limited") => Mode::Limited,
                Some("deployed") => Mode::Deployed,
                Some(other) => return Err(format!("unknown edge `{other}`").into()),
            };
            runtime.block_on(proxy(listen, &upstreams, workers, protocol, mode))
        }
        Some("proxy-https") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            let upstream: SocketAddr = args.get(3).ok_or("missing UPSTREAM_ADDR")?.parse()?;
            let host = args.get(4).ok_or("missing HOST")?.clone();
            let chain = std::fs::read_to_string(args.get(5).ok_or("missing CERT_PEM")?)?;
            let key = std::fs::read_to_string(args.get(6).ok_or("missing KEY_PEM")?)?;
            let workers = match args.get(7).map(String::as_str) {
                Some("0") | None => proxy::workers::default_workers(),
                Some(workers) => workers.parse()?,
            };
            let certificate = proxy::tls::TlsCertificate {
                hosts: vec![host],
                chain_pem: chain,
                key_pem: key,
            };
            runtime.block_on(proxy_https(listen, upstream, workers, certificate))
        }
        Some("switch") => {
            let listen: SocketAddr = args.get(2).ok_or("missing LISTEN_ADDR")?.parse()?;
            let a = addrs(args.get(3).ok_or("missing ADDRS_A")?)?;
            let b = addrs(args.get(4).ok_or("missing ADDRS_B")?)?;
            let workers = match args.get(5).map(String::as_str) {
                Some("0") | None => proxy::workers::default_workers(),
                Some(workers) => workers.parse()?,
            };
            runtime.block_on(switch(listen, [a, b], workers))
        }
        Some("idle-clients") => {
            let target: SocketAddr = args.get(2).ok_or("missing TARGET_ADDR")?.parse()?;
            let count: usize = args.get(3).ok_or("missing COUNT")?.parse()?;
            let hold: u64 = args.get(4).ok_or("missing HOLD_S")?.parse()?;
            let burst = match args.get(5).map(String::as_str) {
                None | Some("sequential") => false,
                Some("burst") => true,
                Some(other) => return Err(format!("unknown mode `{other}`").into()),
            };
            runtime.block_on(idle_clients(target, count, hold, burst))
        }
        Some("paced-clients") => {
            let target: SocketAddr = args.get(2).ok_or("missing TARGET_ADDR")?.parse()?;
            let host = args.get(3).ok_or("missing HOST")?.clone();
            let path = args.get(4).ok_or("missing PATH")?.clone();
            let rate: u32 = args.get(5).ok_or("missing RATE")?.parse()?;
            let connections: u32 = args.get(6).ok_or("missing CONNECTIONS")?.parse()?;
            let seconds: u32 = args.get(7).ok_or("missing SECONDS")?.parse()?;
            let out = args.get(8).ok_or("missing OUT_FILE")?.clone();
            if rate == 0 || connections == 0 || seconds == 0 || seconds > 600 {
                return Err("RATE and CONNECTIONS must be > 0, SECONDS 1-600".into());
            }
            runtime.block_on(paced_clients(
                target,
                &host,
                &path,
                Pace {
                    rate,
                    connections,
                    seconds,
                },
                &out,
            ))
        }
        _ => Err(
            "usage: bench_proxy upstream|grpc-upstream LISTEN_ADDR | bench_proxy idle-clients TARGET_ADDR COUNT HOLD_S [sequential|burst] | bench_proxy paced-clients TARGET_ADDR HOST PATH RATE CONNECTIONS SECONDS OUT_FILE | bench_proxy switch LISTEN_ADDR ADDR_A,ADDR_A ADDR_B,ADDR_B [WORKERS] | bench_proxy proxy LISTEN_ADDR UPSTREAM_ADDR[,UPSTREAM_ADDR...] [WORKERS] [http1|h2c|grpc] [open|limited|deployed] | bench_proxy proxy-https LISTEN_ADDR UPSTREAM_ADDR HOST CERT_PEM KEY_PEM [WORKERS]"
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

/// Opens `count` keep-alive connections to `target`, sends one `GET /small` on each and reads its answer,
/// prints `ready`, holds them idle for `hold_s` seconds, closes them all and prints `closed`. Sequential:
/// one connection after another. `burst`: all connections first, then every request at once (as
/// bench/proxy/deployed.sh's idle client does, so the proxy sees thousands of requests in flight). Bounded
/// in count (the caller's) and in time: each answer within 10 s (all of a burst's within 60 s), the hold
/// as given.
async fn idle_clients(
    target: SocketAddr,
    count: usize,
    hold_s: u64,
    burst: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn exchange(stream: &mut tokio::net::TcpStream) -> std::io::Result<()> {
        stream
            .write_all(b"GET /small HTTP/1.1\r\nHost: bench\r\n\r\n")
            .await?;
        let mut answer = Vec::new();
        let mut chunk = [0u8; 1024];
        // The small answer ends with this line of its 20-byte body.
        while !answer.ends_with(b"hello from upstream\n") {
            let read = stream.read(&mut chunk).await?;
            if read == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof));
            }
            answer.extend_from_slice(&chunk[..read]);
        }
        Ok(())
    }
    let mut connections = Vec::with_capacity(count);
    if burst {
        for _ in 0..count {
            connections.push(tokio::net::TcpStream::connect(target).await?);
        }
        let exchanges: Vec<_> = connections
            .into_iter()
            .map(|mut stream| {
                tokio::spawn(async move {
                    exchange(&mut stream).await?;
                    Ok::<_, std::io::Error>(stream)
                })
            })
            .collect();
        connections = Vec::with_capacity(count);
        tokio::time::timeout(std::time::Duration::from_secs(60), async {
            for exchange in exchanges {
                connections.push(exchange.await.map_err(std::io::Error::other)??);
            }
            Ok::<_, std::io::Error>(())
        })
        .await??;
    } else {
        for _ in 0..count {
            let mut stream = tokio::net::TcpStream::connect(target).await?;
            tokio::time::timeout(std::time::Duration::from_secs(10), exchange(&mut stream))
                .await??;
            connections.push(stream);
        }
    }
    println!("ready");
    tokio::time::sleep(std::time::Duration::from_secs(hold_s)).await;
    drop(connections);
    println!("closed");
    Ok(())
}

/// The schedule of `paced-clients`: RATE requests a second in all, over CONNECTIONS keep-alive
/// connections, for SECONDS.
#[derive(Debug, Clone, Copy)]
struct Pace {
    rate: u32,
    connections: u32,
    seconds: u32,
}

/// One request of `paced-clients`: when it was due (µs after the schedule's start), when its answer
/// ended (µs after the start; `u64::MAX` when it failed) and whether it was a 2xx answer.
#[derive(Debug, Clone, Copy)]
struct Paced {
    due_us: u64,
    done_us: u64,
    ok: bool,
}

/// An open-loop load: request `k` of connection `i` is due at `(k * CONNECTIONS + i) / RATE` seconds
/// after the start, whatever happened to the ones before it (a connection whose answer is late sends
/// its next request as soon as the answer is in, and that request's latency counts from when it was due:
/// no coordinated omission). Unlike a closed loop (wrk), the offered rate does not fall when the
/// target slows, so at a rate the machine serves with room, a lower count of answers in a window is
/// a stall, not CPU taken by something else. A failed exchange is recorded and the connection made
/// again. Writes per 100 ms window (of the wall clock, Unix ms) `WINDOW_MS DUE ANSWERED OK_OF_DUE
/// P50_US P99_US MAX_US FAILED`: requests due in the window, answers that ended in it, due ones
/// answered 2xx, latency percentiles from due to answer of the ones due in it, failed ones due in it.
async fn paced_clients(
    target: SocketAddr,
    host: &str,
    path: &str,
    pace: Pace,
    out: &str,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let start = tokio::time::Instant::now() + Duration::from_millis(300);
    let start_unix_us = (SystemTime::now().duration_since(UNIX_EPOCH)? + Duration::from_millis(300))
        .as_micros() as u64;
    let total = u64::from(pace.rate) * u64::from(pace.seconds);
    let uri: hyper::Uri = path.parse()?;
    let host = hyper::header::HeaderValue::from_str(host)?;
    let mut tasks = Vec::new();
    for connection in 0..u64::from(pace.connections) {
        let (uri, host) = (uri.clone(), host.clone());
        tasks.push(tokio::spawn(async move {
            let mut records = Vec::new();
            let mut sender: Option<
                hyper::client::conn::http1::SendRequest<http_body_util::Empty<Bytes>>,
            > = None;
            let mut k = 0u64;
            loop {
                let index = k * u64::from(pace.connections) + connection;
                if index >= total {
                    break;
                }
                k += 1;
                let due_us = index * 1_000_000 / u64::from(pace.rate);
                tokio::time::sleep_until(start + Duration::from_micros(due_us)).await;
                let request = Request::get(uri.clone())
                    .header(hyper::header::HOST, host.clone())
                    .body(http_body_util::Empty::<Bytes>::new());
                let exchange = async {
                    if sender.as_ref().is_none_or(|s| s.is_closed()) {
                        let stream = tokio::net::TcpStream::connect(target).await?;
                        let _ = stream.set_nodelay(true);
                        let (s, connection) =
                            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                        tokio::spawn(connection);
                        sender = Some(s);
                    }
                    let s = sender.as_mut().ok_or("no connection")?;
                    s.ready().await?;
                    let answer = s.send_request(request?).await?;
                    let status = answer.status();
                    http_body_util::BodyExt::collect(answer.into_body()).await?;
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status.is_success())
                };
                let result = tokio::time::timeout(Duration::from_secs(10), exchange).await;
                let done_us = start.elapsed().as_micros() as u64;
                match result {
                    Ok(Ok(ok)) => records.push(Paced {
                        due_us,
                        done_us,
                        ok,
                    }),
                    _ => {
                        sender = None;
                        records.push(Paced {
                            due_us,
                            done_us: u64::MAX,
                            ok: false,
                        });
                    }
                }
            }
            records
        }));
    }
    let mut records = Vec::with_capacity(total as usize);
    for task in tasks {
        records.extend(task.await?);
    }
    // Windows of 100 ms of the wall clock, from the schedule's start to 10 s past its end.
    let first_window = start_unix_us / 100_000;
    let windows = (u64::from(pace.seconds) * 10 + 100) as usize;
    let mut due = vec![0u32; windows];
    let mut answered = vec![0u32; windows];
    let mut ok = vec![0u32; windows];
    let mut failed = vec![0u32; windows];
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); windows];
    let window_of = |us: u64| ((start_unix_us + us) / 100_000 - first_window) as usize;
    for record in &records {
        let w = window_of(record.due_us).min(windows - 1);
        due[w] += 1;
        if record.done_us == u64::MAX {
            failed[w] += 1;
            continue;
        }
        ok[w] += u32::from(record.ok);
        latencies[w]
            .push((record.done_us.saturating_sub(record.due_us)).min(u64::from(u32::MAX)) as u32);
        answered[window_of(record.done_us).min(windows - 1)] += 1;
    }
    let mut text = format!(
        "# paced-clients rate {} connections {} seconds {} start_unix_ms {}\n",
        pace.rate,
        pace.connections,
        pace.seconds,
        start_unix_us / 1000
    );
    for w in 0..windows {
        if due[w] == 0 && answered[w] == 0 {
            continue;
        }
        let l = &mut latencies[w];
        l.sort_unstable();
        let at = |q: f64| {
            l.get(((l.len() as f64 * q) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0)
        };
        text.push_str(&format!(
            "{} {} {} {} {} {} {} {}\n",
            (first_window + w as u64) * 100,
            due[w],
            answered[w],
            ok[w],
            at(0.5),
            at(0.99),
            l.last().copied().unwrap_or(0),
            failed[w]
        ));
    }
    std::fs::write(out, text)?;
    let failed: u32 = failed.iter().sum();
    println!(
        "paced-clients: {} requests, {} failed",
        records.len(),
        failed
    );
    Ok(())
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

/// As `proxy`, serving HTTPS on `listen` with one certificate (SNI `HOST`), the way `rollway proxy
/// --https` does (the plain listener is on a free port, unused).
async fn proxy_https(
    listen: SocketAddr,
    upstream: SocketAddr,
    workers: usize,
    certificate: proxy::tls::TlsCertificate,
) -> Result<(), Box<dyn std::error::Error>> {
    let proxy = routed_proxy(upstream, proxy::UpstreamProtocol::Http1)?;
    proxy.tls().replace(proxy::tls::TlsState {
        certificates: vec![certificate],
        ..proxy::tls::TlsState::default()
    })?;
    let plain =
        proxy::workers::DataListeners::bind(SocketAddr::from(([127, 0, 0, 1], 0)), workers)?;
    let https = proxy::workers::DataListeners::bind(listen, workers)?;
    proxy::workers::serve_with_https(plain, Some(https), proxy, CancellationToken::new())?
        .wait()
        .await?;
    Ok(())
}

fn routed_proxy(
    upstream: SocketAddr,
    protocol: proxy::UpstreamProtocol,
) -> Result<Proxy, Box<dyn std::error::Error>> {
    // Experiments: BENCH_HEADER_FIELDS sets both header field limits (request, answer);
    // BENCH_UPSTREAM_MAX_IDLE the idle upstream connections kept per instance.
    let mut config = ProxyConfig::default();
    let mut settings = proxy::RouteSettings {
        protocol,
        ..proxy::RouteSettings::default()
    };
    if let Ok(fields) = std::env::var("BENCH_HEADER_FIELDS") {
        config.max_request_header_fields = fields.parse()?;
        settings.max_header_fields = fields.parse()?;
    }
    if let Ok(idle) = std::env::var("BENCH_UPSTREAM_MAX_IDLE") {
        config.upstream_max_idle_per_instance = idle.parse()?;
    }
    let proxy = Proxy::new(config);
    let route = RouteName::new("bench");
    proxy.set_route(RouteSpec {
        name: route.clone(),
        hosts: Vec::new(),
        path_prefix: "/".to_owned(),
        settings,
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
    Ok(proxy)
}

/// The route of `bench_proxy proxy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// One static route for any host to the first upstream, no edge control.
    Open,
    /// As `Open`, with a rate limit that is never reached.
    Limited,
    /// As the agent routes a deployed app (see the module).
    Deployed,
}

/// The host of the `deployed` route (`bench/proxy/deployed.sh`'s).
const DEPLOYED_HOST: &str = "bench.localhost";

async fn proxy(
    listen: SocketAddr,
    upstreams: &[SocketAddr],
    workers: usize,
    protocol: proxy::UpstreamProtocol,
    mode: Mode,
) -> Result<(), Box<dyn std::error::Error>> {
    // Experiments: BENCH_HEADER_FIELDS sets both header field limits (request, answer);
    // BENCH_UPSTREAM_MAX_IDLE the idle upstream connections kept per instance.
    let mut config = ProxyConfig::default();
    let mut settings = proxy::RouteSettings {
        protocol,
        ..proxy::RouteSettings::default()
    };
    if let Ok(fields) = std::env::var("BENCH_HEADER_FIELDS") {
        config.max_request_header_fields = fields.parse()?;
        settings.max_header_fields = fields.parse()?;
    }
    if let Ok(idle) = std::env::var("BENCH_UPSTREAM_MAX_IDLE") {
        config.upstream_max_idle_per_instance = idle.parse()?;
    }
    let proxy = Proxy::new(config);
    if mode == Mode::Deployed {
        proxy::apply(&proxy, &deployed_state(1, upstreams, settings))?;
    } else {
        let upstream = *upstreams.first().ok_or("missing UPSTREAM_ADDR")?;
        let route = RouteName::new("bench");
        proxy.set_route(RouteSpec {
            name: route.clone(),
            hosts: Vec::new(),
            path_prefix: "/".to_owned(),
            settings,
            edge: proxy::RouteEdge {
                rate_limit: (mode == Mode::Limited).then_some(proxy::RateLimit {
                    requests: 1_000_000,
                    per: std::time::Duration::from_secs(1),
                    burst: 1_000_000,
                }),
                ..proxy::RouteEdge::default()
            },
        });
        let instance = InstanceId::new("upstream");
        proxy.add_instance(InstanceSpec {
            id: instance.clone(),
            route,
            release: ReleaseId::new("bench"),
            addr: upstream,
        })?;
        proxy.mark_ready(&instance)?;
    }
    let listeners = proxy::workers::DataListeners::bind(listen, workers)?;
    proxy::workers::serve(listeners, proxy, CancellationToken::new())?
        .wait()
        .await?;
    Ok(())
}

/// The desired state the agent sends for release `release` of `bench/proxy/deployed.sh`'s app (`bench`, environment
/// `production`, service `web` with one replica per upstream, `[routes.web]` with `hosts`, `max_body =
/// "2MiB"`, `rate_limit = { per_ip = "1000000/s", burst = 1000000 }`, `allow = ["127.0.0.0/8"]`), as
/// `Engine::desired_state` builds it: route and release names, instance ids and all.
fn addrs(list: &str) -> Result<Vec<SocketAddr>, Box<dyn std::error::Error>> {
    Ok(list
        .split(',')
        .map(str::parse)
        .collect::<Result<Vec<SocketAddr>, _>>()?)
}

fn deployed_state(
    release: u32,
    upstreams: &[SocketAddr],
    settings: proxy::RouteSettings,
) -> proxy::DesiredState {
    let mut route = proxy::DesiredRoute::new("bench/production/web");
    route.hosts = vec![DEPLOYED_HOST.to_owned()];
    route.drain_timeout_ms = 5_000;
    route.set_settings(proxy::RouteSettings {
        max_body_bytes: 2 * 1024 * 1024,
        ..settings
    });
    route.rate_limit = Some(proxy::DesiredRateLimit {
        requests: 1_000_000,
        per_ms: 1_000,
        burst: 1_000_000,
    });
    route.allow = vec!["127.0.0.0/8".to_owned()];
    route.pools = vec![proxy::DesiredPool {
        release: format!("bench/production@{release}"),
        weight: 100,
        instances: upstreams
            .iter()
            .enumerate()
            .map(|(index, addr)| proxy::DesiredInstance {
                id: format!("bench-production-r{release}-web-{}", index + 1),
                addr: *addr,
                ready: true,
            })
            .collect(),
    }];
    proxy::DesiredState {
        routes: vec![route],
    }
}

async fn switch(
    listen: SocketAddr,
    pairs: [Vec<SocketAddr>; 2],
    workers: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let proxy = Proxy::new(ProxyConfig::default());
    proxy::apply(
        &proxy,
        &deployed_state(1, &pairs[0], proxy::RouteSettings::default()),
    )?;
    let listeners = proxy::workers::DataListeners::bind(listen, workers)?;
    let serving = proxy::workers::serve(listeners, proxy.clone(), CancellationToken::new())?;
    let mut signals =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    tokio::spawn(async move {
        let mut release = 1;
        let mut analysis: Option<tokio::task::JoinHandle<()>> = None;
        while signals.recv().await.is_some() {
            release += 1;
            let addrs = &pairs[usize::from(release % 2 == 0)];
            let started = std::time::Instant::now();
            if let Err(error) = proxy::apply(
                &proxy,
                &deployed_state(release, addrs, proxy::RouteSettings::default()),
            ) {
                eprintln!("the switch failed: {error}");
                return;
            }
            let apply_us = started.elapsed().as_micros();
            let unix_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| since.as_millis());
            println!("switched {release} {unix_ms} {apply_us}");
            // The agent's analysis while it observes the new release: the statistics every second.
            if analysis.is_none() {
                let proxy = proxy.clone();
                analysis = Some(tokio::spawn(async move {
                    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
                    loop {
                        interval.tick().await;
                        std::hint::black_box(proxy.all_stats());
                    }
                }));
            }
        }
    });
    serving.wait().await?;
    Ok(())
}
