//! The registry the agent runs for the cluster (issue 17): the part of the OCI distribution API
//! that Docker's engine uses to push and pull, served on the API's listener under `/v2/` (same
//! port, same TLS and certificate), so every node of a swarm can pull a release's image by digest
//! without the user running a registry.
//!
//! It is not a general registry: no catalog, no blob deletion over HTTP, no token auth, no
//! foreign layers; images leave it when the releases that use them are no longer kept
//! ([`collect`]). Disk layout and digests are `storage.rs`; requests are `http.rs`.
//!
//! Two HTTP Basic credentials, made on the first start and sealed by the master key in the store:
//! push (read and write; the agent's own engine pushes with it) and pull (read only; given to
//! Swarm with the service specs so every node can pull). Neither is ever logged, put in argv, an
//! event, an API answer or a service spec in clear (Swarm keeps registry auth apart from the
//! spec).

pub mod http;
pub mod storage;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use client::wire::ReleaseNumber;

use crate::engine::{AppEnv, Engine};
use crate::secrets::{MasterKey, Secret, SecretError, open_blob, seal_blob};
use crate::store::{RegistryAccess, Store, StoreError};
pub use storage::{Digest, RepositoryName, Storage, StorageError};

/// The repository prefix of everything Rollway pushes to its registry.
pub const REPOSITORY_PREFIX: &str = "rollway";

/// The registry's state: its files, limits and credentials, and the address nodes pull from.
#[derive(Debug)]
pub struct Registry {
    pub storage: Storage,
    pub limits: RegistryLimits,
    pub push: Credential,
    pub pull: Credential,
    /// `HOST:PORT` every node reaches the agent's API at (`None`: the API listens on every
    /// address and `ROLLWAY_REGISTRY_ADDRESS` does not say which one).
    pub address: Option<String>,
    /// Serialises manifest puts against a sweep (std Mutex: held over file operations, never an
    /// await).
    pub(crate) manifests: std::sync::Mutex<()>,
}

