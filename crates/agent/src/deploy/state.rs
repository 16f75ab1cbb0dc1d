//! The deployment state machine, pure: where a deployment goes next, and what a restarted agent
//! does with one it finds unfinished.
//!
//! Nothing here touches the store, the driver, the proxy or the clock; the executor persists each
//! transition before it performs the step's effects.

use std::fmt;
use std::str::FromStr;

/// The states of DESIGN.md's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
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

/// How the step in a state ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    Done,
    Failed,
}

/// The route a deployment takes through the states, fixed when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Plan {
    /// The target release already runs (a warm rollback): nothing to prepare or start.
    pub warm: bool,
    /// Hold at `AwaitingApproval` after preparing, before the backup and the release command.
    pub approval: bool,
    /// Watch the release after it takes all traffic.
    pub observe: bool,
}

/// What a restarted agent does with a deployment it finds in `state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Traffic never moved: stop what was started, mark the deployment failed.
    Undo,
    /// Finish the step from where it was (traffic may have moved, or a verified release waits).
    Resume(State),
    /// Nothing to do.
    Finished,
}

impl State {
    pub const ALL: [State; 13] = [
        State::Pending,
        State::Preparing,
        State::AwaitingApproval,
        State::BackingUp,
        State::Releasing,
        State::Starting,
        State::Verifying,
        State::Shifting,
        State::Observing,
        State::Succeeded,
        State::RollingBack,
        State::RolledBack,
        State::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "Pending",
            State::Preparing => "Preparing",
            State::BackingUp => "BackingUp",
            State::Releasing => "Releasing",
            State::Starting => "Starting",
            State::Verifying => "Verifying",
            State::AwaitingApproval => "AwaitingApproval",
            State::Shifting => "Shifting",
            State::Observing => "Observing",
            State::Succeeded => "Succeeded",
            State::RollingBack => "RollingBack",
            State::RolledBack => "RolledBack",
            State::Failed => "Failed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, State::Succeeded | State::RolledBack | State::Failed)
    }

    /// True once traffic may have reached the target release.
    pub fn traffic_may_have_moved(self) -> bool {
        matches!(
            self,
            State::Shifting
                | State::Observing
                | State::Succeeded
                | State::RollingBack
                | State::RolledBack
        )
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for State {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|state| state.as_str() == text)
            .ok_or_else(|| format!("unknown deployment state `{text}`"))
    }
}

/// The transition function. A failure before traffic moved ends in `Failed` with traffic
/// untouched; a failure while shifting or observing goes back to the earlier release.
///
/// The approval gate comes right after preparing: an unapproved deployment has not backed up,
/// migrated or started anything, so aborting it leaves the database as it was.
pub fn next(state: State, result: StepResult, plan: Plan) -> State {
    use State::*;
    match (state, result) {
        (Pending, StepResult::Done) if plan.warm => Verifying,
        (Pending, StepResult::Done) => Preparing,
        (Preparing, StepResult::Done) if plan.approval => AwaitingApproval,
        (Preparing | AwaitingApproval, StepResult::Done) => BackingUp,
        (BackingUp, StepResult::Done) => Releasing,
        (Releasing, StepResult::Done) => Starting,
        (Starting, StepResult::Done) => Verifying,
        (Verifying, StepResult::Done) => Shifting,
        (Shifting, StepResult::Done) if plan.observe => Observing,
        (Shifting | Observing, StepResult::Done) => Succeeded,
        (RollingBack, StepResult::Done) => RolledBack,
        (
            Pending | Preparing | BackingUp | Releasing | Starting | Verifying | AwaitingApproval,
            StepResult::Failed,
        ) => Failed,
        (Shifting | Observing, StepResult::Failed) => RollingBack,
        (RollingBack, StepResult::Failed) => Failed,
        (terminal @ (Succeeded | RolledBack | Failed), _) => terminal,
    }
}

/// What to do on restart with a deployment last written in `state`.
pub fn recover(state: State) -> Recovery {
    match state {
        State::Pending
        | State::Preparing
        | State::BackingUp
        | State::Releasing
        | State::Starting
        | State::Verifying => Recovery::Undo,
        // Nothing was started or migrated yet; the prepared release keeps waiting for approval.
        State::AwaitingApproval => Recovery::Resume(State::AwaitingApproval),
        State::Shifting => Recovery::Resume(State::Shifting),
        State::Observing => Recovery::Resume(State::Observing),
        State::RollingBack => Recovery::Resume(State::RollingBack),
        State::Succeeded | State::RolledBack | State::Failed => Recovery::Finished,
    }
}

#[cfg(test)]
mod tests;
