//! The agent API's wire types: what goes over `/v1` as JSON, shared by the agent and its clients.
//!
//! Both sides import these types, so the API cannot drift between them. Nothing here holds a secret
//! value except `TokenCreated::token`, which the API answers exactly once.

use serde::{Deserialize, Serialize};

/// The body of every error answer: `{ "error": { "code", "message" } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `unauthorized`, `forbidden`, `not_found`, `locked`, `invalid_manifest`, ...
    pub code: String,
    /// One sentence for people.
    pub message: String,
}

/// `POST /v1/apps/{app}/environments/{env}/deployments`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployRequest {
    /// sha256 of an artifact already uploaded with `PUT /v1/artifacts/{digest}`.
    pub artifact: String,
    /// The text of `rollway.toml`.
    pub manifest: String,
    /// Overrides the manifest's strategy for this deploy.
    pub strategy: Option<String>,
    pub message: Option<String>,
}

/// `POST /v1/apps/{app}/environments/{env}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RollbackRequest {
    /// The release to go back to; the previous good release when absent.
    pub to: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: String,
    pub app: String,
    pub environment: String,
    /// `deploy` or `rollback`.
    pub kind: String,
    pub state: String,
    pub from_release: Option<u64>,
    pub to_release: u64,
    pub strategy: String,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeploymentView {
    /// Terminal states: nothing more will happen to this deployment.
    pub fn is_finished(&self) -> bool {
        matches!(self.state.as_str(), "Succeeded" | "Failed" | "RolledBack")
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<String>,
    /// Dotted kind: `deployment.state`, `instance.healthy`, `token.created`, ...
    pub kind: String,
    pub message: String,
    pub data: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub number: u64,
    pub artifact: String,
    pub strategy: String,
    pub created_by: String,
    pub created_at: i64,
    pub outcome: String,
    pub message: Option<String>,
    pub current: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusView {
    pub app: String,
    pub environment: String,
    pub current_release: Option<u64>,
    /// Where the app answers through the proxy.
    pub url: Option<String>,
    pub instances: Vec<InstanceView>,
    /// Traffic share per release, in percent.
    pub weights: Vec<WeightView>,
    pub deployment: Option<DeploymentView>,
    /// The proxy process that serves this agent's apps (absent from agents before it was added).
    #[serde(default)]
    pub proxy: Option<ProxyView>,
    /// When the latest deployment's observation window ended without enough evidence: the agent's
    /// words for it (the release took all traffic with no verdict either way).
    #[serde(default)]
    pub inconclusive: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: String,
    pub release: u64,
    pub service: String,
    pub port: u16,
    pub state: InstanceState,
}

/// An instance's real state, as the agent, the driver and the proxy see it together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    /// Started, not yet through the health gate.
    Starting,
    /// Through the health gate, not (yet) given traffic.
    Healthy,
    /// Routed: its release has traffic and it passes its health checks.
    Serving,
    /// Taken out of routing by the health watch; back when it passes again.
    OutOfTraffic,
    /// Out of traffic, kept running so a rollback is one switch.
    Warm,
    /// Leaving routing: finishing the requests it has, taking no new ones.
    Draining,
    /// Its process exited and the driver is restarting it (or gave up).
    Crashed,
    /// Not running.
    Stopped,
}

impl InstanceState {
    pub fn as_str(self) -> &'static str {
        match self {
            InstanceState::Starting => "starting",
            InstanceState::Healthy => "healthy",
            InstanceState::Serving => "serving",
            InstanceState::OutOfTraffic => "out_of_traffic",
            InstanceState::Warm => "warm",
            InstanceState::Draining => "draining",
            InstanceState::Crashed => "crashed",
            InstanceState::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The proxy process, as the agent's supervisor sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyView {
    pub state: ProxyState,
    pub pid: Option<u32>,
    /// Where it serves the apps.
    pub listen: String,
    /// Restarts since the agent started.
    pub restarts: u64,
    /// How the last proxy process ended, when one did.
    pub last_exit: Option<String>,
    /// Whether the agent holds the listening sockets, so a proxy restart refuses no connection.
    pub holds_listeners: bool,
}

/// `POST /v1/proxy/upgrade`: which process served before and which serves now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyUpgradeView {
    pub previous_pid: Option<u32>,
    pub proxy: ProxyView,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyState {
    Serving,
    Restarting,
    Down,
}

impl std::fmt::Display for ProxyState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyState::Serving => "serving",
            ProxyState::Restarting => "restarting",
            ProxyState::Down => "down",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightView {
    pub release: u64,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineView {
    pub instance_id: String,
    pub line: String,
}

/// `POST /v1/tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRequest {
    pub name: String,
    /// `viewer`, `deployer` or `admin`.
    pub role: String,
}

/// The answer to `POST /v1/tokens`: the only time the token's value is shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCreated {
    pub id: String,
    pub name: String,
    pub role: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub name: String,
    pub role: String,
    pub created_at: i64,
    pub revoked: bool,
}

/// `GET /v1/agent`: who the agent is and where its proxy listens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    pub version: String,
    pub proxy: String,
    pub state_dir: String,
    /// How deployed apps are kept from the agent and from each other on this host; `None` from an
    /// agent older than the field.
    #[serde(default)]
    pub isolation: Option<IsolationView>,
}

/// The isolation in force on an agent's host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum IsolationView {
    /// The agent runs as root: each app environment runs as its own unprivileged user.
    Users,
    /// The agent is not root: apps run in a Landlock sandbox at this kernel ABI.
    Landlock { abi: u32 },
    /// No isolation: apps run as the agent's user (`user`), for `reason`.
    None { user: String, reason: String },
}

/// `PUT /v1/apps/{app}/environments/{env}/secrets/{name}`: the value travels in the body only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretValue {
    pub value: String,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretValue(***)")
    }
}

/// A secret as listed: name, version, who and when; never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    pub name: String,
    pub version: u64,
    pub created_by: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupView {
    pub id: String,
    pub release: Option<u64>,
    /// `release` (before a release command), `manual` or `schedule`.
    pub reason: String,
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// The database, without its password.
    pub target: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: i64,
}

/// The answer to a restore: what the agent did, step by step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreView {
    pub backup: String,
    pub steps: Vec<String>,
}

/// The deploy lock of an app in an environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockView {
    pub owner: String,
    pub deployment_id: String,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
}
