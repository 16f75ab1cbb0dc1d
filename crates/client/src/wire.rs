//! The agent API's wire types: what goes over `/v1` as JSON, shared by the agent and its clients.
//!
//! Both sides import these types, so the API cannot drift between them. Nothing here holds a secret
//! value except `TokenCreated::token`, which the API answers exactly once.

use serde::{Deserialize, Serialize};

mod edge;
pub use edge::{EdgeView, MaintenanceRequest, MaintenanceView, PauseRequest, PauseView};

/// An id that travels as a JSON string and reads as a `&str` wherever one is taken.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(id: impl Into<String>) -> $name {
                $name(id.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;

            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> $name {
                $name(id)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> $name {
                $name(id.to_owned())
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_id!(
    /// A deployment's id: `d-<unix ms, 13 digits>-<16 hex>`, unique and sorted by creation time.
    DeploymentId
);

string_id!(
    /// An instance's id: `<app>-<environment>-r<release>-<service>-<replica>`, unique on an agent.
    InstanceId
);

/// A release's number within one app and environment: 1, 2, 3, ... in the order they were made.
///
/// Travels as a JSON number (serde transparent), so the wire is the same as a bare `u64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReleaseNumber(u64);

impl ReleaseNumber {
    pub const fn new(number: u64) -> ReleaseNumber {
        ReleaseNumber(number)
    }

    pub const fn get(self) -> u64 {
        self.0
    }

    /// The release made after this one.
    pub const fn next(self) -> ReleaseNumber {
        ReleaseNumber(self.0 + 1)
    }
}

impl std::fmt::Display for ReleaseNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for ReleaseNumber {
    fn from(number: u64) -> ReleaseNumber {
        ReleaseNumber(number)
    }
}

impl From<ReleaseNumber> for u64 {
    fn from(number: ReleaseNumber) -> u64 {
        number.0
    }
}

/// A release number that is not a whole number of at least 1.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("release number {0:?} is not a whole number of at least 1 (e.g. 3)")]
pub struct InvalidReleaseNumber(String);

impl std::str::FromStr for ReleaseNumber {
    type Err = InvalidReleaseNumber;

    fn from_str(s: &str) -> Result<ReleaseNumber, InvalidReleaseNumber> {
        match s.trim().parse::<u64>() {
            Ok(n) if n >= 1 => Ok(ReleaseNumber(n)),
            _ => Err(InvalidReleaseNumber(s.to_owned())),
        }
    }
}

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
    pub strategy: Option<Strategy>,
    pub message: Option<String>,
    /// Deploy a preview environment (`--from BASE --ttl DURATION`): `env` is `preview-<slug>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewRequest>,
}

/// A preview's base and lifetime, as `rollway deploy --from --ttl` gives them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewRequest {
    /// The declared environment the preview layers over (its settings and secrets).
    pub from: String,
    /// How long the preview lives from this deploy, a human duration (`72h`); the agent checks
    /// the bounds.
    pub ttl: String,
}

/// What makes an environment a preview (`GET /v1/apps/{app}/environments`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreviewView {
    pub base: String,
    /// Unix milliseconds after which the agent destroys it.
    pub expires_at: i64,
    pub created_by: String,
}

/// `POST /v1/apps/{app}/environments/{env}/rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct RollbackRequest {
    /// The release to go back to; the previous good release when absent.
    pub to: Option<ReleaseNumber>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentView {
    pub id: DeploymentId,
    pub app: String,
    pub environment: String,
    pub kind: DeploymentKind,
    pub state: DeploymentState,
    pub from_release: Option<ReleaseNumber>,
    pub to_release: ReleaseNumber,
    pub strategy: Strategy,
    pub reason: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub updated_at: i64,
}

impl DeploymentView {
    /// Terminal states: nothing more will happen to this deployment.
    pub fn is_finished(&self) -> bool {
        self.state.is_terminal()
    }
}

