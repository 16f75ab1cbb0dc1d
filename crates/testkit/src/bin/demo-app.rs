//! `demo-app`: the HTTP/1.1 + h2c app that end-to-end tests deploy, with faults switched on by env vars.
//!
//! Stdout carries one JSON line per lifecycle event (starting, listening, sigterm, stopped, crash) and
//! nothing per request; bad configuration goes to stderr with exit code 2.
//!
//! Environment (every answer carries `x-version: $VERSION`):
//!
//! | variable           | default   | meaning                                                                 |
//! |--------------------|-----------|-------------------------------------------------------------------------|
//! | `PORT`             | required  | port on `$HOST`, 1-65535                                                |
//! | `HOST`             | 127.0.0.1 | IP address to listen on (`0.0.0.0` inside a container)                  |
//! | `VERSION`          | `dev`     | `GET /` answers `$VERSION\n`                                            |
//! | `HEALTH_PATH`      | `/health` | 200 `ok` when healthy, 503 otherwise                                    |
//! | `ERROR_RATE`       | `0`       | share (0.0-1.0) of non-health requests answered 500, see below          |
//! | `LATENCY_MS`       | `0`       | added latency on every non-health request                               |
//! | `START_DELAY_S`    | `0`       | seconds before it listens                                               |
//! | `HEALTH_DELAY_S`   | `0`       | seconds after listening during which health answers 503                 |
//! | `CRASH_AFTER_S`    | unset     | exit with code 1 this many seconds after the process started            |
//! | `IGNORE_SIGTERM_S` | unset     | on SIGTERM keep serving this long, then shut down gracefully            |
//! | `BAD_AFTER_S`      | unset     | `ERROR_RATE` and `LATENCY_MS` start this many seconds after listening   |
//! | `HEALTH_FAIL_FILE` | unset     | while this file exists, health answers 503 (every other path still works) |
//!
//! Seconds accept decimals (`0.5`). `ERROR_RATE` is deterministic, not random: the n-th non-health
//! request (counted across all connections, starting at 1) fails when `floor(n * rate)` steps up, so
//! `0.05` fails exactly requests 20, 40, 60, … and exactly 5 of every 100 consecutive requests.
//! The rate is held in parts per million, so the count is exact for any rate with six decimals.
//! With `BAD_AFTER_S`, requests answered before then are good and not counted: the first bad
//! request is the first one of the bad period (so `0.05` fails its 20th, 40th, ...).
//!
//! Endpoints besides `/` and the health path: `GET /sleep?ms=N`, `POST /echo` (streams the body
//! back), `GET /ws` (websocket echo), `GET /env/NAME` (value of env var `NAME`, 404 if unset),
//! `GET /sha256/NAME` (hex SHA-256 of env var `NAME`, so a test learns which secret an instance got
//! without the value travelling), `GET|POST /bytes/N` (N bytes of `x`, N <= 16 MiB; a POST body, of
//! any size, is read and discarded first: what a benchmark of answer sizes and uploads needs).
//! `LATENCY_MS` and `ERROR_RATE` apply to all of them alike (latency first, then the error).
//! Without `IGNORE_SIGTERM_S`, SIGTERM (or SIGINT) is a graceful shutdown: stop accepting, let
//! in-flight requests finish, exit 0.

use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::ffi::OsStringExt;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::{Instant, sleep};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Exit code for a missing or invalid environment variable.
const EXIT_BAD_ENV: i32 = 2;
/// Exit code for a runtime failure (cannot listen, cannot install signal handlers) and for `CRASH_AFTER_S`.
const EXIT_FAILURE: i32 = 1;

fn main() {
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("demo-app: {error}");
            std::process::exit(EXIT_BAD_ENV);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("demo-app: cannot start the tokio runtime: {error}");
            std::process::exit(EXIT_FAILURE);
        }
    };
    let code = runtime.block_on(run(config));
    std::process::exit(code);
}

/// Configuration read once from the environment at start.
struct Config {
    host: IpAddr,
    port: u16,
    version: String,
    /// Invariant: a valid header value (checked when parsed).
    version_header: HeaderValue,
    health_path: String,
    /// Invariant: 0..=1_000_000.
    error_rate_ppm: u64,
    latency: Duration,
    start_delay: Duration,
    health_delay: Duration,
    crash_after: Option<Duration>,
    ignore_sigterm: Option<Duration>,
    /// `ERROR_RATE` and `LATENCY_MS` start this long after listening (from the start when `None`).
    bad_after: Option<Duration>,
    /// While this file exists, the health path answers 503.
    health_fail_file: Option<std::path::PathBuf>,
}

/// A missing or invalid environment variable: which one, what it held, what is accepted.
struct EnvError {
    name: &'static str,
    /// `None` when the variable is unset.
    value: Option<String>,
    accepted: &'static str,
}

