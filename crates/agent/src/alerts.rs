//! Alerts: a Slack-compatible webhook (`{"text": ...}`) for the events a person must hear about,
//! posted with retries and backoff, once per event.
//!
//! The webhook URL is a secret (`[alerts] webhook = "SECRET_NAME"`): it is read from the store
//! when an alert is sent and never logged; errors say "the webhook", not where it points.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use client::wire::EventView;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::broadcast;

use crate::engine::{AppEnv, Engine};
use crate::secrets::Secret;

/// Attempts per alert, and the first backoff (doubled after each failure).
pub const ATTEMPTS: u32 = 4;
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What an alert says, or `None` for events that are not alerts.
///
/// One arm per alerting event kind: its prefix, then the event's own message. A new alert is one
/// more arm (and a row in the tests).
pub fn alert_text(event: &EventView) -> Option<String> {
    let scope = match (&event.app, &event.environment) {
        (Some(app), Some(env)) => format!("{app} in {env}"),
        _ => "rollway".to_owned(),
    };
    // A deployment's alerts come from the event's typed payload, never from its kind or wording.
    use client::wire::{DeploymentEvent, DeploymentState};
    let prefix = match (event.deployment_event(), event.kind.as_str()) {
        (Some(DeploymentEvent::Finished { state, .. }), _) => match state {
            DeploymentState::Failed => "deploy failed: ",
            DeploymentState::RolledBack => "rolled back automatically: ",
            _ => return None,
        },
        (Some(DeploymentEvent::AwaitingApproval { .. }), _) => "waiting for approval: ",
        (_, kind) => match kind {
            "instance.unhealthy" | "watch.all_unhealthy" | "backup.failed" => "",
            "backup.upload_failed" | "backup.verify_failed" => "",
            "proxy.exited" | "proxy.restarted" | "proxy.restart_failed" => "",
            "agent.backup_failed" => "",
            "instance.recovered" | "watch.recovered" => "recovered: ",
            "watch.error_rate" => "error rate above the bound: ",
            "cert.expiring" | "cert.renewal_failed" => "",
            "cron.failed" | "cron.timed_out" | "cron.interrupted" => "",
            _ => return None,
        },
    };
    Some(format!("[rollway] {scope}: {prefix}{}", event.message))
}

