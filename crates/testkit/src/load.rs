//! A bounded HTTP/1.1 load loop that records the outcome, latency and `x-version` of every request.
//!
//! It never retries: every request that does not get a 2xx/3xx answer is counted as failed,
//! because the promise under test is "zero failed requests". It needs a tokio runtime with real
//! time (not `start_paused`), since it talks to real sockets.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, Uri, header};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Upper bound on [`Load::duration`], and the deadline of a load bounded only by a count.
pub const MAX_DURATION: Duration = Duration::from_secs(300);
/// Upper bound on [`Load::count`].
pub const MAX_COUNT: u64 = 1_000_000;

/// Builder for a load loop: `concurrency` keep-alive clients sending requests until a bound is reached.
///
/// ```no_run
/// # async fn example(addr: std::net::SocketAddr) {
/// use testkit::load::Load;
/// let report = Load::new(addr).host("demo.test").concurrency(4).count(200).start().wait().await;
/// report.assert_no_failures();
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Load {
    addr: SocketAddr,
    host: Option<String>,
    path: String,
    method: Method,
    concurrency: usize,
    duration: Option<Duration>,
    count: Option<u64>,
    timeout: Duration,
    rate: Option<u32>,
}

/// A running load loop. Dropping it without [`LoadHandle::stop`] or [`LoadHandle::wait`] aborts the clients.
#[derive(Debug)]
pub struct LoadHandle {
    shared: Arc<Shared>,
    clients: Vec<JoinHandle<()>>,
}

/// What happened to the requests of one load loop.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Requests attempted (each connect error counts as one).
    pub total: u64,
    /// Answers with a 2xx or 3xx status.
    pub ok: u64,
    /// Everything else: 4xx, 5xx, connect errors, resets, timeouts. Invariant: `ok + failed == total`.
    pub failed: u64,
    pub outcomes: BTreeMap<Outcome, u64>,
    /// Answers per `x-version` header value; answers without the header are not counted here.
    pub versions: BTreeMap<String, u64>,
    /// Invariant: sorted by `started`.
    pub records: Vec<Record>,
    /// Over every record, whatever its outcome.
    pub latency: LatencySummary,
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A complete answer with this status.
    Status(u16),
    /// No TCP connection (refused, unreachable) or the HTTP handshake failed.
    ConnectError,
    /// The connection closed or was reset before the whole answer arrived.
    Reset,
    /// No whole answer within [`Load::timeout`] (connecting included).
    Timeout,
    /// Anything else, with hyper's description.
    Other(String),
}

