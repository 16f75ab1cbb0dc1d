//! The markdown summary `rollway deploy` appends to `$GITHUB_STEP_SUMMARY` (GitHub Actions shows
//! it on the run's page): release, strategy, the time each state took, the analysis's verdicts
//! and the outcome, from the deployment's final view and its events.
//!
//! It renders what the agent recorded and nothing else: events reach it already scrubbed of
//! secrets, and it shows no command output, no token and no environment value.

use std::io::Write as _;
use std::path::Path;

use client::wire::{DeploymentEvent, DeploymentState, DeploymentView, EventView};

/// The variable GitHub Actions sets to the file a step appends its summary to.
pub const GITHUB_STEP_SUMMARY: &str = "GITHUB_STEP_SUMMARY";

/// When `$GITHUB_STEP_SUMMARY` is set: fetches the deployment's events and appends its summary
/// there. A failure is a warning: the deploy's outcome stands.
pub async fn write(
    client: &client::Client,
    printer: &crate::printer::Printer,
    deployment: &DeploymentView,
) {
    if std::env::var_os(GITHUB_STEP_SUMMARY).is_none_or(|path| path.is_empty()) {
        return;
    }
    let events = match client.deployment_events(&deployment.id, 0).await {
        Ok(events) => events,
        Err(error) => {
            printer.warning(&format!(
                "no step summary: cannot read the deployment's events: {error}"
            ));
            return;
        }
    };
    if let Err(error) = append_if_requested(deployment, &events) {
        printer.warning(&format!(
            "cannot append the step summary to `${GITHUB_STEP_SUMMARY}`: {error}"
        ));
    }
}

/// Appends the summary of `deployment` to the file named by `$GITHUB_STEP_SUMMARY`, if set.
pub fn append_if_requested(
    deployment: &DeploymentView,
    events: &[EventView],
) -> std::io::Result<()> {
    let Some(path) = std::env::var_os(GITHUB_STEP_SUMMARY).filter(|path| !path.is_empty()) else {
        return Ok(());
    };
    append(Path::new(&path), &render(deployment, events))
}

fn append(path: &Path, markdown: &str) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(markdown.as_bytes())
}

/// The markdown of one deployment.
pub fn render(deployment: &DeploymentView, events: &[EventView]) -> String {
    let outcome = match deployment.state {
        DeploymentState::Succeeded => "succeeded".to_owned(),
        DeploymentState::RolledBack => "rolled back".to_owned(),
        DeploymentState::Failed => "failed".to_owned(),
        other => format!("not finished ({})", other.as_str()),
    };
    let icon = match deployment.state {
        DeploymentState::Succeeded => "✅",
        DeploymentState::RolledBack => "↩️",
        _ => "❌",
    };
    let mut out = format!(
        "### {icon} Rollway: {} `{}@{}` to `{}` {outcome}\n\n",
        deployment.kind.as_str(),
        cell(&deployment.app),
        deployment.to_release,
        cell(&deployment.environment),
    );
    let took_ms = deployment.updated_at.saturating_sub(deployment.created_at);
    out.push_str("| | |\n| --- | --- |\n");
    out.push_str(&format!(
        "| Release | {} (from {}) |\n",
        deployment.to_release,
        deployment
            .from_release
            .map_or_else(|| "none".to_owned(), |from| from.to_string())
    ));
    out.push_str(&format!(
        "| Strategy | {} |\n",
        deployment.strategy.as_str()
    ));
    out.push_str(&format!("| Deployment | `{}` |\n", cell(&deployment.id)));
    out.push_str(&format!(
        "| Started by | {} |\n",
        cell(&deployment.created_by)
    ));
    out.push_str(&format!("| Took | {} |\n", seconds(took_ms)));
    out.push_str(&format!("| Outcome | {outcome} |\n"));
    if let Some(reason) = &deployment.reason {
        out.push_str(&format!("| Reason | {} |\n", cell(reason)));
    }

    let states: Vec<(i64, DeploymentState)> = events
        .iter()
        .filter_map(|event| match event.deployment_event() {
            Some(DeploymentEvent::State { to, .. }) => Some((event.at, to)),
            _ => None,
        })
        .collect();
    if !states.is_empty() {
        out.push_str("\n#### Timings\n\n| State | Took |\n| --- | ---: |\n");
        for (idx, (at, state)) in states.iter().enumerate() {
            if state.is_terminal() {
                continue;
            }
            let until = states
                .get(idx + 1)
                .map_or(deployment.updated_at, |(next, _)| *next);
            out.push_str(&format!(
                "| {} | {} |\n",
                state.as_str(),
                seconds(until.saturating_sub(*at))
            ));
        }
    }

    let verdicts: Vec<&EventView> = events
        .iter()
        .filter(|event| {
            // By payload, never by kind or wording: the typed verdict events, and the verdict in
            // `data.verdict` of an older agent's events.
            matches!(
                event.deployment_event(),
                Some(DeploymentEvent::Verdict { .. } | DeploymentEvent::Inconclusive { .. })
            ) || event.verdict().is_some()
        })
        .collect();
    out.push_str("\n#### Verdicts\n\n");
    if verdicts.is_empty() {
        out.push_str(
            "No analysis verdict: no step of this deployment was analysed under traffic.\n",
        );
    } else {
        out.push_str("| At | Verdict | Detail |\n| ---: | --- | --- |\n");
        for event in verdicts {
            let verdict = event.verdict().map_or_else(
                || "inconclusive".to_owned(),
                |verdict| verdict.name().to_owned(),
            );
            out.push_str(&format!(
                "| +{} | {verdict} | {} |\n",
                seconds(event.at.saturating_sub(deployment.created_at)),
                cell(&event.message)
            ));
        }
    }
    out.push('\n');
    out
}

