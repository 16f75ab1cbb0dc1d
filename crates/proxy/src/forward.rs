//! The life of one proxied request: find the route, pick an instance (or wait for one), rewrite headers,
//! send, retry when that is safe, count, and stream the answer back; websocket upgrades become tunnels.
//!
//! Status codes for failures are not chosen here but in `error::error_response`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use hyper::body::Body;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use crate::active::ActiveRequest;
use crate::body::{ClientBody, ProxyBody, RequestBody, RequestBodyError};
use crate::config::UpstreamProtocol;
use crate::control::Proxy;
use crate::edge::Admission;
use crate::error::{BadRequestReason, ProxyError, error_response};
use crate::hold::{Hold, Tried};
use crate::instance::InFlightGuard;
use crate::routing::{normalise_host, random_u64};
use crate::stats::ReleaseStats;
use crate::upstream::{self, GivenBack, SendFailure};

/// What a request knows about the connection it came on.
///
/// In its declared order (`repr(C)`): the flags `handle` reads after the upstream's answer first, in
/// the cache line of the `Arc`'s counts, which `handle` writes then too (its clone of the context
/// ends); rustc's order put `closing` on a line of its own, one more cold line per request at many
/// connections (bench/proxy/README.md, "Session 33: 512 connections").
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ConnectionContext {
    /// Set when the process stops accepting: every HTTP/1 answer from then on says `connection:
    /// close`, so a keep-alive client opens its next connection to the successor instead of racing a
    /// close (`server::Connection::serve_http1`).
    pub(crate) closing: AtomicBool,
    /// Set once an HTTP/2 answer of this connection carried its `x-request-id` as a field HPACK may add
    /// to the connection's header table (`request_id_for_http2`).
    pub(crate) request_id_named: AtomicBool,
    /// Whether the peer is a trusted proxy (`ProxyConfig::trusted_proxies`), decided once per connection.
    pub(crate) trusted_peer: bool,
    pub(crate) scheme: Scheme,
    pub(crate) proxy: Proxy,
    pub(crate) tracker: TaskTracker,
    pub(crate) client_addr: SocketAddr,
    /// The client's IP as a header value, made once per connection for `X-Forwarded-For`.
    pub(crate) client_ip: HeaderValue,
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
///
/// The request is held here, once, for the whole exchange: `forward` rewrites it in place into the
/// upstream request and sends it from here. Its body is wrapped for the instance as it comes in
/// (`RequestBody::client`; the route's limits are set in `forward`). Until session 32 the request was
/// moved from here into `forward`'s state and from there into the upstream request, in a third slot:
/// three copies of it written into the exchange's state per request, each a few cache lines that
/// are cold again by the connection's next request (bench/proxy/README.md, "Session 32: the HTTP/1
/// exchange").
#[allow(clippy::manual_async_fn)] // See `forward`: an `async fn` would hold the request twice.
pub(crate) fn handle(
    request: Request<ClientBody>,
    context: Arc<ConnectionContext>,
    active: ActiveRequest,
) -> impl Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>> {
    let mut request = request.map(RequestBody::client);
    async move {
        let mut active = Some(active);
        // The client's, kept: `forward` rewrites the request's into the instance's.
        let version = request.version();
        let http1 = version < Version::HTTP_2;
        // The one pass over the client's fields: what it finds spares the lookups of fields most
        // requests do not have (`X-Request-Id`; an HTTP/2 request's `Host`).
        let fields = request_fields(request.headers(), !http1);
        let request_id = request_id(request.headers(), fields.request_id);
        let mut hsts = None;
        let mut response = match forward(
            &mut request,
            &fields,
            &context,
            &request_id,
            &mut active,
            &mut hsts,
        )
        .await
        {
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
                error_response(&error, version)
            }
        };
        // An app's own request id on its answer is kept; the proxy's goes on answers that have none.
        if http1 {
            if let header::Entry::Vacant(entry) = response.headers_mut().entry(&X_REQUEST_ID) {
                entry.insert(request_id);
            }
        } else {
            request_id_for_http2(&mut response, request_id, &context.request_id_named);
        }
        if let Some(seconds) = hsts
            && let header::Entry::Vacant(entry) = response
                .headers_mut()
                .entry(header::STRICT_TRANSPORT_SECURITY)
            && let Ok(value) = HeaderValue::from_str(&format!("max-age={seconds}"))
        {
            entry.insert(value);
        }
        if http1
            && context.closing.load(Ordering::Relaxed)
            && response.status() != StatusCode::SWITCHING_PROTOCOLS
        {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if !http1 {
            date_for_http2(&mut response);
        }
        // The upgrade tunnel takes the active-request count when there is one; otherwise the answer holds it.
        if let Some(active) = active {
            response.body_mut().attach_active(active);
        }
        Ok(response)
    }
}

type Failure = (ProxyError, Option<Arc<ReleaseStats>>);

/// 308 to the same URL over https: the method and body are kept by the client (unlike 301).
fn redirect_to_https(
    host: &str,
    uri: &Uri,
    https_port: Option<u16>,
    version: Version,
) -> Response<ProxyBody> {
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    // `host` is normalised (no port); an IPv6 literal keeps its brackets.
    let location = match https_port {
        None | Some(443) => format!("https://{host}{path}"),
        Some(port) => format!("https://{host}:{port}{path}"),
    };
    let mut response = Response::new(ProxyBody::empty());
    *response.status_mut() = StatusCode::PERMANENT_REDIRECT;
    match HeaderValue::from_str(&location) {
        Ok(value) => {
            response.headers_mut().insert(header::LOCATION, value);
        }
        // The host and path came in a valid request; a value that still does not fit is a 400.
        Err(_) => {
            return error_response(&ProxyError::MissingHost, version);
        }
    }
    response
}

/// The request is `handle`'s, rewritten in place into the upstream request and sent from there: this
/// state holds no copy of it (see `handle`).
///
/// Not an `async fn`: an `async fn` keeps its arguments beside the locals they are moved into; the
/// block keeps them where they were put.
#[allow(clippy::manual_async_fn)] // See above: an `async fn` would hold its arguments twice.
fn forward<'a>(
    request: &'a mut Request<RequestBody>,
    fields: &'a RequestFields,
    context: &'a ConnectionContext,
    request_id: &'a HeaderValue,
    active: &'a mut Option<ActiveRequest>,
    hsts: &'a mut Option<u64>,
) -> impl Future<Output = Result<Response<ProxyBody>, Failure>> + 'a {
    async move {
        let proxy = &context.proxy;
        let config = proxy.config();
        let started = Instant::now();

        // A proxy that is not a forward proxy has nothing to tunnel to (RFC 9110 section 9.3.6).
        if request.method() == Method::CONNECT {
            return Err((
                ProxyError::MethodNotAllowed {
                    method: Method::CONNECT,
                },
                None,
            ));
        }
        // What h2 lets through of what RFC 9113 calls malformed (HTTP/1 heads are checked as parsed).
        if request.version() == Version::HTTP_2
            && let Err(reason) = check_http2_request(request, fields.edge_whitespace)
        {
            return Err((ProxyError::BadRequest { reason }, None));
        }
        // ACME HTTP-01: answered before any route, since a host gets its certificate before it is routed.
        if context.scheme == Scheme::Http
            && let Some(token) = request
                .uri()
                .path()
                .strip_prefix(crate::tls::ACME_HTTP_PREFIX)
            && let Some(key_authorization) = proxy.tls().http01(token)
        {
            let mut response = Response::new(ProxyBody::full(Bytes::from(key_authorization)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            return Ok(response);
        }
        let (host_value, host_is_field) =
            request_host(request, fields.host_fields).map_err(|error| (error, None))?;
        let host = host_value.to_str().unwrap_or_default();
        let host_key = normalise_host(host);
        let (route_name, settings, admission) = {
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
            let edge = &route.spec().edge;
            let admission = if edge.is_open() {
                Ok(Admission::Pass)
            } else {
                let client =
                    crate::edge::client_addr(config, context.client_addr.ip(), request.headers());
                edge.admit(
                    route.name(),
                    &route.live.rates,
                    client,
                    request.uri().path(),
                    // The request's arrival is its time for the rate, as good as a clock read more.
                    started,
                    SystemTime::now,
                )
            };
            (route.name().clone(), route.spec().settings, admission)
        };
        match context.scheme {
            Scheme::Http
                if settings.tls.redirect
                    && !request
                        .uri()
                        .path()
                        .starts_with(crate::tls::ACME_HTTP_PREFIX) =>
            {
                return Ok(redirect_to_https(
                    &host_key,
                    request.uri(),
                    config.https_port,
                    request.version(),
                ));
            }
            Scheme::Https => *hsts = settings.tls.hsts_seconds,
            Scheme::Http => {}
        }
        // One budget for every wait of this request (a pause, no routable instance).
        let mut hold = Hold::new(settings.hold);
        // The awaits that few requests reach (a pause, a refused body, a body read whole, a second send)
        // are boxed: their state would otherwise size this future, and so every request's, which is
        // copied whole on its way into its task.
        // `admission` is moved into the match (`identity`): a local still in scope is kept in this
        // future's state, and its drop at the end read it again after the upstream's answer, when it
        // is cold at many connections (a passed request moves nothing out of it).
        match std::convert::identity(admission) {
            Ok(Admission::Pass) => {}
            Ok(Admission::Hold { until }) => {
                Box::pin(crate::hold::while_paused(
                    proxy,
                    &route_name,
                    &host_key,
                    request.uri().path(),
                    until,
                    &mut hold,
                ))
                .await?;
            }
            Err(refusal) => {
                if !expects_continue(request.headers())
                    && let Some(body) = request.body_mut().take_client()
                {
                    Box::pin(discard_body(body)).await;
                }
                return Err((refusal, None));
            }
        }
        // Looked up only when the pass over the fields saw one (most requests have no body).
        let announced_length = fields
            .content_length
            .then(|| content_length(request.headers()))
            .flatten();
        if let Some(length) = announced_length
            && length > settings.max_body_bytes
        {
            // A client that sent `Expect: 100-continue` waits for a go-ahead: it gets the 413 at once and its
            // body is not read (reading it is what makes hyper send `100 Continue`).
            if !expects_continue(request.headers())
                && let Some(body) = request.body_mut().take_client()
            {
                Box::pin(discard_body(body)).await;
            }
            return Err((
                ProxyError::BodyTooLarge {
                    limit: settings.max_body_bytes,
                },
                None,
            ));
        }

        let upgrade = request.version() == Version::HTTP_11
            && settings.protocol == UpstreamProtocol::Http1
            && is_upgrade(request.headers());
        let downstream_upgrade = upgrade.then(|| DownstreamUpgrade::of(request));
        // Interim answers can be passed on to an HTTP/1.1 client only (the HTTP/2 server, `server::h2_conn`,
        // does not send them, and HTTP/1.0 clients must not get them).
        let interim = (request.version() == Version::HTTP_11)
            .then(|| active.as_ref().map(ActiveRequest::interim))
            .flatten();
        // The client's request becomes the upstream request, in place: its fields rewritten, its target in
        // the instance's form, its body under the route's limits. Only h2c and upgrades keep a copy of its
        // head for a replay (`replay_head`).
        let added = prepare_request_headers(
            request.headers_mut(),
            fields,
            &host_value,
            host_is_field,
            context,
            request_id,
            upgrade,
            settings.protocol,
        );
        set_upstream_uri(request.uri_mut(), &host_value, settings.protocol);
        *request.version_mut() = match settings.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c | UpstreamProtocol::Grpc => Version::HTTP_2,
        };
        // The client's extensions (hyper's, the server's) are not for the instance.
        request.extensions_mut().clear();
        request
            .body_mut()
            .limit(settings.max_body_bytes, config.body_read_timeout);

        // A small announced body is read whole before an instance is picked: a slow client then holds only
        // its own connection, and its slowness is a 408 for it rather than a 504 blamed on the instance.
        let mut whole_body = request.body().is_end_stream().then(Bytes::new);
        if whole_body.is_none()
            && !upgrade
            && announced_length.is_some_and(|length| length <= config.request_buffer_bytes)
        {
            let body = std::mem::replace(request.body_mut(), RequestBody::empty());
            let bytes = Box::pin(body.read_whole())
                .await
                .map_err(|error| (request_body_error(error), None))?;
            *request.body_mut() = RequestBody::full(bytes.clone());
            whole_body = Some(bytes);
            // The client's `Expect: 100-continue` was answered here (hyper sent `100 Continue` when the body
            // was read); the instance gets the whole body at once and nothing to answer.
            request.headers_mut().remove(header::EXPECT);
        }
        let replayable = whole_body.is_some() && is_idempotent(request.method());

        let hook = |upstream: &mut Request<RequestBody>| {
            // The proxy's HTTP/1 client passes interim answers on itself (`upstream::h1`); hyper's,
            // which carries upgrades, through this hook.
            if upgrade
                && let Some(interim) = interim.cloned()
                && upstream.version() == Version::HTTP_11
            {
                // 100 Continue is hop-by-hop (hyper answered the client's own); 101 is a final answer here.
                hyper::ext::on_informational(upstream, move |answer| {
                    let status = answer.status();
                    if status != StatusCode::CONTINUE && status != StatusCode::SWITCHING_PROTOCOLS {
                        let mut headers = answer.headers().clone();
                        strip_hop_by_hop(&mut headers, false);
                        interim.send(status, &headers);
                    }
                });
            }
        };
        // The proxy's HTTP/1 client leaves a request it tried whole in `request` (`GivenBack::Whole`);
        // hyper's clients (h2c, upgrades) keep it, so for them a replayable request is rebuilt for each
        // attempt from a copy of its head, boxed (rare: HTTP/1 keep-alive requests never make one).
        // The whole body goes into the box too, or is dropped here: a local kept to the answer is one
        // more slot of this future's state read again (by its drop) after the upstream's answer.
        let replay_head = (replayable && (settings.protocol != UpstreamProtocol::Http1 || upgrade))
            .then(|| {
                Box::new((
                    request.method().clone(),
                    request.uri().clone(),
                    request.version(),
                    request.headers().clone(),
                    whole_body.unwrap_or_default(),
                ))
            });
        // Sent from `handle`'s state, and left there by a failed send (`GivenBack`): the request is not
        // moved into the send's state and back out with its failure.
        hook(request);

        let mut tried = Tried::default();
        // Attempts that may have reached an instance; a refused connection sent nothing and is not counted
        // (its retries are bounded by the route's hold instead).
        let mut attempt = 0;
        loop {
            // The upstream target's path is the client's (`upstream_uri`).
            let guard = crate::hold::pick(
                proxy,
                &route_name,
                &host_key,
                request.uri().path(),
                &mut tried,
                &mut hold,
            )
            .await?;
            // Borrowed from the guard, not cloned: both `Arc`s are shared by every worker, and each clone and
            // drop is an atomic write to a cache line the other workers use too.
            let instance = guard.instance();
            let stats = guard.stats();
            let sent = upstream::send_with(
                instance, request, config, &settings, upgrade, interim, added,
            )
            .await;
            match sent {
                Ok(mut response) => {
                    instance.record_success();
                    // One clock read: the answer head's time, for its latency and the start of the body's
                    // idle timeout.
                    let answered = Instant::now();
                    let latency = answered.saturating_duration_since(started);
                    // A gRPC answer is counted by its `grpc-status`, which a 200 carries in its trailers
                    // unless it is a trailers-only answer.
                    let grpc_pending = settings.protocol == UpstreamProtocol::Grpc
                        && response.status() == StatusCode::OK
                        && crate::grpc::status(response.headers()).is_none();
                    if !grpc_pending {
                        // Only a gRPC route's answers are looked at for `grpc-status` (one header lookup
                        // fewer for every other answer).
                        let grpc_status = (settings.protocol == UpstreamProtocol::Grpc)
                            .then(|| crate::grpc::status(response.headers()))
                            .flatten();
                        let status = grpc_status.map_or_else(
                            || response.status().as_u16(),
                            crate::grpc::counted_status,
                        );
                        stats.record_response(status, latency);
                    }
                    if response.status() == StatusCode::SWITCHING_PROTOCOLS
                        && let Some(downstream_upgrade) = downstream_upgrade
                    {
                        let upstream_upgrade = hyper::upgrade::on(&mut response);
                        let websocket =
                            response
                                .headers()
                                .get(header::UPGRADE)
                                .is_some_and(|value| {
                                    value.as_bytes().eq_ignore_ascii_case(b"websocket")
                                });
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
                            Arc::clone(instance),
                            upstream::IdleLimits {
                                max: config.upstream_max_idle_per_instance,
                                timeout: config.upstream_idle_timeout,
                            },
                        )
                    });
                    let grpc_stats = grpc_pending.then(|| Arc::clone(stats));
                    let mut body = ProxyBody::upstream(
                        incoming,
                        checkin,
                        Some(guard),
                        settings.idle_timeout,
                        answered,
                    );
                    if let Some(stats) = grpc_stats {
                        body.count_grpc_status(stats, latency);
                    }
                    return Ok(Response::from_parts(head, body));
                }
                Err(SendFailure {
                    error,
                    request: given_back,
                }) => {
                    let error = classify_body_error(error);
                    let refused = matches!(error, ProxyError::Connect { .. });
                    if refused
                        && instance
                            .record_connect_failure(config.passive_health.consecutive_failures)
                    {
                        crate::health::spawn_probe(proxy.clone(), Arc::clone(instance));
                    }
                    if !refused {
                        attempt += 1;
                    }
                    let can_replay = match given_back {
                        GivenBack::Unsent => true,
                        GivenBack::Whole => replayable,
                        // What is left in `request` is not to be sent: a replay is built anew.
                        GivenBack::Nothing => match replay_head.as_deref() {
                            Some((method, uri, version, headers, whole_body)) => {
                                let mut replay =
                                    Request::new(RequestBody::full(whole_body.clone()));
                                *replay.method_mut() = method.clone();
                                *replay.uri_mut() = uri.clone();
                                *replay.version_mut() = *version;
                                *replay.headers_mut() = headers.clone();
                                hook(&mut replay);
                                *request = replay;
                                true
                            }
                            None => false,
                        },
                        GivenBack::Answered => false,
                    };
                    if (refused || attempt < config.max_attempts)
                        && error.retry_allowed()
                        && can_replay
                    {
                        stats.record_error(error.kind());
                        stats.record_error(crate::ids::ErrorKind::Retried);
                        tracing::debug!(
                            message = "Retrying on another instance.",
                            %error,
                            instance = %instance.id()
                        );
                        tried.failed(instance.id(), refused, stats);
                        continue;
                    }
                    return Err((error, Some(Arc::clone(stats))));
                }
            }
        }
    }
}

