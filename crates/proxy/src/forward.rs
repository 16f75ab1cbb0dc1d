//! The life of one proxied request: find the route, pick an instance (or wait for one), rewrite headers,
//! send, retry when that is safe, count, and stream the answer back; websocket upgrades become tunnels.
//!
//! Status codes for failures are not chosen here but in `error::error_response`.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::{Body, Incoming};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::body::{ProxyBody, RequestBody, RequestBodyError};
use crate::control::Proxy;
use crate::error::{ProxyError, error_response};
use crate::instance::InFlightGuard;
use crate::routing::{InstanceId, RouteName, normalise_host, random_u64};
use crate::server::ActiveRequest;
use crate::stats::ReleaseStats;
use crate::upstream::{self, SendFailure};

/// What a request knows about the connection it came on.
#[derive(Debug)]
pub(crate) struct ConnectionContext {
    pub(crate) proxy: Proxy,
    pub(crate) client_addr: SocketAddr,
    /// The client's IP as a header value, made once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
    pub(crate) scheme: Scheme,
    pub(crate) tracker: TaskTracker,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Http,
    Https,
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Answers one request. Never fails: errors become answers through `error_response`.
pub(crate) async fn handle(
    request: Request<Incoming>,
    context: Arc<ConnectionContext>,
    active: ActiveRequest,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let mut active = Some(active);
    let request_id = request_id(request.headers());
    let mut response = match forward(request, &context, &request_id, &mut active).await {
        Ok(response) => response,
        Err((error, stats)) => {
            let stats = stats.unwrap_or_else(|| Arc::clone(&context.proxy.inner().unrouted));
            stats.record_error(error.kind());
            tracing::debug!(
                message = "Request failed.",
                %error,
                request_id = %request_id.to_str().unwrap_or(""),
                client = %context.client_addr
            );
            error_response(&error)
        }
    };
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id);
    // The upgrade tunnel takes the active-request count when there is one; otherwise the answer holds it.
    if let Some(active) = active {
        response.body_mut().attach_active(active);
    }
    Ok(response)
}

type Failure = (ProxyError, Option<Arc<ReleaseStats>>);

async fn forward(
    mut request: Request<Incoming>,
    context: &ConnectionContext,
    request_id: &HeaderValue,
    active: &mut Option<ActiveRequest>,
) -> Result<Response<ProxyBody>, Failure> {
    let proxy = &context.proxy;
    let config = proxy.config();
    let started = Instant::now();

    let host_value = request_host(&request).ok_or((ProxyError::MissingHost, None))?;
    let host = host_value.to_str().unwrap_or_default();
    if let Some(length) = content_length(request.headers())
        && length > config.max_body_bytes
    {
        discard_body(request.into_body()).await;
        return Err((
            ProxyError::BodyTooLarge {
                limit: config.max_body_bytes,
            },
            None,
        ));
    }
    let host_key = normalise_host(host);
    let route_name = {
        let table = proxy.inner().table.load();
        let route = table
            .route_for(&host_key, request.uri().path())
            .ok_or_else(|| {
                (
                    ProxyError::NoRoute {
                        host: host_key.clone().into_owned(),
                        path: request.uri().path().to_owned(),
                    },
                    None,
                )
            })?;
        route.name().clone()
    };

    let upgrade = request.version() == Version::HTTP_11 && is_upgrade(request.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
    let (mut parts, body) = request.into_parts();
    prepare_request_headers(
        &mut parts.headers,
        &host_value,
        context,
        request_id,
        upgrade,
    );
    let upstream_uri = origin_form(&parts.uri);
    let replayable = body.is_end_stream() && is_idempotent(&parts.method);
    let body = RequestBody::new(body, config.max_body_bytes, config.body_read_timeout);

    let build = |body: RequestBody, headers: HeaderMap| {
        let mut upstream = Request::new(body);
        *upstream.method_mut() = parts.method.clone();
        *upstream.uri_mut() = upstream_uri.clone();
        *upstream.version_mut() = Version::HTTP_11;
        *upstream.headers_mut() = headers;
        upstream
    };
    // A replayable request is rebuilt for each attempt, so it keeps its headers; others move them.
    let mut pending = Some(if replayable {
        build(body, parts.headers.clone())
    } else {
        build(body, std::mem::take(&mut parts.headers))
    });

    let mut tried: Vec<InstanceId> = Vec::new();
    let mut attempt = 0;
    loop {
        attempt += 1;
        let guard = pick_or_wait(proxy, &route_name, &host_key, parts.uri.path(), &tried).await?;
        let instance = Arc::clone(guard.instance());
        let stats = Arc::clone(guard.stats());
        let upstream_request = match pending.take() {
            Some(upstream_request) => upstream_request,
            None => build(RequestBody::empty(), parts.headers.clone()),
        };
        match upstream::send(&instance, upstream_request, config, upgrade).await {
            Ok((mut response, sender)) => {
                instance.record_success();
                stats.record_response(response.status().as_u16(), started.elapsed());
                if response.status() == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(downstream_upgrade) = downstream_upgrade
                {
                    let upstream_upgrade = hyper::upgrade::on(&mut response);
                    let websocket = response
                        .headers()
                        .get(header::UPGRADE)
                        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"websocket"));
                    spawn_tunnel(
                        context,
                        downstream_upgrade,
                        upstream_upgrade,
                        guard,
                        active.take(),
                        websocket,
                    );
                    let (mut head, _) = response.into_parts();
                    strip_hop_by_hop(&mut head.headers, true);
                    return Ok(Response::from_parts(head, ProxyBody::empty()));
                }
                let (mut head, incoming) = response.into_parts();
                strip_hop_by_hop(&mut head.headers, false);
                let checkin = (!upgrade).then(|| {
                    (
                        sender,
                        Arc::clone(&instance),
                        config.upstream_max_idle_per_instance,
                    )
                });
                let body = ProxyBody::upstream(incoming, checkin, Some(guard));
                return Ok(Response::from_parts(head, body));
            }
            Err(SendFailure { error, request }) => {
                let error = classify_body_error(error);
                if matches!(error, ProxyError::Connect { .. })
                    && instance.record_connect_failure(config.passive_health.consecutive_failures)
                {
                    crate::health::spawn_probe(proxy.clone(), Arc::clone(&instance));
                }
                let can_replay = request.is_some() || replayable;
                if attempt < config.max_attempts && error.retry_allowed() && can_replay {
                    stats.record_error(error.kind());
                    stats.record_error(crate::error::ErrorKind::Retried);
                    tracing::debug!(
                        message = "Retrying on another instance.",
                        %error,
                        instance = %instance.id()
                    );
                    pending = request;
                    tried.push(instance.id().clone());
                    continue;
                }
                return Err((error, Some(stats)));
            }
        }
    }
}

