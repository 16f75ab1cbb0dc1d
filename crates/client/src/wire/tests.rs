//! The string forms of the wire's enums: what JSON, the store and the CLI all spell the same way.

use super::*;

/// Every value's string form, as JSON carries it and `as_str`/`FromStr` give it.
fn check<T>(table: &[(T, &str)], all: &[T])
where
    T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr,
    T: Serialize + for<'de> Deserialize<'de>,
    T::Err: std::fmt::Debug,
{
    assert_eq!(
        table.iter().map(|(value, _)| *value).collect::<Vec<_>>(),
        all,
        "the table names every value, in order"
    );
    for (value, text) in table {
        assert_eq!(value.to_string(), *text);
        assert_eq!(text.parse::<T>().ok(), Some(*value), "{text}");
        let json = serde_json::to_string(value).expect("serialize");
        assert_eq!(json, format!("\"{text}\""));
        let back: T = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, *value);
    }
}

#[test]
fn deployment_states() {
    use DeploymentState::*;
    check(
        &[
            (Pending, "Pending"),
            (Preparing, "Preparing"),
            (AwaitingApproval, "AwaitingApproval"),
            (BackingUp, "BackingUp"),
            (Releasing, "Releasing"),
            (Starting, "Starting"),
            (Verifying, "Verifying"),
            (Shifting, "Shifting"),
            (Observing, "Observing"),
            (Succeeded, "Succeeded"),
            (RollingBack, "RollingBack"),
            (RolledBack, "RolledBack"),
            (Failed, "Failed"),
        ],
        &DeploymentState::ALL,
    );
}

#[test]
fn deployment_kinds() {
    check(
        &[
            (DeploymentKind::Deploy, "deploy"),
            (DeploymentKind::Rollback, "rollback"),
        ],
        &DeploymentKind::ALL,
    );
}

#[test]
fn strategies() {
    check(
        &[
            (Strategy::BlueGreen, "blue-green"),
            (Strategy::Rolling, "rolling"),
            (Strategy::Canary, "canary"),
        ],
        &Strategy::ALL,
    );
}

#[test]
fn unknown_names_are_refused_with_what_was_parsed() {
    let cases: [(Result<(), UnknownValue>, &str); 4] = [
        (
            "succeeded".parse::<DeploymentState>().map(drop),
            "unknown deployment state `succeeded`",
        ),
        (
            "Deploy".parse::<DeploymentKind>().map(drop),
            "unknown deployment kind `Deploy`",
        ),
        (
            "blue_green".parse::<Strategy>().map(drop),
            "unknown strategy `blue_green`",
        ),
        ("".parse::<Strategy>().map(drop), "unknown strategy ``"),
    ];
    for (result, message) in cases {
        assert_eq!(
            result.map_err(|error| error.to_string()),
            Err(message.to_owned())
        );
    }
    assert!(serde_json::from_str::<Strategy>("\"bluegreen\"").is_err());
}

#[test]
fn terminal_states_and_the_signals_that_apply() {
    use DeploymentState::*;
    // (state, terminal, promote, approve, abort)
    let table = [
        (Pending, false, false, false, true),
        (Preparing, false, false, false, true),
        (AwaitingApproval, false, false, true, true),
        (BackingUp, false, false, false, true),
        (Releasing, false, false, false, true),
        (Starting, false, false, false, true),
        (Verifying, false, false, false, true),
        (Shifting, false, true, false, true),
        (Observing, false, false, false, true),
        (Succeeded, true, false, false, false),
        (RollingBack, false, false, false, false),
        (RolledBack, true, false, false, false),
        (Failed, true, false, false, false),
    ];
    for (state, terminal, promote, approve, abort) in table {
        assert_eq!(
            (
                state.is_terminal(),
                state.can_be_promoted(),
                state.can_be_approved(),
                state.can_be_aborted()
            ),
            (terminal, promote, approve, abort),
            "{state}"
        );
    }
}