/// One request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// When the request started, from the start of the load loop.
    pub started: Duration,
    /// Until the whole answer (body included) was read, or the failure.
    pub latency: Duration,
    pub outcome: Outcome,
    /// The answer's `x-version` header, if any.
    pub version: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Load {
    /// Load against `addr`: `GET /`, 1 client, 5 s timeout per request, `Host` = `addr`.
    /// Set at least one bound, [`Load::duration`] or [`Load::count`].
    pub fn new(addr: SocketAddr) -> Load {
        Load {
            addr,
            host: None,
            path: "/".to_owned(),
            method: Method::GET,
            concurrency: 1,
            duration: None,
            count: None,
            timeout: Duration::from_secs(5),
            rate: None,
        }
    }

    /// Paces the loop at `per_second` requests in total: request `k` starts no earlier than
    /// `k / per_second` after the start, on whichever client is free. Without it every client sends
    /// its next request as soon as the last one ended.
    pub fn rate(mut self, per_second: u32) -> Load {
        self.rate = Some(per_second.max(1));
        self
    }

    /// The `Host` header (routing key for the proxy); defaults to the address.
    pub fn host(mut self, host: impl Into<String>) -> Load {
        self.host = Some(host.into());
        self
    }

    /// Path and query, e.g. `/sleep?ms=100`; must start with `/`.
    pub fn path(mut self, path: impl Into<String>) -> Load {
        self.path = path.into();
        self
    }

    /// The method; requests carry no body.
    pub fn method(mut self, method: Method) -> Load {
        self.method = method;
        self
    }

    /// Number of clients, each with its own keep-alive HTTP/1.1 connection (at least 1).
    pub fn concurrency(mut self, n_clients: usize) -> Load {
        self.concurrency = n_clients.max(1);
        self
    }

    /// Stop starting requests after this long (capped at [`MAX_DURATION`]).
    pub fn duration(mut self, duration: Duration) -> Load {
        self.duration = Some(duration.min(MAX_DURATION));
        self
    }

    /// Send exactly this many requests in total (capped at [`MAX_COUNT`]).
    pub fn count(mut self, count: u64) -> Load {
        self.count = Some(count.min(MAX_COUNT));
        self
    }

    /// Per-request timeout, connecting included (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Load {
        self.timeout = timeout;
        self
    }

    /// Spawns the clients on the current tokio runtime.
    ///
    /// Panics (a test bug, not a runtime condition) without a bound, with a path that is not
    /// an origin-form URI, or outside a tokio runtime.
    pub fn start(self) -> LoadHandle {
        assert!(
            self.duration.is_some() || self.count.is_some(),
            "Load needs a bound: call `.duration(..)` and/or `.count(..)` before `.start()`"
        );
        let uri: Uri = self.path.parse().unwrap_or_else(|error| {
            panic!(
                "Load path `{}` is not a valid URI ({error}); expected a path like `/` or `/sleep?ms=10`",
                self.path
            )
        });
        assert!(
            uri.scheme().is_none() && self.path.starts_with('/'),
            "Load path `{}` must be a path starting with `/`, like `/` or `/sleep?ms=10`",
            self.path
        );
        let start = Instant::now();
        let started_at = SystemTime::now();
        let shared = Arc::new(Shared {
            plan: Plan {
                addr: self.addr,
                host: self.host.unwrap_or_else(|| self.addr.to_string()),
                uri,
                method: self.method,
                count: self.count,
                deadline: start + self.duration.unwrap_or(MAX_DURATION),
                timeout: self.timeout,
                pace: self
                    .rate
                    .map(|per_second| Duration::from_secs(1) / per_second),
                start,
                started_at,
            },
            stopping: AtomicBool::new(false),
            n_started: AtomicU64::new(0),
            records: Mutex::new(Vec::new()),
        });
        let clients = (0..self.concurrency)
            .map(|_| tokio::spawn(client(Arc::clone(&shared))))
            .collect();
        LoadHandle { shared, clients }
    }
}

impl LoadHandle {
    /// Stops starting requests, lets the ones in flight finish (each within its timeout), and reports.
    pub async fn stop(mut self) -> Report {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.join().await
    }

    /// Waits for the bound (duration or count) to be reached, and reports.
    pub async fn wait(mut self) -> Report {
        self.join().await
    }

    /// Time since the load loop started, on the clock of `Record::started`: compare a moment of
    /// the test with the records through this, never through an `Instant` taken after `start()`
    /// (the thread can be preempted in between, which shifts every comparison by that gap).
    pub fn elapsed(&self) -> Duration {
        self.shared.plan.start.elapsed()
    }

    /// The wall-clock time `Record::started` counts from, to put the records on one time line
    /// with another process's timestamps (the agent's events).
    pub fn started_at(&self) -> SystemTime {
        self.shared.plan.started_at
    }

    /// The requests finished so far; the loop keeps running.
    pub fn snapshot(&self) -> Report {
        Report::from_records(lock(&self.shared.records).clone())
    }

