//! Actions: rollback, promote, abort, approve, take a backup, restore one. Each is two steps, so a
//! click never acts alone: `GET …/confirm` shows what will happen (naming the release, or the
//! database and the backup's time) with a form; `POST …/act` (CSRF checked by the session layer)
//! asks the API's route table for the role the action's route needs, then calls that route's own
//! handler, and sends the browser back to the page the action concerns (so Back and reload never
//! post twice).

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use client::wire::{ReleaseNumber, RollbackRequest};
use maud::html;
use serde::Deserialize;

use super::pages::{
    ABORT_ROUTE, APPROVE_ROUTE, BACKUP_ROUTE, PROMOTE_ROUTE, RESTORE_ROUTE, ROLLBACK_ROUTE,
    env_path, when,
};
use super::{Early, Viewer, api_error_page, error_page, html_response, page};
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ApiJson};
use crate::api::router::role_for;
use crate::api::{backups as api_backups, deployments as api_deployments, input};
use crate::engine::Engine;

/// An action's form fields, as posted (and as the confirmation page's query).
#[derive(Debug, Default, Deserialize)]
pub struct ActionForm {
    #[serde(default)]
    action: String,
    #[serde(default)]
    to: Option<String>,
    #[serde(default)]
    deployment: Option<String>,
    #[serde(default)]
    backup: Option<String>,
}

/// What the dashboard can do to an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Rollback { to: ReleaseNumber },
    Promote { deployment: String },
    Abort { deployment: String },
    Approve { deployment: String },
    Backup,
    Restore { backup: String },
}

impl Action {
    fn parse(form: &ActionForm) -> Result<Action, String> {
        let field = |value: &Option<String>, name: &str| {
            value
                .clone()
                .filter(|v| !v.is_empty())
                .ok_or_else(|| format!("action `{}` needs field `{name}`", form.action))
        };
        Ok(match form.action.as_str() {
            "rollback" => Action::Rollback {
                to: field(&form.to, "to")?
                    .parse()
                    .map_err(|error| format!("field `to`: {error}"))?,
            },
            "promote" => Action::Promote {
                deployment: field(&form.deployment, "deployment")?,
            },
            "abort" => Action::Abort {
                deployment: field(&form.deployment, "deployment")?,
            },
            "approve" => Action::Approve {
                deployment: field(&form.deployment, "deployment")?,
            },
            "backup" => Action::Backup,
            "restore" => Action::Restore {
                backup: field(&form.backup, "backup")?,
            },
            other => {
                return Err(format!(
                    "unknown action `{other}`; expected rollback, promote, abort, approve, backup or restore"
                ));
            }
        })
    }

    /// The API route this action is (its method is POST): its role is the action's.
    pub fn route(&self) -> &'static str {
        match self {
            Action::Rollback { .. } => ROLLBACK_ROUTE,
            Action::Promote { .. } => PROMOTE_ROUTE,
            Action::Abort { .. } => ABORT_ROUTE,
            Action::Approve { .. } => APPROVE_ROUTE,
            Action::Backup => BACKUP_ROUTE,
            Action::Restore { .. } => RESTORE_ROUTE,
        }
    }

    /// The confirmation button's words.
    fn verb(&self) -> &'static str {
        match self {
            Action::Rollback { .. } => "Roll back",
            Action::Promote { .. } => "Promote",
            Action::Abort { .. } => "Abort",
            Action::Approve { .. } => "Approve",
            Action::Backup => "Take the backup",
            Action::Restore { .. } => "Restore",
        }
    }

    fn fields(&self) -> Vec<(&'static str, String)> {
        match self {
            Action::Rollback { to } => vec![("action", "rollback".into()), ("to", to.to_string())],
            Action::Promote { deployment } => {
                vec![
                    ("action", "promote".into()),
                    ("deployment", deployment.clone()),
                ]
            }
            Action::Abort { deployment } => {
                vec![
                    ("action", "abort".into()),
                    ("deployment", deployment.clone()),
                ]
            }
            Action::Approve { deployment } => {
                vec![
                    ("action", "approve".into()),
                    ("deployment", deployment.clone()),
                ]
            }
            Action::Backup => vec![("action", "backup".into())],
            Action::Restore { backup } => {
                vec![("action", "restore".into()), ("backup", backup.clone())]
            }
        }
    }
}

