//! The status of an app environment: current release, instances, weights, last deployment.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use client::wire::{InstanceView, StatusView, WeightView};

use crate::api::error::{ApiError, ApiResult};
use crate::api::views;
use crate::engine::{AppEnv, Engine};

/// What the proxy holds now, per instance id: it tells which instances are draining.
pub type Observed = std::collections::BTreeMap<String, proxy::ObservedInstanceState>;

/// `GET /v1/apps/{app}/environments/{env}/status`.
pub async fn status(
    State(engine): State<Arc<Engine>>,
    Path((app, env)): Path<(String, String)>,
) -> ApiResult<StatusView> {
    let observed = observed(&engine).await;
    status_with(&engine, app, env, &observed)
}

/// The proxy's instances now, asked once; without an answer, none are draining.
pub async fn observed(engine: &Engine) -> Observed {
    engine
        .proxy
        .client()
        .state()
        .await
        .map(|observed| {
            observed
                .routes
                .into_iter()
                .flat_map(|route| route.instances)
                .map(|instance| (instance.id, instance.state))
                .collect()
        })
        .unwrap_or_default()
}

/// The status of `app` in `env` with the proxy's instances already read (the overview reads them
/// once for every row: the proxy's answer lists every route).
pub fn status_with(
    engine: &Arc<Engine>,
    app: String,
    env: String,
    observed: &Observed,
) -> ApiResult<StatusView> {
    let known = engine.store.apps().map_err(ApiError::internal)?;
    if !known.iter().any(|(a, e, _)| *a == app && *e == env) {
        let environments: Vec<String> = known
            .iter()
            .filter(|(a, _, _)| *a == app)
            .map(|(_, e, _)| format!("`{e}`"))
            .collect();
        return Err(ApiError::not_found(if environments.is_empty() {
            format!("no app `{app}` on this agent: deploy it first (`rollway deploy --env {env}`)")
        } else {
            format!(
                "app `{app}` has no environment `{env}` on this agent; it has {}",
                environments.join(", ")
            )
        }));
    }
    let current = engine
        .store
        .current(&app, &env)
        .map_err(ApiError::internal)?;
    let runtime = engine.runtime(&AppEnv::new(app.clone(), env.clone()));
    let instances = runtime
        .instances
        .iter()
        .map(|(id, instance)| InstanceView {
            id: id.as_str().into(),
            release: instance.release,
            service: instance.service.clone(),
            port: instance.port,
            state: views::instance_state(
                instance,
                runtime
                    .weights
                    .iter()
                    .any(|(release, weight)| *release == instance.release && *weight > 0),
                observed.get(id).copied(),
                engine.drivers.status(id),
            ),
        })
        .collect();
    let deployment = engine
        .store
        .deployments(&app, &env, 1)
        .map_err(ApiError::internal)?
        .into_iter()
        .next()
        .map(|deployment| views::deployment_view(&deployment));
    let inconclusive = match &deployment {
        Some(deployment) => engine
            .store
            .events_for_deployment(&deployment.id, 0)
            .map_err(ApiError::internal)?
            .into_iter()
            .rev()
            .map(|event| event.view())
            .find(|event| {
                matches!(
                    event.deployment_event(),
                    Some(client::wire::DeploymentEvent::Inconclusive { .. })
                )
            })
            .map(|event| event.message),
        None => None,
    };
    let url = runtime
        .routes
        .first()
        .map(|route| match route.hosts.first() {
            Some(host) => format!(
                "http://{host}:{}/ (via {})",
                engine.proxy_addr.port(),
                engine.proxy_addr
            ),
            None => format!("http://{}/", engine.proxy_addr),
        });
    let app_key = crate::engine::AppEnv::new(app.clone(), env.clone());
    Ok(Json(StatusView {
        app,
        environment: env,
        current_release: current,
        url,
        instances,
        weights: runtime
            .weights
            .iter()
            .map(|(release, weight)| WeightView {
                release: *release,
                weight: *weight,
            })
            .collect(),
        deployment,
        proxy: Some(views::proxy_view(&engine.proxy.status())),
        inconclusive,
        edge: crate::api::edge::edge_view(
            &engine.env_edges().remove(&app_key).unwrap_or_default(),
            crate::engine::now_ms(),
        ),
    }))
}
