use super::*;

#[test]
fn transitions() {
    use State::*;
    use StepResult::{Done, Failed as Fail};
    let table = [
        (Pending, Done, Plan::Cold, Preparing),
        (Pending, Done, Plan::Warm, Verifying),
        (Preparing, Done, Plan::Cold, BackingUp),
        (BackingUp, Done, Plan::Cold, Releasing),
        (BackingUp, Fail, Plan::Cold, Failed),
        (Releasing, Done, Plan::Cold, Starting),
        (Releasing, Fail, Plan::Cold, Failed),
        (Starting, Done, Plan::Cold, Verifying),
        (Verifying, Done, Plan::Warm, Shifting),
        (Shifting, Done, Plan::Cold, Succeeded),
        (RollingBack, Done, Plan::Cold, RolledBack),
        (Pending, Fail, Plan::Cold, Failed),
        (Preparing, Fail, Plan::Cold, Failed),
        (Starting, Fail, Plan::Cold, Failed),
        (Verifying, Fail, Plan::Warm, Failed),
        (Shifting, Fail, Plan::Cold, RollingBack),
        (RollingBack, Fail, Plan::Cold, Failed),
        (Succeeded, Fail, Plan::Cold, Succeeded),
        (Failed, Done, Plan::Cold, Failed),
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
    for state in [
        State::Pending,
        State::Preparing,
        State::BackingUp,
        State::Releasing,
        State::Starting,
        State::Verifying,
    ] {
        let after = next(state, StepResult::Failed, Plan::Cold);
        assert!(!after.traffic_may_have_moved(), "{state} -> {after}");
    }
}

#[test]
fn recovery() {
    assert_eq!(recover(State::Starting), Recovery::Undo);
    assert_eq!(recover(State::Verifying), Recovery::Undo);
    assert_eq!(recover(State::Shifting), Recovery::Resume(State::Shifting));
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