/// Copies bytes both ways between the client and the instance once both sides switched protocols. Holds
/// the instance's in-flight count (a drain waits for it) and ends when either side closes or the instance
/// is cut, shutting both sides down cleanly (FIN, not reset).
fn spawn_tunnel(
    context: &ConnectionContext,
    downstream: DownstreamUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: InFlightGuard,
    active: Option<ActiveRequest>,
    websocket: bool,
) {
    let cut = guard.instance().cut.clone();
    let half_close_timeout = context.proxy.config().tunnel_half_close_timeout;
    context.tracker.spawn(async move {
        let _guard = guard;
        let _active = active;
        match tokio::join!(downstream.upgraded(), upstream) {
            (Ok(downstream), Ok(upstream)) => {
                crate::tunnel::run(
                    downstream,
                    TokioIo::new(upstream),
                    cut,
                    websocket,
                    half_close_timeout,
                )
                .await;
            }
            (Err(error), _) => tracing::debug!(message = "Upgrade failed.", %error),
            (_, Err(error)) => tracing::debug!(message = "Upgrade failed.", %error),
        }
    });
}

/// The client's side of an upgrade: hyper's for HTTP/2 (none today: upgrades are HTTP/1.1), the proxy's
/// own HTTP/1 connection's (`server::h1::PendingUpgrade`) otherwise.
enum DownstreamUpgrade {
    Hyper(hyper::upgrade::OnUpgrade),
    Http1(Option<tokio::sync::oneshot::Receiver<crate::server::h1::Upgraded>>),
}

