//! Environments: layering each environment's settings over the shared ones, and what one
//! environment requires before a deploy may start.
//!
//! Layering is done on the spanned TOML tree (tables merge key by key, any other value replaces),
//! then the layered tree is validated like the shared one, so an error in an environment's
//! override points at the override.

use std::ops::Range;

use serde::Serialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::interpolate::{is_env_name, references};
use crate::read::{Reader, list, suggest};
use crate::schema::Config;
use crate::swarm::{self, Driver};
use crate::validate::{self, is_slug};

/// Keys an environment may set besides the sections it overrides.
const ENVIRONMENT_ONLY_KEYS: &[&str] = &["secrets", "approval", "driver"];
/// Sections an environment may override.
const OVERRIDABLE: &[&str] = &[
    "build", "services", "release", "strategy", "analysis", "routes", "env", "alerts", "flags",
    "backup", "cron",
];

/// One environment: where it deploys, what it must have, and its layered settings.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Environment {
    pub name: String,
    /// Secret names that must be set before a deploy starts.
    pub secrets: Vec<String>,
    /// A deploy waits at `AwaitingApproval` until `rollway approve`.
    pub approval: bool,
    pub driver: Driver,
    pub config: Config,
}

/// The effective manifest for one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ResolvedManifest {
    pub environment: String,
    pub secrets: Vec<String>,
    pub approval: bool,
    /// What runs the instances; left out of the JSON when it is the host's default.
    #[serde(skip_serializing_if = "Driver::is_host")]
    pub driver: Driver,
    #[serde(flatten)]
    pub config: Config,
}

/// What must be set (on the agent, as secrets) before this environment can be deployed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequiredConfig {
    /// Names listed under `secrets` for the environment.
    pub secrets: Vec<String>,
    /// `${NAME}` references in env values, with where each is used (`env.DATABASE_URL`).
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reference {
    pub name: String,
    pub used_by: Vec<String>,
}

impl RequiredConfig {
    /// Every required name, listed secrets first, without duplicates.
    pub fn names(&self) -> Vec<String> {
        let mut names = self.secrets.clone();
        for reference in &self.references {
            if !names.contains(&reference.name) {
                names.push(reference.name.clone());
            }
        }
        names
    }

    /// The required names for which `is_set` answers false, in order.
    pub fn missing(&self, is_set: impl Fn(&str) -> bool) -> Vec<String> {
        self.names()
            .into_iter()
            .filter(|name| !is_set(name))
            .collect()
    }
}

/// Something valid that will likely bite later: `rollway check` prints it, and a deploy goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Warning {
    #[error(
        "route `{service}` in `{environment}` answers every host, so no other app or environment can be routed beside it on the same agent; add `hosts = [\"{suggestion}\"]` under [routes.{service}] (or under [environments.{environment}])"
    )]
    AnyHost {
        environment: String,
        service: String,
        suggestion: String,
    },
    #[error(
        "alerts are off in `{environment}`: the webhook secret `{secret}` is not set; set it with `rollway secrets set {secret} --env {environment}`"
    )]
    WebhookSecretMissing { environment: String, secret: String },
}

impl ResolvedManifest {
    /// What `check` warns about without asking an agent: routes that answer every host.
    pub fn warnings(&self, app: &str) -> Vec<Warning> {
        self.config
            .routes
            .iter()
            .filter(|route| route.hosts.is_empty())
            .map(|route| Warning::AnyHost {
                environment: self.environment.clone(),
                service: route.service.clone(),
                suggestion: if self.environment == "development" {
                    format!("{app}.localhost")
                } else {
                    format!("{app}-{}.localhost", self.environment)
                },
            })
            .collect()
    }

    /// The secret naming the alerts webhook, when alerts are configured.
    pub fn alerts_webhook(&self) -> Option<&str> {
        self.config
            .alerts
            .as_ref()
            .and_then(|alerts| alerts.webhook.as_deref())
    }

    /// Alerts that would vanish: the webhook's secret, when `is_set` says it is not set.
    pub fn webhook_warning(&self, is_set: impl Fn(&str) -> bool) -> Option<Warning> {
        let secret = self.alerts_webhook()?;
        (!is_set(secret)).then(|| Warning::WebhookSecretMissing {
            environment: self.environment.clone(),
            secret: secret.to_owned(),
        })
    }

