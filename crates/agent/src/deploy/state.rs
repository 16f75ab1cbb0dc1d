//! The deployment state machine, pure: what a deployment will do (`plan`, decided once), where it
//! goes on every input (`advance`: a step's end, a person's signal, an analysis verdict) and the
//! effects the executor runs for it, and what a restarted agent does with one it finds unfinished.
//!
//! Nothing here touches the store, the driver, the proxy or the clock; the executor persists each
//! transition before it performs the next position's effects, and only runs effects.

use serde::{Deserialize, Serialize};

use client::wire::{DeploymentKind, Strategy, Verdict};

/// The states of DESIGN.md's state machine. They are defined once, in the API's wire types, with
/// their string forms and the terminal ones; this module owns the transitions between them.
pub use client::wire::DeploymentState as State;

/// How the step in a state ended (the two inputs of the first machine, kept for [`next`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepResult {
    Done,
    Failed,
}

/// Everything that moves a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The position's effects ran to their end (a canary step's pause passed, the observation
    /// window closed).
    Done,
    /// An effect failed; the reason is shown to the user.
    Failed(String),
    Abort {
        by: String,
    },
    Approve {
        by: String,
    },
    Promote {
        by: String,
    },
    /// The analysis judged the release's traffic.
    Verdict(Verdict),
}

/// Where a deployment is: its state and, while shifting a canary, the step it is at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct At {
    pub state: State,
    /// Index into the canary's steps; 0 everywhere else.
    pub step: usize,
}

impl At {
    pub fn new(state: State) -> At {
        At { state, step: 0 }
    }
}

/// One canary step: the share the target takes, and how long it then holds (`None`: until
/// `rollway promote`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryStep {
    pub share: u8,
    pub pause_ms: Option<u64>,
}

/// How traffic moves to the target.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Traffic {
    /// All at once.
    #[default]
    Switch,
    /// Instance by instance, each one verified before it takes its share.
    Rolling,
    /// Step by step under analysis. Invariant: shares increase and the last is 100.
    Canary { steps: Vec<CanaryStep> },
}

/// The route a deployment takes through the states and what each does, fixed when it starts
/// ([`plan`]) and persisted with it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Plan {
    /// The target release already runs (a warm rollback): nothing to prepare or start.
    pub warm: bool,
    /// Hold at `AwaitingApproval` after preparing, before the backup and the release command.
    pub approval: bool,
    /// Back the database up before the release command.
    #[serde(default)]
    pub backup: bool,
    #[serde(default)]
    pub release_command: bool,
    /// Run the smoke command against the new instances before any traffic.
    #[serde(default)]
    pub smoke: bool,
    #[serde(default)]
    pub traffic: Traffic,
    /// Watch the release after it takes all traffic.
    pub observe: bool,
}

/// What [`plan`] decides from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    pub kind: DeploymentKind,
    pub strategy: Strategy,
    /// The target's routed instances already run.
    pub warm: bool,
    /// Some release serves now (a first deploy has nothing to compare a canary with).
    pub serving: bool,
    /// The manifest asks for an approval, a backup (`release.backup`), a release command, a
    /// smoke command, an observation window.
    pub approval: bool,
    pub backup: bool,
    pub release_command: bool,
    pub smoke: bool,
    pub observe: bool,
    pub canary_steps: Vec<CanaryStep>,
}

/// Decides once what a deployment will do. Gates, the backup, the release and smoke commands and
/// the watch after the switch are for new releases; a rollback goes straight back to a release
/// that served before, its schema already in place. A first deploy takes traffic in one switch.
pub fn plan(facts: &Facts) -> Plan {
    let deploying = facts.kind == DeploymentKind::Deploy;
    let traffic = match facts.strategy {
        _ if !facts.serving => Traffic::Switch,
        Strategy::Canary if !facts.canary_steps.is_empty() => Traffic::Canary {
            steps: facts.canary_steps.clone(),
        },
        Strategy::Rolling => Traffic::Rolling,
        _ => Traffic::Switch,
    };
    Plan {
        warm: facts.warm,
        approval: deploying && facts.approval,
        backup: deploying && facts.backup,
        release_command: deploying && facts.release_command,
        smoke: deploying && facts.smoke,
        traffic,
        observe: deploying && facts.observe,
    }
}