impl DownstreamUpgrade {
    fn of(request: &mut Request<RequestBody>) -> DownstreamUpgrade {
        match request
            .extensions_mut()
            .remove::<crate::server::h1::PendingUpgrade>()
        {
            Some(pending) => DownstreamUpgrade::Http1(pending.take()),
            None => DownstreamUpgrade::Hyper(hyper::upgrade::on(request)),
        }
    }

    /// The client's connection once the 101 answer went out.
    async fn upgraded(
        self,
    ) -> Result<Box<dyn crate::server::h1::Io>, Box<dyn std::error::Error + Send + Sync>> {
        match self {
            DownstreamUpgrade::Hyper(on) => Ok(Box::new(TokioIo::new(on.await?))),
            DownstreamUpgrade::Http1(Some(receiver)) => Ok(Box::new(receiver.await?)),
            DownstreamUpgrade::Http1(None) => Err("the upgrade was already taken".into()),
        }
    }
}

/// Reads and drops a refused body, up to a bound, before the 413 goes out. Closing a socket with unread
/// data makes the kernel send a reset, which can destroy the 413 before the client reads it.
async fn discard_body(mut body: ClientBody) {
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

/// Turns a failure caused by the client's own body (too large, too slow, malformed, gone) into the
/// client's error.
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
                RequestBodyError::Client(client_error) if client_error.is_malformed() => {
                    ProxyError::BadRequest {
                        reason: BadRequestReason::MalformedBody,
                    }
                }
                RequestBodyError::Client(_) => match error {
                    ProxyError::Upstream { source, .. } => ProxyError::ClientGone {
                        source: Box::new(source),
                    },
                    other => other,
                },
            };
        }
        cause = current.source();
    }
    error
}