/// The states of DESIGN.md's deployment state machine; the agent's `deploy::state` decides the
/// transitions between them. Serialized (and stored) as the variant's name: `Pending`, `Succeeded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DeploymentState {
    Pending,
    /// Unpack the artifact, run the build command.
    Preparing,
    /// Held until `rollway approve` by another token with role approver or admin (environments
    /// with `approval = true`), before anything touches the database or the instances.
    AwaitingApproval,
    /// Back up the database the release command touches.
    BackingUp,
    /// Run the release command (migrations) once, before any new instance starts.
    Releasing,
    /// Start the new instances.
    Starting,
    /// Health gate (N consecutive passes per instance), then the smoke command.
    Verifying,
    /// Move traffic: one switch, instance by instance, or canary steps under analysis.
    Shifting,
    /// All traffic on the new release, analysis still armed.
    Observing,
    Succeeded,
    /// Traffic goes back to the release that served before.
    RollingBack,
    RolledBack,
    Failed,
}

impl DeploymentState {
    pub const ALL: [DeploymentState; 13] = [
        DeploymentState::Pending,
        DeploymentState::Preparing,
        DeploymentState::AwaitingApproval,
        DeploymentState::BackingUp,
        DeploymentState::Releasing,
        DeploymentState::Starting,
        DeploymentState::Verifying,
        DeploymentState::Shifting,
        DeploymentState::Observing,
        DeploymentState::Succeeded,
        DeploymentState::RollingBack,
        DeploymentState::RolledBack,
        DeploymentState::Failed,
    ];

    /// The state every deployment is created in.
    pub const INITIAL: DeploymentState = DeploymentState::Pending;

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentState::Pending => "Pending",
            DeploymentState::Preparing => "Preparing",
            DeploymentState::AwaitingApproval => "AwaitingApproval",
            DeploymentState::BackingUp => "BackingUp",
            DeploymentState::Releasing => "Releasing",
            DeploymentState::Starting => "Starting",
            DeploymentState::Verifying => "Verifying",
            DeploymentState::Shifting => "Shifting",
            DeploymentState::Observing => "Observing",
            DeploymentState::Succeeded => "Succeeded",
            DeploymentState::RollingBack => "RollingBack",
            DeploymentState::RolledBack => "RolledBack",
            DeploymentState::Failed => "Failed",
        }
    }

    /// The one definition of the terminal states: nothing more will happen to a deployment in one.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            DeploymentState::Succeeded | DeploymentState::RolledBack | DeploymentState::Failed
        )
    }

    /// True once traffic may have reached the target release.
    pub fn traffic_may_have_moved(self) -> bool {
        matches!(
            self,
            DeploymentState::Shifting
                | DeploymentState::Observing
                | DeploymentState::Succeeded
                | DeploymentState::RollingBack
                | DeploymentState::RolledBack
        )
    }

    /// Whether `rollway promote` applies: traffic is being shifted.
    pub fn can_be_promoted(self) -> bool {
        self == DeploymentState::Shifting
    }

    /// Whether `rollway approve` applies: the deployment waits at the approval gate.
    pub fn can_be_approved(self) -> bool {
        self == DeploymentState::AwaitingApproval
    }

    /// Whether `rollway abort` applies: the deployment runs and is not already going back.
    pub fn can_be_aborted(self) -> bool {
        !self.is_terminal() && self != DeploymentState::RollingBack
    }
}

/// Whether a deployment moves to a new release or back to an earlier one. Rollback is a deployment
/// to an earlier release: same path, different kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentKind {
    Deploy,
    Rollback,
}

impl DeploymentKind {
    pub const ALL: [DeploymentKind; 2] = [DeploymentKind::Deploy, DeploymentKind::Rollback];

    pub fn as_str(self) -> &'static str {
        match self {
            DeploymentKind::Deploy => "deploy",
            DeploymentKind::Rollback => "rollback",
        }
    }
}

/// How a deployment moves traffic to its release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    BlueGreen,
    Rolling,
    Canary,
}

impl Strategy {
    pub const ALL: [Strategy; 3] = [Strategy::BlueGreen, Strategy::Rolling, Strategy::Canary];

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::BlueGreen => "blue-green",
            Strategy::Rolling => "rolling",
            Strategy::Canary => "canary",
        }
    }
}

/// A string that names none of an enum's values (a stored row or an argument).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} `{value}`")]
pub struct UnknownValue {
    /// What was being parsed: `deployment state`, `deployment kind`, `strategy`.
    pub what: &'static str,
    pub value: String,
}

