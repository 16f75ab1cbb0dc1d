//! Loading a release: its record, its manifest resolved again exactly as it was deployed, its
//! recorded secret versions opened, and its container images. A deployment loads its target once
//! (`LoadedRelease`) and hands it to every step.

use client::wire::ReleaseNumber;
use std::collections::BTreeMap;

use manifest::ResolvedManifest;

use crate::engine::{AppEnv, Engine};
use crate::secrets::{Secret, SecretError};
use crate::store::StoreError;

/// A release as the executor uses it.
pub struct LoadedRelease {
    pub number: ReleaseNumber,
    pub artifact: String,
    pub resolved: ResolvedManifest,
    /// The secret versions recorded with the release, opened. Never logged (`Secret` prints `***`).
    pub secrets: BTreeMap<String, Secret>,
    /// Service → image id, for container services (recorded when the release was prepared).
    pub images: BTreeMap<String, String>,
}

/// What the store keeps of a release's config: the manifest text and the environment, so the
/// release can be resolved again exactly as it was deployed.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ReleaseConfig {
    pub manifest: String,
    pub environment: String,
    /// For a preview: the declared environment it layers over (`manifest::parse_preview`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base: Option<String>,
}

/// Why a release could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("cannot read release {number} of `{app}` in `{environment}`")]
    Store {
        app: String,
        environment: String,
        number: ReleaseNumber,
        #[source]
        source: Box<StoreError>,
    },
    #[error("no release {number} of `{app}` in `{environment}`")]
    Missing {
        app: String,
        environment: String,
        number: ReleaseNumber,
    },
    #[error("release {number} has an unreadable config")]
    Config {
        number: ReleaseNumber,
        #[source]
        source: serde_json::Error,
    },
    #[error("release {number} has unreadable secret versions")]
    SecretVersions {
        number: ReleaseNumber,
        #[source]
        source: serde_json::Error,
    },
    #[error(transparent)]
    Manifest(#[from] ResolveError),
    #[error("cannot open the secrets of release {number}")]
    Secrets {
        number: ReleaseNumber,
        #[source]
        source: SecretError,
    },
    #[error("cannot read the images of release {number}")]
    Images {
        number: ReleaseNumber,
        #[source]
        source: Box<StoreError>,
    },
}

/// Why a stored manifest does not resolve any more.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The rendered diagnostics (file, line, caret, help).
    #[error("{0}")]
    Parse(String),
    #[error(transparent)]
    Environment(#[from] manifest::UnknownEnvironment),
    #[error(transparent)]
    Preview(#[from] manifest::PreviewError),
}

/// Loads release `number` of `key`: record, resolved manifest, opened secrets, images.
pub fn load_release(
    engine: &Engine,
    key: &AppEnv,
    number: ReleaseNumber,
) -> Result<LoadedRelease, ReleaseError> {
    let (release, resolved) = load_manifest(engine, key, number)?;
    let (app, environment) = (&key.app, &key.environment);
    let versions: BTreeMap<String, crate::secrets::SecretVersion> = match &release.secrets_version {
        Some(json) => serde_json::from_str(json)
            .map_err(|source| ReleaseError::SecretVersions { number, source })?,
        None => BTreeMap::new(),
    };
    let secrets = crate::secrets::open_versions(
        &engine.store,
        &engine.master_key,
        app,
        environment,
        &versions,
    )
    .map_err(|source| ReleaseError::Secrets { number, source })?;
    let images = engine
        .store
        .release_images(app, environment, number)
        .map_err(|source| ReleaseError::Images {
            number,
            source: Box::new(source),
        })?;
    Ok(LoadedRelease {
        number,
        artifact: release.artifact,
        resolved,
        secrets,
        images,
    })
}

/// Release `number` of `key`'s record and its manifest resolved as it was deployed, without
/// opening its secrets (what the certificates' bookkeeping needs).
pub fn load_manifest(
    engine: &Engine,
    key: &AppEnv,
    number: ReleaseNumber,
) -> Result<(crate::store::Release, ResolvedManifest), ReleaseError> {
    let (app, environment) = (&key.app, &key.environment);
    let release = engine
        .store
        .release(app, environment, number)
        .map_err(|source| ReleaseError::Store {
            app: app.clone(),
            environment: environment.clone(),
            number,
            source: Box::new(source),
        })?
        .ok_or_else(|| ReleaseError::Missing {
            app: app.clone(),
            environment: environment.clone(),
            number,
        })?;
    let config: ReleaseConfig = serde_json::from_str(&release.config_json)
        .map_err(|source| ReleaseError::Config { number, source })?;
    let resolved = resolve(&config)?;
    Ok((release, resolved))
}

/// The manifest a release recorded, resolved for its environment.
pub fn resolve(config: &ReleaseConfig) -> Result<ResolvedManifest, ResolveError> {
    if let Some(base) = &config.base {
        return manifest::parse_preview(
            &config.manifest,
            manifest::FILE_NAME,
            &config.environment,
            base,
        )
        .map_err(|error| match error {
            manifest::PreviewManifestError::Invalid(diagnostics) => {
                ResolveError::Parse(diagnostics.render(false))
            }
            manifest::PreviewManifestError::Preview(error) => ResolveError::Preview(error),
        });
    }
    let manifest = manifest::parse(&config.manifest, manifest::FILE_NAME)
        .map_err(|diagnostics| ResolveError::Parse(diagnostics.render(false)))?;
    Ok(manifest.resolve(&config.environment)?)
}