#[test]
fn deployment_events_travel_in_an_event_s_data() {
    let cases = [
        (
            DeploymentEvent::State {
                from: DeploymentState::Pending,
                to: DeploymentState::Preparing,
            },
            serde_json::json!({ "event": "state", "from": "Pending", "to": "Preparing" }),
        ),
        (
            DeploymentEvent::Finished {
                state: DeploymentState::RolledBack,
                reason: Some("5xx".to_owned()),
            },
            serde_json::json!({ "event": "finished", "state": "RolledBack", "reason": "5xx" }),
        ),
    ];
    for (event, data) in cases {
        assert_eq!(serde_json::to_value(&event).expect("serialize"), data);
        let view = EventView {
            id: 1,
            at: 0,
            app: None,
            environment: None,
            deployment_id: None,
            kind: "deployment.state".to_owned(),
            message: "words".to_owned(),
            data,
        };
        assert_eq!(view.deployment_event(), Some(event));
    }
    let analysis = EventView {
        id: 1,
        at: 0,
        app: None,
        environment: None,
        deployment_id: None,
        kind: "analysis.verdict".to_owned(),
        message: "release 2: pass".to_owned(),
        data: serde_json::json!({ "release": 2, "verdict": { "verdict": "pass" } }),
    };
    assert_eq!(analysis.deployment_event(), None);
}

#[test]
fn verdicts_travel_in_an_analysis_event_s_data() {
    let cases = [
        (Verdict::Pass, serde_json::json!({ "verdict": "pass" })),
        (
            Verdict::Fail {
                reason: "5xx".to_owned(),
            },
            serde_json::json!({ "verdict": "fail", "reason": "5xx" }),
        ),
        (
            Verdict::Inconclusive {
                reason: "too few requests".to_owned(),
            },
            serde_json::json!({ "verdict": "inconclusive", "reason": "too few requests" }),
        ),
    ];
    for (verdict, json) in cases {
        assert_eq!(serde_json::to_value(&verdict).expect("serialize"), json);
        let view = EventView {
            id: 1,
            at: 0,
            app: None,
            environment: None,
            deployment_id: None,
            kind: "analysis.verdict".to_owned(),
            message: "words".to_owned(),
            data: serde_json::json!({ "release": 2, "verdict": json }),
        };
        assert_eq!(view.verdict(), Some(verdict));
    }
}

#[test]
fn a_deployment_id_is_a_plain_json_string() {
    let id = DeploymentId::new("d-0000000000001-00ff");
    assert_eq!(
        serde_json::to_string(&id).expect("serialize"),
        r#""d-0000000000001-00ff""#
    );
    let back: DeploymentId = serde_json::from_str(r#""d-0000000000001-00ff""#).expect("parse");
    assert_eq!(back, id);
    assert_eq!(back, "d-0000000000001-00ff");
    assert!(serde_json::from_str::<DeploymentId>("7").is_err());
}

#[test]
fn a_release_number_travels_as_a_bare_json_number() {
    let number = ReleaseNumber::new(7);
    assert_eq!(serde_json::to_string(&number).expect("serialize"), "7");
    assert_eq!(
        serde_json::from_str::<ReleaseNumber>("7").expect("parse"),
        number
    );
    assert!(serde_json::from_str::<ReleaseNumber>("\"7\"").is_err());
    assert!(serde_json::from_str::<ReleaseNumber>("-1").is_err());
    let weight = WeightView {
        release: number,
        weight: 40,
    };
    assert_eq!(
        serde_json::to_string(&weight).expect("serialize"),
        r#"{"release":7,"weight":40}"#
    );
    assert_eq!(number.to_string(), "7");
    assert_eq!(number.next(), ReleaseNumber::new(8));
    assert!(ReleaseNumber::new(2) < ReleaseNumber::new(10));
}

#[test]
fn a_release_number_argument_is_a_whole_number_of_at_least_one() {
    assert_eq!("3".parse::<ReleaseNumber>(), Ok(ReleaseNumber::new(3)));
    for wrong in ["0", "", "r3", "-2", "three", "1.5"] {
        let error = wrong.parse::<ReleaseNumber>().expect_err(wrong);
        assert!(
            error.to_string().contains("whole number of at least 1"),
            "{wrong}: {error}"
        );
    }
}