macro_rules! string_forms {
    ($type:ty, $what:literal) => {
        impl std::fmt::Display for $type {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $type {
            type Err = UnknownValue;

            fn from_str(text: &str) -> Result<Self, Self::Err> {
                <$type>::ALL
                    .into_iter()
                    .find(|value| value.as_str() == text)
                    .ok_or_else(|| UnknownValue {
                        what: $what,
                        value: text.to_owned(),
                    })
            }
        }
    };
}

string_forms!(DeploymentState, "deployment state");
string_forms!(DeploymentKind, "deployment kind");
string_forms!(Strategy, "strategy");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    pub id: i64,
    /// Unix milliseconds.
    pub at: i64,
    pub app: Option<String>,
    pub environment: Option<String>,
    pub deployment_id: Option<DeploymentId>,
    /// Dotted kind: `deployment.state`, `instance.healthy`, `token.created`, ...
    pub kind: String,
    pub message: String,
    pub data: serde_json::Value,
}

impl EventView {
    /// The typed payload of a deployment's progress event, when `data` holds one. Programs match
    /// on this; `message` is the same news in words for people, and its wording may change.
    pub fn deployment_event(&self) -> Option<DeploymentEvent> {
        DeploymentEvent::deserialize(&self.data).ok()
    }

    /// The analysis's verdict an `analysis.verdict` event carries in `data.verdict`.
    pub fn verdict(&self) -> Option<Verdict> {
        Verdict::deserialize(self.data.get("verdict")?).ok()
    }
}

/// The analysis's verdict on a release: what an `analysis.verdict` event carries in `data.verdict`
/// (`{"verdict": "fail", "reason": "..."}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Enough evidence that the release is within its bounds.
    Pass,
    Fail {
        reason: String,
    },
    /// Not enough requests, or not enough evidence either way yet.
    Inconclusive {
        reason: String,
    },
}

impl Verdict {
    pub fn is_fail(&self) -> bool {
        matches!(self, Verdict::Fail { .. })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail { .. } => "fail",
            Verdict::Inconclusive { .. } => "inconclusive",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail { reason } => write!(f, "fail: {reason}"),
            Verdict::Inconclusive { reason } => write!(f, "inconclusive: {reason}"),
        }
    }
}

