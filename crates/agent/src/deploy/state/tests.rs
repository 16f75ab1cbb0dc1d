use super::*;
use client::wire::{DeploymentKind, Strategy, Verdict};

fn cold() -> Plan {
    Plan {
        observe: true,
        ..Plan::default()
    }
}

fn warm() -> Plan {
    Plan {
        warm: true,
        ..Plan::default()
    }
}

fn gated() -> Plan {
    Plan {
        approval: true,
        observe: true,
        ..Plan::default()
    }
}

#[test]
fn transitions() {
    use State::*;
    use StepResult::{Done, Failed as Fail};
    let table = [
        (Pending, Done, cold(), Preparing),
        (Pending, Done, warm(), Verifying),
        (Preparing, Done, cold(), BackingUp),
        (Preparing, Done, gated(), AwaitingApproval),
        (AwaitingApproval, Done, gated(), BackingUp),
        (AwaitingApproval, Fail, gated(), Failed),
        (BackingUp, Done, cold(), Releasing),
        (BackingUp, Done, gated(), Releasing),
        (Releasing, Done, cold(), Starting),
        (Starting, Done, cold(), Verifying),
        (Verifying, Done, cold(), Shifting),
        (Verifying, Done, gated(), Shifting),
        (Shifting, Done, cold(), Observing),
        (Shifting, Done, warm(), Succeeded),
        (Observing, Done, cold(), Succeeded),
        (Observing, Fail, cold(), RollingBack),
        (RollingBack, Done, cold(), RolledBack),
        (Pending, Fail, cold(), Failed),
        (Preparing, Fail, cold(), Failed),
        (BackingUp, Fail, cold(), Failed),
        (Releasing, Fail, cold(), Failed),
        (Starting, Fail, cold(), Failed),
        (Verifying, Fail, warm(), Failed),
        (Shifting, Fail, cold(), RollingBack),
        (RollingBack, Fail, cold(), Failed),
        (Succeeded, Fail, cold(), Succeeded),
        (Failed, Done, cold(), Failed),
    ];
    for (state, result, plan, expected) in table {
        assert_eq!(
            next(state, result, &plan),
            expected,
            "{state} {result:?} {plan:?}"
        );
    }
}

#[test]
fn a_failure_before_shifting_never_reaches_a_traffic_state() {
    for state in State::ALL
        .into_iter()
        .filter(|state| !state.traffic_may_have_moved())
    {
        for plan in [cold(), warm(), gated()] {
            let after = next(state, StepResult::Failed, &plan);
            assert!(!after.traffic_may_have_moved(), "{state} -> {after}");
        }
    }
}

#[test]
fn every_path_from_pending_ends_in_a_terminal_state() {
    for plan in [cold(), warm(), gated()] {
        let mut state = State::Pending;
        for _ in 0..State::ALL.len() {
            state = next(state, StepResult::Done, &plan);
        }
        assert_eq!(state, State::Succeeded, "{plan:?}");
    }
}

/// The approval gate holds a deployment before its backup and release command (migrations): an
/// unapproved deployment that is aborted has touched neither the database nor the instances.
#[test]
fn approval_comes_before_the_backup_and_the_release_command() {
    let mut path = vec![State::Pending];
    while !path.last().is_some_and(|state| state.is_terminal()) {
        let state = *path.last().expect("not empty");
        path.push(next(state, StepResult::Done, &gated()));
    }
    let position = |wanted: State| path.iter().position(|state| *state == wanted);
    let approval = position(State::AwaitingApproval).expect("a gated plan waits");
    for later in [
        State::BackingUp,
        State::Releasing,
        State::Starting,
        State::Verifying,
        State::Shifting,
    ] {
        assert!(
            position(later).is_some_and(|at| at > approval),
            "{later} comes after the approval in {path:?}"
        );
    }
    assert_eq!(
        position(State::Preparing).map(|at| at + 1),
        Some(approval),
        "the gate follows preparing: {path:?}"
    );
}