    /// Waits until `more` requests finished after this call (answered or failed), polling;
    /// panics naming `what` when `patience` runs out first.
    pub async fn wait_for_more(&self, more: u64, patience: Duration, what: &str) {
        let target = self.snapshot().total + more;
        let deadline = tokio::time::Instant::now() + patience;
        while self.snapshot().total < target {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: fewer than {more} more requests within {patience:?}: {}",
                self.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn join(&mut self) -> Report {
        for client in std::mem::take(&mut self.clients) {
            if let Err(error) = client.await
                && error.is_panic()
            {
                std::panic::resume_unwind(error.into_panic());
            }
        }
        Report::from_records(std::mem::take(&mut *lock(&self.shared.records)))
    }
}

impl Drop for LoadHandle {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        for client in &self.clients {
            client.abort();
        }
    }
}

impl Report {
    /// Builds the counters and latency summary from records (sorting them by `started`).
    pub fn from_records(mut records: Vec<Record>) -> Report {
        records.sort_by_key(|record| record.started);
        let mut report = Report {
            total: records.len() as u64,
            ..Report::default()
        };
        for record in &records {
            if record.outcome.is_success() {
                report.ok += 1;
            } else {
                report.failed += 1;
            }
            *report.outcomes.entry(record.outcome.clone()).or_default() += 1;
            if let Some(version) = &record.version {
                *report.versions.entry(version.clone()).or_default() += 1;
            }
        }
        let mut latencies: Vec<Duration> = records.iter().map(|record| record.latency).collect();
        latencies.sort();
        report.latency = LatencySummary {
            p50: percentile(&latencies, 50),
            p90: percentile(&latencies, 90),
            p99: percentile(&latencies, 99),
            max: latencies.last().copied().unwrap_or_default(),
        };
        report.records = records;
        report
    }

    /// The records that failed, in start order.
    pub fn failures(&self) -> impl Iterator<Item = &Record> {
        self.records
            .iter()
            .filter(|record| !record.outcome.is_success())
    }

    /// Panics with the summary and the first failed records when any request failed.
    #[track_caller]
    pub fn assert_no_failures(&self) {
        if self.failed == 0 {
            return;
        }
        let mut message = format!(
            "{} of {} requests failed\n{self}\nfirst failures:",
            self.failed, self.total
        );
        for record in self.failures().take(FAILURES_SHOWN) {
            message.push_str(&format!("\n  {record}"));
        }
        if self.failed > FAILURES_SHOWN as u64 {
            message.push_str(&format!(
                "\n  … and {} more",
                self.failed - FAILURES_SHOWN as u64
            ));
        }
        panic!("{message}");
    }
}

impl Outcome {
    /// A 2xx or 3xx answer.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Status(200..=399))
    }
}

impl Record {
    /// When the answer (or failure) arrived, from the start of the load loop.
    pub fn finished(&self) -> Duration {
        self.started + self.latency
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} requests, {} ok, {} failed; outcomes: ",
            self.total, self.ok, self.failed
        )?;
        write_counts(f, self.outcomes.iter())?;
        write!(f, "; versions: ")?;
        write_counts(f, self.versions.iter())?;
        let LatencySummary { p50, p90, p99, max } = self.latency;
        write!(
            f,
            "; latency p50 {p50:?}, p90 {p90:?}, p99 {p99:?}, max {max:?}"
        )
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Status(status) => write!(f, "{status}"),
            Outcome::ConnectError => f.write_str("connect error"),
            Outcome::Reset => f.write_str("reset"),
            Outcome::Timeout => f.write_str("timeout"),
            Outcome::Other(description) => write!(f, "other ({description})"),
        }
    }
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "started at {:?}: {} after {:?}, version {}",
            self.started,
            self.outcome,
            self.latency,
            self.version.as_deref().unwrap_or("-")
        )
    }
}

const FAILURES_SHOWN: usize = 10;
/// Pause after a failed connect so that a dead server does not turn the loop into a busy spin.
const CONNECT_ERROR_BACKOFF: Duration = Duration::from_millis(10);

#[derive(Debug)]
struct Plan {
    addr: SocketAddr,
    host: String,
    uri: Uri,
    method: Method,
    count: Option<u64>,
    deadline: Instant,
    timeout: Duration,
    /// Time between request starts (`Load::rate`).
    pace: Option<Duration>,
    /// The wall clock at `start`, read right after it.
    started_at: SystemTime,
    start: Instant,
}

#[derive(Debug)]
struct Shared {
    plan: Plan,
    stopping: AtomicBool,
    /// Requests started so far; a client takes a ticket before each request so `count` is exact.
    n_started: AtomicU64,
    // std Mutex: the critical section is one push (or a clone for a snapshot), never across an await.
    records: Mutex<Vec<Record>>,
}

