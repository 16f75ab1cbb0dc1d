//! The pages: overview, environment, events, logs, backups. Each reads through the same handler
//! the API's route of the same data calls (status, releases, events, logs, backups), so the
//! dashboard shows what `rollway status` shows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use client::wire::{
    DeploymentEvent, DeploymentState, EventView, InstanceState, ReleaseView, StatusView,
};
use maud::{Markup, html};
use serde::Deserialize;

use super::charts::{self, CanaryPoint, Metric};
use super::trends::Trends;
use super::{Viewer, api_error_page, html_response, page};
use crate::api::router::role_for;
use crate::api::{backups as api_backups, events as api_events, logs as api_logs};
use crate::api::{releases as api_releases, status as api_status};
use crate::engine::{AppEnv, Engine};

/// A time for people: UTC, to the second.
pub(super) fn when(ms: i64) -> String {
    let at = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .replace('T', " ")
        .replace('Z', " UTC")
}

/// The path of an environment's page.
pub(super) fn env_path(app: &str, env: &str) -> String {
    format!("/apps/{}/{}", encode(app), encode(env))
}

/// A path segment or query value, percent-encoded (names are checked by the API's input rules,
/// but a link must not depend on it).
pub(super) fn encode(text: &str) -> String {
    serde_urlencoded::to_string([("", text)])
        .map(|pair| pair.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

fn healthy(state: InstanceState) -> bool {
    matches!(
        state,
        InstanceState::Serving | InstanceState::Healthy | InstanceState::Warm
    )
}

fn weights_text(status: &StatusView) -> String {
    if status.weights.is_empty() {
        return "no traffic".to_owned();
    }
    status
        .weights
        .iter()
        .map(|w| format!("r{} {}%", w.release, w.weight))
        .collect::<Vec<_>>()
        .join(" · ")
}

fn state_class(state: DeploymentState) -> &'static str {
    match state {
        DeploymentState::Succeeded => "ok",
        DeploymentState::Failed | DeploymentState::RolledBack => "bad",
        _ if state.is_terminal() => "bad",
        _ => "live",
    }
}

/// `GET /`: every app and environment.
pub async fn overview(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Extension(trends): Extension<Arc<Trends>>,
) -> Response {
    match overview_markup(&engine, &viewer, &trends).await {
        Ok(markup) => html_response(StatusCode::OK, markup),
        Err(error) => api_error_page(&viewer, error),
    }
}

/// The overview page (also what the benchmark renders).
pub async fn overview_markup(
    engine: &Arc<Engine>,
    viewer: &Viewer,
    trends: &Trends,
) -> Result<Markup, crate::api::error::ApiError> {
    let apps = engine
        .store
        .apps()
        .map_err(crate::api::error::ApiError::internal)?;
    let mut rows = Vec::with_capacity(apps.len());
    // The proxy's state lists every route: read once, not once per row.
    let observed = api_status::observed(engine).await;
    for (app, env, _) in apps {
        let status = api_status::status_with(engine, app.clone(), env.clone(), &observed)?.0;
        rows.push((status, trends.points(&app, &env)));
    }
    let after = engine.store.last_event_id().unwrap_or(0);
    Ok(page(
        "Overview",
        Some(viewer),
        Some(&format!("all:{after}")),
        html! {
            h1 { "Overview" }
            @if rows.is_empty() {
                p { "No app is deployed on this agent yet: " code { "rollway deploy --env production" } " deploys the first." }
            } @else {
                div.scroll {
                table.overview {
                    thead { tr {
                        th scope="col" { "App" } th scope="col" { "Environment" } th scope="col" { "Release" }
                        th scope="col" { "Healthy" } th scope="col" { "Traffic" } th scope="col" { "Last deployment" }
                        th scope="col" { "5xx (1 h)" } th scope="col" { "p99 (1 h)" }
                    } }
                    tbody {
                        @for (status, points) in &rows {
                            @let healthy_count = status.instances.iter().filter(|i| healthy(i.state)).count();
                            tr data-app=(status.app) data-env=(status.environment) {
                                td { (status.app) }
                                td { a href=(env_path(&status.app, &status.environment)) { (status.environment) } }
                                td { @match status.current_release { Some(r) => { "r" (r) }, None => "none" } }
                                td.health { (healthy_count) "/" (status.instances.len()) }
                                td { (weights_text(status)) }
                                td {
                                    @if let Some(d) = &status.deployment {
                                        span class=(format!("state {}", state_class(d.state))) { (d.state) }
                                        " " (d.kind) " to r" (d.to_release) " by " (d.created_by) ", " (when(d.updated_at))
                                    } @else { "none" }
                                }
                                td { (charts::sparkline(&points.iter().map(|p| p.error_share()).collect::<Vec<_>>(), 0.01, &format!("5xx share of {} in {}, last hour", status.app, status.environment))) }
                                td { (charts::sparkline(&points.iter().map(|p| p.p99_us as f64 / 1000.0).collect::<Vec<_>>(), 1.0, &format!("p99 of {} in {}, last hour", status.app, status.environment))) }
                            }
                        }
                    }
                }
                }
            }
        },
    ))
}

/// Whether the viewer may do what the API route `method path` needs (the API's table decides).
fn may(viewer: &Viewer, method: Method, path: &str) -> bool {
    role_for(&method, path).is_some_and(|needed| viewer.may(needed))
}

pub(super) const ROLLBACK_ROUTE: &str = "/apps/{app}/environments/{env}/rollback";
pub(super) const PROMOTE_ROUTE: &str = "/deployments/{id}/promote";
pub(super) const ABORT_ROUTE: &str = "/deployments/{id}/abort";
pub(super) const APPROVE_ROUTE: &str = "/deployments/{id}/approve";
pub(super) const BACKUP_ROUTE: &str = "/apps/{app}/environments/{env}/backups";
pub(super) const RESTORE_ROUTE: &str = "/apps/{app}/environments/{env}/backups/{id}/restore";

/// The verdicts of a deployment's analysis, as chart points.
pub(super) fn canary_points(events: &[EventView]) -> Vec<CanaryPoint> {
    events
        .iter()
        .filter_map(|event| match event.deployment_event()? {
            DeploymentEvent::Verdict {
                verdict,
                sample,
                baseline,
                bounds,
                ..
            } => Some(CanaryPoint {
                at: event.at,
                verdict,
                sample,
                baseline,
                bounds,
            }),
            _ => None,
        })
        .collect()
}

/// `GET /apps/{app}/{env}`.
pub async fn environment(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Path((app, env)): Path<(String, String)>,
) -> Response {
    let status =
        match api_status::status(State(engine.clone()), Path((app.clone(), env.clone()))).await {
            Ok(status) => status.0,
            Err(error) => return api_error_page(&viewer, error),
        };
    let releases =
        match api_releases::releases(State(engine.clone()), Path((app.clone(), env.clone()))).await
        {
            Ok(releases) => releases.0,
            Err(error) => return api_error_page(&viewer, error),
        };
    let steps: Vec<EventView> = match &status.deployment {
        Some(d) => engine
            .store
            .events_for_deployment(&d.id, 0)
            .unwrap_or_default()
            .iter()
            .map(crate::store::Event::view)
            .collect(),
        None => Vec::new(),
    };
    let canary = canary_points(&steps);
    let restarts: BTreeMap<String, u32> = status
        .instances
        .iter()
        .map(|i| {
            let restarts = match engine.drivers.status(i.id.as_str()) {
                driver::InstanceStatus::Running { restarts, .. }
                | driver::InstanceStatus::Restarting { restarts, .. } => restarts,
                _ => 0,
            };
            (i.id.as_str().to_owned(), restarts)
        })
        .collect();
    // Nobody approves their own deploy (the API refuses it): no button for the token that started it.
    let started_here = status.deployment.as_ref().is_some_and(|d| {
        engine
            .store
            .deployment(&d.id)
            .ok()
            .flatten()
            .and_then(|d| {
                serde_json::from_str::<crate::deploy::executor::DeploymentData>(&d.data_json).ok()
            })
            .and_then(|data| data.started_by_token)
            .is_some_and(|starter| starter == viewer.caller.token_id)
    });
    let after = engine.store.last_event_id().unwrap_or(0);
    let here = env_path(&app, &env);
    let may_rollback = may(&viewer, Method::POST, ROLLBACK_ROUTE);
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Overview" } " / " (app) " / " (env) }
        h1 { (app) " in " (env) }
        p.summary {
            "Current release: " strong { @match status.current_release { Some(r) => { "r" (r) }, None => "none" } }
            " · traffic " (weights_text(&status))
            @if let Some(url) = &status.url { " · " code { (url) } }
        }
        p.links {
            a href=(format!("{here}/logs")) { "Logs" } " · "
            a href=(format!("{here}/backups")) { "Backups" } " · "
            a href=(format!("/events?app={}&env={}", encode(&app), encode(&env))) { "Events" }
        }
        @if let Some(note) = &status.inconclusive { p.note { (note) } }
        @if let Some(d) = &status.deployment {
            section #deployment aria-labelledby="deployment-h" data-state=(d.state) {
                h2 #deployment-h {
                    @if d.state.is_terminal() { "Last deployment" } @else { "Deployment in flight" }
                }
                p {
                    span class=(format!("state {}", state_class(d.state))) #deployment-state { (d.state) }
                    " " (d.kind) " "
                    @if let Some(from) = d.from_release { "r" (from) " → " }
                    "r" (d.to_release) " (" (d.strategy) ") by " (d.created_by) ", started " (when(d.created_at))
                    @if let Some(reason) = &d.reason { " — " (reason) }
                }
                div.actions {
                    @if d.state.can_be_promoted() && may(&viewer, Method::POST, PROMOTE_ROUTE) {
                        a.button href=(format!("{here}/confirm?action=promote&deployment={}", encode(&d.id))) { "Promote" }
                    }
                    @if d.state.can_be_approved() && !started_here && may(&viewer, Method::POST, APPROVE_ROUTE) {
                        a.button href=(format!("{here}/confirm?action=approve&deployment={}", encode(&d.id))) { "Approve" }
                    }
                    @if d.state.can_be_aborted() && may(&viewer, Method::POST, ABORT_ROUTE) {
                        a.button.danger href=(format!("{here}/confirm?action=abort&deployment={}", encode(&d.id))) { "Abort" }
                    }
                }
                @if !canary.is_empty() {
                    div.charts #canary {
                        (charts::canary_chart(&canary, Metric::ErrorShare))
                        (charts::canary_chart(&canary, Metric::P99))
                    }
                }
                ol.steps #steps {
                    @for event in steps.iter().filter(|e| e.kind != "deployment.output") {
                        li data-kind=(event.kind) {
                            time { (when(event.at)) } " " span.kind { (event.kind) } " " (event.message)
                        }
                    }
                }
            }
        }
        section aria-labelledby="instances-h" {
            h2 #instances-h { "Instances" }
            @if status.instances.is_empty() { p { "None running." } } @else {
                div.scroll { table {
                    thead { tr { th scope="col" { "Instance" } th scope="col" { "Service" } th scope="col" { "Release" } th scope="col" { "Port" } th scope="col" { "State" } th scope="col" { "Restarts" } } }
                    tbody { @for i in &status.instances { tr {
                        td { code { (i.id) } } td { (i.service) } td { "r" (i.release) } td { (i.port) }
                        td { span class=(format!("istate {}", if healthy(i.state) { "ok" } else { "bad" })) { (i.state) } }
                        td { (restarts.get(i.id.as_str()).copied().unwrap_or(0)) }
                    } } }
                } }
            }
        }
        section aria-labelledby="releases-h" {
            h2 #releases-h { "Releases" }
            (release_table(&releases, &here, may_rollback))
        }
    };
    html_response(
        StatusCode::OK,
        page(
            &format!("{app} in {env}"),
            Some(&viewer),
            Some(&format!("{app}/{env}:{after}")),
            main,
        ),
    )
}

