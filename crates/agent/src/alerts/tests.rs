//! Which events alert, and what the alert says: one row per event.

use client::wire::ReleaseNumber;

use super::*;

fn event(kind: &str, message: &str) -> EventView {
    // A finished deployment carries how it ended as a typed payload (the test's message says the
    // same in its first word, and the alert must not depend on the wording); an approval wait
    // carries its own payload.
    let data = match (kind, message.split(':').next()) {
        ("deployment.finished", Some(state)) => state
            .parse::<client::wire::DeploymentState>()
            .ok()
            .map(|state| {
                serde_json::to_value(client::wire::DeploymentEvent::Finished {
                    state,
                    reason: None,
                })
                .expect("a finished payload")
            })
            .unwrap_or(serde_json::Value::Null),
        ("deployment.awaiting_approval", _) => {
            serde_json::to_value(client::wire::DeploymentEvent::AwaitingApproval {
                release: ReleaseNumber::new(4),
                deployment: "d-1".into(),
                started_by: "alice".to_owned(),
            })
            .expect("an approval payload")
        }
        _ => serde_json::Value::Null,
    };
    EventView {
        id: 1,
        at: 0,
        app: Some("shop".to_owned()),
        environment: Some("production".to_owned()),
        deployment_id: None,
        kind: kind.to_owned(),
        message: message.to_owned(),
        data,
    }
}

#[test]
fn alerting_events_and_their_text() {
    let rows: &[(&str, &str, Option<&str>)] = &[
        (
            "deployment.finished",
            "Failed: boom",
            Some("[rollway] shop in production: deploy failed: Failed: boom"),
        ),
        (
            "deployment.finished",
            "RolledBack: 5xx",
            Some("[rollway] shop in production: rolled back automatically: RolledBack: 5xx"),
        ),
        ("deployment.finished", "Succeeded", None),
        (
            "deployment.awaiting_approval",
            "release 4 is verified and waits for `rollway approve d-1`",
            Some(
                "[rollway] shop in production: waiting for approval: release 4 is verified and waits for `rollway approve d-1`",
            ),
        ),
        (
            "instance.unhealthy",
            "instance a failed 3 health checks",
            Some("[rollway] shop in production: instance a failed 3 health checks"),
        ),
        (
            "instance.recovered",
            "instance a passes its health checks again",
            Some(
                "[rollway] shop in production: recovered: instance a passes its health checks again",
            ),
        ),
        (
            "watch.recovered",
            "release 3: 5xx share 0.10% is back under the bound",
            Some(
                "[rollway] shop in production: recovered: release 3: 5xx share 0.10% is back under the bound",
            ),
        ),
        (
            "watch.error_rate",
            "release 3: 5xx share 9%",
            Some(
                "[rollway] shop in production: error rate above the bound: release 3: 5xx share 9%",
            ),
        ),
        (
            "watch.all_unhealthy",
            "all 2 instances of release 3 (service `web`) fail their health checks",
            Some(
                "[rollway] shop in production: all 2 instances of release 3 (service `web`) fail their health checks",
            ),
        ),
        (
            "proxy.exited",
            "the proxy (pid 7) killed by signal 9; restarting it",
            Some(
                "[rollway] shop in production: the proxy (pid 7) killed by signal 9; restarting it",
            ),
        ),
        (
            "backup.upload_failed",
            "backup b-1 was not uploaded to s3://b/p after 5 attempts: refused",
            Some(
                "[rollway] shop in production: backup b-1 was not uploaded to s3://b/p after 5 attempts: refused",
            ),
        ),
        (
            "backup.verify_failed",
            "restore drill of backup b-1 FAILED (schedule): corrupt",
            Some(
                "[rollway] shop in production: restore drill of backup b-1 FAILED (schedule): corrupt",
            ),
        ),
        (
            "agent.backup_failed",
            "the agent's state was not backed up to s3://b/agents after 3 attempts: refused",
            Some(
                "[rollway] shop in production: the agent's state was not backed up to s3://b/agents after 3 attempts: refused",
            ),
        ),
        ("agent.backed_up", "the agent's state was backed up", None),
        ("backup.uploaded", "backup b-1 uploaded", None),
        (
            "backup.verified",
            "restore drill of backup b-1 passed",
            None,
        ),
        ("proxy.upgraded", "the proxy (pid 8) took over", None),
        ("instance.healthy", "instance a healthy", None),
    ];
    for (kind, message, expected) in rows {
        assert_eq!(
            alert_text(&event(kind, message)).as_deref(),
            *expected,
            "{kind}: {message}"
        );
    }
}

#[test]
fn a_finished_deployment_alerts_by_its_payload_not_its_wording() {
    let mut reworded = event("deployment.finished", "Failed: boom");
    reworded.message = "the deploy did not make it: boom".to_owned();
    assert_eq!(
        alert_text(&reworded).as_deref(),
        Some("[rollway] shop in production: deploy failed: the deploy did not make it: boom")
    );
    let mut untyped = event("deployment.finished", "Failed: boom");
    untyped.data = serde_json::Value::Null;
    assert_eq!(alert_text(&untyped), None);
}

#[test]
fn each_event_is_alerted_once_whatever_order_it_comes_in() {
    // Recorded before the task started: not the task's.
    let mut seen = Seen::from(10);
    assert!(!seen.first_time(9));
    assert!(!seen.first_time(10));
    // Published out of the order of their ids, then replayed from the store after a lag.
    let delivered = [12, 11, 14, 11, 12, 13, 14, 15];
    let first: Vec<i64> = delivered
        .into_iter()
        .filter(|id| seen.first_time(*id))
        .collect();
    assert_eq!(first, [12, 11, 14, 13, 15]);
}