/// What a deployment's progress event says, for programs: serialized into the event's `data`
/// (`{"event": "state", "from": "Pending", "to": "Preparing"}`), recorded beside its message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DeploymentEvent {
    /// `deployment.state`: the deployment moved from one state to the next.
    State {
        from: DeploymentState,
        to: DeploymentState,
    },
    /// `deployment.finished`: the deployment ended in `state`, a terminal one; `reason` says why
    /// when it failed or rolled back.
    Finished {
        state: DeploymentState,
        reason: Option<String>,
    },
    /// `deployment.step_failed`: the work of `state` failed (or was cut short) for `reason`.
    StepFailed {
        state: DeploymentState,
        reason: String,
    },
    /// `deployment.weights`: release `release` takes `share` percent of traffic; `weights` is the
    /// whole split. `step` is the canary's step, counted from 1, and `of` how many it has.
    Weights {
        release: ReleaseNumber,
        share: u8,
        step: Option<u32>,
        of: Option<u32>,
        weights: Vec<(ReleaseNumber, u8)>,
    },
    /// `deployment.weights`: traffic (and routes) went back to the earlier release.
    TrafficBack { weights: Vec<(ReleaseNumber, u8)> },
    /// `analysis.verdict`: the analysis judged `release` on `sample` (and the releases serving
    /// beside it, `baseline`) against `bounds`. Events recorded before the bounds were carried have
    /// none.
    Verdict {
        release: ReleaseNumber,
        verdict: Verdict,
        sample: Figures,
        baseline: Option<Figures>,
        #[serde(default)]
        bounds: Option<VerdictBounds>,
    },
    /// `analysis.inconclusive`: the observation window ended without enough evidence.
    Inconclusive { verdict: Verdict },
    /// `instance.started`.
    InstanceStarted { instance: String, port: u16 },
    /// `instance.healthy`: the instance passed its health gate and takes traffic.
    InstanceHealthy { instance: String },
    /// `instance.unhealthy`: the watch took the instance out of traffic after `failures` failed
    /// health checks in a row.
    InstanceUnhealthy { instance: String, failures: u32 },
    /// `instance.kept_in_traffic`: the instance fails, but so does every instance of `release`,
    /// so all stay in traffic (fail open).
    InstanceKeptInTraffic {
        instance: String,
        release: ReleaseNumber,
    },
    /// `instance.recovered`: the instance passes its health checks again and is back in traffic.
    InstanceRecovered { instance: String },
    /// `deployment.command`: a build, release or smoke command (`label`) starts.
    Command { label: String, command: String },
    /// `deployment.command`: the image of a container service is pulled (or found).
    PullImage { service: String, reference: String },
    /// `deployment.command`: the image of a container service is built from its Dockerfile.
    BuildImage { service: String, dockerfile: String },
    /// `deployment.image`: the image a container service runs, recorded with the release.
    Image { service: String, image: String },
    /// `deployment.output`: one line a command printed, secrets hidden.
    Output { line: String },
    /// `deployment.reuse`: the artifact was already unpacked and built here.
    Reused { artifact: String },
    /// `backup.created`: the database was backed up before the release command.
    BackupTaken {
        backup: String,
        target: String,
        size: u64,
    },
    /// `backup.skipped`: there was nothing to back up yet, and why.
    BackupSkipped { reason: String },
    /// `deployment.awaiting_approval`: release `release` is prepared and waits for another
    /// approver or admin than `started_by`.
    AwaitingApproval {
        release: ReleaseNumber,
        deployment: DeploymentId,
        started_by: String,
    },
    /// `deployment.approved`.
    Approved { by: String, release: ReleaseNumber },
    /// `deployment.promoted`.
    Promoted { by: String },
    /// `deployment.holding`: a canary step waits for `rollway promote`: it has no pause, or
    /// (`requests` of `min_requests`) too few requests reached the canary.
    Holding {
        requests: Option<u64>,
        min_requests: Option<u64>,
    },
    /// `deployment.observing`: the release takes all traffic, the analysis stays armed for
    /// `window`.
    Observing {
        release: ReleaseNumber,
        window: String,
    },
    /// `deployment.no_fallback`: the observed release fails, but no earlier one is warm.
    NoFallback { reason: String },
    /// `deployment.stopping`: instances of older releases and superseded workers stop.
    Stopping { instances: Vec<String> },
}

/// What the analysis counted of one release over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub p99_us: u64,
    #[serde(default)]
    pub latency_count: u64,
}

/// The bounds the analysis held one release's figures against at one verdict, in the figures'
/// units: what a chart draws as the line the release must stay under.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct VerdictBounds {
    /// The 5xx share (0 to 1) of the error test (`max_error_rate`): the release fails once the
    /// evidence says its share is at least this.
    pub max_error_share: f64,
    /// The p99 in µs above which the release failed: the lower of `max_p99` and the baseline's
    /// p99 times `latency_margin` (never nearer the baseline's than the noise allowance). None
    /// when neither applied: no `max_p99`, and no baseline, or too few measured requests.
    pub max_p99_us: Option<u64>,
}

impl DeploymentEvent {
    /// The event log's kind of this event.
    pub fn kind(&self) -> &'static str {
        match self {
            DeploymentEvent::State { .. } => "deployment.state",
            DeploymentEvent::Finished { .. } => "deployment.finished",
            DeploymentEvent::StepFailed { .. } => "deployment.step_failed",
            DeploymentEvent::Weights { .. } | DeploymentEvent::TrafficBack { .. } => {
                "deployment.weights"
            }
            DeploymentEvent::Verdict { .. } => "analysis.verdict",
            DeploymentEvent::Inconclusive { .. } => "analysis.inconclusive",
            DeploymentEvent::InstanceStarted { .. } => "instance.started",
            DeploymentEvent::InstanceHealthy { .. } => "instance.healthy",
            DeploymentEvent::InstanceUnhealthy { .. } => "instance.unhealthy",
            DeploymentEvent::InstanceKeptInTraffic { .. } => "instance.kept_in_traffic",
            DeploymentEvent::InstanceRecovered { .. } => "instance.recovered",
            DeploymentEvent::Command { .. }
            | DeploymentEvent::PullImage { .. }
            | DeploymentEvent::BuildImage { .. } => "deployment.command",
            DeploymentEvent::Image { .. } => "deployment.image",
            DeploymentEvent::Output { .. } => "deployment.output",
            DeploymentEvent::Reused { .. } => "deployment.reuse",
            DeploymentEvent::BackupTaken { .. } => "backup.created",
            DeploymentEvent::BackupSkipped { .. } => "backup.skipped",
            DeploymentEvent::AwaitingApproval { .. } => "deployment.awaiting_approval",
            DeploymentEvent::Approved { .. } => "deployment.approved",
            DeploymentEvent::Promoted { .. } => "deployment.promoted",
            DeploymentEvent::Holding { .. } => "deployment.holding",
            DeploymentEvent::Observing { .. } => "deployment.observing",
            DeploymentEvent::NoFallback { .. } => "deployment.no_fallback",
            DeploymentEvent::Stopping { .. } => "deployment.stopping",
        }
    }
}