/// The checks before an action is shown or done: names the API accepts, a known action, and the
/// role the API's route needs. Answers the page to show instead when one fails.
fn admit(viewer: &Viewer, app: &str, env: &str, form: &ActionForm) -> Result<Action, Early> {
    if let Err(error) = input::app_name(app).and_then(|()| input::environment_name(env)) {
        return Err(error_page(StatusCode::BAD_REQUEST, Some(viewer), &error.to_string()).into());
    }
    let action = Action::parse(form).map_err(|message| {
        Early::from(error_page(StatusCode::BAD_REQUEST, Some(viewer), &message))
    })?;
    let Some(needed) = role_for(&Method::POST, action.route()) else {
        return Err(error_page(
            StatusCode::INTERNAL_SERVER_ERROR,
            Some(viewer),
            &format!("the API has no route `POST {}`", action.route()),
        )
        .into());
    };
    if !viewer.may(needed) {
        return Err(api_error_page(
            viewer,
            ApiError::forbidden(needed.as_str(), viewer.caller.role.as_str()),
        )
        .into());
    }
    Ok(action)
}

/// A deployment of this environment, or the page saying it is not one.
fn own_deployment(
    engine: &Engine,
    viewer: &Viewer,
    app: &str,
    env: &str,
    id: &str,
) -> Result<crate::store::Deployment, Early> {
    engine
        .store
        .deployment(id)
        .map_err(|error| Early::from(api_error_page(viewer, ApiError::internal(error))))?
        .filter(|d| d.app == app && d.environment == env)
        .ok_or_else(|| {
            api_error_page(
                viewer,
                ApiError::not_found(format!("no deployment `{id}` of `{app}` in `{env}`")),
            )
            .into()
        })
}

/// `GET /apps/{app}/{env}/confirm`: what the action will do, and the form that does it.
pub async fn confirm(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Path((app, env)): Path<(String, String)>,
    Query(form): Query<ActionForm>,
) -> Response {
    let action = match admit(&viewer, &app, &env, &form) {
        Ok(action) => action,
        Err(response) => return response.into_response(),
    };
    let here = env_path(&app, &env);
    let (question, detail, back) = match &action {
        Action::Rollback { to } => {
            let release = engine.store.release(&app, &env, *to).ok().flatten();
            let Some(release) = release else {
                return api_error_page(
                    &viewer,
                    ApiError::not_found(format!("no release r{to} of `{app}` in `{env}`")),
                );
            };
            (
                format!("Roll back {app} in {env} to release r{to}?"),
                format!(
                    "Traffic moves to r{to} (artifact {}, deployed by {} at {}) with its own config and secrets.",
                    release.artifact.chars().take(12).collect::<String>(),
                    release.created_by,
                    when(release.created_at)
                ),
                here.clone(),
            )
        }
        Action::Promote { deployment }
        | Action::Abort { deployment }
        | Action::Approve { deployment } => {
            let d = match own_deployment(&engine, &viewer, &app, &env, deployment) {
                Ok(d) => d,
                Err(response) => return response.into_response(),
            };
            let verb = match &action {
                Action::Promote { .. } => "Promote",
                Action::Abort { .. } => "Abort",
                _ => "Approve",
            };
            (
                format!(
                    "{verb} the deployment of r{} to {app} in {env}?",
                    d.to_release
                ),
                format!(
                    "Deployment {} by {}, now {}.{}",
                    d.id,
                    d.created_by,
                    d.state,
                    match &action {
                        Action::Promote { .. } => " The canary takes all traffic.",
                        Action::Abort { .. } => " Traffic goes back to the earlier release.",
                        _ => " It goes on to the release command and the new instances.",
                    }
                ),
                here.clone(),
            )
        }
        Action::Backup => (
            format!("Take a backup of the database of {app} in {env}?"),
            "The database the release command uses is copied now; it can be restored later."
                .to_owned(),
            format!("{here}/backups"),
        ),
        Action::Restore { backup } => {
            let record = engine
                .store
                .backup(backup)
                .ok()
                .flatten()
                .filter(|b| b.app == app && b.environment == env);
            let Some(record) = record else {
                return api_error_page(
                    &viewer,
                    ApiError::not_found(format!("no backup `{backup}` of `{app}` in `{env}`")),
                );
            };
            (
                format!(
                    "Restore database {} from the backup taken {}?",
                    record.target,
                    when(record.created_at)
                ),
                format!(
                    "Backup {} ({} bytes) replaces what {} holds now for {app} in {env}.",
                    record.id, record.size, record.target
                ),
                format!("{here}/backups"),
            )
        }
    };
    let main = html! {
        h1 { "Confirm" }
        form.confirm method="post" action=(format!("{here}/act")) {
            p.question #question { (question) }
            p { (detail) }
            input type="hidden" name="csrf" value=(viewer.csrf);
            @for (name, value) in action.fields() {
                input type="hidden" name=(name) value=(value);
            }
            button #confirm type="submit" autofocus { (action.verb()) }
            " "
            a href=(back) { "Cancel" }
        }
    };
    html_response(StatusCode::OK, page("Confirm", Some(&viewer), None, main))
}

