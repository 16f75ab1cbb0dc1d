//! Everything that can go wrong with one proxied request, and the single place where an error becomes the
//! answer a client sees (`error_response`).
//!
//! Control-plane mistakes (unknown instance, bad weight) are `ControlError`, never an HTTP answer.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::{Response, StatusCode, Version};

use crate::body::ProxyBody;
use crate::ids::{ErrorKind, InstanceId, ReleaseId, RouteName};

/// Why one request could not be answered by an instance.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route for host `{host}` and path `{path}`")]
    NoRoute { host: String, path: String },
    #[error("request has no host")]
    MissingHost,
    #[error("bad request: {reason}")]
    BadRequest { reason: BadRequestReason },
    #[error("method `{method}` is not proxied")]
    MethodNotAllowed { method: hyper::Method },
    #[error("no ready instance for route `{route}` within {waited:?}")]
    NoReadyInstance {
        route: RouteName,
        waited: Duration,
        retry_after: Duration,
    },
    #[error("waiting queue of route `{route}` is full ({max_waiting} requests)")]
    QueueFull {
        route: RouteName,
        max_waiting: usize,
        retry_after: Duration,
    },
    #[error("instance `{instance}` at `{addr}`: connect failed")]
    Connect {
        instance: InstanceId,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("instance `{instance}` at `{addr}`: connection failed before an answer")]
    Upstream {
        instance: InstanceId,
        addr: SocketAddr,
        #[source]
        source: UpstreamError,
    },
    #[error("instance `{instance}` at `{addr}`: no answer within {timeout:?}")]
    UpstreamTimeout {
        instance: InstanceId,
        addr: SocketAddr,
        timeout: Duration,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: u64 },
    #[error("client sent the request body too slowly (no data for {timeout:?})")]
    ClientTimeout { timeout: Duration },
    #[error("request headers are larger than {limit} bytes")]
    HeadersTooLarge { limit: usize },
    #[error("client went away before an answer")]
    ClientGone {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("client `{client}` is not in the networks allowed on route `{route}`")]
    Forbidden { route: RouteName, client: IpAddr },
    #[error("client `{client}` is over the rate limit of route `{route}`")]
    RateLimited {
        route: RouteName,
        client: IpAddr,
        retry_after: Duration,
    },
    #[error("route `{route}` is in maintenance")]
    Maintenance {
        route: RouteName,
        /// The HTML page answered.
        page: Bytes,
        retry_after: Duration,
    },
    #[error("route `{route}` stayed paused past the wait bound ({waited:?})")]
    PausedTooLong {
        route: RouteName,
        waited: Duration,
        retry_after: Duration,
    },
}

/// How a connection to an instance failed before or during its answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// hyper's client (h2c, and HTTP/1 upgrades).
    #[error(transparent)]
    Hyper(#[from] hyper::Error),
    #[error("connection to the instance failed")]
    Io(#[source] io::Error),
    #[error("instance closed the connection before its answer")]
    ClosedBeforeAnswer,
    #[error("instance closed the connection in the middle of its answer")]
    ClosedMidAnswer,
    #[error("sending the request body failed")]
    RequestBody(#[source] crate::body::RequestBodyError),
    #[error("request body does not match its length")]
    RequestBodyLength,
    #[error("answer head is larger than {} bytes", crate::upstream::MAX_HEAD_BYTES)]
    HeadTooLarge,
    #[error("answer has more than {limit} header fields")]
    TooManyFields { limit: usize },
    #[error("invalid answer head: {0}")]
    InvalidHead(httparse::Error),
    #[error("invalid content-length in the answer")]
    InvalidContentLength,
    #[error("invalid chunk in the answer body")]
    InvalidChunk,
}

/// What made a request malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadRequestReason {
    /// RFC 9112 section 3.2: a request with more than one `Host` field is answered 400.
    #[error("more than one `Host` header")]
    DuplicateHost,
    /// RFC 9113 section 8.3.1: `Host` names another entity than `:authority`.
    #[error("`Host` differs from `:authority`")]
    HostMismatch,
    /// The body's framing is broken (a bad chunk size, for one).
    #[error("malformed request body")]
    MalformedBody,
    /// The host (`Host`, `:authority` or an absolute target's authority) is not `host[:port]` (RFC 9110
    /// section 7.2): userinfo (`a@b`, which RFC 9110 section 4.2.4 says to treat as an error), a port
    /// that is not digits, a `/` or a space. Routing reads the name before the last `:`, an app may read
    /// the name after the `@`: `demo.test:80@evil.test` was routed to demo.test and reached its app.
    #[error("host is not `name[:port]`")]
    InvalidHost,
    /// RFC 9113 section 8.3.1: an HTTP/2 `:scheme` other than `http` or `https` (any case), such as
    /// `gopher`: the proxy serves only those two (which one the client used over the connection is the
    /// connection's, `X-Forwarded-Proto`, whatever `:scheme` says).
    #[error("`:scheme` is not `http` or `https`")]
    InvalidScheme,
    /// RFC 9113 section 8.3.1 and RFC 9112 section 3.2: a target that is neither an absolute path
    /// (`/...`) nor `*` of an `OPTIONS` request: `GET *` or an HTTP/2 `:path` of `?q`, which an HTTP/1
    /// instance would get as a request line it cannot read.
    #[error("request target is not `/path` (or `*` for `OPTIONS`)")]
    InvalidTarget,
    /// RFC 9113 section 8.2.1: an HTTP/2 field value that starts or ends with a space or tab is
    /// malformed (HTTP/1 cannot carry one: its parser trims them, so an app would read another value
    /// than the proxy checked).
    #[error("a field value starts or ends with whitespace")]
    FieldValueWhitespace,
}

/// Who caused an error: decides the status class and whether it counts against a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The client (bad or slow request).
    Client,
    /// An instance of the app.
    Instance,
    /// The proxy's own bounds (waiting queue).
    Proxy,
}