/// The client's error for a body that could not be read whole.
fn request_body_error(error: RequestBodyError) -> ProxyError {
    match error {
        RequestBodyError::TooLarge { limit } => ProxyError::BodyTooLarge { limit },
        RequestBodyError::Timeout { timeout } => ProxyError::ClientTimeout { timeout },
        RequestBodyError::Client(source) if source.is_malformed() => ProxyError::BadRequest {
            reason: BadRequestReason::MalformedBody,
        },
        RequestBodyError::Client(source) => ProxyError::ClientGone {
            source: Box::new(source),
        },
    }
}

/// The host a request is for, as a header value (text, never empty): what decides its route, and what the
/// instance receives as `Host`. An absolute-form target (HTTP/1.1) or `:authority` (HTTP/2) wins over
/// `Host` (RFC 9112 section 3.2.2); two `Host` fields, or an HTTP/2 `Host` naming another authority, make
/// the request malformed.
///
/// The flag says whether the value is the request's one `Host` field itself (no authority in the target):
/// the instance's `Host` then needs no rewriting.
fn request_host<B>(
    request: &Request<B>,
    host_fields: usize,
) -> Result<(HeaderValue, bool), ProxyError> {
    let invalid = || ProxyError::BadRequest {
        reason: BadRequestReason::InvalidHost,
    };
    // Counted in the pass over the fields (`request_fields`): most HTTP/2 requests have none, and are
    // spared the lookup.
    let host = match host_fields {
        0 => None,
        1 => request.headers().get(header::HOST),
        _ => {
            return Err(ProxyError::BadRequest {
                reason: BadRequestReason::DuplicateHost,
            });
        }
    };
    if !host.is_none_or(|host| is_host(host.as_bytes())) {
        return Err(invalid());
    }
    if let Some(authority) = request.uri().authority() {
        // Checked as it is made into a value, once per authority on a thread (`authority_value`).
        let value = authority_value(authority.as_str()).ok_or_else(invalid)?;
        if request.version() == Version::HTTP_2
            && host.is_some_and(|host| !host.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
        {
            return Err(ProxyError::BadRequest {
                reason: BadRequestReason::HostMismatch,
            });
        }
        return Ok((value, false));
    }
    host.filter(|value| value.to_str().is_ok_and(|host| !host.is_empty()))
        .map(|value| (value.clone(), true))
        .ok_or_else(|| ProxyError::MissingHost)
}

/// The parts of an HTTP/2 request that RFC 9113 calls malformed and h2 (0.4) does not refuse itself: a
/// `:scheme` other than `http` or `https`, a `:path` that is neither an absolute path nor `*` of an
/// `OPTIONS` (h2 refuses an empty one, and `http`'s parser some others, but `?q` and `GET *` came through),
/// and a field value with a space or tab at either end (section 8.2.1; h2 refuses CR, LF and NUL), which
/// the one pass over the request's fields looked for (`RequestFields::edge_whitespace`).
///
/// Not seen here, so not checked: a `:scheme` without `:authority` (h2 checks that it parses and drops
/// it; nothing of it reaches an app either), and a fragment in `:path` (`/a#f`: `http`'s parser drops it
/// before the proxy gets the request, so routing and the app both read `/a`).
fn check_http2_request<B>(
    request: &Request<B>,
    edge_whitespace: bool,
) -> Result<(), BadRequestReason> {
    let uri = request.uri();
    if let Some(scheme) = uri.scheme_str()
        && !scheme.eq_ignore_ascii_case("http")
        && !scheme.eq_ignore_ascii_case("https")
    {
        return Err(BadRequestReason::InvalidScheme);
    }
    let target = uri.path_and_query().map_or("", |path| path.as_str());
    let is_target =
        target.starts_with('/') || (target == "*" && request.method() == Method::OPTIONS);
    if !is_target {
        return Err(BadRequestReason::InvalidTarget);
    }
    if edge_whitespace {
        return Err(BadRequestReason::FieldValueWhitespace);
    }
    Ok(())
}

/// Whether a field value starts or ends with a space or tab: malformed over HTTP/2 (RFC 9113 section
/// 8.2.1), and never so from the proxy's HTTP/1 parsers, which trim them.
pub(crate) fn has_edge_whitespace(value: &[u8]) -> bool {
    let edge = |byte: Option<&u8>| matches!(byte, Some(b' ' | b'\t'));
    edge(value.first()) || edge(value.last())
}

/// How many authorities each thread keeps as `Host` values (`authority_value`).
const AUTHORITY_VALUES: usize = 4;

thread_local! {
    /// This thread's last authorities as `Host` values, and where the next new one goes (oldest first).
    static AUTHORITIES: std::cell::RefCell<([Option<HeaderValue>; AUTHORITY_VALUES], usize)> =
        const { std::cell::RefCell::new(([const { None }; AUTHORITY_VALUES], 0)) };
}

/// `authority` (a request target's, as every HTTP/2 request has it) as a `Host` value; `None` when it is
/// not `name[:port]` (`is_host`).
///
/// A client names the same authority on every request of its connection, and a thread's connections
/// a handful: the thread keeps the last `AUTHORITY_VALUES` values and hands out clones of them (a count
/// up). Made anew, each value was two allocations (its copy, then the shared block its first clone
/// made: the value goes to the instance's request and to the routing) and a validation. Only valid
/// values are kept, so one found among them is not checked again (a byte comparison, where `is_host`
/// looked up each byte: ~110 instructions per HTTP/2 request).
fn authority_value(authority: &str) -> Option<HeaderValue> {
    AUTHORITIES.with(|cache| {
        let mut cache = cache.borrow_mut();
        let (values, next) = &mut *cache;
        if let Some(value) = values
            .iter()
            .flatten()
            .find(|value| value.as_bytes() == authority.as_bytes())
        {
            return Some(value.clone());
        }
        if !is_host(authority.as_bytes()) {
            return None;
        }
        let value = HeaderValue::from_str(authority).ok()?;
        // The kept one is a clone: the value itself moves to the shared block now, once, rather than
        // on each request's first clone.
        values[*next % AUTHORITY_VALUES] = Some(value.clone());
        *next = next.wrapping_add(1);
        Some(value)
    })
}

/// Whether the client waits for `100 Continue` before it sends its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|value| value.as_bytes().eq_ignore_ascii_case(b"100-continue"))
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

/// Whether the request asks to switch protocols, and may: `h2c` never is passed on (nginx passes no
/// `Upgrade` on unless told to; HAProxy 2.6 passes it on, checked in session 30): an instance that took
/// it would switch the client's connection to HTTP/2 straight to the app, every later request on it
/// past the proxy's routing and forwarding fields ("h2c smuggling"). Such a request goes on as a plain
/// one, its `Upgrade` dropped as hop-by-hop.
fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && !headers
            .get_all(header::UPGRADE)
            .iter()
            .flat_map(|value| value.as_bytes().split(|byte| *byte == b','))
            .any(|protocol| protocol.trim_ascii().eq_ignore_ascii_case(b"h2c"))
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

/// `upstream_uri` in place: most requests' target (origin-form, to an HTTP/1 instance) is left as it is.
fn set_upstream_uri(uri: &mut Uri, host: &HeaderValue, protocol: UpstreamProtocol) {
    if protocol == UpstreamProtocol::Http1
        && uri.path_and_query().is_some()
        && uri.authority().is_none()
        && uri.scheme().is_none()
    {
        return;
    }
    *uri = upstream_uri(std::mem::take(uri), host, protocol);
}

/// The target sent to an instance: origin-form for HTTP/1.1; for HTTP/2, which carries `:scheme` and
/// `:authority`, an absolute URI with the request's host.
fn upstream_uri(uri: Uri, host: &HeaderValue, protocol: UpstreamProtocol) -> Uri {
    let origin = match uri.path_and_query() {
        Some(_) if uri.authority().is_none() && uri.scheme().is_none() => uri,
        Some(path_and_query) => Uri::from(path_and_query.clone()),
        None => Uri::from_static("/"),
    };
    if protocol == UpstreamProtocol::Http1 {
        return origin;
    }
    let path_and_query = origin
        .path_and_query()
        .map_or("/", hyper::http::uri::PathAndQuery::as_str);
    Uri::builder()
        .scheme("http")
        .authority(host.as_bytes())
        .path_and_query(path_and_query)
        .build()
        .unwrap_or(origin)
}

/// The bytes of a registered name (RFC 3986 section 3.2.2: unreserved, sub-delimiters, `%` of a
/// percent-encoding), as a table: a `matches!` over them cost ~15 instructions a byte, 293 a request.
static REG_NAME: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        table[byte] = matches!(
            byte as u8,
            b'a'..=b'z'
                | b'A'..=b'Z'
                | b'0'..=b'9'
                | b'-'
                | b'.'
                | b'_'
                | b'~'
                | b'%'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
        );
        byte += 1;
    }
    table
};

