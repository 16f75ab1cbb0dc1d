//! The parity report: every effective setting that differs between environments.
//!
//! Settings are compared after layering and defaults, so `replicas = 1` written out and a
//! `replicas` left at its default of 1 are the same setting.

use serde::Serialize;
use serde_json::Value;

use crate::resolve::ResolvedManifest;

/// What differs between environments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParityReport {
    /// Column order of `Difference::values`.
    pub environments: Vec<String>,
    /// Invariant: sorted by setting; each has at least two distinct values.
    pub differences: Vec<Difference>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Dotted path such as `services.web.replicas`.
    pub setting: String,
    /// One per environment; `None` where the environment does not have the setting at all.
    pub values: Vec<Option<String>>,
}

impl ParityReport {
    pub fn new(resolved: &[ResolvedManifest]) -> Self {
        let flattened: Vec<Vec<(String, String)>> = resolved
            .iter()
            .map(|manifest| {
                let mut out = Vec::new();
                let value = serde_json::to_value(manifest).unwrap_or(Value::Null);
                flatten("", &value, &mut out);
                out.retain(|(setting, _)| setting != "environment");
                out
            })
            .collect();
        let mut settings: Vec<&String> = flattened
            .iter()
            .flatten()
            .map(|(setting, _)| setting)
            .collect();
        settings.sort();
        settings.dedup();
        let differences = settings
            .into_iter()
            .filter_map(|setting| {
                let values: Vec<Option<String>> = flattened
                    .iter()
                    .map(|pairs| {
                        pairs
                            .iter()
                            .find(|(candidate, _)| candidate == setting)
                            .map(|(_, value)| value.clone())
                    })
                    .collect();
                let first = &values[0];
                values
                    .iter()
                    .any(|value| value != first)
                    .then(|| Difference {
                        setting: setting.clone(),
                        values,
                    })
            })
            .collect();
        ParityReport {
            environments: resolved
                .iter()
                .map(|manifest| manifest.environment.clone())
                .collect(),
            differences,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.differences.is_empty()
    }
}

/// Flattens JSON into dotted settings. Arrays of objects with a `name` (or `service`) are keyed by
/// it; arrays of scalars become one comma-separated value.
fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    let join = |key: &str| {
        if prefix.is_empty() {
            key.to_owned()
        } else {
            format!("{prefix}.{key}")
        }
    };
    match value {
        Value::Object(map) => {
            for (key, inner) in map {
                flatten(&join(key), inner, out);
            }
        }
        Value::Array(items)
            if items
                .iter()
                .all(|item| !item.is_object() && !item.is_array()) =>
        {
            let text = items.iter().map(scalar).collect::<Vec<_>>().join(", ");
            out.push((
                prefix.to_owned(),
                if text.is_empty() {
                    "(none)".to_owned()
                } else {
                    text
                },
            ));
        }
        Value::Array(items) => {
            let keyed = items.iter().all(|item| {
                ["name", "service"]
                    .iter()
                    .any(|field| item.get(*field).is_some_and(Value::is_string))
            });
            if !keyed {
                // Steps and the like read best as one value: `weight=10 pause=1m, weight=100`.
                let text = items.iter().map(compact).collect::<Vec<_>>().join(", ");
                out.push((prefix.to_owned(), text));
                return;
            }
            for item in items {
                let label = ["name", "service"]
                    .iter()
                    .find_map(|field| item.get(*field).and_then(Value::as_str))
                    .unwrap_or_default()
                    .to_owned();
                let mut inner = item.clone();
                if let Value::Object(map) = &mut inner {
                    map.remove("name");
                    map.remove("service");
                }
                flatten(&join(&label), &inner, out);
            }
        }
        Value::Null => {}
        scalar_value => out.push((prefix.to_owned(), scalar(scalar_value))),
    }
}

/// `key=value key=value` for one object, leaving out unset fields.
fn compact(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .filter(|(_, inner)| !inner.is_null())
            .map(|(key, inner)| format!("{key}={}", scalar(inner)))
            .collect::<Vec<_>>()
            .join(" "),
        other => scalar(other),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Null => "(none)".to_owned(),
        other => other.to_string(),
    }
}