/// `POST /apps/{app}/{env}/act`: the action, through the API route's own handler.
pub async fn act(
    State(engine): State<Arc<Engine>>,
    Extension(viewer): Extension<Viewer>,
    Extension(caller): Extension<Caller>,
    Path((app, env)): Path<(String, String)>,
    axum::Form(form): axum::Form<ActionForm>,
) -> Response {
    let action = match admit(&viewer, &app, &env, &form) {
        Ok(action) => action,
        Err(response) => return response.into_response(),
    };
    let here = env_path(&app, &env);
    let done: Result<String, ApiError> = match action {
        Action::Rollback { to } => api_deployments::rollback(
            State(engine.clone()),
            Extension(caller),
            Path((app.clone(), env.clone())),
            ApiJson(RollbackRequest { to: Some(to) }),
        )
        .await
        .map(|_| here.clone()),
        Action::Promote { deployment } => {
            if let Err(response) = own_deployment(&engine, &viewer, &app, &env, &deployment) {
                return response.into_response();
            }
            api_deployments::promote(State(engine.clone()), Extension(caller), Path(deployment))
                .await
                .map(|_| here.clone())
        }
        Action::Abort { deployment } => {
            if let Err(response) = own_deployment(&engine, &viewer, &app, &env, &deployment) {
                return response.into_response();
            }
            api_deployments::abort(State(engine.clone()), Extension(caller), Path(deployment))
                .await
                .map(|_| here.clone())
        }
        Action::Approve { deployment } => {
            if let Err(response) = own_deployment(&engine, &viewer, &app, &env, &deployment) {
                return response.into_response();
            }
            api_deployments::approve(State(engine.clone()), Extension(caller), Path(deployment))
                .await
                .map(|_| here.clone())
        }
        Action::Backup => api_backups::create_backup(
            State(engine.clone()),
            Extension(caller),
            Path((app.clone(), env.clone())),
        )
        .await
        .map(|_| format!("{here}/backups")),
        Action::Restore { backup } => api_backups::restore_backup(
            State(engine.clone()),
            Extension(caller),
            Path((app.clone(), env.clone(), backup)),
        )
        .await
        .map(|_| format!("{here}/backups")),
    };
    match done {
        Ok(next) => Redirect::to(&next).into_response(),
        Err(error) => api_error_page(&viewer, error),
    }
}