impl ProxyError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProxyError::NoRoute { .. } => ErrorKind::NoRoute,
            ProxyError::MissingHost
            | ProxyError::BadRequest { .. }
            | ProxyError::MethodNotAllowed { .. } => ErrorKind::BadRequest,
            ProxyError::NoReadyInstance { .. } => ErrorKind::NoReadyInstance,
            ProxyError::QueueFull { .. } => ErrorKind::QueueFull,
            ProxyError::Connect { .. } => ErrorKind::Connect,
            ProxyError::Upstream { .. } => ErrorKind::Upstream,
            ProxyError::UpstreamTimeout { .. } => ErrorKind::UpstreamTimeout,
            ProxyError::BodyTooLarge { .. } => ErrorKind::BodyTooLarge,
            ProxyError::ClientTimeout { .. } => ErrorKind::ClientTimeout,
            ProxyError::HeadersTooLarge { .. } => ErrorKind::HeadersTooLarge,
            ProxyError::ClientGone { .. } => ErrorKind::ClientGone,
            ProxyError::Forbidden { .. } => ErrorKind::Forbidden,
            ProxyError::RateLimited { .. } => ErrorKind::RateLimited,
            ProxyError::Maintenance { .. } => ErrorKind::Maintenance,
            ProxyError::PausedTooLong { .. } => ErrorKind::PausedTooLong,
        }
    }

    pub fn cause(&self) -> Cause {
        match self {
            ProxyError::NoRoute { .. }
            | ProxyError::MissingHost
            | ProxyError::BadRequest { .. }
            | ProxyError::MethodNotAllowed { .. }
            | ProxyError::BodyTooLarge { .. }
            | ProxyError::ClientTimeout { .. }
            | ProxyError::HeadersTooLarge { .. }
            | ProxyError::ClientGone { .. }
            | ProxyError::Forbidden { .. }
            | ProxyError::RateLimited { .. } => Cause::Client,
            ProxyError::NoReadyInstance { .. }
            | ProxyError::QueueFull { .. }
            | ProxyError::Maintenance { .. }
            | ProxyError::PausedTooLong { .. } => Cause::Proxy,
            ProxyError::Connect { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::UpstreamTimeout { .. } => Cause::Instance,
        }
    }

    /// Whether the failure happened before the instance could have acted on the request, so another
    /// instance may be tried. This says nothing of the request itself: `forward` also requires that its
    /// body was not sent or that its method is idempotent.
    pub fn retry_allowed(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. } | ProxyError::Upstream { .. }
        )
    }
}