#[test]
fn recovery() {
    assert_eq!(recover(State::Starting), Recovery::Undo);
    assert_eq!(recover(State::Verifying), Recovery::Undo);
    assert_eq!(
        recover(State::AwaitingApproval),
        Recovery::Resume(State::AwaitingApproval)
    );
    assert_eq!(recover(State::Shifting), Recovery::Resume(State::Shifting));
    assert_eq!(
        recover(State::Observing),
        Recovery::Resume(State::Observing)
    );
    assert_eq!(
        recover(State::RollingBack),
        Recovery::Resume(State::RollingBack)
    );
    assert_eq!(recover(State::Succeeded), Recovery::Finished);
}

#[test]
fn names_round_trip() {
    for state in State::ALL {
        assert_eq!(state.as_str().parse::<State>(), Ok(state));
    }
}

// The machine with every input: (position, input) -> (next position, effects).

fn canary() -> Plan {
    Plan {
        observe: true,
        traffic: Traffic::Canary {
            steps: vec![
                CanaryStep {
                    share: 20,
                    pause_ms: Some(1_000),
                },
                CanaryStep {
                    share: 50,
                    pause_ms: None,
                },
                CanaryStep {
                    share: 100,
                    pause_ms: None,
                },
            ],
        },
        ..Plan::default()
    }
}

fn full() -> Plan {
    Plan {
        approval: true,
        backup: true,
        release_command: true,
        smoke: true,
        ..canary()
    }
}

fn by() -> String {
    "ana".to_owned()
}

fn every_input() -> Vec<Input> {
    vec![
        Input::Done,
        Input::Failed("boom".to_owned()),
        Input::Abort { by: by() },
        Input::Approve { by: by() },
        Input::Promote { by: by() },
        Input::Verdict(Verdict::Pass),
        Input::Verdict(Verdict::Inconclusive {
            reason: "12 requests".to_owned(),
        }),
        Input::Verdict(Verdict::Fail {
            reason: "5xx share".to_owned(),
        }),
    ]
}

fn at(state: State) -> At {
    At::new(state)
}

fn step(index: usize) -> At {
    At {
        state: State::Shifting,
        step: index,
    }
}

/// Next position, failure reason, effects.
type Expected = (At, Option<String>, Vec<Effect>);