impl fmt::Display for EnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            None => write!(f, "`{}` is not set; expected {}", self.name, self.accepted),
            Some(value) => write!(
                f,
                "invalid `{}`=`{value}`; expected {}",
                self.name, self.accepted
            ),
        }
    }
}

impl Config {
    fn from_env() -> Result<Config, EnvError> {
        const PORT_ACCEPTED: &str = "a TCP port number 1-65535";
        const SECONDS_ACCEPTED: &str = "seconds as a non-negative number, e.g. `2` or `0.5`";

        let port = match read_var("PORT", PORT_ACCEPTED)? {
            None => return Err(invalid("PORT", None, PORT_ACCEPTED)),
            Some(raw) => match raw.trim().parse::<u16>() {
                Ok(port) if port != 0 => port,
                _ => return Err(invalid("PORT", Some(raw), PORT_ACCEPTED)),
            },
        };

        const HOST_ACCEPTED: &str = "an IP address, e.g. `127.0.0.1` or `0.0.0.0`";
        let host = match read_var("HOST", HOST_ACCEPTED)? {
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
            Some(raw) => match raw.trim().parse::<IpAddr>() {
                Ok(host) => host,
                Err(_) => return Err(invalid("HOST", Some(raw), HOST_ACCEPTED)),
            },
        };

        const VERSION_ACCEPTED: &str = "a non-empty string of visible ASCII characters";
        let version = read_var("VERSION", VERSION_ACCEPTED)?.unwrap_or_else(|| "dev".to_owned());
        let version_header = match HeaderValue::from_str(&version) {
            Ok(value) if !version.is_empty() => value,
            _ => return Err(invalid("VERSION", Some(version), VERSION_ACCEPTED)),
        };

        const HEALTH_PATH_ACCEPTED: &str = "a path starting with `/`, e.g. `/health`";
        let health_path =
            read_var("HEALTH_PATH", HEALTH_PATH_ACCEPTED)?.unwrap_or_else(|| "/health".to_owned());
        if !health_path.starts_with('/') {
            return Err(invalid(
                "HEALTH_PATH",
                Some(health_path),
                HEALTH_PATH_ACCEPTED,
            ));
        }

        const ERROR_RATE_ACCEPTED: &str = "a share between 0.0 and 1.0, e.g. `0.05`";
        let error_rate_ppm = match read_var("ERROR_RATE", ERROR_RATE_ACCEPTED)? {
            None => 0,
            Some(raw) => match raw.trim().parse::<f64>() {
                Ok(rate) if (0.0..=1.0).contains(&rate) => (rate * 1_000_000.0).round() as u64,
                _ => return Err(invalid("ERROR_RATE", Some(raw), ERROR_RATE_ACCEPTED)),
            },
        };

        const LATENCY_ACCEPTED: &str = "milliseconds as a non-negative integer, e.g. `250`";
        let latency = match read_var("LATENCY_MS", LATENCY_ACCEPTED)? {
            None => Duration::ZERO,
            Some(raw) => match raw.trim().parse::<u64>() {
                Ok(ms) => Duration::from_millis(ms),
                Err(_) => return Err(invalid("LATENCY_MS", Some(raw), LATENCY_ACCEPTED)),
            },
        };

        let seconds = |name: &'static str| -> Result<Option<Duration>, EnvError> {
            match read_var(name, SECONDS_ACCEPTED)? {
                None => Ok(None),
                Some(raw) => match raw.trim().parse::<f64>() {
                    Ok(secs) if secs.is_finite() && (0.0..=86_400.0 * 365.0).contains(&secs) => {
                        Ok(Some(Duration::from_secs_f64(secs)))
                    }
                    _ => Err(invalid(name, Some(raw), SECONDS_ACCEPTED)),
                },
            }
        };

        Ok(Config {
            host,
            port,
            version,
            version_header,
            health_path,
            health_fail_file: std::env::var_os("HEALTH_FAIL_FILE").map(std::path::PathBuf::from),
            error_rate_ppm,
            latency,
            start_delay: seconds("START_DELAY_S")?.unwrap_or(Duration::ZERO),
            health_delay: seconds("HEALTH_DELAY_S")?.unwrap_or(Duration::ZERO),
            crash_after: seconds("CRASH_AFTER_S")?,
            ignore_sigterm: seconds("IGNORE_SIGTERM_S")?,
            bad_after: seconds("BAD_AFTER_S")?,
        })
    }
}

fn invalid(name: &'static str, value: Option<String>, accepted: &'static str) -> EnvError {
    EnvError {
        name,
        value,
        accepted,
    }
}

