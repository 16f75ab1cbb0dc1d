//! The cluster settings: an environment's `driver`, and a service's `placement`, `max_per_node`
//! and `resources`, which only the swarm driver applies.
//!
//! Constraints are checked the way the Docker Engine reads them (`ATTRIBUTE ==|!= VALUE`, with
//! the attributes it knows), so a typo fails `rollway check` rather than leaving every task
//! pending on a cluster with no node that matches.

use serde::Serialize;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;
use crate::read::{Reader, Value, list};
use crate::units::ByteSize;

/// `[environments.X] driver`: what runs the environment's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Processes for `run` services, containers for `image` and `dockerfile` services, on the
    /// agent's own host (the default).
    #[default]
    Host,
    /// Docker Swarm services on the cluster whose manager the agent runs on.
    Swarm,
}

impl Driver {
    pub const NAMES: [&str; 2] = ["host", "swarm"];

    pub fn is_host(&self) -> bool {
        *self == Driver::Host
    }
}

/// A service's place on a cluster; empty (the default) outside the swarm driver.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Placement {
    /// Swarm placement constraints, such as `node.labels.tier == web`, in manifest order.
    /// Invariant: each is `ATTRIBUTE ==|!= VALUE` with an attribute the engine knows.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub constraints: Vec<String>,
    /// At most this many tasks of one release of the service on one node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_per_node: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        *self == Placement::default()
    }
}

/// `resources = { cpus = 0.5, memory = "512MB" }`: limits of each task (reserved too, so the
/// scheduler only places a task where they fit).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Resources {
    /// CPUs, in billionths (what the engine takes as `NanoCPUs`). Invariant: above zero.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nano_cpus: Option<u64>,
    /// Invariant: at least [`MIN_MEMORY`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<ByteSize>,
}

/// The engine refuses a memory limit below 6 MB.
pub const MIN_MEMORY: u64 = 6 * 1024 * 1024;
/// More CPUs than any one node has would leave every task pending.
const MAX_CPUS: f64 = 1024.0;

const RESOURCE_KEYS: &[&str] = &["cpus", "memory"];
/// Attributes a placement constraint may test, as the engine names them (labels: any suffix).
const ATTRIBUTES: &[&str] = &[
    "node.id",
    "node.hostname",
    "node.role",
    "node.platform.os",
    "node.platform.arch",
];
const LABEL_PREFIXES: &[&str] = &["node.labels.", "engine.labels."];
const CONSTRAINT_HELP: &str = "write `ATTRIBUTE == VALUE` or `ATTRIBUTE != VALUE`, such as `node.labels.tier == web` or `node.role == worker`";

/// `driver = "..."` of `[section]`.
pub(crate) fn driver(reader: &mut Reader, value: &Value<'_>, key_path: &str) -> Option<Driver> {
    let help = format!(
        "accepted: {}; `host` runs processes and containers on the agent's own host",
        list(&Driver::NAMES)
    );
    match value.get_ref() {
        DeValue::String(text) => match text.as_ref() {
            "host" => Some(Driver::Host),
            "swarm" => Some(Driver::Swarm),
            other => {
                let help = if matches!(other, "process" | "container") {
                    format!(
                        "`{other}` is chosen per service on the host (`run` or `image`/`dockerfile`): write `driver = \"host\"` or leave `driver` out"
                    )
                } else {
                    help
                };
                reader.invalid(
                    value.span(),
                    format!("`{key_path}` is not a driver: `{other}`"),
                    "unknown driver",
                    help,
                );
                None
            }
        },
        _ => {
            reader.invalid(
                value.span(),
                format!("`{key_path}` must be a string"),
                "expected a string",
                help,
            );
            None
        }
    }
}