/// Whether `host` is `uri-host [":" port]` (RFC 9110 section 7.2; RFC 3986 section 3.2.2): a registered
/// name or a bracketed IP literal, then digits after a `:`. Empty is left to the caller (no host).
fn is_host(host: &[u8]) -> bool {
    let rest = match host.strip_prefix(b"[") {
        Some(literal) => match literal.iter().position(|byte| *byte == b']') {
            Some(end)
                if literal[..end]
                    .iter()
                    .all(|byte| byte.is_ascii_hexdigit() || matches!(byte, b':' | b'.')) =>
            {
                &literal[end + 1..]
            }
            _ => return false,
        },
        None => {
            let end = host
                .iter()
                .position(|byte| !REG_NAME[usize::from(*byte)])
                .unwrap_or(host.len());
            &host[end..]
        }
    };
    match rest.split_first() {
        None => true,
        Some((b':', port)) => port.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    }
}

/// Removes hop-by-hop headers: the fixed list of RFC 9110 section 7.6.1 and any named in `Connection`.
/// For an upgrade, `Upgrade` and `Connection: upgrade` are end-to-end in effect and are kept. `Trailer` is
/// end-to-end (RFC 9110 section 6.6.2) and is kept. (The HTTP/1 server sends a client that sent
/// `TE: trailers` every trailer field but those `upstream::h1::encode_trailers` drops, announced or not,
/// and no trailers to one that did not; hyper's sent only announced ones, and only to a client that
/// asked.)
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none, or only `Connection: keep-alive` (many app servers send it on every
    // answer, some with `Keep-Alive: timeout=N`): one pass over the fields decides, and then at most two
    // hashed removals instead of a list of names and one removal per hop-by-hop header.
    let kind = if upgrade {
        HopByHop::Other
    } else {
        hop_by_hop_kind(headers)
    };
    strip_hop_by_hop_of_kind(headers, upgrade, kind);
}