/// One keep-alive connection; the task driving it is aborted when the connection is dropped.
struct Connection {
    sender: SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

async fn client(shared: Arc<Shared>) {
    let plan = &shared.plan;
    let mut connection: Option<Connection> = None;
    loop {
        if shared.stopping.load(Ordering::SeqCst) || Instant::now() >= plan.deadline {
            break;
        }
        let ticket = shared.n_started.fetch_add(1, Ordering::SeqCst);
        if plan.count.is_some_and(|count| ticket >= count) {
            break;
        }
        if let Some(pace) = plan.pace {
            let due = plan.start + pace.saturating_mul(u32::try_from(ticket).unwrap_or(u32::MAX));
            if due >= plan.deadline {
                break;
            }
            tokio::time::sleep_until(due).await;
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
        }
        let started = Instant::now();
        let (outcome, version) =
            match tokio::time::timeout(plan.timeout, request(plan, &mut connection)).await {
                Ok(answer) => answer,
                Err(_elapsed) => (Outcome::Timeout, None),
            };
        let latency = started.elapsed();
        if !matches!(outcome, Outcome::Status(_)) {
            // The connection's state is unknown after a failure; the next request reconnects.
            connection = None;
        }
        let backoff = outcome == Outcome::ConnectError;
        lock(&shared.records).push(Record {
            started: started - plan.start,
            latency,
            outcome,
            version,
        });
        if backoff {
            tokio::time::sleep(CONNECT_ERROR_BACKOFF).await;
        }
    }
}

/// Sends one request on the kept-alive connection, connecting first if there is none.
async fn request(plan: &Plan, connection: &mut Option<Connection>) -> (Outcome, Option<String>) {
    if let Some(open) = connection
        && open.sender.ready().await.is_err()
    {
        // The server closed the idle connection; that is not a failed request, reconnect.
        *connection = None;
    }
    let open = match connection {
        Some(open) => open,
        None => match connect(plan.addr).await {
            Ok(open) => connection.insert(open),
            Err(outcome) => return (outcome, None),
        },
    };
    let request = Request::builder()
        .method(plan.method.clone())
        .uri(plan.uri.clone())
        .header(header::HOST, plan.host.as_str())
        .body(Empty::new());
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            return (
                Outcome::Other(format!("cannot build request: {error}")),
                None,
            );
        }
    };
    let response = match open.sender.send_request(request).await {
        Ok(response) => response,
        Err(error) => return (classify(&error), None),
    };
    let status = response.status().as_u16();
    let version = response
        .headers()
        .get("x-version")
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    match response.into_body().collect().await {
        Ok(_) => (Outcome::Status(status), version),
        Err(error) => (classify(&error), version),
    }
}

async fn connect(addr: SocketAddr) -> Result<Connection, Outcome> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|_| Outcome::ConnectError)?;
    // Latency is what is measured; Nagle would add up to 40 ms to small requests.
    let _ = stream.set_nodelay(true);
    let (sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|_| Outcome::ConnectError)?;
    let driver = tokio::spawn(async move {
        // Errors surface through `send_request`; the driver's own result adds nothing.
        let _ = driver.await;
    });
    Ok(Connection { sender, driver })
}

fn classify(error: &hyper::Error) -> Outcome {
    if error.is_incomplete_message() || error.is_canceled() || error.is_closed() {
        return Outcome::Reset;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        if let Some(io_error) = current.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io_error.kind(),
                ConnectionReset | ConnectionAborted | BrokenPipe | UnexpectedEof
            ) {
                return Outcome::Reset;
            }
        }
        source = current.source();
    }
    Outcome::Other(error.to_string())
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[Duration], percent: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (percent * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1]
}

fn write_counts<'a, K: fmt::Display + 'a>(
    f: &mut fmt::Formatter<'_>,
    counts: impl Iterator<Item = (&'a K, &'a u64)>,
) -> fmt::Result {
    let mut first = true;
    for (key, count) in counts {
        if !first {
            f.write_str(", ")?;
        }
        first = false;
        write!(f, "{key}×{count}")?;
    }
    if first {
        f.write_str("none")?;
    }
    Ok(())
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Records are only pushed whole, so a poisoned lock still holds consistent data.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