/// A service's `placement`, `max_per_node` and `resources`; `None` when one is invalid (each
/// problem is reported).
pub(crate) fn placement(
    reader: &mut Reader,
    table: &DeTable<'_>,
    section: &str,
) -> Option<Placement> {
    let mut ok = true;
    let mut constraints = Vec::new();
    if let Some(value) = table.get("placement") {
        let key_path = format!("{section}.placement");
        match reader.string_array(value, &key_path) {
            Some(items) => {
                for item in items {
                    match constraint(item.get_ref()) {
                        Ok(normal) => constraints.push(normal),
                        Err(reason) => {
                            ok = false;
                            reader.error(
                                Diagnostic::new(
                                    item.span(),
                                    format!(
                                        "`{}` is not a placement constraint: {reason}",
                                        item.get_ref()
                                    ),
                                )
                                .label("invalid constraint")
                                .help(CONSTRAINT_HELP),
                            );
                        }
                    }
                }
            }
            None => ok = false,
        }
    }
    let max_per_node = match table.get("max_per_node") {
        None => None,
        Some(value) => {
            match reader.integer_in(value, &format!("{section}.max_per_node"), 1..=100) {
                Some(number) => u32::try_from(number).ok(),
                None => {
                    ok = false;
                    None
                }
            }
        }
    };
    let resources = match table.get("resources") {
        None => None,
        Some(value) => match resources(reader, value, &format!("{section}.resources")) {
            Some(resources) => Some(resources),
            None => {
                ok = false;
                None
            }
        },
    };
    ok.then_some(Placement {
        constraints,
        max_per_node,
        resources,
    })
}

fn resources(reader: &mut Reader, value: &Value<'_>, key_path: &str) -> Option<Resources> {
    let table = reader.table(
        value,
        key_path,
        "write `resources = { cpus = 0.5, memory = \"512MB\" }`",
    )?;
    reader.known_keys(table, RESOURCE_KEYS, key_path);
    let mut ok = true;
    let nano_cpus = match table.get("cpus") {
        None => None,
        Some(cpus) => match cpus_value(cpus.get_ref()) {
            Some(number) if number > 0.0 && number <= MAX_CPUS => {
                // At most 1024 * 1e9, well inside u64; rounded to whole billionths.
                Some((number * 1e9).round() as u64)
            }
            Some(_) => {
                ok = false;
                reader.invalid(
                    cpus.span(),
                    format!("`{key_path}.cpus` is out of range"),
                    "out of range",
                    format!("accepted: a number of CPUs above 0 and at most {MAX_CPUS}, such as `0.5` or `2`"),
                );
                None
            }
            None => {
                ok = false;
                reader.invalid(
                    cpus.span(),
                    format!("`{key_path}.cpus` must be a number"),
                    "expected a number",
                    "write a number of CPUs without quotes, such as `cpus = 0.5`",
                );
                None
            }
        },
    };
    let memory = match table.get("memory") {
        None => None,
        Some(memory) => match reader.byte_size(memory, &format!("{key_path}.memory")) {
            Some(size) if size.bytes() >= MIN_MEMORY => Some(size),
            Some(_) => {
                ok = false;
                reader.invalid(
                    memory.span(),
                    format!("`{key_path}.memory` is below the engine's minimum of 6MiB"),
                    "too small",
                    "accepted: a size of at least `\"6MiB\"`, such as `\"512MB\"`",
                );
                None
            }
            None => {
                ok = false;
                None
            }
        },
    };
    if ok && nano_cpus.is_none() && memory.is_none() {
        reader.invalid(
            value.span(),
            format!("`{key_path}` sets no limit"),
            "empty",
            "write `cpus`, `memory` or both, or remove `resources`",
        );
        return None;
    }
    ok.then_some(Resources { nano_cpus, memory })
}

fn cpus_value(value: &DeValue<'_>) -> Option<f64> {
    match value {
        DeValue::Float(float) => float.as_str().replace('_', "").parse::<f64>().ok(),
        DeValue::Integer(integer) => integer.as_str().replace('_', "").parse::<f64>().ok(),
        _ => None,
    }
}

