//! The typed, validated manifest: what every other crate reads.
//!
//! Values here are checked (durations parsed, names valid, references resolved); nothing here
//! knows about TOML, spans or files.

use serde::Serialize;

use crate::units::{Duration, Ratio, Weight};

/// The settings of one environment after layering (or the shared settings before it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub app: App,
    pub build: Option<Build>,
    /// Invariant: in manifest order; never empty; names unique.
    pub services: Vec<Service>,
    pub release: Option<Release>,
    pub strategy: Strategy,
    pub analysis: Analysis,
    /// Invariant: each route names a service in `services`.
    pub routes: Vec<Route>,
    /// Variables given to every service, in manifest order. Values may hold `${NAME}` references.
    #[serde(serialize_with = "as_map")]
    pub env: Vec<(String, String)>,
    pub alerts: Option<Alerts>,
    /// Feature flags, handed to the app as `FLAG_<NAME>=true|false`, in manifest order.
    #[serde(serialize_with = "as_bool_map")]
    pub flags: Vec<(String, bool)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// Run on the agent inside the unpacked artifact.
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub source: ServiceSource,
    pub replicas: u32,
    /// Invariant: present for every service that a route sends traffic to.
    pub health: Option<Health>,
    /// How long an instance taken out of traffic may take to finish its in-flight requests.
    pub drain: Duration,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_timeout: Duration,
    /// Variables for this service only, layered over the app's `[env]`.
    #[serde(serialize_with = "as_map")]
    pub env: Vec<(String, String)>,
}

/// What runs for a service: a command in the unpacked artifact (process driver) or an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ServiceSource {
    Run {
        run: String,
    },
    Image {
        image: String,
        run: Option<String>,
    },
    Dockerfile {
        dockerfile: String,
        run: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Health {
    /// Starts with `/`.
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes before an instance counts as healthy.
    pub healthy: u32,
    /// Consecutive failures before an instance counts as unhealthy.
    pub unhealthy: u32,
    /// How long a new instance may take to become healthy before the deploy fails.
    pub start_timeout: Duration,
    /// Host header for the check; the route's first host when unset.
    pub host: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// Runs once per deploy, before any new instance starts.
    pub command: Option<String>,
    /// Name of the variable holding the database URL to back up before `command` runs.
    pub backup: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum StrategyKind {
    BlueGreen,
    Rolling,
    Canary,
}

impl StrategyKind {
    pub const ALL: [(&'static str, StrategyKind); 3] = [
        ("blue-green", StrategyKind::BlueGreen),
        ("rolling", StrategyKind::Rolling),
        ("canary", StrategyKind::Canary),
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::BlueGreen => "blue-green",
            StrategyKind::Rolling => "rolling",
            StrategyKind::Canary => "canary",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Strategy {
    pub kind: StrategyKind,
    /// Invariant: empty unless `kind` is canary; for canary, weights strictly increase and end at 100.
    pub steps: Vec<Step>,
    /// How long the previous release keeps running after a deploy, so rollback is a switch.
    pub keep_warm: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    pub weight: Weight,
    /// `None` waits for `rollway promote`.
    pub pause: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Analysis {
    pub interval: Duration,
    /// Invariant: at least `interval`.
    pub window: Duration,
    pub min_requests: u64,
    pub max_error_rate: Ratio,
    pub max_p99: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The service this route sends traffic to.
    pub service: String,
    /// Empty means any host.
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`; never empty (defaults to `/`).
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alerts {
    /// The name of the secret holding the webhook URL, never the URL.
    pub webhook: Option<String>,
}

/// Defaults from DESIGN.md ("Defaults").
pub mod defaults {
    use crate::units::{Duration, Ratio};

    pub const REPLICAS: u32 = 1;
    pub const HEALTH_INTERVAL: Duration = Duration::from_secs(1);
    pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
    pub const HEALTHY: u32 = 2;
    pub const UNHEALTHY: u32 = 3;
    pub const START_TIMEOUT: Duration = Duration::from_secs(60);
    pub const DRAIN: Duration = Duration::from_secs(30);
    pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
    pub const KEEP_WARM: Duration = Duration::from_secs(600);
    pub const ANALYSIS_INTERVAL: Duration = Duration::from_secs(1);
    pub const ANALYSIS_WINDOW: Duration = Duration::from_secs(30);
    pub const MIN_REQUESTS: u64 = 50;

    pub fn max_error_rate() -> Ratio {
        Ratio::new(0.01).unwrap_or_else(|| unreachable!("0.01 is within 0..=1"))
    }
}

impl Config {
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|service| service.name == name)
    }
}

/// Serializes ordered `(name, value)` pairs as a map, keeping their order.
fn as_map<S: serde::Serializer>(
    pairs: &[(String, String)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}

fn as_bool_map<S: serde::Serializer>(pairs: &[(String, bool)], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}