/// Work the executor does for the machine. Effects that run before the transition is written
/// (`before_write`) take back or note what happened; the others are the new position's work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Stop what a deployment that never moved traffic started (before its failure is written,
    /// so no restart finds a failed deployment with instances still starting).
    Undo,
    /// Write a person's decision into the event log.
    Approved {
        by: String,
    },
    Promoted {
        by: String,
    },
    /// Pending's work: decide the plan, remember the traffic to go back to.
    Inspect,
    /// Unpack and build the release, pull or build its images.
    Prepare,
    /// Say the deployment waits for `rollway approve`, then wait.
    AskApproval,
    BackUp,
    RunReleaseCommand,
    /// Start the new instances (rolling: the first only).
    StartInstances,
    /// Health-gate the target's instances (a warm rollback starts its workers first).
    Verify,
    Smoke,
    /// Give the target all traffic.
    Switch,
    /// Start, verify and route the target's instances one by one.
    RollOut,
    /// Give the target canary step `step`'s share; unless it is the last, hold under analysis.
    CanaryStep {
        step: usize,
        share: u8,
    },
    /// After the target took all traffic: keep the earlier release warm, stop the rest, mark
    /// the target live.
    CompleteSwitch,
    /// Watch the target with all traffic for the observation window.
    Observe,
    /// Give traffic and routes back to the earlier release, through the same function as every
    /// move of traffic, and stop what the deployment started.
    RollBack,
}

impl Effect {
    /// Runs before the transition is written rather than after it.
    pub fn before_write(&self) -> bool {
        matches!(
            self,
            Effect::Undo | Effect::Approved { .. } | Effect::Promoted { .. }
        )
    }

    /// The effect waits for inputs (signals, verdicts, the clock) once it has run.
    pub fn waits(&self) -> bool {
        matches!(
            self,
            Effect::AskApproval | Effect::Observe | Effect::CanaryStep { .. }
        )
    }
}

/// What an input does: where the deployment goes, why (a failure's reason), and the effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: At,
    pub reason: Option<String>,
    pub effects: Vec<Effect>,
}

impl Transition {
    /// The input changes nothing (a verdict that passes, a signal that does not apply here).
    pub fn ignored(at: At) -> Transition {
        Transition {
            next: at,
            reason: None,
            effects: Vec::new(),
        }
    }

    pub fn is_ignored(&self, at: At) -> bool {
        self.next == at && self.effects.is_empty() && self.reason.is_none()
    }
}

/// The work of a position, run when it is entered (or resumed after a restart).
pub fn entry(at: At, plan: &Plan) -> Vec<Effect> {
    use State::*;
    match at.state {
        Pending => vec![Effect::Inspect],
        Preparing => vec![Effect::Prepare],
        AwaitingApproval => vec![Effect::AskApproval],
        BackingUp if plan.backup => vec![Effect::BackUp],
        Releasing if plan.release_command => vec![Effect::RunReleaseCommand],
        BackingUp | Releasing => Vec::new(),
        Starting => vec![Effect::StartInstances],
        Verifying if plan.smoke => vec![Effect::Verify, Effect::Smoke],
        Verifying => vec![Effect::Verify],
        Shifting => match &plan.traffic {
            Traffic::Switch => vec![Effect::Switch, Effect::CompleteSwitch],
            Traffic::Rolling => vec![Effect::RollOut, Effect::CompleteSwitch],
            Traffic::Canary { steps } => {
                let index = at.step.min(steps.len().saturating_sub(1));
                let share = steps.get(index).map_or(100, |step| step.share);
                let mut effects = vec![Effect::CanaryStep { step: index, share }];
                if share >= 100 {
                    effects.push(Effect::CompleteSwitch);
                }
                effects
            }
        },
        Observing => vec![Effect::Observe],
        RollingBack => vec![Effect::RollBack],
        Succeeded | RolledBack | Failed => Vec::new(),
    }
}