fn release_table(releases: &[ReleaseView], here: &str, may_rollback: bool) -> Markup {
    // Oldest first from the store; a release is config-only when its artifact is the previous one's.
    let mut rows: Vec<(&ReleaseView, bool)> = Vec::with_capacity(releases.len());
    let mut sorted: Vec<&ReleaseView> = releases.iter().collect();
    sorted.sort_by_key(|r| r.number);
    let mut previous: Option<&str> = None;
    for release in sorted {
        rows.push((release, previous == Some(release.artifact.as_str())));
        previous = Some(release.artifact.as_str());
    }
    rows.reverse();
    html! {
        @if rows.is_empty() { p { "No release yet." } } @else {
            div.scroll { table.releases {
                thead { tr {
                    th scope="col" { "#" } th scope="col" { "Artifact" } th scope="col" { "Message" } th scope="col" { "By" }
                    th scope="col" { "When" } th scope="col" { "Outcome" } th scope="col" { "Change" } th scope="col" { span.sr { "Action" } }
                } }
                tbody { @for (r, config_only) in &rows {
                    tr data-release=(r.number) {
                        td { "r" (r.number) @if r.current { " " span.badge { "current" } } }
                        td { code title=(r.artifact) { (r.artifact.chars().take(12).collect::<String>()) } }
                        td { (r.message.as_deref().unwrap_or("")) }
                        td { (r.created_by) }
                        td { (when(r.created_at)) }
                        td { (r.outcome) }
                        td { @if *config_only { "config only" } @else { "code" } }
                        td { @if may_rollback && !r.current {
                            a.button href=(format!("{here}/confirm?action=rollback&to={}", r.number)) { "Roll back to r" (r.number) }
                        } }
                    }
                } }
            } }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub struct EventFilter {
    #[serde(default)]
    app: String,
    #[serde(default)]
    env: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    who: String,
}

/// How many of the latest events the events page looks through.
const EVENTS_SCANNED: usize = 5_000;
/// How many matching events it shows.
const EVENTS_SHOWN: usize = 200;

/// `GET /events`: the audit log, newest first, filtered by app, environment, kind (prefix) and who
/// (the name in the event's words or its deployment's starter).
pub async fn events(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Query(filter): Query<EventFilter>,
) -> Response {
    let last = engine.store.last_event_id().unwrap_or(0);
    let stored = match engine.store.events_after(
        last.saturating_sub(i64::try_from(EVENTS_SCANNED).unwrap_or(i64::MAX)),
        EVENTS_SCANNED,
    ) {
        Ok(stored) => stored,
        Err(error) => return api_error_page(&viewer, crate::api::error::ApiError::internal(error)),
    };
    let mut starters: BTreeMap<String, String> = BTreeMap::new();
    let matches = |event: &EventView, starters: &mut BTreeMap<String, String>| {
        let field = |value: &Option<String>, wanted: &str| {
            wanted.is_empty() || value.as_deref() == Some(wanted)
        };
        if !field(&event.app, &filter.app) || !field(&event.environment, &filter.env) {
            return false;
        }
        if !filter.kind.is_empty() && !event.kind.starts_with(&filter.kind) {
            return false;
        }
        if filter.who.is_empty() || event.message.contains(&filter.who) {
            return true;
        }
        let Some(id) = &event.deployment_id else {
            return false;
        };
        let starter = starters.entry(id.to_string()).or_insert_with(|| {
            engine
                .store
                .deployment(id)
                .ok()
                .flatten()
                .map(|d| d.created_by)
                .unwrap_or_default()
        });
        *starter == filter.who
    };
    let shown: Vec<EventView> = stored
        .iter()
        .rev()
        .map(crate::store::Event::view)
        .filter(|event| matches(event, &mut starters))
        .take(EVENTS_SHOWN)
        .collect();
    let main = html! {
        h1 { "Events" }
        form.filters method="get" action="/events" role="search" {
            label { "App " input type="text" name="app" value=(filter.app); }
            label { "Environment " input type="text" name="env" value=(filter.env); }
            label { "Kind " input type="text" name="kind" value=(filter.kind) placeholder="deployment."; }
            label { "Who " input type="text" name="who" value=(filter.who); }
            button type="submit" { "Filter" }
            a href="/events" { "Clear" }
        }
        p.hint { "Newest first; " (shown.len()) " shown. New events appear as they happen." }
        ol.events #events reversed {
            @for event in &shown {
                li data-id=(event.id) data-kind=(event.kind) {
                    time { (when(event.at)) } " "
                    @if let (Some(app), Some(env)) = (&event.app, &event.environment) {
                        a href=(env_path(app, env)) { (app) "/" (env) } " "
                    }
                    span.kind { (event.kind) } " " (event.message)
                }
            }
        }
    };
    html_response(
        StatusCode::OK,
        page("Events", Some(&viewer), Some(&format!("all:{last}")), main),
    )
}

/// `GET /events/stream`: the API's audit-log stream, behind the session.
pub async fn events_stream(
    state: State<Arc<Engine>>,
    query: Query<api_events::AfterQuery>,
) -> Response {
    api_events::events_stream(state, query)
        .await
        .into_response()
}

/// `GET /apps/{app}/{env}/logs`: the last lines of every instance, then followed live.
pub async fn logs(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Path((app, env)): Path<(String, String)>,
    Query(filter): Query<LogFilter>,
) -> Response {
    let lines = match api_logs::logs(
        State(engine.clone()),
        Path((app.clone(), env.clone())),
        Query(api_logs::LogsQuery { n: 200 }),
    )
    .await
    {
        Ok(lines) => lines.0,
        Err(error) => return api_error_page(&viewer, error),
    };
    let instances: Vec<String> = engine
        .runtime(&AppEnv::new(app.clone(), env.clone()))
        .instances
        .keys()
        .cloned()
        .collect();
    let only = filter.instance.filter(|id| !id.is_empty());
    let here = env_path(&app, &env);
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Overview" } " / " a href=(here) { (app) " / " (env) } " / logs" }
        h1 { "Logs of " (app) " in " (env) }
        p.hint { "Secret values are hidden, as in " code { "rollway logs" } ". New lines appear as instances print them." }
        nav.instances aria-label="Instances" {
            "Instance: "
            a href=(format!("{here}/logs")) aria-current=[only.is_none().then_some("page")] { "all" }
            @for id in &instances {
                " · "
                a href=(format!("{here}/logs?instance={}", encode(id))) aria-current=[(only.as_deref() == Some(id.as_str())).then_some("page")] { (id) }
            }
        }
        pre.log #log data-stream=(format!("{here}/logs/stream")) data-instance=[only.as_deref()]
            tabindex="0" aria-label="Log lines" aria-live="polite" {
            @for line in lines.iter().filter(|l| only.as_deref().is_none_or(|id| l.instance_id.as_str() == id)) {
                span.line { span.instance { (line.instance_id) } " " (line.line) "\n" }
            }
        }
    };
    html_response(
        StatusCode::OK,
        page(
            &format!("Logs of {app} in {env}"),
            Some(&viewer),
            None,
            main,
        ),
    )
}

/// The logs page's query: one instance's lines only.
#[derive(Debug, Default, Deserialize)]
pub struct LogFilter {
    #[serde(default)]
    instance: Option<String>,
}

/// `GET /apps/{app}/{env}/logs/stream`: the API's log stream (scrubbed there), behind the session.
pub async fn logs_stream(state: State<Arc<Engine>>, path: Path<(String, String)>) -> Response {
    api_logs::logs_stream(state, path).await.into_response()
}

/// `GET /apps/{app}/{env}/backups`.
pub async fn backups(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Path((app, env)): Path<(String, String)>,
) -> Response {
    let list =
        match api_backups::backups(State(engine.clone()), Path((app.clone(), env.clone()))).await {
            Ok(list) => list.0,
            Err(error) => return api_error_page(&viewer, error),
        };
    let here = env_path(&app, &env);
    let may_create = may(&viewer, Method::POST, BACKUP_ROUTE);
    let may_restore = may(&viewer, Method::POST, RESTORE_ROUTE);
    let main = html! {
        nav.crumbs aria-label="Breadcrumb" { a href="/" { "Overview" } " / " a href=(here) { (app) " / " (env) } " / backups" }
        h1 { "Backups of " (app) " in " (env) }
        @if may_create {
            p { a.button href=(format!("{here}/confirm?action=backup")) { "Take a backup" } }
        }
        @if list.is_empty() { p { "No backup yet." } } @else {
            div.scroll { table.backups {
                thead { tr { th scope="col" { "Backup" } th scope="col" { "Database" } th scope="col" { "Taken" } th scope="col" { "Release" } th scope="col" { "Why" } th scope="col" { "Size" } th scope="col" { span.sr { "Action" } } } }
                tbody { @for b in &list { tr {
                    td { code { (b.id) } } td { (b.target) } td { (when(b.created_at)) }
                    td { @if let Some(r) = b.release { "r" (r) } } td { (b.reason) } td { (b.size) " bytes" }
                    td { @if may_restore {
                        a.button.danger href=(format!("{here}/confirm?action=restore&backup={}", encode(&b.id))) { "Restore" }
                    } }
                } } }
            } }
        }
    };
    html_response(
        StatusCode::OK,
        page(
            &format!("Backups of {app} in {env}"),
            Some(&viewer),
            None,
            main,
        ),
    )
}
