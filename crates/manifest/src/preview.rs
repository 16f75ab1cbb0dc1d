//! Preview environments: `rollway deploy --env preview-42 --from staging` runs an environment the
//! manifest does not declare, layered over a declared one (its base) and then over
//! `[environments.preview]`, in which `{env}` stands for the preview's name.
//!
//! It knows names and layering, not lifetimes: a preview's expiry is the agent's business.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::diagnostic::Diagnostic;
use crate::read::Reader;
use crate::resolve::{self, Environment};
use crate::validate::is_slug;

/// The table under `[environments]` that layers over every preview's base; not an environment.
pub const PREVIEW_LAYER: &str = "preview";
/// Every preview's name starts with this.
pub const PREVIEW_PREFIX: &str = "preview-";
/// The one placeholder `[environments.preview]` may use.
pub const ENV_PLACEHOLDER: &str = "{env}";
/// The name `{env}` stands for when the layer is checked without a preview in mind.
const SAMPLE_NAME: &str = "preview-check";

/// `preview-<slug>`: what a preview may be called.
pub fn is_preview_name(name: &str) -> bool {
    name.len() > PREVIEW_PREFIX.len() && name.starts_with(PREVIEW_PREFIX) && is_slug(name)
}

/// Why a preview cannot be resolved from a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PreviewError {
    #[error(
        "`{name}` is not a preview name; accepted: `preview-` then lowercase letters, digits and `-` (at most 63 characters), e.g. `preview-42`"
    )]
    BadName { name: String },
    #[error(
        "`{name}` is an environment of the manifest, so it cannot be a preview; deploy it without `--from`, or pick another name such as `preview-{name}`"
    )]
    DeclaredEnvironment { name: String },
    #[error(
        "`--from {base}`: a preview layers over an environment the manifest declares ({declared}); `{base}` is not one"
    )]
    UnknownBase { base: String, declared: String },
}

/// The layer's problems: placeholders other than `{env}`, and, layered over every declared
/// environment (or the shared settings when none is declared) with a sample name, whatever the
/// result gets wrong. Each problem is reported once, however many bases show it.
pub(crate) fn check(reader: &mut Reader, root: &DeTable<'_>, environments: &[Environment]) {
    let Some(value) = layer_value(root) else {
        return;
    };
    placeholders(reader, value);
    if !reader.diagnostics.is_empty() {
        return;
    }
    let mut bases: Vec<Option<&Environment>> = environments.iter().map(Some).collect();
    if bases.is_empty() {
        bases.push(None);
    }
    for base in bases {
        let mut scratch = Reader::default();
        layer_over(&mut scratch, root, SAMPLE_NAME, base);
        for diagnostic in scratch.diagnostics {
            let seen = reader
                .diagnostics
                .iter()
                .any(|known| known.span == diagnostic.span && known.message == diagnostic.message);
            if !seen {
                reader.error(diagnostic);
            }
        }
    }
}

/// The preview `name` over `base` (`None`: the shared settings, for a manifest without
/// environments). Problems go to `reader`.
pub(crate) fn layer_over(
    reader: &mut Reader,
    root: &DeTable<'_>,
    name: &str,
    base: Option<&Environment>,
) -> Option<Environment> {
    let shared = resolve::shared_tree(root);
    let base_tree = match base {
        Some(base) => match environment_value(root, &base.name) {
            Some(DeValue::Table(overlay)) => resolve::layered(&shared, overlay),
            _ => shared,
        },
        None => shared,
    };
    let Some(value) = layer_value(root) else {
        // No layer: the preview runs the base's settings under its own name.
        return base.map(|base| Environment {
            name: name.to_owned(),
            ..base.clone()
        });
    };
    let mut value = value.clone();
    substitute(&mut value, name);
    let section = format!("environments.{PREVIEW_LAYER}");
    resolve::layer(reader, &base_tree, name, &section, &value, base)
}

fn layer_value<'a, 'i>(root: &'a DeTable<'i>) -> Option<&'a Spanned<DeValue<'i>>> {
    match root.get("environments")?.get_ref() {
        DeValue::Table(table) => table.get(PREVIEW_LAYER),
        _ => None,
    }
}

fn environment_value<'a, 'i>(root: &'a DeTable<'i>, name: &str) -> Option<&'a DeValue<'i>> {
    match root.get("environments")?.get_ref() {
        DeValue::Table(table) => table.get(name).map(Spanned::get_ref),
        _ => None,
    }
}

/// Every `{...}` in a string of the layer must be `{env}`; `${NAME}` references are left alone.
fn placeholders(reader: &mut Reader, value: &Spanned<DeValue<'_>>) {
    match value.get_ref() {
        DeValue::String(text) => {
            for found in unknown_placeholders(text) {
                reader.error(
                    Diagnostic::new(
                        value.span(),
                        format!("unknown placeholder `{found}` in `[environments.{PREVIEW_LAYER}]`"),
                    )
                    .label("unknown placeholder")
                    .help(format!(
                        "only `{ENV_PLACEHOLDER}` (the preview's name, e.g. `preview-42`) is replaced"
                    )),
                );
            }
        }
        DeValue::Array(items) => items.iter().for_each(|item| placeholders(reader, item)),
        DeValue::Table(table) => table.values().for_each(|item| placeholders(reader, item)),
        _ => {}
    }
}

/// The `{...}` of `text` other than `{env}`, skipping `${NAME}` references.
fn unknown_placeholders(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        let is_reference = rest[..open].ends_with('$');
        let after = &rest[open..];
        let Some(close) = after.find('}') else {
            break;
        };
        let placeholder = &after[..=close];
        if !is_reference && placeholder != ENV_PLACEHOLDER {
            found.push(placeholder.to_owned());
        }
        rest = &after[close + 1..];
    }
    found
}

/// `{env}` replaced by `name` in every string of `value`.
fn substitute(value: &mut Spanned<DeValue<'_>>, name: &str) {
    match value.get_mut() {
        DeValue::String(text) if text.contains(ENV_PLACEHOLDER) => {
            *text = std::borrow::Cow::Owned(text.replace(ENV_PLACEHOLDER, name));
        }
        DeValue::Array(items) => items.iter_mut().for_each(|item| substitute(item, name)),
        DeValue::Table(table) => {
            for (_, item) in table.iter_mut() {
                substitute(item, name);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_placeholders() {
        assert!(is_preview_name("preview-42"));
        assert!(is_preview_name("preview-fix-login"));
        for bad in [
            "preview",
            "preview-",
            "staging",
            "preview-A",
            "preview_1",
            "Preview-1",
        ] {
            assert!(!is_preview_name(bad), "{bad}");
        }
        assert_eq!(
            unknown_placeholders("{env}.preview.example.com"),
            Vec::<String>::new()
        );
        assert_eq!(
            unknown_placeholders("postgres://${DB_HOST}/{env}"),
            Vec::<String>::new()
        );
        assert_eq!(
            unknown_placeholders("{app}-{env}.{branch}.example.com"),
            vec!["{app}".to_owned(), "{branch}".to_owned()]
        );
    }
}
