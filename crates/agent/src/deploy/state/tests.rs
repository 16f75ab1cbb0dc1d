use super::*;

const COLD: Plan = Plan {
    warm: false,
    approval: false,
    observe: true,
};
const WARM: Plan = Plan {
    warm: true,
    approval: false,
    observe: false,
};
const GATED: Plan = Plan {
    warm: false,
    approval: true,
    observe: true,
};

#[test]
fn transitions() {
    use State::*;
    use StepResult::{Done, Failed as Fail};
    let table = [
        (Pending, Done, COLD, Preparing),
        (Pending, Done, WARM, Verifying),
        (Preparing, Done, COLD, BackingUp),
        (Preparing, Done, GATED, AwaitingApproval),
        (AwaitingApproval, Done, GATED, BackingUp),
        (AwaitingApproval, Fail, GATED, Failed),
        (BackingUp, Done, COLD, Releasing),
        (BackingUp, Done, GATED, Releasing),
        (Releasing, Done, COLD, Starting),
        (Starting, Done, COLD, Verifying),
        (Verifying, Done, COLD, Shifting),
        (Verifying, Done, GATED, Shifting),
        (Shifting, Done, COLD, Observing),
        (Shifting, Done, WARM, Succeeded),
        (Observing, Done, COLD, Succeeded),
        (Observing, Fail, COLD, RollingBack),
        (RollingBack, Done, COLD, RolledBack),
        (Pending, Fail, COLD, Failed),
        (Preparing, Fail, COLD, Failed),
        (BackingUp, Fail, COLD, Failed),
        (Releasing, Fail, COLD, Failed),
        (Starting, Fail, COLD, Failed),
        (Verifying, Fail, WARM, Failed),
        (Shifting, Fail, COLD, RollingBack),
        (RollingBack, Fail, COLD, Failed),
        (Succeeded, Fail, COLD, Succeeded),
        (Failed, Done, COLD, Failed),
    ];
    for (state, result, plan, expected) in table {
        assert_eq!(
            next(state, result, plan),
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
        for plan in [COLD, WARM, GATED] {
            let after = next(state, StepResult::Failed, plan);
            assert!(!after.traffic_may_have_moved(), "{state} -> {after}");
        }
    }
}

#[test]
fn every_path_from_pending_ends_in_a_terminal_state() {
    for plan in [COLD, WARM, GATED] {
        let mut state = State::Pending;
        for _ in 0..State::ALL.len() {
            state = next(state, StepResult::Done, plan);
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
        path.push(next(state, StepResult::Done, GATED));
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