/// A constraint in the engine's syntax, normalised to `ATTRIBUTE OP VALUE` with single spaces,
/// or why it is not one.
pub(crate) fn constraint(text: &str) -> Result<String, String> {
    let (attribute, operator, value) = match (text.find("=="), text.find("!=")) {
        (Some(at), None) => (&text[..at], "==", &text[at + 2..]),
        (None, Some(at)) => (&text[..at], "!=", &text[at + 2..]),
        (Some(_), Some(_)) => return Err("it has both `==` and `!=`".to_owned()),
        (None, None) => return Err("it has no `==` or `!=`".to_owned()),
    };
    let attribute = attribute.trim();
    let value = value.trim();
    if value.contains("==") || value.contains("!=") {
        return Err("it has more than one operator".to_owned());
    }
    if value.is_empty() {
        return Err(format!("nothing to compare `{attribute}` with"));
    }
    let known = ATTRIBUTES.contains(&attribute)
        || LABEL_PREFIXES.iter().any(|prefix| {
            attribute
                .strip_prefix(prefix)
                .is_some_and(|label| !label.is_empty() && !label.contains(char::is_whitespace))
        });
    if !known {
        return Err(format!(
            "`{attribute}` is not an attribute the engine knows (accepted: {}, `node.labels.NAME`, `engine.labels.NAME`)",
            list(ATTRIBUTES)
        ));
    }
    Ok(format!("{attribute} {operator} {value}"))
}

/// Rules between an environment's driver and its services: the swarm driver runs images only,
/// and the cluster settings need the swarm driver. `environment` is `None` for a manifest that
/// declares no environment (its shared settings run on the host).
pub(crate) fn check_driver(
    reader: &mut Reader,
    driver: Driver,
    driver_span: std::ops::Range<usize>,
    layered: &DeTable<'_>,
    services: &[crate::schema::Service],
    environment: Option<&str>,
) {
    let service_table = |name: &str| {
        layered
            .get("services")
            .and_then(|services| services.get_ref().as_table())
            .and_then(|services| services.get(name))
            .and_then(|service| service.get_ref().as_table())
    };
    for service in services {
        let table = service_table(&service.name);
        match driver {
            Driver::Swarm => {
                if let crate::schema::ServiceSource::Run { .. } = service.source {
                    let span = table
                        .and_then(|table| table.get("run"))
                        .map_or(driver_span.clone(), |run| run.span());
                    reader.invalid(
                        span,
                        format!(
                            "service `{}` has only `run`, but the swarm driver runs images",
                            service.name
                        ),
                        "no image",
                        "add `dockerfile = \"Dockerfile\"` (built by the agent and pushed to the cluster's registry) or `image = \"...\"`; `run` then replaces the image's command",
                    );
                }
            }
            Driver::Host => {
                if service.placement.is_empty() {
                    continue;
                }
                let key = ["placement", "max_per_node", "resources"]
                    .into_iter()
                    .find(|key| table.is_some_and(|table| table.contains_key(*key)))
                    .unwrap_or("placement");
                let span = table
                    .and_then(|table| table.get(key))
                    .map_or(driver_span.clone(), |value| value.span());
                let help = match environment {
                    Some(name) => format!(
                        "add `driver = \"swarm\"` under `[environments.{name}]`, or move `{key}` into the environment that runs on the swarm (`[environments.NAME.services.{}]`)",
                        service.name
                    ),
                    None => format!(
                        "declare the environment that runs on the swarm, with `driver = \"swarm\"`, and move `{key}` into it (`[environments.NAME.services.{}]`)",
                        service.name
                    ),
                };
                let where_ = environment.map_or(String::new(), |name| format!(" in `{name}`"));
                reader.invalid(
                    span,
                    format!(
                        "`services.{}.{key}` only applies with the swarm driver, and it is not used{where_}",
                        service.name
                    ),
                    "needs `driver = \"swarm\"`",
                    help,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests;
