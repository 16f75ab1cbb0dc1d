//! The names and small types every part of the proxy shares, from the control plane to the life of a
//! request: release, instance and route names, an instance's life cycle, the error kinds counted in
//! stats. They hold no behaviour beyond naming, so every module may import them and this one imports none.

use std::fmt;
use std::sync::Arc;

/// Names one release (for example `logistix@42`); the proxy treats it as an opaque label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReleaseId(Arc<str>);

/// Names one instance; unique across the whole proxy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId(Arc<str>);

/// Names one route (for example the service name `web`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteName(Arc<str>);

/// Life cycle of an instance, driven by the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceState {
    /// Added, not yet healthy: gets no traffic.
    Starting,
    /// Gets new requests.
    Ready,
    /// Gets no new requests; in-flight ones and upgraded connections finish.
    Draining,
    /// Nothing in flight any more (or cut at the drain timeout).
    Drained,
}

impl ReleaseId {
    pub fn new(name: impl Into<Arc<str>>) -> ReleaseId {
        ReleaseId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl InstanceId {
    pub fn new(name: impl Into<Arc<str>>) -> InstanceId {
        InstanceId(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl RouteName {
    pub fn new(name: impl Into<Arc<str>>) -> RouteName {
        RouteName(name.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ReleaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Error kinds as counted in per-release stats and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Connect,
    Upstream,
    UpstreamTimeout,
    NoReadyInstance,
    QueueFull,
    BodyTooLarge,
    ClientTimeout,
    HeadersTooLarge,
    ClientGone,
    NoRoute,
    BadRequest,
    /// A request tried again on another instance (not an error seen by the client).
    Retried,
    /// Refused by the route's `allow` list (403).
    Forbidden,
    /// Over the route's rate limit for its client address (429).
    RateLimited,
    /// Answered by the maintenance page (503).
    Maintenance,
    /// Held by a pause longer than the waiting bound (503).
    PausedTooLong,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 16] = [
        ErrorKind::Connect,
        ErrorKind::Upstream,
        ErrorKind::UpstreamTimeout,
        ErrorKind::NoReadyInstance,
        ErrorKind::QueueFull,
        ErrorKind::BodyTooLarge,
        ErrorKind::ClientTimeout,
        ErrorKind::HeadersTooLarge,
        ErrorKind::ClientGone,
        ErrorKind::NoRoute,
        ErrorKind::BadRequest,
        ErrorKind::Retried,
        ErrorKind::Forbidden,
        ErrorKind::RateLimited,
        ErrorKind::Maintenance,
        ErrorKind::PausedTooLong,
    ];

    /// Position in `ALL`; used as an array index by the stats.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The label used in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Connect => "connect",
            ErrorKind::Upstream => "upstream",
            ErrorKind::UpstreamTimeout => "upstream_timeout",
            ErrorKind::NoReadyInstance => "no_ready_instance",
            ErrorKind::QueueFull => "queue_full",
            ErrorKind::BodyTooLarge => "body_too_large",
            ErrorKind::ClientTimeout => "client_timeout",
            ErrorKind::HeadersTooLarge => "headers_too_large",
            ErrorKind::ClientGone => "client_gone",
            ErrorKind::NoRoute => "no_route",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Retried => "retried",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::RateLimited => "rate_limited",
            ErrorKind::Maintenance => "maintenance",
            ErrorKind::PausedTooLong => "paused_too_long",
        }
    }
}
