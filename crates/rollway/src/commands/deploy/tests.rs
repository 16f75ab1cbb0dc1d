//! How a followed deployment's events render: from their typed payload, whatever their words.

use client::wire::ReleaseNumber;

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

/// One event of every kind of progress a deployment reports, as the agent records it.
fn every_progress_event() -> Vec<DeploymentEvent> {
    use client::wire::{Figures, Verdict};
    let figures = Figures {
        requests: 120,
        errors: 9,
        p99_us: 41_000,
        latency_count: 120,
    };
    vec![
        DeploymentEvent::State {
            from: DeploymentState::Pending,
            to: DeploymentState::Preparing,
        },
        DeploymentEvent::Finished {
            state: DeploymentState::RolledBack,
            reason: Some("the canary analysis failed: 5xx share".to_owned()),
        },
        DeploymentEvent::StepFailed {
            state: DeploymentState::Releasing,
            reason: "the release command `x` failed (exit status: 3)".to_owned(),
        },
        DeploymentEvent::Weights {
            release: ReleaseNumber::new(2),
            share: 20,
            step: Some(1),
            of: Some(3),
            weights: vec![(ReleaseNumber::new(1), 80), (ReleaseNumber::new(2), 20)],
        },
        DeploymentEvent::Weights {
            release: ReleaseNumber::new(2),
            share: 100,
            step: None,
            of: None,
            weights: vec![(ReleaseNumber::new(2), 100)],
        },
        DeploymentEvent::TrafficBack {
            weights: vec![(ReleaseNumber::new(1), 100)],
        },
        DeploymentEvent::Verdict {
            release: ReleaseNumber::new(2),
            verdict: Verdict::Fail {
                reason: "5xx share 7.5% above 1%".to_owned(),
            },
            sample: figures,
            baseline: Some(Figures::default()),
            bounds: None,
        },
        DeploymentEvent::Verdict {
            release: ReleaseNumber::new(2),
            verdict: Verdict::Pass,
            sample: figures,
            baseline: None,
            bounds: None,
        },
        DeploymentEvent::Inconclusive {
            verdict: Verdict::Inconclusive {
                reason: "12 of 50 requests".to_owned(),
            },
        },
        DeploymentEvent::InstanceStarted {
            instance: "shop-production-r2-web-1".to_owned(),
            port: 41_234,
        },
        DeploymentEvent::InstanceHealthy {
            instance: "shop-production-r2-web-1".to_owned(),
        },
        DeploymentEvent::InstanceUnhealthy {
            instance: "shop-production-r2-web-1".to_owned(),
            failures: 3,
        },
        DeploymentEvent::InstanceKeptInTraffic {
            instance: "shop-production-r2-web-1".to_owned(),
            release: ReleaseNumber::new(2),
        },
        DeploymentEvent::InstanceRecovered {
            instance: "shop-production-r2-web-1".to_owned(),
        },
        DeploymentEvent::Command {
            label: "release command".to_owned(),
            command: "./migrate".to_owned(),
        },
        DeploymentEvent::PullImage {
            service: "web".to_owned(),
            reference: "shop:2".to_owned(),
        },
        DeploymentEvent::BuildImage {
            service: "web".to_owned(),
            dockerfile: "Dockerfile".to_owned(),
        },
        DeploymentEvent::Image {
            service: "web".to_owned(),
            image: "sha256:0123456789abcdef".to_owned(),
        },
        DeploymentEvent::Output {
            line: "migrated 3 tables".to_owned(),
        },
        DeploymentEvent::Reused {
            artifact: "0123456789abcdef".to_owned(),
        },
        DeploymentEvent::BackupTaken {
            backup: "b-1".to_owned(),
            target: "sqlite:app.db".to_owned(),
            size: 4096,
        },
        DeploymentEvent::BackupSkipped {
            reason: "`app.db` does not exist yet".to_owned(),
        },
        DeploymentEvent::AwaitingApproval {
            release: ReleaseNumber::new(2),
            deployment: "d-1".into(),
            started_by: "ci".to_owned(),
        },
        DeploymentEvent::Approved {
            by: "ana".to_owned(),
            release: ReleaseNumber::new(2),
        },
        DeploymentEvent::Promoted {
            by: "ana".to_owned(),
        },
        DeploymentEvent::Holding {
            requests: None,
            min_requests: None,
        },
        DeploymentEvent::Holding {
            requests: Some(12),
            min_requests: Some(50),
        },
        DeploymentEvent::Observing {
            release: ReleaseNumber::new(2),
            window: "5m".to_owned(),
        },
        DeploymentEvent::NoFallback {
            reason: "every instance of release 2 (1) failed its last 3 health checks".to_owned(),
        },
        DeploymentEvent::Stopping {
            instances: vec!["shop-production-r1-worker-1".to_owned()],
        },
    ]
}

fn recorded(progress: &DeploymentEvent, message: &str) -> EventView {
    let data = serde_json::to_value(progress).expect("JSON");
    event(progress.kind(), message, data)
}

/// Every typed event renders the same whatever its message says: the agent's words may change,
/// the CLI's lines do not.
#[test]
fn no_progress_event_renders_from_its_message() {
    for progress in every_progress_event() {
        let worded = recorded(&progress, &progress.to_string());
        for other in [
            "",
            "reworded: fail: Failed → Succeeded",
            "release 9 takes 1%",
        ] {
            assert_eq!(
                progress_line(&worded, "(1.0s)"),
                progress_line(&recorded(&progress, other), "(1.0s)"),
                "{progress:?} with the message {other:?}"
            );
        }
    }
}

/// What `rollway deploy` prints for each typed event: the same lines the message-based
/// rendering printed for the agent's messages.
#[test]
fn typed_events_render_as_the_messages_did() {
    for progress in every_progress_event() {
        let typed = recorded(&progress, &progress.to_string());
        let untyped = event(
            progress.kind(),
            &progress.to_string(),
            serde_json::json!({}),
        );
        let expected = match &progress {
            // Untyped, these were never shown; typed they still are not (a state change shows
            // through its payload only, and a verdict's figures are in the payload).
            DeploymentEvent::State { to, .. } => state_line(*to, "(1.0s)"),
            DeploymentEvent::Verdict { verdict, .. } if verdict.is_fail() => {
                Some(Line::Warning(progress.to_string()))
            }
            _ => untyped_line(&untyped, "(1.0s)"),
        };
        assert_eq!(progress_line(&typed, "(1.0s)"), expected, "{progress:?}");
    }
    assert_eq!(
        progress_line(
            &recorded(
                &DeploymentEvent::Weights {
                    release: ReleaseNumber::new(2),
                    share: 20,
                    step: Some(1),
                    of: Some(3),
                    weights: vec![(ReleaseNumber::new(1), 80), (ReleaseNumber::new(2), 20)],
                },
                "",
            ),
            "(1.0s)"
        ),
        Some(Line::Status(
            "Shifted",
            "canary step 1/3: release 2 takes 20% of traffic (1.0s)".to_owned()
        ))
    );
}