/// Sends the alerts of events as they are recorded; one task for the agent's life. It follows the
/// engine's event stream like any live follower (`events` must be subscribed before the agent
/// records anything); when it falls behind, it reads the events it missed from the store, so
/// every alerting event is sent once.
pub async fn run(engine: Arc<Engine>, mut events: broadcast::Receiver<EventView>) {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    let http: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut seen = Seen::from(engine.store.last_event_id().unwrap_or(0));
    let mut missed = std::collections::VecDeque::new();
    loop {
        let event = match missed.pop_front() {
            Some(event) => event,
            None => match events.recv().await {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    missed.extend(
                        engine
                            .store
                            .events_after(seen.floor, MAX_REPLAY)
                            .unwrap_or_default()
                            .iter()
                            .map(crate::store::Event::view),
                    );
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if !seen.first_time(event.id) {
            continue;
        }
        let Some(text) = alert_text(&event) else {
            continue;
        };
        // An app's event goes to its environment's webhook; an agent-wide one (the proxy) to every
        // webhook an app on this agent has, once each.
        let targets: Vec<(String, String, Secret)> =
            match (event.app.clone(), event.environment.clone()) {
                (Some(app), Some(env)) => webhook_url(&engine, &app, &env)
                    .map(|url| vec![(app, env, url)])
                    .unwrap_or_default(),
                _ => every_webhook(&engine),
            };
        for (app, env, url) in targets {
            let http = http.clone();
            let engine = engine.clone();
            let event = event.clone();
            let text = text.clone();
            tokio::spawn(async move {
                let body = serde_json::json!({ "text": text }).to_string();
                match post_with_retries(&http, &url, body).await {
                    Ok(attempts) => {
                        tracing::info!(message = "Alert sent.", kind = %event.kind, event = event.id, attempts)
                    }
                    Err(error) => {
                        tracing::warn!(message = "Alert not delivered.", kind = %event.kind, event = event.id, %error);
                        engine.record(crate::store::NewEvent {
                            app: Some(app),
                            environment: Some(env),
                            deployment_id: event.deployment_id.clone(),
                            kind: "alert.failed".to_owned(),
                            message: format!(
                                "the alert for event {} was not delivered: {error}",
                                event.id
                            ),
                            data_json: "{}".to_owned(),
                        });
                    }
                }
            });
        }
    }
}

/// Events read again from the store after the task fell behind the live stream, at most.
const MAX_REPLAY: usize = 10_000;

/// The ids of the events already handled: every id up to `floor`, and those in `above` (events
/// are published in about, not exactly, the order of their ids). Bounded: the oldest ids fold
/// into `floor`.
struct Seen {
    floor: i64,
    above: std::collections::BTreeSet<i64>,
}

impl Seen {
    const WINDOW: usize = 4 * MAX_REPLAY;

    fn from(floor: i64) -> Seen {
        Seen {
            floor,
            above: std::collections::BTreeSet::new(),
        }
    }

    /// Whether `id` is seen for the first time (and marks it seen).
    fn first_time(&mut self, id: i64) -> bool {
        if id <= self.floor || !self.above.insert(id) {
            return false;
        }
        while self.above.len() > Seen::WINDOW {
            if let Some(oldest) = self.above.pop_first() {
                self.floor = oldest;
            }
        }
        true
    }
}

/// Every (app, environment) with a webhook, each distinct URL once.
fn every_webhook(engine: &Engine) -> Vec<(String, String, Secret)> {
    let mut targets: Vec<(String, String, Secret)> = Vec::new();
    for (app, env, _) in engine.store.apps().unwrap_or_default() {
        if let Some(url) = webhook_url(engine, &app, &env)
            && !targets
                .iter()
                .any(|(_, _, known)| known.expose() == url.expose())
        {
            targets.push((app, env, url));
        }
    }
    targets
}

/// The webhook URL of (app, env): the current release names the secret holding it.
fn webhook_url(engine: &Engine, app: &str, env: &str) -> Option<Secret> {
    let key = AppEnv::new(app.to_owned(), env.to_owned());
    let current = engine.store.current(app, env).ok().flatten()?;
    let release = crate::deploy::spec::load_release(engine, &key, current).ok()?;
    let name = release.resolved.config.alerts.as_ref()?.webhook.clone()?;
    let versions = crate::secrets::snapshot(&engine.store, app, env).ok()?;
    let version = versions.get(&name)?.clone();
    let wanted = std::collections::BTreeMap::from([(name.clone(), version)]);
    let mut opened =
        crate::secrets::open_versions(&engine.store, &engine.master_key, app, env, &wanted).ok()?;
    opened.remove(&name)
}

type HttpClient = Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// Why an alert was not delivered. It becomes the `alert.failed` event's message.
#[derive(Debug, thiserror::Error)]
enum AlertError {
    /// The parser's error is not kept: it may quote the URL, which is a secret.
    #[error("the webhook URL is not a valid URL")]
    InvalidUrl,
    /// A 4xx other than 429: retrying would not help.
    #[error("the webhook answered {0}")]
    Refused(hyper::StatusCode),
    #[error("{last} ({attempts} attempts)")]
    GaveUp { last: AttemptError, attempts: u32 },
}

/// How one attempt to POST an alert failed.
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("the webhook answered {0}")]
    Status(hyper::StatusCode),
    #[error("cannot reach the webhook")]
    Unreachable,
    #[error("the webhook did not answer within {}s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// POSTs `body`, retrying on connection errors, 429 and 5xx with doubling backoff.
async fn post_with_retries(
    http: &HttpClient,
    url: &Secret,
    body: String,
) -> Result<u32, AlertError> {
    let mut backoff = FIRST_BACKOFF;
    let mut last_error = AttemptError::Unreachable;
    for attempt in 1..=ATTEMPTS {
        let request = hyper::Request::post(url.expose())
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .header(hyper::header::USER_AGENT, "rollway-alerts")
            .body(Full::new(Bytes::from(body.clone())))
            .map_err(|_| AlertError::InvalidUrl)?;
        match tokio::time::timeout(REQUEST_TIMEOUT, http.request(request)).await {
            Ok(Ok(response)) if response.status().is_success() => return Ok(attempt),
            Ok(Ok(response)) => {
                let status = response.status();
                if status.is_client_error() && status != hyper::StatusCode::TOO_MANY_REQUESTS {
                    return Err(AlertError::Refused(status));
                }
                last_error = AttemptError::Status(status);
            }
            // The connector's error may quote the URL, which is a secret: it is not kept.
            Ok(Err(_)) => last_error = AttemptError::Unreachable,
            Err(_) => last_error = AttemptError::Timeout,
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    Err(AlertError::GaveUp {
        last: last_error,
        attempts: ATTEMPTS,
    })
}

#[cfg(test)]
mod tests;
