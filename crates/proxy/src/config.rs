//! Tunables of the proxy: limits, timeouts, the waiting queue, retries, passive health, the proxies it
//! trusts, and each route's own settings (`RouteSettings`).
//!
//! Plain data with defaults; it does not read files or the environment (the agent maps the manifest onto it).
//! docs/proxy.md lists every limit and what a client gets when it is hit; keep the two in step.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

/// Everything the proxy lets its owner tune. `ProxyConfig::default()` is what production runs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Largest request head (request line plus headers) accepted, in bytes; beyond it the answer is 431.
    pub max_header_bytes: usize,
    /// Most header fields in a request head (HTTP/1.1); beyond it the answer is 431. The default, 100,
    /// is hyper's own and about HAProxy's (101): up to it hyper parses a head into arrays on the stack,
    /// any other value costs two allocations and a fill of that many entries per request.
    pub max_request_header_fields: usize,
    /// Request bodies announced (`Content-Length`) up to this size are read whole before an instance is
    /// picked, so a slow client holds only its own connection, not an instance's (nginx buffers the same
    /// way). Larger or unannounced bodies stream.
    pub request_buffer_bytes: u64,
    /// Time a client has to send a whole request head once it starts one (and on a fresh connection);
    /// past it the answer is 408 and the connection is closed.
    pub header_read_timeout: Duration,
    /// Longest pause between two chunks of a request body; past it the request fails with 408.
    pub body_read_timeout: Duration,
    /// How long a keep-alive connection may sit with no request before the proxy closes it.
    pub idle_timeout: Duration,
    /// Time allowed to open a TCP connection to an instance.
    pub upstream_connect_timeout: Duration,
    /// Once one side of an upgraded connection (websocket) has closed, how long the other side may still
    /// send before the tunnel is closed; its end is passed on at once.
    pub tunnel_half_close_timeout: Duration,
    /// How long an idle upstream connection is kept for reuse.
    ///
    /// Invariant: below the apps' own keep-alive timeout (gunicorn's default is 2 s, Node's 5 s), or a reused
    /// connection can be closed by the app while a request is being written on it.
    pub upstream_idle_timeout: Duration,
    /// Most idle upstream connections kept per instance (each for `upstream_idle_timeout` at most). An
    /// HTTP/2 client's concurrent streams to an HTTP/1.1 instance each need a connection: fewer idle ones
    /// than the usual concurrency means connecting and closing on every request.
    pub upstream_max_idle_per_instance: usize,
    /// Most attempts for one request (the first one included) when a retry is safe.
    pub max_attempts: u32,
    /// The bound on requests held per route (the time bound is each route's `hold`).
    pub waiting: WaitingConfig,
    /// When an instance is taken out after failed connections, and how it is probed back in.
    pub passive_health: PassiveHealthConfig,
    /// Peers whose forwarding headers (`X-Forwarded-*`, `Forwarded`, `X-Real-IP`) are believed and
    /// extended. From any other peer those headers are dropped and the proxy's own replace them.
    /// Empty by default: nothing in front of the proxy is trusted.
    pub trusted_proxies: Vec<TrustedProxy>,
    /// The port of the TLS listener, for the `Location` of a redirect to https (`None`: 443).
    pub https_port: Option<u16>,
}

/// One route's limits and upstream protocol, as the manifest's `[routes.X]` and `[services.X] protocol`
/// set them. `RouteSettings::default()` holds the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSettings {
    /// Time an instance has to take the next chunk of the request body and, once the body is sent, to
    /// give its answer's head; past it the client gets 504. A body that keeps moving is never cut by it.
    pub timeout: Duration,
    /// Longest silence of an instance in the middle of its answer body; past it the answer is cut.
    pub idle_timeout: Duration,
    /// Largest request body forwarded, in bytes; beyond it the answer is 413.
    pub max_body_bytes: u64,
    /// Most header fields accepted in an instance's answer; beyond it the client gets 502.
    pub max_header_fields: usize,
    /// How the proxy talks to the route's instances.
    pub protocol: UpstreamProtocol,
    /// HTTPS policy: redirect plain HTTP, HSTS.
    pub tls: RouteTls,
    /// Longest time a request that has not been sent waits for a routable instance (none is ready, or
    /// every one refused its connection) or for a pause to end; past it the answer is 503 with
    /// `Retry-After`. Zero answers 503 at once.
    pub hold: Duration,
}