/// Text safe in a table cell: no line breaks, no column separators, no HTML.
fn cell(text: &str) -> String {
    text.replace(['\n', '\r'], " ")
        .replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn seconds(ms: i64) -> String {
    format!("{:.1}s", ms as f64 / 1000.0)
}

#[cfg(test)]
mod tests {
    use client::wire::{DeploymentKind, ReleaseNumber, Strategy};

    use super::*;

    fn event(at: i64, kind: &str, message: &str, data: serde_json::Value) -> EventView {
        EventView {
            id: at,
            at,
            app: Some("demo".to_owned()),
            environment: Some("production".to_owned()),
            deployment_id: Some("d-1".into()),
            kind: kind.to_owned(),
            message: message.to_owned(),
            data,
        }
    }

    #[test]
    fn a_rolled_back_canary_shows_its_timings_verdicts_and_reason() {
        let deployment = DeploymentView {
            id: "d-1".into(),
            app: "demo".to_owned(),
            environment: "production".to_owned(),
            kind: DeploymentKind::Deploy,
            state: DeploymentState::RolledBack,
            from_release: Some(ReleaseNumber::new(1)),
            to_release: ReleaseNumber::new(2),
            strategy: Strategy::Canary,
            reason: Some("error rate 0.31 | above 0.01\nsecond line".to_owned()),
            created_by: "ci".to_owned(),
            created_at: 1_000,
            updated_at: 9_500,
        };
        let state =
            |from: &str, to: &str| serde_json::json!({ "event": "state", "from": from, "to": to });
        let events = vec![
            event(1_000, "deployment.state", "", state("Pending", "Preparing")),
            event(
                2_500,
                "deployment.state",
                "",
                state("Preparing", "Shifting"),
            ),
            event(
                6_000,
                "analysis.verdict",
                "canary <b>fails</b>",
                serde_json::json!({ "verdict": { "verdict": "fail", "reason": "5xx" } }),
            ),
            event(
                7_000,
                "deployment.state",
                "",
                state("Shifting", "RollingBack"),
            ),
            event(
                9_500,
                "deployment.state",
                "",
                state("RollingBack", "RolledBack"),
            ),
        ];
        let markdown = render(&deployment, &events);
        assert!(
            markdown.contains("`demo@2` to `production` rolled back"),
            "{markdown}"
        );
        assert!(markdown.contains("| Strategy | canary |"), "{markdown}");
        assert!(markdown.contains("| Took | 8.5s |"), "{markdown}");
        assert!(markdown.contains("| Preparing | 1.5s |"), "{markdown}");
        assert!(markdown.contains("| Shifting | 4.5s |"), "{markdown}");
        assert!(markdown.contains("| RollingBack | 2.5s |"), "{markdown}");
        assert!(!markdown.contains("| RolledBack |"), "{markdown}");
        assert!(
            markdown.contains("| +5.0s | fail | canary &lt;b&gt;fails&lt;/b&gt; |"),
            "{markdown}"
        );
        assert!(
            markdown.contains("error rate 0.31 \\| above 0.01 second line"),
            "{markdown}"
        );
    }
}
