//! The typed, validated manifest: what every other crate reads.
//!
//! Values here are checked (durations parsed, names valid, references resolved); nothing here
//! knows about TOML, spans or files.

use serde::Serialize;

use crate::swarm::Placement;
use crate::units::{ByteSize, Duration, Ratio, Weight};

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
    /// Backups besides the one before each release command.
    pub backup: BackupPolicy,
    /// Feature flags, handed to the app as `FLAG_<NAME>=true|false`, in manifest order.
    #[serde(serialize_with = "as_bool_map")]
    pub flags: Vec<(String, bool)>,
    /// `[cron.NAME]` jobs, in manifest order. Invariant: names unique.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cron: Vec<crate::cron::CronJob>,
}

/// `[backup]`: a schedule for backups of the database named by `release.backup`, retention, an
/// off-host copy and a restore drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupPolicy {
    pub schedule: Option<Schedule>,
    /// Backups kept per environment (scheduled, manual and pre-release together), on the agent
    /// and on the remote alike.
    pub keep: u32,
    /// Where each backup is copied, encrypted, after it is taken.
    pub remote: Option<BackupRemote>,
    /// The app's own check of a restored backup (`rollway backups verify`), run with the scratch
    /// database's URL in the variable `release.backup` names.
    pub verify: Option<String>,
    /// When restore drills of the newest backup run (UTC).
    pub verify_schedule: Option<Schedule>,
}

/// `[backup] remote = "s3://bucket/prefix"` with its endpoint, region and the names of the
/// secrets that hold the credentials (never the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupRemote {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `http(s)://host[:port]`; AWS S3's regional endpoint when the manifest names none.
    pub endpoint: String,
    pub region: String,
    /// The secret holding the access key id.
    pub access_key_id: String,
    /// The secret holding the secret access key.
    pub secret_access_key: String,
}

impl BackupRemote {
    /// Parses `s3://bucket/prefix` into (bucket, prefix).
    pub fn parse_url(url: &str) -> Result<(String, String), String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("`{url}` does not start with `s3://`"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid = (3..=63).contains(&bucket.len())
            && bucket.bytes().all(|byte| {
                byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-' || byte == b'.'
            })
            && !bucket.starts_with(['-', '.'])
            && !bucket.ends_with(['-', '.']);
        if !valid {
            return Err(format!(
                "`{bucket}` is not a bucket name (3 to 63 lowercase letters, digits, `-` and `.`)"
            ));
        }
        let prefix = prefix.trim_matches('/');
        if prefix.split('/').any(|part| part == ".." || part == ".") {
            return Err(format!("the prefix `{prefix}` has a `.` or `..` part"));
        }
        Ok((bucket.to_owned(), prefix.to_owned()))
    }

    /// The endpoint AWS S3 has for `region`.
    pub fn aws_endpoint(region: &str) -> String {
        format!("https://s3.{region}.amazonaws.com")
    }
}

/// When scheduled backups run (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    /// `daily 03:00`
    Daily { hour: u8, minute: u8 },
    /// `hourly` (at minute 0) or `hourly :15`
    Hourly { minute: u8 },
}

impl Schedule {
    pub fn parse(text: &str) -> Result<Schedule, String> {
        let words: Vec<&str> = text.split_whitespace().collect();
        let minute = |text: &str| text.parse::<u8>().ok().filter(|minute| *minute < 60);
        match words.as_slice() {
            ["hourly"] => Ok(Schedule::Hourly { minute: 0 }),
            ["hourly", at] => at
                .strip_prefix(':')
                .and_then(minute)
                .map(|minute| Schedule::Hourly { minute })
                .ok_or_else(|| format!("`{at}` is not a minute such as `:15`")),
            ["daily", at] => {
                let (hour, min) = at
                    .split_once(':')
                    .ok_or_else(|| format!("`{at}` is not a time such as `03:00`"))?;
                let hour = hour.parse::<u8>().ok().filter(|hour| *hour < 24);
                match (hour, minute(min)) {
                    (Some(hour), Some(minute)) => Ok(Schedule::Daily { hour, minute }),
                    _ => Err(format!("`{at}` is not a time such as `03:00`")),
                }
            }
            _ => Err(format!("`{text}` is not a schedule")),
        }
    }

    /// The latest time at or before `now` (unix seconds, UTC) when a backup was due.
    pub fn last_due(&self, now_secs: i64) -> i64 {
        match *self {
            Schedule::Hourly { minute } => {
                let hour_start = now_secs - now_secs.rem_euclid(3600);
                let due = hour_start + i64::from(minute) * 60;
                if due <= now_secs { due } else { due - 3600 }
            }
            Schedule::Daily { hour, minute } => {
                let day_start = now_secs - now_secs.rem_euclid(86_400);
                let due = day_start + i64::from(hour) * 3600 + i64::from(minute) * 60;
                if due <= now_secs { due } else { due - 86_400 }
            }
        }
    }
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Hourly { minute: 0 } => write!(f, "hourly"),
            Schedule::Hourly { minute } => write!(f, "hourly :{minute:02}"),
            Schedule::Daily { hour, minute } => write!(f, "daily {hour:02}:{minute:02}"),
        }
    }
}

