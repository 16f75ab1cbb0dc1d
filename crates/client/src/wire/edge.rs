//! Wire types of an environment's edge controls: maintenance mode and pause (`/v1/apps/{app}/environments/{env}/maintenance`
//! and `/pause`), and how `status` shows them.

use serde::{Deserialize, Serialize};

/// `PUT …/maintenance`: turn maintenance mode on (again, replacing the page and networks).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaintenanceRequest {
    /// Shown on the default page (HTML-escaped); ignored when `page_html` is given.
    #[serde(default)]
    pub message: Option<String>,
    /// The app's own page (read by the CLI from the app folder), at most 256 KiB.
    #[serde(default)]
    pub page_html: Option<String>,
    /// Client networks that still reach the app (`203.0.113.0/24`).
    #[serde(default)]
    pub allow: Vec<String>,
    /// `Retry-After` in seconds; the agent's default when absent.
    #[serde(default)]
    pub retry_after_s: Option<u64>,
}

/// `PUT …/pause`: hold new requests for at most `max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {
    pub max_ms: u64,
}

/// An environment's edge controls, as every edge call and `status` answer them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeView {
    pub maintenance: Option<MaintenanceView>,
    pub pause: Option<PauseView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MaintenanceView {
    pub message: Option<String>,
    /// Whether the page is the app's own file (else the default page).
    pub custom_page: bool,
    pub allow: Vec<String>,
    pub retry_after_s: u64,
    pub since: i64,
    pub by: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseView {
    pub since: i64,
    /// When the proxy lets requests through again by itself (`--max`).
    pub until: i64,
}
