//! Secrets: encrypted at rest with XChaCha20-Poly1305, versioned, and held in memory only as
//! [`Secret`], a type that cannot be printed or serialized by accident.
//!
//! The key (64 hex digits) lives apart from the store: `--master-key FILE`, `ROLLWAY_MASTER_KEY`,
//! a systemd credential or a file outside the state directory (see [`master_key`]). A sealed value is bound to its app, environment, name and version
//! (the AEAD's associated data), so a ciphertext cannot be moved to another secret.

use std::collections::BTreeMap;

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

use crate::store::{SealedSecret, SecretMeta, Store, StoreError};

pub mod blob;
pub mod master_key;

/// The variable that may hold the master key.
pub const MASTER_KEY_VAR: &str = "ROLLWAY_MASTER_KEY";
/// The key file's name: in the config folder, a credentials folder, or (from earlier versions, moved
/// out on start) the state directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// A secret value. `Debug` and `Display` print `***`; there is no `Serialize`; reading the value
/// takes an explicit `expose()`, done only where env is handed to an instance.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(Zeroizing::new(value))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("`{MASTER_KEY_VAR}` must be 64 hex digits (32 bytes)")]
    BadKeyVar,
    #[error("`{path}` must hold 64 hex digits (32 bytes)")]
    BadKeyFile { path: String },
    #[error("the master key `{path}` is inside the state directory; keep it apart from the store")]
    KeyInStateDir { path: String },
    #[error(
        "`{legacy}` is not the master key in use (from {origin}); move it out of the state directory or delete it"
    )]
    ConflictingKeys { legacy: String, origin: String },
    #[error("cannot read or create the master key `{path}`")]
    KeyFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("secret `{name}` version {version} cannot be decrypted with this master key")]
    Decrypt { name: String, version: u64 },
    #[error("cannot encrypt secret `{name}`")]
    Encrypt { name: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("secret `{name}` version {version} of `{app}` in `{env}` is not in the store")]
    MissingVersion {
        app: String,
        env: String,
        name: String,
        version: u64,
    },
}

/// The key every secret is sealed with.
pub struct MasterKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(***)")
    }
}

impl MasterKey {
    /// A new random key (tests, and [`master_key`] when it makes a key file).
    pub fn generate() -> MasterKey {
        MasterKey(Zeroizing::new(
            XChaCha20Poly1305::generate_key(&mut OsRng).into(),
        ))
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.0).into())
    }
}

fn parse_key(text: &str) -> Option<MasterKey> {
    let bytes = Zeroizing::new(hex::decode(text).ok()?);
    let key: [u8; 32] = bytes.as_slice().try_into().ok()?;
    Some(MasterKey(Zeroizing::new(key)))
}

fn associated_data(app: &str, env: &str, name: &str, version: u64) -> Vec<u8> {
    format!("rollway-secret\0{app}\0{env}\0{name}\0{version}").into_bytes()
}

/// Seals bytes that are not an app's secret (a certificate's private key, the ACME account) with the
/// master key, bound to `purpose` (the AEAD's associated data: `cert-key:<host>`, `acme-account:<url>`),
/// so a sealed value cannot be moved to another purpose.
pub fn seal_blob(
    key: &MasterKey,
    purpose: &str,
    plain: &[u8],
) -> Result<SealedSecret, SecretError> {
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let aad = format!("rollway-blob\0{purpose}").into_bytes();
    let ciphertext = key
        .cipher()
        .encrypt(
            &nonce,
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .map_err(|_| SecretError::Encrypt {
            name: purpose.to_owned(),
        })?;
    Ok(SealedSecret {
        nonce: nonce.to_vec(),
        ciphertext,
    })
}

/// Opens what `seal_blob` sealed for `purpose`.
pub fn open_blob(
    key: &MasterKey,
    purpose: &str,
    sealed: &SealedSecret,
) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    let decrypt_error = || SecretError::Decrypt {
        name: purpose.to_owned(),
        version: 0,
    };
    if sealed.nonce.len() != 24 {
        return Err(decrypt_error());
    }
    let aad = format!("rollway-blob\0{purpose}").into_bytes();
    key.cipher()
        .decrypt(
            XNonce::from_slice(&sealed.nonce),
            Payload {
                msg: &sealed.ciphertext,
                aad: &aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| decrypt_error())
}

/// Which secret: app, environment and name.
#[derive(Debug, Clone, Copy)]
pub struct SecretName<'a> {
    pub app: &'a str,
    pub env: &'a str,
    pub name: &'a str,
}