/// Picks an instance of the route; when none is ready, waits in the route's queue (bounded in time and
/// length) and picks as soon as a new snapshot or a recovered instance shows one.
async fn pick_or_wait(
    proxy: &Proxy,
    route_name: &RouteName,
    host: &str,
    path: &str,
    tried: &[InstanceId],
) -> Result<InFlightGuard, Failure> {
    let inner = proxy.inner();
    // Fast path: one snapshot load, no allocation, no lock.
    let route_live = {
        let table = inner.table.load();
        let Some(route) = table.route_for(host, path) else {
            return Err(no_route(host, path));
        };
        if let Some(guard) = route.pick(tried) {
            return Ok(guard);
        }
        // Every instance tried already failed: go back to the full set rather than wait for a new one.
        if !tried.is_empty()
            && let Some(guard) = route.pick(&[])
        {
            return Ok(guard);
        }
        Arc::clone(&route.live)
    };

    let waiting = &inner.config.waiting;
    if !route_live.try_enter_queue(waiting.max_waiting) {
        return Err((
            ProxyError::QueueFull {
                route: route_name.clone(),
                max_waiting: waiting.max_waiting,
                retry_after: waiting.retry_after,
            },
            None,
        ));
    }
    struct LeaveQueue<'a>(&'a crate::routing::RouteLive);
    impl Drop for LeaveQueue<'_> {
        fn drop(&mut self) {
            self.0.leave_queue();
        }
    }
    let _leave = LeaveQueue(&route_live);
    let started = Instant::now();
    let deadline = started + waiting.max_wait;
    loop {
        // Subscribe before looking, so a swap between the look and the wait still wakes us.
        let mut changed = inner.changed.subscribe();
        {
            let table = inner.table.load();
            let Some(route) = table.route_for(host, path) else {
                return Err(no_route(host, path));
            };
            if let Some(guard) = route.pick(&[]) {
                return Ok(guard);
            }
        }
        if tokio::time::timeout_at(deadline, changed.changed())
            .await
            .is_err()
        {
            return Err((
                ProxyError::NoReadyInstance {
                    route: route_name.clone(),
                    waited: started.elapsed(),
                    retry_after: waiting.retry_after,
                },
                None,
            ));
        }
    }
}

fn no_route(host: &str, path: &str) -> Failure {
    (
        ProxyError::NoRoute {
            host: host.to_owned(),
            path: path.to_owned(),
        },
        None,
    )
}

/// Copies bytes both ways between the client and the instance once both sides switched protocols. Holds
/// the instance's in-flight count (a drain waits for it) and ends when either side closes or the instance
/// is cut, shutting both sides down cleanly (FIN, not reset).
fn spawn_tunnel(
    context: &ConnectionContext,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: InFlightGuard,
    active: Option<ActiveRequest>,
    websocket: bool,
) {
    let cut = guard.instance().cut.clone();
    context.tracker.spawn(async move {
        let _guard = guard;
        let _active = active;
        match tokio::try_join!(downstream, upstream) {
            Ok((downstream, upstream)) => {
                crate::tunnel::run(
                    TokioIo::new(downstream),
                    TokioIo::new(upstream),
                    cut,
                    websocket,
                )
                .await;
            }
            Err(error) => tracing::debug!(message = "Upgrade failed.", %error),
        }
    });
}

