//! `/metrics`: renders every release's counters in the Prometheus text format (version 0.0.4), and a tiny
//! server that answers it on its own listener.
//!
//! Rendered by hand rather than through prometheus-client: our counters are already lock-free atomics
//! (prometheus-client's histogram takes a lock per observation), and the format is a few lines of text.

use std::convert::Infallible;
use std::fmt::Write;
use std::io;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::control::Proxy;

/// The content type of `render`'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Renders all per-release counters, the in-flight gauges and the waiting queues.
pub fn render(proxy: &Proxy) -> String {
    let all_stats = proxy.all_stats();
    let mut out = String::with_capacity(4096);
    let _ = writeln!(
        out,
        "# HELP rollway_proxy_requests_total Answers from instances, by release and status class."
    );
    let _ = writeln!(out, "# TYPE rollway_proxy_requests_total counter");
    for stats in &all_stats {
        let release = escape(stats.release.as_str());
        let r = &stats.requests;
        for (class, count) in [
            ("1xx", r.informational),
            ("2xx", r.success),
            ("3xx", r.redirection),
            ("4xx", r.client_error),
            ("5xx", r.server_error),
        ] {
            let _ = writeln!(
                out,
                "rollway_proxy_requests_total{{release=\"{release}\",class=\"{class}\"}} {count}"
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP rollway_proxy_errors_total Errors met by the proxy, by release and kind."
    );
    let _ = writeln!(out, "# TYPE rollway_proxy_errors_total counter");
    for stats in &all_stats {
        let release = escape(stats.release.as_str());
        for (kind, count) in &stats.errors {
            let _ = writeln!(
                out,
                "rollway_proxy_errors_total{{release=\"{release}\",kind=\"{}\"}} {count}",
                kind.as_str()
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP rollway_proxy_in_flight Requests and upgraded connections open, by release."
    );
    let _ = writeln!(out, "# TYPE rollway_proxy_in_flight gauge");
    for stats in &all_stats {
        let release = escape(stats.release.as_str());
        let _ = writeln!(
            out,
            "rollway_proxy_in_flight{{release=\"{release}\"}} {}",
            stats.in_flight
        );
    }
    let _ = writeln!(
        out,
        "# HELP rollway_proxy_request_duration_seconds Time to the answer's head, by release."
    );
    let _ = writeln!(
        out,
        "# TYPE rollway_proxy_request_duration_seconds histogram"
    );
    for stats in &all_stats {
        let release = escape(stats.release.as_str());
        for (bound, cumulative) in &stats.latency.cumulative_buckets {
            let _ = writeln!(
                out,
                "rollway_proxy_request_duration_seconds_bucket{{release=\"{release}\",le=\"{}\"}} {cumulative}",
                bound.as_secs_f64()
            );
        }
        let _ = writeln!(
            out,
            "rollway_proxy_request_duration_seconds_bucket{{release=\"{release}\",le=\"+Inf\"}} {}",
            stats.latency.count
        );
        let _ = writeln!(
            out,
            "rollway_proxy_request_duration_seconds_sum{{release=\"{release}\"}} {}",
            stats.latency.sum.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "rollway_proxy_request_duration_seconds_count{{release=\"{release}\"}} {}",
            stats.latency.count
        );
    }
    let _ = writeln!(
        out,
        "# HELP rollway_proxy_waiting Requests waiting for a ready instance, by route."
    );
    let _ = writeln!(out, "# TYPE rollway_proxy_waiting gauge");
    for (route, waiting) in proxy.waiting() {
        let _ = writeln!(
            out,
            "rollway_proxy_waiting{{route=\"{}\"}} {waiting}",
            escape(route.as_str())
        );
    }
    let workers = proxy.worker_connections();
    if !workers.is_empty() {
        let _ = writeln!(
            out,
            "# HELP rollway_proxy_worker_connections Client connections each data-plane worker serves."
        );
        let _ = writeln!(out, "# TYPE rollway_proxy_worker_connections gauge");
        for (worker, open) in workers.iter().enumerate() {
            let _ = writeln!(
                out,
                "rollway_proxy_worker_connections{{worker=\"{worker}\"}} {open}"
            );
        }
    }
    out
}

/// Serves `GET /metrics` (and 404 for anything else) on `listener` until `shutdown`.
pub async fn serve_metrics(
    listener: TcpListener,
    proxy: Proxy,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(message = "Accepting a metrics connection failed.", %error);
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let proxy = proxy.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            let service = service_fn(move |request: Request<Incoming>| {
                let proxy = proxy.clone();
                async move { Ok::<_, Infallible>(answer(&request, &proxy)) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

fn answer(request: &Request<Incoming>, proxy: &Proxy) -> Response<Full<Bytes>> {
    if request.uri().path() != "/metrics" {
        let mut response = Response::new(Full::new(Bytes::from_static(b"404 Not Found\n")));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let mut response = Response::new(Full::new(Bytes::from(render(proxy))));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    response
}

/// Escapes a label value (backslash, double quote, newline), as the text format requires.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
