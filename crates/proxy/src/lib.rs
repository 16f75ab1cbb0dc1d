//! Rollway's data plane: a reverse proxy that routes by host and path prefix to release pools, drains
//! instances without failing a request, retries only when safe, and counts per release.
//!
//! It knows nothing of the store, the drivers or the manifest: the agent drives it through `Proxy`.
//!
//! Life of a proxied request:
//! 1. `server` accepts the connection (plain or TLS) and serves HTTP/1.1 or HTTP/2 on it; `TimedIo`
//!    answers 408 to a client that stalls inside a request head and closes idle connections.
//! 2. `forward::handle` refuses `CONNECT` and malformed hosts, loads the current `RoutingTable` snapshot
//!    (no lock) and finds the route by host (the absolute-form target or `:authority` first), then by longest
//!    path prefix; the route's `RouteSettings` bound the rest. A small announced body is read whole now,
//!    before any instance is held.
//! 3. `Route::pick` draws a pool by weight and takes its least-loaded ready instance, counting the request
//!    on it (`InFlightGuard`); with no routable instance the request is held in the route's bounded queue
//!    (`hold`) until one shows.
//! 4. Hop-by-hop headers go, `Host` becomes the routed host, forwarding headers are the proxy's own (or a
//!    trusted proxy's, extended), `X-Request-Id` comes, and `upstream::send` writes the request on a pooled
//!    HTTP/1.1 connection or the instance's shared h2c connection. 1xx interim answers go straight back.
//! 5. A connect failure, or a failure before any answer byte when the request can be replayed, is retried
//!    on another instance; passive health takes out an instance that keeps refusing connections. When every
//!    instance refused the connection, the request (never sent) is held as in 3.
//! 6. The answer streams back (trailers included) through `ProxyBody`, which bounds silences, counts a gRPC
//!    answer by its `grpc-status`, releases the in-flight count and returns the connection to the pool at its
//!    end; an upgrade becomes a tunnel that holds the count instead and passes either side's end on.
//! 7. Any failure becomes an answer in exactly one place, `error_response`.

mod active;
mod balance;
mod body;
mod config;
mod control;
pub mod control_client;
pub mod control_socket;
mod desired;
mod edge;
mod error;
mod forward;
mod grpc;
mod h1_fields;
pub mod handover;
mod health;
mod hold;
mod ids;
mod instance;
pub mod memory;
pub mod metrics;
mod observed;
pub mod process;
mod routes_file;
mod routing;
mod server;
mod shard;
mod slow_start;
mod stats;
pub mod tls;
mod tunnel;
mod upstream;
mod warm;
pub mod workers;

pub use body::{AnswerBodyError, ProxyBody, RequestBodyError};
pub use config::{
    PassiveHealthConfig, ProxyConfig, RouteSettings, RouteTls, TrustedProxy,
    TrustedProxyParseError, UpstreamProtocol, WaitingConfig,
};
pub use control::{DrainOutcome, InstanceSpec, Proxy};
pub use desired::{
    ApplyError, ApplyReport, DesiredInstance, DesiredPool, DesiredRoute, DesiredState, Problem,
    apply,
};
pub use edge::{
    ClientNetwork, DesiredMaintenance, DesiredRateLimit, MAX_MAINTENANCE_PAGE_BYTES, Maintenance,
    RateLimit, RouteEdge, time_from_unix_ms, unix_ms,
};
pub use error::{BadRequestReason, Cause, ControlError, ProxyError, error_response};
pub use ids::{ErrorKind, InstanceId, InstanceState, ReleaseId, RouteName};
pub use instance::{InFlightGuard, InstanceLive};
pub use observed::{
    ObservedInstance, ObservedInstanceState, ObservedLatency, ObservedReleaseStats, ObservedRoute,
    ObservedState, ObservedStatusClasses, ObservedWeight, sum_stats,
};
pub use routes_file::{ROUTES_FILE_NAME, RoutesFile, RoutesFileError};
pub use routing::{Pool, Route, RouteSpec, RoutingTable};
pub use server::{serve, serve_https, serve_tls};
pub use stats::{LatencySummary, ReleaseStats, ReleaseStatsSnapshot, StatusClassCounts};
