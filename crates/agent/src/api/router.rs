//! Every route of the control API and the role it needs, in one place: [`routes`] is the list,
//! [`router`] builds the API from it (and tests walk the same list, so no route is forgotten).
//!
//! Roles: viewer reads; deployer deploys, rolls back, promotes, aborts and takes backups;
//! approver also approves deployments held at a gate (never one its own token started); admin
//! also manages tokens, secrets, backup restores and locks. Beside them, proxy (a proxy that
//! follows the agent) reads the desired routing and reports counters, and nothing else.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{MethodFilter, MethodRouter, get, on};

use crate::api::{
    agent, artifacts, auth, backups, backups_remote, certs, deployments, edge, error, events,
    ingress, input, locks, logs, previews, releases, secrets, status, tokens, workloads,
};
use crate::engine::Engine;
use crate::tokens::Role;

/// One route: a method on a path under `/v1`, the role it needs, its handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    pub role: Role,
    handler: MethodRouter<Arc<Engine>>,
}

/// Every `/v1` route.
pub fn routes() -> Vec<Route> {
    use Role::{Admin, Approver, Deployer, Proxy, Viewer};
    vec![
        route(Viewer, Method::GET, "/agent", agent::agent_info),
        route(
            Viewer,
            Method::GET,
            "/agent/certificate",
            agent::api_certificate,
        ),
        route(Viewer, Method::GET, "/apps", workloads::apps),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/cron",
            workloads::cron_jobs,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/cron/{job}/runs",
            workloads::cron_runs,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/cron/{job}/runs",
            workloads::run_cron_job,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/run",
            workloads::run_command,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/run/interactive",
            workloads::run_interactive,
        ),
        route(
            Admin,
            Method::DELETE,
            "/apps/{app}/environments/{env}",
            workloads::destroy,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments",
            previews::environments,
        ),
        route(
            Deployer,
            Method::DELETE,
            "/apps/{app}/previews/{env}",
            previews::destroy,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/status",
            status::status,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/releases",
            releases::releases,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/logs",
            logs::logs,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/logs/stream",
            logs::logs_stream,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/secrets",
            secrets::secrets,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/backups",
            backups::backups,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/backups/remote",
            backups_remote::remote_backups,
        ),
        route(
            Viewer,
            Method::GET,
            "/apps/{app}/environments/{env}/lock",
            locks::lock,
        ),
        route(
            Viewer,
            Method::GET,
            "/deployments/{id}",
            deployments::deployment,
        ),
        route(
            Viewer,
            Method::GET,
            "/deployments/{id}/events",
            events::deployment_events,
        ),
        route(
            Viewer,
            Method::GET,
            "/deployments/{id}/stream",
            events::deployment_stream,
        ),
        route(Viewer, Method::GET, "/events", events::events),
        route(Viewer, Method::GET, "/events/stream", events::events_stream),
        route(Viewer, Method::GET, "/metrics", agent::metrics),
        route(Viewer, Method::GET, "/certs", certs::list),
        route(Deployer, Method::POST, "/certs/{host}/renew", certs::renew),
        route(
            Deployer,
            Method::PUT,
            "/artifacts/{digest}",
            artifacts::upload_artifact,
        ),
        route(
            Deployer,
            Method::HEAD,
            "/artifacts/{digest}",
            artifacts::artifact_exists,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/deployments",
            deployments::deploy,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/rollback",
            deployments::rollback,
        ),
        route(
            Deployer,
            Method::PUT,
            "/apps/{app}/environments/{env}/maintenance",
            edge::set_maintenance,
        ),
        route(
            Deployer,
            Method::DELETE,
            "/apps/{app}/environments/{env}/maintenance",
            edge::clear_maintenance,
        ),
        route(
            Deployer,
            Method::PUT,
            "/apps/{app}/environments/{env}/pause",
            edge::pause,
        ),
        route(
            Deployer,
            Method::DELETE,
            "/apps/{app}/environments/{env}/pause",
            edge::resume,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/backups",
            backups::create_backup,
        ),
        route(
            Deployer,
            Method::POST,
            "/apps/{app}/environments/{env}/backups/verify",
            backups_remote::verify_backup,
        ),
        route(
            Deployer,
            Method::POST,
            "/deployments/{id}/promote",
            deployments::promote,
        ),
        route(
            Deployer,
            Method::POST,
            "/deployments/{id}/abort",
            deployments::abort,
        ),
        route(
            Approver,
            Method::POST,
            "/deployments/{id}/approve",
            deployments::approve,
        ),
        route(
            Admin,
            Method::PUT,
            "/apps/{app}/environments/{env}/secrets/{name}",
            secrets::set_secret,
        ),
        route(
            Admin,
            Method::DELETE,
            "/apps/{app}/environments/{env}/secrets/{name}",
            secrets::unset_secret,
        ),
        route(
            Admin,
            Method::POST,
            "/apps/{app}/environments/{env}/backups/{id}/restore",
            backups::restore_backup,
        ),
        route(Admin, Method::GET, "/tokens", tokens::tokens),
        route(Admin, Method::POST, "/tokens", tokens::create_token),
        route(Admin, Method::DELETE, "/tokens/{id}", tokens::revoke_token),
        route(Admin, Method::POST, "/proxy/upgrade", agent::upgrade_proxy),
        // Proxies that follow the agent; no other role may, and they may nothing else.
        route(Proxy, Method::GET, "/proxy/state", ingress::state_stream),
        route(Proxy, Method::POST, "/proxy/report", ingress::report),
        route(
            Admin,
            Method::DELETE,
            "/apps/{app}/environments/{env}/lock",
            locks::release_lock,
        ),
    ]
}