/// Whether `headers` has a field `strip_hop_by_hop` would remove: none is left on an answer that reaches
/// the HTTP/2 server (`server::h2_conn` checks it in debug builds; `h2` refuses the connection-specific
/// ones, RFC 9113 section 8.2.2).
pub(crate) fn has_hop_by_hop(headers: &HeaderMap) -> bool {
    hop_by_hop_kind(headers) != HopByHop::None
}

/// `strip_hop_by_hop` once the pass over the fields was made (`hop_by_hop_kind`, or the request's
/// `RequestFields`); an upgrade always takes the general path.
fn strip_hop_by_hop_of_kind(headers: &mut HeaderMap, upgrade: bool, kind: HopByHop) {
    if !upgrade {
        match kind {
            HopByHop::None => return,
            HopByHop::KeepAlive { keep_alive_field } => {
                headers.remove(header::CONNECTION);
                if keep_alive_field {
                    headers.remove(&KEEP_ALIVE);
                }
                return;
            }
            HopByHop::Other => {}
        }
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

/// What one pass over a message's fields finds of hop-by-hop headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HopByHop {
    None,
    /// Only `Connection` fields whose every option is `keep-alive` or `close`, and perhaps a
    /// `Keep-Alive` field: removing `Connection` (and `Keep-Alive`) is all there is to do.
    KeepAlive {
        keep_alive_field: bool,
    },
    /// Anything else: the general path.
    Other,
}

fn hop_by_hop_kind(headers: &HeaderMap) -> HopByHop {
    let mut scan = HopScan::default();
    for (name, value) in headers {
        if scan.other {
            break;
        }
        scan.see(name, value);
    }
    scan.kind()
}

/// `hop_by_hop_kind`'s pass, one field at a time (the request's pass looks for more on the way).
#[derive(Default)]
struct HopScan {
    connection: bool,
    keep_alive_field: bool,
    other: bool,
}

impl HopScan {
    fn see(&mut self, name: &HeaderName, value: &HeaderValue) {
        if name == header::CONNECTION {
            self.connection = true;
            let simple = value.to_str().is_ok_and(|value| {
                value.split(',').all(|token| {
                    let token = token.trim();
                    token.eq_ignore_ascii_case("keep-alive") || token.eq_ignore_ascii_case("close")
                })
            });
            self.other |= !simple;
        } else if name == KEEP_ALIVE {
            self.keep_alive_field = true;
        } else if is_hop_by_hop(name) || name.as_str() == "close" {
            // `Connection: close` names a field `close`, which must go too: the general path.
            self.other = true;
        }
    }

    fn kind(&self) -> HopByHop {
        if self.other {
            return HopByHop::Other;
        }
        match (self.connection, self.keep_alive_field) {
            (false, false) => HopByHop::None,
            (true, keep_alive_field) => HopByHop::KeepAlive { keep_alive_field },
            // `Keep-Alive` without `Connection` is still hop-by-hop (RFC 9110 section 7.6.1).
            (false, true) => HopByHop::Other,
        }
    }
}

/// What one pass over a request's fields finds (made once, in `handle`, before any is changed), so that
/// `request_id`, `request_host` and `prepare_request_headers` look up by name (each lookup hashes the
/// name) only the fields a request has: most have no `X-Request-Id`, no `TE`, one `Host` (an HTTP/2 one
/// none), at most one `Cookie` and no forwarding headers.
struct RequestFields {
    hop: HopByHop,
    host_fields: usize,
    cookie_fields: usize,
    client_forwarding: bool,
    /// The client sent `X-Request-Id` (replaced by the proxy's).
    request_id: bool,
    /// The client sent `Content-Length`.
    content_length: bool,
    /// A value starts or ends with a space or tab (`has_edge_whitespace`): malformed over HTTP/2
    /// (`check_http2_request`). Looked for only in an HTTP/2 request's fields (HTTP/1 parsers trim).
    edge_whitespace: bool,
}

/// `http2`: the fields are an HTTP/2 request's, whose values are looked at for `edge_whitespace` too
/// (in this pass, not in one of their own).
fn request_fields(headers: &HeaderMap, http2: bool) -> RequestFields {
    let mut hop = HopScan::default();
    let mut host_fields = 0;
    let mut cookie_fields = 0;
    let mut client_forwarding = false;
    let mut request_id = false;
    let mut content_length = false;
    let mut edge_whitespace = false;
    for (name, value) in headers {
        if http2 {
            edge_whitespace |= has_edge_whitespace(value.as_bytes());
        }
        if name == header::HOST {
            host_fields += 1;
        } else if name == header::COOKIE {
            cookie_fields += 1;
        } else if is_client_forwarding_header(name) {
            client_forwarding = true;
        } else if name == X_REQUEST_ID {
            request_id = true;
        } else if name == header::CONTENT_LENGTH {
            content_length = true;
        } else {
            hop.see(name, value);
        }
    }
    RequestFields {
        hop: hop.kind(),
        host_fields,
        cookie_fields,
        client_forwarding,
        request_id,
        content_length,
        edge_whitespace,
    }
}

/// Whether `name` is one `strip_hop_by_hop` removes whatever `Connection` says.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    name == header::CONNECTION
        || name == header::UPGRADE
        || name == header::TE
        || name == header::TRANSFER_ENCODING
        || name == header::PROXY_AUTHENTICATE
        || name == header::PROXY_AUTHORIZATION
        || name == KEEP_ALIVE
        || name == PROXY_CONNECTION
}