impl std::fmt::Display for DeploymentEvent {
    /// The event in words for people: the message the agent records beside the payload.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeploymentEvent::State { from, to } => write!(f, "{from} → {to}"),
            DeploymentEvent::Finished { state, reason } => match reason {
                Some(reason) => write!(f, "{state}: {reason}"),
                None => write!(f, "{state}"),
            },
            DeploymentEvent::StepFailed { state, reason } => write!(f, "{state} failed: {reason}"),
            DeploymentEvent::Weights {
                release,
                share,
                step,
                of,
                ..
            } => {
                if let (Some(step), Some(of)) = (step, of) {
                    write!(f, "canary step {step}/{of}: ")?;
                }
                write!(f, "release {release} takes {share}% of traffic")
            }
            DeploymentEvent::TrafficBack { .. } => {
                f.write_str("traffic is back on the earlier release")
            }
            DeploymentEvent::Verdict {
                release,
                verdict,
                sample,
                ..
            } => write!(
                f,
                "release {release}: {verdict} ({} requests, {} 5xx, p99 {}ms)",
                sample.requests,
                sample.errors,
                sample.p99_us / 1000
            ),
            DeploymentEvent::Inconclusive { verdict } => write!(
                f,
                "the observation window ended without enough evidence ({verdict})"
            ),
            DeploymentEvent::InstanceStarted { instance, port } => {
                write!(f, "instance {instance} started on port {port}")
            }
            DeploymentEvent::InstanceHealthy { instance } => {
                write!(f, "instance {instance} healthy")
            }
            DeploymentEvent::InstanceUnhealthy { instance, failures } => write!(
                f,
                "instance {instance} failed {failures} health checks in a row; taken out of traffic"
            ),
            DeploymentEvent::InstanceKeptInTraffic { instance, release } => write!(
                f,
                "instance {instance} fails its health checks but is back in traffic: every instance of release {release} fails (fail open)"
            ),
            DeploymentEvent::InstanceRecovered { instance } => write!(
                f,
                "instance {instance} passes its health checks again; back in traffic"
            ),
            DeploymentEvent::Command { label, command } => write!(f, "the {label}: {command}"),
            DeploymentEvent::PullImage { service, reference } => {
                write!(f, "the image of `{service}`: {reference}")
            }
            DeploymentEvent::BuildImage {
                service,
                dockerfile,
            } => write!(f, "building `{service}` from {dockerfile}"),
            DeploymentEvent::Image { service, image } => write!(
                f,
                "`{service}` runs image {}",
                image.get(..12).unwrap_or(image)
            ),
            DeploymentEvent::Output { line } => f.write_str(line),
            DeploymentEvent::Reused { artifact } => write!(
                f,
                "artifact {} already built here: no rebuild",
                artifact.get(..12).unwrap_or(artifact)
            ),
            DeploymentEvent::BackupTaken {
                backup,
                target,
                size,
            } => write!(f, "backup {backup} of {target} ({size} bytes)"),
            DeploymentEvent::BackupSkipped { reason } => f.write_str(reason),
            DeploymentEvent::AwaitingApproval {
                release,
                deployment,
                started_by,
            } => write!(
                f,
                "release {release} is prepared and waits for `rollway approve {deployment}` by an approver or admin other than {started_by}; nothing was backed up, migrated or started yet"
            ),
            DeploymentEvent::Approved { by, release } => {
                write!(f, "{by} approved release {release}")
            }
            DeploymentEvent::Promoted { by } => write!(f, "{by} promoted the canary"),
            DeploymentEvent::Holding {
                requests: Some(requests),
                min_requests: Some(min_requests),
            } => write!(
                f,
                "only {requests} of {min_requests} requests reached the canary: holding for `rollway promote` or `rollway abort`"
            ),
            DeploymentEvent::Holding { .. } => f.write_str(
                "this step has no pause: waiting for `rollway promote` (or `rollway abort`)",
            ),
            DeploymentEvent::Observing { release, window } => write!(
                f,
                "release {release} takes all traffic; analysis stays armed for {window}"
            ),
            DeploymentEvent::NoFallback { reason } => write!(
                f,
                "{reason}; no earlier release is warm and healthy to go back to, so it keeps the traffic"
            ),
            DeploymentEvent::Stopping { instances } => write!(
                f,
                "stopping {} instance(s) of older releases and superseded workers: {}",
                instances.len(),
                instances.join(", ")
            ),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseView {
    pub number: ReleaseNumber,
    pub artifact: String,
    pub strategy: Strategy,
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
    pub current_release: Option<ReleaseNumber>,
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
    /// Maintenance mode and pause (absent from agents before issue 16, and when both are off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeView>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceView {
    pub id: InstanceId,
    pub release: ReleaseNumber,
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
    pub release: ReleaseNumber,
    pub weight: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLineView {
    pub instance_id: InstanceId,
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

/// `GET /v1/agent/certificate`: the API's certificate chain in PEM (public).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiCertificateView {
    pub pem: String,
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
    /// The SHA-256 fingerprint of the API's TLS certificate; `None` when the API serves plain
    /// HTTP on loopback (or from an agent older than the field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_fingerprint: Option<crate::pin::Fingerprint>,
    /// Proxies following this agent (`rollway proxy --follow`) that reported in the last 30 s,
    /// whose counters the analysis adds to the agent's own proxy's.
    #[serde(default)]
    pub followers: Vec<FollowerView>,
}

/// A proxy following the agent, as `GET /v1/agent` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FollowerView {
    pub proxy: ProxyId,
    /// Milliseconds since its last report.
    pub seen_ms_ago: u64,
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
    pub release: Option<ReleaseNumber>,
    /// `release` (before a release command), `manual` or `schedule`.
    pub reason: String,
    /// `sqlite` or `postgres`.
    pub kind: String,
    /// The database, without its password.
    pub target: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: i64,
    /// The object key of its encrypted copy on the remote, once uploaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<String>,
}

/// A sealed backup on the remote (`rollway backups list --remote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteBackupView {
    pub id: String,
    /// The object key in the bucket.
    pub key: String,
    /// The encrypted object's size.
    pub size: u64,
    /// As the S3 server reports it (RFC 3339).
    pub last_modified: String,
    /// Whether the agent also has the backup's local copy.
    pub local: bool,
}