/// Sets a new version of `name` and returns its version.
pub fn set(
    store: &Store,
    key: &MasterKey,
    target: SecretName<'_>,
    value: &Secret,
    by: &str,
    now_ms: i64,
) -> Result<u64, SecretError> {
    let SecretName { app, env, name } = target;
    let cipher = key.cipher();
    let seal = |version: u64| {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: value.expose().as_bytes(),
            aad: &associated_data(app, env, name, version),
        };
        let ciphertext = cipher.encrypt(&nonce, payload).ok()?;
        Some(SealedSecret {
            nonce: nonce.to_vec(),
            ciphertext,
        })
    };
    let version = store.put_secret(app, env, name, &seal, by, now_ms)?;
    // A failed seal would have been written as an unset: refuse to call that a success.
    if store.secret_version(app, env, name, version)?.is_none() {
        return Err(SecretError::Encrypt {
            name: name.to_owned(),
        });
    }
    Ok(version)
}

/// Records that `name` is unset from now on (earlier versions stay for rollbacks).
pub fn unset(
    store: &Store,
    app: &str,
    env: &str,
    name: &str,
    by: &str,
    now_ms: i64,
) -> Result<bool, SecretError> {
    let set = store
        .current_secrets(app, env)?
        .iter()
        .any(|meta| meta.name == name);
    if set {
        store.put_secret(app, env, name, &|_| None, by, now_ms)?;
    }
    Ok(set)
}

pub fn list(store: &Store, app: &str, env: &str) -> Result<Vec<SecretMeta>, SecretError> {
    Ok(store.current_secrets(app, env)?)
}

/// Which version of a secret a release records. A preview's release also records the secrets it
/// inherits from its base environment by reference (the base's name and version), so the value is
/// opened from the base's row when an instance starts and is never copied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum SecretVersion {
    /// A version set on the release's own environment (what every release before previews holds).
    Own(u64),
    /// A version of the same name set on the base environment of a preview.
    Inherited { environment: String, version: u64 },
}

/// The versions a release records: every secret set for (app, env) now; for a preview, its
/// base's secrets too, unless the preview sets the same name.
pub fn snapshot(
    store: &Store,
    app: &str,
    env: &str,
) -> Result<BTreeMap<String, SecretVersion>, SecretError> {
    let base = store.preview(app, env)?.map(|preview| preview.base);
    snapshot_over(store, app, env, base.as_deref())
}

/// [`snapshot`] with the base given (a preview being made has no row yet).
pub fn snapshot_over(
    store: &Store,
    app: &str,
    env: &str,
    base: Option<&str>,
) -> Result<BTreeMap<String, SecretVersion>, SecretError> {
    let mut versions = BTreeMap::new();
    if let Some(base) = base {
        for meta in store.current_secrets(app, base)? {
            versions.insert(
                meta.name,
                SecretVersion::Inherited {
                    environment: base.to_owned(),
                    version: meta.version,
                },
            );
        }
    }
    for meta in store.current_secrets(app, env)? {
        versions.insert(meta.name, SecretVersion::Own(meta.version));
    }
    Ok(versions)
}

/// Opens the recorded versions of a release of (app, env).
pub fn open_versions(
    store: &Store,
    key: &MasterKey,
    app: &str,
    env: &str,
    versions: &BTreeMap<String, SecretVersion>,
) -> Result<BTreeMap<String, Secret>, SecretError> {
    let cipher = key.cipher();
    let mut values = BTreeMap::new();
    for (name, recorded) in versions {
        let (env, version) = match recorded {
            SecretVersion::Own(version) => (env, *version),
            SecretVersion::Inherited {
                environment,
                version,
            } => (environment.as_str(), *version),
        };
        let sealed = store
            .secret_version(app, env, name, version)?
            .ok_or_else(|| SecretError::MissingVersion {
                app: app.to_owned(),
                env: env.to_owned(),
                name: name.clone(),
                version,
            })?;
        values.insert(
            name.clone(),
            open_sealed(&cipher, SecretName { app, env, name }, version, &sealed)?,
        );
    }
    Ok(values)
}

fn open_sealed(
    cipher: &XChaCha20Poly1305,
    target: SecretName<'_>,
    version: u64,
    sealed: &SealedSecret,
) -> Result<Secret, SecretError> {
    let SecretName { app, env, name } = target;
    let decrypt_error = || SecretError::Decrypt {
        name: name.to_owned(),
        version,
    };
    if sealed.nonce.len() != 24 {
        return Err(decrypt_error());
    }
    let nonce = XNonce::from_slice(&sealed.nonce);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                nonce,
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &associated_data(app, env, name, version),
                },
            )
            .map_err(|_| decrypt_error())?,
    );
    let text = String::from_utf8(plain.to_vec()).map_err(|_| decrypt_error())?;
    Ok(Secret::new(text))
}