/// Turns an error into the answer the client gets. This is the only place that picks a status code for a
/// failure, so the 400/404/405/408/413/431/502/503/504 rules live here and nowhere else.
///
/// `version` is the client's request's: an HTTP/1 answer to a request whose rest cannot be trusted says
/// `connection: close`. An HTTP/2 answer never does: the field is connection-specific, which HTTP/2
/// forbids (RFC 9113 section 8.2.2; `h2` would reset the stream rather than send it), and a malformed
/// request is an error of its stream only (section 8.1.1), not of the connection. So no answer of the
/// proxy's own carries a field the HTTP/2 server must remove (`server::h2_conn` looks for none).
pub fn error_response(error: &ProxyError, version: Version) -> Response<ProxyBody> {
    let status = match error {
        ProxyError::NoRoute { .. } => StatusCode::NOT_FOUND,
        ProxyError::MissingHost | ProxyError::BadRequest { .. } => StatusCode::BAD_REQUEST,
        ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        ProxyError::NoReadyInstance { .. }
        | ProxyError::QueueFull { .. }
        | ProxyError::Maintenance { .. }
        | ProxyError::PausedTooLong { .. } => StatusCode::SERVICE_UNAVAILABLE,
        ProxyError::Forbidden { .. } => StatusCode::FORBIDDEN,
        ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        ProxyError::Connect { .. } | ProxyError::Upstream { .. } => StatusCode::BAD_GATEWAY,
        ProxyError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
        ProxyError::ClientTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        ProxyError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        // Nobody reads this answer, but a status on the wire is always a standard one (nginx's 499 is
        // for its access log only).
        ProxyError::ClientGone { .. } => StatusCode::BAD_REQUEST,
    };
    // The reason phrase only: details (instance addresses) are for the logs, not for the internet.
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let (body, content_type) = match error {
        ProxyError::Maintenance { page, .. } => (page.clone(), "text/html; charset=utf-8"),
        _ => (Bytes::from(text), "text/plain; charset=utf-8"),
    };
    let mut response = Response::new(ProxyBody::full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let ProxyError::NoReadyInstance { retry_after, .. }
    | ProxyError::QueueFull { retry_after, .. }
    | ProxyError::Maintenance { retry_after, .. }
    | ProxyError::PausedTooLong { retry_after, .. }
    | ProxyError::RateLimited { retry_after, .. } = error
    {
        // Whole seconds, rounded up: a client told 0 would come straight back.
        let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    if let ProxyError::Maintenance { .. } = error {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    if let ProxyError::MethodNotAllowed { .. } = error {
        headers.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH, TRACE"),
        );
    }
    if version < Version::HTTP_2
        && matches!(
            error,
            ProxyError::ClientTimeout { .. }
                | ProxyError::BodyTooLarge { .. }
                | ProxyError::HeadersTooLarge { .. }
                | ProxyError::BadRequest { .. }
                | ProxyError::ClientGone { .. }
        )
    {
        // The rest of the request cannot be trusted to be read; close so the next request starts clean.
        headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// A mistake in a control-plane call.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown instance `{instance}`")]
    UnknownInstance { instance: InstanceId },
    #[error("instance `{instance}` already exists")]
    DuplicateInstance { instance: InstanceId },
    #[error("unknown route `{route}`")]
    UnknownRoute { route: RouteName },
    #[error("route `{route}` has no pool for release `{release}`")]
    UnknownPool {
        route: RouteName,
        release: ReleaseId,
    },
    #[error("weight {weight} for release `{release}` is above 100")]
    WeightOutOfRange { release: ReleaseId, weight: u8 },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error answer whose request cannot be trusted to its end says `connection: close` to an HTTP/1
    /// client; an HTTP/2 client's never carries the field (HTTP/2 forbids it: `h2` would reset the
    /// stream instead of answering), whatever the error.
    #[test]
    fn only_an_http1_error_answer_says_connection_close() {
        let instance = || InstanceId::new("i-1");
        let addr: SocketAddr = ([127, 0, 0, 1], 1).into();
        let cases: Vec<(ProxyError, bool)> = vec![
            (
                ProxyError::BadRequest {
                    reason: BadRequestReason::DuplicateHost,
                },
                true,
            ),
            (ProxyError::BodyTooLarge { limit: 1 }, true),
            (
                ProxyError::ClientTimeout {
                    timeout: Duration::from_secs(1),
                },
                true,
            ),
            (ProxyError::HeadersTooLarge { limit: 1 }, true),
            (
                ProxyError::ClientGone {
                    source: "gone".into(),
                },
                true,
            ),
            (ProxyError::MissingHost, false),
            (
                ProxyError::MethodNotAllowed {
                    method: hyper::Method::CONNECT,
                },
                false,
            ),
            (
                ProxyError::UpstreamTimeout {
                    instance: instance(),
                    addr,
                    timeout: Duration::from_secs(1),
                },
                false,
            ),
        ];
        for (error, closes) in &cases {
            for version in [Version::HTTP_10, Version::HTTP_11] {
                let answer = error_response(error, version);
                let connection = answer.headers().get(header::CONNECTION);
                assert_eq!(
                    connection.is_some_and(|value| value == "close"),
                    *closes,
                    "{error} over {version:?}"
                );
            }
            let answer = error_response(error, Version::HTTP_2);
            assert!(
                answer.headers().get(header::CONNECTION).is_none(),
                "{error} over HTTP/2"
            );
            assert_eq!(
                answer.status(),
                error_response(error, Version::HTTP_11).status(),
                "{error}: the same status over either"
            );
        }
    }
}