    /// Secrets listed for the environment plus every `${NAME}` the env values reference.
    pub fn required_config(&self) -> RequiredConfig {
        let mut found: Vec<Reference> = Vec::new();
        let mut note =
            |name: String, used_by: String| match found.iter_mut().find(|r| r.name == name) {
                Some(reference) => reference.used_by.push(used_by),
                None => found.push(Reference {
                    name,
                    used_by: vec![used_by],
                }),
            };
        for (key, value) in &self.config.env {
            for name in references(value).unwrap_or_default() {
                note(name, format!("env.{key}"));
            }
        }
        for service in &self.config.services {
            for (key, value) in &service.env {
                for name in references(value).unwrap_or_default() {
                    note(name, format!("services.{}.env.{key}", service.name));
                }
            }
        }
        for route in &self.config.routes {
            if let crate::schema::RouteTls::Given { cert, key } = &route.tls {
                note(cert.clone(), format!("routes.{}.tls.cert", route.service));
                note(key.clone(), format!("routes.{}.tls.key", route.service));
            }
        }
        RequiredConfig {
            secrets: self.secrets.clone(),
            references: found,
        }
    }
}

/// Reads the `environments` table: each environment's own keys, and its layered config.
pub(crate) fn environments(reader: &mut Reader, root: &DeTable<'_>) -> Vec<Environment> {
    let Some(value) = root.get("environments") else {
        return Vec::new();
    };
    let Some(table) = reader.table(value, "environments", "write `[environments.production]`")
    else {
        return Vec::new();
    };
    let base = shared_tree(root);
    let mut environments = Vec::with_capacity(table.len());
    for (key, value) in table.iter() {
        let name: &str = key.get_ref();
        let section = format!("environments.{name}");
        if !is_slug(name) {
            reader.invalid(
                key.span(),
                format!("`{name}` is not a valid environment name"),
                "invalid name",
                "accepted: lowercase letters, digits and `-`, starting with a letter",
            );
            continue;
        }
        if name == crate::preview::PREVIEW_LAYER {
            // Not an environment: the layer of every preview, over its base (`preview.rs`).
            continue;
        }
        if let Some(environment) = layer(reader, &base, name, &section, value, None) {
            environments.push(environment);
        }
    }
    environments
}

/// The shared settings: every top-level table but `environments`.
pub(crate) fn shared_tree<'i>(root: &DeTable<'i>) -> DeTable<'i> {
    root.iter()
        .filter(|(key, _)| key.get_ref() != "environments")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// `base` with the overridable sections of `overlay` layered on (an environment's own keys left out).
pub(crate) fn layered<'i>(base: &DeTable<'i>, overlay: &DeTable<'i>) -> DeTable<'i> {
    let mut layered = base.clone();
    for (overlay_key, overlay_value) in overlay.iter() {
        if OVERRIDABLE.contains(&overlay_key.get_ref().as_ref()) {
            merge_entry(&mut layered, overlay_key, overlay_value);
        }
    }
    layered
}

/// One environment `name`: the overlay `value` (the `[section]` table) checked and layered over
/// `base`. `inherited` is the environment a preview layers over: its secrets, approval and driver
/// hold unless the overlay sets them.
pub(crate) fn layer<'i>(
    reader: &mut Reader,
    base: &DeTable<'i>,
    name: &str,
    section: &str,
    value: &Spanned<DeValue<'i>>,
    inherited: Option<&Environment>,
) -> Option<Environment> {
    let overlay = reader.table(value, section, &format!("write `[{section}]`"))?;
    let mut ok = true;
    for overlay_key in overlay.keys() {
        let overlay_name: &str = overlay_key.get_ref();
        if ENVIRONMENT_ONLY_KEYS.contains(&overlay_name) || OVERRIDABLE.contains(&overlay_name) {
            continue;
        }
        ok = false;
        let mut accepted: Vec<&str> = ENVIRONMENT_ONLY_KEYS.to_vec();
        accepted.extend_from_slice(OVERRIDABLE);
        let help = if overlay_name == "agents" {
            "remove it: a deploy goes to the agent the CLI talks to (`--agent`, `ROLLWAY_AGENT`); several hosts are an existing cluster engine's job (`driver = \"swarm\"`), not a list of agents".to_owned()
        } else if overlay_name == "app" {
            "the app is the same in every environment; remove `app` here".to_owned()
        } else if validate::SERVICE_KEYS.contains(&overlay_name) {
            format!("service settings go under the service: `[{section}.services.NAME]`")
        } else {
            match suggest(overlay_name, accepted.iter().copied()) {
                Some(close) => format!("did you mean `{close}`?"),
                None => format!("accepted keys: {}", list(&accepted)),
            }
        };
        reader.invalid(
            overlay_key.span(),
            format!("unknown key `{overlay_name}` in `[{section}]`"),
            "unknown key",
            help,
        );
    }
    let approval = overlay
        .get("approval")
        .and_then(|value| match value.get_ref() {
            DeValue::Boolean(flag) => Some(*flag),
            _ => {
                reader.invalid(
                    value.span(),
                    format!("`{section}.approval` must be `true` or `false`"),
                    "expected a boolean",
                    "write `approval = true` to hold deploys until `rollway approve`",
                );
                None
            }
        })
        .unwrap_or(inherited.is_some_and(|base| base.approval));
    let secrets = overlay
        .get("secrets")
        .and_then(|value| reader.string_array(value, &format!("{section}.secrets")))
        .unwrap_or_default();
    let driver_value = overlay.get("driver");
    let driver = match driver_value {
        None => Some(inherited.map_or(Driver::Host, |base| base.driver)),
        Some(value) => swarm::driver(reader, value, &format!("{section}.driver")),
    };
    let driver_span = driver_value.map_or(value.span(), |value| value.span());
    let mut secret_names: Vec<String> =
        inherited.map_or_else(Vec::new, |base| base.secrets.clone());
    let own_from = secret_names.len();
    for secret in &secrets {
        let secret_name = secret.get_ref();
        if !is_env_name(secret_name) {
            ok = false;
            reader.invalid(secret.span(), format!("`{secret_name}` is not a valid secret name"), "invalid name", "secrets are handed to the app as variables: letters, digits and `_`, not starting with a digit");
        } else if secret_names[own_from..].contains(secret_name) {
            reader.invalid(
                secret.span(),
                format!("secret `{secret_name}` is listed twice"),
                "duplicate",
                "list each secret once",
            );
        } else if !secret_names.contains(secret_name) {
            secret_names.push(secret_name.clone());
        }
    }
    let layered = layered(base, overlay);
    let config = validate::config(reader, &layered, value.span());
    let (Some(config), Some(driver), true) = (config, driver, ok) else {
        return None;
    };
    check_environment(reader, name, &config, &secret_names, value.span());
    swarm::check_driver(
        reader,
        driver,
        driver_span,
        &layered,
        &config.services,
        Some(name),
    );
    Some(Environment {
        name: name.to_owned(),
        secrets: secret_names,
        approval,
        driver,
        config,
    })
}