/// The role the route `method path` (a path pattern of [`routes`], without `/v1`) needs: how the
/// dashboard decides what a session may do, so its roles are the API's.
pub fn role_for(method: &Method, path: &str) -> Option<Role> {
    routes()
        .into_iter()
        .find(|route| route.method == *method && route.path == path)
        .map(|route| route.role)
}

fn route<H, T>(role: Role, method: Method, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<Engine>>,
    T: 'static,
{
    let filter = MethodFilter::try_from(method.clone())
        .unwrap_or_else(|_| panic!("`{method}` is not a method a route can take"));
    Route {
        method,
        path,
        role,
        handler: on(filter, handler),
    }
}

/// The API. Layers, outermost first: every error answer becomes the envelope; every request but
/// `/healthz` is authenticated before routing, so an unknown route without a token is a 401, not
/// a 404; JSON bodies are limited; path parameters are checked; then each route's role.
pub fn router(engine: Arc<Engine>) -> Router {
    router_with_trends(engine, Arc::new(crate::dashboard::Trends::default()))
}

/// [`router`], with the web dashboard's sparklines fed from `trends` (see `dashboard::trends::run`).
/// The dashboard's routes (`/`, `/login`, …) sit beside `/v1`, outside its bearer authentication
/// and JSON envelope: they authenticate by session and answer HTML.
pub fn router_with_trends(engine: Arc<Engine>, trends: Arc<crate::dashboard::Trends>) -> Router {
    let mut v1 = Router::new();
    for route in routes() {
        let role = route.role;
        v1 = v1.route(
            route.path,
            route.handler.route_layer(from_fn(move |request, next| {
                auth::require(role, request, next)
            })),
        );
    }
    let v1 = v1
        .layer(from_fn(input::check_path))
        .layer(DefaultBodyLimit::max(input::MAX_JSON_BODY));
    Router::new()
        .nest("/v1", v1)
        .fallback(error::no_route)
        .layer(from_fn_with_state(engine.clone(), auth::authenticate))
        .route("/healthz", get(agent::healthz))
        .layer(from_fn(error::envelope))
        .with_state(engine.clone())
        .merge(crate::registry::http::router(engine.clone()))
        .merge(crate::dashboard::router(engine, trends))
}

#[cfg(test)]
pub(crate) mod tests;