/// Rewrites a request's head for the instance: hop-by-hop fields go; `Host` becomes the host that routed
/// it; cookies split over several fields (HTTP/2) are joined with `; ` (RFC 9113 section 8.2.3);
/// forwarding headers are the proxy's own unless the peer is a trusted proxy (see docs/proxy.md).
///
/// For an HTTP/1 instance (no upgrade, no trusted proxy in front) the proxy's own fields
/// (`X-Forwarded-*`, `X-Request-Id`) are not put in the map but answered, for `upstream::h1::start` to
/// write after the map's fields: the client's fields of those names are removed from the map all the
/// same.
#[expect(
    clippy::too_many_arguments,
    reason = "one call, each argument a different fact of the request, its route or its connection"
)]
fn prepare_request_headers<'a>(
    headers: &mut HeaderMap,
    fields: &RequestFields,
    host: &'a HeaderValue,
    host_is_field: bool,
    context: &'a ConnectionContext,
    request_id: &'a HeaderValue,
    upgrade: bool,
    protocol: UpstreamProtocol,
) -> Option<upstream::h1::AddedFields<'a>> {
    let written = protocol == UpstreamProtocol::Http1 && !upgrade && !context.trusted_peer;
    // `TE` is hop-by-hop: a request without one takes the short path, and has no `trailers` to keep.
    let wants_trailers = protocol == UpstreamProtocol::Grpc
        || (fields.hop == HopByHop::Other
            && headers
                .get_all(header::TE)
                .iter()
                .filter_map(|value| value.to_str().ok())
                .flat_map(|value| value.split(','))
                .any(|token| token.trim().eq_ignore_ascii_case("trailers")));
    // Whether the request's one `Host` field is the routed host and stays (the general path may remove
    // a field that `Connection` names, `Host` included).
    let host_kept =
        host_is_field && fields.host_fields == 1 && !upgrade && fields.hop != HopByHop::Other;
    let kind = if upgrade { HopByHop::Other } else { fields.hop };
    strip_hop_by_hop_of_kind(headers, upgrade, kind);
    if wants_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
    if fields.cookie_fields > 1 {
        join_cookies(headers);
    }

    let proto = match context.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    if context.trusted_peer {
        let earlier: Vec<&str> = headers
            .get_all(&X_FORWARDED_FOR)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|value| !value.is_empty())
            .collect();
        let forwarded_for = if earlier.is_empty() {
            Some(context.client_ip.clone())
        } else {
            let client_ip = context.client_addr.ip();
            HeaderValue::from_str(&format!("{}, {client_ip}", earlier.join(", "))).ok()
        };
        if let Some(value) = forwarded_for {
            headers.insert(&X_FORWARDED_FOR, value);
        }
        // A trusted proxy in front knows the scheme and host the client used; keep what it says. (One
        // lookup each: `entry`, not `contains_key` then `insert`.)
        if let header::Entry::Vacant(entry) = headers.entry(&X_FORWARDED_PROTO) {
            entry.insert(HeaderValue::from_static(proto));
        }
        if let header::Entry::Vacant(entry) = headers.entry(&X_FORWARDED_HOST) {
            entry.insert(host.clone());
        }
    } else {
        // Most requests carry none: found in the one pass, and no allocation then.
        if fields.client_forwarding {
            let names: Vec<HeaderName> = headers
                .keys()
                .filter(|name| is_client_forwarding_header(name))
                .cloned()
                .collect();
            for name in names {
                headers.remove(name);
            }
        }
        // None is left: appended, with no lookup of an earlier value to replace.
        if !written {
            headers.append(&X_FORWARDED_FOR, context.client_ip.clone());
            headers.append(&X_FORWARDED_PROTO, HeaderValue::from_static(proto));
            headers.append(&X_FORWARDED_HOST, host.clone());
        }
    }
    if protocol == UpstreamProtocol::Http1 {
        if !host_kept {
            headers.insert(header::HOST, host.clone());
        }
    } else if fields.host_fields > 0 {
        // HTTP/2 carries the host in `:authority` (see `upstream_uri`).
        headers.remove(header::HOST);
    }
    if written {
        if fields.request_id {
            headers.remove(&X_REQUEST_ID);
        }
        return Some(upstream::h1::AddedFields {
            forwarded_for: &context.client_ip,
            forwarded_proto: proto,
            forwarded_host: host,
            request_id,
        });
    }
    headers.insert(&X_REQUEST_ID, request_id.clone());
    None
}

/// Forwarding headers a client could use to pose as a proxy (every `X-Forwarded-*`, `Forwarded`), and
/// the client-address fields CDNs and load balancers set, which app frameworks read for the client's
/// address (Rails' `RemoteIp` reads `Client-IP`; django-ipware and request-ip read all of these): believed
/// only from a trusted proxy, as nginx's `real_ip_header` is only from `set_real_ip_from`.
pub(crate) fn is_client_forwarding_header(name: &HeaderName) -> bool {
    let name = name.as_str();
    name.starts_with("x-forwarded-")
        || matches!(
            name,
            "forwarded"
                | "x-real-ip"
                | "client-ip"
                | "x-client-ip"
                | "true-client-ip"
                | "cf-connecting-ip"
                | "fastly-client-ip"
                | "x-cluster-client-ip"
                | "forwarded-for"
                | "x-original-forwarded-for"
        )
}

/// Joins several `Cookie` fields into one, separated by `; ` (RFC 9113 section 8.2.3, RFC 6265 section
/// 5.4): an HTTP/1.1 app would otherwise join them with `,`.
fn join_cookies(headers: &mut HeaderMap) {
    let mut cookies = headers.get_all(header::COOKIE).iter();
    if cookies.next().is_none() || cookies.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for value in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, value);
    }
}