/// A route's HTTPS policy (the manifest's `tls` and `hsts`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteTls {
    /// Plain HTTP requests get a 308 to the same URL over https (ACME HTTP-01 challenges excepted).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub redirect: bool,
    /// `Strict-Transport-Security: max-age=N` on HTTPS answers that have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsts_seconds: Option<u64>,
}

impl RouteTls {
    pub fn is_default(&self) -> bool {
        *self == RouteTls::default()
    }
}

/// The protocol spoken to a route's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge; one multiplexed connection per instance and worker.
    H2c,
    /// h2c, and answers are counted by their `grpc-status` (a non-zero one is an error).
    Grpc,
}

/// An address or network (`10.0.0.0/8`, `::1`) whose forwarding headers the proxy believes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrustedProxy {
    network: IpAddr,
    prefix_len: u8,
}

/// A trusted proxy that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not an IP address or network (`10.0.0.0/8`)")]
pub struct TrustedProxyParseError {
    text: String,
}

impl TrustedProxy {
    /// Whether `addr` is inside this network. An IPv4 peer seen as an IPv6-mapped address matches too.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = match addr {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
            IpAddr::V4(_) => addr,
        };
        match (self.network, addr) {
            (IpAddr::V4(network), IpAddr::V4(addr)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(network) & mask == u32::from(addr) & mask
            }
            (IpAddr::V6(network), IpAddr::V6(addr)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(network) & mask == u128::from(addr) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for TrustedProxy {
    type Err = TrustedProxyParseError;

    fn from_str(text: &str) -> Result<TrustedProxy, TrustedProxyParseError> {
        let error = || TrustedProxyParseError {
            text: text.to_owned(),
        };
        let (address, prefix_len) = match text.split_once('/') {
            Some((address, prefix_len)) => (address, Some(prefix_len)),
            None => (text, None),
        };
        let network: IpAddr = address.trim().parse().map_err(|_| error())?;
        let max_len = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            Some(prefix_len) => prefix_len.trim().parse::<u8>().map_err(|_| error())?,
            None => max_len,
        };
        if prefix_len > max_len {
            return Err(error());
        }
        Ok(TrustedProxy {
            network,
            prefix_len,
        })
    }
}

impl fmt::Display for TrustedProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl ProxyConfig {
    /// Whether the forwarding headers of a peer at `addr` are believed.
    pub fn trusts(&self, addr: IpAddr) -> bool {
        self.trusted_proxies
            .iter()
            .any(|trusted| trusted.contains(addr))
    }
}

impl Default for RouteSettings {
    fn default() -> Self {
        RouteSettings {
            timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 100 * 1024 * 1024,
            max_header_fields: 500,
            protocol: UpstreamProtocol::Http1,
            tls: RouteTls::default(),
            hold: Duration::from_secs(30),
        }
    }
}

/// Bounds of the waiting queue used when a route has no routable instance (its time bound is the
/// route's own, `RouteSettings::hold`).
#[derive(Debug, Clone)]
pub struct WaitingConfig {
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
            max_request_header_fields: 100,
            request_buffer_bytes: 64 * 1024,
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            upstream_connect_timeout: Duration::from_secs(2),
            tunnel_half_close_timeout: Duration::from_secs(5),
            upstream_idle_timeout: Duration::from_millis(1500),
            upstream_max_idle_per_instance: 4096,
            max_attempts: 3,
            waiting: WaitingConfig::default(),
            passive_health: PassiveHealthConfig::default(),
            trusted_proxies: Vec::new(),
            https_port: None,
        }
    }
}

impl Default for WaitingConfig {
    fn default() -> Self {
        WaitingConfig {
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

#[cfg(test)]
mod tests;