/// Reads a variable; unset and empty both count as unset, non-UTF-8 is an error.
fn read_var(name: &'static str, accepted: &'static str) -> Result<Option<String>, EnvError> {
    match std::env::var_os(name) {
        None => Ok(None),
        Some(raw) if raw.is_empty() => Ok(None),
        Some(raw) => match raw.into_string() {
            Ok(value) => Ok(Some(value)),
            Err(raw) => Err(invalid(
                name,
                Some(raw.to_string_lossy().into_owned()),
                accepted,
            )),
        },
    }
}

type Body = BoxBody<Bytes, hyper::Error>;

/// State shared by every connection.
struct App {
    config: Config,
    /// Health answers 503 before this instant.
    healthy_at: Instant,
    /// Non-health requests seen so far (in the bad period); drives the deterministic `ERROR_RATE`.
    n_requests: AtomicU64,
    /// `ERROR_RATE` and `LATENCY_MS` apply from this instant on.
    bad_at: Instant,
}

fn event(value: serde_json::Value) {
    println!("{value}");
}

async fn run(config: Config) -> i32 {
    event(json!({"event": "starting", "version": config.version, "pid": std::process::id()}));
    // The `/bytes/N` buffer is filled now, before the app listens (and so before its first health
    // check), as a real app does its init: filled on the first `/bytes` request instead, its 16 MiB
    // memset met full load at a switch (bench/proxy/README.md, "Session 30: the switch").
    bytes_buffer();

    if let Some(crash_after) = config.crash_after {
        tokio::spawn(async move {
            sleep(crash_after).await;
            event(json!({"event": "crash", "after_s": crash_after.as_secs_f64()}));
            std::process::exit(EXIT_FAILURE);
        });
    }

    let (mut sigterm, mut sigint) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(sigterm), Ok(sigint)) => (sigterm, sigint),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("demo-app: cannot install the SIGTERM/SIGINT handlers: {error}");
            return EXIT_FAILURE;
        }
    };

    // A stop signal during the start delay ends the process at once: nothing is in flight yet.
    tokio::select! {
        () = sleep(config.start_delay) => {}
        _ = sigterm.recv() => { event(json!({"event": "stopped", "reason": "sigterm"})); return 0; }
        _ = sigint.recv() => { event(json!({"event": "stopped", "reason": "sigint"})); return 0; }
    }

    let addr = SocketAddr::from((config.host, config.port));
    let listener = match TcpListener::bind(addr).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("demo-app: cannot listen on `{addr}`: {error}");
            return EXIT_FAILURE;
        }
    };
    let app = Arc::new(App {
        healthy_at: Instant::now() + config.health_delay,
        n_requests: AtomicU64::new(0),
        bad_at: Instant::now() + config.bad_after.unwrap_or(Duration::ZERO),
        config,
    });
    event(json!({"event": "listening", "port": app.config.port, "version": app.config.version}));

    let ignore_sigterm = app.config.ignore_sigterm;
    let mut shutdown = pin!(async move {
        let reason = tokio::select! {
            _ = sigterm.recv() => "sigterm",
            _ = sigint.recv() => "sigint",
        };
        match ignore_sigterm {
            Some(ignore_for) => {
                event(json!({"event": reason, "ignored_for_s": ignore_for.as_secs_f64()}));
                sleep(ignore_for).await;
            }
            None => event(json!({"event": reason})),
        }
    });

    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(error) => {
                        // Usually out of file descriptors; back off instead of spinning.
                        eprintln!("demo-app: accept failed: {error}");
                        sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let app = Arc::clone(&app);
                let service = service_fn(move |request| handle(Arc::clone(&app), request));
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    // A client going away mid-request is normal here; nothing to report.
                    let _ = connection.await;
                });
            }
        }
    }

    drop(listener);
    event(json!({"event": "draining"}));
    graceful.shutdown().await;
    event(json!({"event": "stopped", "reason": "shutdown"}));
    0
}

async fn handle(app: Arc<App>, request: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let mut response = if request.uri().path() == app.config.health_path {
        health(&app)
    } else {
        app_request(&app, request).await
    };
    response
        .headers_mut()
        .insert("x-version", app.config.version_header.clone());
    Ok(response)
}

fn health(app: &App) -> Response<Body> {
    if let Some(file) = &app.config.health_fail_file
        && file.exists()
    {
        return text(StatusCode::SERVICE_UNAVAILABLE, "failing on purpose\n");
    }
    if Instant::now() >= app.healthy_at {
        text(StatusCode::OK, "ok")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "starting")
    }
}

