//! `rollway.toml`: schema, parsing with spans, validation, layering and parity.
//!
//! The only IO is reading the file `load` is given. Parsing is three steps, each with its own
//! types: the spanned TOML tree (`read`), the checked [`Config`] (`validate`), and one
//! environment's effective settings, [`ResolvedManifest`] (`resolve`). Every problem is collected
//! into [`Diagnostics`]; nothing stops at the first error.

pub mod cron;
mod diagnostic;
mod edge;
pub mod interpolate;
mod parity;
pub mod preview;
mod read;
mod resolve;
mod route_tls;
pub mod scaffold;
mod schema;
mod swarm;
pub mod units;
mod validate;

use std::path::Path;

pub use diagnostic::{Diagnostic, Diagnostics, LocatedDiagnostic};
pub use edge::RateLimit;
pub use parity::{Difference, ParityReport};
pub use preview::{PreviewError, is_preview_name};
pub use resolve::{Environment, Reference, RequiredConfig, ResolvedManifest, Warning};
pub use schema::{
    Alerts, Analysis, App, BackupPolicy, BackupRemote, Build, Config, Health, HealthCommand,
    Protocol, Registry, RegistryCredentials, Release, Route, RouteTls, Schedule, Service,
    ServiceSource, Step, Strategy, StrategyKind, defaults,
};
pub use swarm::{Driver, MIN_MEMORY, Placement, Resources};
pub use validate::{RESERVED_ENV, is_slug};

/// The file name Rollway looks for in an app folder.
pub const FILE_NAME: &str = "rollway.toml";

/// A valid manifest: the shared settings and every declared environment, already layered.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// The shared settings, before any environment is layered on.
    pub shared: Config,
    /// Invariant: in manifest order, names unique; empty when none are declared.
    pub environments: Vec<Environment>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read `{path}`")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no environment `{name}` in the manifest; declared: {declared}")]
pub struct UnknownEnvironment {
    pub name: String,
    pub declared: String,
    pub suggestion: Option<String>,
}

/// Reads and parses the manifest at `path`.
pub fn load(path: &Path) -> Result<Manifest, LoadError> {
    let source = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(parse(&source, &path.display().to_string())?)
}

/// Parses manifest text; `path` is only used in diagnostics.
pub fn parse(source: &str, path: &str) -> Result<Manifest, Diagnostics> {
    parse_tree(source, path, None).map(|(manifest, _)| manifest)
}

/// Why a preview's manifest does not resolve.
#[derive(Debug, thiserror::Error)]
pub enum PreviewManifestError {
    #[error(transparent)]
    Invalid(#[from] Diagnostics),
    #[error(transparent)]
    Preview(#[from] PreviewError),
}

/// The effective manifest of the preview `name` (`preview-<slug>`), layered over the declared
/// environment `base` and then over `[environments.preview]` with `{env}` replaced by `name`.
/// The preview's secrets are its base's plus those the layer lists.
pub fn parse_preview(
    source: &str,
    path: &str,
    name: &str,
    base: &str,
) -> Result<ResolvedManifest, PreviewManifestError> {
    let (manifest, preview) = parse_tree(source, path, Some((name, base)))?;
    let names = manifest.environment_names();
    if names.contains(&name) {
        return Err(PreviewError::DeclaredEnvironment {
            name: name.to_owned(),
        }
        .into());
    }
    if !is_preview_name(name) {
        return Err(PreviewError::BadName {
            name: name.to_owned(),
        }
        .into());
    }
    if !names.is_empty() && !names.contains(&base) {
        return Err(PreviewError::UnknownBase {
            base: base.to_owned(),
            declared: read::list(&names),
        }
        .into());
    }
    let preview = preview.unwrap_or_else(|| Environment {
        name: name.to_owned(),
        secrets: Vec::new(),
        approval: false,
        driver: Driver::Host,
        config: manifest.shared.clone(),
    });
    Ok(ResolvedManifest {
        environment: preview.name,
        secrets: preview.secrets,
        approval: preview.approval,
        driver: preview.driver,
        config: preview.config,
    })
}

/// The manifest, and with `preview = Some((name, base))` that preview's environment (`None` when
/// the base is not declared, or the manifest declares no environment and has no preview layer).
fn parse_tree(
    source: &str,
    path: &str,
    preview: Option<(&str, &str)>,
) -> Result<(Manifest, Option<Environment>), Diagnostics> {
    let (root, syntax_errors) = toml::de::DeTable::parse_recoverable(source);
    if !syntax_errors.is_empty() {
        let items = syntax_errors
            .iter()
            .map(|error| {
                let span = error.span().unwrap_or(0..0);
                Diagnostic::new(
                    span,
                    format!("invalid TOML: {}", error.message().trim_end()),
                )
                .label("here")
                .help("see https://toml.io for the syntax")
            })
            .collect();
        return Err(Diagnostics::new(path, source, items));
    }
    let mut reader = read::Reader::default();
    reader.known_keys(root.get_ref(), validate::ROOT_KEYS, "");
    let shared = validate::config(&mut reader, root.get_ref(), root.span());
    let environments = resolve::environments(&mut reader, root.get_ref());
    if let (Some(shared), true) = (&shared, environments.is_empty()) {
        // Without environments, the shared settings are what every deploy runs, on the host.
        swarm::check_driver(
            &mut reader,
            swarm::Driver::Host,
            root.span(),
            root.get_ref(),
            &shared.services,
            None,
        );
    }
    preview::check(&mut reader, root.get_ref(), &environments);
    let layered = match preview {
        Some((name, base)) if reader.diagnostics.is_empty() => {
            let base = environments.iter().find(|found| found.name == base);
            if base.is_some() || environments.is_empty() {
                preview::layer_over(&mut reader, root.get_ref(), name, base)
            } else {
                None
            }
        }
        _ => None,
    };
    match shared {
        Some(shared) if reader.diagnostics.is_empty() => Ok((
            Manifest {
                shared,
                environments,
            },
            layered,
        )),
        _ => Err(Diagnostics::new(path, source, reader.diagnostics)),
    }
}

impl Manifest {
    pub fn environment_names(&self) -> Vec<&str> {
        self.environments
            .iter()
            .map(|environment| environment.name.as_str())
            .collect()
    }

    /// The effective manifest for `environment`. A manifest that declares no environment serves
    /// any name with its shared settings.
    pub fn resolve(&self, environment: &str) -> Result<ResolvedManifest, UnknownEnvironment> {
        if self.environments.is_empty() {
            return Ok(ResolvedManifest {
                environment: environment.to_owned(),
                secrets: Vec::new(),
                approval: false,
                driver: Driver::Host,
                config: self.shared.clone(),
            });
        }
        match self
            .environments
            .iter()
            .find(|candidate| candidate.name == environment)
        {
            Some(found) => Ok(ResolvedManifest {
                environment: found.name.clone(),
                secrets: found.secrets.clone(),
                approval: found.approval,
                driver: found.driver,
                config: found.config.clone(),
            }),
            None => {
                let names = self.environment_names();
                Err(UnknownEnvironment {
                    name: environment.to_owned(),
                    declared: read::list(&names),
                    suggestion: read::suggest(environment, names.iter().copied())
                        .map(str::to_owned),
                })
            }
        }
    }

    /// Every declared environment resolved, in manifest order.
    pub fn resolve_all(&self) -> Vec<ResolvedManifest> {
        self.environments
            .iter()
            .filter_map(|environment| self.resolve(&environment.name).ok())
            .collect()
    }

    /// What differs between the declared environments.
    pub fn parity(&self) -> ParityReport {
        ParityReport::new(&self.resolve_all())
    }
}
