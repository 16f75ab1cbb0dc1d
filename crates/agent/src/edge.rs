//! Edge controls as the agent keeps them: a route's rate limit and allow list from its release's
//! manifest (`RouteEdgeInfo`), and an environment's maintenance mode and pause (`EnvEdge`, persisted in
//! the store), mapped onto the proxy's desired routes (`apply`).
//!
//! It decides nothing per request (the proxy does) and reads no file: `--page` is read by the CLI.

use std::collections::BTreeMap;
use std::time::Duration;

use proxy::{DesiredMaintenance, DesiredRateLimit, DesiredRoute};
use serde::{Deserialize, Serialize};

use crate::engine::{AppEnv, Engine, RouteInfo};

/// `Retry-After` of the maintenance page when the operator gives none.
pub const MAINTENANCE_RETRY_AFTER: Duration = Duration::from_secs(60);
/// Longest `--message`, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;
/// Longest pause `--max` accepted.
pub const MAX_PAUSE: Duration = Duration::from_secs(300);
/// Pause bound when `--max` is not given.
pub const DEFAULT_PAUSE: Duration = Duration::from_secs(30);

/// A route's edge controls from its release's manifest, plus the health path maintenance lets through.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteEdgeInfo {
    pub rate_limit: Option<DesiredRateLimit>,
    pub allow: Vec<String>,
    /// The routed service's health check path: it still reaches the app during maintenance.
    pub health_path: Option<String>,
}

/// Maintenance mode and pause of one app environment, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvEdge {
    pub maintenance: Option<MaintenanceMode>,
    pub pause: Option<Pause>,
}

/// An environment in maintenance: what its routes answer and who still gets through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceMode {
    /// The whole page answered with 503 (the app's own file, or the default page with the message).
    pub page_html: String,
    /// The operator's message, as given (shown by `rollway status`).
    pub message: Option<String>,
    /// Whether `page_html` is the app's own file.
    pub custom_page: bool,
    /// Client networks that still reach the app.
    pub allow: Vec<String>,
    pub retry_after_s: u64,
    pub since_ms: i64,
    pub by: String,
}

/// A paused environment: new requests wait in the proxy's queue until `until_ms` at the latest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub until_ms: i64,
    pub since_ms: i64,
}

impl Pause {
    pub fn is_over(&self, now_ms: i64) -> bool {
        now_ms >= self.until_ms
    }
}

/// What the manifest's route says at the edge, in the proxy's terms.
pub fn route_edge_info(
    route: &manifest::Route,
    service: Option<&manifest::Service>,
) -> RouteEdgeInfo {
    RouteEdgeInfo {
        rate_limit: route.rate_limit.map(|limit| DesiredRateLimit {
            requests: limit.requests,
            per_ms: u64::try_from(limit.per.as_std().as_millis()).unwrap_or(u64::MAX),
            burst: limit.burst,
        }),
        allow: route.allow.clone(),
        health_path: service
            .and_then(|service| service.health.as_ref())
            .map(|health| health.path.clone()),
    }
}

/// Sets the edge fields of a desired route from its manifest route and its environment's controls.
pub fn apply(
    desired: &mut DesiredRoute,
    route: &RouteInfo,
    env_edge: Option<&EnvEdge>,
    now_ms: i64,
) {
    desired.rate_limit = route.edge.rate_limit;
    desired.allow = route.edge.allow.clone();
    let Some(env_edge) = env_edge else {
        return;
    };
    desired.maintenance = env_edge
        .maintenance
        .as_ref()
        .map(|maintenance| DesiredMaintenance {
            page_html: maintenance.page_html.clone(),
            retry_after_s: maintenance.retry_after_s,
            allow: maintenance.allow.clone(),
            bypass_paths: route.edge.health_path.iter().cloned().collect(),
        });
    desired.paused_until_unix_ms = env_edge
        .pause
        .filter(|pause| !pause.is_over(now_ms))
        .and_then(|pause| u64::try_from(pause.until_ms).ok());
}

/// The page answered during maintenance when the app has none of its own: plain, self-contained, with
/// the operator's message HTML-escaped.
pub fn default_page(message: Option<&str>) -> String {
    let message = message.unwrap_or("We are doing some maintenance and will be back shortly.");
    format!(
        "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Down for maintenance</title>\n<style>body{{font-family:system-ui,sans-serif;max-width:36rem;margin:15vh auto;padding:0 1rem;color:#222}}h1{{font-size:1.5rem}}</style></head>\n<body><h1>Down for maintenance</h1>\n<p>{}</p>\n</body>\n</html>\n",
        html_escape(message)
    )
}

/// Escapes the five characters that matter in HTML text and attribute values.
pub fn html_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            '"' => escaped.push_str("&quot;"),
            '\'' => escaped.push_str("&#39;"),
            other => escaped.push(other),
        }
    }
    escaped
}

impl Engine {
    /// The edge controls of every environment, as last loaded or set.
    pub fn env_edges(&self) -> BTreeMap<AppEnv, EnvEdge> {
        self.edge
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the edge controls of one environment in memory (the store is written by the caller).
    pub fn set_env_edge(&self, key: &AppEnv, env_edge: EnvEdge) {
        let mut edges = self
            .edge
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if env_edge == EnvEdge::default() {
            edges.remove(key);
        } else {
            edges.insert(key.clone(), env_edge);
        }
    }
}

#[cfg(test)]
mod tests;