/// What `rollway backups verify` asks: a backup by id, or the newest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    #[serde(default)]
    pub id: Option<String>,
}

/// The outcome of a restore drill.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyView {
    pub backup: String,
    /// `sqlite` or `postgres`.
    pub kind: String,
    pub passed: bool,
    /// What was done and found, in order; a failed drill's last check says why.
    pub checks: Vec<String>,
    /// Rows per table of the restored database.
    pub tables: Vec<TableRows>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableRows {
    pub table: String,
    pub rows: u64,
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
    pub deployment_id: DeploymentId,
    pub acquired_at: i64,
    pub heartbeat_at: i64,
    pub expires_at: i64,
}

#[cfg(test)]
mod tests;

/// Where a host's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertSourceView {
    /// The agent's ACME server (`tls = "auto"`); renewed by the agent.
    Acme,
    /// Secrets of the environment (`tls = { cert, key }`).
    Given,
}

/// One host's certificate as `rollway certs` shows it: never a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertView {
    pub host: String,
    pub app: String,
    pub environment: String,
    pub source: CertSourceView,
    pub issuer: String,
    /// Unix ms.
    pub not_before: i64,
    /// Unix ms.
    pub not_after: i64,
    /// When the agent starts renewing it (ACME only), unix ms.
    pub renew_at: Option<i64>,
    /// When this certificate was stored, unix ms.
    pub renewed_at: i64,
    /// The last renewal's failure, until one succeeds.
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
}