impl Serialize for Schedule {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct App {
    pub name: String,
}

/// `[build]`: how the agent builds the release, and where a cluster pulls its images from.
/// Invariant: at least one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Build {
    /// Run on the agent inside the unpacked artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The registry the swarm driver pushes release images to, instead of the agent's
    /// `ROLLWAY_SWARM_REGISTRY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<Registry>,
}

/// `registry = "HOST[:PORT][/PREFIX]"` of `[build]`, with the names of the secrets that hold
/// its credentials (never the values).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Registry {
    /// `HOST[:PORT]`, what the engine logs in to. Invariant: no scheme, no credentials.
    pub host: String,
    /// Repository path under the host, without leading or trailing `/`; may be empty.
    pub prefix: String,
    /// `registry_user` and `registry_password`: both or neither (an open registry).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
}

/// The secrets holding a registry's user name and password.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RegistryCredentials {
    pub user: String,
    pub password: String,
}

impl Registry {
    /// Splits `HOST[:PORT][/PREFIX]`; the reason says what is wrong.
    pub fn parse_address(address: &str) -> Result<(String, String), String> {
        if address.contains("://") {
            return Err(
                "it has a scheme; the engine speaks HTTPS (or HTTP to loopback) by itself"
                    .to_owned(),
            );
        }
        if address.contains(['@', '?', '#', ' ', '\t']) {
            return Err("it holds `@`, `?`, `#` or a space (credentials are secrets, not part of the address)".to_owned());
        }
        let address = address.trim_end_matches('/');
        let (host, prefix) = address.split_once('/').unwrap_or((address, ""));
        let (name, port) = match host.rsplit_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        };
        let name_ok = !name.is_empty()
            && name.split('.').all(|label| {
                !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !name_ok {
            return Err(format!("`{host}` is not a host name"));
        }
        if let Some(port) = port
            && !port.parse::<u16>().is_ok_and(|port| port > 0)
        {
            return Err(format!("`{port}` is not a port (1-65535)"));
        }
        let prefix_ok = prefix.split('/').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        });
        if !prefix.is_empty() && !prefix_ok {
            return Err(format!(
                "`{prefix}` is not a repository path (lowercase letters, digits, `.`, `_`, `-`, parts split by `/`)"
            ));
        }
        Ok((host.to_owned(), prefix.to_owned()))
    }

    /// `HOST[:PORT][/PREFIX]`, the start of every repository pushed to it.
    pub fn address(&self) -> String {
        if self.prefix.is_empty() {
            self.host.clone()
        } else {
            format!("{}/{}", self.host, self.prefix)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    pub source: ServiceSource,
    pub replicas: u32,
    /// Invariant: present for every service that a route sends traffic to.
    pub health: Option<Health>,
    /// `health = { command = "..." }`: a command instead of an HTTP path, for services without a
    /// route (workers). Invariant: never together with `health`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_command: Option<HealthCommand>,
    /// How long an instance taken out of traffic may take to finish its in-flight requests.
    pub drain: Duration,
    /// Time between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_timeout: Duration,
    /// Variables for this service only, layered over the app's `[env]`.
    #[serde(serialize_with = "as_map")]
    pub env: Vec<(String, String)>,
    /// The user a container runs as (`uid[:gid]` or a name of the image's), instead of its app's
    /// own non-root user. Invariant: only for `image` and `dockerfile` services.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// How the proxy talks to the service's instances.
    pub protocol: Protocol,
    /// Where and how big its tasks are on a cluster. Invariant: empty unless the environment's
    /// driver is swarm (checked for each environment).
    #[serde(skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
}

/// `[services.X] protocol`: what the service's instances speak on `$PORT`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// HTTP/1.1 (the default).
    #[default]
    Http1,
    /// HTTP/2 over cleartext, prior knowledge.
    H2c,
    /// gRPC: h2c, and an answer's `grpc-status` decides whether it counts as an error.
    Grpc,
}

impl Protocol {
    pub const NAMES: [&str; 3] = ["http1", "h2c", "grpc"];

