//! How a followed deployment's events render: from their typed payload, whatever their words.

use super::*;

fn event(kind: &str, message: &str, data: serde_json::Value) -> EventView {
    EventView {
        id: 1,
        at: 0,
        app: Some("shop".to_owned()),
        environment: Some("production".to_owned()),
        deployment_id: Some("d-1".into()),
        kind: kind.to_owned(),
        message: message.to_owned(),
        data,
    }
}

fn state_change(from: DeploymentState, to: DeploymentState, message: &str) -> EventView {
    let data = serde_json::to_value(DeploymentEvent::State { from, to }).expect("JSON");
    event("deployment.state", message, data)
}

#[test]
fn state_changes_render_by_their_target_state() {
    use DeploymentState::*;
    let rows: &[(DeploymentState, DeploymentState, Option<Line>)] = &[
        (
            Pending,
            Preparing,
            Some(Line::Status(
                "Preparing",
                "the release: unpack, build (1.0s)".to_owned(),
            )),
        ),
        (Preparing, BackingUp, None),
        (BackingUp, Releasing, None),
        (
            Releasing,
            Starting,
            Some(Line::Status("Starting", "new instances (1.0s)".to_owned())),
        ),
        (
            Preparing,
            AwaitingApproval,
            Some(Line::Status(
                "Awaiting",
                "approval: `rollway approve` releases it (1.0s)".to_owned(),
            )),
        ),
        (
            Shifting,
            RollingBack,
            Some(Line::Status(
                "Rolling back",
                "traffic to the earlier release (1.0s)".to_owned(),
            )),
        ),
        (Observing, Succeeded, None),
        (RollingBack, RolledBack, None),
    ];
    for (from, to, line) in rows {
        let event = state_change(*from, *to, &format!("{from} → {to}"));
        assert_eq!(&progress_line(&event, "(1.0s)"), line, "{from} → {to}");
    }
}

#[test]
fn an_event_s_wording_changes_no_rendering() {
    for from in DeploymentState::ALL {
        for to in DeploymentState::ALL {
            let worded = state_change(from, to, &format!("{from} → {to}"));
            let reworded = state_change(from, to, "the deployment moved on: Failed: fail");
            assert_eq!(
                progress_line(&worded, "(1.0s)"),
                progress_line(&reworded, "(1.0s)"),
                "{from} → {to}"
            );
        }
    }
    // Words that name a state in a message without the typed payload render nothing.
    let untyped = event(
        "deployment.state",
        "Pending → Preparing",
        serde_json::json!({}),
    );
    assert_eq!(progress_line(&untyped, "(1.0s)"), None);
}

#[test]
fn a_failing_verdict_warns_whatever_its_message_says() {
    let verdict = |verdict: serde_json::Value, message: &str| {
        event(
            "analysis.verdict",
            message,
            serde_json::json!({ "release": 2, "verdict": verdict }),
        )
    };
    let fail = serde_json::json!({ "verdict": "fail", "reason": "5xx" });
    let pass = serde_json::json!({ "verdict": "pass" });
    assert_eq!(
        progress_line(&verdict(fail.clone(), "release 2: fail: 5xx"), "(1.0s)"),
        Some(Line::Warning("release 2: fail: 5xx".to_owned()))
    );
    assert_eq!(
        progress_line(&verdict(fail, "release 2 is worse"), "(1.0s)"),
        Some(Line::Warning("release 2 is worse".to_owned()))
    );
    assert_eq!(
        progress_line(&verdict(pass, "release 2: fail: not really"), "(1.0s)"),
        None
    );
}