/// Rules that need both the layered config and the environment's own keys.
fn check_environment(
    reader: &mut Reader,
    name: &str,
    config: &Config,
    secrets: &[String],
    span: Range<usize>,
) {
    if let Some(remote) = &config.backup.remote {
        for (key, secret) in [
            ("access_key_id", &remote.access_key_id),
            ("secret_access_key", &remote.secret_access_key),
        ] {
            if !secrets.contains(secret) {
                reader.invalid(
                    span.clone(),
                    format!("`backup.{key}` names the secret `{secret}`, which environment `{name}` does not list in `secrets`"),
                    "backup credentials unknown",
                    format!("add `{secret}` to `secrets` of `[environments.{name}]` and set it with `rollway secrets set {secret} --env {name}`"),
                );
            }
        }
    }
    if let Some(credentials) = config
        .build
        .as_ref()
        .and_then(|build| build.registry.as_ref())
        .and_then(|registry| registry.credentials.as_ref())
    {
        for (key, secret) in [
            ("registry_user", &credentials.user),
            ("registry_password", &credentials.password),
        ] {
            if !secrets.contains(secret) {
                reader.invalid(
                    span.clone(),
                    format!("`build.{key}` names the secret `{secret}`, which environment `{name}` does not list in `secrets`"),
                    "registry credentials unknown",
                    format!("add `{secret}` to `secrets` of `[environments.{name}]` and set it with `rollway secrets set {secret} --env {name}`"),
                );
            }
        }
    }
    let backs_up = config
        .release
        .as_ref()
        .is_some_and(|release| release.backup.is_some());
    if !backs_up && (config.backup.remote.is_some() || config.backup.verify.is_some()) {
        reader.invalid(
            span.clone(),
            format!("`[backup]` of environment `{name}` has a remote or a verify command, but no database to back up"),
            "no database named",
            "add `backup = \"DATABASE_URL\"` (the variable holding the database URL) to `[release]`",
        );
    }
    if let Some(backup) = config
        .release
        .as_ref()
        .and_then(|release| release.backup.as_ref())
    {
        let in_env = config.env.iter().any(|(key, _)| key == backup);
        if !in_env && !secrets.contains(backup) {
            reader.invalid(
                span,
                format!("`release.backup` names `{backup}`, which environment `{name}` neither sets in `env` nor lists in `secrets`"),
                "backup target unknown",
                format!("add `{backup}` to `[env]` or to `secrets` of `[environments.{name}]`"),
            );
        }
    }
}

/// Layers `value` over the entry `key` of `table`: tables merge key by key, anything else replaces.
fn merge_entry<'i>(
    table: &mut DeTable<'i>,
    key: &Spanned<std::borrow::Cow<'i, str>>,
    value: &Spanned<DeValue<'i>>,
) {
    let name: &str = key.get_ref();
    match (table.get_mut(name), value.get_ref()) {
        (Some(existing), DeValue::Table(overlay)) if existing.get_ref().is_table() => {
            if let DeValue::Table(existing_table) = existing.get_mut() {
                for (overlay_key, overlay_value) in overlay.iter() {
                    merge_entry(existing_table, overlay_key, overlay_value);
                }
            }
        }
        _ => {
            table.insert(key.clone(), value.clone());
        }
    }
}