/// Reads and drops a refused body, up to a bound, before the 413 goes out. Closing a socket with unread
/// data makes the kernel send a reset, which can destroy the 413 before the client reads it.
async fn discard_body(mut body: Incoming) {
    const DISCARD_LIMIT: usize = 1024 * 1024;
    const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        let mut discarded = 0;
        while let Some(Ok(frame)) = http_body_util::BodyExt::frame(&mut body).await {
            discarded += frame.data_ref().map_or(0, |data| data.len());
            if discarded > DISCARD_LIMIT {
                break;
            }
        }
    })
    .await;
}

/// Turns a failure caused by the client's own body (too large, too slow, gone) into the client's error.
fn classify_body_error(error: ProxyError) -> ProxyError {
    let ProxyError::Upstream { source, .. } = &error else {
        return error;
    };
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(source);
    while let Some(current) = cause {
        if let Some(body_error) = current.downcast_ref::<RequestBodyError>() {
            return match body_error {
                RequestBodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit: *limit },
                RequestBodyError::Timeout { timeout } => {
                    ProxyError::ClientTimeout { timeout: *timeout }
                }
                RequestBodyError::Client(_) => match error {
                    ProxyError::Upstream { source, .. } => ProxyError::ClientGone { source },
                    other => other,
                },
            };
        }
        cause = current.source();
    }
    error
}

/// The request's host as a header value (text, never empty): a `Host` header is shared, not copied.
fn request_host(request: &Request<Incoming>) -> Option<HeaderValue> {
    // HTTP/2 carries the host in `:authority`; HTTP/1.1 in `Host` (an absolute URI wins, per RFC 9112).
    if let Some(authority) = request.uri().authority() {
        // An authority is visible ASCII, always a valid header value.
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    request
        .headers()
        .get(header::HOST)
        .filter(|value| value.to_str().is_ok_and(|host| !host.is_empty()))
        .cloned()
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

fn origin_form(uri: &Uri) -> Uri {
    match uri.path_and_query() {
        Some(_) if uri.authority().is_none() && uri.scheme().is_none() => uri.clone(),
        Some(path_and_query) => Uri::from(path_and_query.clone()),
        None => Uri::from_static("/"),
    }
}

/// Removes hop-by-hop headers: the fixed list of RFC 9110 section 7.6.1 and any named in `Connection`.
/// For an upgrade, `Upgrade` and `Connection: upgrade` are end-to-end in effect and are kept.
fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names beats a hashed removal per listed header.
    if !upgrade && !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .filter(|name| !(upgrade && *name == header::UPGRADE))
        .collect();
    for name in named {
        headers.remove(name);
    }
    headers.remove(&KEEP_ALIVE);
    headers.remove(&PROXY_CONNECTION);
    headers.remove(header::TE);
    headers.remove(header::TRAILER);
    headers.remove(header::TRANSFER_ENCODING);
    headers.remove(header::PROXY_AUTHENTICATE);
    headers.remove(header::PROXY_AUTHORIZATION);
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether `name` is one `strip_hop_by_hop` removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRAILER
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

fn prepare_request_headers(
    headers: &mut HeaderMap,
    host: &HeaderValue,
    context: &ConnectionContext,
    request_id: &HeaderValue,
    upgrade: bool,
) {
    strip_hop_by_hop(headers, upgrade);
    let forwarded_for = match headers
        .get(&X_FORWARDED_FOR)
        .and_then(|value| value.to_str().ok())
    {
        Some(earlier) => {
            let client_ip = context.client_addr.ip();
            HeaderValue::from_str(&format!("{earlier}, {client_ip}")).ok()
        }
        None => Some(context.client_ip.clone()),
    };
    if let Some(value) = forwarded_for {
        headers.insert(X_FORWARDED_FOR.clone(), value);
    }
    let proto = match context.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static(proto));
    if !headers.contains_key(header::HOST) {
        headers.insert(header::HOST, host.clone());
    }
    headers.insert(X_FORWARDED_HOST.clone(), host.clone());
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
}

/// The client's IP as an `X-Forwarded-For` value.
pub(crate) fn client_ip_value(client_addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client_addr.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// The client's `X-Request-Id` when it sent a usable one, else a new random 128-bit hex id.
fn request_id(headers: &HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&X_REQUEST_ID)
        && !value.is_empty()
        && value.len() <= 200
    {
        return value.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    for (half, value) in id.chunks_exact_mut(16).zip([random_u64(), random_u64()]) {
        for (index, digit) in half.iter_mut().enumerate() {
            *digit = HEX[((value >> (60 - 4 * index)) & 0xf) as usize];
        }
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

#[cfg(test)]
mod tests;
