//! Which hosts and paths the apps and environments on this agent claim, and whether a release's
//! routes would take one that another app or environment already has.
//!
//! The rule is the proxy's own (`DesiredState::problems`: one route per host and path, "any host"
//! counting as a host of its own), applied before anything moves, so a conflict is refused at the
//! start of a deploy instead of failing at the traffic switch. A claim is held by the routes that
//! serve now and by every deployment still in flight.

use std::collections::BTreeMap;

use proxy::{DesiredRoute, DesiredState, Problem};

use crate::deploy::spec;
use crate::engine::{AppEnv, Engine, RouteInfo};
use crate::store::StoreError;

/// A host and path that a release would route and that another app or environment already does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "route `{service}` of `{app}` in `{environment}` answers {host} on path `{path}`, which `{other_service}` of `{other_app}` in `{other_environment}` already routes; {help}"
)]
pub struct RouteConflict {
    pub app: String,
    pub environment: String,
    pub service: String,
    /// `any host` or `host \`name\``.
    pub host: String,
    pub path: String,
    pub other_app: String,
    pub other_environment: String,
    pub other_service: String,
    /// What to add to the manifest.
    pub help: String,
}

/// The first conflict of `routes` (the release `key` would serve) with every other app and
/// environment: their current routes and the targets of their deployments in flight.
pub fn find_conflict(
    engine: &Engine,
    key: &AppEnv,
    routes: &[RouteInfo],
) -> Result<Option<RouteConflict>, StoreError> {
    let mut claims: BTreeMap<AppEnv, Vec<RouteInfo>> = engine
        .runtimes
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .iter()
        .filter(|(other, runtime)| *other != key && !runtime.routes.is_empty())
        .map(|(other, runtime)| (other.clone(), runtime.routes.clone()))
        .collect();
    for deployment in engine.store.unfinished_deployments()? {
        let other = AppEnv::new(deployment.app.clone(), deployment.environment.clone());
        if &other == key {
            continue;
        }
        // A release that no longer resolves claims nothing; its deployment fails on its own.
        let Some(release) = engine.store.release(
            &deployment.app,
            &deployment.environment,
            deployment.to_release,
        )?
        else {
            continue;
        };
        let Ok(config) = serde_json::from_str::<spec::ReleaseConfig>(&release.config_json) else {
            continue;
        };
        if let Ok(resolved) = spec::resolve(&config) {
            claims
                .entry(other)
                .or_default()
                .extend(spec::routes(&resolved));
        }
    }
    Ok(conflict(&claims, key, routes))
}

/// The pure part: `claims` of the others, then `routes` of `key`, judged by the proxy's rules.
pub fn conflict(
    claims: &BTreeMap<AppEnv, Vec<RouteInfo>>,
    key: &AppEnv,
    routes: &[RouteInfo],
) -> Option<RouteConflict> {
    // Route name → (app, environment, service). Ours come last, so a conflict names ours second.
    let mut owners: BTreeMap<String, (AppEnv, String)> = BTreeMap::new();
    let mut desired = DesiredState { routes: Vec::new() };
    let others = claims
        .iter()
        .filter(|(other, _)| *other != key)
        .flat_map(|(other, routes)| routes.iter().map(move |route| (other, route)));
    for (owner, route) in others.chain(routes.iter().map(|route| (key, route))) {
        // Two routes of one claim cannot be told apart by name otherwise (several deployments).
        let name = format!(
            "{}/{}/{}#{}",
            owner.app,
            owner.environment,
            route.service,
            desired.routes.len()
        );
        owners.insert(name.clone(), (owner.clone(), route.service.clone()));
        let mut claim = DesiredRoute::new(name);
        claim.hosts = route.hosts.clone();
        claim.paths = route.paths.clone();
        claim.drain_timeout_ms = 0;
        desired.routes.push(claim);
    }
    desired.problems().into_iter().find_map(|problem| {
        let Problem::RoutedTwice {
            host,
            path,
            first,
            second,
        } = problem
        else {
            return None;
        };
        let ((first_key, first_service), (second_key, second_service)) =
            (owners.get(&first)?, owners.get(&second)?);
        if second_key != key || first_key == key {
            return None;
        }
        let help = if first_key.app == key.app {
            // The same app in two environments: each environment needs its own host.
            format!(
                "add `routes = {{ {second_service} = {{ hosts = [\"{}-{}.localhost\"] }} }}` under [environments.{}]",
                key.app, key.environment, key.environment
            )
        } else if host == "*" {
            format!(
                "add `hosts = [\"{}.localhost\"]` under [routes.{second_service}]",
                key.app
            )
        } else {
            format!(
                "choose another host or path under [routes.{second_service}], or take `{}` off `{host}`",
                first_key.app
            )
        };
        Some(RouteConflict {
            app: key.app.clone(),
            environment: key.environment.clone(),
            service: second_service.clone(),
            host: if host == "*" {
                "any host".to_owned()
            } else {
                format!("host `{host}`")
            },
            path,
            other_app: first_key.app.clone(),
            other_environment: first_key.environment.clone(),
            other_service: first_service.clone(),
            help,
        })
    })
}

#[cfg(test)]
mod tests;