/// The client's IP as an `X-Forwarded-For` value.
pub(crate) fn client_ip_value(client_addr: SocketAddr) -> HeaderValue {
    HeaderValue::from_str(&client_addr.ip().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Gives an HTTP/2 answer its `x-request-id` (the app's own if it has one), marked for HPACK.
///
/// Every answer's id is new, so it goes out as a literal never added to the connection's header table
/// (as the date, `date_for_http2`): added, each new id would chain behind the stale ones. An app's own
/// id is marked too (an app that echoes ids would add one per answer). The name, though, is the same on
/// every answer: the first answer of the connection (`named`) lets HPACK add its field to the table, and
/// every later id names it by its table index (1-2 bytes) instead of as a literal (~9 bytes, Huffman-coded
/// by h2 on every answer; bench/proxy/README.md, "Session 31: HTTP/2 to clients").
fn request_id_for_http2(
    response: &mut Response<ProxyBody>,
    request_id: HeaderValue,
    named: &AtomicBool,
) {
    let id = match response.headers_mut().entry(&X_REQUEST_ID) {
        header::Entry::Occupied(entry) => entry.into_mut(),
        header::Entry::Vacant(entry) => entry.insert(request_id),
    };
    // One load per answer; the swap only until the first answer took it.
    let first = !named.load(Ordering::Relaxed) && !named.swap(true, Ordering::Relaxed);
    if first {
        // HPACK's table keeps this one for the connection's life: a copy of its own, not a slice that
        // would keep its thread's whole block of ids (`new_request_id`). Once per connection.
        if let Ok(copy) = HeaderValue::from_bytes(id.as_bytes()) {
            *id = copy;
        }
    }
    id.set_sensitive(!first);
}

/// Gives an HTTP/2 answer its `date`, in one lookup: the instance's is kept, otherwise the current time
/// (`server::h2_conn` adds none; hyper's HTTP/2 server, used before session 32, added it with a lookup of
/// its own, `auto_date_header`, switched off then).
///
/// Either way the date is marked for HPACK as a literal never added to the HTTP/2 connection's header
/// table (the request id is marked where it is made, `request_id`). h2's table chains entries of one
/// name oldest first, and every answer's new second would add one: each answer then compares its date
/// with every stale one still in the table (up to ~60 on a long-lived connection) before it is found or
/// added. nginx and HAProxy never index answer headers at all; a date is ~22 bytes more on the wire.
fn date_for_http2(response: &mut Response<ProxyBody>) {
    match response.headers_mut().entry(header::DATE) {
        header::Entry::Occupied(mut date) => date.get_mut().set_sensitive(true),
        header::Entry::Vacant(entry) => {
            entry.insert(current_date());
        }
    }
}

thread_local! {
    /// This thread's `date` value and the second it says (formatted once a second, as hyper does).
    static DATE: std::cell::RefCell<(u64, HeaderValue)> =
        const { std::cell::RefCell::new((u64::MAX, HeaderValue::from_static(""))) };
}

/// The current time as an HTTP date, marked sensitive (see `date_for_http2`).
pub(crate) fn current_date() -> HeaderValue {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    DATE.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != now {
            let mut value = HeaderValue::from_bytes(&http_date(now))
                .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            value.set_sensitive(true);
            *cached = (now, value);
        }
        cached.1.clone()
    })
}

/// An HTTP date (IMF-fixdate, RFC 9110 section 5.6.7) of `seconds` since the Unix epoch.
fn http_date(seconds: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = seconds / 86_400;
    let time = seconds % 86_400;
    // The civil date of a day count (Howard Hinnant's `civil_from_days`, for days since 1970).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    let digit = |value: u64| b'0' + (value % 10) as u8;
    out[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    out[5] = digit(day / 10);
    out[6] = digit(day);
    out[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    out[12] = digit(year / 1000);
    out[13] = digit(year / 100);
    out[14] = digit(year / 10);
    out[15] = digit(year);
    out[17] = digit(time / 36_000);
    out[18] = digit(time / 3_600);
    out[20] = digit(time % 3_600 / 600);
    out[21] = digit(time % 3_600 / 60);
    out[23] = digit(time % 60 / 10);
    out[24] = digit(time % 60);
    out
}

/// The client's `X-Request-Id` when it sent a usable one, else a new random 128-bit hex id.
///
/// Marked sensitive, which HTTP/2's HPACK encodes as a literal never added to the connection's header
/// table (HTTP/1 ignores the mark): a value unique to one request only fills the table, so that every
/// later answer's id is compared with the dozens of stale ones and evicts the `date` entry (a tenth of an h2c
/// request's instructions; see bench/proxy/README.md, "Session 27: HTTP/2").
fn request_id(headers: &HeaderMap, has_one: bool) -> HeaderValue {
    // Looked up only when the pass over the fields saw one (`RequestFields::request_id`).
    let mut id = match has_one.then(|| headers.get(&X_REQUEST_ID)).flatten() {
        Some(value) if !value.is_empty() && value.len() <= 200 => value.clone(),
        _ => new_request_id(),
    };
    id.set_sensitive(true);
    id
}

/// A new random 128-bit id in hex.
///
/// Its bytes are a slice of the thread's block of ids (`REQUEST_IDS`), a shared `Bytes` from the start:
/// 32 ids take the block's two allocations (its bytes and, at its first split, the count shared by its
/// slices) where each id took one of its own (`Bytes::from_owner`, session 30: one of the ~1 allocation
/// per HTTP/1 request, of ~9 per h2c one). A value copied into a `Vec`-backed `Bytes`
/// (`HeaderValue::from_bytes`) would be allocated again on its first clone, and the id is cloned for
/// every request (into the upstream request, and kept for the answer). A block is freed once its last id
/// is: a request that lives long (a tunnel, a long poll) keeps at most its 1 KiB block.
fn new_request_id() -> HeaderValue {
    let mut id = [0u8; REQUEST_ID_LEN];
    id[..16].copy_from_slice(&hex_digits(random_u64()));
    id[16..].copy_from_slice(&hex_digits(random_u64()));
    let bytes = REQUEST_IDS
        .try_with(|block| {
            let mut block = block.try_borrow_mut().ok()?;
            if block.capacity() - block.len() < REQUEST_ID_LEN {
                *block = BytesMut::with_capacity(REQUEST_ID_BLOCK);
            }
            block.extend_from_slice(&id);
            Some(block.split().freeze())
        })
        .ok()
        .flatten()
        // While the thread's locals are torn down.
        .unwrap_or_else(|| Bytes::from_owner(id));
    HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| HeaderValue::from_static("0"))
}

/// A request id's length: 128 bits in hex.
const REQUEST_ID_LEN: usize = 32;

/// The bytes of a thread's block of request ids (32 ids).
const REQUEST_ID_BLOCK: usize = 32 * REQUEST_ID_LEN;

thread_local! {
    /// This thread's block of request ids, from which `new_request_id` splits each new id.
    static REQUEST_IDS: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `value`'s 16 lower-case hex digits, most significant first, computed on all of them at once (a
/// digit at a time was ~200 instructions of a request id's ~500).
fn hex_digits(value: u64) -> [u8; 16] {
    const BYTES: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    // Each nibble into a byte of its own, in order: halves, quarters, bytes, then nibbles apart.
    let mut x = u128::from(value);
    x = (x & 0xffff_ffff_0000_0000) << 32 | (x & 0xffff_ffff);
    x = (x & 0x0000_ffff_0000_0000_0000_ffff_0000) << 16
        | (x & 0x0000_0000_0000_ffff_0000_0000_0000_ffff);
    x = (x & 0x0000_ff00_0000_ff00_0000_ff00_0000_ff00) << 8
        | (x & 0x0000_00ff_0000_00ff_0000_00ff_0000_00ff);
    x = (x & 0x00f0_00f0_00f0_00f0_00f0_00f0_00f0_00f0) << 4
        | (x & 0x000f_000f_000f_000f_000f_000f_000f_000f);
    // '0' + n, and 'a' - '0' - 10 more where n > 9 (n + 6 carries into the byte's 0x10 bit).
    let letters = ((x + 6 * BYTES) >> 4) & BYTES;
    (x + 0x30 * BYTES + letters * 0x27).to_be_bytes()
}

#[cfg(test)]
mod tests;
