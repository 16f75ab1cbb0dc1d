//! What an alert says, and which events are alerts.

use super::*;

fn event(kind: &str, message: &str) -> EventView {
    EventView {
        id: 1,
        at: 0,
        app: Some("shop".to_owned()),
        environment: Some("production".to_owned()),
        deployment_id: Some("d-1".to_owned()),
        kind: kind.to_owned(),
        message: message.to_owned(),
        data: serde_json::Value::Null,
    }
}

#[test]
fn a_deploy_waiting_for_approval_is_an_alert() {
    let text = alert_text(&event(
        "deployment.awaiting_approval",
        "release 2 is prepared and waits for `rollway approve d-1`",
    ));
    assert_eq!(
        text.as_deref(),
        Some(
            "[rollway] shop in production: a deploy waits for approval: release 2 is prepared and waits for `rollway approve d-1`"
        )
    );
    assert_eq!(alert_text(&event("deployment.approved", "ok")), None);
}