/// A user name and password for HTTP Basic. `Debug` leaves the password out.
#[derive(Clone)]
pub struct Credential {
    pub username: String,
    pub password: Secret,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// What a client may hold of the registry.
#[derive(Debug, Clone, Copy)]
pub struct RegistryLimits {
    /// Largest blob (`ROLLWAY_REGISTRY_MAX_BLOB_SIZE`, bytes; 4 GiB by default).
    pub max_blob: u64,
    /// Largest manifest (4 MiB, as the distribution registry).
    pub max_manifest: usize,
    /// Uploads in progress at once.
    pub max_uploads: usize,
    /// An upload without a request for this long is dropped.
    pub upload_idle: Duration,
}

impl Default for RegistryLimits {
    fn default() -> RegistryLimits {
        RegistryLimits {
            max_blob: 4 << 30,
            max_manifest: 4 << 20,
            max_uploads: 64,
            upload_idle: Duration::from_secs(3600),
        }
    }
}

impl RegistryLimits {
    pub fn from_env() -> RegistryLimits {
        let defaults = RegistryLimits::default();
        RegistryLimits {
            max_blob: std::env::var(MAX_BLOB_VAR)
                .ok()
                .and_then(|value| value.trim().parse::<u64>().ok())
                .unwrap_or(defaults.max_blob),
            ..defaults
        }
    }
}

/// The env var bounding a blob's size in the agent's registry.
pub const MAX_BLOB_VAR: &str = "ROLLWAY_REGISTRY_MAX_BLOB_SIZE";
/// The env var naming the `HOST:PORT` nodes reach the agent's registry at (its API's address).
pub const ADDRESS_VAR: &str = "ROLLWAY_REGISTRY_ADDRESS";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot prepare the agent's registry")]
    Storage(#[from] StorageError),
    #[error("cannot keep the agent's registry credentials")]
    Store(#[from] StoreError),
    #[error("cannot seal or open the agent's registry credentials")]
    Secret(#[from] SecretError),
    #[error("the sealed {0} credential of the agent's registry is not UTF-8")]
    NotText(&'static str),
}

impl Registry {
    /// Opens the registry under `<state>/registry`, making its credentials on the first start;
    /// `address` is [`cluster_address`].
    pub fn open(
        state_dir: &std::path::Path,
        store: &Store,
        master_key: &MasterKey,
        address: Option<String>,
        limits: RegistryLimits,
    ) -> Result<Registry, RegistryError> {
        let storage = Storage::open(state_dir.join("registry"))?;
        Ok(Registry {
            storage,
            limits,
            push: credential(store, master_key, RegistryAccess::Push)?,
            pull: credential(store, master_key, RegistryAccess::Pull)?,
            address,
            manifests: std::sync::Mutex::new(()),
        })
    }

    /// A registry in `<dir>/registry` for tests: loopback address, default limits.
    #[cfg(test)]
    pub fn for_test(dir: &std::path::Path, store: &Store, master_key: &MasterKey) -> Registry {
        Registry::open(
            dir,
            store,
            master_key,
            Some("127.0.0.1:0".to_owned()),
            RegistryLimits::default(),
        )
        .expect("registry")
    }

    /// Who `username:password` is: the access it gives, if any.
    pub fn access(&self, username: &str, password: &str) -> Option<RegistryAccess> {
        use sha2::{Digest as _, Sha256};
        // Compared as hashes: equal-length values, so the comparison's time says nothing useful.
        let same = |credential: &Credential| {
            credential.username == username
                && Sha256::digest(credential.password.expose().as_bytes())
                    == Sha256::digest(password.as_bytes())
        };
        if same(&self.push) {
            Some(RegistryAccess::Push)
        } else if same(&self.pull) {
            Some(RegistryAccess::Pull)
        } else {
            None
        }
    }
}

/// A registry the swarm's nodes pull from, as the swarm driver uses it: the prefix repositories
/// are named under, the credential the agent pushes with and the one given to Swarm for pulls.
#[derive(Debug, Clone)]
pub struct ClusterRegistry {
    /// `HOST[:PORT]/PREFIX`: a service's images are `<prefix>/<app>-<env>-<service>`.
    pub prefix: String,
    pub push: Option<driver::swarm::RegistryAuth>,
    pub pull: Option<driver::swarm::RegistryAuth>,
}

/// The env var naming an open registry (`HOST:PORT`) to use instead of the agent's own.
pub const SWARM_REGISTRY_VAR: &str = "ROLLWAY_SWARM_REGISTRY";

/// The `HOST:PORT` nodes reach the agent's registry at: `ROLLWAY_REGISTRY_ADDRESS` (`given`) when
/// set, else the API's address unless it listens on every address.
pub fn cluster_address(api: std::net::SocketAddr, given: Option<String>) -> Option<String> {
    given
        .map(|address| address.trim().to_owned())
        .filter(|address| !address.is_empty())
        .or_else(|| (!api.ip().is_unspecified()).then(|| api.to_string()))
}

/// The host of `HOST:PORT` (`[::1]:7443` → `::1`).
pub fn host_of(address: &str) -> String {
    let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned()
}

/// Why the agent has no registry for the cluster.
#[derive(Debug, thiserror::Error)]
#[error(
    "the agent's registry has no address every node reaches: its API listens on every address; start the agent with `{ADDRESS_VAR}=HOST:PORT` (the API's port on an address of this node the others reach), or name a registry with `ROLLWAY_SWARM_REGISTRY=HOST:PORT` or `[build] registry`"
)]
pub struct NoClusterRegistry;

/// The registry for the cluster when the manifest names none: `ROLLWAY_SWARM_REGISTRY` (open,
/// run by the user) if set, else the agent's own (`<API address>/rollway`, its credentials).
pub fn default_cluster_registry(registry: &Registry) -> Result<ClusterRegistry, NoClusterRegistry> {
    let named = std::env::var(SWARM_REGISTRY_VAR)
        .ok()
        .map(|registry| registry.trim().trim_end_matches('/').to_owned())
        .filter(|registry| !registry.is_empty());
    if let Some(named) = named {
        return Ok(ClusterRegistry {
            prefix: format!("{named}/{REPOSITORY_PREFIX}"),
            push: None,
            pull: None,
        });
    }
    let address = registry.address.clone().ok_or(NoClusterRegistry)?;
    let auth = |credential: &Credential| driver::swarm::RegistryAuth {
        server: address.clone(),
        username: credential.username.clone(),
        password: credential.password.expose().to_owned(),
    };
    Ok(ClusterRegistry {
        prefix: format!("{address}/{REPOSITORY_PREFIX}"),
        push: Some(auth(&registry.push)),
        pull: Some(auth(&registry.pull)),
    })
}

/// Reads the credential for `access`, making and sealing one on the first start.
fn credential(
    store: &Store,
    master_key: &MasterKey,
    access: RegistryAccess,
) -> Result<Credential, RegistryError> {
    let purpose = format!("registry-credential:{}", access.as_str());
    if store.registry_credential(access)?.is_none() {
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|error| SecretError::Encrypt {
            name: format!("{purpose} ({error})"),
        })?;
        let password = zeroize::Zeroizing::new(format!("rwr_{}", hex::encode(random)));
        let sealed = seal_blob(master_key, &purpose, password.as_bytes())?;
        store.keep_registry_credential(
            access,
            &format!("rollway-{}", access.as_str()),
            &sealed,
            crate::engine::now_ms(),
        )?;
    }
    let (username, sealed) = store
        .registry_credential(access)?
        .ok_or(RegistryError::NotText(access.as_str()))?;
    let plain = open_blob(master_key, &purpose, &sealed)?;
    let password =
        String::from_utf8(plain.to_vec()).map_err(|_| RegistryError::NotText(access.as_str()))?;
    Ok(Credential {
        username,
        password: Secret::new(password),
    })
}

/// Every digest an image manifest or index references: its config, layers, and an index's
/// manifests. Unreadable JSON references nothing.
pub fn manifest_references(bytes: &[u8]) -> Vec<Digest> {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Option<Descriptor>,
        #[serde(default)]
        layers: Vec<Descriptor>,
        #[serde(default)]
        manifests: Vec<Descriptor>,
    }
    let Ok(manifest) = serde_json::from_slice::<Manifest>(bytes) else {
        return Vec::new();
    };
    manifest
        .config
        .into_iter()
        .chain(manifest.layers)
        .chain(manifest.manifests)
        .filter_map(|descriptor| Digest::parse(&descriptor.digest))
        .collect()
}

