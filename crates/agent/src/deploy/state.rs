//! The deployment state machine, pure: where a deployment goes next, and what a restarted agent
//! does with one it finds unfinished.
//!
//! Nothing here touches the store, the driver, the proxy or the clock; the executor persists each
//! transition before it performs the step's effects.

/// The states of DESIGN.md's state machine. They are defined once, in the API's wire types, with
/// their string forms and the terminal ones; this module owns the transitions between them.
pub use client::wire::DeploymentState as State;

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