/// What every input does in every position of the fullest plan (approval, backup, release
/// command, smoke, a three-step canary, observation): next position, reason, effects.
#[test]
fn every_input_in_every_state() {
    use Effect as E;
    use State::*;
    let plan = full();
    let fail = Input::Failed("boom".to_owned());
    let abort = Input::Abort { by: by() };
    let approve = Input::Approve { by: by() };
    let promote = Input::Promote { by: by() };
    let pass = Input::Verdict(Verdict::Pass);
    let inconclusive = Input::Verdict(Verdict::Inconclusive {
        reason: "12 requests".to_owned(),
    });
    let bad = Input::Verdict(Verdict::Fail {
        reason: "5xx share".to_owned(),
    });
    let undo_to_failed = |reason: &str| (at(Failed), Some(reason.to_owned()), vec![E::Undo]);
    let back = |reason: &str| (at(RollingBack), Some(reason.to_owned()), vec![E::RollBack]);
    let stay = |position: At| (position, None, Vec::new());
    #[rustfmt::skip]
    let table: Vec<(At, &Input, Expected)> = vec![
        (at(Pending), &Input::Done, (at(Preparing), None, vec![E::Prepare])),
        (at(Pending), &fail, undo_to_failed("boom")),
        (at(Pending), &abort, undo_to_failed("aborted by ana")),
        (at(Pending), &approve, stay(at(Pending))),
        (at(Pending), &promote, stay(at(Pending))),
        (at(Pending), &pass, stay(at(Pending))),
        (at(Pending), &bad, stay(at(Pending))),
        (at(Preparing), &Input::Done, (at(AwaitingApproval), None, vec![E::AskApproval])),
        (at(Preparing), &fail, undo_to_failed("boom")),
        (at(Preparing), &abort, undo_to_failed("aborted by ana")),
        (at(Preparing), &approve, stay(at(Preparing))),
        (at(AwaitingApproval), &approve, (at(BackingUp), None, vec![E::Approved { by: by() }, E::BackUp])),
        (at(AwaitingApproval), &Input::Done, (at(BackingUp), None, vec![E::BackUp])),
        (at(AwaitingApproval), &abort, undo_to_failed("aborted by ana before traffic moved")),
        (at(AwaitingApproval), &fail, undo_to_failed("boom")),
        (at(AwaitingApproval), &promote, stay(at(AwaitingApproval))),
        (at(AwaitingApproval), &bad, stay(at(AwaitingApproval))),
        (at(BackingUp), &Input::Done, (at(Releasing), None, vec![E::RunReleaseCommand])),
        (at(BackingUp), &fail, undo_to_failed("boom")),
        (at(BackingUp), &abort, undo_to_failed("aborted by ana")),
        (at(BackingUp), &approve, stay(at(BackingUp))),
        (at(Releasing), &Input::Done, (at(Starting), None, vec![E::StartInstances])),
        (at(Releasing), &fail, undo_to_failed("boom")),
        (at(Releasing), &abort, undo_to_failed("aborted by ana")),
        (at(Starting), &Input::Done, (at(Verifying), None, vec![E::Verify, E::Smoke])),
        (at(Starting), &fail, undo_to_failed("boom")),
        (at(Starting), &promote, stay(at(Starting))),
        (at(Verifying), &Input::Done, (step(0), None, vec![E::CanaryStep { step: 0, share: 20 }])),
        (at(Verifying), &fail, undo_to_failed("boom")),
        (at(Verifying), &abort, undo_to_failed("aborted by ana")),
        (at(Verifying), &bad, stay(at(Verifying))),
        (step(0), &Input::Done, (step(1), None, vec![E::CanaryStep { step: 1, share: 50 }])),
        (step(0), &promote, (step(1), None, vec![E::Promoted { by: by() }, E::CanaryStep { step: 1, share: 50 }])),
        (step(1), &promote, (step(2), None, vec![E::Promoted { by: by() }, E::CanaryStep { step: 2, share: 100 }, E::CompleteSwitch])),
        (step(2), &Input::Done, (at(Observing), None, vec![E::Observe])),
        (step(1), &abort, back("the canary was aborted by ana")),
        (step(1), &bad, back("the canary analysis failed: 5xx share")),
        (step(1), &fail, back("boom")),
        (step(1), &pass, stay(step(1))),
        (step(1), &inconclusive, stay(step(1))),
        (step(1), &approve, stay(step(1))),
        (at(Observing), &Input::Done, (at(Succeeded), None, Vec::new())),
        (at(Observing), &abort, back("aborted by ana while observing")),
        (at(Observing), &bad, back("the analysis failed after the switch: 5xx share")),
        (at(Observing), &fail, back("boom")),
        (at(Observing), &pass, stay(at(Observing))),
        (at(Observing), &promote, stay(at(Observing))),
        (at(Observing), &approve, stay(at(Observing))),
        (at(RollingBack), &Input::Done, (at(RolledBack), None, Vec::new())),
        (at(RollingBack), &fail, undo_to_failed("boom")),
        (at(RollingBack), &abort, stay(at(RollingBack))),
        (at(RollingBack), &bad, stay(at(RollingBack))),
        (at(RollingBack), &promote, stay(at(RollingBack))),
    ];
    for (position, input, (next, reason, effects)) in table {
        let transition = advance(position, input, &plan);
        assert_eq!(
            transition,
            Transition {
                next,
                reason,
                effects
            },
            "{position:?} on {input:?}"
        );
    }
    // Terminal states take no input.
    for state in [Succeeded, RolledBack, Failed] {
        for input in every_input() {
            assert!(
                advance(at(state), &input, &plan).is_ignored(at(state)),
                "{state} on {input:?}"
            );
        }
    }
}