/// The repository of a service's images in the agent's registry: `rollway/<app>-<env>-<service>`.
pub fn release_repository(app: &str, environment: &str, service: &str) -> String {
    format!("{REPOSITORY_PREFIX}/{app}-{environment}-{service}")
}

/// The tag of release `release`'s image: `r<N>`.
pub fn release_tag(release: ReleaseNumber) -> String {
    format!("r{release}")
}

/// How many of an app environment's latest releases keep their images in the agent's registry
/// (the current one and any warm one always do).
pub const KEEP_RELEASE_IMAGES: u64 = 10;

/// Removes from the agent's registry the images of releases no longer kept: older than the
/// latest [`KEEP_RELEASE_IMAGES`] of their app environment, and neither current nor warm; then
/// the blobs nothing references any more (older than `grace`). Answers what it removed.
pub fn collect(engine: &Arc<Engine>, grace: Duration) -> Result<Collected, RegistryError> {
    let storage = &engine.registry.storage;
    let mut collected = Collected::default();
    let _guard = engine
        .registry
        .manifests
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for (app, environment, current) in engine.store.apps()? {
        let numbers: Vec<ReleaseNumber> = engine
            .store
            .releases(&app, &environment)?
            .iter()
            .map(|release| release.number)
            .collect();
        let Some(latest) = numbers.iter().max().copied() else {
            continue;
        };
        // Releases with an instance (serving, warm, starting or draining) keep their images.
        let running: BTreeSet<ReleaseNumber> = engine
            .runtimes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&AppEnv::new(&app, &environment))
            .map(|runtime| {
                runtime
                    .instances
                    .values()
                    .map(|instance| instance.release)
                    .collect()
            })
            .unwrap_or_default();
        for number in numbers {
            let kept = number.get() + KEEP_RELEASE_IMAGES > latest.get()
                || Some(number) == current
                || running.contains(&number);
            if kept {
                continue;
            }
            for service in engine
                .store
                .release_images(&app, &environment, number)?
                .keys()
            {
                let repository = release_repository(&app, &environment, service);
                let Some(name) = RepositoryName::parse(&repository) else {
                    continue;
                };
                if storage.remove_tag(&name, &release_tag(number))? {
                    collected.images += 1;
                }
            }
        }
    }
    let (blobs, bytes) = storage.sweep(grace)?;
    collected.blobs = blobs;
    collected.bytes = bytes;
    Ok(collected)
}

/// What [`collect`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    pub images: usize,
    pub blobs: usize,
    pub bytes: u64,
}

/// Collects every hour, for the agent's life.
pub async fn collect_loop(engine: Arc<Engine>) {
    let mut interval = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = engine.shutdown.cancelled() => return,
        }
        let engine_for_task = engine.clone();
        let collected = tokio::task::spawn_blocking(move || {
            collect(&engine_for_task, Duration::from_secs(3600))
        })
        .await;
        match collected {
            Ok(Ok(collected)) if collected == Collected::default() => {}
            Ok(Ok(collected)) => tracing::info!(
                message = "Removed images of releases no longer kept from the agent's registry.",
                images = collected.images,
                blobs = collected.blobs,
                bytes = collected.bytes
            ),
            Ok(Err(error)) => tracing::error!(
                message = "Cannot collect the agent's registry.",
                error = %crate::report::chain(&error)
            ),
            Err(error) => tracing::error!(message = "The registry collection task failed.", %error),
        }
    }
}

#[cfg(test)]
mod tests;