    pub fn parse(text: &str) -> Option<Protocol> {
        match text {
            "http1" => Some(Protocol::Http1),
            "h2c" => Some(Protocol::H2c),
            "grpc" => Some(Protocol::Grpc),
            _ => None,
        }
    }
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

/// A health check by command: it passes when the command exits 0 within `timeout`. It runs in the
/// release's folder with the instance's environment and private temp folder (`$TMPDIR`), so it
/// can look at what the instance writes there (a heartbeat file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthCommand {
    pub command: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive passes before a new instance counts as healthy.
    pub healthy: u32,
    /// How long a new instance may take to become healthy before the deploy fails.
    pub start_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    /// Runs once per deploy, before any new instance starts.
    pub command: Option<String>,
    /// Name of the variable holding the database URL to back up before `command` runs.
    pub backup: Option<String>,
    /// Runs against the new instances (their URLs in `ROLLWAY_SMOKE_URLS`) before any traffic.
    pub smoke: Option<String>,
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
    /// How long the analysis stays armed after a release takes all traffic.
    pub observe: Duration,
    /// A release whose 5xx share is worse than its baseline's by more than this fails.
    pub baseline_margin: Ratio,
    /// A release whose p99 is more than this many times its baseline's fails.
    pub latency_margin: f64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    /// The service this route sends traffic to.
    pub service: String,
    /// Empty means any host.
    pub hosts: Vec<String>,
    /// Path prefixes, each starting with `/`; never empty (defaults to `/`).
    pub paths: Vec<String>,
    /// Time an instance has to answer once the request (or its last body chunk) reached it (504 past it).
    pub timeout: Duration,
    /// Longest silence of an instance in the middle of its answer (the answer is cut past it).
    pub idle_timeout: Duration,
    /// Largest request body (413 past it).
    pub max_body: ByteSize,
    /// Most header fields in an answer (502 past it).
    pub max_header_fields: u32,
    /// Longest time a request that was not sent waits for a routable instance (a replacement of the
    /// only one starting) or the end of a pause (503 with `Retry-After` past it); zero: 503 at once.
    pub hold: Duration,
    /// Slow start: over this long, a new release weighted in while the route serves takes its share in
    /// 10 steps, and the release it replaces keeps the rest until the end; zero: all at once.
    pub slow_start: Duration,
    /// Requests per client address (429 past it); `None` means unlimited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::edge::RateLimit>,
    /// Client networks that may use the route (403 for others); empty means every client.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// HTTPS for the route's hosts (`tls`); off by default.
    #[serde(skip_serializing_if = "RouteTls::is_off")]
    pub tls: RouteTls,
    /// `Strict-Transport-Security` max-age on HTTPS answers (`hsts = "1y"`); only with TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hsts: Option<Duration>,
}

/// Where a route's certificates come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteTls {
    /// Plain HTTP only.
    #[default]
    Off,
    /// A certificate per host from the agent's ACME server (Let's Encrypt by default).
    Auto,
    /// A certificate and key given as secrets of the environment (PEM), by name.
    Given { cert: String, key: String },
}

impl RouteTls {
    /// Whether the route is served over HTTPS (and plain HTTP redirects there).
    pub fn is_on(&self) -> bool {
        !matches!(self, RouteTls::Off)
    }

    pub fn is_off(&self) -> bool {
        !self.is_on()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alerts {
    /// The name of the secret holding the webhook URL, never the URL.
    pub webhook: Option<String>,
}

/// Defaults from DESIGN.md ("Defaults").
pub mod defaults {
    use crate::units::{ByteSize, Duration, Ratio};

    pub const REPLICAS: u32 = 1;
    pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const ROUTE_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const ROUTE_MAX_BODY: ByteSize = ByteSize::mebibytes(100);
    pub const ROUTE_MAX_HEADER_FIELDS: u32 = 500;
    /// The proxy's own default hold, below browsers' and load balancers' usual answer timeouts.
    pub const ROUTE_HOLD: Duration = Duration::from_secs(30);
    /// A request held longer than this is better answered 503 with `Retry-After`.
    pub const ROUTE_HOLD_MAX: Duration = Duration::from_secs(300);
    /// Off by default: measured, a ramp did not lift the lowest 100 ms at a switch (bench/proxy/README.md,
    /// "Session 30: the switch").
    pub const ROUTE_SLOW_START: Duration = Duration::from_secs(0);
    /// Longest slow start: the release it replaces stays routed (and running) that long.
    pub const ROUTE_SLOW_START_MAX: Duration = Duration::from_secs(60);
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
    pub const BACKUPS_KEPT: u32 = 14;
    pub const OBSERVE: Duration = Duration::from_secs(60);
    pub const LATENCY_MARGIN: f64 = 2.0;

    pub fn baseline_margin() -> Ratio {
        Ratio::new(0.01).unwrap_or_else(|| unreachable!("0.01 is within 0..=1"))
    }

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

fn as_bool_map<S: serde::Serializer>(
    pairs: &[(String, bool)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(pairs.iter().map(|(key, value)| (key, value)))
}