/// Every input in every state and every plan lands somewhere sensible: a failure before traffic
/// never reaches a traffic state, `Undo` only on the way to `Failed`, `RollBack` only on the way
/// to `RollingBack`, effects that write notes only before the new position's work.
#[test]
fn every_input_in_every_state_keeps_the_invariants() {
    let plans = [cold(), warm(), gated(), canary(), full()];
    for plan in &plans {
        for state in State::ALL {
            let steps = if state == State::Shifting { 0..3 } else { 0..1 };
            for index in steps {
                let position = At { state, step: index };
                for input in every_input() {
                    let transition = advance(position, &input, plan);
                    let next = transition.next;
                    let what = format!("{position:?} on {input:?} with {plan:?}: {transition:?}");
                    if !state.traffic_may_have_moved() {
                        assert!(
                            !next.state.traffic_may_have_moved() || input == Input::Done,
                            "{what}"
                        );
                    }
                    assert_eq!(
                        transition.effects.contains(&Effect::Undo),
                        next.state == State::Failed && next.state != state,
                        "{what}"
                    );
                    if transition.effects.contains(&Effect::RollBack) {
                        assert_eq!(next.state, State::RollingBack, "{what}");
                    }
                    let first_work = transition
                        .effects
                        .iter()
                        .position(|effect| !effect.before_write());
                    if let Some(first_work) = first_work {
                        assert!(
                            transition.effects[first_work..]
                                .iter()
                                .all(|effect| !effect.before_write()),
                            "{what}"
                        );
                    }
                    assert_eq!(
                        transition.reason.is_some(),
                        next.state != state
                            && matches!(next.state, State::Failed | State::RollingBack),
                        "{what}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_plan_is_decided_once_from_the_facts() {
    let facts = Facts {
        kind: DeploymentKind::Deploy,
        strategy: Strategy::Canary,
        warm: false,
        serving: true,
        approval: true,
        backup: true,
        release_command: true,
        smoke: true,
        observe: true,
        canary_steps: vec![CanaryStep {
            share: 100,
            pause_ms: None,
        }],
    };
    let deploy = plan(&facts);
    assert!(deploy.approval && deploy.backup && deploy.release_command && deploy.smoke);
    assert!(matches!(deploy.traffic, Traffic::Canary { .. }));
    // A rollback goes straight back: no gate, backup, commands or watch.
    let rollback = plan(&Facts {
        kind: DeploymentKind::Rollback,
        ..facts.clone()
    });
    assert_eq!(
        (
            rollback.approval,
            rollback.backup,
            rollback.release_command,
            rollback.smoke,
            rollback.observe
        ),
        (false, false, false, false, false)
    );
    // A first deploy has nothing to compare a canary with: one switch.
    let first = plan(&Facts {
        serving: false,
        ..facts.clone()
    });
    assert_eq!(first.traffic, Traffic::Switch);
    let rolling = plan(&Facts {
        strategy: Strategy::Rolling,
        ..facts
    });
    assert_eq!(rolling.traffic, Traffic::Rolling);
}

/// A canary resumed after a restart at step `n` starts by giving step `n`'s share again, never an
/// earlier one; a promote pending at that moment moves it to step `n + 1`.
#[test]
fn a_resumed_canary_goes_on_from_its_step() {
    let plan = canary();
    assert_eq!(
        entry(step(1), &plan),
        [Effect::CanaryStep { step: 1, share: 50 }]
    );
    let promoted = advance(step(1), &Input::Promote { by: by() }, &plan);
    assert_eq!(promoted.next, step(2));
}