// Issue 19: cron jobs, one-off commands and the apps on an agent.

/// How one run of a cron job ended (or that it is still going).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CronRunState {
    /// Recorded and started; not ended yet.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited with another code, or could not start.
    Failed,
    /// Stopped past the job's `timeout`.
    TimedOut,
    /// Not started: the previous run still went (`concurrency = "forbid"`).
    Skipped,
    /// Stopped for a newer tick (`concurrency = "replace"`).
    Replaced,
    /// The agent stopped while it ran (its exit was not seen); never started again.
    Interrupted,
}

impl CronRunState {
    pub const ALL: [CronRunState; 7] = [
        CronRunState::Running,
        CronRunState::Succeeded,
        CronRunState::Failed,
        CronRunState::TimedOut,
        CronRunState::Skipped,
        CronRunState::Replaced,
        CronRunState::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CronRunState::Running => "running",
            CronRunState::Succeeded => "succeeded",
            CronRunState::Failed => "failed",
            CronRunState::TimedOut => "timed_out",
            CronRunState::Skipped => "skipped",
            CronRunState::Replaced => "replaced",
            CronRunState::Interrupted => "interrupted",
        }
    }

    /// Whether the run alerts (through the webhook) when it ends this way.
    pub fn alerts(self) -> bool {
        matches!(
            self,
            CronRunState::Failed | CronRunState::TimedOut | CronRunState::Interrupted
        )
    }
}

/// Why a cron run happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CronTrigger {
    /// Its tick came while the agent ran.
    Schedule,
    /// The latest tick missed while the agent was down (`catch_up = true`).
    CatchUp,
    /// `rollway cron run NAME`.
    Manual,
}

impl CronTrigger {
    pub const ALL: [CronTrigger; 3] = [
        CronTrigger::Schedule,
        CronTrigger::CatchUp,
        CronTrigger::Manual,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CronTrigger::Schedule => "schedule",
            CronTrigger::CatchUp => "catch_up",
            CronTrigger::Manual => "manual",
        }
    }
}

string_forms!(CronRunState, "cron run state");
string_forms!(CronTrigger, "cron trigger");

/// One run of a cron job: recorded before it starts, once per (app, environment, job, tick).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronRunView {
    pub job: String,
    /// The tick it runs for (unix milliseconds); for a manual run, when it was asked for.
    pub tick: i64,
    pub trigger: CronTrigger,
    pub release: ReleaseNumber,
    pub state: CronRunState,
    /// Unix milliseconds.
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i32>,
    /// Who asked for a manual run.
    pub by: Option<String>,
    /// The end of its output (stdout and stderr interleaved, secrets scrubbed), bounded.
    pub output: String,
    /// Why it ended the way it did, when that is not its exit code.
    pub reason: Option<String>,
}

/// A cron job of an environment's current release, with its next tick and last run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJobView {
    pub name: String,
    pub schedule: String,
    pub tz: String,
    pub command: String,
    pub service: String,
    pub concurrency: String,
    pub catch_up: bool,
    pub timeout_ms: u64,
    /// Unix milliseconds.
    pub next_run: Option<i64>,
    pub last_run: Option<CronRunView>,
}

/// `GET /v1/apps/{app}/environments/{env}/cron`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CronJobsView {
    pub release: Option<ReleaseNumber>,
    pub jobs: Vec<CronJobView>,
}

/// `POST /v1/apps/{app}/environments/{env}/run`: a one-off command in the current release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRequest {
    /// The program and its arguments (no shell unless the caller asks for one: `sh -c ...`).
    pub command: Vec<String>,
    /// The service whose environment it runs with; the first service when unset.
    pub service: Option<String>,
    /// `rollway run -i`: the size of the person's terminal; the command gets a terminal of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
}

