//! Tunables of the proxy: limits, timeouts, the waiting queue, retries and passive health.
//!
//! Plain data with defaults; it does not read files or the environment (the agent maps the manifest onto it).

use std::time::Duration;

/// Everything the proxy lets its owner tune. `ProxyConfig::default()` is what production runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request head (request line plus headers) accepted, in bytes; beyond it the answer is 431.
    pub max_header_bytes: usize,
    /// Largest request body forwarded, in bytes; beyond it the answer is 413.
    pub max_body_bytes: u64,
    /// Time a client has to send a whole request head once it starts one (and on a fresh connection);
    /// past it the answer is 408 and the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest pause between two chunks of a request body; past it the request fails with 408.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request before the proxy closes it.
    pub idle_timeout: Duration,
    /// Time allowed to open a TCP connection to an instance.
    pub upstream_connect_timeout: Duration,
    /// Time allowed between sending a request to an instance and receiving its response head (504 past it).
    pub upstream_response_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    ///
    /// Invariant: below the apps' own keep-alive timeout (gunicorn's default is 2 s, Node's 5 s), or a reused
    /// connection can be closed by the app while a request is being written on it.
    pub upstream_idle_timeout: Duration,
    /// Most idle upstream connections kept per instance.
    pub upstream_max_idle_per_instance: usize,
    /// Most attempts for one request (the first one included) when a retry is safe.
    pub max_attempts: u32,
    /// The bounded wait for a ready instance.
    pub waiting: WaitingConfig,
    /// When an instance is taken out after failed connections, and how it is probed back in.
    pub passive_health: PassiveHealthConfig,
}

/// Bounds of the waiting queue used when a route has no ready instance.
#[derive(Debug, Clone)]
pub struct WaitingConfig {
    /// Longest time one request waits for a ready instance.
    pub max_wait: Duration,
    /// Most requests waiting on one route at once; the next one is answered 503 at once.
    pub max_waiting: usize,
    /// Value of the `Retry-After` header on the 503 given past either bound.
    pub retry_after: Duration,
}

/// Passive health: connection failures observed on real traffic take an instance out.
#[derive(Debug, Clone)]
pub struct PassiveHealthConfig {
    /// Consecutive connection failures after which an instance is taken out of traffic.
    pub consecutive_failures: u32,
    /// Interval of the TCP connect probe that brings a taken-out instance back.
    pub probe_interval: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_header_bytes: 64 * 1024,
            max_body_bytes: 100 * 1024 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            upstream_connect_timeout: Duration::from_secs(2),
            upstream_response_timeout: Duration::from_secs(60),
            upstream_idle_timeout: Duration::from_millis(1500),
            upstream_max_idle_per_instance: 256,
            max_attempts: 3,
            waiting: WaitingConfig::default(),
            passive_health: PassiveHealthConfig::default(),
        }
    }
}

impl Default for WaitingConfig {
    fn default() -> Self {
        WaitingConfig {
            max_wait: Duration::from_secs(30),
            max_waiting: 1024,
            retry_after: Duration::from_secs(5),
        }
    }
}

impl Default for PassiveHealthConfig {
    fn default() -> Self {
        PassiveHealthConfig {
            consecutive_failures: 3,
            probe_interval: Duration::from_secs(1),
        }
    }
}