/// The transition function. A failure before traffic moved ends in `Failed` with traffic
/// untouched (what was started is undone first); a failure, a failing verdict or an abort while
/// shifting or observing goes back to the earlier release.
///
/// The approval gate comes right after preparing: an unapproved deployment has not backed up,
/// migrated or started anything, so aborting it leaves the database as it was.
pub fn advance(at: At, input: &Input, plan: &Plan) -> Transition {
    use State::*;
    let go = |next: At, before: Vec<Effect>| {
        let mut effects = before;
        effects.extend(entry(next, plan));
        Transition {
            next,
            reason: None,
            effects,
        }
    };
    let fail = |reason: String| {
        let next = match at.state {
            Shifting | Observing => At::new(RollingBack),
            _ => At::new(Failed),
        };
        let mut transition = go(next, Vec::new());
        if next.state == Failed {
            transition.effects.insert(0, Effect::Undo);
        }
        transition.reason = Some(reason);
        transition
    };
    let canary = matches!(plan.traffic, Traffic::Canary { .. });
    if at.state.is_terminal() {
        return Transition::ignored(at);
    }
    match input {
        Input::Done => go(after(at, plan), Vec::new()),
        Input::Failed(reason) => fail(reason.clone()),
        Input::Abort { .. } if at.state == RollingBack => Transition::ignored(at),
        Input::Abort { by } => fail(match at.state {
            AwaitingApproval => format!("aborted by {by} before traffic moved"),
            Shifting if canary => format!("the canary was aborted by {by}"),
            Observing => format!("aborted by {by} while observing"),
            _ => format!("aborted by {by}"),
        }),
        Input::Approve { by } if at.state == AwaitingApproval => {
            go(after(at, plan), vec![Effect::Approved { by: by.clone() }])
        }
        Input::Promote { by } if at.state == Shifting && canary => {
            go(after(at, plan), vec![Effect::Promoted { by: by.clone() }])
        }
        Input::Verdict(Verdict::Fail { reason }) if at.state == Shifting && canary => {
            fail(format!("the canary analysis failed: {reason}"))
        }
        Input::Verdict(Verdict::Fail { reason }) if at.state == Observing => {
            fail(format!("the analysis failed after the switch: {reason}"))
        }
        Input::Approve { .. } | Input::Promote { .. } | Input::Verdict(_) => {
            Transition::ignored(at)
        }
    }
}

/// Where a position's work leads when it ends well.
fn after(at: At, plan: &Plan) -> At {
    use State::*;
    let state = match at.state {
        Pending if plan.warm => Verifying,
        Pending => Preparing,
        Preparing if plan.approval => AwaitingApproval,
        Preparing | AwaitingApproval => BackingUp,
        BackingUp => Releasing,
        Releasing => Starting,
        Starting => Verifying,
        Verifying => Shifting,
        Shifting => {
            if let Traffic::Canary { steps } = &plan.traffic {
                let last = steps.len().saturating_sub(1);
                let here = steps.get(at.step).map_or(100, |step| step.share);
                if at.step < last && here < 100 {
                    return At {
                        state: Shifting,
                        step: at.step + 1,
                    };
                }
            }
            if plan.observe { Observing } else { Succeeded }
        }
        Observing => Succeeded,
        RollingBack => RolledBack,
        terminal @ (Succeeded | RolledBack | Failed) => terminal,
    };
    At::new(state)
}

/// The states alone: where a step's end (`Done` or `Failed`) leads from `state`'s first position.
pub fn next(state: State, result: StepResult, plan: &Plan) -> State {
    let input = match result {
        StepResult::Done => Input::Done,
        StepResult::Failed => Input::Failed(String::new()),
    };
    advance(At::new(state), &input, plan).next.state
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