async fn app_request(app: &App, request: Request<Incoming>) -> Response<Body> {
    if Instant::now() >= app.bad_at {
        let n = app.n_requests.fetch_add(1, Ordering::Relaxed) + 1;
        if !app.config.latency.is_zero() {
            sleep(app.config.latency).await;
        }
        if is_injected_error(n, app.config.error_rate_ppm) {
            return text(StatusCode::INTERNAL_SERVER_ERROR, "injected error\n");
        }
    }

    let path = request.uri().path().to_owned();
    match (request.method(), path.as_str()) {
        (&Method::GET, "/") => text(StatusCode::OK, format!("{}\n", app.config.version)),
        (&Method::GET, "/sleep") => sleep_endpoint(&request).await,
        (&Method::POST, "/echo") => Response::new(request.into_body().boxed()),
        (&Method::GET, "/ws") => websocket(request),
        (&Method::GET, _) if path.starts_with("/env/") => env_endpoint(&path["/env/".len()..]),
        (&Method::GET, _) if path.starts_with("/sha256/") => {
            sha256_endpoint(&path["/sha256/".len()..])
        }
        (&Method::GET | &Method::POST, _) if path.starts_with("/bytes/") => {
            let n = path["/bytes/".len()..].to_owned();
            bytes_endpoint(&n, request.into_body()).await
        }
        (_, "/" | "/sleep" | "/echo" | "/ws") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed; `POST /echo`, otherwise `GET`\n",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// True when the n-th request (1-based) is one of the `ppm` per million that fail.
fn is_injected_error(n: u64, ppm: u64) -> bool {
    n.saturating_mul(ppm) / 1_000_000 != (n - 1).saturating_mul(ppm) / 1_000_000
}

async fn sleep_endpoint(request: &Request<Incoming>) -> Response<Body> {
    let ms = request
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|pair| pair.strip_prefix("ms="))
        .map(str::parse::<u64>);
    match ms {
        Some(Ok(ms)) => {
            sleep(Duration::from_millis(ms)).await;
            text(StatusCode::OK, format!("slept {ms}ms\n"))
        }
        _ => text(
            StatusCode::BAD_REQUEST,
            "expected `/sleep?ms=N` with N a non-negative integer\n",
        ),
    }
}

/// The most `/bytes/N` answers.
const BYTES_MAX: usize = 16 << 20;

/// `/bytes/N`: reads and drops the request body, then answers N bytes of `x` (one shared buffer,
/// sliced, so the app's own cost does not grow with N beyond the copy to the socket).
async fn bytes_endpoint(n: &str, mut body: Incoming) -> Response<Body> {
    let n = match n.parse::<usize>() {
        Ok(n) if n <= BYTES_MAX => n,
        _ => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("expected `/bytes/N` with N an integer from 0 to {BYTES_MAX}\n"),
            );
        }
    };
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            return text(StatusCode::BAD_REQUEST, "the request body broke off\n");
        }
    }
    text(StatusCode::OK, bytes_buffer().slice(..n))
}

/// The shared `/bytes/N` buffer: `BYTES_MAX` bytes of `x`, filled on the first call (`run` calls it at start).
fn bytes_buffer() -> &'static Bytes {
    static BUFFER: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    BUFFER.get_or_init(|| Bytes::from(vec![b'x'; BYTES_MAX]))
}

fn env_endpoint(name: &str) -> Response<Body> {
    match std::env::var_os(name) {
        Some(value) if !name.is_empty() => text(StatusCode::OK, value.into_vec()),
        _ => text(StatusCode::NOT_FOUND, format!("`{name}` is not set\n")),
    }
}

fn sha256_endpoint(name: &str) -> Response<Body> {
    use sha2::Digest as _;
    match std::env::var_os(name) {
        Some(value) if !name.is_empty() => {
            let digest = sha2::Sha256::digest(value.into_vec());
            let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
            text(StatusCode::OK, hex)
        }
        _ => text(StatusCode::NOT_FOUND, format!("`{name}` is not set\n")),
    }
}

/// Answers an RFC 6455 upgrade with 101 and echoes text and binary messages on the upgraded stream.
fn websocket(mut request: Request<Incoming>) -> Response<Body> {
    let headers = request.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let is_upgrade = has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .is_some_and(|version| version == "13");
    let key = headers.get(header::SEC_WEBSOCKET_KEY);
    let (true, Some(key)) = (is_upgrade, key) else {
        return text(
            StatusCode::BAD_REQUEST,
            "expected a websocket upgrade: `Upgrade: websocket`, `Connection: upgrade`, \
             `Sec-WebSocket-Version: 13` and a `Sec-WebSocket-Key`\n",
        );
    };
    let accept = derive_accept_key(key.as_bytes());

    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let stream =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo_messages(stream).await;
            }
            Err(error) => eprintln!("demo-app: websocket upgrade failed: {error}"),
        }
    });

    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let response_headers = response.headers_mut();
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// Echoes until the peer closes. Pings and close frames are answered by tungstenite itself.
async fn echo_messages<S>(mut stream: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = stream.next().await {
        match message {
            Ok(message @ (Message::Text(_) | Message::Binary(_))) => {
                if stream.send(message).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(_) => break,
        }
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(
        Full::new(body.into())
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    response
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed()
}