/// Hides secret values in text: every version of every secret of one app and environment (a
/// rollback can bring any of them back), longest first, each replaced by `***`.
///
/// Every line of build, release and smoke output passes through one before it becomes an
/// event, a log line or a file, and so does app output shown by the logs routes. It works on
/// whole lines (its callers read line by line), so a value split across read chunks is still
/// whole when scrubbed.
pub struct Scrubber {
    /// Invariant: no value shorter than `MIN_SCRUBBED`; sorted longest first, so a value that
    /// contains another is replaced whole.
    values: Vec<Secret>,
}

/// Shorter values are not scrubbed (the API refuses them as secrets), so that ordinary words
/// are never shredded.
pub const MIN_SCRUBBED: usize = 4;

impl Scrubber {
    /// Every version of every secret of (app, env), opened; for a preview, its base's too.
    pub fn for_environment(
        store: &Store,
        key: &MasterKey,
        app: &str,
        env: &str,
    ) -> Result<Scrubber, SecretError> {
        let cipher = key.cipher();
        let base = store.preview(app, env)?.map(|preview| preview.base);
        let mut values = Vec::new();
        for env in std::iter::once(env).chain(base.as_deref()) {
            for (name, version, sealed) in store.all_secret_versions(app, env)? {
                let target = SecretName {
                    app,
                    env,
                    name: &name,
                };
                values.push(open_sealed(&cipher, target, version, &sealed)?);
            }
        }
        Ok(Scrubber::new(values))
    }

    pub fn new(values: impl IntoIterator<Item = Secret>) -> Scrubber {
        let mut values: Vec<Secret> = values
            .into_iter()
            .filter(|value| value.expose().chars().count() >= MIN_SCRUBBED)
            .collect();
        // Longest first; equal values next to each other for `dedup`.
        values.sort_by(|a, b| (b.expose().len(), a.expose()).cmp(&(a.expose().len(), b.expose())));
        values.dedup();
        Scrubber { values }
    }

    /// `line` with every secret value replaced by `***`.
    pub fn scrub<'a>(&self, line: &'a str) -> std::borrow::Cow<'a, str> {
        let mut out = std::borrow::Cow::Borrowed(line);
        for value in &self.values {
            if out.contains(value.expose()) {
                out = std::borrow::Cow::Owned(out.replace(value.expose(), "***"));
            }
        }
        out
    }
}

impl Scrubber {
    /// `bytes` with every secret value replaced by `***`, matched as bytes (output need not be
    /// UTF-8, nor cut at character boundaries).
    pub fn scrub_bytes(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for value in &self.values {
            let needle = value.expose().as_bytes();
            if out.len() < needle.len() {
                continue;
            }
            let mut replaced = Vec::with_capacity(out.len());
            let mut at = 0;
            while at < out.len() {
                if out[at..].starts_with(needle) {
                    replaced.extend_from_slice(b"***");
                    at += needle.len();
                } else {
                    replaced.push(out[at]);
                    at += 1;
                }
            }
            out = replaced;
        }
        out
    }

    /// How many bytes at the end of `bytes` could be the start of a secret value (the longest
    /// such suffix, shorter than the value): what a stream must hold back until more comes.
    fn open_prefix(&self, bytes: &[u8]) -> usize {
        self.values
            .iter()
            .map(|value| {
                let needle = value.expose().as_bytes();
                (1..needle.len().min(bytes.len() + 1))
                    .rev()
                    .find(|&len| bytes.ends_with(&needle[..len]))
                    .unwrap_or(0)
            })
            .max()
            .unwrap_or(0)
    }
}

/// Scrubs a byte stream read in arbitrary chunks (a terminal's output): a secret value split
/// across two reads is still replaced whole, because the end of a chunk that could begin a
/// value is held back until the next chunk (or `flush`, when the stream pauses or ends).
pub struct StreamScrubber<'a> {
    scrubber: &'a Scrubber,
    held: Vec<u8>,
}

impl<'a> StreamScrubber<'a> {
    pub fn new(scrubber: &'a Scrubber) -> StreamScrubber<'a> {
        StreamScrubber {
            scrubber,
            held: Vec::new(),
        }
    }

    /// What can be shown of the stream so far, scrubbed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let mut scrubbed = self.scrubber.scrub_bytes(&self.held);
        let hold = self.scrubber.open_prefix(&scrubbed);
        self.held = scrubbed.split_off(scrubbed.len() - hold);
        scrubbed
    }

    /// Whatever is held back, when no more comes for now (it cannot complete a value it does not
    /// already hold).
    pub fn flush(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.held)
    }

    /// Whether bytes are held back.
    pub fn holds(&self) -> bool {
        !self.held.is_empty()
    }
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} values)", self.values.len())
    }
}

#[cfg(test)]
mod tests;