/// A terminal's size in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// `rollway run -i` speaks this after the HTTP upgrade (`Upgrade: rollway-run`). The client sends
/// the bytes typed, as they are; the agent sends frames of `[kind: u8][length: u32 big-endian]
/// [payload]`: [`TTY_OUTPUT`] (what the terminal shows) and, last, [`TTY_EXIT`] (the exit code,
/// an `i32` big-endian).
pub const TTY_UPGRADE: &str = "rollway-run";
pub const TTY_OUTPUT: u8 = 1;
pub const TTY_EXIT: u8 = 2;

/// One frame of a one-off command's answer stream (newline-delimited JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "frame", rename_all = "snake_case")]
pub enum RunFrame {
    /// It started in this release.
    Started {
        release: ReleaseNumber,
        service: String,
    },
    /// A line of its standard output (secrets scrubbed).
    Stdout { line: String },
    /// A line of its standard error (secrets scrubbed).
    Stderr { line: String },
    /// It exited with this code (128 + signal when a signal ended it).
    Exited { code: i32 },
    /// It could not run, or the agent lost it.
    Error { message: String },
}

/// One app environment on the agent (`GET /v1/apps`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppEnvView {
    pub app: String,
    pub environment: String,
    pub current_release: Option<ReleaseNumber>,
    /// Instances the agent runs for it now.
    pub instances: usize,
    /// `false` once `rollway destroy` stopped it (until its next deploy).
    pub active: bool,
    /// Set when the environment is a preview.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<PreviewView>,
}

string_id!(
    /// Who a following proxy is (`rollway proxy --follow`, its `--id`): on the swarm, the node it
    /// runs on. 1 to [`MAX_PROXY_ID_LEN`] characters of `A-Z a-z 0-9 . _ - :`.
    ProxyId
);

/// The longest [`ProxyId`] (and `ProxyReport::incarnation`) the agent takes.
pub const MAX_PROXY_ID_LEN: usize = 128;

/// The most releases one [`ProxyReport`] may list.
pub const MAX_PROXY_REPORT_RELEASES: usize = 1024;

/// How often `GET /v1/proxy/state` writes a keep-alive line when nothing changed: a follower that
/// hears nothing for three of these takes the link for dead and connects again.
pub const PROXY_KEEPALIVE_SECS: u64 = 5;

impl ProxyId {
    /// Whether `id` is a valid proxy id (also the rule of `ProxyReport::incarnation`).
    pub fn is_valid(id: &str) -> bool {
        !id.is_empty()
            && id.len() <= MAX_PROXY_ID_LEN
            && id
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"._-:".contains(&byte))
    }
}

/// One line of `GET /v1/proxy/state` (newline-delimited JSON, role proxy): the agent's whole
/// desired routing (`S` is `proxy::DesiredState`), the current one first and then each one its
/// own proxy accepted, or a keep-alive (`"keep_alive"`) when nothing changed for
/// [`PROXY_KEEPALIVE_SECS`]; and the whole TLS set (`T` is `proxy::tls::TlsState`: certificates
/// with their private keys, and the pending ACME challenge answers), the current one first and then
/// each one its own proxy accepted. Generic so this crate stays apart from the data plane's types.
/// The TLS line holds secrets: it is sent to a proxy-role token only, and never logged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyStateLine<S, T> {
    State(S),
    Tls(T),
    KeepAlive,
}

/// `POST /v1/proxy/report` (role proxy): a following proxy's cumulative per-release counters
/// (`R` is `proxy::ObservedReleaseStats`), sent every second. The agent adds them to its own
/// proxy's for the analysis, `/metrics` and alerts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyReport<R> {
    pub proxy: ProxyId,
    /// Random, new at each start of the proxy process: a new one tells the agent the counters
    /// started again from zero (so it keeps what the earlier life counted).
    pub incarnation: String,
    pub releases: Vec<R>,
    /// The `ProxyTls::generation` of the TLS set this proxy serves now (0: none yet), so the agent
    /// knows when every follower has an ACME challenge's answer.
    #[serde(default)]
    pub tls_generation: u64,
}

/// The TLS line of `GET /v1/proxy/state`: the whole set (`T` is `proxy::tls::TlsState`) and its
/// generation, which grows with each set the agent publishes (it starts at the agent's start time
/// in milliseconds, so it also grows across the agent's restarts).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyTls<T> {
    pub generation: u64,
    pub set: T,
}
